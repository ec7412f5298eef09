"""`moesim inspect`: every statistic against a brute-force pure-Python computation."""
import json
import math
from collections import OrderedDict, defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from helpers import make_trace, random_routes

from moesim.cli import main
from moesim.trace import Trace, TraceError, TraceMeta, write_trace
from moesim.trace import io as trace_io
from moesim.trace import stats
from moesim.trace.schema import META_KEY
from moesim.trace.stats import format_report, inspect_trace, lru_hit_rate


def small_trace(seed=0, requests=4, prompt=6, decode=5, layers=(1, 2, 4), experts=10, k=3):
    """Several requests, prefill then batched decode (requests interleave in decode steps),
    with some token-to-token reuse so the statistics are not all near zero."""
    rng = np.random.default_rng(seed)
    meta = TraceMeta(model="toy", num_layers=5, moe_layers=list(layers), num_experts=experts, top_k=k)
    rows = []
    step = 0
    last = {}
    for r in range(requests):  # prompts one after another, one step each
        for t in range(prompt):
            rows += [(r, 0, step, t, l, _pick(rng, last, (r, l), experts, k)) for l in layers]
        step += 1
    for d in range(decode):  # then all requests decode together
        for r in range(requests):
            rows += [(r, 1, step, prompt + d, l, _pick(rng, last, (r, l), experts, k)) for l in layers]
        step += 1
    col = lambda i: np.array([x[i] for x in rows])
    return Trace.from_arrays(meta, request_id=col(0), phase=col(1), step=col(2), token_pos=col(3),
                             layer=col(4), expert_ids=np.stack(col(5)))


def _pick(rng, last, key, experts, k):
    prev = last.get(key)
    p = np.linspace(2, 1, experts)  # mild popularity skew
    keep = [e for e in (prev if prev is not None else []) if rng.random() < 0.4]
    rest = [e for e in rng.choice(experts, size=experts, replace=False, p=p / p.sum()) if e not in keep]
    ids = np.array((keep + rest)[:k])
    last[key] = ids
    return ids


def rows_of(trace):
    meta = trace.meta
    ids = trace.expert_ids().astype(int)
    cols = [trace.column(c).astype(int) for c in ("request_id", "phase", "step", "token_pos", "layer")]
    dense = {l: i for i, l in enumerate(meta.moe_layers)}
    return [(c[0], c[1], c[2], c[3], dense[c[4]], list(e)) for *c, e in zip(*cols, ids)]


def brute_force(trace):
    meta = trace.meta
    L, E, k = meta.num_moe_layers, meta.num_experts, meta.top_k
    rows = rows_of(trace)
    out = {}
    for name, phases in (("all", (0, 1)), ("prefill", (0,)), ("decode", (1,))):
        counts = [[0] * E for _ in range(L)]
        for req, ph, step, pos, l, ids in rows:
            if ph in phases:
                for e in ids:
                    counts[l][e] += 1
        share, need, ent = [], [], []
        for c in counts:
            tot = sum(c)
            s = sorted(c, reverse=True)
            share.append(sum(s[:max(1, math.ceil(E / 10))]) / tot)
            acc = 0
            for m, v in enumerate(s, 1):
                acc += v
                if acc >= 0.9 * tot:
                    need.append(m)
                    break
            ent.append(-sum(v / tot * math.log(v / tot) for v in c if v) / math.log(E))
        out[name, "pop"] = (share, need, ent)
        # next-token reuse, per request and layer, attributed to the later token's phase
        last, hits, pairs = {}, [0] * L, [0] * L
        for req, ph, step, pos, l, ids in rows:
            if (req, l) in last and ph in phases:
                hits[l] += len(set(ids) & last[req, l])
                pairs[l] += 1
            last[req, l] = set(ids)
        out[name, "reuse"] = [h / (p * k) for h, p in zip(hits, pairs)], sum(hits) / (sum(pairs) * k)
        if name == "all":
            last, per_req = {}, defaultdict(lambda: [0, 0])
            for req, ph, step, pos, l, ids in rows:
                if (req, l) in last:
                    per_req[req][0] += len(set(ids) & last[req, l])
                    per_req[req][1] += k
                last[req, l] = set(ids)
            out["reuse_by_request"] = np.mean([h / n for h, n in per_req.values()])
    # LRU stack distances on the file-order stream
    stack, dist = [], []
    for req, ph, step, pos, l, ids in rows:
        for e in ids:
            x = (l, e)
            if x in stack:
                d = stack.index(x)
                stack.remove(x)
            else:
                d = None
            stack.insert(0, x)
            dist.append((ph, d))
    out["dist"] = dist
    # coupling: in-sample successor counts, then top-k successors of each token's previous-layer experts
    succ = defaultdict(int)
    pairs = []
    for a, b in zip(rows, rows[1:]):
        if a[0] == b[0] and a[3] == b[3] and b[4] == a[4] + 1:
            pairs.append((b[1], b[4], a[5], b[5]))
            for x in a[5]:
                for y in b[5]:
                    succ[b[4], x, y] += 1
    tot = [[0] * E for _ in range(L)]
    for req, ph, step, pos, l, ids in rows:
        for e in ids:
            tot[l][e] += 1
    popular = [set(sorted(range(E), key=lambda e: (-tot[l][e], e))[:k]) for l in range(L)]
    hs, hp, n = [0] * (L - 1), [0] * (L - 1), [0] * (L - 1)
    for ph, l, A, B in pairs:
        score = {y: sum(succ[l, x, y] for x in A) for y in range(E)}
        pred = set(sorted(range(E), key=lambda y: (-score[y], y))[:k])
        hs[l - 1] += len(pred & set(B))
        hp[l - 1] += len(popular[l] & set(B))
        n[l - 1] += 1
    out["coupling"] = [h / (c * k) for h, c in zip(hs, n)], [h / (c * k) for h, c in zip(hp, n)]
    return out


def lru_simulation(trace, capacity):
    cache, hits, total = OrderedDict(), 0, 0
    for req, ph, step, pos, l, ids in rows_of(trace):
        for e in ids:
            total += 1
            if (l, e) in cache:
                hits += 1
                cache.move_to_end((l, e))
            else:
                cache[l, e] = True
                if len(cache) > capacity:
                    cache.popitem(last=False)
    return hits / total


@pytest.fixture(scope="module")
def trace():
    return small_trace()


@pytest.fixture(scope="module")
def report(trace):
    return inspect_trace(trace, batch_rows=7)  # batches far smaller than the trace carry state across


def test_counts_and_card(trace, report):
    assert report["requests"] == 4
    assert report["tokens"] == {"prefill": 24, "decode": 20, "total": 44}
    assert report["steps"] == 4 + 5
    assert report["rows"] == 44 * 3 and report["accesses"] == 44 * 3 * 3
    assert report["phases"] == ["prefill", "decode"]
    assert report["request_tokens"] == {"prefill": [6] * 4, "decode": [5] * 4}
    assert (report["num_experts"], report["top_k"], report["moe_layers"]) == (10, 3, [1, 2, 4])


@pytest.mark.parametrize("phase", ["all", "prefill", "decode"])
def test_popularity_matches_brute_force(trace, report, phase):
    share, need, ent = brute_force(trace)[phase, "pop"]
    got = report["popularity"][phase]["per_layer"]
    assert got["top10_share"] == pytest.approx(share)
    assert got["experts_for_90pct"] == need
    assert got["entropy"] == pytest.approx(ent)
    assert report["popularity"][phase]["mean"]["top10_share"] == pytest.approx(np.mean(share))


@pytest.mark.parametrize("phase", ["all", "prefill", "decode"])
def test_next_token_reuse_matches_brute_force(trace, report, phase):
    per, pooled = brute_force(trace)[phase, "reuse"]
    assert report["next_token_reuse"][phase]["per_layer"] == pytest.approx(per)
    assert report["next_token_reuse"][phase]["mean"] == pytest.approx(pooled)
    assert report["next_token_reuse"]["mean_over_requests"] == pytest.approx(brute_force(trace)["reuse_by_request"])


def test_reuse_distances_match_an_explicit_lru_stack(trace, report):
    dist = brute_force(trace)["dist"]
    items = report["reuse_distance"]["num_items"]
    for name, phases in (("all", (0, 1)), ("prefill", (0,)), ("decode", (1,))):
        want = np.zeros(items + 1, int)
        for ph, d in dist:
            if ph in phases:
                want[items if d is None else d] += 1
        assert report["reuse_distance"][name]["distance_counts"].tolist() == want.tolist()
        reused = sorted(d for ph, d in dist if ph in phases and d is not None)
        q = report["reuse_distance"][name]["quantiles"]
        assert q["p50"] == reused[math.ceil(0.5 * len(reused)) - 1]
        assert q["p90"] == reused[math.ceil(0.9 * len(reused)) - 1]


@pytest.mark.parametrize("capacity", [1, 3, 7, 12, 20, 29, 30])
def test_lru_curve_equals_an_lru_simulation(trace, report, capacity):
    assert lru_hit_rate(report, capacity) == pytest.approx(lru_simulation(trace, capacity))


def test_coupling_matches_brute_force(trace, report):
    succ, pop = brute_force(trace)["coupling"]
    assert report["coupling"]["all"]["successor_topk"]["per_layer"] == pytest.approx(succ)
    assert report["coupling"]["all"]["popularity_topk"]["per_layer"] == pytest.approx(pop)


def test_renumbering_the_stack_window_keeps_distances(trace, report, monkeypatch):
    monkeypatch.setattr(stats, "STACK_WINDOW_FACTOR", 1)  # the smallest window: many renumberings
    again = inspect_trace(trace, batch_rows=5)
    assert again["reuse_distance"]["all"]["distance_counts"].tolist() == \
        report["reuse_distance"]["all"]["distance_counts"].tolist()


@pytest.mark.parametrize("items, parts", [(20, 1), (100, 1), (2000, 1), (2000, 4), (600, 3)])
def test_stack_histogram_equals_an_explicit_lru_stack_for_windows_up_to_64_words(items, parts):
    # 2,000 items fill the longest row updated whole (64 words), 100 a few words; each row's words move
    # their counts by slices of a step table, whose ends these reach, and the window renumbers many times
    rng = np.random.default_rng(items + parts)
    hot = rng.permutation(items)[: max(1, items // 4)]
    seq = np.where(rng.random(30_000) < 0.7, rng.choice(hot, 30_000), rng.integers(0, items, 30_000))
    part_of = (np.arange(items) * parts // items).astype(np.int32)
    stacks = [[] for _ in range(parts)]
    want = np.zeros(items + 1, np.int64)
    for x in seq.tolist():
        st = stacks[part_of[x]]
        if x in st:
            d = len(st) - 1 - st.index(x)  # distinct others used since x, the top of the list last
            st.remove(x)
        else:
            d = items
        st.append(x)
        want[d] += 1
    stack = stats.lru_stack(items, parts)
    assert stack.words.shape[1] <= stats.SHORT_WINDOW_WORDS
    got = np.zeros(items + 1, np.int64)
    for chunk in np.array_split(seq.astype(np.int32), 3):  # the stack carries over between calls
        stats.stack_histogram(chunk, None if parts == 1 else part_of, stack, got)
    assert got.tolist() == want.tolist()


def test_streamed_file_equals_in_memory(trace, report, tmp_path):
    path = write_trace(trace, tmp_path / "t.parquet", row_group_rows=10)
    streamed = inspect_trace(path, batch_rows=11)
    assert json.dumps(stats.report_json(streamed) | {"file": None}) == json.dumps(stats.report_json(report))


def test_stream_with_sparse_request_ids_falls_back_to_the_numpy_checks(tmp_path, monkeypatch):
    # Request ids far sparser than the rows: the compiled checks cannot size their per-request array, so from the
    # batch that brings such an id the stream is checked by the numpy checks, again from its first row. The
    # report must equal the in-memory one, and a bad row after the switch must still be named.
    routes = random_routes(np.random.default_rng(3), 12, 3, 6, 2)
    trace = make_trace(routes, num_experts=6, top_k=2, requests=np.repeat([0, 5 * 10 ** 6, 10 ** 7], 4))
    rechecked = []
    real = trace_io._numpy_checks_through
    monkeypatch.setattr(trace_io, "_numpy_checks_through", lambda *a: rechecked.append(a[5]) or real(*a))
    path = write_trace(trace, tmp_path / "t.parquet", row_group_rows=5)
    streamed = inspect_trace(path, batch_rows=5)  # request 0's 12 rows compiled, then numpy from row 0
    assert rechecked == [15, 15]  # rows 10-14 bring request 5,000,000 (row 12): rows 0-14 again, in both passes
    assert stats.report_json(streamed) | {"file": None} == stats.report_json(inspect_trace(trace))
    layer = trace.table.column("layer").to_numpy().copy()
    layer[-1] = layer[-2]  # the last token's last layer twice
    bad = trace.table.set_column(trace.table.column_names.index("layer"), "layer", pa.array(layer, pa.uint16()))
    pq.write_table(bad.replace_schema_metadata({META_KEY: trace.meta.to_json()}),
                   tmp_path / "bad.parquet", row_group_size=5)
    with pytest.raises(TraceError, match="row 35.*appears twice"):
        inspect_trace(tmp_path / "bad.parquet", batch_rows=5)


def test_hand_computed_tiny_trace():
    # one request, 3 tokens, 2 layers, top-1 of 4 experts:
    #   t0: l0 e0, l1 e1;  t1: l0 e0, l1 e2;  t2: l0 e3, l1 e1
    meta = TraceMeta(model="tiny", num_layers=2, moe_layers=[0, 1], num_experts=4, top_k=1)
    tr = Trace.from_arrays(meta, request_id=np.zeros(6, int), phase=np.zeros(6, int),
                           step=np.array([0, 0, 1, 1, 2, 2]), token_pos=np.array([0, 0, 1, 1, 2, 2]),
                           layer=np.array([0, 1] * 3), expert_ids=np.array([[0], [1], [0], [2], [3], [1]]))
    r = inspect_trace(tr)
    # stream of (layer, expert): (0,0) (1,1) (0,0) (1,2) (0,3) (1,1): distances cold, cold, 1, cold, cold, 3
    assert r["reuse_distance"]["all"]["distance_counts"].tolist() == [0, 1, 0, 1, 0, 0, 0, 0, 4]
    assert lru_hit_rate(r, 2) == pytest.approx(1 / 6) and lru_hit_rate(r, 4) == pytest.approx(2 / 6)
    pop = r["popularity"]["all"]["per_layer"]
    assert pop["top10_share"] == pytest.approx([2 / 3, 2 / 3])  # ceil(10% of 4) = 1 expert
    assert pop["experts_for_90pct"] == [2, 2]
    h = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)) / math.log(4)
    assert pop["entropy"] == pytest.approx([h, h])
    assert r["next_token_reuse"]["all"]["per_layer"] == [0.5, 0.0]
    # l0 -> l1 successors: e0 -> {e1, e2}, e3 -> {e1}; e0's tie goes to e1: hits t0 and t2
    assert r["coupling"]["all"]["successor_topk"]["per_layer"] == [pytest.approx(2 / 3)]
    assert r["coupling"]["all"]["popularity_topk"]["per_layer"] == [pytest.approx(2 / 3)]
    assert "prefill" not in r["popularity"]  # a single-phase trace is not split


def test_cli_inspect_table_and_json(trace, tmp_path):
    path = write_trace(trace, tmp_path / "t.parquet")
    res = CliRunner().invoke(main, ["inspect", str(path)])
    assert res.exit_code == 0, res.output
    assert "next-token reuse" in res.output and "LRU hit rate" in res.output
    res = CliRunner().invoke(main, ["inspect", str(path), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["tokens"]["total"] == 44 and data["reuse_distance"]["all"]["accesses"] == 396


def test_cli_inspect_missing_file_is_one_line(tmp_path):
    res = CliRunner().invoke(main, ["inspect", str(tmp_path / "nope.parquet")])
    assert res.exit_code != 0
    assert "nope.parquet: no such file" in res.output and "Traceback" not in res.output
