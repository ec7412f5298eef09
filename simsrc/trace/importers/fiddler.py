"""Fiddler expert popularity (github.com/efeslab/fiddler, branch popularity): aggregate counts only.

Not a trace: no order and no per-token information, so it cannot be replayed. Useful as a static
popularity prior (frequency pinning) and for per-layer skew plots.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..schema import TraceError
from .common import json_int_table


@dataclass
class Popularity:
    counts: np.ndarray      # int64 [layers, experts]: times expert e was in a token's top-k at that layer
    top_k: int
    source: str

    @property
    def tokens(self) -> np.ndarray:
        """Routed tokens per layer (row sum / top_k)."""
        return self.counts.sum(axis=1) // self.top_k

    def probabilities(self) -> np.ndarray:
        """[layers, experts] share of each layer's activations."""
        return self.counts / self.counts.sum(axis=1, keepdims=True)


def read_fiddler_popularity(path: str | os.PathLike, *, top_k: int = 2) -> Popularity:
    """expert_popularity_<subject>.json -> counts [layers, experts] (Mixtral: 32 x 8, top-2)."""
    path = Path(path)
    d, counts = json_int_table(path, "expert_popularity", "a Fiddler popularity file", "[layers][experts] counts")
    if counts.ndim != 2 or (counts < 0).any():
        raise TraceError(f"{path}: expert_popularity must be a [layers][experts] table of non-negative counts")
    sums = counts.sum(axis=1)
    if (sums % top_k).any() or len(set(sums.tolist())) != 1:
        raise TraceError(f"{path}: layer sums {sorted(set(sums.tolist()))} differ or are not multiples of "
                         f"top_k={top_k}; every layer routes the same tokens")
    return Popularity(counts=counts, top_k=top_k, source=str(path))
