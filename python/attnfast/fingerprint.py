"""Attention fingerprints (layout v1, ``docs/fingerprint-v1.md``): 20 float32 values that
summarise where one decode step's attention went."""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from attnfast import _core
from attnfast._arrays import attention_array, float32_rows, int64_array
from attnfast.exceptions import DtypeError, ShapeError
from attnfast.layout import Layout

#: The 20 field names of a v1 fingerprint, in order.
FINGERPRINT_FIELDS: tuple[str, ...] = tuple(_core.FINGERPRINT_FIELDS)
#: Floats per fingerprint.
FINGERPRINT_DIM = len(FINGERPRINT_FIELDS)
#: Bytes per packed fingerprint.
FINGERPRINT_BYTES = 4 * FINGERPRINT_DIM


def _query_positions(query_positions: ArrayLike | None, steps: int) -> NDArray[np.int64] | None:
    if query_positions is None:
        return None
    q = int64_array(query_positions, "query_positions").reshape(-1)
    if q.shape[0] != steps:
        raise ShapeError(f"query_positions has {q.shape[0]} entries but there are {steps} steps")
    return q


def compute_fingerprints(
    attn: Any, query_positions: ArrayLike | None = None
) -> NDArray[np.float32]:
    """Fingerprints of attention rows.

    ``attn`` is ``(L, H, N)`` for one step or ``(T, L, H, N)`` for ``T`` steps: the attention
    probabilities of each step's query over ``N`` keys, for ``L`` layers and ``H`` heads. It may be
    a numpy array or a torch tensor, float32 or float16 (read in place, no copy), or float64 or
    bfloat16 (converted to float32 first). ``query_positions`` gives each step's query position
    (one int for one step); by default step ``t`` sits at ``N - T + t``, the rows of a causal
    prefill, so one step sits at ``N - 1``.

    Returns a float32 array of shape ``(T, 20)`` (``T = 1`` for one step). Raises
    :class:`~attnfast.AttentionValueError` for NaN, infinite or negative weights and rows that
    sum to zero, naming step, layer, head and key; :class:`~attnfast.ShapeError` and
    :class:`~attnfast.DtypeError` for arrays of the wrong shape or type.
    """
    a = attention_array(attn)
    if a.ndim not in (3, 4):
        raise ShapeError(
            "attention must be (L, H, N) for one step or (T, L, H, N) for T steps, "
            f"got shape {a.shape}"
        )
    steps = 1 if a.ndim == 3 else a.shape[0]
    q = _query_positions(query_positions, steps)
    if a.dtype == np.float16:
        return _core.fingerprints_f16(a, q)
    return _core.fingerprints_f32(a, q)


def fingerprint_from_topk(
    positions: Any,
    scores: Any,
    query_position: ArrayLike,
    context_length: int,
) -> NDArray[np.float32]:
    """Fingerprints from sparse attention: for each layer and head, the ``k`` key positions with
    the most attention and their scores.

    ``positions`` and ``scores`` are ``(L, H, k)`` for one step or ``(T, L, H, k)``;
    ``query_position`` is an int (one step) or one per step; keys lie in ``0..context_length``.
    Each row is normalised by the sum of its scores. Positions must be distinct within a row.
    Returns ``(T, 20)`` float32.
    """
    pos = int64_array(positions, "top-k positions")
    sc = attention_array(scores, "top-k scores").astype(np.float32, copy=False)
    if pos.ndim == 3:
        pos, sc = pos[None], sc[None]
    if pos.ndim != 4:
        raise ShapeError(
            f"top-k positions must be (L, H, k) or (T, L, H, k), got shape {pos.shape}"
        )
    q = _query_positions(query_position, pos.shape[0])
    if q is None:
        raise ShapeError("query_position is required for top-k input")
    try:
        n = operator.index(context_length)
    except TypeError:
        raise ShapeError(f"context_length must be an integer, got {context_length!r}") from None
    if n < 1:
        raise ShapeError(f"context_length must be at least 1, got {n}")
    return _core.fingerprints_topk(np.ascontiguousarray(pos), np.ascontiguousarray(sc), q, n)


def pack_fingerprints(fps: Any, layout: Layout | str | int = Layout.V1) -> bytes:
    """Packs ``(T, 20)`` (or one ``(20,)``) fingerprints into ``T * 80`` bytes: little-endian
    float32, rows back to back, no header. Non-finite values are refused, naming row and index.
    The layout is not stored in the bytes; keep it beside them."""
    lay = Layout.of(layout)
    return _core.pack_fingerprints(float32_rows(fps, "fingerprints", lay.dim), lay.code)


def unpack_fingerprints(
    blob: bytes | bytearray | memoryview, layout: Layout | str | int = Layout.V1
) -> NDArray[np.float32]:
    """The ``(T, 20)`` float32 array packed in ``blob``. A blob that is not whole 80-byte rows or
    that holds non-finite values raises :class:`~attnfast.BlobError` rather than being misread."""
    lay = Layout.of(layout)
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise DtypeError(f"a packed blob must be bytes, got {type(blob).__name__}")
    data = blob if isinstance(blob, bytes) else bytes(blob)
    return _core.unpack_fingerprints(data, lay.code)


#: Zone names, indexed by the codes the core returns.
ZONES: tuple[str, ...] = tuple(_core.ZONE_NAMES)
_ZONE_ARRAY = np.array(ZONES)


def zone_of(fps: Any) -> tuple[NDArray[np.str_], NDArray[np.float32]]:
    """The zone and confidence of each v1 fingerprint, by the seed discovery job's rules:

    1. ``syntax_floor`` if local_mass > 0.5 and entropy < 2.5, confidence
       ``min(1, local * (1 - entropy / 4))``;
    2. ``structure_ripple`` if long_mass > 0.25 and the variance of the 8 histogram values
       > 0.1, confidence ``min(1, long + variance)``;
    3. else ``semantic_bridge``, confidence ``mid / (local + mid + long)``.

    ``fps`` is ``(T, 20)`` or one ``(20,)``. Returns two arrays of length ``T``: zone names and
    float32 confidences.
    """
    rows = float32_rows(fps, "fingerprints", FINGERPRINT_DIM)
    codes, confidences = _core.zone_codes(rows)
    return _ZONE_ARRAY[codes], confidences


__all__ = [
    "FINGERPRINT_BYTES",
    "FINGERPRINT_DIM",
    "FINGERPRINT_FIELDS",
    "ZONES",
    "compute_fingerprints",
    "fingerprint_from_topk",
    "pack_fingerprints",
    "unpack_fingerprints",
    "zone_of",
]
