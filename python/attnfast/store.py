"""The fingerprint store: a WAL-mode SQLite database in the seed's schema version 1, written by a
background thread in Rust.

>>> import numpy as np, attnfast, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "fp.db")
>>> with attnfast.FingerprintStore(path) as store:
...     store.append("req-1", np.arange(3), np.full((3, 20), 0.05, np.float32))
...     store.flush()
...     store.count()
3
3

Design and decisions: docs/store.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from attnfast import _core
from attnfast._arrays import float32_rows, to_numpy
from attnfast._time import to_us, to_us_array
from attnfast.exceptions import DtypeError, InvalidInputError, ShapeError, StoreError
from attnfast.fingerprint import FINGERPRINT_DIM, ZONES
from attnfast.layout import Layout

THINK_PHASES: tuple[str, ...] = ("think", "output", "unknown")
_NULL_CODE = 255

_TEXT_COLUMNS = ("session_id", "token_text", "model_id")
_INT_COLUMNS = ("token_id", "segment_idx", "cluster_id")
_REAL_COLUMNS = (
    "manifold_confidence",
    "cluster_probability",
    "router_entropy",
    "expert_load_balance",
    "sink_token_mass",
)
_LIST_COLUMNS = {
    "top_k_positions": np.int32,
    "top_k_scores": np.float32,
    "capture_layer_ids": np.int32,
    "top_expert_ids": np.int32,
}
OPTIONAL_COLUMNS: tuple[str, ...] = (
    "created_at",
    *_TEXT_COLUMNS,
    *_INT_COLUMNS,
    "think_phase",
    "manifold_zone",
    *_REAL_COLUMNS,
    *_LIST_COLUMNS,
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
        values = _ints([0 if v is None else v for v in value], rows, what)
        return values, valid
    return _ints(value, rows, what), np.ones(rows, dtype=np.bool_)


def _ints(value: Any, rows: int, what: str) -> NDArray[np.int64]:
    arr = _rows_of(value, rows, what)
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
    parts: list[NDArray[Any]] = [
        np.zeros(0, dtype) if v is None else np.asarray(v, dtype=dtype).reshape(-1) for v in items
    ]
    offsets = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum([len(p) for p in parts], out=offsets[1:])
    values = np.concatenate(parts) if parts else np.zeros(0, dtype)
    return offsets, np.ascontiguousarray(values, dtype=dtype)


def _columns(rows: int, given: dict[str, Any]) -> dict[str, Any]:
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
        elif name in _TEXT_COLUMNS:
            out[name] = _texts(value, rows, name)
        elif name in _INT_COLUMNS:
            out[name] = _nullable_ints(value, rows, name)
        elif name in _REAL_COLUMNS:
            out[name] = _reals(value, rows, name)
        elif name == "think_phase":
            out[name] = _codes(value, rows, THINK_PHASES, name)
        elif name == "manifold_zone":
            out["zone"] = _codes(value, rows, ZONES, name)
        else:
            out[name] = _lists(value, rows, _LIST_COLUMNS[name], name)
    return out


def _named(codes: NDArray[np.uint8], valid: NDArray[np.bool_], names: Sequence[str]) -> list[Any]:
    return [names[c] if ok else None for c, ok in zip(codes.tolist(), valid.tolist(), strict=True)]


def _unpack_lists(blobs: list[bytes | None], dtype: type) -> list[Any]:
    return [
        None if b is None else np.frombuffer(b, dtype=np.dtype(dtype).newbyteorder("<"))
        for b in blobs
    ]


class FingerprintStore:
    """A fingerprint database, open for appending and reading.

    ``append`` checks rows in the calling thread (bad input raises there, naming the row) and
    queues them for a writer thread; ``flush`` returns once everything appended before it is
    committed, which is the acknowledgement; ``close`` (or leaving the ``with`` block) flushes.
    Safe to share between threads. Several processes may append to one file at once.

    Args:
        path: the database file; created with the schema if missing. A database made with the
            seed's ``schema.sql`` is converted in place, in one transaction.
        synchronous: ``"normal"`` (default; a killed process loses nothing acknowledged) or
            ``"full"`` (also survives power loss, one fsync per commit).
        busy_timeout: seconds a write waits for another process's transaction.
        max_queued_rows: rows appended but not yet written, at most; ``append`` waits beyond.
        on_duplicate: a row whose ``(request_id, step)`` is stored already is never written
            over. ``"skip"`` counts it in ``stats()``; ``"error"`` also makes the next
            ``flush`` raise :class:`DuplicateStepError` naming it.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Literal["normal", "full"] = "normal",
        busy_timeout: float = 60.0,
        max_queued_rows: int = 262_144,
        on_duplicate: Literal["skip", "error"] = "skip",
    ) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise StoreError(f"{self.path} is a folder; give the database file's path")
        if not self.path.parent.exists():
            raise StoreError(f"the folder of {self.path} does not exist")
        self._store = _core.Store(
            str(self.path), synchronous, float(busy_timeout), int(max_queued_rows), on_duplicate
        )

    # -- writing -------------------------------------------------------------------------------

    def append(
        self,
        request_ids: str | Sequence[str] | NDArray[Any],
        steps: int | Sequence[int] | NDArray[Any],
        fingerprints: Any,
        *,
        layout: Layout | str | int = "v1",
        **columns: Any,
    ) -> int:
        """Queues rows; returns how many.

        ``request_ids`` is one id for every row or one per row; ``steps`` are integers;
        ``fingerprints`` is ``(20,)`` or ``(T, 20)``. Optional columns (one value for every row,
        or one per row): ``created_at`` (datetime, unix seconds or datetime64; default now),
        ``session_id``, ``token_id``, ``token_text``, ``think_phase``, ``segment_idx``,
        ``manifold_zone`` (default: the seed's zone rules, for v1 vectors),
        ``manifold_confidence``, ``cluster_id``, ``cluster_probability``, ``router_entropy``,
        ``expert_load_balance``, ``sink_token_mass``, ``model_id``, and the lists
        ``top_k_positions``, ``top_k_scores``, ``capture_layer_ids``, ``top_expert_ids``
        (a ``(T, k)`` array or a list of arrays).
        """
        fps = float32_rows(fingerprints, "fingerprints", FINGERPRINT_DIM)
        rows = fps.shape[0]
        step_array = _ints(steps, rows, "steps")
        ids: str | list[str]
        if isinstance(request_ids, str):
            ids = request_ids
        else:
            ids = request_ids.tolist() if isinstance(request_ids, np.ndarray) else list(request_ids)
            if len(ids) != rows:
                raise ShapeError(f"request_ids has {len(ids)} rows but fingerprints has {rows}")
        code = Layout.of(layout).code
        count: int = self._store.append(ids, step_array, fps, code, _columns(rows, columns))
        return count

    def flush(self) -> None:
        """Returns once every row appended before the call is committed. Raises the first
        write failure (or duplicate, under ``on_duplicate="error"``) since the last flush."""
        self._store.flush()

    def close(self) -> None:
        """Flushes and stops the writer. Closing twice is fine."""
        self._store.close()

    @property
    def closed(self) -> bool:
        return bool(self._store.closed)

    def __enter__(self) -> FingerprintStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- reading -------------------------------------------------------------------------------

    def sql(self, query: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Runs one read-only SQL statement (``?`` placeholders, ``params`` in order) on the
        store's own connection and returns the rows as dicts: the seed's queries and views
        work unchanged. Use this, not Python's ``sqlite3``, while the store is open: two SQLite
        libraries in one process break each other's file locks (docs/store.md)."""
        names, rows = self._store.sql(query, list(params))
        return [dict(zip(names, row, strict=True)) for row in rows]

    def _scalar(self, query: str, params: Sequence[Any] = ()) -> Any:
        _, rows = self._store.sql(query, list(params))
        return rows[0][0]

    def count(self) -> int:
        """Rows stored (committed), by every writer: a counter kept with the rows, so this
        costs nothing at any size."""
        return int(self._scalar("SELECT value FROM af_meta WHERE key = 'rows'"))

    def read(
        self,
        *,
        since: Any = None,
        until: Any = None,
        request_id: str | None = None,
        zone: str | None = None,
        cluster_id: int | None = None,
        layout: Layout | str | int | None = None,
        limit: int | None = None,
        newest_first: bool = False,
        format: Literal["arrow", "numpy"] = "arrow",
    ) -> Any:
        """Rows matching every filter given, oldest first (``newest_first`` reverses; a
        ``limit`` then keeps the newest). Rows of one ``request_id`` come in step order.

        ``since``/``until`` take datetimes, unix seconds, ISO text or durations (``"24h"``:
        that long ago); ``since`` is inclusive, ``until`` exclusive. Returns a pyarrow Table
        (``format="arrow"``) or a dict of numpy arrays and lists (``format="numpy"``), with
        the seed's column names.
        """
        if zone is not None and zone not in ZONES:
            raise InvalidInputError(f"zone must be one of {', '.join(ZONES)}; got {zone!r}")
        if limit is not None and (isinstance(limit, bool) or int(limit) < 0):
            raise InvalidInputError(f"limit must be a non-negative integer, got {limit!r}")
        cols = self._store.read(
            None if since is None else to_us(since, "since"),
            None if until is None else to_us(until, "until"),
            request_id,
            None if zone is None else ZONES.index(zone),
            cluster_id,
            None if layout is None else Layout.of(layout).code,
            None if limit is None else int(limit),
            newest_first,
        )
        return _as_numpy(cols) if format == "numpy" else _as_arrow(cols)

    def requests(self, limit: int | None = None) -> list[dict[str, Any]]:
        """``request_summary`` rows, most recently started first."""
        return self.sql(
            "SELECT * FROM request_summary ORDER BY started_at DESC, rowid DESC LIMIT ?",
            [-1 if limit is None else int(limit)],
        )

    def stats(self) -> dict[str, Any]:
        """Counts for dashboards: rows, requests, rows per zone, duplicates refused (by every
        writer), the time span, file sizes, and this handle's writer counters."""
        # First and last times: within the first and last hours' id ranges, not a table scan.
        first, last = (
            self._scalar(
                f"SELECT {fn}(f.created_us) FROM af_hour_ids h "
                "JOIN af_fingerprints f ON f.id BETWEEN h.min_id AND h.max_id "
                f"WHERE h.hour = (SELECT {fn}(hour) FROM af_hour_ids)"
            )
            for fn in ("min", "max")
        )
        rows = self.count()
        requests = self._scalar("SELECT count(*) FROM af_requests")
        zones = dict.fromkeys(ZONES, 0)
        for row in self.sql("SELECT zone, sum(count) AS n FROM af_zone_hourly GROUP BY zone"):
            zones[ZONES[row["zone"]]] = int(row["n"])
        meta = {r["key"]: r["value"] for r in self.sql("SELECT key, value FROM af_meta")}
        written, duplicates, transactions, failed, queued = self._store.writer_stats()
        wal = self.path.with_name(self.path.name + "-wal")
        return {
            "path": str(self.path),
            "rows": int(rows),
            "requests": int(requests),
            "zones": zones,
            "duplicates_rejected": int(meta.get("duplicates_rejected", 0)),
            "first_created_us": first,
            "last_created_us": last,
            "db_bytes": self.path.stat().st_size,
            "wal_bytes": wal.stat().st_size if wal.exists() else 0,
            "migrated_seed_rows": int(meta.get("migrated_seed_rows", 0)),
            "writer": {
                "rows_written": written,
                "duplicates_rejected": duplicates,
                "transactions": transactions,
                "failed_rows": failed,
                "queued_rows": queued,
            },
        }

    def export_parquet(
        self,
        out_dir: str | Path,
        *,
        since: Any = None,
        until: Any = None,
        overwrite: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Writes the rows (optionally a time window) as Parquet under ``out_dir``, one folder
        per UTC day (``day=YYYY-MM-DD/part-0.parquet``, hive style). Refuses a folder that
        holds an earlier export unless ``overwrite``. Returns ``{"rows", "files"}``."""
        rows, files = self._store.export_parquet(
            str(out_dir),
            None if since is None else to_us(since, "since"),
            None if until is None else to_us(until, "until"),
            overwrite,
            progress,
        )
        return {
            "rows": rows,
            "files": [{"day": d, "path": p, "rows": n} for d, p, n in files],
        }


def _as_numpy(cols: dict[str, Any]) -> dict[str, Any]:
    """Nullable numeric columns become float arrays with NaN, or object arrays for ints."""
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
        elif name in _LIST_COLUMNS:
            out[name] = _unpack_lists(value, _LIST_COLUMNS[name])
        elif name == "layout":
            out["schema_version"] = value
        elif name == "created_us":
            out["created_at"] = value.astype("datetime64[us]")
        else:
            out[name] = value
    return out


def _as_arrow(cols: dict[str, Any]) -> Any:
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
        elif name in _LIST_COLUMNS:
            item = pa.float32() if _LIST_COLUMNS[name] is np.float32 else pa.int32()
            arrays[name] = pa.array(_unpack_lists(value, _LIST_COLUMNS[name]), pa.list_(item))
        elif name == "layout":
            arrays["schema_version"] = pa.array(value, pa.int32())
        elif name == "created_us":
            arrays["created_at"] = pa.array(value, pa.timestamp("us", tz="UTC"))
        elif name in ("request_id", *_TEXT_COLUMNS):
            arrays[name] = pa.array(value, pa.string())
        else:
            arrays[name] = pa.array(value)
    return pa.table(arrays)


__all__ = ["OPTIONAL_COLUMNS", "THINK_PHASES", "FingerprintStore"]
