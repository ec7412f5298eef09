"""moesim.actions: what a runtime does on a miss, one module per rule; adding a rule is adding a module.

On a miss the timed engine knows, for the missing expert, how many of the step's tokens it serves, when it
would be resident if fetched now (behind the link's queue), and when the host would finish computing it
(behind the host's queue); the rule picks an action:

    FETCH  copy it to the GPU over the link and compute it there (kept in the cache per the policy)
    HOST   compute it on the host (llama.cpp's --n-cpu-moe / -ot, KTransformers, Fiddler); nothing moves
           and nothing is cached; the layer ends when both the GPU and the host are done

Every rule module has the same shape: `NAME` (and `ORDER`) at its top, `init(params) -> state` in plain
Python (params: the replay's `host_below`), a state namedtuple defined in the module, and a compiled
`decide(state, expert, tokens, fetch_done, host_done) -> action`. The engine finds `decide` from the
state's type, as it finds a policy's operations, so no Python runs per miss. Static placement (a fixed
GPU set, every other expert on the host) is the `host` rule with that set pinned and no cache.
"""
from moesim.registry import Registry

FETCH, HOST = 0, 1

ACTIONS = Registry("action rule", __name__)
