"""The access stream's compiled layout and its cache on disk; the compiled read checks."""
import os
import shutil

import numpy as np
import pyarrow as pa
import pytest
from conftest import TRACES
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import access_stream_reference

import moesim
from moesim.trace import Trace, TraceError, TraceMeta, access_stream, cache, read_trace, write_trace
from moesim.trace.io import check_table
from moesim.trace.schema import check_order, check_rows

SAMPLE = TRACES / "dsv2lite-moebeyond-sample.parquet"


def batched_trace(seed: int, *, requests: int, batch: int, layers: int, experts: int, top_k: int,
                  drop: float = 0.0) -> Trace:
    """Requests run in batches as the recorder writes them: a batch's prompts share one prefill step,
    then each decode step holds one token of every batch member still going. Request ids and token
    positions may have gaps (rows dropped); MoE layers are not numbered from 0."""
    rng = np.random.default_rng(seed)
    moe_layers = sorted(rng.choice(np.arange(1, 2 * layers + 1), size=layers, replace=False).tolist())
    rows = {"request_id": [], "phase": [], "step": [], "token_pos": [], "layer": []}
    ids = []
    step = 0
    for b0 in range(0, requests, batch):
        members = range(b0, min(b0 + batch, requests))
        prompt = {r: int(rng.integers(1, 6)) for r in members}
        decode = {r: int(rng.integers(0, 5)) for r in members}
        for r in members:
            for pos in range(prompt[r]):
                for lay in moe_layers:
                    rows["request_id"].append(3 * r), rows["phase"].append(0), rows["step"].append(step)
                    rows["token_pos"].append(pos), rows["layer"].append(lay)
                    ids.append(rng.choice(experts, size=top_k, replace=False))
        step += 1
        for t in range(max(decode.values())):
            for r in members:
                if t < decode[r]:
                    for lay in moe_layers:
                        rows["request_id"].append(3 * r), rows["phase"].append(1), rows["step"].append(step)
                        rows["token_pos"].append(prompt[r] + t), rows["layer"].append(lay)
                        ids.append(rng.choice(experts, size=top_k, replace=False))
            step += 1 + int(rng.integers(0, 2))  # recorded steps may skip numbers
    keep = rng.random(len(ids)) >= drop
    meta = TraceMeta(model="test", num_layers=max(moe_layers) + 1, moe_layers=moe_layers, num_experts=experts,
                     top_k=top_k, bytes_per_expert=1000, dense_bytes_per_layer=1000, dtype="bfloat16")
    cols = {k: np.asarray(v)[keep] for k, v in rows.items()}
    return Trace.from_arrays(meta, **cols, expert_ids=np.asarray(ids)[keep])


def assert_same_stream(stream, reference: dict):
    for name, want in reference.items():
        got = getattr(stream, name)
        assert got.dtype == want.dtype, name
        assert np.array_equal(got, want), name


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), requests=st.integers(1, 7), batch=st.integers(1, 4),
       layers=st.integers(1, 4), top_k=st.integers(1, 3), chunk=st.integers(0, 3),
       drop=st.sampled_from([0.0, 0.2]))
def test_the_compiled_layout_equals_the_numpy_reference(seed, requests, batch, layers, top_k, chunk, drop):
    trace = batched_trace(seed, requests=requests, batch=batch, layers=layers, experts=5, top_k=top_k, drop=drop)
    assert_same_stream(access_stream(trace, prefill_chunk=chunk), access_stream_reference(trace, chunk))


@pytest.mark.parametrize("path", sorted(TRACES.glob("*.parquet")), ids=lambda p: p.stem)
def test_the_shipped_traces_lay_out_as_the_reference_says(path):
    trace = read_trace(path)
    for chunk in (0, 1, 2):
        assert_same_stream(access_stream(trace, prefill_chunk=chunk), access_stream_reference(trace, chunk))


def test_a_trace_out_of_canonical_order_is_refused():
    good = batched_trace(1, requests=2, batch=2, layers=2, experts=4, top_k=2)
    table = good.table.take(pa.array(np.arange(good.num_rows)[::-1]))
    with pytest.raises(ValueError, match="not in canonical order"):
        access_stream(Trace(table, good.meta))


# ---------------------------------------------------------------- the cache
@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MOESIM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MOESIM_CACHE", raising=False)
    return tmp_path / "cache" / "streams"


def test_a_second_read_maps_the_cached_stream_without_reading_the_table(tmp_path, cache_dir):
    path = shutil.copy(SAMPLE, tmp_path / "t.parquet")
    first = read_trace(path)
    built = access_stream(first)
    assert len(list(cache_dir.glob("*.stream"))) == 1
    again = read_trace(path)
    assert again._table is None and again.num_rows == first.num_rows and again.meta == first.meta
    mapped = access_stream(again)
    assert again._table is None  # still not read
    assert_same_stream(mapped, {k: getattr(built, k) for k in access_stream_reference(first)})
    assert mapped.item.flags.writeable
    # the table is read when asked for, and is the file's
    assert again.table.equals(first.table)
    rows = [moesim.replay(t, policy=p, capacity="10%", mode=m) for t in (first, read_trace(path))
            for p, m in (("lru", "count"), ("belady", "timed"))]
    assert rows[:2] == rows[2:]


def test_a_changed_file_misses_the_cache_and_a_lazy_trace_says_so(tmp_path, cache_dir):
    path = tmp_path / "t.parquet"
    write_trace(batched_trace(1, requests=4, batch=2, layers=2, experts=6, top_k=2), path)
    access_stream(read_trace(path))
    lazy = read_trace(path)
    assert lazy._table is None
    other = batched_trace(2, requests=4, batch=2, layers=2, experts=6, top_k=2)
    write_trace(other, path)
    with pytest.raises(TraceError, match="changed or went away after it was read"):
        lazy.table
    fresh = read_trace(path)
    assert fresh._table is not None  # a new version of the file is read and checked again
    assert_same_stream(access_stream(fresh), access_stream_reference(other))


def test_entries_are_addressed_by_content(tmp_path, cache_dir):
    a = shutil.copy(SAMPLE, tmp_path / "a.parquet")
    access_stream(read_trace(a), prefill_chunk=0)
    b = shutil.copy(SAMPLE, tmp_path / "b.parquet")
    assert read_trace(b)._table is not None  # b's file version has no note yet
    before = sorted(cache_dir.glob("*.stream"))
    access_stream(read_trace(b), prefill_chunk=0)
    assert sorted(cache_dir.glob("*.stream")) == before  # same bytes, same entry
    access_stream(read_trace(b), prefill_chunk=1)
    assert len(list(cache_dir.glob("*.stream"))) == 2  # another layout, another entry


def test_a_file_that_fails_its_checks_is_never_cached(tmp_path, cache_dir):
    good = batched_trace(3, requests=2, batch=1, layers=2, experts=4, top_k=2)
    ids = good.expert_ids().copy()
    ids[1] = [3, 3]
    table = good.table.set_column(5, "expert_ids", pa.FixedSizeListArray.from_arrays(
        pa.array(ids.reshape(-1), pa.uint8()), 2))
    path = tmp_path / "bad.parquet"
    import pyarrow.parquet as pq
    pq.write_table(table.replace_schema_metadata({b"moesim": good.meta.to_json()}), path)
    for _ in range(2):
        with pytest.raises(TraceError, match="names an expert twice"):
            read_trace(path)
    unchecked = read_trace(path, validate=False)
    access_stream(unchecked)
    assert not cache_dir.exists() or not list(cache_dir.rglob("*.*"))


def test_the_cache_can_be_turned_off_and_is_kept_under_its_size(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("MOESIM_CACHE", "off")
    path = shutil.copy(SAMPLE, tmp_path / "t.parquet")
    access_stream(read_trace(path))
    assert read_trace(path)._table is not None and not cache_dir.exists()
    monkeypatch.delenv("MOESIM_CACHE")
    small = tmp_path / "small.parquet"
    write_trace(batched_trace(4, requests=3, batch=1, layers=2, experts=4, top_k=2), small)
    access_stream(read_trace(small), prefill_chunk=0)
    one = next(cache_dir.glob("*.stream")).stat().st_size
    monkeypatch.setenv("MOESIM_CACHE_MAX_BYTES", str(3 * one))  # an entry of at most half of it is cached
    for chunk in (1, 2, 3):
        access_stream(read_trace(small), prefill_chunk=chunk)
    kept = sorted(cache_dir.glob("*.stream"), key=lambda p: p.stat().st_mtime_ns)
    assert sum(p.stat().st_size for p in kept) <= 3 * one
    assert "chunk3" in kept[-1].name and not any("chunk0" in p.name for p in kept)  # oldest went first
    access_stream(read_trace(path))  # far larger than half the cap: not cached
    assert not any(p.stat().st_size > 3 * one for p in cache_dir.glob("*.stream"))
    assert cache.clear() > 0 and not list(cache_dir.glob("*.stream"))


def test_a_damaged_entry_is_ignored_and_written_again(tmp_path, cache_dir):
    path = shutil.copy(SAMPLE, tmp_path / "t.parquet")
    want = access_stream(read_trace(path)).item.copy()
    entry = next(cache_dir.glob("*.stream"))
    entry.write_bytes(entry.read_bytes()[:1000])
    lazy = read_trace(path)
    assert np.array_equal(access_stream(lazy).item, want)
    assert entry.stat().st_size > 1000


# ---------------------------------------------------------------- the compiled read checks
def _mutations(trace: Trace, rng):
    t = trace.table
    n = t.num_rows

    def put(name, values):
        return t.set_column(t.column_names.index(name), name, pa.array(values, t.schema.field(name).type))
    i, j = sorted(rng.choice(n, size=2, replace=False))
    swapped = np.arange(n)
    swapped[[i, j]] = [j, i]
    ids = trace.expert_ids().copy()
    yield t.take(pa.array(swapped))                                   # two rows out of order
    yield t.take(pa.array(np.r_[np.arange(i + 1), np.arange(i, n)]))  # a row twice
    bad = ids.copy()
    bad[i, 0] = trace.meta.num_experts
    yield t.set_column(5, "expert_ids", pa.FixedSizeListArray.from_arrays(pa.array(bad.reshape(-1), pa.uint8()),
                                                                          ids.shape[1]))
    layer = trace.column("layer").copy()
    layer[j] = max(trace.meta.moe_layers) + 1
    yield put("layer", layer)
    phase = trace.column("phase").copy()
    phase[i] = 2
    yield put("phase", phase)
    req = trace.column("request_id").copy()
    req[j] = req.max() + 1
    yield put("request_id", req)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_the_compiled_checks_fail_exactly_where_the_numpy_checks_do(seed):
    trace = batched_trace(seed, requests=4, batch=2, layers=3, experts=6, top_k=2)
    check_table(trace.table, trace.meta, "t")
    for table in _mutations(trace, np.random.default_rng(seed)):
        try:
            check_rows(table, trace.meta, "t")
            check_order(table, "t")
            want = None
        except TraceError as e:
            want = str(e)
        try:
            check_table(table, trace.meta, "t")
            got = None
        except TraceError as e:
            got = str(e)
        assert got == want


def test_a_good_table_is_checked_by_the_compiled_pass_alone(monkeypatch):
    """The numpy checks cost ten times the compiled pass; they run only to name a bad row."""
    import moesim.trace.io as trace_io

    def slow(*args, **kwargs):
        raise AssertionError("the numpy checks ran on a good table")
    monkeypatch.setattr(trace_io, "check_rows", slow)
    monkeypatch.setattr(trace_io, "check_order", slow)
    check_table(read_trace(SAMPLE).table, read_trace(SAMPLE).meta, "t")
    trace = batched_trace(5, requests=4, batch=2, layers=3, experts=6, top_k=2)
    check_table(trace.table, trace.meta, "t")


def test_the_stream_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("MOESIM_CACHE", raising=False)
    monkeypatch.setenv("MOESIM_CACHE_DIR", str(tmp_path / "c"))
    assert cache.cache_dir() == tmp_path / "c" / "streams"
    monkeypatch.delenv("MOESIM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache.cache_dir() == tmp_path / "x" / "moesim" / "streams"
    monkeypatch.setenv("MOESIM_CACHE", "off")
    assert cache.cache_dir() is None
    monkeypatch.setenv("MOESIM_CACHE_MAX_BYTES", "lots")
    with pytest.raises(ValueError, match="MOESIM_CACHE_MAX_BYTES"):
        cache.max_bytes()
