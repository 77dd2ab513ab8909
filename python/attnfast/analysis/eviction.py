"""Replaying KV-cache eviction policies on a stored capture: at a given cache budget, which
keys would each policy have kept, and what share of each step's (full-cache) attention fell on
them. A policy that keeps close to 100% would barely change the model's outputs.

Conventions (docs/capture.md):
- attention is averaged over the captured layers and heads, each row normalised to sum to 1;
- step 0 is the prompt's last row, computed in the prefill with the whole prompt cached; the
  policies evict after the prefill, so the cache step 0 is scored on is the prompt compressed
  to the budget, chosen from what the prefill saw (the prompt rows a ``prefill=True`` capture
  holds, and step 0's own row, the prompt's last);
- after each step, the policy evicts down to ``budget - 1`` keys using the attention seen so far
  (that step included), and the next token's key joins: every step is scored on at most
  ``budget`` keys, the newest among them, and an evicted key never returns;
- ties keep the earlier key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from attnfast.analysis.sentences import normalised_mean, step_rows
from attnfast.capture_file import CaptureFile
from attnfast.exceptions import InvalidInputError

POLICIES = ("streaming", "h2o", "snapkv", "tova")


@dataclass
class EvictionReplay:
    policy: str
    budget: int
    steps: NDArray[np.int64]
    kept_share: NDArray[np.float64]  # per step
    cache_size: NDArray[np.int64]  # per step
    kept: list[NDArray[np.int64]] = field(default_factory=list, repr=False)  # per step
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
    """Replays one policy on one sequence of a capture (see :func:`replay_rows`). The
    capture must hold every step (``every_n=1``): a policy decides at each step."""
    every_n = int(capture.meta.get("every_n") or 1)
    if every_n > 1:
        raise InvalidInputError(
            f"{capture.path} kept one step in {every_n} (every_n={every_n}); eviction replay "
            "needs every step's row, since each policy decides at every step: capture with "
            "every_n=1 to replay"
        )
    steps, rows = step_rows(capture, sequence)
    if not rows:
        raise InvalidInputError(f"the capture has no steps for sequence {sequence}")
    prompt = [
        normalised_mean(capture.prompt_attention(i)) for i in capture.prompt_indices(sequence)
    ]
    return replay_rows(
        rows,
        policy,
        budget,
        steps=steps,
        prompt_rows=prompt,
        sinks=sinks,
        window=window,
        observation=observation,
    )


def replay_rows(
    rows: Sequence[NDArray[np.floating[Any]]],
    policy: str,
    budget: int,
    *,
    steps: NDArray[np.int64] | None = None,
    prompt_rows: Sequence[NDArray[np.floating[Any]]] = (),
    sinks: int = 4,
    window: int | None = None,
    observation: int = 8,
) -> EvictionReplay:
    """Replays one policy on attention rows: ``rows[t]`` is step ``t``'s attention over the
    keys before it (step 0 over the prompt, each later step one key more), ``prompt_rows`` the
    prompt's rows before its last (row ``q`` over keys ``0..q``), when captured.

    - ``streaming`` (StreamingLLM): the first ``sinks`` keys and the most recent ones.
    - ``h2o`` (heavy hitters): the ``window`` most recent keys (default half the budget, at
      least 1) and the keys with the most attention accumulated so far.
    - ``snapkv``: the prompt is compressed once, by the votes of its last ``observation``
      rows (prompt rows and step 0's), keeping those rows' own keys; generated keys are not
      compressed: past the budget, the least-voted prompt key goes first, then the oldest
      generated key.
    - ``tova``: the keys the latest row attends to least go.
    """
    if policy not in POLICIES:
        raise InvalidInputError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    if budget < 1:
        raise InvalidInputError(f"budget must be at least 1, got {budget}")
    if sinks < 0 or observation < 1 or (window is not None and window < 1):
        raise InvalidInputError(
            f"sinks must be at least 0 and observation and window at least 1, got sinks={sinks}, "
            f"observation={observation}, window={window}"
        )
    if not rows:
        raise InvalidInputError("there are no steps to replay")
    window = max(1, budget // 2) if window is None else window
    prompt_len = len(rows[0])
    for t, a in enumerate(rows):
        if len(a) != prompt_len + t:
            label = t if steps is None else steps[t]
            raise InvalidInputError(
                f"step {label} (row {t}) covers {len(a)} keys; consecutive steps must add one "
                f"key each (the first covers {prompt_len}): replay needs every step"
            )
    seen = [np.asarray(r, dtype=np.float64) for r in prompt_rows]
    first = np.asarray(rows[0], dtype=np.float64)
    # Attention accumulated so far, per key (h2o); the observation window's votes (snapkv).
    score = np.zeros(prompt_len)
    for r in (*seen, first):
        score[: len(r)] += r
    votes = np.zeros(prompt_len)
    for r in (*seen, first)[-observation:]:
        votes[: len(r)] += r
    cache = np.ones(prompt_len, dtype=np.bool_)
    cache = _evict(
        policy, cache, budget, score, votes, first, prompt_len, sinks, window, observation
    )
    kept_share, sizes, kept = [], [], []
    for t, row in enumerate(rows):
        a = np.asarray(row, dtype=np.float64)
        if t > 0:
            cache = np.append(cache, True)  # the token fed in joins the cache
            score = np.append(score, 0.0)
        indices = np.flatnonzero(cache)
        kept.append(indices)
        kept_share.append(float(a[indices].sum()))
        sizes.append(len(indices))
        if t + 1 < len(rows):  # room for the next token's key
            if t > 0:  # step 0's row is in the scores already
                score += a
            cache = _evict(
                policy, cache, budget - 1, score, votes, a, prompt_len, sinks, window, observation
            )
    return EvictionReplay(
        policy,
        budget,
        np.arange(len(rows), dtype=np.int64) if steps is None else np.asarray(steps),
        np.asarray(kept_share),
        np.asarray(sizes, dtype=np.int64),
        kept,
        {"sinks": sinks, "window": window, "observation": observation},
    )


def _evict(
    policy: str,
    cache: NDArray[np.bool_],
    room: int,
    score: NDArray[np.float64],
    votes: NDArray[np.float64],
    latest: NDArray[np.floating[Any]],
    prompt_len: int,
    sinks: int,
    window: int,
    observation: int,
) -> NDArray[np.bool_]:
    """``cache`` cut to at most ``room`` keys by ``policy`` (the newest key always stays)."""
    n = len(cache)
    if cache.sum() <= room:
        return cache
    if room <= 0:
        return np.zeros(n, dtype=np.bool_)
    newest = np.array([n - 1])
    if policy == "streaming":
        first = np.arange(min(sinks, room - 1))
        return cache & _keep(n, [first, np.arange(max(0, n - (room - len(first))), n)])
    if policy == "h2o":
        recent = np.arange(max(0, n - min(window, room)), n)
        return _best(cache, score, room, recent)
    if policy == "tova":
        return _best(cache, np.append(latest, np.zeros(n - len(latest))), room, newest)
    # snapkv: the observation rows' own keys, then prompt keys by votes; generated keys are
    # only evicted, oldest first, when no prompt key is left to evict.
    tail = np.arange(max(0, prompt_len - observation), min(prompt_len, n))
    keep = _keep(n, [newest, tail[-(room - 1) :] if room > 1 else tail[:0]]) & cache
    generated = np.flatnonzero(cache & (np.arange(n) >= prompt_len) & ~keep)
    prompt = np.flatnonzero(cache & (np.arange(n) < prompt_len) & ~keep)
    left = room - int(keep.sum())
    by_votes = prompt[np.argsort(-votes[prompt], kind="stable")]
    # Generated keys stay while they fit: the prompt gives way first.
    take_generated = generated[max(0, len(generated) - left) :]
    take_prompt = by_votes[: max(0, left - len(take_generated))]
    keep[take_generated] = True
    keep[take_prompt] = True
    return keep


def _keep(n: int, parts: list[NDArray[np.int64]]) -> NDArray[np.bool_]:
    out = np.zeros(n, dtype=np.bool_)
    for p in parts:
        out[p] = True
    return out


def _best(
    cache: NDArray[np.bool_],
    score: NDArray[np.floating[Any]],
    room: int,
    always: NDArray[np.int64],
) -> NDArray[np.bool_]:
    """Keeps the cached keys of ``always`` (the most recent first when they do not all fit),
    then the cached keys with the highest scores, ``room`` in all."""
    out = np.zeros_like(cache)
    sticky = always[cache[always]][::-1][:room]
    out[sticky] = True
    rest = room - len(sticky)
    if rest > 0:
        candidates = np.flatnonzero(cache & ~out)
        best = candidates[np.argsort(-score[candidates], kind="stable")[:rest]]
        out[best] = True
    return out
