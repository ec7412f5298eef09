"""`moesim synth`: fitted traces reproduce their source's statistics; knobs move them the right way."""
import hashlib

import numpy as np
import pytest
from click.testing import CliRunner

from moesim.cli import main
from moesim.trace import read_trace, write_trace
from moesim.trace.stats import inspect_trace
from moesim.trace.synth import SynthModel, fit, parametric, sample


def summary(trace):
    r = inspect_trace(trace)
    counts = r["popularity"]["all"]["counts"]
    return {
        "pop": counts / counts.sum(axis=1, keepdims=True),
        "top10": r["popularity"]["all"]["mean"]["top10_share"],
        "reuse": r["next_token_reuse"]["all"]["mean"],
        "coupling": r["coupling"]["all"]["successor_topk"]["mean"],
        "report": r,
    }


def assert_close(src, syn, *, top10, l1, reuse, coupling):
    """Stated tolerances: absolute gaps of the layer means, and the mean per-layer L1 distance
    between the source's and the sample's expert popularity."""
    assert abs(syn["top10"] - src["top10"]) <= top10, (syn["top10"], src["top10"])
    assert np.abs(syn["pop"] - src["pop"]).sum(axis=1).mean() <= l1
    assert abs(syn["reuse"] - src["reuse"]) <= reuse, (syn["reuse"], src["reuse"])
    assert abs(syn["coupling"] - src["coupling"]) <= coupling, (syn["coupling"], src["coupling"])


@pytest.fixture(scope="module")
def source():
    """A synthetic source with skew, reuse and coupling, prefill and decode."""
    m = parametric(layers=6, experts=16, top_k=2, zipf_s=1.0, reuse_p=0.3, coupling=0.8, seed=3,
                   prompt_tokens=30, decode_tokens=20, bytes_per_expert=1234)
    return sample(m, tokens=8000, requests=40, seed=3)


def test_sample_is_a_valid_trace_with_its_generator_recorded(source):
    source.validate("sample")
    assert source.num_rows == 8000 * 6
    ids = source.expert_ids()
    assert (ids[:, 0] != ids[:, 1]).all()
    assert set(source.column("phase").tolist()) == {0, 1}
    src = source.meta.source
    assert src["kind"] == "generator" and src["name"] == "moesim.trace.synth"
    for key, value in {"mode": "parametric", "zipf_s": 1.0, "reuse_p": 0.3, "coupling": 0.8,
                       "tokens": 8000, "requests": 40, "seed": 3}.items():
        assert src["params"][key] == value
    assert source.meta.bytes_per_expert == 1234


def test_fitted_sample_matches_a_synthetic_source(source):
    model = fit(source)
    assert model.card["bytes_per_expert"] == 1234  # the model card is inherited
    syn = sample(model, tokens=8000, seed=11)
    assert syn.meta.source["params"]["mode"] == "fit" and syn.meta.bytes_per_expert == 1234
    # popularity is kept as measured, but successive sampling and the coupling tilt move it by a few points
    assert_close(summary(source), summary(syn), top10=0.06, l1=0.15, reuse=0.03, coupling=0.04)


@pytest.mark.slow
def test_fitted_sample_matches_moe_beyond(real_traces, tmp_path):
    folder = real_traces / "moe-beyond-dsv2lite" / "train"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    read_moe_beyond = pytest.importorskip("moesim.trace.importers.moe_beyond").read_moe_beyond
    files = sorted(folder.glob("prompt_*_data.csv"))[:150]
    real = read_moe_beyond(files)
    model = fit(real)
    assert model.card["bytes_per_expert"] == real.meta.bytes_per_expert
    syn = sample(model, tokens=int(real.num_rows / real.meta.num_moe_layers), seed=1)
    # popularity: the coupling's tilt moves it (measured on all 999 prompts: top-10% share
    # 20.5% against 16.1%, mean per-layer L1 0.29), so its tolerances are the widest
    assert_close(summary(real), summary(syn), top10=0.06, l1=0.35, reuse=0.03, coupling=0.05)


def test_same_seed_gives_a_byte_identical_file(tmp_path):
    args = ["synth", "--layers", "4", "--experts", "32", "--top-k", "4", "--zipf", "1.1", "--reuse", "0.3",
            "--coupling", "0.5", "--tokens", "3000", "--seed", "5"]
    digests = []
    for name in ("a.parquet", "b.parquet", "c.parquet"):
        seed = ["--seed", "6"] if name == "c.parquet" else []
        res = CliRunner().invoke(main, [*args, *seed, "--out", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
        digests.append(hashlib.sha256((tmp_path / name).read_bytes()).hexdigest())
    assert digests[0] == digests[1] and digests[0] != digests[2]
    read_trace(tmp_path / "a.parquet")  # and it reads back, validated


def test_higher_zipf_gives_a_higher_top10_share():
    shares = [summary(sample(parametric(layers=2, experts=64, top_k=4, zipf_s=s, seed=1), tokens=3000,
                             seed=1))["top10"] for s in (0.0, 0.6, 1.2)]
    assert shares[0] < shares[1] < shares[2]
    assert shares[0] == pytest.approx(7 / 64, abs=0.025)  # Zipf 0 is uniform: 7 of 64 experts, plus noise


@pytest.mark.parametrize("reuse_p", [0.0, 0.3, 0.7])
def test_reuse_knob_sets_measured_reuse(reuse_p):
    # uniform popularity, no coupling: the measured reuse is reuse_p plus chance overlap k/E of the rest
    m = parametric(layers=2, experts=64, top_k=4, zipf_s=0.0, reuse_p=reuse_p, seed=2)
    got = summary(sample(m, tokens=4000, requests=4, seed=2))["reuse"]
    assert got == pytest.approx(reuse_p + (1 - reuse_p) * 4 / 64, abs=0.03)


def test_coupling_knob_raises_measured_coupling():
    # the gain of the successor predictor over the popularity baseline grows with the knob
    gain = []
    for c in (0.0, 0.5, 1.5):
        r = summary(sample(parametric(layers=4, experts=32, top_k=4, zipf_s=0.0, coupling=c, seed=4),
                           tokens=4000, seed=4))["report"]["coupling"]["all"]
        gain.append(r["successor_topk"]["mean"] - r["popularity_topk"]["mean"])
    assert gain[0] < 0.05 < gain[1] < gain[2]


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_model_round_trips_without_pickle(source, tmp_path, suffix):
    model = parametric(layers=3, experts=8, top_k=2, zipf_s=0.8, reuse_p=0.2, coupling=0.4, seed=9)
    path = model.save(tmp_path / f"m{suffix}")
    back = SynthModel.load(path)
    for name in ("popularity", "reuse", "coupling", "transition", "prompt_tokens", "decode_tokens"):
        assert np.array_equal(getattr(back, name), getattr(model, name))
    assert back.card == model.card and back.source == model.source
    a, b = sample(model, tokens=500, seed=1), sample(back, tokens=500, seed=1)
    assert a.table.equals(b.table)


def test_sampling_is_fast_for_large_traces():
    import time
    m = parametric(layers=16, experts=64, top_k=4, zipf_s=1.1, reuse_p=0.3, coupling=0.5, seed=1)
    sample(m, tokens=100, seed=0)  # compile
    t = time.perf_counter()
    big = sample(m, tokens=200_000, seed=0)  # 12.8M accesses
    assert big.num_rows == 200_000 * 16
    assert time.perf_counter() - t < 20


def test_bad_input_is_one_clear_line(tmp_path):
    res = CliRunner().invoke(main, ["synth", "--like", str(tmp_path / "none.parquet"), "--tokens", "10",
                                    "--out", str(tmp_path / "o.parquet")])
    assert res.exit_code != 0 and "none.parquet: no such file" in res.output
    with pytest.raises(ValueError, match="reuse_p"):
        parametric(layers=2, experts=8, top_k=2, reuse_p=1.5)
    with pytest.raises(ValueError, match="at least one token per request"):
        sample(parametric(layers=2, experts=8, top_k=2), tokens=3, requests=5)
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(ValueError, match="saved as .npz or .json|is a .npz or .json"):
        SynthModel.load(tmp_path / "m.txt")
