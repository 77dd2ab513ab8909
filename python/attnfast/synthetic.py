"""Generated attention with known structure, for the demo, tests and benchmarks.

Each pattern is a causal batch ``(T, L, H, N)``: step ``t`` queries from position
``N - T + t`` and puts no weight on later keys. Heads differ by temperature and a little noise,
so the patterns look like attention rather than one row repeated.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from attnfast.exceptions import ShapeError

Logits = Callable[[NDArray[np.float64]], NDArray[np.float64]]


def _local(d: NDArray[np.float64]) -> NDArray[np.float64]:
    # The previous few tokens: brackets, word pieces.
    return -d / 1.5


def _periodic(d: NDArray[np.float64]) -> NDArray[np.float64]:
    # Rows of a table 300 tokens wide: the same column in earlier rows.
    phase = np.minimum(d % 300, 300 - d % 300)
    return np.where(d >= 150, 6.0 - phase / 2.0, -12.0)


def _long_range(d: NDArray[np.float64]) -> NDArray[np.float64]:
    # Copying from a span about 600 tokens back.
    return 5.0 - np.abs(d - 600.0) / 4.0


def _mid_range(d: NDArray[np.float64]) -> NDArray[np.float64]:
    # Retrieval from the previous sentence or two: 40 to 200 tokens back.
    return np.where((d >= 40) & (d < 200), 2.0, -4.0) - d / 400.0


def _diffuse(d: NDArray[np.float64]) -> NDArray[np.float64]:
    # No preference at all.
    return np.zeros_like(d)


#: Pattern name -> (description, logits by distance).
PATTERNS: dict[str, tuple[str, Logits]] = {
    "local": ("previous few tokens (brackets, word pieces)", _local),
    "periodic": ("same column of a 300-token-wide table", _periodic),
    "long-range": ("copying from a span ~600 tokens back", _long_range),
    "mid-range": ("retrieval 40-200 tokens back", _mid_range),
    "diffuse": ("uniform over the whole context", _diffuse),
}


def attention_pattern(
    name: str,
    *,
    steps: int = 16,
    layers: int = 4,
    heads: int = 4,
    context: int = 1024,
    seed: int = 0,
    dtype: type[np.floating] = np.float32,
) -> NDArray[np.floating]:
    """A ``(steps, layers, heads, context)`` causal attention batch of the named pattern."""
    if name not in PATTERNS:
        raise ShapeError(f"unknown attention pattern {name!r}; known: {', '.join(PATTERNS)}")
    if steps > context:
        raise ShapeError(f"{steps} steps do not fit in a context of {context} keys")
    rng = np.random.default_rng(seed)
    queries = context - steps + np.arange(steps)
    distance = queries[:, None] - np.arange(context)[None, :]  # (T, N); negative = future
    logits = PATTERNS[name][1](np.abs(distance).astype(np.float64))
    temperature = rng.uniform(0.7, 1.3, size=(1, layers, heads, 1))
    noise = rng.normal(0.0, 0.3, size=(steps, layers, heads, context))
    z = logits[:, None, None, :] / temperature + noise
    z = np.where(distance[:, None, None, :] < 0, -np.inf, z)
    z -= z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    return p.astype(dtype)


def fingerprints(n: int, *, seed: int = 0, layout: str = "v1") -> NDArray[np.float32]:
    """``n`` random vectors that are fingerprints of ``layout`` (``"v1"`` or ``"sglang"``):
    what the store accepts, for examples, tests and benchmarks. v1: masses (0..2) and the
    histogram (4..11) each sum to 1, entropies in 0..4 nats; sglang: masses and the 16
    histogram bins each sum to at most 1, entropy / ln 16 in 0..1. Sparse histograms, so
    every zone turns up.

    >>> fps = fingerprints(1000)
    >>> import attnfast
    >>> sorted(set(attnfast.zone_of(fps)[0]))
    ['semantic_bridge', 'structure_ripple', 'syntax_floor']
    """
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 20), dtype=np.float64)
    out[:, 0:3] = rng.dirichlet([0.5] * 3, size=n)
    if layout == "v1":
        out[:, 3] = rng.uniform(0.0, 4.0, size=n)
        out[:, 4:12] = rng.dirichlet([0.15] * 8, size=n)
        out[:, 12:20] = rng.uniform(0.0, 4.0, size=(n, 8))
    elif layout == "sglang":
        top = rng.uniform(0.7, 1.0, size=(n, 1))  # top-k attention holds part of the row
        out[:, 0:3] *= top
        out[:, 3] = rng.uniform(0.0, 1.0, size=n)
        out[:, 4:20] = rng.dirichlet([0.3] * 16, size=n) * top
    else:
        raise ShapeError(f"layout must be 'v1' or 'sglang', got {layout!r}")
    return out.astype(np.float32)


def _dirichlet_rows(rng: np.random.Generator, alpha: NDArray[np.float64]) -> NDArray[np.float64]:
    """One Dirichlet draw per row of ``alpha`` (numpy's ``dirichlet`` takes one alpha)."""
    g = rng.standard_gamma(alpha)
    total = g.sum(axis=1, keepdims=True)
    return g / np.where(total > 0, total, 1.0)


def planted(
    n: int,
    *,
    clusters: int = 12,
    noise: float = 0.05,
    spread: float = 1.0,
    seed: int = 0,
    centre_seed: int | None = None,
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """``n`` valid v1 fingerprints drawn around ``clusters`` centres, plus a ``noise`` share of
    uniform ones: data with a known answer, for testing and measuring discovery. Returns the
    fingerprints and the true cluster of each (-1 for noise). ``spread`` widens every cluster
    (1: masses and histogram drawn with concentration 300 around their centre, entropies
    within 0.05 nats). The centres depend on ``centre_seed`` (default: ``seed``) alone, so
    draws with other seeds and the same ``centre_seed`` come from the same clusters.

    >>> fps, truth = planted(1000, clusters=8, seed=1)
    >>> fps.shape, sorted(set(truth.tolist())) == list(range(-1, 8))
    ((1000, 20), True)
    """
    if not isinstance(n, int) or n < 1 or not isinstance(clusters, int) or clusters < 1:
        raise ShapeError(f"n and clusters must be positive integers, got {n!r} and {clusters!r}")
    if not 0.0 <= noise < 1.0 or spread <= 0:
        raise ShapeError(f"noise must be in [0, 1) and spread positive, got {noise}, {spread}")
    rng = np.random.default_rng(seed)
    base = seed if centre_seed is None else centre_seed
    centres = fingerprints(clusters, seed=base + 1_000_003).astype(np.float64)
    truth = rng.integers(0, clusters, n)
    truth[rng.random(n) < noise] = -1
    c = centres[np.maximum(truth, 0)]
    concentration = 300.0 / spread
    out = np.empty((n, 20))
    out[:, 0:3] = _dirichlet_rows(rng, concentration * c[:, 0:3] + 0.05)
    out[:, 4:12] = _dirichlet_rows(rng, concentration * c[:, 4:12] + 0.05)
    out[:, 3] = np.clip(c[:, 3] + rng.normal(0, 0.05 * spread, n), 0, None)
    out[:, 12:20] = np.clip(c[:, 12:20] + rng.normal(0, 0.05 * spread, (n, 8)), 0, None)
    is_noise = truth < 0
    out[is_noise] = fingerprints(int(is_noise.sum()), seed=seed + 7)
    return out.astype(np.float32), truth


__all__ = ["PATTERNS", "attention_pattern", "fingerprints", "planted"]
