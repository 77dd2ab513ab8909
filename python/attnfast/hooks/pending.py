"""Generations and captured steps between the forward call that computed them and the sink.

Why steps wait: a decode step of a small model takes under a millisecond, so the capture keeps
its per-step work to a Rust call and an append. A step's token is only known at the next call
(its input) or when ``generate()`` returns; turning steps into :class:`StepRecord` objects,
decoding token texts and calling the sink happen for a batch of steps at once, at most
:data:`EMIT_EVERY` steps or :data:`EMIT_AFTER_S` seconds after the step ran, and whenever a
generation ends or the capture closes. Steps with full rows (mode "full") go at the next
step, so that at most two steps' rows wait in memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from attnfast.hooks.records import StepRecord

EMIT_EVERY = 64
EMIT_AFTER_S = 0.25


@dataclass
class Generation:
    """One batch of sequences from its prompt on."""

    index: int
    request_ids: list[str]
    pads: torch.Tensor  # (B,) left-padding per sequence
    prompt_len: int  # padded
    sequences: list[int]  # file sequence number of each batch row
    real: torch.Tensor | None  # (B, S) prompt mask: True = a real token
    step: int = 0
    # Whether the Rust kernel can read this generation's queries and keys (float32, CPU)
    kernel_ok: bool | None = None
    # False for an encoder (bidirectional attention): its rows are labelled with their own
    # tokens, and it has no decode steps.
    causal: bool = True
    pad_list: list[int] = field(init=False)
    # The step at which each sequence chose its end-of-sequence token, once it has.
    eos_step: list[int | None] = field(init=False)

    def __post_init__(self) -> None:
        self.pad_list = self.pads.tolist()
        self.eos_step = [None] * len(self.pad_list)

    def is_real(self, b: int, position: int) -> bool:
        return self.real is None or position >= self.real.shape[1] or bool(self.real[b, position])


@dataclass(slots=True)
class PendingStep:
    """One captured step of a whole batch, as the kernel left it."""

    gen: Generation
    step: int
    n: int  # keys the new query saw
    host: np.ndarray  # (B, 21 + 2k): fingerprint, sink mass, top-k scores, top-k positions
    full: np.ndarray | None  # (B, L, H, n) in mode "full"
    timestamp: float
    tokens: torch.Tensor | None = None  # (B, 1): the next call's input, the tokens it chose


def to_records(
    steps: list[PendingStep],
    *,
    layer_ids: tuple[int, ...],
    topk: int | None,
    text: Callable[[int], str],
    eos: set[int],
) -> list[StepRecord]:
    """Records of ``steps`` (all of one generation, oldest first), skipping rows that are
    padding and rows of sequences that already chose an end-of-sequence token (``eos``):
    ``generate()`` keeps stepping those. ``topk`` is the top-k width in mode "topk", else
    None."""
    labelled = [s.tokens for s in steps if s.tokens is not None]
    # One transfer for the whole batch of steps rather than one per step.
    labels = torch.cat(labelled, dim=1).tolist() if labelled else []
    records = []
    column = 0
    for s in steps:
        gen, host, n = s.gen, s.host, s.n
        k = 0 if topk is None else min(topk, n)
        for b, pad in enumerate(gen.pad_list):
            if gen.real is not None and not gen.is_real(b, n - 1):
                continue  # the last row of a right-padded sequence is padding
            ended = gen.eos_step[b]
            if ended is not None and s.step > ended:
                continue
            r = StepRecord(
                request_id=gen.request_ids[b],
                sequence=gen.sequences[b],
                step=s.step,
                position=n - pad,
                fingerprint=host[b, :20],
                sink_mass=float(host[b, 20]),
                layer_ids=layer_ids,
                timestamp=s.timestamp,
                index=n,
            )
            if s.tokens is not None and b < len(labels):
                r.token_id = int(labels[b][column])
                r.token_text = text(r.token_id)
                if r.token_id in eos:
                    gen.eos_step[b] = s.step
            if k:
                r.topk_scores = host[b, 21 : 21 + k].copy()
                r.topk_positions = host[b, 21 + k : 21 + 2 * k].astype(np.int32)
            if s.full is not None:
                r.attention = np.ascontiguousarray(s.full[b, :, :, pad:])
            records.append(r)
        if s.tokens is not None:
            column += 1
    return records


def prompt_records(
    fingerprints: np.ndarray,
    ids: torch.Tensor | None,
    gen: Generation,
    *,
    layer_ids: tuple[int, ...],
    text: Callable[[int], str],
    first: int = 0,
    attention: np.ndarray | None = None,
) -> list[StepRecord]:
    """Records of the prompt rows ``first ..`` (``prefill=True``); ``fingerprints`` is
    ``(B, Q, 20)`` and ``attention``, in mode "full", ``(B, L, H, Q, n)``.

    - A causal model's row ``q`` chose the token at ``q + 1`` (a prompt token, or for the last
      row the first generated one): ``step`` is None and ``position`` is ``q + 1``; the last
      row is step 0, recorded with the steps.
    - An encoder's row ``q`` is its own token's: ``step`` and ``position`` are ``q``, and
      ``token_id`` the token at ``q``; every real row is one, the last too.

    Positions count real tokens only; padding rows are skipped, and a row's attention keeps
    only its real keys."""
    now = time.time()
    records = []
    ids_list = None if ids is None else ids.tolist()
    for b in range(fingerprints.shape[0]):
        pad = gen.pad_list[b]
        for i in range(fingerprints.shape[1]):
            q = first + i
            if q < pad or not gen.is_real(b, q):
                continue
            if gen.causal:
                if q + 1 >= gen.prompt_len:
                    continue  # the last row is step 0
                at, step, position = q + 1, None, q + 1 - pad
            else:
                at, step, position = q, q - pad, q - pad
            row = ids_list[b] if ids_list is not None else None
            token = int(row[at]) if row is not None and at < len(row) else None
            r = StepRecord(
                request_id=gen.request_ids[b],
                sequence=gen.sequences[b],
                step=step,
                position=position,
                fingerprint=fingerprints[b, i],
                sink_mass=float("nan"),
                layer_ids=layer_ids,
                timestamp=now,
                token_id=token,
                token_text=None if token is None else text(token),
            )
            if attention is not None:
                keys = attention[b, :, :, i]
                if gen.causal:
                    keys = keys[:, :, pad : q + 1]
                elif gen.real is not None:
                    keys = keys[:, :, gen.real[b, : keys.shape[-1]].numpy()]
                r.attention = np.ascontiguousarray(keys)
            records.append(r)
    return records
