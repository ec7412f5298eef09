"""Traces: the versioned Parquet format, importers, statistics and the synthetic generator."""
from .._lazy import lazy as _lazy

# loaded on first use (see moesim/__init__.py): catching TraceError must not import pyarrow
_EXPORTS = {
    "AccessStream": ".stream", "access_stream": ".stream",
    "DECODE": ".schema", "PREFILL": ".schema", "SCHEMA_VERSION": ".schema", "TraceMeta": ".schema",
    "TraceError": ".errors",
    "Trace": ".io", "TraceWriter": ".io", "iter_batches": ".io", "read_meta": ".io", "read_trace": ".io",
    "write_trace": ".io",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = _lazy(__name__, _EXPORTS)
