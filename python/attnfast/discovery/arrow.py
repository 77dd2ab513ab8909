"""Classification of Arrow data: exported Parquet at any scale, on one process or on an
engine that hands out Arrow batches (Ray Data's ``map_batches``; docs/discovery.md).

The classifier of a run is loaded once per process and cached by run folder and run id: a
worker of an engine loads it from the artifact folder the first time it is asked, and nothing
holding the models is ever pickled (the Rust classifier cannot be)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from attnfast.discovery.classifier import SidecarClassifier
from attnfast.exceptions import InvalidInputError, ShapeError
from attnfast.fingerprint import FINGERPRINT_DIM
from attnfast.layout import Layout

_CACHE: dict[Path, SidecarClassifier] = {}
_CACHE_LOCK = threading.Lock()

#: Columns that classify_arrow appends.
OUTPUT_COLUMNS = (
    "cluster_id",
    "cluster_probability",
    "cluster_label",
    "x",
    "y",
    "zone",
    "zone_confidence",
)


def classifier_for(discovery_dir: str | Path | SidecarClassifier) -> SidecarClassifier:
    """The process's classifier of ``discovery_dir`` (loaded on first use)."""
    if isinstance(discovery_dir, SidecarClassifier):
        return discovery_dir
    key = Path(discovery_dir).resolve()
    with _CACHE_LOCK:
        found = _CACHE.get(key)
        if found is None:
            found = _CACHE[key] = SidecarClassifier(key)
    return found


def fingerprint_values(table: Any, column: str = "fingerprint") -> np.ndarray:
    """The ``(T, 20)`` float32 fingerprints of an Arrow table or batch column (fixed-size or
    variable lists of 20 numbers), without a copy where Arrow allows."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not isinstance(table, pa.Table | pa.RecordBatch):
        raise InvalidInputError(
            f"classify_arrow takes a pyarrow Table or RecordBatch, got {type(table).__name__} "
            "(pyarrow.Table.from_pandas converts a DataFrame)"
        )
    if column not in table.column_names:
        raise InvalidInputError(
            f"the table has no {column!r} column (columns: {', '.join(table.column_names)})"
        )
    col = table[column]
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if col.null_count:
        raise InvalidInputError(f"column {column!r} has {col.null_count} null fingerprint(s)")
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(lengths != FINGERPRINT_DIM)
        if len(bad):
            raise ShapeError(
                f"row {bad[0]} of {column!r} holds {lengths[bad[0]]} values, not {FINGERPRINT_DIM}"
            )
    elif not pa.types.is_fixed_size_list(col.type) or col.type.list_size != FINGERPRINT_DIM:
        raise ShapeError(f"column {column!r} is {col.type}, not a list of {FINGERPRINT_DIM} floats")
    values = col.flatten().cast(pa.float32()).to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(values.reshape(-1, FINGERPRINT_DIM))


def _rows_of_the_run(table: Any, layout: str) -> np.ndarray | None:
    """Which rows to classify when the table says (``attnfast export`` columns): rows of the
    run's layout (``schema_version``) not flagged ``invalid``. None: every row."""
    names = table.column_names
    if "schema_version" not in names and "invalid" not in names:
        return None
    keep = np.ones(table.num_rows, dtype=bool)
    if "schema_version" in names:
        codes = np.asarray(table["schema_version"].to_numpy(zero_copy_only=False))
        keep &= codes == Layout.of(layout).code
    if "invalid" in names:
        keep &= ~np.asarray(table["invalid"].to_numpy(zero_copy_only=False), dtype=bool)
    return keep


def classify_arrow(
    table: Any, discovery_dir: str | Path | SidecarClassifier, *, column: str = "fingerprint"
) -> Any:
    """``table`` (a pyarrow Table or RecordBatch with a ``fingerprint`` column, as
    ``attnfast export`` writes it) with the classification columns appended:
    ``cluster_id``, ``cluster_probability``, ``cluster_label``, ``x``, ``y``, ``zone``,
    ``zone_confidence``. Existing columns of those names are replaced. Where the table has
    ``schema_version`` or ``invalid`` (an export), rows of another layout than the run's and
    rows flagged invalid get nulls; every other row must be a fingerprint of the run's
    layout."""
    import pyarrow as pa

    classifier = classifier_for(discovery_dir)
    fps = fingerprint_values(table, column)
    keep = _rows_of_the_run(table, classifier.stats["layout"])
    out = classifier.classify_batch(fps if keep is None else fps[keep])
    mask = None if keep is None else ~keep

    def spread(values: np.ndarray, kind: Any, fill: Any) -> Any:
        if keep is None:
            return pa.array(values, kind)
        full = np.full(len(keep), fill, dtype=values.dtype)
        full[keep] = values
        return pa.array(full, kind, mask=mask)

    values = {
        "cluster_id": spread(out["cluster_id"], pa.int32(), -1),
        "cluster_probability": spread(out["cluster_probability"], pa.float32(), 0),
        "cluster_label": spread(out["cluster_label"], pa.string(), None),
        "x": spread(out["x"], pa.float32(), 0),
        "y": spread(out["y"], pa.float32(), 0),
        "zone": spread(out["zone"], pa.string(), None),
        "zone_confidence": spread(np.asarray(out["confidence"], np.float32), pa.float32(), 0),
    }
    keep_names = [n for n in table.column_names if n not in values]
    arrays = [table[n] for n in keep_names] + list(values.values())
    names = keep_names + list(values)
    if isinstance(table, pa.RecordBatch):
        return pa.RecordBatch.from_arrays(arrays, names=names)
    return pa.Table.from_arrays(arrays, names=names)


class ArrowClassifier:
    """A callable for engines' ``map_batches`` (Ray Data: ``batch_format="pyarrow"``): holds
    only the folder's path until it runs in a worker, then loads the classifier there."""

    def __init__(self, discovery_dir: str | Path, column: str = "fingerprint") -> None:
        self.discovery_dir = str(discovery_dir)
        self.column = column

    def __call__(self, batch: Any) -> Any:
        return classify_arrow(batch, self.discovery_dir, column=self.column)
