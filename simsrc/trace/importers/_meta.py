"""Building TraceMeta for sources that do not say which model they come from."""
from __future__ import annotations

import numpy as np

from ..schema import TraceError, TraceMeta
from .models import known_model


def meta_for(where: str, name: str, *, model: str | None, expert_ids: np.ndarray, layers: np.ndarray,
             num_experts: int | None, moe_layers: list[int] | None, num_layers: int | None,
             lacks: list[str], notes: str, params: dict) -> TraceMeta:
    """Fill model dims from the known-model table, then from options, then from the data (noted)."""
    dims = known_model(model)
    guessed = []
    if num_experts is None:
        if dims:
            num_experts = dims.num_experts
        else:
            num_experts = int(expert_ids.max()) + 1 if expert_ids.size else 1
            guessed.append(f"num_experts={num_experts} (largest id seen + 1)")
    if moe_layers is None:
        if dims:
            moe_layers = list(dims.moe_layers)
        else:
            moe_layers = sorted(np.unique(layers).tolist())
            guessed.append("moe_layers (the layers seen)")
    if num_layers is None:
        num_layers = dims.num_layers if dims else (max(moe_layers) + 1 if moe_layers else 1)
    missing = np.setdiff1d(np.unique(layers), moe_layers)
    if missing.size:
        raise TraceError(f"{where}: layer {missing[0]} is in the data but not among the MoE layers "
                         f"{moe_layers}; pass the right --moe-layers")
    if expert_ids.size and expert_ids.max() >= num_experts:
        raise TraceError(f"{where}: expert id {expert_ids.max()} is out of range for num_experts={num_experts}; "
                         f"pass the model's --num-experts")
    if guessed:
        notes += " Inferred from the data, not the source: " + ", ".join(guessed) + "."
    return TraceMeta(
        model=dims.model if dims else (model or "unknown"), num_layers=num_layers, moe_layers=moe_layers,
        num_experts=num_experts, top_k=int(expert_ids.shape[1]),
        shared_experts=dims.shared_experts if dims else 0,
        bytes_per_expert=dims.bytes_per_expert() if dims else 0,
        dense_bytes_per_layer=dims.dense_bytes_per_layer() if dims else 0,
        dtype=dims.dtype if dims else "unknown",
        source={"kind": "importer", "name": name, "params": params},
        lacks=lacks + ([] if dims else ["model dims (bytes_per_expert is 0: pass --model)"]),
        notes=notes.strip(),
    )
