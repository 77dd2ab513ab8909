"""A transformer encoder of the reference model (seed 004): pre-norm blocks of bidirectional
multi-head attention and a position-wise feed-forward network."""

from __future__ import annotations

import torch
from torch import nn

from attnfast.models.attention import MultiHeadAttention


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_model, d_ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, heads: int, d_ff: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, heads, dropout=dropout)
        self.ff = FeedForward(d_model, d_ff, dropout)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, need_weights: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        out, weights, _ = self.attn(self.norm1(x), mask=mask, need_weights=need_weights)
        x = x + out
        return x + self.ff(self.norm2(x)), weights


class TransformerEncoder(nn.Module):
    """``forward(x, mask=None, need_weights=False)`` on embeddings ``(B, S, d_model)``; returns
    the encoded sequence and, when asked, each layer's ``(B, H, S, S)`` weights."""

    def __init__(
        self, d_model: int, heads: int, layers: int, d_ff: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, heads, d_ff, dropout) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, need_weights: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        weights = []
        for layer in self.layers:
            x, w = layer(x, mask, need_weights)
            if w is not None:
                weights.append(w)
        return self.norm(x), weights
