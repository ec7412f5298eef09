"""moesim: replay real Mixture-of-Experts routing against a modeled GPU expert cache and host link."""
import importlib
import sys
import types

__version__ = "0.1.0"

# The public names load on first use, so `moesim --version` and `moesim CMD --help` start
# without numba, numpy or pyarrow (0.45 s -> 0.1 s).
_EXPORTS = {
    "Trace": ".trace", "TraceError": ".trace", "TraceMeta": ".trace", "read_trace": ".trace",
    "write_trace": ".trace", "replay": ".replay", "hit_rate_curve": ".curve",
}
__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        setattr(sys.modules[__name__], name, value)
        return value
    # a submodule used as an attribute after `import moesim` (moesim.grid.run_grid, moesim.trace.stats)
    try:
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__():
    return sorted({*globals(), *_EXPORTS})


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        # importing the submodule moesim.replay binds it on the package; moesim.replay stays the function
        if name == "replay" and isinstance(value, types.ModuleType):
            value = value.replay
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
