"""A small neural sequence predictor (PyTorch, optional): a GRU over each step's layers.

The MoE-Beyond framing (arXiv 2508.17137) with a recurrent net instead of its
transformer: walking the layers of a step, the GRU reads at layer l what was
known just before l's router ran -- the experts of the position before (layer
l-1, or the previous step's last layer) and of layer l one step back -- and
outputs a multi-label guess of l's experts. Horizon 1 only. Needs torch
(`pip install torch`); saved as a plain state_dict (torch.save), loaded with
weights_only=True.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..trace import AccessStream, Trace, access_stream
from .base import Predictions, from_dense, same_model, seg_at, seg_counts

CONFIG_KEY = "moesim_gru_config"  # tensor [num_layers, num_experts, hidden, version]


def _torch():
    try:
        import torch
    except ImportError:
        raise ValueError("the GRU predictor needs PyTorch: pip install torch (or use the numpy "
                         "co-activation model, --kind coactivation)") from None
    return torch


def _inputs(stream: AccessStream, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(steps, layers, 2E) inputs, and (steps, layers) segment index (-1 where a step lacks a layer)."""
    L, E = stream.num_layers, stream.num_experts
    steps = stream.num_steps
    pos = np.arange(steps * L, dtype=np.int64)
    seg = seg_at(stream, pos)
    x = np.zeros((steps * L, 2 * E), np.float32)
    for g, d in enumerate((1, L)):
        src = seg_at(stream, pos - d)
        ok = src >= 0
        x[ok, g * E:(g + 1) * E] = counts[src[ok]]
    return x.reshape(steps, L, 2 * E), seg.reshape(steps, L)


def _net(torch, L, E, hidden):
    class GruPredictor(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(2 * E, hidden, batch_first=True)
            self.layer = torch.nn.Embedding(L, hidden)
            self.out = torch.nn.Linear(hidden, E)

        def forward(self, x):
            hs, _ = self.gru(x)
            return self.out(hs + self.layer.weight[None, : x.shape[1]])
    return GruPredictor()


class GruModel:
    def __init__(self, net, num_layers: int, num_experts: int, hidden: int):
        self.net, self.hidden = net, hidden
        self.meta = {"num_layers": num_layers, "num_experts": num_experts, "hidden": hidden}
        self.horizon = 1

    def save(self, path: str | os.PathLike) -> Path:
        torch = _torch()
        state = dict(self.net.state_dict())
        state[CONFIG_KEY] = torch.tensor([self.meta["num_layers"], self.meta["num_experts"], self.hidden, 1])
        torch.save(state, path)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "GruModel":
        torch = _torch()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            L, E, hidden, _ = (int(v) for v in state.pop(CONFIG_KEY))
        except Exception as e:  # torch raises many kinds for a file that is not a state_dict
            raise ValueError(f"{path}: not a moesim GRU predictor ({type(e).__name__}: {e}); fit one with "
                             f"`moesim fit-predictor TRAIN --kind gru --out MODEL.pt`") from None
        net = _net(torch, L, E, hidden)
        net.load_state_dict(state)
        net.eval()
        return cls(net, L, E, hidden)

    def scores(self, stream: AccessStream, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = _torch()
        x, seg = _inputs(stream, counts)
        out = np.zeros((stream.num_segments, stream.num_experts), np.float32)
        with torch.no_grad():
            for i in range(0, len(x), 1024):
                p = torch.sigmoid(self.net(torch.from_numpy(x[i:i + 1024]))).numpy()
                s = seg[i:i + 1024]
                out[s[s >= 0]] = p[s >= 0]
        return out


def fit_gru(train: Trace | list[Trace], *, hidden: int = 128, epochs: int = 4, batch: int = 128,
            lr: float = 3e-3, seed: int = 0, progress=None) -> GruModel:
    torch = _torch()
    torch.manual_seed(seed)
    traces = train if isinstance(train, list) else [train]
    L, E = same_model(traces)
    xs, ys, ms = [], [], []
    for tr in traces:
        stream = access_stream(tr, prefill_chunk=1)
        counts = seg_counts(stream)
        x, seg = _inputs(stream, counts)
        y = np.zeros((*seg.shape, E), np.float32)
        y[seg >= 0] = counts[seg[seg >= 0]]
        xs.append(x), ys.append(y), ms.append(seg >= 0)
    x, y, m = (torch.from_numpy(np.concatenate(a)) for a in (xs, ys, ms))
    net = _net(torch, L, E, hidden)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="none")
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            b = order[i:i + batch]
            loss = (loss_fn(net(x[b]), y[b]).mean(-1) * m[b]).sum() / m[b].sum().clamp(min=1)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if progress:
            progress(epoch + 1, float(loss))
    net.eval()
    return GruModel(net, L, E, hidden)


def learned_gru(stream: AccessStream, model: GruModel, *, horizon: int, top_n: int) -> Predictions:
    if (model.meta["num_layers"], model.meta["num_experts"]) != (stream.num_layers, stream.num_experts):
        raise ValueError(f"the GRU was fitted on {model.meta['num_layers']} MoE layers x "
                         f"{model.meta['num_experts']} experts, the trace has {stream.num_layers} x "
                         f"{stream.num_experts}; fit it on traces of the same model")
    if horizon < 1:
        return Predictions.empty("learned")
    scores = model.scores(stream, seg_counts(stream))
    return from_dense(stream, np.arange(stream.num_segments), 1, scores, top_n, "learned").sorted()
