"""Rows read from the store, as the user asked for them: a pyarrow Table or numpy arrays,
with the seed's column names and zone and phase names instead of codes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from attnfast._store_columns import LIST_COLUMNS, TEXT_COLUMNS, THINK_PHASES
from attnfast.fingerprint import FINGERPRINT_DIM, ZONES


def _named(codes: NDArray[np.uint8], valid: NDArray[np.bool_], names: Sequence[str]) -> list[Any]:
    return [names[c] if ok else None for c, ok in zip(codes.tolist(), valid.tolist(), strict=True)]


def _unpack_lists(blobs: list[bytes | None], dtype: type) -> list[Any]:
    return [
        None if b is None else np.frombuffer(b, dtype=np.dtype(dtype).newbyteorder("<"))
        for b in blobs
    ]


def as_numpy(cols: dict[str, Any]) -> dict[str, Any]:
    """numpy arrays and lists: nullable floats hold NaN for NULL; nullable integers keep their
    values (``cluster_id`` -1 for NULL) beside a ``<name>_valid`` boolean array."""
    out: dict[str, Any] = {}
    for name, value in cols.items():
        if isinstance(value, tuple):
            values, valid = value
            if name == "zone":
                out["manifold_zone"] = _named(values, valid, ZONES)
            elif name == "think_phase":
                out[name] = _named(values, valid, THINK_PHASES)
            elif values.dtype.kind == "f":
                out[name] = np.where(valid, values, np.nan)
            else:
                out[name] = np.where(valid, values, -1) if name == "cluster_id" else values
                out[name + "_valid"] = valid
        elif name in LIST_COLUMNS:
            out[name] = _unpack_lists(value, LIST_COLUMNS[name])
        elif name == "layout":
            out["schema_version"] = value
        elif name == "created_us":
            out["created_at"] = value.astype("datetime64[us]")
        else:
            out[name] = value
    return out


def as_arrow(cols: dict[str, Any]) -> Any:
    import pyarrow as pa

    arrays: dict[str, Any] = {}
    for name, value in cols.items():
        if isinstance(value, tuple):
            values, valid = value
            if name == "zone":
                arrays["manifold_zone"] = pa.array(_named(values, valid, ZONES), pa.string())
            elif name == "think_phase":
                arrays[name] = pa.array(_named(values, valid, THINK_PHASES), pa.string())
            else:
                arrays[name] = pa.array(values, mask=~valid)
        elif name == "fingerprint":
            flat = pa.array(value.reshape(-1), pa.float32())
            arrays[name] = pa.FixedSizeListArray.from_arrays(flat, FINGERPRINT_DIM)
        elif name in LIST_COLUMNS:
            item = pa.float32() if LIST_COLUMNS[name] is np.float32 else pa.int32()
            arrays[name] = pa.array(_unpack_lists(value, LIST_COLUMNS[name]), pa.list_(item))
        elif name == "layout":
            arrays["schema_version"] = pa.array(value, pa.int32())
        elif name == "created_us":
            arrays["created_at"] = pa.array(value, pa.timestamp("us", tz="UTC"))
        elif name in ("request_id", *TEXT_COLUMNS):
            arrays[name] = pa.array(value, pa.string())
        else:
            arrays[name] = pa.array(value)
    return pa.table(arrays)
