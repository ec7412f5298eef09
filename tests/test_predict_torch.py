"""The optional PyTorch GRU predictor: fits, saves a plain state_dict, loads with weights_only, stays causal."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import moesim  # noqa: E402
from moesim.predict import fit_predictor, load_model, predict  # noqa: E402
from moesim.trace import access_stream  # noqa: E402

from conftest import TRACES  # noqa: E402


def test_gru_roundtrip_and_causal(tmp_path):
    train = moesim.read_trace(TRACES / "dsv2lite-moebeyond-sample.parquet").select_requests(range(10))
    out = tmp_path / "gru.pt"
    model = fit_predictor([train], out, kind="gru", hidden=16, epochs=1)
    loaded = load_model(out)
    assert torch.load(out, weights_only=True)  # a plain state_dict, no pickled objects
    test = moesim.read_trace(TRACES / "dsv2lite-moebeyond-test-predicted.parquet").select_requests(range(3))
    stream = access_stream(test)
    a = predict(test, "learned", stream=stream, model=model)
    b = predict(test, f"learned:{out}", stream=stream)
    assert np.array_equal(a.item, b.item) and np.allclose(a.score, b.score, atol=1e-6)
    assert (a.horizon == 1).all() and (a.target_seg - a.src_seg == 1).all()
    # rewrite everything after segment `cut`: predictions issued at or before it stay the same
    cut = 30
    ids = test.expert_ids().copy()
    rows = stream.row_order[stream.seg_row_offsets[cut + 1]:]
    ids[rows] = (ids[rows] + 1) % test.meta.num_experts
    changed = moesim.Trace.from_arrays(
        test.meta, request_id=test.column("request_id"), phase=test.column("phase"), step=test.column("step"),
        token_pos=test.column("token_pos"), layer=test.column("layer"), expert_ids=ids)
    c = predict(changed, "learned", model=loaded)
    keep_a, keep_c = a.src_seg <= cut, c.src_seg <= cut
    assert np.array_equal(a.item[keep_a], c.item[keep_c]) and np.allclose(a.score[keep_a], c.score[keep_c], atol=1e-6)


def test_gru_file_that_is_not_a_model(tmp_path):
    bad = tmp_path / "x.pt"
    torch.save({"w": torch.zeros(2)}, bad)
    with pytest.raises(ValueError, match="not a moesim GRU"):
        load_model(bad)
