"""A corpus of bad inputs: every one ends in one clear line (exit 1 or 2) naming the file, field or option,
never a traceback, a hang, a silently wrong trace or a lost file.

Each case builds its files in a fresh folder and runs the real CLI through click's CliRunner with
catch_exceptions=False, so an exception that escapes the CLI fails the test as a traceback would.
`python tests/test_bad_inputs.py` prints how many cases end in a traceback, a hang, a silent
acceptance, or the expected error.
"""
from __future__ import annotations

import errno
import io
import json
import math
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import make_trace  # noqa: E402

from moesim.cli import main  # noqa: E402
from moesim.trace import Trace, TraceError, TraceMeta, read_trace, write_trace  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures" / "importers"
TIMEOUT_S = float(os.environ.get("BAD_INPUT_TIMEOUT_S", 60))


# ---------------------------------------------------------------- files the cases build
def small_trace(**meta) -> Trace:
    """2 tokens x 2 MoE layers, top-2 of 8 experts: rows (step, pos, layer) = (0,0,0) (0,0,1) (1,1,0) (1,1,1)."""
    t = make_trace([[[0, 1], [2, 3]], [[1, 2], [3, 4]]], num_experts=8, top_k=2)
    for k, v in meta.items():
        setattr(t.meta, k, v)
    return t


def tampered(path: Path, *, table: Callable[[pa.Table], pa.Table] | None = None,
             meta: Callable[[dict], object] | None = None, raw: bytes | None = None) -> Path:
    """A trace file whose rows or metadata JSON were changed after writing (what a corrupted or hand-made file holds)."""
    t = small_trace()
    tab = t.table if table is None else table(t.table)
    d = json.loads(t.meta.to_json())
    if meta is not None:
        meta(d)
    data = raw if raw is not None else json.dumps(d).encode()
    pq.write_table(tab.replace_schema_metadata({b"moesim": data}), path)
    return path


def set_col(t: pa.Table, name: str, values, typ=None) -> pa.Table:
    return t.set_column(t.column_names.index(name), name, pa.array(values, type=typ or t.schema.field(name).type))


def null_id(t: pa.Table, at: int) -> pa.Table:
    """expert_ids with its at-th id (row-major) null inside a non-null list."""
    col = t.column("expert_ids").combine_chunks()
    ids = col.flatten().to_pylist()
    ids[at] = None
    arr = pa.FixedSizeListArray.from_arrays(pa.array(ids, col.type.value_type), col.type.list_size)
    return t.set_column(t.column_names.index("expert_ids"), pa.field("expert_ids", arr.type, nullable=False), arr)


def with_weights(t: pa.Table, rows) -> pa.Table:
    return t.append_column("expert_weights", pa.array(rows, type=pa.list_(pa.float32(), 2)))


def text(path: Path, content: str) -> Path:
    path.write_text(content)
    return path


def plain_csv(d: Path, rows: str, name: str = "t.csv") -> Path:
    return text(d / name, "request_id,token_pos,layer,e0,e1\n" + rows)


def megatron(d: Path, *records, raw_lines=()) -> Path:
    good = {"step": 0, "stage": "pre_dispatch", "block": "decoder", "layer": 1, "rank": 0, "num_tokens": 1,
            "topk": 2, "top_indices": [[1, 2]]}
    lines = [json.dumps(good)] + [json.dumps({**good, **r}) for r in records] + list(raw_lines)
    return text(d / "router_trace_rank0.jsonl", "\n".join(lines) + "\n")


def stratamoe(d: Path, selections=None, meta_text: str | None = None, **top) -> Path:
    doc = {"expertsPerLayer": 8, "layers": 2, "topK": 1, "tokens": 3, "version": 2,
           "selections": selections if selections is not None else [[[1], [2]], [[3], [4]], [[5], [6]]], **top}
    (d / "router-trace.v2.json").write_text(json.dumps(doc))
    if meta_text is not None:
        (d / "capture-metadata.json").write_text(meta_text)
    return d / "router-trace.v2.json"


def bigmoe(d: Path, preamble: str | None = None, rows: list[str] | None = None) -> Path:
    head = preamble or ("# route_trace v1\n# model=/x/m-Q4_K_M.gguf arch=qwen n_layer=1 n_expert=8 n_expert_used=2\n"
                        "# layer=0 expert_bytes=100 dense_bytes=10\n")
    body = rows or ["0,0,0,0,0,5,0.6,0,100", "0,0,0,0,1,3,0.4,0,100", "0,1,1,0,0,5,0.5,1,100", "0,1,1,0,1,2,0.5,0,100"]
    return text(d / "m.route.csv", head + "turn,phase,step,layer,slot,expert,weight,residency,expert_bytes\n"
                + "\n".join(body) + "\n")


def npz(path: Path, **arrays) -> Path:
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def truncated(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def huge_npy_member(path: Path, name: str, shape: tuple, **others) -> Path:
    """An .npz whose member `name` declares `shape` in its header but holds 16 bytes."""
    with zipfile.ZipFile(path, "w") as z:
        for k, v in others.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(v))
            z.writestr(f"{k}.npy", buf.getvalue())
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": "<i8", "fortran_order": False, "shape": shape})
        z.writestr(f"{name}.npy", buf.getvalue() + b"\0" * 16)
    return path


def coact_model(path: Path, **over) -> Path:
    arrays = {"log_base": np.zeros((1, 2, 8), np.float32), "evidence": np.zeros((1, 2, 24, 8), np.float32),
              "meta": np.array(json.dumps({"kind": "moesim-coactivation-v1", "num_layers": 2, "num_experts": 8}))}
    arrays.update(over)
    return npz(path, **arrays)


def gru_state(path: Path, config, extra: dict | None = None) -> Path:
    torch = pytest.importorskip("torch")
    state = {"moesim_gru_config": torch.tensor(config)}
    state.update(extra or {})
    torch.save(state, path)
    return path


def synth_model_json(path: Path, **over) -> Path:
    doc = {"format": "moesim-synth-model", "version": 1, "source": {"mode": "parametric"}, "lacks": [],
           "card": {"model": "m", "num_layers": 2, "moe_layers": [0, 1], "num_experts": 4, "top_k": 2,
                    "shared_experts": 0, "bytes_per_expert": 0, "dense_bytes_per_layer": 0, "dtype": "unknown",
                    "quantization": None, "revision": None},
           "popularity": [[0.25] * 4] * 2, "reuse": [0.1, 0.1], "coupling": [0.0, 0.5],
           "transition": [[[0.25] * 4] * 4], "prompt_tokens": [4], "decode_tokens": [4]}
    for k, v in over.items():
        if k.startswith("card_"):
            doc["card"][k[5:]] = v
        else:
            doc[k] = v
    return text(path, json.dumps(doc))


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


# ---------------------------------------------------------------- patches (what a full disk or a locked folder does)
def no_space(mp):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    mp.setattr(pq.ParquetWriter, "write_table", full)
    mp.setattr(np, "savez_compressed", full)


def locked_folder(mp):
    import tempfile

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), k.get("dir"))
    mp.setattr(tempfile, "mkstemp", denied)


def no_module(name):
    def patch(mp):
        mp.setitem(sys.modules, name, None)  # `import name` now fails as when it is not installed
    return patch


# ---------------------------------------------------------------- the corpus
@dataclass
class Case:
    id: str
    build: Callable[[Path], list[str]]   # makes the files in a folder, returns the CLI arguments
    code: int                            # expected exit code: 1 (bad input), 2 (bad option), 0 (must work)
    says: tuple[str, ...]                # fragments the one-line message (or output) must hold
    patch: Callable | None = None        # monkeypatch applied while the command runs
    cls: str = ""                        # the class of defect it stands for
    files: Callable[[Path], object] | None = field(default=None)  # extra check on the folder afterwards


def C(id, build, code, *says, patch=None, cls="", files=None):
    return Case(id, build, code, tuple(says), patch, cls, files)


def T(d):  # a good trace on disk
    return str(write_trace(small_trace(), d / "t.parquet"))


def _long_name(d, n):
    return str(d / ("x" * (n - len(".parquet")) + ".parquet"))


def _only(*names):
    def check(d):
        left = sorted(p.name for p in d.iterdir())
        assert left == sorted(names), f"left behind: {left}"
    return check


CASES = [
    # -- importers: out-of-range values stored as other values
    C("moe-beyond-expert-300", lambda d: ["convert", text(d / "prompt_2_data.csv", (FIX / "prompt_2_data.csv").read_text()
      .replace("[31, 1,", "[300, 1,", 1)).as_posix(), "--out", f"{d}/o.parquet"], 1, "prompt_2_data.csv", "300",
      cls="narrowing"),
    C("csv-layer-65537", lambda d: ["convert", str(plain_csv(d, "0,0,0,1,2\n0,0,65537,1,2\n")), "--out", f"{d}/o.parquet"],
      1, "t.csv", "layer", "65537", cls="narrowing"),
    C("csv-layer-negative", lambda d: ["convert", str(plain_csv(d, "0,0,-1,1,2\n")), "--out", f"{d}/o.parquet"],
      1, "t.csv", "layer", "-1", cls="narrowing"),
    C("csv-request-5e9", lambda d: ["convert", str(plain_csv(d, "0,0,0,1,2\n5000000000,0,0,1,2\n")), "--out",
      f"{d}/o.parquet"], 1, "t.csv", "request_id", "5000000000", cls="narrowing"),
    C("csv-token-pos-5e9", lambda d: ["convert", str(plain_csv(d, "0,5000000000,0,1,2\n")), "--out", f"{d}/o.parquet"],
      1, "t.csv", "token_pos", "5000000000", cls="narrowing"),
    C("csv-step-5e9", lambda d: ["convert", str(text(d / "t.csv", "request_id,token_pos,layer,step,e0,e1\n"
      "0,0,0,5000000000,1,2\n")), "--out", f"{d}/o.parquet"], 1, "t.csv", "step", "5000000000", cls="narrowing"),
    C("csv-expert-70000", lambda d: ["convert", str(plain_csv(d, "0,0,0,70000,2\n")), "--out", f"{d}/o.parquet"],
      1, "t.csv", "70000", cls="narrowing"),
    C("npz-float-request-id", lambda d: ["convert", str(npz(d / "t.npz", request_id=np.array([1.7]), token_pos=np.array([0]),
      layer=np.array([0]), expert_ids=np.array([[0, 1]]))), "--out", f"{d}/o.parquet"], 1, "t.npz", "request_id", "1.7",
      cls="narrowing"),
    C("npz-request-5e9", lambda d: ["convert", str(npz(d / "t.npz", request_id=np.array([5_000_000_000]),
      token_pos=np.array([0]), layer=np.array([0]), expert_ids=np.array([[0, 1]]))), "--out", f"{d}/o.parquet"],
      1, "t.npz", "request_id", "5000000000", cls="narrowing"),
    C("megatron-layer-negative", lambda d: ["convert", str(megatron(d, {"layer": -1})), "--out", f"{d}/o.parquet"],
      1, "router_trace_rank0.jsonl", "layer", "-1", cls="narrowing"),
    C("megatron-layer-65537", lambda d: ["convert", str(megatron(d, {"layer": 65537})), "--out", f"{d}/o.parquet"],
      1, "router_trace_rank0.jsonl", "65537", cls="narrowing"),
    C("megatron-float-expert", lambda d: ["convert", str(megatron(d, {"step": 1, "top_indices": [[1.7, 2]]})), "--out",
      f"{d}/o.parquet"], 1, "router_trace_rank0.jsonl", "line 2", "1.7", cls="narrowing"),
    C("stratamoe-float-expert", lambda d: ["convert", str(stratamoe(d, [[[1.7], [2]], [[3], [4]], [[5], [6]]])),
      "--out", f"{d}/o.parquet"], 1, "router-trace.v2.json", "selections", "1.7", cls="narrowing"),
    C("vllm-prompt-len-negative", lambda d: ["convert", str(FIX / "routed_experts.npz"), "--prompt-len", "-1", "--out",
      f"{d}/o.parquet"], 2, "--prompt-len", cls="narrowing"),
    C("vllm-moe-layers-70000", lambda d: ["convert", str(FIX / "routed_experts.npz"), "--moe-layers", "0,70000",
      "--out", f"{d}/o.parquet"], 1, "70000", cls="narrowing"),
    C("bigmoe-expert-out-of-range", lambda d: ["convert", str(bigmoe(d, rows=["0,0,0,0,0,9,0.6,0,100",
      "0,0,0,0,1,3,0.4,0,100"])), "--out", f"{d}/o.parquet"], 1, "m.route.csv", "9", cls="narrowing"),

    # -- metadata taken on trust
    C("meta-negative-bytes", lambda d: ["inspect", str(tampered(d / "t.parquet", meta=lambda m: m.update(
      bytes_per_expert=-5)))], 1, "t.parquet", "bytes_per_expert", cls="metadata"),
    C("meta-negative-dense-bytes", lambda d: ["inspect", str(tampered(d / "t.parquet", meta=lambda m: m.update(
      dense_bytes_per_layer=-5)))], 1, "t.parquet", "dense_bytes_per_layer", cls="metadata"),
    C("meta-moe-layers-negative", lambda d: ["inspect", str(tampered(d / "t.parquet", meta=lambda m: m.update(
      moe_layers=[-1, 0])))], 1, "t.parquet", "moe_layers", cls="metadata"),
    C("meta-uint8-ids-300-experts", lambda d: ["inspect", str(tampered(d / "t.parquet", meta=lambda m: m.update(
      num_experts=300)))], 1, "t.parquet", "expert_ids", "uint16", cls="metadata"),
    C("meta-is-a-list", lambda d: ["inspect", str(tampered(d / "t.parquet", raw=b"[1, 2]"))], 1, "t.parquet",
      "metadata", cls="metadata"),
    C("meta-is-null", lambda d: ["inspect", str(tampered(d / "t.parquet", raw=b"null"))], 1, "t.parquet", "metadata",
      cls="metadata"),
    C("meta-num-experts-string", lambda d: ["inspect", str(tampered(d / "t.parquet", meta=lambda m: m.update(
      num_experts="8")))], 1, "t.parquet", "num_experts", cls="metadata"),
    C("meta-num-experts-1e9", lambda d: ["inspect", str(tampered(d / "t.parquet", meta=lambda m: m.update(
      num_experts=1e9)))], 1, "t.parquet", "num_experts", cls="metadata"),
    C("meta-num-experts-1e9-replay", lambda d: ["replay", str(tampered(d / "t.parquet", meta=lambda m: m.update(
      num_experts=1e9))), "--mode", "count"], 1, "t.parquet", "num_experts", cls="metadata"),
    C("meta-moe-layer-1e9", lambda d: ["inspect", str(tampered(d / "t.parquet", meta=lambda m: m.update(
      moe_layers=[0, 1_000_000_000], num_layers=1_000_000_001)))], 1, "t.parquet", "moe_layers", cls="metadata"),
    C("meta-top-k-bool", lambda d: ["inspect", str(tampered(d / "t.parquet", meta=lambda m: m.update(top_k=True)))],
      1, "t.parquet", "top_k", cls="metadata"),
    C("meta-lacks-not-a-list", lambda d: ["inspect", str(tampered(d / "t.parquet", meta=lambda m: m.update(
      lacks="decode")))], 1, "t.parquet", "lacks", cls="metadata"),
    C("meta-huge-layers-x-experts", lambda d: ["inspect", str(tampered(d / "t.parquet", meta=lambda m: m.update(
      moe_layers=list(range(60000)), num_layers=60000, num_experts=60000)))], 1, "t.parquet", cls="metadata"),
    C("nan-weight-beside-null", lambda d: ["inspect", str(tampered(d / "t.parquet", table=lambda t: with_weights(
      t, [None, [float("nan"), 0.5], [0.5, 0.5], [0.5, 0.5]])))], 1, "t.parquet", "expert_weights", cls="metadata"),
    C("nan-weight-beside-null-replay", lambda d: ["replay", str(tampered(d / "t.parquet", table=lambda t: with_weights(
      t, [None, [float("nan"), 0.5], [0.5, 0.5], [0.5, 0.5]]))), "--mode", "count"], 1, "t.parquet", "expert_weights",
      cls="metadata"),
    C("router-logits-wrong-size", lambda d: ["inspect", str(tampered(d / "t.parquet", table=lambda t: t.append_column(
      "router_logits", pa.array([[0.0] * 3] * 4, type=pa.list_(pa.float16(), 3)))))], 1, "t.parquet", "router_logits",
      cls="metadata"),
    C("synth-huge-seed", lambda d: ["synth", "--layers", "2", "--experts", "8", "--top-k", "2", "--tokens", "20",
      "--seed", str(2 ** 70), "--out", f"{d}/o.parquet"], 2, "--seed", cls="metadata"),
    C("synth-70000-experts", lambda d: ["synth", "--layers", "2", "--experts", "70000", "--top-k", "2", "--tokens", "4",
      "--out", f"{d}/o.parquet"], 2, "--experts", cls="metadata", files=_only()),
    C("synth-negative-bytes", lambda d: ["synth", "--layers", "2", "--experts", "8", "--top-k", "2", "--tokens", "4",
      "--bytes-per-expert", "-5", "--out", f"{d}/o.parquet"], 2, "--bytes-per-expert", cls="metadata"),
    C("synth-model-card-layer-negative", lambda d: ["synth", "--model", str(synth_model_json(d / "m.json",
      card_moe_layers=[-1, 0])), "--tokens", "8", "--out", f"{d}/o.parquet"], 1, "m.json", "moe_layers",
      cls="metadata", files=_only("m.json")),
    C("synth-model-popularity-text", lambda d: ["synth", "--model", str(synth_model_json(d / "m.json",
      popularity="abc")), "--tokens", "8", "--out", f"{d}/o.parquet"], 1, "m.json", "popularity", cls="metadata"),
    C("synth-huge-tokens", lambda d: ["synth", "--layers", "2", "--experts", "8", "--top-k", "2", "--tokens",
      str(10 ** 13), "--out", f"{d}/o.parquet"], 2, "--tokens", cls="metadata"),
    C("synth-tokens-beyond-memory", lambda d: ["synth", "--layers", "4000", "--experts", "8", "--top-k", "2", "--tokens",
      str(4 * 10 ** 9), "--out", f"{d}/o.parquet"], 1, "tokens", "GiB", cls="metadata", files=_only()),
    C("fit-on-zero-rows", lambda d: ["fit-predictor", str(write_trace(small_trace().select_requests([]), d / "e.parquet")),
      "--out", f"{d}/m.npz"], 1, "e.parquet", "no rows", cls="metadata", files=_only("e.parquet")),

    # -- inspect skips replay's checks
    C("inspect-duplicate-row", lambda d: ["inspect", str(tampered(d / "t.parquet", table=lambda t: set_col(
      t, "layer", [0, 0, 0, 1])))], 1, "t.parquet", "appears twice", cls="inspect"),
    C("inspect-duplicate-row-across-batches", lambda d: ["inspect", str(tampered(d / "t.parquet", table=lambda t: set_col(
      t, "layer", [0, 0, 0, 1]))), "--batch-rows", "1"], 1, "t.parquet", "appears twice", cls="inspect"),
    C("inspect-positions-backwards", lambda d: ["inspect", str(tampered(d / "t.parquet", table=lambda t: set_col(
      t, "token_pos", [1, 1, 0, 0]))), "--batch-rows", "2"], 1, "t.parquet", "comes after", cls="inspect"),
    C("inspect-steps-backwards", lambda d: ["inspect", str(tampered(d / "t.parquet", table=lambda t: set_col(
      t, "step", [1, 1, 0, 0]))), "--batch-rows", "2"], 1, "t.parquet", "sorted by step", cls="inspect"),
    C("inspect-zero-rows", lambda d: ["inspect", str(write_trace(small_trace().select_requests([]), d / "e.parquet"))],
      0, "no rows", cls="inspect"),
    # -- nulls where a file declares a key column nullable, or inside an expert list: named, streamed or read whole
    C("null-step-inspect", lambda d: ["inspect", str(tampered(d / "t.parquet", table=lambda t: set_col(
      t, "step", [0, 0, None, 1]))), "--batch-rows", "2"], 1, "t.parquet", "row 2", "step is null", cls="narrowing"),
    C("null-request-replay", lambda d: ["replay", str(tampered(d / "t.parquet", table=lambda t: set_col(
      t, "request_id", [0, 0, 0, None]))), "--mode", "count"], 1, "t.parquet", "row 3", "request_id is null",
      cls="narrowing"),
    C("null-id-in-list-inspect", lambda d: ["inspect", str(tampered(d / "t.parquet", table=lambda t: null_id(t, 3))),
      "--batch-rows", "1"], 1, "t.parquet", "row 1", "null id", cls="narrowing"),
    C("null-id-in-list-replay", lambda d: ["replay", str(tampered(d / "t.parquet", table=lambda t: null_id(t, 6))),
      "--mode", "count"], 1, "t.parquet", "row 3", "null id", cls="narrowing"),
    C("inspect-zero-rows-json", lambda d: ["inspect", "--json", str(write_trace(small_trace().select_requests([]),
      d / "e.parquet"))], 0, '"rows": 0', cls="inspect"),
    C("inspect-batch-rows-0", lambda d: ["inspect", T(d), "--batch-rows", "0"], 2, "--batch-rows", cls="inspect"),

    # -- tracebacks
    C("npz-truncated", lambda d: ["convert", str(truncated(Path(shutil.copy(FIX / "plain.npz", d / "t.npz")))),
      "--out", f"{d}/o.parquet"], 1, "t.npz", cls="traceback"),
    C("npz-truncated-vllm", lambda d: ["convert", "--format", "vllm", str(truncated(Path(shutil.copy(
      FIX / "routed_experts.npz", d / "r.npz")))), "--out", f"{d}/o.parquet"], 1, "r.npz", cls="traceback"),
    C("npy-truncated", lambda d: ["convert", str(truncated(npz_one(d / "r.npy", np.zeros((4, 2, 2), np.int64)))),
      "--out", f"{d}/o.parquet"], 1, "r.npy", cls="traceback"),
    C("npz-object-array", lambda d: ["convert", "--format", "vllm", str(npz_pickled(d / "r.npz")), "--out",
      f"{d}/o.parquet"], 1, "r.npz", cls="traceback"),
    C("npz-header-claims-8TB", lambda d: ["convert", str(huge_npy_member(d / "t.npz", "expert_ids", (10 ** 12, 8),
      request_id=[0], token_pos=[0], layer=[0])), "--out", f"{d}/o.parquet"], 1, "t.npz", "expert_ids",
      cls="traceback"),
    C("megatron-line-is-a-list", lambda d: ["convert", "--format", "megatron", str(megatron(d, raw_lines=["[1, 2]"])),
      "--out", f"{d}/o.parquet"], 1, "router_trace_rank0.jsonl", "line 2", cls="traceback"),
    C("megatron-ragged-top-indices", lambda d: ["convert", str(megatron(d, {"step": 1, "num_tokens": 2,
      "top_indices": [[1, 2], [3]]})), "--out", f"{d}/o.parquet"], 1, "router_trace_rank0.jsonl", "line 2",
      "top_indices", cls="traceback"),
    C("megatron-num-tokens-text", lambda d: ["convert", str(megatron(d, {"step": 1, "num_tokens": "x"})), "--out",
      f"{d}/o.parquet"], 1, "router_trace_rank0.jsonl", "line 2", "num_tokens", cls="traceback"),
    C("megatron-step-text", lambda d: ["convert", str(megatron(d, {"step": "abc"})), "--out", f"{d}/o.parquet"], 1,
      "router_trace_rank0.jsonl", "line 2", "step", cls="traceback"),
    C("megatron-batch-size-0", lambda d: ["convert", str(megatron(d)), "--batch-size", "0", "--out", f"{d}/o.parquet"],
      2, "--batch-size", cls="traceback"),
    C("bigmoe-n-expert-used-0", lambda d: ["convert", str(bigmoe(d, "# route_trace v1\n# model=/x/m.gguf arch=q "
      "n_layer=1 n_expert=8 n_expert_used=0\n")), "--out", f"{d}/o.parquet"], 1, "m.route.csv", "n_expert_used",
      cls="traceback"),
    C("bigmoe-no-n-expert", lambda d: ["convert", str(bigmoe(d, "# route_trace v1\n# model=/x/m.gguf arch=q n_layer=1 "
      "n_expert_used=2\n")), "--out", f"{d}/o.parquet"], 1, "m.route.csv", "n_expert", cls="traceback"),
    C("bigmoe-bad-expert-bytes", lambda d: ["convert", str(bigmoe(d, "# route_trace v1\n# model=/x/m.gguf arch=q "
      "n_layer=1 n_expert=8 n_expert_used=2\n# layer=0 expert_bytes=abc dense_bytes=10\n")), "--out", f"{d}/o.parquet"],
      1, "m.route.csv", "expert_bytes", cls="traceback"),
    C("bigmoe-expert-text", lambda d: ["convert", str(bigmoe(d, rows=["0,0,0,0,0,x,0.6,0,100", "0,0,0,0,1,3,0.4,0,100"])),
      "--out", f"{d}/o.parquet"], 1, "m.route.csv", "expert", cls="traceback"),
    C("bigmoe-nan-weight", lambda d: ["convert", str(bigmoe(d, rows=["0,0,0,0,0,5,nan,0,100", "0,0,0,0,1,3,0.4,0,100"])),
      "--out", f"{d}/o.parquet"], 1, "m.route.csv", "weight", cls="traceback"),
    C("stratamoe-metadata-not-json", lambda d: ["convert", str(stratamoe(d, meta_text="{oops")), "--out",
      f"{d}/o.parquet"], 1, "capture-metadata.json", cls="traceback"),
    C("stratamoe-span-lacks-end", lambda d: ["convert", str(stratamoe(d, meta_text=json.dumps(
      {"prompt_spans": [{"token_start": 0}]}))), "--out", f"{d}/o.parquet"], 1, "capture-metadata.json",
      "prompt_spans", cls="traceback"),
    C("stratamoe-source-is-text", lambda d: ["convert", str(stratamoe(d, source="switch")), "--out", f"{d}/o.parquet"],
      1, "router-trace.v2.json", "source", cls="traceback"),
    C("stratamoe-experts-text", lambda d: ["convert", str(stratamoe(d, expertsPerLayer="eight")), "--out",
      f"{d}/o.parquet"], 1, "router-trace.v2.json", "expertsPerLayer", cls="traceback"),
    C("model-npz-truncated", lambda d: ["replay", T(d), "--mode", "count", "--predictor",
      f"learned:{truncated(coact_model(d / 'm.npz'))}"], 1, "m.npz", cls="traceback"),
    C("model-npz-wrong-shapes", lambda d: ["replay", T(d), "--mode", "count", "--predictor",
      f"learned:{coact_model(d / 'm.npz', evidence=np.zeros((1, 2, 5, 8), np.float32))}"], 1, "m.npz", "evidence",
      cls="traceback"),
    C("model-pt-state-dict-mismatch", lambda d: ["replay", T(d), "--mode", "count", "--predictor",
      f"learned:{gru_state(d / 'm.pt', [2, 8, 4, 1], {'w': __import__('torch').zeros(3)})}"], 1, "m.pt",
      cls="traceback"),
    C("model-pt-hidden-13TB", lambda d: ["replay", T(d), "--mode", "count", "--predictor",
      f"learned:{gru_state(d / 'm.pt', [2, 8, 10 ** 12, 1])}"], 1, "m.pt", "hidden", cls="traceback"),
    C("fit-horizon-0", lambda d: ["fit-predictor", T(d), "--out", f"{d}/m.npz", "--horizon", "0"], 2, "--horizon",
      cls="traceback"),
    C("fit-gru-hidden-0", lambda d: ["fit-predictor", T(d), "--kind", "gru", "--out", f"{d}/m.pt", "--hidden", "0"],
      2, "--hidden", cls="traceback"),
    C("out-temp-name-too-long", lambda d: ["convert", str(FIX / "plain.csv"), "--num-experts", "4", "--out",
      _long_name(d, 250)], 0, "wrote", cls="traceback", files=lambda d: _only("x" * 242 + ".parquet")(d)),
    C("out-name-too-long", lambda d: ["convert", str(FIX / "plain.csv"), "--num-experts", "4", "--out",
      _long_name(d, 300)], 1, "too long", cls="traceback", files=_only()),
    C("out-folder-not-writable", lambda d: ["convert", str(FIX / "plain.csv"), "--num-experts", "4", "--out",
      f"{d}/o.parquet"], 1, "o.parquet", "ermission", patch=locked_folder, cls="traceback", files=_only()),
    C("out-disk-full", lambda d: ["convert", str(FIX / "plain.csv"), "--num-experts", "4", "--out", f"{d}/o.parquet"],
      1, "o.parquet", "space", patch=no_space, cls="traceback", files=_only()),
    C("out-parent-is-a-file", lambda d: ["convert", str(FIX / "plain.csv"), "--num-experts", "4", "--out",
      f"{text(d / 'f', 'x')}/o.parquet"], 1, "o.parquet", cls="traceback", files=_only("f")),
    C("synth-save-model-not-writable", lambda d: ["synth", "--layers", "2", "--experts", "8", "--top-k", "2",
      "--tokens", "8", "--save-model", f"{d}/m.npz", "--out", f"{d}/o.parquet"], 1, "m.npz", "ermission",
      patch=locked_folder, cls="traceback", files=_only()),
    C("fit-disk-full", lambda d: ["fit-predictor", T(d), "--out", f"{d}/m.npz"], 1, "m.npz", "space", patch=no_space,
      cls="traceback", files=_only("t.parquet")),
    C("s3-without-s3fs", lambda d: ["inspect", "s3://bucket/t.parquet"], 1, "s3://bucket/t.parquet", "moesim[s3]",
      patch=no_module("s3fs"), cls="traceback"),
    C("http-without-aiohttp", lambda d: ["inspect", "http://example.com/t.parquet"], 1, "moesim[http]",
      patch=no_module("aiohttp"), cls="traceback"),
    C("s3-without-fsspec", lambda d: ["inspect", "s3://bucket/t.parquet"], 1, "moesim[s3]", patch=no_module("fsspec"),
      cls="traceback"),

    # -- hangs and lost files
    C("fifo-trace-inspect", lambda d: ["inspect", str(fifo(d / "t.parquet"))], 1, "t.parquet", "not a regular file",
      cls="hang"),
    C("fifo-convert-input", lambda d: ["convert", str(fifo(d / "t.csv")), "--out", f"{d}/o.parquet"], 1, "t.csv",
      "not a regular file", cls="hang"),
    C("fifo-synth-model", lambda d: ["synth", "--model", str(fifo(d / "m.json")), "--tokens", "4", "--out",
      f"{d}/o.parquet"], 1, "m.json", "not a regular file", cls="hang"),
    C("fifo-predictor-model", lambda d: ["replay", T(d), "--mode", "count", "--predictor",
      f"learned:{fifo(d / 'm.npz')}"], 1, "m.npz", "not a regular file", cls="hang"),
    C("convert-onto-its-input", lambda d: ["convert", str(shutil.copy(FIX / "plain.csv", d / "same.csv")),
      "--num-experts", "4", "--out", f"{d}/same.csv"], 1, "same.csv", "input", cls="lost-file",
      files=lambda d: (d / "same.csv").read_bytes() == (FIX / "plain.csv").read_bytes() or pytest.fail("input lost")),
    C("synth-onto-like-trace", lambda d: ["synth", "--like", T(d), "--tokens", "8", "--out", f"{d}/t.parquet"], 1,
      "t.parquet", "input", cls="lost-file"),
    C("fit-onto-train-trace", lambda d: ["fit-predictor", T(d), "--out", f"{d}/t.parquet"], 1, "t.parquet", "input",
      cls="lost-file"),

    # -- usability: good inputs that must convert
    C("folder-with-source-md", lambda d: ["convert", str(strata_folder(d)), "--out", f"{d}/o.parquet"], 0, "wrote",
      cls="usability"),
    C("two-bigmoeonedge-files", lambda d: ["convert", str(bigmoe(d)), str(shutil.copy(bigmoe(d), d / "n.route.csv")),
      "--out", f"{d}/o.parquet"], 0, "2 requests", cls="usability"),
    C("two-plain-csv-files", lambda d: ["convert", str(FIX / "plain.csv"), str(shutil.copy(FIX / "plain.csv", d / "b.csv")),
      "--num-experts", "4", "--out", f"{d}/o.parquet"], 0, "4 requests", cls="usability"),
    C("folder-of-subfolders", lambda d: ["convert", str(nested(d)), "--out", f"{d}/o.parquet"], 1, "train",
      cls="usability"),
]


def npz_one(path: Path, a) -> Path:
    np.save(path, a)
    return path


def npz_pickled(path: Path) -> Path:
    with open(path, "wb") as f:
        np.savez(f, r=np.array([{"a": 1}], dtype=object))
    return path


def strata_folder(d: Path) -> Path:
    src = d / "switch"
    src.mkdir()
    shutil.copy(FIX / "router-trace.v2.json", src)
    shutil.copy(FIX / "capture-metadata.json", src)
    (src / "SOURCE.md").write_text("# where this came from\n")
    (src / "LICENSE").write_text("MIT\n")
    return src


def nested(d: Path) -> Path:
    top = d / "moe-beyond"
    (top / "train").mkdir(parents=True)
    shutil.copy(FIX / "prompt_2_data.csv", top / "train")
    (top / "SOURCE.md").write_text("# source\n")
    return top


# ---------------------------------------------------------------- running a case
def _unblock_fifos(d: Path, stop, hung: list) -> None:
    """After TIMEOUT_S, play the other end of every named pipe in the case's folder (opening it to write),
    so a reader blocked in C code returns and the case can be counted as a hang instead of stalling the run."""
    if stop.wait(TIMEOUT_S):
        return
    hung.append(True)
    while not stop.wait(0.2):
        for p in d.rglob("*"):
            if p.is_fifo():
                try:
                    os.close(os.open(p, os.O_WRONLY | os.O_NONBLOCK))
                except OSError:
                    pass


def run_case(case: Case, d: Path, mp) -> tuple[str, str]:
    """(outcome, output): outcome is 'ok', 'traceback', 'hang', 'accepted' (exit 0 for a bad input),
    'wrong-code', 'wrong-message' or 'lost-or-left-file'."""
    import threading
    args = [str(a) for a in case.build(d)]
    if case.patch:
        case.patch(mp)
    stop, hung = threading.Event(), []
    watchdog = threading.Thread(target=_unblock_fifos, args=(d, stop, hung), daemon=True)
    watchdog.start()
    try:
        res = CliRunner().invoke(main, args, catch_exceptions=False)
    except Exception as e:  # what a user would see as a traceback
        return ("hang" if hung else "traceback"), f"{type(e).__name__}: {e}"
    finally:
        stop.set()
        watchdog.join()
        mp.undo()
    if hung:
        return "hang", res.output
    out = res.output
    if res.exit_code != case.code:
        return ("accepted" if res.exit_code == 0 else "wrong-code"), out
    if not all(s in out for s in case.says):
        return "wrong-message", out
    if case.code and len([ln for ln in out.strip().splitlines() if ln.strip()]) > 3:
        return "wrong-message", out  # one clear line (click's usage lines for exit 2 included)
    if case.files:
        try:
            case.files(d)
        except (AssertionError, pytest.fail.Exception) as e:
            return "lost-or-left-file", str(e)
    return "ok", out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_ends_in_one_clear_line(case, tmp_path, monkeypatch):
    d = tmp_path / "case"
    d.mkdir()
    outcome, out = run_case(case, d, monkeypatch)
    assert outcome == "ok", f"{case.id}: {outcome}\n{out}"


# ---------------------------------------------------------------- properties behind the corpus
UINT_COLUMNS = {"request_id": 2 ** 32 - 1, "step": 2 ** 32 - 1, "token_pos": 2 ** 32 - 1, "layer": 2 ** 16 - 1}


@settings(max_examples=60, deadline=None)
@given(column=st.sampled_from(sorted(UINT_COLUMNS)), value=st.one_of(
    st.integers(min_value=-2 ** 40, max_value=2 ** 40), st.floats(allow_nan=True, allow_infinity=True)))
def test_every_key_column_keeps_its_value_or_is_refused(column, value):
    """A value stored is the value given: whatever from_arrays accepts reads back equal; the rest is an error naming
    the column (no wrap-around, no truncation of 1.7 to 1, no NaN turned into 0)."""
    top = UINT_COLUMNS[column]
    representable = float(value).is_integer() if isinstance(value, float) and math.isfinite(value) else \
        isinstance(value, int)
    ok = representable and 0 <= value <= top
    moe = [int(value)] if column == "layer" and ok else [0]
    meta = TraceMeta(model="m", num_layers=max(moe) + 1, moe_layers=moe, num_experts=4, top_k=1)
    cols = {"request_id": 0, "step": 0, "token_pos": 0, "layer": 0, column: value}
    arrays = {k: np.array([v]) for k, v in cols.items()}
    if ok:
        t = Trace.from_arrays(meta, phase=np.array([0]), expert_ids=np.array([[1]]), **arrays)
        assert int(t.column(column)[0]) == value
    else:
        with pytest.raises(TraceError, match=column):
            Trace.from_arrays(meta, phase=np.array([0]), expert_ids=np.array([[1]]), **arrays)


@settings(max_examples=40, deadline=None)
@given(expert=st.integers(min_value=-2 ** 20, max_value=2 ** 20), num_experts=st.integers(1, 65536))
def test_an_expert_id_is_stored_as_given_or_refused(expert, num_experts):
    meta = TraceMeta(model="m", num_layers=1, moe_layers=[0], num_experts=num_experts, top_k=1)
    args = dict(request_id=np.array([0]), phase=np.array([0]), step=np.array([0]), token_pos=np.array([0]),
                layer=np.array([0]))
    if 0 <= expert < num_experts:
        assert int(Trace.from_arrays(meta, expert_ids=np.array([[expert]]), **args).expert_ids()[0, 0]) == expert
    else:
        with pytest.raises(TraceError, match="expert"):
            Trace.from_arrays(meta, expert_ids=np.array([[expert]]), **args)


META_FIELDS_BAD = [
    ("num_experts", "8"), ("num_experts", 1e9), ("num_experts", 0), ("num_experts", None), ("top_k", 2.0),
    ("top_k", True), ("num_layers", -1), ("moe_layers", [0, -1]), ("moe_layers", "0,1"), ("moe_layers", [0, 70000]),
    ("bytes_per_expert", -1), ("bytes_per_expert", 1.5), ("dense_bytes_per_layer", -1), ("shared_experts", -1),
    ("model", 7), ("dtype", None), ("source", "x"), ("lacks", [1]), ("extra", []), ("notes", None),
    ("quantization", 8), ("revision", 1),
]


@pytest.mark.parametrize("name,value", META_FIELDS_BAD, ids=[f"{n}={v!r}" for n, v in META_FIELDS_BAD])
def test_each_metadata_field_is_checked_on_read(tmp_path, name, value):
    path = tampered(tmp_path / "t.parquet", meta=lambda m: m.update({name: value}))
    for read in (read_trace, lambda p: __import__("moesim").trace.read_meta(p)):
        with pytest.raises(TraceError) as err:
            read(path)
        assert str(path) in str(err.value) and name in str(err.value)


def test_metadata_that_is_not_an_object_is_one_line(tmp_path):
    for raw in (b"[1, 2]", b"null", b"7", b'"text"'):
        with pytest.raises(TraceError, match="metadata"):
            read_trace(tampered(tmp_path / "t.parquet", raw=raw))


def test_inspect_lru_capacities_agree_with_replay():
    """inspect's LRU table names the same expert counts replay gives for the same percentages (floored)."""
    from moesim.config import Capacity
    from moesim.trace.stats import LRU_FRACTIONS, inspect_trace
    trace = read_trace(ROOT / "traces" / "dsv2lite-moebeyond-sample.parquet")
    curve = inspect_trace(trace)["reuse_distance"]["all"]["lru_curve"]
    items = trace.meta.num_moe_layers * trace.meta.num_experts
    for f, point in zip(LRU_FRACTIONS, curve):
        want, _ = Capacity.parse(f"{f * 100:g}%").experts(num_items=items, num_layers=26, bytes_per_expert=1)
        assert point["capacity"] == max(1, want), f
    assert [p["capacity"] for p in curve][:5] == [16, 33, 83, 166, 332]


def test_inspect_refuses_what_replay_refuses_at_any_batch_size(tmp_path):
    """The streamed order check finds a duplicate however the rows fall into batches."""
    from moesim.trace.stats import inspect_trace
    rng = np.random.default_rng(0)
    base = write_trace(make_trace([[[int(a), int(a) + 1] for a in rng.integers(0, 6, 3)] for _ in range(7)],
                                  num_experts=8, top_k=2), tmp_path / "t.parquet")
    t = pq.read_table(base)
    n = t.num_rows
    for r in range(1, n):
        for what, col, msg in (("dup", "layer", "appears twice"), ("back", "token_pos", "comes after")):
            vals = t.column(col).to_numpy().copy()
            if what == "dup":
                if vals[r] == vals[r - 1] or t.column("token_pos")[r] != t.column("token_pos")[r - 1]:
                    continue
                vals[r] = vals[r - 1]
            else:
                vals[r:] = np.maximum(vals[r:].astype(np.int64) - 2, 0)
                if (vals[r:] >= vals[r - 1]).all():
                    continue
            bad = tmp_path / f"{what}{r}.parquet"
            pq.write_table(set_col(t, col, vals), bad)
            with pytest.raises(TraceError):
                read_trace(bad)
            for batch in (1, 2, 3, n):
                with pytest.raises(TraceError):
                    inspect_trace(bad, batch_rows=batch)


def test_a_full_disk_leaves_no_part_file_and_the_old_output_intact(tmp_path):
    """A real small tmpfs (needs root and mount): convert fails with one line, the earlier output survives."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mount is not permitted here")
    try:
        out = mnt / "o.parquet"
        out.write_bytes(b"earlier output")
        big = write_trace(make_trace([[[i % 8, (i + 1) % 8]] * 4 for i in range(20000)], num_experts=8, top_k=2),
                          tmp_path / "big.parquet")
        res = CliRunner().invoke(main, ["synth", "--like", str(big), "--tokens", "200000", "--out", str(out)],
                                 catch_exceptions=False)
        assert res.exit_code == 1 and "o.parquet" in res.output and "space" in res.output, res.output
        assert sorted(p.name for p in mnt.iterdir()) == ["o.parquet"]
        assert out.read_bytes() == b"earlier output"
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_atomic_write_removes_its_temporary_on_any_failure(tmp_path):
    from moesim.files import atomic_write

    def half_then_fail(tmp):
        Path(tmp).write_bytes(b"half")
        raise KeyboardInterrupt

    (tmp_path / "o.bin").write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "o.bin", half_then_fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.bin"] and (tmp_path / "o.bin").read_bytes() == b"old"
    atomic_write(tmp_path / "o.bin", lambda tmp: Path(tmp).write_bytes(b"new"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.bin"] and (tmp_path / "o.bin").read_bytes() == b"new"


def test_saved_models_appear_whole_or_not_at_all(tmp_path, monkeypatch):
    """fit-predictor and synth --save-model write through the atomic writer: a failure mid-write keeps the old file."""
    from moesim.predict import learned
    from moesim.trace.synth import SynthModel, parametric
    model = parametric(layers=2, experts=8, top_k=2)
    for path, save in ((tmp_path / "s.npz", model.save), (tmp_path / "s.json", model.save)):
        save(path)
        before = path.read_bytes()
        monkeypatch.setattr(json, "dumps", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
        monkeypatch.setattr(np, "savez_compressed", lambda f, **k: (f.write(b"partial"), (_ for _ in ()).throw(
            RuntimeError("boom"))))
        with pytest.raises(RuntimeError):
            save(path)
        monkeypatch.undo()
        assert path.read_bytes() == before and SynthModel.load(path).num_experts == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json", "s.npz"]
    coact = learned.fit(small_trace(), horizon=1)
    coact.save(tmp_path / "c.npz")
    before = (tmp_path / "c.npz").read_bytes()
    monkeypatch.setattr(np, "savez_compressed", lambda f, **k: (f.write(b"partial"), (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device"))))
    with pytest.raises(ValueError, match="c.npz.*space"):
        coact.save(tmp_path / "c.npz")
    assert (tmp_path / "c.npz").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz", "s.json", "s.npz"]


def test_synth_writes_only_traces_read_trace_accepts(tmp_path):
    """Whatever knobs synth accepts, read_trace reads its output back."""
    from moesim.trace.synth import parametric, sample
    for layers, experts, k in ((1, 1, 1), (3, 256, 4), (2, 257, 3), (1, 65536, 2)):
        t = sample(parametric(layers=layers, experts=experts, top_k=k, reuse_p=0.5), tokens=6, seed=3)
        back = read_trace(write_trace(t, tmp_path / "s.parquet"))
        assert back.meta.num_experts == experts and back.expert_ids().max() < experts
    with pytest.raises(ValueError, match="experts"):
        parametric(layers=2, experts=65537, top_k=2)


def test_granite_importer_docstring_holds_the_traces_statistics(real_traces):
    """The reader's docstring states the public trace's statistics; run it as a doctest."""
    import doctest
    from moesim.trace.importers import onnx_genai
    finder = doctest.DocTestFinder()
    [test] = [t for t in finder.find(onnx_genai.read_onnx_genai, "read_onnx_genai",
                                     globs={"REAL": real_traces, "read_onnx_genai": onnx_genai.read_onnx_genai})]
    result = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS).run(test, out=lambda s: pytest.fail(s))
    assert result.attempted >= 5 and result.failed == 0


def test_granite_importer_reads_the_public_trace(real_traces):
    """The onnx-genai Granite dump: 3 prompts (39, 44, 29 tokens) each prefilled in one step, then 64 decode steps;
    the LRU hit rate its docstring states is what a count-mode replay gives."""
    import moesim
    from moesim.trace.importers import convert
    t = convert(real_traces / "granite-3.0-1b-a400m-onnx-genai")
    # the docstring's rate is per access (inspect's stack-distance curve); by (step, layer) segment a layer's
    # eight experts never evict one another, and LRU keeps more (0.418)
    assert round(moesim.replay(t, policy="lru", capacity=192, mode="count", accounting="access")["hit_rate"],
                 3) == 0.314
    assert round(moesim.replay(t, policy="lru", capacity=192, mode="count")["hit_rate"], 3) == 0.418
    m = t.meta
    assert (m.num_layers, m.moe_layers, m.num_experts, m.top_k) == (24, list(range(24)), 32, 8)
    assert m.bytes_per_expert == 3 * 1024 * 512 * 2
    tokens = [39 + 64, 44 + 64, 29 + 64]
    assert t.num_rows == sum(tokens) * 24
    req, phase, step = (t.column(c) for c in ("request_id", "phase", "step"))
    assert np.bincount(req).tolist() == [n * 24 for n in tokens]
    assert int((phase == 1).sum()) == 3 * 64 * 24 and len(np.unique(step)) == 3 * 65


@pytest.mark.parametrize("folder,ok", [
    ("switch-base-8-stratamoe", "wrote"), ("granite-3.0-1b-a400m-onnx-genai", "wrote"),
    ("bigmoeonedge-qwen3-gemma4-gptoss", "different models"), ("fiddler-mixtral-popularity", "subfolders"),
    ("fiddler-mixtral-popularity/mixtral_8x7b_instruct", "aggregates"),
    ("moe-beyond-dsv2lite", "subfolders"), ("mixtral-8x7b-speculative-moe", "on its own"),
])
def test_every_public_folder_converts_or_says_why_not(real_traces, tmp_path, folder, ok):
    res = CliRunner().invoke(main, ["convert", str(real_traces / folder), "--out", str(tmp_path / "o.parquet")],
                             catch_exceptions=False)
    assert ok in res.output, res.output
    assert "cannot tell which format" not in res.output


# ---------------------------------------------------------------- counting
def count(cases=CASES) -> dict[str, list[str]]:
    """Run every case (each in a temporary folder) and group the ids by outcome."""
    import tempfile
    from _pytest.monkeypatch import MonkeyPatch
    out: dict[str, list[str]] = {}
    for case in cases:
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            try:
                outcome, _ = run_case(case, d, MonkeyPatch())
            except Exception as e:  # a case whose files cannot even be built (e.g. torch missing)
                outcome = f"not run ({type(e).__name__})"
        out.setdefault(outcome, []).append(case.id)
    return out


if __name__ == "__main__":
    result = count()
    for outcome, ids in sorted(result.items()):
        print(f"{outcome:18} {len(ids):3}  {' '.join(ids)}")
    print(f"{'total':18} {sum(len(v) for v in result.values()):3}")
