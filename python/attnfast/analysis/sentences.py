"""Where generation's attention goes in the prompt, by token and by sentence."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from attnfast.capture_file import CaptureFile
from attnfast.exceptions import InvalidInputError


def normalised_mean(attn: NDArray[np.float32]) -> NDArray[np.float32]:
    """A ``(layers, heads, keys)`` row averaged over layers and heads, summing to 1."""
    row = attn.mean(axis=(0, 1), dtype=np.float64)
    total = row.sum()
    out: NDArray[np.float32] = (row / total if total > 0 else row).astype(np.float32)
    return out


def step_rows(
    capture: CaptureFile, sequence: int = 0
) -> tuple[NDArray[np.int64], list[NDArray[np.float32]]]:
    """Each step's attention averaged over layers and heads (keys ``0 .. position - 1``),
    normalised to sum to 1, with the step numbers."""
    steps, rows = [], []
    for info, attn in capture.iter_steps(sequence):
        rows.append(normalised_mean(attn))
        steps.append(info["step"])
    return np.asarray(steps, dtype=np.int64), rows


def prompt_attention(
    capture: CaptureFile, sequence: int = 0
) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """``(steps, matrix)`` with ``matrix[i, p]`` the share of step ``i``'s attention that went
    to prompt position ``p``."""
    steps, rows = step_rows(capture, sequence)
    if not rows:
        raise InvalidInputError(
            f"{capture.path} has no steps of sequence {sequence}: nothing to draw "
            f"(its sequences: {sorted(set(capture.steps['sequence'].tolist()))})"
        )
    prompt_len = len(capture.prompt_tokens(sequence)) or min(len(r) for r in rows)
    matrix = np.zeros((len(rows), prompt_len), dtype=np.float32)
    for i, r in enumerate(rows):
        m = min(prompt_len, len(r))
        matrix[i, :m] = r[:m]
    return steps, matrix


@dataclass
class SentenceAttention:
    """Attention share per prompt sentence per generation step."""

    steps: NDArray[np.int64]
    sentences: list[str]
    matrix: NDArray[np.float32]  # (steps, sentences)

    def trend(self) -> list[dict[str, float | str]]:
        """For each sentence: mean share over the first and last quarter of the steps, and
        their ratio (below 1: it fades; above: it brightens)."""
        n = len(self.steps)
        q = max(1, n // 4)
        out: list[dict[str, float | str]] = []
        for j, text in enumerate(self.sentences):
            early = float(self.matrix[:q, j].mean()) if n else 0.0
            late = float(self.matrix[-q:, j].mean()) if n else 0.0
            out.append(
                {
                    "sentence": text,
                    "early": early,
                    "late": late,
                    "ratio": late / early if early > 0 else float("inf") if late > 0 else 1.0,
                    "peak": float(self.matrix[:, j].max()) if n else 0.0,
                }
            )
        return out


def sentence_attention(capture: CaptureFile, sequence: int = 0) -> SentenceAttention:
    """Sums each step's prompt attention over the tokens of each sentence (the prompt tokens'
    ``sentence_id``)."""
    tokens = capture.prompt_tokens(sequence)
    if not tokens:
        raise InvalidInputError(f"the capture has no prompt tokens for sequence {sequence}")
    steps, matrix = prompt_attention(capture, sequence)
    ids = np.array([int(t.get("sentence_id", 0)) for t in tokens])
    count = int(ids.max()) + 1
    texts = [
        "".join(t["text"] for t in tokens if t.get("sentence_id", 0) == j).strip()
        for j in range(count)
    ]
    by_sentence = np.zeros((len(steps), count), dtype=np.float32)
    for j in range(count):
        by_sentence[:, j] = matrix[:, ids == j].sum(axis=1)
    return SentenceAttention(steps, texts, by_sentence)
