"""The model card a recorded trace carries: sizes read from the loaded model itself."""
from __future__ import annotations

from ..trace import TraceMeta
from .blocks import MoEBlock, text_config


def _bytes(module) -> int:
    # numel * element_size is the stored size, so quantised weights count as stored
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def quantization_of(config) -> str | None:
    q = getattr(config, "quantization_config", None)
    if q is None:
        return None
    if isinstance(q, dict):
        return q.get("quant_method") or "unknown"
    return str(getattr(q, "quant_method", None) or type(q).__name__)


def model_card(model, blocks: list[MoEBlock], *, model_name: str, top_k: int, revision: str | None) -> TraceMeta:
    cfg = text_config(model)
    first = blocks[0]
    experts_bytes = _bytes(first.experts)
    num_experts = first.num_experts
    layer_modules = _decoder_layers(model, blocks)
    dense = _bytes(layer_modules[0]) - experts_bytes if layer_modules else 0
    expert_param = next(first.experts.parameters(), None)
    shared = getattr(cfg, "n_shared_experts", None)
    if not shared:
        shared = len(first.shared)
    return TraceMeta(
        model=model_name,
        num_layers=int(cfg.num_hidden_layers),
        moe_layers=[b.layer for b in blocks],
        num_experts=num_experts,
        top_k=top_k,
        shared_experts=int(shared or 0),
        bytes_per_expert=experts_bytes // num_experts,
        dense_bytes_per_layer=max(dense, 0),
        dtype=_dtype_name(expert_param.dtype) if expert_param is not None else "unknown",
        quantization=quantization_of(model.config),
        revision=revision or getattr(model.config, "_commit_hash", None),
        extra={
            "architecture": type(model).__name__,
            "model_type": getattr(cfg, "model_type", None),
            "routing_source": "router forward hook: (logits, weights, indices) as the block passes them to the experts",
            "expert_order": "as the router returns them (DeepSeek routers use unsorted top-k)",
            "shared_expert_bytes": sum(_bytes(s) for s in first.shared),
        },
    )


def _decoder_layers(model, blocks: list[MoEBlock]) -> list:
    """The decoder layer modules that hold the given MoE blocks (for the dense-bytes estimate)."""
    out = []
    for b in blocks:
        parent_name = b.name.rsplit(".", 1)[0]
        out.append(model.get_submodule(parent_name))
    return out
