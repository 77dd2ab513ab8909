"""What capture produces per step."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray


@dataclass
class StepRecord:
    """One captured step of one sequence.

    ``step`` counts generation steps from 0 (step 0 is the prompt's last position, whose
    attention chose the first generated token); ``position`` is where the generated token
    lands in its sequence, so the attention row covers keys ``0 .. position - 1``. Prompt rows
    captured with ``prefill=True`` have ``step = None`` and ``position`` = their own position
    plus one. ``token_id`` is the token this step produced (None where it never became known).
    """

    request_id: str
    sequence: int
    step: int | None
    position: int
    fingerprint: NDArray[np.float32]
    sink_mass: float
    layer_ids: tuple[int, ...]
    timestamp: float
    token_id: int | None = None
    token_text: str | None = None
    topk_positions: NDArray[np.int32] | None = None
    topk_scores: NDArray[np.float32] | None = None
    # (layers, heads, position) float32, in mode="full"
    attention: NDArray[np.float32] | None = None
    # The token's index in the padded batch, to find it in generate()'s output.
    index: int = field(default=-1, repr=False)
