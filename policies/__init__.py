"""moesim.policies: one module per cache policy.

Every module has the same shape: `init(num_items, part_of, part_capacity,
stream, params) -> state` in plain Python (stream: the moesim.trace.AccessStream
being replayed; params: `seed`, `top_k`, and `timed`: whether experts can be busy; state: a namedtuple
class defined in the module), then four compiled operations
`on_hit(state, item, partition, t)`, `on_insert(state, item, partition, t)`,
`on_evict(state, item, partition)` and `victim(state, partition, busy) -> item or -1`.
`t` is the position in the access stream; the engine hands over the item's
partition (a constant 0 with one partition, which the compiler folds in);
victim searches test `busy` with `_busy.is_busy` (it is None in count mode, a byte per expert in timed mode).
A module may also define `warm(state)` -> items resident at start,
and `USES_SEED = True` if its decisions depend on replay's `seed`.
Adding a policy is adding a module here and a line below; the engine is untouched.
"""
import importlib

POLICIES = {
    "lru": "lru",
    "fifo": "fifo",
    "lfu": "lfu",
    "lfuda": "lfuda",
    "belady": "belady",
    "random": "random",
    "static": "static",
    "moe-infinity": "moe_infinity",
}


def canonical(name: str) -> str:
    """The registered spelling of a policy name ('LFU_DA' and 'lfu-da' alike), or a clear error."""
    key = name.lower().replace("_", "-")
    if key not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
    return key


def get(name: str):
    """The policy module for a name (see POLICIES)."""
    return importlib.import_module(f"{__name__}.{POLICIES[canonical(name)]}")


def uses_seed(name: str) -> bool:
    """Whether a policy's decisions depend on the seed (unknown names: assume they do)."""
    try:
        return bool(getattr(get(name), "USES_SEED", False))
    except ValueError:
        return True
