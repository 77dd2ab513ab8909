"""Attention rows recomputed from queries and keys, for the queries a capture needs.

A model running SDPA or flash attention never materialises its attention weights, and asking
for them (``output_attentions``) forces it off the fast kernel. attnfast lets the kernel run as
is and recomputes ``softmax(q k^T * scale + mask)`` for the selected query rows only: one row
per sequence at a decode step, or the prefill rows in chunks. The cost is one extra
``(H, Q, n)`` matmul per layer, memory ``O(heads x context)`` per query row.

This is the torch path: on GPUs, for prompt rows, and for dtypes other than float32. Float32
decode steps on the CPU go to the Rust kernel instead (``rust/core/src/step``), which does the
same arithmetic for every layer in one call.
"""

from __future__ import annotations

import numpy as np
import torch

from attnfast.exceptions import CaptureError


def attention_rows(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    q_start: int,
    q_count: int,
    scaling: float | None,
    mask: torch.Tensor | None,
    is_causal: bool,
) -> torch.Tensor:
    """Probabilities ``(B, H, q_count, n)`` of queries ``q_start .. q_start + q_count`` (indices
    into ``query``'s ``Q`` rows) over all ``n`` keys.

    ``query`` is ``(B, H, Q, D)`` and ``key`` ``(B, H_kv, n, D)`` with ``H`` a multiple of
    ``H_kv`` (grouped-query attention is computed per group, without repeating the keys).
    ``mask`` is what the attention kernel got: boolean (True = attend) or additive float,
    broadcastable to ``(B, H, Q, n)``, or a 2-D ``(B, n)`` padding mask (1 = keep); ``is_causal``
    applies the causal rule with the queries aligned to the last keys.
    """
    b, h, q_len, d = query.shape
    kv_heads, n = key.shape[1], key.shape[2]
    if h % kv_heads:
        raise CaptureError(f"{h} query heads are not a multiple of {kv_heads} key heads")
    q = query[:, :, q_start : q_start + q_count].float()
    k = key.float()
    scale = d**-0.5 if scaling is None else scaling
    groups = h // kv_heads
    scores = torch.matmul(q.reshape(b, kv_heads, groups * q_count, d), k.transpose(-1, -2)).reshape(
        b, h, q_count, n
    )
    scores = scores * scale
    if mask is not None:
        m = mask
        if m.dim() == 2:  # (B, n) padding mask
            m = m[:, None, None, :].bool()
        elif m.dim() == 4 and m.shape[-2] == q_len:
            m = m[..., q_start : q_start + q_count, :]
        m = m[..., -n:]
        if m.dtype == torch.bool:
            scores = scores.masked_fill(~m, float("-inf"))
        else:
            scores = scores + m.float()
    if is_causal and q_len > 1:
        qpos = torch.arange(q_start, q_start + q_count, device=q.device) + (n - q_len)
        future = torch.arange(n, device=q.device)[None, :] > qpos[:, None]
        scores = scores.masked_fill(future, float("-inf"))
    return torch.softmax(scores, dim=-1)


def last_row_bias(mask: torch.Tensor, n: int) -> np.ndarray:
    """The additive mask of the last query row, ``(B|1, H|1, n)`` float32 (-inf = masked),
    from what the attention kernel got: a 2-D ``(B, n)`` padding mask (1 = keep), or a 4-D
    boolean (True = attend) or additive mask."""
    if mask.dim() == 2:
        m = mask[:, None, -n:].bool()
    elif mask.dim() == 4:
        m = mask[:, :, -1, -n:]
    else:
        raise CaptureError(f"attention mask of shape {tuple(mask.shape)} is not 2-D or 4-D")
    if m.dtype == torch.bool:
        m = torch.zeros(m.shape).masked_fill_(~m, float("-inf"))
    return m.float().numpy()
