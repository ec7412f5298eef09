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

from ..files import atomic_write, regular_file
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


# Hidden sizes a model file may declare; the CLI's --hidden stays within it.
MAX_HIDDEN = 65536


def _shapes(L: int, E: int, hidden: int) -> dict[str, tuple[int, ...]]:
    """The state_dict shapes of _net(L, E, hidden), by arithmetic (nothing is allocated)."""
    g = 3 * hidden  # a GRU stacks its reset, update and new gates
    return {"gru.weight_ih_l0": (g, 2 * E), "gru.weight_hh_l0": (g, hidden), "gru.bias_ih_l0": (g,),
            "gru.bias_hh_l0": (g,), "layer.weight": (L, hidden), "out.weight": (E, hidden), "out.bias": (E,)}


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
        """Write the state_dict (plus its configuration tensor) atomically."""
        torch = _torch()
        state = dict(self.net.state_dict())
        state[CONFIG_KEY] = torch.tensor([self.meta["num_layers"], self.meta["num_experts"], self.hidden, 1])

        def write(tmp):
            with open(tmp, "wb") as f:
                torch.save(state, f)
        return atomic_write(path, write)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "GruModel":
        """A fitted GRU, checked before the network is built: every tensor's name and shape must be what its
        stored (layers, experts, hidden) imply, so a damaged or foreign file is one clear error (never a
        network sized by a corrupted hidden field)."""
        torch = _torch()
        hint = "fit one with `moesim fit-predictor TRAIN --kind gru --out MODEL.pt`"
        regular_file(path, "GRU predictor model")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many kinds for a file that is not a state_dict
            raise ValueError(f"{path}: not a moesim GRU predictor ({type(e).__name__}: {e}); {hint}") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"{path}: not a moesim GRU predictor (not a state_dict of tensors); {hint}")
        config = state.pop(CONFIG_KEY, None)
        if config is None or config.shape != (4,) or config.is_floating_point():
            raise ValueError(f"{path}: not a moesim GRU predictor (no '{CONFIG_KEY}' [layers, experts, hidden, version] "
                             f"tensor); {hint}")
        L, E, hidden, version = (int(v) for v in config)
        if version != 1 or not (1 <= L <= 65536 and 1 <= E <= 65536 and 1 <= hidden <= MAX_HIDDEN):
            raise ValueError(f"{path}: not a moesim GRU predictor (configuration layers={L}, experts={E}, "
                             f"hidden={hidden}, version={version} is out of range: hidden at most {MAX_HIDDEN}, "
                             f"version 1; the file is damaged); {hint}")
        want = _shapes(L, E, hidden)
        got = {k: tuple(v.shape) for k, v in state.items()}
        if got != want:
            diff = sorted(set(want) ^ set(got)) or sorted(k for k in want if want[k] != got[k])
            raise ValueError(f"{path}: not a moesim GRU predictor (its tensors do not match a GRU of {L} layers x "
                             f"{E} experts, hidden {hidden}; first difference: {diff[0]}: {got.get(diff[0])} vs "
                             f"{want.get(diff[0])}); {hint}")
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
    for name, v, lo, hi in (("hidden", hidden, 1, MAX_HIDDEN), ("epochs", epochs, 1, None), ("batch", batch, 1, None)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo or (hi and v > hi):
            raise ValueError(f"{name} must be a whole number in {lo}..{hi or 'up'}, got {v!r}")
    torch.manual_seed(seed)
    traces = train if isinstance(train, list) else [train]
    empty = [str(t.path or "<in memory>") for t in traces if t.num_rows == 0]
    if empty:
        raise ValueError(f"{empty[0]}: the training trace holds no rows; a predictor fitted on nothing predicts "
                         f"nothing: train on traces with routing")
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
