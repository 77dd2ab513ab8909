"""Attention inputs for tests."""

from __future__ import annotations

import numpy as np


def causal_attention(
    rng: np.random.Generator, steps: int, layers: int, heads: int, keys: int, *, sharp: float = 3.0
) -> np.ndarray:
    """Softmax attention of ``steps`` causal queries (the last ``steps`` positions) with
    random logits, so rows range from peaked to flat."""
    logits = rng.normal(0.0, sharp, size=(steps, layers, heads, keys))
    queries = keys - steps + np.arange(steps)
    future = np.arange(keys)[None, :] > queries[:, None]
    logits[np.broadcast_to(future[:, None, None, :], logits.shape)] = -np.inf
    logits -= logits.max(axis=-1, keepdims=True)
    p = np.exp(logits)
    return (p / p.sum(axis=-1, keepdims=True)).astype(np.float32)
