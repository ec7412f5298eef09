"""The MoE-Infinity eviction policy against a plain-Python reference of its definition."""
import numpy as np
import pytest

import moesim
from moesim.trace import access_stream

from conftest import TRACES


def reference(item, request, L, E, cap):
    """Count-mode replay of the priority rule in policies/moe_infinity.py, written out plainly."""
    cache, req_count, req_of, glob, last = set(), {}, {}, {}, {}
    clock = -1
    hits = 0

    def activate(x, t):
        nonlocal clock
        clock = t
        last[x] = t
        if req_of.get(x) != request[t]:
            req_of[x], req_count[x] = request[t], 0
        req_count[x] += 1
        glob[x] = glob.get(x, 0) + 1

    for t, x in enumerate(item):
        if x in cache:
            hits += 1
        else:
            if len(cache) == cap:
                now, q = item[clock] // E, request[clock]

                def prio(y):
                    d = (y // E - now) % L
                    rc = req_count[y] if req_of[y] == q else 0
                    return ((1 - d / L) * (rc + 1) * (glob[y] + 1), last[y])
                cache.remove(min(cache, key=prio))
            cache.add(x)
        activate(x, t)
    return hits


@pytest.mark.parametrize("requests", [3, 12])
def test_moe_infinity_policy_matches_reference(requests):
    tr = moesim.read_trace(TRACES / "dsv2lite-moebeyond-test-predicted.parquet").select_requests(range(requests))
    stream = access_stream(tr)
    row = moesim.replay(tr, policy="moe-infinity", mode="count", accounting="access", capacity=40, stream=stream)
    request = np.repeat(stream.row_request, stream.top_k).tolist()
    assert row["hits"] == reference(stream.item.tolist(), request, stream.num_layers, stream.num_experts, 40)


def test_moe_infinity_policy_runs_timed_with_prefetch():
    tr = moesim.read_trace(TRACES / "dsv2lite-moebeyond-test-predicted.parquet").select_requests(range(10))
    row = moesim.replay(tr, policy="moe-infinity", predictor="recorded", mode="timed", capacity="10%")
    assert row["prefetch_issued"] > 0 and row["hits"] + row["misses"] == row["accesses"]
