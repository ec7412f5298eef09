"""moesim.actions: what a runtime does on a miss, one module per rule; adding a rule is adding a module.

On a miss the engine knows, for the missing expert, how many of the step's tokens it serves, its routing
weight (the largest the router gave it among those tokens, from the trace's `expert_weights`; -1 when the
replay has none, so "below a weight threshold" holds for every miss), when it would be resident if fetched
now (behind the link's queue), and when the host would finish computing it (behind the host's queue); the
rule picks an action:

    FETCH       copy it to the GPU over the link and compute it there (kept in the cache per the policy)
    HOST        compute it on the host (llama.cpp's --n-cpu-moe / -ot, KTransformers, Fiddler); nothing
                moves and nothing is cached; the layer ends when both the GPU and the host are done
    LOWBIT      copy a low-precision copy (--lowbit-bits per weight) and compute it on the GPU (HOBBIT);
                the copy is not cached, so a later access misses again
    SKIP        drop the expert from its tokens and renormalise the rest (expert skipping, AdapMoE):
                nothing moves or computes; its routing weight is the quality given up
    SUBSTITUTE  compute each of its tokens on the resident expert the router ranked highest among those
                the token did not choose (cache-aware routing); nothing moves. Where some token has no
                resident alternative (within --substitute-rank), the expert is fetched instead

Every rule module has the same shape: `NAME` (and `ORDER`) at its top, `TAKES`, the actions it may
return, `init(params) -> state` in plain Python (params: the replay's knobs `host_below`, `weight_below`),
a state namedtuple defined in the module, and a compiled
`decide(state, expert, tokens, weight, fetch_done, host_done) -> action`. A rule that reads `fetch_done`
or `host_done` says `WEIGHS_TIMES = True`: the engine works those out only for it (for the others it
passes 0), and count mode, which has no clock, refuses it. From `TAKES` the engine compiles only what the
rule can do (no host lane for a rule that never hosts, no routing weights for one that never reads them),
and replay() fetches only the columns it needs. The engine finds `decide` from the state's type, as it
finds a policy's operations, so no Python runs per miss. Static placement (a fixed GPU set, every other
expert on the host) is the `host` rule with that set pinned and no cache.
"""
from moesim.registry import Registry

FETCH, HOST, LOWBIT, SKIP, SUBSTITUTE = 0, 1, 2, 3, 4
ACTION_NAMES = ("fetch", "host", "lowbit", "skip", "substitute")

ACTIONS = Registry("action rule", __name__)


def takes(name: str) -> tuple[int, ...]:
    """The actions a registered rule may return (its module's TAKES)."""
    return tuple(ACTIONS.get(name).TAKES)


def weighs_times(name: str) -> bool:
    """Whether a rule decides by when a copy or the host would be done (count mode cannot run it)."""
    return bool(getattr(ACTIONS.get(name), "WEIGHS_TIMES", False))
