"""Recording overhead: `moesim.record.record` vs plain greedy generation, tiny models on CPU.

Both sides run the same batches (left-padded, greedy, same max_new_tokens);
the recorder's time includes its hooks, moving routing to numpy, building the
trace and writing parts and the assembled Parquet file. Each
round runs both back to back; times are the process's CPU time (one torch
thread), so other users of a shared machine do not count, and the overhead is
the median of the per-round ratios.

    python benchmarks/bench_record.py            # prints a table, compares with the baseline
    python benchmarks/bench_record.py --save     # rewrites benchmarks/record_baseline.json
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from moesim.record import Prompt, record
from moesim.record.prompts import prompt_digest
from moesim.record.tiny import tiny_model

BASELINE = Path(__file__).with_name("record_baseline.json")
MODELS = {  # a little larger than the test models: 4 layers, hidden 64
    "mixtral": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4),
    "qwen3_moe": dict(hidden_size=64, moe_intermediate_size=64, num_hidden_layers=4),
    "deepseek_v3": dict(hidden_size=64, moe_intermediate_size=64, num_hidden_layers=4),
}
REQUESTS, NEW_TOKENS, BATCH = 16, 32, 4


def make_prompts(seed: int = 0) -> list[Prompt]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(REQUESTS):
        n = int(torch.randint(16, 49, (1,), generator=g))
        ids = torch.randint(3, 128, (n,), generator=g).tolist()
        out.append(Prompt(i, None, ids, prompt_digest({"input_ids": ids})))
    return out


def plain(model, prompts) -> float:
    t0 = time.process_time()
    with torch.inference_mode():
        for s in range(0, len(prompts), BATCH):
            batch = [p.input_ids for p in prompts[s:s + BATCH]]
            P = max(map(len, batch))
            ids = torch.zeros((len(batch), P), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for b, x in enumerate(batch):
                ids[b, P - len(x):] = torch.tensor(x)
                mask[b, P - len(x):] = 1
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False,
                           pad_token_id=0)
    return time.process_time() - t0


def recorded(model, prompts, folder: Path, **opts) -> float:
    out = folder / f"t{time.perf_counter_ns()}.parquet"
    t0 = time.process_time()
    record(model, prompts, out, max_new_tokens=NEW_TOKENS, batch_size=BATCH, **opts)
    return time.process_time() - t0


def run(rounds: int) -> dict:
    prompts = make_prompts()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch, over in MODELS.items():
            model = tiny_model(arch, **over)
            plain(model, prompts[:BATCH])  # warm-up
            best = {"plain_s": [], "record_s": [], "record_pred2_s": []}
            for _ in range(rounds):
                best["plain_s"].append(plain(model, prompts))
                best["record_s"].append(recorded(model, prompts, Path(tmp)))
                best["record_pred2_s"].append(recorded(model, prompts, Path(tmp), record_predictions=2))
            row = {k: min(v) for k, v in best.items()}
            # each round runs plain and recorded back to back; the median of the per-round
            # ratios resists the load swings of a shared machine better than best-of
            ratio = np.median(np.array(best["record_s"]) / np.array(best["plain_s"]))
            ratio2 = np.median(np.array(best["record_pred2_s"]) / np.array(best["plain_s"]))
            row["overhead_pct"] = 100 * (ratio - 1)
            row["overhead_pred2_pct"] = 100 * (ratio2 - 1)
            results[arch] = {k: round(v, 4) for k, v in row.items()}
    return results


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--save", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)  # the machine is shared; one thread keeps rounds comparable
    results = run(args.rounds)
    print(f"{'model':12} {'plain s':>8} {'record s':>9} {'overhead':>9} {'+pred H=2':>10}")
    for arch, r in results.items():
        print(f"{arch:12} {r['plain_s']:8.3f} {r['record_s']:9.3f} {r['overhead_pct']:8.1f}% "
              f"{r['overhead_pred2_pct']:9.1f}%")
    doc = {"what": f"{REQUESTS} requests, prompts 16-48 tokens, {NEW_TOKENS} new tokens, batch {BATCH}, "
                   f"{args.rounds} rounds, times best-of, overhead the median of per-round ratios, 1 torch thread, CPU time of the process",
           "machine": platform.processor() or platform.machine(), "python": sys.version.split()[0],
           "torch": torch.__version__, "results": results}
    if args.save:
        BASELINE.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"saved {BASELINE}")
    elif BASELINE.exists():
        base = json.loads(BASELINE.read_text())["results"]
        for arch, r in results.items():
            if arch in base:
                print(f"{arch:12} baseline overhead {base[arch]['overhead_pct']:.1f}%, now {r['overhead_pct']:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
