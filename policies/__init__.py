"""moesim.policies: one module per cache policy; adding a policy is adding a module here.

Every module has the same shape. At its top, `NAME` (and optional `ALIASES`,
and `ORDER`, its place in lists) registers it: the CLI choices, the grid, the
README table and the contract tests (tests/test_policy_contract.py) find it
by that name, and no other file changes. Then `init(num_items, part_of,
part_capacity, stream, params) -> state` in plain Python (stream: the
moesim.trace.AccessStream being replayed; params: `seed`, `top_k`, and
`timed`: whether experts can be busy; state: a namedtuple class defined in
the module), and four compiled operations:

    on_hit(state, item, partition, t)
    on_insert(state, item, partition, t)
    on_evict(state, item, partition)
    victim(state, partition, busy, t) -> item, or -1 when every resident is busy

`t` is the position in the access stream of the access being served (for a
victim search: the access that needs the slot; for a prefetch: the last
access of the segment that issued it, and -1 for experts placed before the
replay starts). The engine hands over the item's partition (a constant 0 with
one partition, which the compiler folds in); victim searches test `busy` with
`_busy.is_busy` (it is None in count mode, a byte per expert in timed mode).
A module may also define `warm(state)` -> items resident at start (the policy's to evict later),
`pins(state)` -> items resident throughout and outside the policy (they take their partition's slots, the
engine never offers them to `victim`, and hits on them are not reported), and
`USES_SEED = True` if its decisions depend on replay's `seed`, and `LIBCACHESIM = "Class"` when
libCacheSim implements the same policy: the contract tests then check it hit for hit.
"""
from moesim.registry import Registry

POLICIES = Registry("policy", __name__)


def canonical(name: str) -> str:
    """The registered spelling of a policy name ('LFU_DA' and 'lfu-da' alike), or a clear error."""
    return POLICIES.canonical(name)


def get(name: str):
    """The policy module for a name."""
    return POLICIES.get(name)


def names() -> list[str]:
    return POLICIES.names()


def uses_seed(name: str) -> bool:
    """Whether a policy's decisions depend on the seed (unknown names: assume they do)."""
    try:
        return bool(getattr(get(name), "USES_SEED", False))
    except ValueError:
        return True
