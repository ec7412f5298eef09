"""moesim: replay real Mixture-of-Experts routing against a modeled GPU expert cache and host link."""
__version__ = "0.1.0"

from .trace import Trace, TraceError, TraceMeta, read_trace, write_trace  # noqa: E402
from .replay import replay  # noqa: E402

__all__ = ["Trace", "TraceError", "TraceMeta", "read_trace", "replay", "write_trace", "__version__"]
