"""Forward hooks on the routers: collect what each MoE layer decided, per forward pass.

The hooks only keep references to the router's output tensors (on whatever
device they live); nothing is copied to the host or synchronised until the
batch is finished, so recording costs a few list appends per layer and pass.
"""
from __future__ import annotations

from .blocks import MoEBlock, split_router_output


class RouterTap:
    """Hooks every MoE block's router; `passes[j]` lists, per forward pass, layer j's routing.

    horizon H > 0 also applies the routers of the next H MoE layers to the
    hidden state that entered this layer's router (the speculative-prefetch
    signal of mixtral-offloading and Fate) and keeps their top-k choice.
    """

    def __init__(self, blocks: list[MoEBlock], top_k: int, *, horizon: int = 0, logits: bool = False):
        self.blocks = blocks
        self.top_k = top_k
        self.horizon = horizon
        self.keep_logits = logits
        self.num_experts = blocks[0].num_experts
        n = len(blocks)
        self.ids: list[list] = [[] for _ in range(n)]
        self.weights: list[list] = [[] for _ in range(n)]
        self.logits: list[list] = [[] for _ in range(n)]
        # preds[j][h-1]: per pass, the indices router j+h picks on layer j's input (j+h < n only)
        self.preds: list[list[list]] = [[[] for _ in range(horizon)] for _ in range(n)]
        self._handles = []

    def __enter__(self) -> "RouterTap":
        for j, b in enumerate(self.blocks):
            self._handles.append(b.router.register_forward_hook(self._hook(j)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def clear(self) -> None:
        for lists in (self.ids, self.weights, self.logits):
            for x in lists:
                x.clear()
        for per_layer in self.preds:
            for x in per_layer:
                x.clear()

    def _hook(self, j: int):
        block = self.blocks[j]
        later = [b.router for b in self.blocks[j + 1: j + 1 + self.horizon]]
        k, e = self.top_k, self.num_experts
        ids, weights, logits, preds = self.ids[j], self.weights[j], self.logits[j], self.preds[j]
        keep_logits = self.keep_logits
        where = f"router of {block.name}"

        def hook(module, args, out):
            lg, w, idx = split_router_output(out, k, e, where)
            ids.append(idx)
            weights.append(w)
            if keep_logits:
                logits.append(lg)
            # .forward() bypasses hooks: these speculative calls are not routing decisions
            for h, router in enumerate(later):
                preds[h].append(split_router_output(router.forward(*args), k, e, where)[2])
        return hook

    @property
    def passes(self) -> int:
        counts = {len(x) for x in self.ids}
        if len(counts) != 1:
            raise RuntimeError(f"MoE layers saw different numbers of forward passes: {[len(x) for x in self.ids]}")
        return counts.pop()
