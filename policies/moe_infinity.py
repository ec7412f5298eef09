"""MoE-Infinity's activation-aware eviction: evict the expert with the lowest priority score.

Source: Xue et al., "MoE-Infinity: Offloading-Efficient MoE Model Serving",
arXiv 2401.14361 (the paper's cache replacement). A victim search serves the
access at stream position t that needs the slot (for a prefetch, the last
access of the segment that issued it); with `now` that access's layer and q
its request:

    priority(x) = (L - d) * (rc + 1) * (g + 1),   d = (layer(x) - now) mod L

d counts how many layers ahead of the running layer x's layer comes (0: this
layer; L-1: the layer just passed, needed again only at the next token). g
counts x's activations so far, rc those by request q. rc belongs to the last
request that used x: where requests share steps, another request's use
starts it again (at batch size 1 it is q's count). The +1s keep a
prefetched, not yet used expert from scoring zero. Priorities are integers,
compared exactly. Tie-break: the expert used (or inserted) longest ago (the
larger stream position told for it), then the lower id.

Activations are the uses the engine has told the policy of: a hit or insert
of x at a position t whose access is x, each position once. A prefetch is
told at the issuing segment's last access, which is another expert's, so it
is no activation (unless that access was x's own and x streamed through it
uncached). Per access (`--accounting access`) the activations before a victim
search are the demand accesses before t. By (step, layer) segment (the
default, and timed mode) a layer looks its distinct experts up together: the
engine tells the segment's hits first, each at its last access there, then
serves the misses in order of first use, each at its last access. So an
expert several of a layer's tokens use counts once there, for the request of
its last use, and a miss is judged with the whole segment's hits counted.
With one token per step the two accountings make the same calls.

How this differs from MoE-Infinity's own code (moe_infinity/memory/
expert_priority_score.py and expert_cache.py, its Python cache simulator;
its C++ runtime evicts the expert accessed longest ago):
- Layer term: the code weights a layer ahead of the running one by its
  absolute index, 1 - i/L (early layers kept: their prefetch has the least
  time to hide), and every layer at or behind the running one by 1; here the
  weight is the distance ahead, (L - d) / L, so the layer just passed is
  weighted least.
- Activation terms: the code multiplies ratios, not counts: the request's
  activations of x over its layer's activations (a layer with none yet
  counts as uniform), and x's visits over all cached experts' visits, each
  matrix normalised to sum 1 and then shifted by 1e-6; here raw counts + 1.
- Its visit count is an entry's hits while cached, lost on eviction; here
  the count runs over the whole replay.
- Its activation matrix counts the tokens routed to an expert; by segment,
  here, a layer's tokens that share an expert in one step count once.
- Its layer term treats the first half of the layers as an encoder (it was
  written for encoder-decoder Switch models); here all layers are one stack.

How it runs fast (the rule above, exactly; on the MoE-Beyond train trace at
10%, about 1 M accesses/s when every eviction rescored every resident, now
about 33 M/s in count mode per access, 28 by segment and 17 timed, on a
loaded 2-core VM; benchmarks/README.md). A priority changes only with its expert's own
activations, with the running layer, which scales a whole layer by one
factor, and with the request. So the weights (rc + 1) * (g + 1) are kept for
one request at a time, and each (partition, layer) *cell* keeps its residents
sorted heaviest first by weight (ties as above), which the layer's factor
does not reorder, and notes a lower bound on its lightest weight. A use or an
insert only marks its cell for sorting (sorting re-weighs it); the cell is
sorted when a search first needs it. A victim search for another request
re-sorts every cell under that request's counts: at batch size 1 once per
request, in a batch whenever consecutive searches serve different requests.
A full search walks the cells by rising factor from the layer just passed
(factor 1), reads each one's lightest resident, and stops once factor * (the
partition's least weight) exceeds the best priority found. It then notes a
bound on every other cell's priorities, and the stream positions the notes
hold for: t's layer's accesses around t in t's request run. A later miss
there takes the lightest of the first cell without a search while it stays
under that bound and under any insert into the running layer's cell, and
nothing went into another cell meanwhile (or fell there: a use by a request
other than the weights' takes away the request count it weighed with, and
counts as an insert). On that trace the victim lies in the layer just passed
98% of the time, and 3 of 4 victims take that quick path. In timed mode a
busy expert is passed over for the next lightest of its cell.

The state is one int64 array (and the stream), and the four operations are
kept small: the engine passes a policy's state to a call field by field, and
LLVM inlines the calls that are small enough into the engine's loop (the
quick path of victim(), on_hit() and on_insert() are; a change that makes
them larger can cost a quarter of the speed).
"""
from collections import namedtuple

import numpy as np
from numba import njit

from ._busy import is_busy

NAME = "moe-infinity"
ORDER = 7  # its place in lists and tables

WINDOW = 256  # how far either side of a full search its notes may hold (a bound on its scan of the stream)
INF = np.int64(1 << 53)  # the weight of an empty cell: real weights stay below (a request would need ~10^8
# tokens to reach it), and a layer factor times it stays far inside int64

# `ints` holds a header, a record per item, per cell and per partition, then the cells' slots, the request
# runs, the weight of each cell's lightest resident (INF: empty), where each search starts, a scratch area and
# the cells' layers.
(H_RUN_START, H_RUN_LEN, H_RUN_REQ, H_REQUEST, H_LAYERS, H_EXPERTS, H_CELLS, H_PARTS, H_SLOTS, H_RUNS, H_NUM_RUNS,
 H_LEAST, H_SCRATCH, H_INSERTS, H_CELL_LAYERS, HEADER) = range(16)
# (the request run of the stream position last looked up: where it starts, its length and its request; the
# request the weights are for (-1: none); the numbers of layers and of experts per layer; where the cell,
# partition, slot and run records start; how many runs there are; where the cells' least weights are; room for a
# cell's weights while it is sorted; inserts so far, and weights that fell, which a search's bound must notice
# alike; where the cells' layers are, side by side)
X_CELL, X_LAYER, X_REQ, X_RC, X_GLOB, X_LAST, X_W, X_INTS = range(8)  # per item: its cell and layer; the
# request X_RC counts for; that request's and all activations; its last use (a stream position, -1: never); its
# weight when its cell was last sorted (read only while the cell stays sorted). 64 bytes: one cache line.
C_LAYER, C_BASE, C_SIZE, C_SORTED, C_INSERTS, C_INTS = range(6)  # per cell: its layer; its first slot and
# number of residents; that number again if the slots hold them heaviest first, -1 if uses or inserts came since
# it was last sorted; inserts into it so far. (One more cell than the partitions have: always empty.)
S_FIRST, S_FAC, S_NOW_CELL, S_INTS = range(4)  # per partition and running layer: the cell a search starts
# from (the layer just below the running one, or the nearest below that), its factor, and the cell of the
# running layer unless it is the first (else the always empty cell)
P_C0, P_C1, P_START, P_WIN_START, P_WIN_LEN, P_FIRST, P_FAC, P_BOUND, P_NOW_CELL, P_OTHER_INSERTS, P_INTS = \
    range(11)  # per partition: its cells [c0, c1); where its start cells (one per running layer) are; the
# stream positions the last full search's notes hold for (its layer's around it, in its request run; a length
# of 0: none), the cell it started from and that cell's factor, a priority no resident of the other cells can
# reach under that layer but those of the running layer's own cell (P_NOW_CELL; the always empty cell if none),
# which gets the layer's misses, and the inserts then made outside that cell

MoeInfinityState = namedtuple("MoeInfinityState", "item ints")


def init(num_items, part_of, part_capacity, stream, params):
    E, L = int(stream.num_experts), int(stream.num_layers)
    layer_of = np.arange(num_items) // E
    # cells: one per (partition, layer) that has experts, numbered partition-major, layers ascending
    cell_key, cell_of = np.unique(np.asarray(part_of, np.int64) * L + layer_of, return_inverse=True)
    cell_part, cell_layer = cell_key // L, cell_key % L
    n_cells, n_parts = len(cell_key), len(part_capacity)
    cell_cap = np.minimum(np.bincount(cell_of, minlength=n_cells), np.asarray(part_capacity, np.int64)[cell_part])
    c0 = np.searchsorted(cell_part, np.arange(n_parts))
    c1 = np.searchsorted(cell_part, np.arange(n_parts), side="right")
    # request runs: where each stretch of accesses from one request starts, then the stream's end
    top_k = max(int(stream.top_k), 1)
    req = np.asarray(stream.row_request, np.int64)
    first = np.flatnonzero(np.r_[True, req[1:] != req[:-1]]) if len(req) else np.zeros(0, np.int64)
    runs = np.full((len(first) + 1, 2), -1, np.int64)
    runs[:-1, 0] = first * top_k
    runs[:-1, 1] = req[first]
    runs[-1, 0] = len(req) * top_k

    o_cells = HEADER + num_items * X_INTS
    o_parts = o_cells + (n_cells + 1) * C_INTS
    o_slots = o_parts + n_parts * P_INTS
    o_runs = o_slots + max(int(cell_cap.sum()), 1)
    o_least = o_runs + runs.size
    o_starts = o_least + n_cells + 1
    o_scratch = o_starts + n_parts * L * S_INTS
    o_cell_layers = o_scratch + max(int(cell_cap.max(initial=0)), 1)
    header = np.array([0, 0, -1, -1, L, E, o_cells, o_parts, o_slots, o_runs, len(runs) - 1, o_least, o_scratch, 0,
                       o_cell_layers], np.int64)
    items = np.zeros((num_items, X_INTS), np.int64)
    items[:, X_CELL] = cell_of
    items[:, X_LAYER] = layer_of
    items[:, X_REQ] = items[:, X_LAST] = -1
    cells = np.zeros((n_cells + 1, C_INTS), np.int64)
    cells[:-1, C_LAYER] = cell_layer
    cells[:-1, C_BASE] = o_slots + np.r_[0, np.cumsum(cell_cap)[:-1]]
    cells[-1, C_LAYER] = -1
    parts = np.zeros((n_parts, P_INTS), np.int64)
    parts[:, P_C0], parts[:, P_C1] = c0, c1
    parts[:, P_START] = o_starts + L * S_INTS * np.arange(n_parts)
    parts[:, P_NOW_CELL] = n_cells
    # a search visits cells by rising layer factor: from the layer just below the running one, downwards, wrapping
    starts = np.zeros((n_parts, L, S_INTS), np.int64)
    for p in range(n_parts):
        fac = L - (cell_layer[c0[p]:c1[p], None] - np.arange(L)) % L  # [cell, running layer]
        for now in range(L):
            order = c0[p] + np.argsort(fac[:, now], kind="stable")
            on_now = c0[p] + np.flatnonzero(fac[:, now] == L)
            starts[p, now] = (order[0], fac[order[0] - c0[p], now],
                              on_now[0] if len(on_now) and on_now[0] != order[0] else n_cells)
    ints = np.concatenate([header, items.ravel(), cells.ravel(), parts.ravel(), np.full(o_runs - o_slots, -1),
                           runs.ravel(), np.full(n_cells + 1, INF), starts.ravel(),
                           np.zeros(o_cell_layers - o_scratch), cell_layer, [-1]]).astype(np.int64)
    return MoeInfinityState(stream.item, _aligned(ints))


def _aligned(ints):
    """ints, copied where each item's record (64 bytes) lies on one cache line. Where numpy's allocation put it
    across two, the replay ran 10-20 % slower, by process."""
    buf = np.empty(len(ints) + 8, np.int64)
    skip = -(buf.ctypes.data // 8 + HEADER) % 8
    out = buf[skip:skip + len(ints)]
    out[:] = ints
    return out


# Positions in `ints` are cast to unsigned where they index it (U): numba then drops its negative-index
# wrap-around, which doubled the operations' code and kept LLVM from inlining them into the engine's loop.
U = np.uint64


@njit(cache=True, _nrt=False, inline="always")
def _xi(x):
    """Where item x's record starts."""
    return HEADER + X_INTS * np.int64(x)


@njit(cache=True, _nrt=False, inline="always")
def _ci(ints, c):
    """Where cell c's record starts."""
    return ints[U(H_CELLS)] + C_INTS * c


@njit(cache=True, _nrt=False, inline="always")
def _older(ints, a, b):
    """The tie-break: a goes before b (used longer ago, then the lower id)."""
    la = ints[U(_xi(a) + X_LAST)]
    lb = ints[U(_xi(b) + X_LAST)]
    return la < lb or (la == lb and a < b)


@njit(cache=True, _nrt=False, inline="always")
def _weigh(ints, x):
    """x's weight under the request the weights are for, noted and returned: (its activations by that request
    + 1) * (all its activations + 1)."""
    i = _xi(x)
    rc = ints[U(i + X_RC)] if ints[U(i + X_REQ)] == ints[U(H_REQUEST)] else 0
    w = (rc + 1) * (ints[U(i + X_GLOB)] + 1)
    ints[U(i + X_W)] = w
    return w


@njit(cache=True, _nrt=False)
def _sort(ints, c):
    """Weigh cell c's residents, put them back in order (an insertion sort: a cell is nearly sorted) and note the
    weight of its lightest. The weights are put next to each other, so the sort compares without chasing records."""
    ci = _ci(ints, c)
    base = ints[U(ci + C_BASE)]
    n = ints[U(ci + C_SIZE)]
    w = ints[U(H_SCRATCH)]
    for k in range(n):
        ints[U(w + k)] = _weigh(ints, ints[U(base + k)])
    for j in range(1, n):
        x = ints[U(base + j)]
        wx = ints[U(w + j)]
        k = j
        while k > 0:  # move every lighter resident down one slot
            y = ints[U(base + k - 1)]
            wy = ints[U(w + k - 1)]
            if wy > wx or (wy == wx and not _older(ints, y, x)):
                break
            ints[U(base + k)] = y
            ints[U(w + k)] = wy
            k -= 1
        ints[U(base + k)] = x
        ints[U(w + k)] = wx
    ints[U(ci + C_SORTED)] = n
    ints[U(ints[U(H_LEAST)] + c)] = ints[U(w + n - 1)] if n else INF


@njit(cache=True, _nrt=False)
def _find_run(ints, t):
    """The request of stream position t, from the request runs (a binary search); the run is noted, so that the
    positions after it, and those before it in the same run, are looked up with two compares."""
    runs = ints[H_RUNS]
    lo = 0
    hi = ints[H_NUM_RUNS]  # (its record is the stream's end)
    while hi - lo > 1:  # the last run that starts at or before t
        mid = (lo + hi) // 2
        if ints[runs + 2 * mid] <= t:
            lo = mid
        else:
            hi = mid
    ints[H_RUN_START] = ints[runs + 2 * lo]
    ints[H_RUN_LEN] = ints[runs + 2 * lo + 2] - ints[runs + 2 * lo]
    ints[H_RUN_REQ] = ints[runs + 2 * lo + 1]
    return ints[H_RUN_REQ]


@njit(cache=True, _nrt=False, inline="always")
def _request_of(ints, t):
    """The request of stream position t >= 0. Segment accounting tells the policy of a layer's experts each at
    its last access there, so t may step back within a (step, layer), and there into another request's tokens."""
    if U(t - ints[U(H_RUN_START)]) < U(ints[U(H_RUN_LEN)]):  # (unsigned: a t before the run fails too)
        return ints[U(H_RUN_REQ)]
    return _find_run(ints, t)


@njit(cache=True, _nrt=False)
def _switch(ints, q):
    """A victim search for request q while the weights are another's: every resident's request count changes
    (to q's, or to none), some downwards. Re-sort every cell (which re-weighs it), void every partition's bound."""
    ints[H_REQUEST] = q
    for p in range((ints[H_SLOTS] - ints[H_PARTS]) // P_INTS):
        ints[ints[H_PARTS] + P_INTS * p + P_WIN_LEN] = 0
    for c in range((ints[H_PARTS] - ints[H_CELLS]) // C_INTS):
        _sort(ints, c)


@njit(cache=True, _nrt=False)
def _take(ints, x, t):
    """The access at t uses x, and either t lies outside the request run last looked up or x's request count
    is another request's. Find t's request q; if x's count is another's, it starts again for q, and if it
    counted in x's weight (the weights are for that other request), the weight falls, to 1 * (g + 2): x's cell's
    noted least weight must stay a lower bound, and the searches' bounds on other cells must be void, as after
    an insert."""
    q = _request_of(ints, t)
    i = _xi(x)
    if ints[i + X_REQ] == q:
        return
    if ints[i + X_REQ] == ints[H_REQUEST]:
        c = ints[i + X_CELL]
        k = ints[H_LEAST] + c
        ints[k] = min(ints[k], ints[i + X_GLOB] + 2)
        ints[_ci(ints, c) + C_INSERTS] += 1
        ints[H_INSERTS] += 1
    ints[i + X_REQ] = q
    ints[i + X_RC] = 0


@njit(cache=True, _nrt=False, inline="always")
def _activate(st, x, t):
    """x is used or inserted at stream position t: an activation when the stream's access at t is x, once per
    position. Returns x's weight now, under the request the weights are for (a use does not need it: its cell
    is sorted again, which re-weighs it, before a search reads it)."""
    ints = st.ints
    i = _xi(x)
    r = ints[U(i + X_REQ)]
    rc = ints[U(i + X_RC)]
    g = ints[U(i + X_GLOB)]
    if t >= 0:
        if st.item[U(t)] == x and ints[U(i + X_LAST)] != t:
            # (unsigned: a t before the run fails too)
            if U(t - ints[U(H_RUN_START)]) >= U(ints[U(H_RUN_LEN)]) or r != ints[U(H_RUN_REQ)]:
                _take(ints, x, t)
                r = ints[U(i + X_REQ)]
                rc = ints[U(i + X_RC)]
            rc += 1
            g += 1
            ints[U(i + X_RC)] = rc
            ints[U(i + X_GLOB)] = g
        ints[U(i + X_LAST)] = t
    return (rc + 1 if r == ints[U(H_REQUEST)] else 1) * (g + 1)


# The three updates stay small (the engine's loop then inlines them): a use or an insert only marks its cell
# for sorting, and keeps the cell's noted least weight a lower bound (a weight grows, except where another
# request's use takes x's request count away: _take).
@njit(cache=True, _nrt=False)
def on_hit(st, x, p, t):
    _activate(st, x, t)
    ints = st.ints
    ints[U(_ci(ints, ints[U(_xi(x) + X_CELL)]) + C_SORTED)] = -1


@njit(cache=True, _nrt=False)
def on_insert(st, x, p, t):
    w = _activate(st, x, t)
    ints = st.ints
    i = _xi(x)
    c = ints[U(i + X_CELL)]
    ci = _ci(ints, c)
    n = ints[U(ci + C_SIZE)]
    ints[U(ints[U(ci + C_BASE)] + n)] = x
    ints[U(ci + C_SIZE)] = n + 1
    ints[U(ci + C_SORTED)] = -1
    ints[U(ci + C_INSERTS)] += 1
    ints[U(H_INSERTS)] += 1
    k = U(ints[U(H_LEAST)] + c)
    ints[k] = min(ints[k], w)


@njit(cache=True, _nrt=False)
def _take_out(ints, ci, x):
    """x leaves cell ci from a slot before its last (whose resident is already counted out): the last one takes
    x's slot, and the cell is marked for sorting (the least weight noted for it still bounds)."""
    base = ints[ci + C_BASE]
    n = ints[ci + C_SIZE]
    j = base
    while ints[j] != x:
        j += 1
    ints[j] = ints[base + n]
    ints[ci + C_SORTED] = -1


@njit(cache=True, _nrt=False)
def on_evict(st, x, p):
    ints = st.ints
    i = _xi(x)
    c = ints[U(i + X_CELL)]
    ci = _ci(ints, c)
    base = ints[U(ci + C_BASE)]
    n = ints[U(ci + C_SIZE)] - 1
    ints[U(ci + C_SIZE)] = n
    if ints[U(base + n)] != x:  # x is not the last: the last fills its slot and the order is broken
        _take_out(ints, ci, x)
    elif ints[U(ci + C_SORTED)] >= 0:  # the lightest left (the usual victim): the next one up is the lightest
        ints[U(ci + C_SORTED)] = n
        ints[U(ints[U(H_LEAST)] + c)] = ints[U(_xi(ints[U(base + n - 1)]) + X_W)] if n else INF


@njit(cache=True, _nrt=False, inline="always")
def _least_in(ints, a, b):
    """The least of ints[a:b] (unsigned positions: no wrap-around test, so the loop vectorises)."""
    least = INF
    for k in range(U(a), U(b)):
        least = min(least, ints[k])
    return least


@njit(cache=True, _nrt=False)
def _search(ints, item, part, busy, t):
    """The victim, searched in full. The partition then notes, for the running layer's next misses, the cell
    the search started from and a bound on the priorities in every other cell but the running layer's own."""
    now = ints[_xi(item[t]) + X_LAYER] if t >= 0 else 0
    q = _request_of(ints, t) if t >= 0 else -1  # (-1: no request's counts, before the replay starts)
    if q != ints[H_REQUEST]:
        _switch(ints, q)
    pi = ints[H_PARTS] + P_INTS * part
    c0 = ints[pi + P_C0]
    c1 = ints[pi + P_C1]
    row = ints[pi + P_START] + S_INTS * now
    first = ints[row + S_FIRST]
    now_cell = ints[row + S_NOW_CELL]
    o = ints[H_LEAST]
    least = min(_least_in(ints, o + c0, o + c1), ints[o + now_cell])  # no resident of the partition weighs less
    if least == INF:
        return -1
    L = ints[H_LAYERS]
    c = first
    best = -1
    best_s = INF * L
    for _ in range(c1 - c0):
        ci = _ci(ints, c)
        d = ints[ci + C_LAYER] - now
        if d < 0:
            d += L
        fac = L - d
        if fac * least > best_s:  # every cell from here on has a larger factor
            break
        if ints[ci + C_SORTED] < 0:
            _sort(ints, c)
        base = ints[ci + C_BASE]
        j = ints[ci + C_SIZE] - 1
        while j >= 0 and is_busy(busy, ints[base + j]):  # a busy resident is passed over for the next lightest
            j -= 1
        if j >= 0:
            y = ints[base + j]
            s = fac * ints[_xi(y) + X_W]
            if s < best_s or (s == best_s and _older(ints, y, best)):
                best = y
                best_s = s
        c = c - 1 if c > c0 else c1 - 1
    # the bound: each other cell's factor times its least weight (the running layer's cell, which gets this
    # layer's inserts, is checked apart; a loop of selects over side-by-side arrays, so it vectorises)
    bound = INF * L
    lay = U(ints[H_CELL_LAYERS])
    for k in range(U(c0), U(c1)):
        d = ints[lay + k] - now
        v = (L - (d + L if d < 0 else d)) * ints[U(o) + k]
        bound = min(bound, INF * L if k == U(first) or k == U(now_cell) else v)
    # the positions these notes hold for: t's layer's, in t's request run (the weights are its request's), at
    # most WINDOW either side (a layer's accesses in one step lie side by side)
    lo = t
    hi = t + 1
    if t >= 0:
        start = ints[H_RUN_START]
        end = start + ints[H_RUN_LEN]
        E = ints[H_EXPERTS]
        x0 = now * E  # now's first item (items are numbered layer-major)
        while lo > start and lo > t - WINDOW and U(item[lo - 1] - x0) < U(E):
            lo -= 1
        while hi < end and hi < t + WINDOW and U(item[hi] - x0) < U(E):
            hi += 1
    ints[pi + P_WIN_START] = lo
    ints[pi + P_WIN_LEN] = hi - lo if t >= 0 else 0
    ints[pi + P_FIRST] = first
    ints[pi + P_FAC] = ints[row + S_FAC]
    ints[pi + P_BOUND] = bound
    ints[pi + P_NOW_CELL] = now_cell
    ints[pi + P_OTHER_INSERTS] = ints[H_INSERTS] - ints[_ci(ints, now_cell) + C_INSERTS]
    return best


@njit(cache=True, _nrt=False)
def victim(st, part, busy, t):
    # The running layer's misses after its first, where the last full search left notes: the lightest of the
    # cell it started from wins while its priority stays below the bound on the other cells' and below any
    # insert into the running layer's cell, and nothing went into (or fell in) another cell since (inserts into
    # the first cell leave it unsorted). Small enough to be inlined into the engine's loop; the full search is
    # the call.
    ints = st.ints
    pi = ints[U(H_PARTS)] + P_INTS * part
    # t lies where the partition's last full search left notes (unsigned: a t before them, or of -1, fails)
    if U(t - ints[U(pi + P_WIN_START)]) < U(ints[U(pi + P_WIN_LEN)]):
        ci = _ci(ints, ints[U(pi + P_FIRST)])
        n = ints[U(ci + C_SORTED)]
        now_cell = ints[U(pi + P_NOW_CELL)]
        if n > 0 and \
                ints[U(H_INSERTS)] - ints[U(_ci(ints, now_cell) + C_INSERTS)] == ints[U(pi + P_OTHER_INSERTS)]:
            y = ints[U(ints[U(ci + C_BASE)] + n - 1)]
            s = ints[U(pi + P_FAC)] * ints[U(_xi(y) + X_W)]
            if s < ints[U(pi + P_BOUND)] and s < ints[U(H_LAYERS)] * ints[U(ints[U(H_LEAST)] + now_cell)] and \
                    not is_busy(busy, U(y)):
                return y
    return _search(ints, st.item, part, busy, t)
