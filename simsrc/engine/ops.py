"""The four policy operations, resolved at compile time from the policy's state type,
and the partition of an expert.

Each policy keeps its state in a namedtuple class of its own module; these
generic operations find that module and call its compiled functions. The
engine's compiled code is then specialised by a type that pickles by name, so
numba's on-disk cache hits in every new process. (Passing the policy's jitted
functions as arguments would not: numba keys those by the dispatcher's memory
address, and recompiles each run.)
"""
import functools
import hashlib
import sys
from pathlib import Path

from numba import njit
from numba.core import types
from numba.core.errors import TypingError
from numba.extending import overload


def _policy_module(state_type):
    cls = getattr(state_type, "instance_class", None)
    mod = sys.modules.get(getattr(cls, "__module__", ""), None)
    if mod is None or not all(hasattr(mod, f) for f in ("on_hit", "on_insert", "on_evict", "victim")):
        raise TypingError(f"{state_type} is not a policy state: a policy keeps its state in a namedtuple "
                          f"defined in its own module, next to on_hit/on_insert/on_evict/victim")
    return mod


@functools.cache
def sources_digest() -> str:
    """A digest of the engine's, the policies' and the action rules' sources (see compiled_loop)."""
    from .. import actions, policies
    files = sorted([*Path(__file__).parent.glob("*.py"), *Path(policies.__file__).parent.glob("*.py"),
                    *Path(actions.__file__).parent.glob("*.py")])
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()[:16]


def compiled_loop(loop):
    """njit a replay loop, cached on disk under a name that carries sources_digest().

    numba's disk cache checks only the source file of the function it caches, but the loops inline the
    policies' code (and the engine's helpers): without the digest, a new process would replay an edited
    policy with its old compiled code. An edit makes a new name, so the loop compiles once. (A literal
    argument would do the same, but numba then retypes every call: 0.05-0.2 s a replay.)
    _nrt=False: no reference counting in the loop. With it, numba increfs and decrefs the policy's state
    arrays on every access (~10x slower); so a loop allocates nothing and gets its work arrays from its caller.
    """
    loop.__qualname__ = f"{loop.__qualname__}_{sources_digest()}"
    return njit(cache=True, _nrt=False)(loop)


def _rule_module(state_type):
    cls = getattr(state_type, "instance_class", None)
    mod = sys.modules.get(getattr(cls, "__module__", ""), None)
    if mod is None or not hasattr(mod, "decide"):
        raise TypingError(f"{state_type} is not an action rule's state: a rule keeps its state in a namedtuple "
                          f"defined in its own module, next to decide()")
    return mod


def decide(rule, x, tokens, weight, fetch_done, host_done):
    return sys.modules[type(rule).__module__].decide(rule, x, tokens, weight, fetch_done, host_done)


@overload(decide)
def _decide(rule, x, tokens, weight, fetch_done, host_done):
    if isinstance(rule, types.NoneType):  # count_replay without a rule: fetch (decides() keeps it from here)
        return lambda rule, x, tokens, weight, fetch_done, host_done: 0
    fn = _rule_module(rule).decide
    return lambda rule, x, tokens, weight, fetch_done, host_done: fn(rule, x, tokens, weight, fetch_done, host_done)


def weighs_times(rule):
    return bool(getattr(sys.modules[type(rule).__module__], "WEIGHS_TIMES", False))


@overload(weighs_times)
def _weighs_times(rule):
    # a constant per rule type: the compiler drops the work for rules that do not look at the times
    value = bool(getattr(_rule_module(rule), "WEIGHS_TIMES", False))
    return lambda rule: value


# What a rule may do, from its module's TAKES (moesim.actions: FETCH 0, HOST 1, LOWBIT 2, SKIP 3, SUBSTITUTE 4),
# as constants per rule type, so a loop compiled for a rule holds only the paths it can take. A rule of None
# (count_replay called without one) only fetches.
def _takes(rule):
    return () if rule is None else tuple(sys.modules[type(rule).__module__].TAKES)


def _takes_type(rule):
    return () if isinstance(rule, types.NoneType) else tuple(_rule_module(rule).TAKES)


def decides(rule):
    return _takes(rule) not in ((), (0,))


@overload(decides)
def _decides(rule):
    value = _takes_type(rule) not in ((), (0,))
    return lambda rule: value


def may_host(rule):
    return 1 in _takes(rule)


@overload(may_host)
def _may_host(rule):
    value = 1 in _takes_type(rule)
    return lambda rule: value


def may_lowbit(rule):
    return 2 in _takes(rule)


@overload(may_lowbit)
def _may_lowbit(rule):
    value = 2 in _takes_type(rule)
    return lambda rule: value


def _module_of(state):
    return sys.modules[type(state).__module__]


# Plain-Python versions (used with NUMBA_DISABLE_JIT=1); the overloads below are what compiled code calls.
def on_hit(state, x, part, t):
    _module_of(state).on_hit(state, x, part, t)


def on_insert(state, x, part, t):
    _module_of(state).on_insert(state, x, part, t)


def on_evict(state, x, part):
    _module_of(state).on_evict(state, x, part)


def victim(state, part, busy, t):
    return _module_of(state).victim(state, part, busy, t)


def partition(part_of, x):
    """The cache partition of expert x; part_of is None when the whole cache is one partition."""
    return 0 if part_of is None else part_of[x]


def size_of(size, x):
    """What expert x takes of its partition's capacity: one slot when size is None (every expert the same
    size, capacities in experts), else its bytes (capacities in bytes)."""
    return 1 if size is None else size[x]


def seconds_of(transfer_s, x):
    """A transfer's seconds on a lane: the one figure when every expert is one size, else expert x's."""
    return transfer_s if isinstance(transfer_s, float) else transfer_s[x]


def freed_enough(size, free, p, v, need):
    """After evicting v from partition p to make room for an expert of `need`: whether it fits now. With
    one slot per expert (size None) always: it takes v's slot, and free[p] is not touched. With sizes,
    v's bytes are freed first."""
    if size is None:
        return True
    free[p] += size[v]
    return free[p] >= need


def take_room(size, free, p, need):
    """The expert goes into the room its evictions made: with one slot per expert, the victim's slot (nothing
    to count); with sizes, its bytes."""
    if size is not None:
        free[p] -= need


def partition_map(part_of, part_capacity):
    """What the engine loops take as part_of: None for a single partition (see _partition below)."""
    return None if len(part_capacity) == 1 else part_of


@overload(on_hit)
def _on_hit(state, x, part, t):
    fn = _policy_module(state).on_hit
    return lambda state, x, part, t: fn(state, x, part, t)


@overload(on_insert)
def _on_insert(state, x, part, t):
    fn = _policy_module(state).on_insert
    return lambda state, x, part, t: fn(state, x, part, t)


@overload(on_evict)
def _on_evict(state, x, part):
    fn = _policy_module(state).on_evict
    return lambda state, x, part: fn(state, x, part)


@overload(victim)
def _victim(state, part, busy, t):
    fn = _policy_module(state).victim
    return lambda state, part, busy, t: fn(state, part, busy, t)


# With one partition the engine passes part_of=None, and every partition index
# is the constant 0: the compiler keeps that partition's list ends and counters
# at fixed addresses instead of looking the partition up per access (~15%).
@overload(partition)
def _partition(part_of, x):
    if isinstance(part_of, types.NoneType):
        return lambda part_of, x: 0
    return lambda part_of, x: part_of[x]


# Likewise experts of one size pass size=None: a slot is the constant 1, and "evict until the expert fits"
# (a `while True` that breaks on freed_enough) compiles to the single eviction of a full partition it always
# was, with no store to the free count.
@overload(size_of)
def _size_of(size, x):
    if isinstance(size, types.NoneType):
        return lambda size, x: 1
    return lambda size, x: size[x]


@overload(seconds_of)
def _seconds_of(transfer_s, x):
    if isinstance(transfer_s, types.Float):
        return lambda transfer_s, x: transfer_s
    return lambda transfer_s, x: transfer_s[x]


@overload(freed_enough)
def _freed_enough(size, free, p, v, need):
    if isinstance(size, types.NoneType):
        return lambda size, free, p, v, need: True

    def freed(size, free, p, v, need):
        free[p] += size[v]
        return free[p] >= need
    return freed


@overload(take_room)
def _take_room(size, free, p, need):
    if isinstance(size, types.NoneType):
        return lambda size, free, p, need: None

    def take(size, free, p, need):
        free[p] -= need
    return take
