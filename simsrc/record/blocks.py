"""Finding the MoE blocks of a transformers model, without a per-model table.

In transformers 5.x every MoE family we know builds its sparse block the
same way: a module with an ``experts`` container (all experts' weights as 3-D
tensors) and a router child (``gate`` in Mixtral/Qwen/DeepSeek/OLMoE,
``router`` in GPT-OSS/Phi-MoE/GraniteMoE) whose forward returns
``(router_logits, routing_weights, expert_indices)``; the block hands the
last two to the experts unchanged. So the router's output *is* the routing the
model applies, after its own normalisation (softmax, renormalised top-k,
DeepSeek's group limits and scaling, Phi-MoE's sparsemixer), and a forward
hook on the router reads it without touching the computation.

Torch is imported by the caller; this module only walks modules.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ROUTER_NAMES = ("gate", "router")

LOOKED_FOR = (
    "a module with an `experts` child (the expert container) and a router child named "
    "`gate` or `router` (or whose class name contains 'Router') holding a [num_experts, hidden] "
    "weight, whose forward returns (router_logits, routing_weights, expert_indices)"
)


class UnsupportedModel(ValueError):
    """A model whose MoE blocks the recorder cannot find or read."""


@dataclass
class MoEBlock:
    layer: int            # the decoder layer index (the model's numbering)
    name: str             # dotted module path, for messages
    block: Any            # the sparse MoE module
    router: Any           # its router module (hooked)
    experts: Any          # its expert container (sizes bytes_per_expert)
    num_experts: int
    shared: list[Any]     # shared-expert modules living in the block (always resident)


def _router_of(block) -> Any | None:
    experts = getattr(block, "experts", None)
    for name, child in block.named_children():
        if child is experts:
            continue
        if name in ROUTER_NAMES or "router" in type(child).__name__.lower():
            w = getattr(child, "weight", None)
            if w is not None and getattr(w, "ndim", 0) == 2:
                return child
    return None


def _num_experts(router, experts) -> int:
    n = getattr(experts, "num_experts", None)
    if isinstance(n, int) and n > 0:
        return n
    return int(router.weight.shape[0])


def _layer_lists(model, num_layers: int) -> dict[int, int]:
    """id(decoder layer module) -> its index, from the ModuleList that holds num_layers layers."""
    import torch.nn as nn
    out: dict[int, int] = {}
    for _, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == num_layers:
            for i, layer in enumerate(mod):
                out.setdefault(id(layer), i)
            if out:
                break
    return out


def text_config(model):
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def find_moe_blocks(model) -> list[MoEBlock]:
    """The model's MoE blocks in layer order; UnsupportedModel if there are none."""
    cfg = text_config(model)
    num_layers = int(getattr(cfg, "num_hidden_layers", 0) or 0)
    layer_of = _layer_lists(model, num_layers) if num_layers else {}
    # Map each module to the decoder layer that contains it: walk names once.
    owner: dict[str, int] = {}
    for name, mod in model.named_modules():
        if id(mod) in layer_of:
            owner[name] = layer_of[id(mod)]
    blocks: list[MoEBlock] = []
    for name, mod in model.named_modules():
        experts = getattr(mod, "experts", None)
        if experts is None or not hasattr(experts, "parameters"):
            continue
        router = _router_of(mod)
        if router is None:
            continue
        layer = next((idx for prefix, idx in owner.items() if name.startswith(prefix + ".")), None)
        if layer is None:
            raise UnsupportedModel(
                f"{type(model).__name__}: MoE block '{name}' sits outside the decoder layer list "
                f"(a ModuleList of num_hidden_layers={num_layers} layers); cannot tell its layer index"
            )
        shared = [c for n, c in mod.named_children() if n.startswith("shared_expert") and not n.endswith("gate")]
        blocks.append(MoEBlock(layer, name, mod, router, experts, _num_experts(router, experts), shared))
    if not blocks:
        raise UnsupportedModel(
            f"{type(model).__name__} ({getattr(cfg, 'model_type', '?')}): found no MoE block. moesim looks for "
            f"{LOOKED_FOR}. Dense models have nothing to record; MoE models from older transformers "
            f"(gate = nn.Linear, experts = ModuleList) need transformers>=5"
        )
    blocks.sort(key=lambda b: b.layer)
    seen = [b.layer for b in blocks]
    if len(set(seen)) != len(seen):
        raise UnsupportedModel(f"{type(model).__name__}: more than one MoE block in one layer ({seen})")
    sizes = {b.num_experts for b in blocks}
    if len(sizes) != 1:
        raise UnsupportedModel(f"{type(model).__name__}: MoE layers have different expert counts {sorted(sizes)}; "
                               f"a moesim trace needs one num_experts")
    return blocks


def split_router_output(out, top_k: int, num_experts: int, where: str):
    """(logits, weights, indices) from a router's output, checked; UnsupportedModel otherwise."""
    import torch
    if isinstance(out, tuple) and len(out) >= 3:
        logits, weights, indices = out[0], out[1], out[2]
        if (isinstance(indices, torch.Tensor) and not indices.is_floating_point()
                and isinstance(weights, torch.Tensor) and weights.shape == indices.shape
                and indices.shape[-1] == top_k and isinstance(logits, torch.Tensor)
                and logits.shape[-1] == num_experts):
            return logits, weights, indices
    shape = [tuple(o.shape) if hasattr(o, "shape") else type(o).__name__ for o in (out if isinstance(out, tuple) else (out,))]
    raise UnsupportedModel(
        f"{where}: the router returned {shape}; moesim reads routers that return "
        f"(router_logits [tokens, {num_experts}], routing_weights [tokens, {top_k}], expert_indices [tokens, {top_k}])"
    )
