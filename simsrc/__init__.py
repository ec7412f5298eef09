"""moesim: replay real Mixture-of-Experts routing against a modeled GPU expert cache and host link."""
import sys
import types

from ._lazy import lazy as _lazy

__version__ = "0.1.0"

# The public names load on first use, so `moesim --version` and `moesim CMD --help` start
# without numba, numpy or pyarrow (0.45 s -> 0.1 s).
_EXPORTS = {
    "Trace": ".trace", "TraceError": ".trace", "TraceMeta": ".trace", "read_trace": ".trace",
    "write_trace": ".trace", "replay": ".replay", "hit_rate_curve": ".curve",
}
__all__ = sorted([*_EXPORTS, "__version__"])


__getattr__, __dir__ = _lazy(__name__, _EXPORTS)


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        # importing the submodule moesim.replay binds it on the package; moesim.replay stays the function
        if name == "replay" and isinstance(value, types.ModuleType):
            value = value.replay
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
