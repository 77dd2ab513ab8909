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
from attnfast._arrays import float32_rows
from attnfast._store_columns import OPTIONAL_COLUMNS, THINK_PHASES, ints, normalise_columns
from attnfast._store_tables import as_arrow, as_numpy
from attnfast._time import to_us
from attnfast.exceptions import InvalidInputError, ShapeError, StoreError
from attnfast.fingerprint import FINGERPRINT_DIM, ZONES
from attnfast.layout import Layout


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
        step_array = ints(steps, rows, "steps")
        ids: str | list[str]
        if isinstance(request_ids, str):
            ids = request_ids
        else:
            ids = request_ids.tolist() if isinstance(request_ids, np.ndarray) else list(request_ids)
            if len(ids) != rows:
                raise ShapeError(f"request_ids has {len(ids)} rows but fingerprints has {rows}")
        code = Layout.of(layout).code
        count: int = self._store.append(
            ids, step_array, fps, code, normalise_columns(rows, columns)
        )
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
        return as_numpy(cols) if format == "numpy" else as_arrow(cols)

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


__all__ = ["OPTIONAL_COLUMNS", "THINK_PHASES", "FingerprintStore"]
