"""Config-built Hugging Face models for the capture tests (no downloads): the same weights
under SDPA and under eager attention, so eager ``output_attentions`` is the reference."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

import attnfast


def twins(cls: Any, config: Any) -> tuple[Any, Any]:
    """``(sdpa_model, eager_model)`` with identical weights."""
    torch.manual_seed(0)
    base = config.to_dict()
    sdpa = cls(config.__class__(**{**base, "attn_implementation": "sdpa"})).eval()
    eager = cls(config.__class__(**{**base, "attn_implementation": "eager"})).eval()
    eager.load_state_dict(sdpa.state_dict())
    assert sdpa.config._attn_implementation == "sdpa"
    assert eager.config._attn_implementation == "eager"
    return sdpa, eager


def gpt2() -> tuple[Any, Any]:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        n_layer=3,
        n_head=4,
        n_embd=64,
        vocab_size=100,
        n_positions=128,
        bos_token_id=1,
        eos_token_id=2,
    )
    return twins(GPT2LMHeadModel, cfg)


def llama_gqa() -> tuple[Any, Any]:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_size=64,
        intermediate_size=128,
        vocab_size=100,
        bos_token_id=1,
        eos_token_id=2,
    )
    return twins(LlamaForCausalLM, cfg)


def eager_rows(eager: Any, sequences: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(L, B, H, S, S)`` eager attention over the generated sequences (minus the last
    token, which no step attended from), with generate()'s left-padding positions."""
    ids, m = sequences[:, :-1], mask[:, : sequences.shape[1] - 1]
    positions = (m.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = eager(ids, attention_mask=m, position_ids=positions, output_attentions=True)
    return torch.stack(out.attentions)


def reference_fingerprint(rows: torch.Tensor, pad: int, index: int) -> np.ndarray:
    """The Rust kernel's fingerprint of the row that produced the token at ``index``."""
    q = index - 1
    return attnfast.compute_fingerprints(rows[:, :, q, pad : q + 1].numpy())[0]
