"""Attention layers of the reference model (seed 004): scaled dot-product attention,
multi-head attention that can return its weights (with grouped-query heads and a KV cache),
fixed and learnable positional encodings, and an LRU attention cache.

They are small and explicit on purpose: the capture hooks and tests use them as a model whose
every attention weight is known. With ``need_weights=False`` they run torch's fused
``scaled_dot_product_attention``, like production models do.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

# Set by attnfast.capture on modules it observes: called with (module, query, key, mask,
# scaling, is_causal) before the attention runs, so capture sees exactly what the kernel sees.
Observer = Callable[..., None]


class AttentionCache:
    """A least-recently-used cache with hit and miss counts (the seed's ``AttentionCache``).

    >>> cache = AttentionCache(maxsize=2)
    >>> cache.get_or_compute("a", lambda: 1), cache.get_or_compute("a", lambda: 2)
    (1, 1)
    >>> cache.hits, cache.misses
    (1, 1)
    """

    def __init__(self, maxsize: int = 1000) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize}")
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[Hashable, Any] = OrderedDict()

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key]
        self.misses += 1
        value = compute()
        self._items[key] = value
        if len(self._items) > self.maxsize:
            self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()


class ScaledDotProductAttention(nn.Module):
    """``softmax(q k^T / sqrt(d) + mask) v``; returns ``(output, weights)`` (weights only when
    asked for; otherwise torch's fused kernel runs). ``k`` and ``v`` may have fewer heads than
    ``q`` (grouped-query attention): the fused kernel reads them in place, without repeating."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = dropout

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        p = self.dropout if self.training else 0.0
        if not need_weights:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=p, enable_gqa=k.shape[1] != q.shape[1]
            )
            return out, None
        groups = q.shape[1] // k.shape[1]
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if mask is not None:
            scores = (
                scores.masked_fill(~mask, float("-inf"))
                if mask.dtype == torch.bool
                else scores + mask
            )
        weights = torch.softmax(scores, dim=-1)
        return F.dropout(weights, p) @ v, weights


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention with optional grouped-query heads (``kv_heads < heads``) and a
    KV cache. ``forward`` returns ``(output, weights or None, (keys, values))``."""

    def __init__(
        self, d_model: int, heads: int, *, kv_heads: int | None = None, dropout: float = 0.0
    ) -> None:
        super().__init__()
        kv_heads = heads if kv_heads is None else kv_heads
        if d_model % heads or heads % kv_heads:
            raise ValueError(
                f"d_model ({d_model}) must divide by heads ({heads}) "
                f"and heads by kv_heads ({kv_heads})"
            )
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, d_model // heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, kv_heads * self.head_dim)
        self.v_proj = nn.Linear(d_model, kv_heads * self.head_dim)
        self.out_proj = nn.Linear(d_model, d_model)
        self.attention = ScaledDotProductAttention(dropout)
        self.capture_observer: Observer | None = None

    def forward(
        self,
        x: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        cache: tuple[torch.Tensor, torch.Tensor] | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, torch.Tensor]]:
        """``x`` is ``(B, Q, d_model)``; ``mask`` is boolean ``(B, n)`` (True = a real key) or
        broadcastable to ``(B, H, Q, n)``; ``causal`` aligns the queries with the last keys."""
        b, q_len, _ = x.shape
        q = self.q_proj(x).view(b, q_len, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, q_len, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, q_len, self.kv_heads, self.head_dim).transpose(1, 2)
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        n = k.shape[2]
        full_mask = _full_mask(mask, causal, q_len, n, x.device)
        if self.capture_observer is not None:
            # The mask already holds the causal rule; the flag tells capture what kind of
            # attention this is (an encoder's rows are labelled with their own tokens).
            self.capture_observer(self, q, k, full_mask, self.head_dim**-0.5, causal)
        out, weights = self.attention(q, k, v, full_mask, need_weights=need_weights)
        out = out.transpose(1, 2).reshape(b, q_len, -1)
        return self.out_proj(out), weights, (k, v)


def _full_mask(
    mask: torch.Tensor | None, causal: bool, q_len: int, n: int, device: torch.device
) -> torch.Tensor | None:
    """One boolean mask (True = attend) from a padding mask and the causal rule."""
    out = None
    if mask is not None:
        out = mask[:, None, None, :].bool() if mask.dim() == 2 else mask.bool()
    if causal and q_len > 1:
        qpos = torch.arange(n - q_len, n, device=device)[:, None]
        allowed = (torch.arange(n, device=device)[None, :] <= qpos)[None, None]
        out = allowed if out is None else out & allowed
    return out


class PositionalEncoding(nn.Module):
    """Fixed sinusoidal positions (Vaswani et al.), added to the embeddings; works at any
    length up to ``max_len``."""

    pe: torch.Tensor

    def __init__(self, d_model: int, max_len: int = 4096) -> None:
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(position * div)
        pe[:, 1::2] = torch.cos(position * div)
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if int(positions.max()) >= self.pe.shape[0]:
            raise ValueError(f"position {int(positions.max())} is past max_len {self.pe.shape[0]}")
        return x + self.pe[positions]


class LearnablePositionalEncoding(nn.Module):
    """Learned position embeddings, up to ``max_len``."""

    def __init__(self, d_model: int, max_len: int = 1024) -> None:
        super().__init__()
        self.embedding = nn.Embedding(max_len, d_model)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if int(positions.max()) >= self.embedding.num_embeddings:
            raise ValueError(
                f"position {int(positions.max())} is past max_len {self.embedding.num_embeddings}"
            )
        out: torch.Tensor = x + self.embedding(positions)
        return out
