"""The compiled replay core. Sees numpy arrays and plain numbers only."""
from .count import count_replay
from .timed import (BYTES_DEMAND, BYTES_PREFETCH, BYTES_WASTED, ERR_CAPACITY, ERROR, PF_CANCELLED, PF_HARMFUL,
                    PF_ISSUED, PF_LATE, PF_USED, PF_WASTED, timed_replay)

__all__ = ["count_replay", "timed_replay", "BYTES_DEMAND", "BYTES_PREFETCH", "BYTES_WASTED", "ERR_CAPACITY",
           "ERROR", "PF_CANCELLED", "PF_HARMFUL", "PF_ISSUED", "PF_LATE", "PF_USED", "PF_WASTED"]
