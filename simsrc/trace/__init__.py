"""Traces: the versioned Parquet format, importers, statistics and the synthetic generator."""
import importlib

# loaded on first use (see moesim/__init__.py): catching TraceError must not import pyarrow
_EXPORTS = {
    "AccessStream": ".stream", "access_stream": ".stream",
    "DECODE": ".schema", "PREFILL": ".schema", "SCHEMA_VERSION": ".schema", "TraceMeta": ".schema",
    "TraceError": ".errors",
    "Trace": ".io", "TraceWriter": ".io", "iter_batches": ".io", "read_meta": ".io", "read_trace": ".io",
    "write_trace": ".io",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__():
    return sorted({*globals(), *_EXPORTS})
