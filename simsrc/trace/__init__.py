"""Traces: the versioned Parquet format, importers, statistics and the synthetic generator."""
from .io import Trace, TraceWriter, iter_batches, read_meta, read_trace, write_trace
from .schema import DECODE, PREFILL, SCHEMA_VERSION, TraceError, TraceMeta
from .stream import AccessStream, access_stream

__all__ = [
    "AccessStream", "DECODE", "PREFILL", "SCHEMA_VERSION", "Trace", "TraceError", "TraceMeta", "TraceWriter",
    "access_stream", "iter_batches", "read_meta", "read_trace", "write_trace",
]
