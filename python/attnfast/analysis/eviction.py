"""Replaying KV-cache eviction policies on a stored capture: at a given cache budget, which
keys would each policy have kept, and what share of each step's (full-cache) attention fell on
them. A policy that keeps close to 100% would barely change the model's outputs.

Conventions (documented in docs/capture.md): attention is averaged over the captured layers and
heads; step 0 sees the whole prompt (every policy starts evicting after it); at each step the
newest key (the token fed in) joins the cache before the step is scored, and the policy then
evicts down to the budget using what it has seen so far, the current step included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from attnfast.analysis.sentences import step_rows
from attnfast.capture_file import CaptureFile

POLICIES = ("streaming", "h2o", "snapkv", "tova")


@dataclass
class EvictionReplay:
    policy: str
    budget: int
    steps: NDArray[np.int64]
    kept_share: NDArray[np.float64]  # per step
    cache_size: NDArray[np.int64]  # per step
    params: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, float | int | str]:
        k = self.kept_share
        return {
            "policy": self.policy,
            "budget": self.budget,
            "steps": len(k),
            "mean_kept": float(k.mean()) if len(k) else 1.0,
            "min_kept": float(k.min()) if len(k) else 1.0,
            "final_kept": float(k[-1]) if len(k) else 1.0,
        }


def replay_eviction(
    capture: CaptureFile,
    policy: str,
    budget: int,
    *,
    sequence: int = 0,
    sinks: int = 4,
    window: int | None = None,
    observation: int = 8,
) -> EvictionReplay:
    """Replays one policy on one sequence.

    - ``streaming`` (StreamingLLM): the first ``sinks`` keys plus the most recent ones.
    - ``h2o`` (heavy hitters): the ``window`` most recent keys (default half the budget) plus
      the keys with the most attention accumulated so far.
    - ``snapkv``: after the first ``observation`` steps, keeps the prompt keys those steps
      attended to most (and the last ``observation`` prompt keys) within the budget, once;
      generated keys are never evicted, as in SnapKV, so the cache may grow past the budget.
    - ``tova``: drops the key the current step attends to least.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    if budget < 1:
        raise ValueError(f"budget must be at least 1, got {budget}")
    steps, rows = step_rows(capture, sequence)
    if not rows:
        raise ValueError(f"the capture has no steps for sequence {sequence}")
    prompt_len = len(rows[0])
    window = budget // 2 if window is None else window
    cache: NDArray[np.bool_] = np.zeros(0, dtype=np.bool_)
    score = np.zeros(0)  # accumulated attention (h2o) / observation attention (snapkv)
    kept, sizes = [], []
    for t, a in enumerate(rows):
        n = len(a)
        # New keys join the cache.
        cache = np.concatenate([cache, np.ones(n - len(cache), dtype=np.bool_)])
        score = np.concatenate([score, np.zeros(n - len(score))])
        kept.append(float(a[cache].sum()))
        score += a
        if policy == "streaming":
            cache = _keep(n, [np.arange(min(sinks, n)), np.arange(max(0, n - (budget - sinks)), n)])
        elif policy == "h2o":
            recent = np.arange(max(0, n - window), n)
            cache = _top_within(cache, score, budget, recent)
        elif policy == "tova":
            cache = _top_within(cache, a, budget, np.arange(n - 1, n))
        elif policy == "snapkv" and t + 1 == observation:
            prompt_scores = score[:prompt_len].copy()
            tail = np.arange(max(0, prompt_len - observation), prompt_len)
            keep_prompt = _top_within(
                np.ones(prompt_len, dtype=np.bool_), prompt_scores, budget, tail
            )
            cache[:prompt_len] = keep_prompt
        sizes.append(int(cache.sum()))
    return EvictionReplay(
        policy,
        budget,
        steps,
        np.asarray(kept),
        np.asarray(sizes),
        {"sinks": sinks, "window": window, "observation": observation},
    )


def _keep(n: int, parts: list[NDArray[np.int64]]) -> NDArray[np.bool_]:
    out = np.zeros(n, dtype=np.bool_)
    for p in parts:
        out[p] = True
    return out


def _top_within(
    cache: NDArray[np.bool_],
    score: NDArray[np.floating[Any]],
    budget: int,
    always: NDArray[np.int64],
) -> NDArray[np.bool_]:
    """Keeps ``always`` and then the cached keys with the highest scores, ``budget`` in all."""
    if cache.sum() <= budget:
        return cache
    out = np.zeros_like(cache)
    out[always[:budget]] = True
    rest = budget - int(out.sum())
    if rest > 0:
        candidates = np.flatnonzero(cache & ~out)
        best = candidates[np.argsort(-score[candidates], kind="stable")[:rest]]
        out[best] = True
    return out
