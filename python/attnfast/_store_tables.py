"""Rows read from the store, as the user asked for them: a pyarrow Table or numpy arrays,
with the seed's column names and zone and phase names instead of codes.

The Arrow schema is the one Parquet export writes (``rust/core/src/store/export.rs``), field
for field, so that ``query --format parquet`` files and exported files concatenate; a test
holds the two equal."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

from attnfast._store_columns import LIST_COLUMNS, THINK_PHASES
from attnfast.fingerprint import FINGERPRINT_DIM, ZONES


@cache
def arrow_schema() -> Any:
    """The store's rows as Arrow: the seed's columns, typed, and ``invalid``."""
    import pyarrow as pa

    def items(t: Any) -> Any:
        return pa.list_(pa.field("item", t))

    return pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("request_id", pa.string(), nullable=False),
            pa.field("step", pa.int64(), nullable=False),
            ("session_id", pa.string()),
            ("token_id", pa.int64()),
            ("token_text", pa.string()),
            ("think_phase", pa.string()),
            ("segment_idx", pa.int64()),
            pa.field(
                "fingerprint",
                pa.list_(pa.field("item", pa.float32(), nullable=False), FINGERPRINT_DIM),
                nullable=False,
            ),
            ("manifold_zone", pa.string()),
            ("manifold_confidence", pa.float64()),
            ("cluster_id", pa.int64()),
            ("cluster_probability", pa.float64()),
            ("router_entropy", pa.float64()),
            ("expert_load_balance", pa.float64()),
            ("sink_token_mass", pa.float64()),
            ("top_k_positions", items(pa.int32())),
            ("top_k_scores", items(pa.float32())),
            ("capture_layer_ids", items(pa.int32())),
            ("top_expert_ids", items(pa.int32())),
            pa.field("schema_version", pa.int32(), nullable=False),
            ("model_id", pa.string()),
            pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field("invalid", pa.bool_(), nullable=False),
        ]
    )


# The core's column names that the seed's schema calls otherwise.
_SEED_NAMES = {"layout": "schema_version", "created_us": "created_at"}


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
        elif name == "created_us":
            out["created_at"] = value.astype("datetime64[us]")
        else:
            out[_SEED_NAMES.get(name, name)] = value
    return out


def as_arrow(cols: dict[str, Any]) -> Any:
    import pyarrow as pa

    schema = arrow_schema()
    arrays: dict[str, Any] = {}
    for name, value in cols.items():
        if isinstance(value, tuple):
            values, valid = value
            if name == "zone":
                arrays["manifold_zone"] = _named(values, valid, ZONES)
            elif name == "think_phase":
                arrays[name] = _named(values, valid, THINK_PHASES)
            else:
                arrays[name] = pa.array(values, mask=~valid)
        elif name == "fingerprint":
            flat = pa.array(value.reshape(-1), pa.float32())
            arrays[name] = pa.FixedSizeListArray.from_arrays(flat, type=schema.field(name).type)
        elif name in LIST_COLUMNS:
            arrays[name] = _unpack_lists(value, LIST_COLUMNS[name])
        else:
            arrays[_SEED_NAMES.get(name, name)] = value
    columns = [
        arrays[f.name]
        if isinstance(arrays[f.name], pa.Array) and arrays[f.name].type == f.type
        else pa.array(arrays[f.name], f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)
