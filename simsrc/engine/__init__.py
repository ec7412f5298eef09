"""The compiled replay core. Sees numpy arrays and plain numbers only."""
from .count import count_replay
from .experts import ERR_CAPACITY, ERROR, PF_CANCELLED, PF_HARMFUL, PF_ISSUED, PF_LATE, PF_USED, PF_WASTED
from .timed import timed_replay

__all__ = ["count_replay", "timed_replay", "ERR_CAPACITY", "ERROR", "PF_CANCELLED", "PF_HARMFUL", "PF_ISSUED",
           "PF_LATE", "PF_USED", "PF_WASTED"]
