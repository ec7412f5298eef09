"""The MoE-Infinity eviction policy under a real predictor's prefetches, against the brute-force reference."""
import numpy as np
import pytest
from reference import moe_infinity_reference

import moesim
from moesim.hardware import get_hardware
from moesim.predict import plan
from moesim.trace import access_stream

from conftest import TRACES


@pytest.mark.parametrize("accounting", ["access", "segment"])
@pytest.mark.parametrize("requests", [3, 12])
def test_moe_infinity_policy_matches_reference(requests, accounting):
    # the recorded predictor's prefetches go in after each segment and are judged by the same rule; the
    # reference (tests/reference.py) rescores every resident at every victim search
    tr = moesim.read_trace(TRACES / "dsv2lite-moebeyond-test-predicted.parquet").select_requests(range(requests))
    stream = access_stream(tr)
    prefetch, _ = plan(tr, stream, "recorded", hardware=get_hardware("a100-pcie4"),
                       expert_bytes=tr.meta.bytes_per_expert)
    assert len(prefetch.item) > 0
    row = moesim.replay(tr, policy="moe-infinity", mode="count", accounting=accounting, capacity=40, stream=stream,
                        prefetch=prefetch, per_layer=True)
    want = moe_infinity_reference(stream.item.tolist(), np.repeat(stream.row_request, stream.top_k).tolist(),
                                  stream.seg_offsets.tolist(), [0] * stream.num_items, [40], stream.num_layers,
                                  stream.num_experts, accounting, (prefetch.offsets.tolist(), prefetch.item.tolist()))
    assert row["hits_per_layer"] == want


def test_moe_infinity_policy_runs_timed_with_prefetch():
    tr = moesim.read_trace(TRACES / "dsv2lite-moebeyond-test-predicted.parquet").select_requests(range(10))
    row = moesim.replay(tr, policy="moe-infinity", predictor="recorded", mode="timed", capacity="10%")
    assert row["prefetch_issued"] > 0 and row["hits"] + row["misses"] == row["accesses"]
