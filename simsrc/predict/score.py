"""The predictor scorecard: precision, recall and F1 (micro-averaged, by horizon, by layer), and timeliness.

A prediction is *correct* if its expert is among those its target segment
routes to. Precision = correct / predictions. Recall = distinct (target, expert)
pairs predicted / pairs that happened, over the targets a prediction could be
issued for (a segment h positions in; for "all", the union over horizons).
*In time*: with the issuing segment's predictions queued on the link one after
another (latency + rank * transfer), the expert lands before the target
layer's experts start -- the compute of the layers in between plus the target's
dense part; demand traffic is ignored, so this is the optimistic bound.
"""
from __future__ import annotations

import numpy as np

from ..cost import segment_seconds, transfer_seconds
from ..hardware import Hardware
from ..trace import AccessStream
from ..units import GB, US
from .base import Predictions, seg_at, seg_counts, seg_position


def _prf(correct: int, predicted: int, hit_pairs: int, true_pairs: int) -> dict:
    p = correct / predicted if predicted else float("nan")
    r = hit_pairs / true_pairs if true_pairs else float("nan")
    f1 = 2 * p * r / (p + r) if predicted and true_pairs and p + r > 0 else float("nan")
    return {"predictions": int(predicted), "correct": int(correct), "precision": p, "recall": r, "f1": f1,
            "true_pairs": int(true_pairs)}


def score(pred: Predictions, stream: AccessStream, *, meta=None, hardware: Hardware | None = None,
          expert_bytes: float | None = None) -> dict:
    E = stream.num_experts
    truth = seg_counts(stream) > 0
    true_per_seg = truth.sum(axis=1)
    correct = truth[pred.target_seg, pred.item % E] if len(pred) else np.zeros(0, bool)
    pos = seg_position(stream)

    def pairs(sel: np.ndarray) -> int:
        key = pred.target_seg[sel] * E + pred.item[sel] % E
        return len(np.unique(key[correct[sel]]))

    def reachable(h: int) -> int:
        return int(true_per_seg[seg_at(stream, pos - h) >= 0].sum())

    horizons = sorted(int(h) for h in np.unique(pred.horizon))
    all_sel = np.ones(len(pred), bool)
    out = {"predictor": pred.name, "horizons": horizons,
           "all": _prf(int(correct.sum()), len(pred), pairs(all_sel), reachable(min(horizons) if horizons else 1))}
    out["by_horizon"] = {h: _prf(int(correct[pred.horizon == h].sum()), int((pred.horizon == h).sum()),
                                 pairs(pred.horizon == h), reachable(h)) for h in horizons}
    tgt_layer = stream.seg_layer[pred.target_seg]
    first = seg_at(stream, pos - (min(horizons) if horizons else 1)) >= 0
    # keyed by the model's layer numbers (meta.moe_layers) when the trace's card is given, else MoE indices
    numbers = list(meta.moe_layers) if meta is not None else list(range(stream.num_layers))
    out["by_layer"] = {}
    for l in range(stream.num_layers):
        sel = tgt_layer == l
        out["by_layer"][int(numbers[l])] = _prf(int(correct[sel].sum()), int(sel.sum()), pairs(sel),
                                  int(true_per_seg[first & (stream.seg_layer == l)].sum()))
    if hardware is not None and meta is not None and expert_bytes:
        out["timeliness"] = in_time(pred, stream, correct, meta, hardware, expert_bytes)
    return out


def in_time(pred: Predictions, stream: AccessStream, correct: np.ndarray, meta, hw: Hardware,
            expert_bytes: float) -> dict:
    dense, total = segment_seconds(stream, meta, hw, expert_bytes)
    end = np.cumsum(total)  # when each segment's compute ends, nothing stalled
    lead = end[pred.target_seg] - total[pred.target_seg] + dense[pred.target_seg] - end[pred.src_seg]
    # rank of each prediction in its issuing segment's queue (predictions arrive sorted by segment)
    first = np.searchsorted(pred.src_seg, pred.src_seg, side="left")
    rank = np.arange(len(pred)) - first
    arrive = transfer_seconds((rank + 1) * expert_bytes, hw)
    ok = arrive <= lead
    return {"bandwidth_gbps": hw.bandwidth / GB, "latency_us": hw.latency / US, "hardware": hw.name,
            "mean_lead_s": float(lead.mean()) if len(lead) else float("nan"),
            "transfer_s": expert_bytes / hw.bandwidth,
            "in_time": float(ok.mean()) if len(ok) else float("nan"),
            "correct_in_time": float(ok[correct].mean()) if correct.any() else float("nan")}


def format_scorecard(card: dict) -> str:
    def row(name, d):
        return (f"  {name:<10} {d['predictions']:>10,} {d['precision']:>9.1%} {d['recall']:>8.1%} "
                f"{d['f1']:>7.1%}")
    lines = [f"predictor {card['predictor']}: horizons {card['horizons']}",
             f"  {'':<10} {'predicted':>10} {'precision':>9} {'recall':>8} {'F1':>7}",
             row("all", card["all"])]
    lines += [row(f"h={h}", d) for h, d in card["by_horizon"].items()]
    lines.append("  by target layer:")
    lines += [row(f"layer {l}", d) for l, d in card["by_layer"].items() if d["predictions"]]
    t = card.get("timeliness")
    if t:
        lines.append(f"  in time at {t['bandwidth_gbps']:g} GB/s ({t['hardware']}, {t['transfer_s'] * 1e3:.2f} ms "
                     f"per expert, mean lead {t['mean_lead_s'] * 1e3:.2f} ms): {t['in_time']:.1%} of predictions, "
                     f"{t['correct_in_time']:.1%} of correct ones")
    return "\n".join(lines)
