"""The store's columns: their names, and the normalisation of what users append (scalars,
lists, arrays, names) into the arrays and codes the core takes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from attnfast._arrays import to_numpy
from attnfast._time import to_us_array
from attnfast.exceptions import DtypeError, InvalidInputError, ShapeError
from attnfast.fingerprint import ZONES

THINK_PHASES: tuple[str, ...] = ("think", "output", "unknown")
_NULL_CODE = 255

TEXT_COLUMNS = ("session_id", "token_text", "model_id")
_INT_COLUMNS = ("token_id", "segment_idx", "cluster_id")
_REAL_COLUMNS = (
    "manifold_confidence",
    "cluster_probability",
    "router_entropy",
    "expert_load_balance",
    "sink_token_mass",
)
LIST_COLUMNS = {
    "top_k_positions": np.int32,
    "top_k_scores": np.float32,
    "capture_layer_ids": np.int32,
    "top_expert_ids": np.int32,
}
OPTIONAL_COLUMNS: tuple[str, ...] = (
    "created_at",
    *TEXT_COLUMNS,
    *_INT_COLUMNS,
    "think_phase",
    "manifold_zone",
    *_REAL_COLUMNS,
    *LIST_COLUMNS,
    "invalid",
)


def _rows_of(value: Any, rows: int, what: str) -> NDArray[Any]:
    """A per-row array; a scalar is repeated for every row."""
    arr = to_numpy(value) if not isinstance(value, list | tuple) else np.asarray(value)
    if arr.ndim == 0:
        return np.full(rows, arr.item())
    if arr.ndim != 1 or len(arr) != rows:
        raise ShapeError(f"{what} must be one value or {rows} values, got shape {arr.shape}")
    return arr


def _nullable_ints(value: Any, rows: int, what: str) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """Integers with None for NULL, as (values, valid)."""
    if isinstance(value, list | tuple) and any(v is None for v in value):
        valid = np.array([v is not None for v in value], dtype=np.bool_)
        values = ints([0 if v is None else v for v in value], rows, what)
        return values, valid
    return ints(value, rows, what), np.ones(rows, dtype=np.bool_)


def ints(value: Any, rows: int, what: str) -> NDArray[np.int64]:
    arr = _rows_of(value, rows, what)
    if arr.size == 0 and arr.dtype.kind == "f":  # an empty list: numpy calls it float64
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind not in "iu" or arr.dtype == np.bool_:
        raise DtypeError(f"{what} must be integers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _reals(value: Any, rows: int, what: str) -> NDArray[np.float64]:
    if isinstance(value, list | tuple):
        value = [np.nan if v is None else v for v in value]
    arr = _rows_of(value, rows, what)
    if arr.dtype.kind not in "iuf":
        raise DtypeError(f"{what} must be real numbers (NaN or None for missing), got {arr.dtype}")
    out = np.ascontiguousarray(arr, dtype=np.float64)
    if np.isinf(out).any():
        raise InvalidInputError(f"{what} row {int(np.isinf(out).argmax())} is infinite")
    return out


def _codes(value: Any, rows: int, names: Sequence[str], what: str) -> NDArray[np.uint8]:
    """Names (or None) to the schema's codes."""
    values = [value] * rows if isinstance(value, str) or value is None else list(value)
    if len(values) != rows:
        raise ShapeError(f"{what} has {len(values)} rows but steps has {rows}")
    lookup = {name: i for i, name in enumerate(names)}
    out = np.empty(rows, dtype=np.uint8)
    for row, name in enumerate(values):
        if name is None:
            out[row] = _NULL_CODE
        elif name in lookup:
            out[row] = lookup[name]
        else:
            raise InvalidInputError(
                f"{what} of row {row} is {name!r}; expected one of {', '.join(names)} or None"
            )
    return out


def _flags(value: Any, rows: int, what: str) -> NDArray[np.bool_]:
    """Booleans, one for every row or one per row."""
    arr = _rows_of(value, rows, what)
    if arr.dtype != np.bool_:
        raise DtypeError(f"{what} must be booleans, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr)


def _texts(value: Any, rows: int, what: str) -> str | list[str | None]:
    if isinstance(value, str):
        return value
    values = value.tolist() if isinstance(value, np.ndarray) else list(value)
    if len(values) != rows:
        raise ShapeError(f"{what} has {len(values)} rows but steps has {rows}")
    return values


def _lists(value: Any, rows: int, dtype: type, what: str) -> tuple[NDArray[np.int64], NDArray[Any]]:
    """A (rows, k) array or a sequence of 1-D arrays (None or empty for NULL) as Arrow-style
    offsets and values."""
    if isinstance(value, np.ndarray) or hasattr(value, "detach"):
        arr = to_numpy(value)
        if arr.ndim == 1 and rows == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[0] != rows:
            raise ShapeError(f"{what} must be ({rows}, k) or a list of {rows} arrays")
        offsets = np.arange(rows + 1, dtype=np.int64) * arr.shape[1]
        return offsets, np.ascontiguousarray(arr.reshape(-1), dtype=dtype)
    items = list(value)
    if len(items) != rows:
        raise ShapeError(f"{what} has {len(items)} rows but steps has {rows}")
    try:
        parts: list[NDArray[Any]] = [
            np.zeros(0, dtype) if v is None else np.asarray(v, dtype=dtype).reshape(-1)
            for v in items
        ]
    except (TypeError, ValueError):
        raise DtypeError(f"{what} must hold numbers (a list of them per row, or None)") from None
    offsets = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum([len(p) for p in parts], out=offsets[1:])
    values = np.concatenate(parts) if parts else np.zeros(0, dtype)
    return offsets, np.ascontiguousarray(values, dtype=dtype)


def normalise_columns(rows: int, given: dict[str, Any]) -> dict[str, Any]:
    """The optional columns, normalised for the core."""
    unknown = sorted(set(given) - set(OPTIONAL_COLUMNS))
    if unknown:
        raise InvalidInputError(
            f"unknown column(s) {', '.join(unknown)}; known: {', '.join(OPTIONAL_COLUMNS)}"
        )
    out: dict[str, Any] = {}
    for name, value in given.items():
        if value is None:
            continue
        if name == "created_at":
            out["created_us"] = to_us_array(value, rows, name)
        elif name in TEXT_COLUMNS:
            out[name] = _texts(value, rows, name)
        elif name in _INT_COLUMNS:
            out[name] = _nullable_ints(value, rows, name)
        elif name in _REAL_COLUMNS:
            out[name] = _reals(value, rows, name)
        elif name == "think_phase":
            out[name] = _codes(value, rows, THINK_PHASES, name)
        elif name == "manifold_zone":
            out["zone"] = _codes(value, rows, ZONES, name)
        elif name == "invalid":
            out[name] = _flags(value, rows, name)
        else:
            out[name] = _lists(value, rows, LIST_COLUMNS[name], name)
    return out
