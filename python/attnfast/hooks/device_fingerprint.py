"""The v1 fingerprint in torch, on whatever device the attention lives on, so that on a GPU
only 80 bytes per step cross to the host.

The fingerprint decomposes by layer: every value is a mean over layers of a per-layer quantity
(distance masses of ``P_l``, head-mean entropy). So each layer's rows reduce to 12 numbers per
query (:func:`layer_stats`) as soon as they exist, and :func:`assemble` turns a step's
``(L, ..., 12)`` into ``(..., 20)``. Memory per step is one layer's rows, and prefill rows can be
reduced chunk by chunk. Tests hold this against the Rust kernel and the numpy reference.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch

from attnfast.models.attention import AttentionCache

# Distance bin edges of the histogram (values 4..11) and of local/mid/long (values 0..2).
_BIN_EDGES = (1, 4, 16, 64, 256, 1024, 4096)
_RANGE_EDGES = (32, 256)
STATS = 12  # 8 bin masses, 3 range masses, head-mean entropy


# Decode steps and prefill chunks ask for the same tables again and again (every step of every
# request at a given context length); the seed's LRU AttentionCache turns them into lookups.
_tables = AttentionCache(maxsize=512)


def _distance_onehot(n: int, q0: int, q_count: int, device: str) -> torch.Tensor:
    """``(q_count, n, 11)`` one-hot of each key's histogram bin and range, for queries at
    positions ``q0 .. q0 + q_count - 1``."""
    table: torch.Tensor = _tables.get_or_compute(
        (n, q0, q_count, device), lambda: _build_onehot(n, q0, q_count, device)
    )
    return table


def _build_onehot(n: int, q0: int, q_count: int, device: str) -> torch.Tensor:
    q = torch.arange(q0, q0 + q_count, device=device).unsqueeze(1)
    d = (q - torch.arange(n, device=device).unsqueeze(0)).abs()
    bins = torch.bucketize(d, torch.tensor(_BIN_EDGES, device=device), right=True)
    ranges = torch.bucketize(d, torch.tensor(_RANGE_EDGES, device=device), right=True)
    onehot = torch.zeros(q_count, n, 11, device=device)
    onehot.scatter_(-1, bins.unsqueeze(-1), 1.0)
    onehot.scatter_(-1, (ranges + 8).unsqueeze(-1), 1.0)
    return onehot


def layer_stats(rows: torch.Tensor, q0: int) -> torch.Tensor:
    """Per-layer statistics of attention rows.

    ``rows`` is ``(..., H, Q, n)``: probabilities of ``Q`` consecutive queries (positions
    ``q0 ..``) over ``n`` keys, for ``H`` heads of one layer (leading dimensions are free:
    batch, or layers stacked). Returns ``(..., Q, 12)``: the mass of the head-mean row in the 8
    distance bins and 3 ranges, and the mean over heads of each row's entropy (nats).
    """
    rows = rows.float()
    rows = rows / rows.sum(-1, keepdim=True)  # spec: each row divided by its own sum
    entropy = torch.special.entr(rows).sum(-1).mean(-2)  # (..., Q)
    p = rows.mean(-3)  # (..., Q, n)
    onehot = _distance_onehot(rows.shape[-1], q0, rows.shape[-2], str(rows.device))
    masses = torch.einsum("...qn,qnc->...qc", p, onehot)
    return torch.cat([masses, entropy.unsqueeze(-1)], dim=-1)


@lru_cache(maxsize=64)
def _slot_weights(layers: int, device: str) -> torch.Tensor:
    """``(L, 8)``: the weight of layer ``l`` in layer-entropy slot ``j`` (the spec's
    ``floor(l * 8 / L)`` rule, or slot ``l`` when ``L < 8``)."""
    w = torch.zeros(layers, 8, device=device)
    for layer in range(layers):
        w[layer, layer if layers < 8 else layer * 8 // layers] = 1.0
    return w / w.sum(0).clamp(min=1.0)


def assemble(stats: torch.Tensor) -> torch.Tensor:
    """``(L, ..., 12)`` per-layer statistics to ``(..., 20)`` fingerprints."""
    mean = stats.mean(0)
    slots = torch.einsum(
        "l...,lj->...j", stats[..., 11], _slot_weights(stats.shape[0], str(stats.device))
    )
    return torch.cat([mean[..., 8:11], mean[..., 11:12], mean[..., :8], slots], dim=-1)


def fingerprints(attn: torch.Tensor, q0: int | None = None) -> torch.Tensor:
    """Fingerprints of ``(L, H, Q, n)`` attention (``Q`` consecutive queries from ``q0``,
    by default the last ``Q`` positions), as ``(Q, 20)`` on ``attn``'s device."""
    _, _, q_count, n = attn.shape
    start = n - q_count if q0 is None else q0
    return assemble(layer_stats(attn, start))


def step_summary(
    layer_rows: list[torch.Tensor], pads: torch.Tensor, topk: int, want_rows: bool
) -> tuple[Any, Any, int]:
    """A step's summary in torch on the rows' device, laid out as the Rust kernel's
    (``_core.attention_step``): host columns ``(B, 21 + 2k)`` (fingerprint, sink mass, top-k
    scores and positions counted from each sequence's ``pads``), the rows ``(B, L, H, n)``
    when ``want_rows``, and ``n``. Only these leave the device: in fingerprint mode 80 bytes
    of fingerprint and 4 of sink mass per sequence, in one transfer."""
    rows = torch.stack(layer_rows)  # (L, B, H, n)
    n = rows.shape[-1]
    rows = rows / rows.sum(-1, keepdim=True)
    fp = assemble(layer_stats(rows.unsqueeze(-2), n - 1))[:, 0]  # (B, 20)
    p = rows.mean(2).mean(0)  # (B, n): mean attention over layers and heads
    pads = pads.to(p.device)
    parts = [fp, p.gather(1, pads[:, None])]
    if topk:
        scores, positions = p.topk(min(topk, n), dim=-1)
        parts += [scores, (positions - pads[:, None]).float()]
    host = torch.cat(parts, dim=-1).cpu().numpy()
    full = rows.transpose(0, 1).cpu().numpy() if want_rows else None
    return host, full, n
