"""Pruning simulation (seed 003, experiment 2): capture a generation with the full prompt,
drop the prompt tokens that got the least peak attention, generate again from the pruned
prompt, and compare the two outputs token by token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from attnfast.exceptions import InvalidInputError
from attnfast.hooks import capture


@dataclass
class PruneResult:
    drop_fraction: float
    prompt_tokens: int
    dropped_positions: list[int]
    original: list[int]
    pruned: list[int]
    agreement: float  # share of positions where both outputs have the same token
    first_divergence: int | None  # step of the first difference, None when identical

    def summary(self) -> dict[str, Any]:
        return {
            "drop_fraction": self.drop_fraction,
            "prompt_tokens": self.prompt_tokens,
            "dropped": len(self.dropped_positions),
            "agreement": self.agreement,
            "first_divergence": self.first_divergence,
        }


def peak_attention(
    model: torch.nn.Module, prompt: torch.Tensor, max_new_tokens: int
) -> tuple[np.ndarray, list[int]]:
    """Greedy generation under full capture; returns each prompt position's peak attention
    share over the steps (mean over layers and heads) and the generated tokens."""
    with capture(model, "full") as cap:
        out = getattr(model, "generate")(prompt, max_new_tokens=max_new_tokens)  # noqa: B009
    s = prompt.shape[1]
    peak = np.zeros(s)
    for r in cap.records:
        assert r.attention is not None
        row = r.attention.mean(axis=(0, 1))
        peak = np.maximum(peak, row[:s] / row.sum())
    return peak, out[0, s:].tolist()


def prune_simulation(
    model: torch.nn.Module,
    prompt: torch.Tensor,
    *,
    drop_fraction: float = 0.3,
    max_new_tokens: int = 32,
    keep_first: int = 1,
) -> PruneResult:
    """``prompt`` is ``(1, S)`` token ids; ``keep_first`` positions (BOS, the attention sink)
    are never dropped. Generation is greedy, so differences come from the pruning alone."""
    if not 0.0 <= drop_fraction < 1.0:
        raise InvalidInputError(f"drop_fraction must be in [0, 1), got {drop_fraction}")
    if prompt.dim() != 2 or prompt.shape[0] != 1:
        raise InvalidInputError(
            f"prompt must be one sequence of shape (1, S), got {tuple(prompt.shape)}"
        )
    peak, original = peak_attention(model, prompt, max_new_tokens)
    s = prompt.shape[1]
    candidates = np.arange(keep_first, s)
    n_drop = round(drop_fraction * s)
    n_drop = min(n_drop, len(candidates) - 1) if len(candidates) > 1 else 0
    order = candidates[np.argsort(peak[candidates], kind="stable")]
    dropped = sorted(int(p) for p in order[:n_drop])
    keep = np.setdiff1d(np.arange(s), dropped)
    pruned_prompt = prompt[:, torch.as_tensor(keep)]
    generate = getattr(model, "generate")  # noqa: B009
    with torch.no_grad():
        pruned = generate(pruned_prompt, max_new_tokens=max_new_tokens)[0, len(keep) :].tolist()
    same = [a == b for a, b in zip(original, pruned, strict=False)]
    first = next((i for i, ok in enumerate(same) if not ok), None)
    return PruneResult(
        drop_fraction,
        s,
        dropped,
        original,
        pruned,
        float(np.mean(same)) if same else 1.0,
        first,
    )
