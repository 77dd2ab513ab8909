"""The reference causal language model: byte-level tokens, sinusoidal positions, pre-norm
decoder blocks of grouped-query attention with a KV cache, and greedy or sampled generation.

It is what ``attnfast capture --model builtin`` and ``attnfast demo`` run (trained on the
corpus in ``data/``, see :mod:`attnfast.models.builtin`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from attnfast.models.attention import MultiHeadAttention, PositionalEncoding
from attnfast.models.encoder import FeedForward

KVCache = list[tuple[torch.Tensor, torch.Tensor]]


class ByteTokenizer:
    """Bytes are tokens 0..255; 256 is BOS, 257 EOS. ``decode`` drops the specials and
    replaces invalid UTF-8.

    >>> tok = ByteTokenizer()
    >>> tok.encode("hi"), tok.decode([104, 105, 257])
    ([256, 104, 105], 'hi')
    """

    vocab_size = 258
    bos_token_id = 256
    eos_token_id = 257

    def encode(self, text: str, *, bos: bool = True) -> list[int]:
        return ([self.bos_token_id] if bos else []) + list(text.encode("utf-8"))

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        values = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        return bytes(i for i in values if 0 <= i < 256).decode("utf-8", errors="replace")

    def token_text(self, token_id: int) -> str:
        """One token as text: its byte (invalid UTF-8 escaped), or ``<bos>``/``<eos>``."""
        if token_id == self.bos_token_id:
            return "<bos>"
        if token_id == self.eos_token_id:
            return "<eos>"
        return bytes([token_id]).decode("utf-8", errors="backslashreplace")


@dataclass(frozen=True)
class CausalLMConfig:
    vocab_size: int = ByteTokenizer.vocab_size
    d_model: int = 64
    heads: int = 4
    kv_heads: int = 2
    layers: int = 4
    d_ff: int = 256
    max_len: int = 4096
    dropout: float = 0.0

    def to_dict(self) -> dict[str, int | float]:
        return asdict(self)


class DecoderBlock(nn.Module):
    def __init__(self, c: CausalLMConfig) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        self.attn = MultiHeadAttention(c.d_model, c.heads, kv_heads=c.kv_heads, dropout=c.dropout)
        self.ff = FeedForward(c.d_model, c.d_ff, c.dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        need_weights: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, torch.Tensor]]:
        out, weights, kv = self.attn(
            self.norm1(x), mask=mask, causal=True, cache=cache, need_weights=need_weights
        )
        x = x + out
        return x + self.ff(self.norm2(x)), weights, kv


@dataclass
class CausalLMOutput:
    logits: torch.Tensor
    past_key_values: KVCache
    attentions: list[torch.Tensor]


class TinyCausalLM(nn.Module):
    """A small decoder-only transformer. ``forward(input_ids, attention_mask=None,
    past_key_values=None, output_attentions=False)`` mirrors Hugging Face's argument names;
    ``attention_mask`` covers the cached keys too (1 = a real token), as in HF."""

    def __init__(self, config: CausalLMConfig | None = None) -> None:
        super().__init__()
        self.config = config or CausalLMConfig()
        c = self.config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.positions = PositionalEncoding(c.d_model, c.max_len)
        self.blocks = nn.ModuleList(DecoderBlock(c) for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.d_model)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.lm_head.weight = self.embed.weight  # tied

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        output_attentions: bool = False,
    ) -> CausalLMOutput:
        b, q_len = input_ids.shape
        past = 0 if not past_key_values else past_key_values[0][0].shape[2]
        if attention_mask is None:
            positions = torch.arange(past, past + q_len, device=input_ids.device).expand(b, -1)
        else:
            # Left padding: a token's position counts the real tokens before it.
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -q_len:]
        x = self.positions(self.embed(input_ids), positions)
        new_cache: KVCache = []
        attentions = []
        for i, block in enumerate(self.blocks):
            cache = past_key_values[i] if past_key_values else None
            x, weights, kv = block(x, attention_mask, cache, output_attentions)
            new_cache.append(kv)
            if weights is not None:
                attentions.append(weights)
        return CausalLMOutput(self.lm_head(self.norm(x)), new_cache, attentions)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int = 32,
        *,
        attention_mask: torch.Tensor | None = None,
        temperature: float = 0.0,
        seed: int | None = None,
        stop_at_eos: bool = False,
    ) -> torch.Tensor:
        """Greedy (``temperature=0``) or sampled generation with the KV cache; returns the
        prompt followed by the new tokens, ``(B, S + new)``. Batches of prompts of different
        lengths are left-padded, with ``attention_mask`` marking the real tokens."""
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        generator = None
        if seed is not None:
            generator = torch.Generator(device=input_ids.device).manual_seed(seed)
        ids, mask, past = input_ids, attention_mask, None
        step_input = input_ids
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        for _ in range(max_new_tokens):
            out = self(step_input, attention_mask=mask, past_key_values=past)
            past = out.past_key_values
            logits = out.logits[:, -1].float()
            if temperature > 0:
                probs = torch.softmax(logits / temperature, dim=-1)
                token = torch.multinomial(probs, 1, generator=generator)[:, 0]
            else:
                token = logits.argmax(-1)
            ids = torch.cat([ids, token[:, None]], dim=1)
            if mask is not None:
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            step_input = token[:, None]
            done |= token == ByteTokenizer.eos_token_id
            if stop_at_eos and bool(done.all()):
                break
        return ids
