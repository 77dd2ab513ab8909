"""The reference transformer (seed 004) and the built-in default model.

>>> import torch
>>> from attnfast.models import TinyCausalLM, CausalLMConfig, ByteTokenizer
>>> model = TinyCausalLM(CausalLMConfig(d_model=32, heads=4, kv_heads=2, layers=2)).eval()
>>> ids = torch.tensor([ByteTokenizer().encode("(a [b")])
>>> model.generate(ids, max_new_tokens=3).shape
torch.Size([1, 9])
"""

from __future__ import annotations

from attnfast.models.attention import (
    AttentionCache,
    LearnablePositionalEncoding,
    MultiHeadAttention,
    PositionalEncoding,
    ScaledDotProductAttention,
)
from attnfast.models.builtin import DEFAULT_RECIPE, Recipe, load_builtin, train
from attnfast.models.causal_lm import ByteTokenizer, CausalLMConfig, TinyCausalLM
from attnfast.models.encoder import FeedForward, TransformerEncoder

__all__ = [
    "DEFAULT_RECIPE",
    "AttentionCache",
    "ByteTokenizer",
    "CausalLMConfig",
    "FeedForward",
    "LearnablePositionalEncoding",
    "MultiHeadAttention",
    "PositionalEncoding",
    "Recipe",
    "ScaledDotProductAttention",
    "TinyCausalLM",
    "TransformerEncoder",
    "load_builtin",
    "train",
]
