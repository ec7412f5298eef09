"""The Parquet trace format: round trips, and a clear error for every kind of bad file."""
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TRACES
from helpers import make_trace

from moesim.trace import Trace, TraceError, TraceMeta, iter_batches, read_trace, write_trace
from moesim.trace.schema import META_KEY


def sample(**kw):
    return make_trace([[[0, 1], [2, 3]], [[1, 2], [3, 0]], [[0, 3], [1, 2]]], num_experts=4, top_k=2, **kw)


def test_write_then_read_is_identical(tmp_path):
    trace = sample()
    weights = np.full((trace.num_rows, 2), 0.5, np.float32)
    t = Trace.from_arrays(trace.meta, request_id=trace.column("request_id"), phase=trace.column("phase"),
                          step=trace.column("step"), token_pos=trace.column("token_pos"), layer=trace.column("layer"),
                          expert_ids=trace.expert_ids(), expert_weights=weights,
                          predictions={1: np.where(trace.column("layer")[:, None] == 0, trace.expert_ids().astype(int), -1)},
                          token_id=np.arange(trace.num_rows))
    path = write_trace(t, tmp_path / "t.parquet")
    back = read_trace(path)
    assert back.table.equals(t.table)
    assert back.meta == t.meta
    assert back.prediction_horizons == [1]
    assert (back.predictions(1)[back.column("layer") == 1] == -1).all()
    assert back.table.schema.field("expert_ids").type.value_type == pa.uint8()  # narrow ids


def test_rows_are_sorted_into_canonical_order_on_build():
    trace = sample()
    order = np.random.default_rng(0).permutation(trace.num_rows)
    shuffled = Trace.from_arrays(trace.meta, **{c: trace.column(c)[order] for c in
                                                ("request_id", "phase", "step", "token_pos", "layer")},
                                 expert_ids=trace.expert_ids()[order])
    assert shuffled.table.equals(trace.table)


def test_streaming_by_row_batch_sees_every_row(tmp_path):
    trace = read_trace(TRACES / "dsv2lite-moebeyond-sample.parquet")
    rows = sum(t.num_rows for _, t, _ in iter_batches(TRACES / "dsv2lite-moebeyond-sample.parquet",
                                                       batch_rows=50_000))
    assert rows == trace.num_rows


def _write_table(table, meta, path):
    pq.write_table(table.replace_schema_metadata({META_KEY: meta.to_json()}), path)


def _bad(tmp_path, mutate, meta_mutate=None):
    trace = sample()
    table = mutate(trace.table)
    meta = TraceMeta(**{**trace.meta.__dict__})
    if meta_mutate:
        meta_mutate(meta)
    path = tmp_path / "bad.parquet"
    _write_table(table, meta, path)
    return path


def _set(table, name, values, typ=None):
    i = table.column_names.index(name)
    return table.set_column(i, name, pa.array(values, type=typ or table.schema.field(name).type))


@pytest.mark.parametrize("mutate,meta_mutate,message", [
    (lambda t: t.drop_columns(["step"]), None, "column 'step' is missing"),
    (lambda t: t.append_column("colour", pa.array(["red"] * t.num_rows)), None, "'colour' is not part of the moesim"),
    (lambda t: _set(t, "layer", t.column("layer").to_numpy().astype(np.int64), pa.int64()), None,
     "column 'layer' has type int64, expected uint16"),
    (lambda t: _set(t, "expert_ids", [[0, 7]] + t.column("expert_ids").to_pylist()[1:]), None,
     "row 0: expert id 7 is out of range"),
    (lambda t: _set(t, "expert_ids", [[0, 1, 2]] * t.num_rows, pa.list_(pa.uint8())), None,
     "a top-k that varies"),
    (lambda t: _set(t, "expert_ids", [[1, 1]] + t.column("expert_ids").to_pylist()[1:]), None,
     "names an expert twice"),
    (lambda t: _set(t, "layer", [0, 0, 0, 1, 0, 1]), None, "appears twice"),
    (lambda t: _set(t, "token_pos", [0, 0, 2, 2, 1, 1]), None, "comes after a later one"),
    (lambda t: _set(t, "step", [1, 1, 0, 0, 2, 2]), None, "rows must be sorted by step"),
    (lambda t: t.append_column("expert_weights", pa.FixedSizeListArray.from_arrays(
        pa.array([0.5, np.nan] + [0.5] * 10, pa.float32()), 2)), None, "row 0: expert weight nan"),
    (lambda t: t.append_column("expert_weights", pa.FixedSizeListArray.from_arrays(
        pa.array([0.5] * 11 + [-0.1], pa.float32()), 2)), None, "row 5: expert weight -0.1"),
    (lambda t: t, lambda m: setattr(m, "schema_version", 99), "schema_version 99 is not one this moesim reads"),
    (lambda t: _set(t, "layer", [0, 5, 0, 1, 0, 1]), None, "layer 5 is not one of the MoE layers"),
])
def test_bad_files_fail_with_a_message_naming_the_problem(tmp_path, mutate, meta_mutate, message):
    path = _bad(tmp_path, mutate, meta_mutate)
    with pytest.raises(TraceError) as err:
        read_trace(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_a_truncated_file_is_named_as_such(tmp_path):
    path = write_trace(read_trace(TRACES / "switch-base-8-stratamoe.parquet"), tmp_path / "t.parquet")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TraceError, match="not a readable Parquet trace"):
        read_trace(path)


def test_a_file_that_is_not_parquet_or_not_a_moesim_trace(tmp_path):
    (tmp_path / "a.parquet").write_text("request_id,layer\n0,1\n")
    with pytest.raises(TraceError, match="not a readable Parquet trace.*moesim convert"):
        read_trace(tmp_path / "a.parquet")
    pq.write_table(pa.table({"x": [1]}), tmp_path / "b.parquet")
    with pytest.raises(TraceError, match="without moesim metadata"):
        read_trace(tmp_path / "b.parquet")
    with pytest.raises(TraceError, match="no such file"):
        read_trace(tmp_path / "c.parquet")


def test_writing_is_atomic(tmp_path, monkeypatch):
    trace = sample()
    target = tmp_path / "t.parquet"
    write_trace(trace, target)
    before = target.read_bytes()

    class Boom(RuntimeError):
        pass

    def explode(self, table, row_group_rows=None):
        raise Boom

    from moesim.trace import io
    monkeypatch.setattr(io.TraceWriter, "write", explode)
    with pytest.raises(Boom):
        write_trace(trace, target)
    assert target.read_bytes() == before  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]  # and no half-written file is left


def test_metadata_is_plain_json(tmp_path):
    path = write_trace(sample(), tmp_path / "t.parquet")
    meta = json.loads(pq.ParquetFile(path).schema_arrow.metadata[META_KEY])
    assert meta["schema_version"] == 1 and meta["top_k"] == 2
    assert os.stat(path).st_size > 0


def test_a_written_trace_is_readable_by_others_as_the_umask_allows(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_trace(sample(), tmp_path / "t.parquet")
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o644


def test_the_head_of_a_stream_replays_like_the_trace_cut_at_that_step():
    from moesim.trace import access_stream
    import moesim
    trace = read_trace(TRACES / "switch-base-8-stratamoe.parquet")
    stream = access_stream(trace)
    n_seg = int(np.searchsorted(stream.seg_step, 30))  # the first 30 steps (tokens)
    cut = trace.table.slice(0, 30 * trace.meta.num_moe_layers)
    shorter = Trace(cut, trace.meta)
    for mode in ("count", "timed"):
        a = moesim.replay(trace, capacity=12, mode=mode, stream=stream.head(n_seg))
        b = moesim.replay(shorter, capacity=12, mode=mode)
        assert (a["hits"], a["misses"], a["steps"]) == (b["hits"], b["misses"], b["steps"])
        if mode == "timed":
            assert a["total_s"] == pytest.approx(b["total_s"])
