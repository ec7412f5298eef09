"""The compiled replay core. Sees numpy arrays and plain numbers only (in the bundles of bundles.py)."""
from .bundles import Cache, Compute, Host, Link, LowBit, PrefetchPlan, Stream
from .count import count_replay
from .experts import (BAD_VICTIM, ERR_VICTIM, ERROR, GPU_S, HOST_COMPUTED, HOST_S, LOWBIT_TOKENS, OVERHEAD_S,
                      PF_CANCELLED, PF_HARMFUL, PF_ISSUED, PF_LATE, PF_USED, PF_WASTED)
from .timed import timed_replay

__all__ = ["BAD_VICTIM", "Cache", "Compute", "ERR_VICTIM", "ERROR", "GPU_S", "HOST_COMPUTED", "HOST_S", "Host",
           "LOWBIT_TOKENS", "Link", "LowBit", "OVERHEAD_S", "PF_CANCELLED", "PF_HARMFUL", "PF_ISSUED", "PF_LATE",
           "PF_USED", "PF_WASTED", "PrefetchPlan", "Stream", "count_replay", "timed_replay"]
