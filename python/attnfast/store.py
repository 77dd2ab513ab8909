"""The fingerprint store: a WAL-mode SQLite database in the seed's schema version 1, written by a
background thread in Rust.

>>> import numpy as np, attnfast, tempfile, os
>>> from attnfast.synthetic import fingerprints
>>> path = os.path.join(tempfile.mkdtemp(), "fp.db")
>>> with attnfast.FingerprintStore(path) as store:
...     store.append("req-1", np.arange(3), fingerprints(3))
...     store.write("req-1", [2, 3], fingerprints(2))
...     store.count()
3
Written(stored=1, duplicates=1, duplicate_rows=(('req-1', 2),))
4

Design and decisions: docs/store.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from attnfast import _core
from attnfast._arrays import float32_rows
from attnfast._store_columns import OPTIONAL_COLUMNS, THINK_PHASES, ints, normalise_columns
from attnfast._store_tables import as_arrow, as_numpy
from attnfast._time import check_window, to_us
from attnfast.exceptions import InvalidInputError, MissingFileError, ShapeError, StoreError
from attnfast.fingerprint import FINGERPRINT_DIM, ZONES
from attnfast.layout import Layout


@dataclass(frozen=True)
class Written:
    """What became of rows once committed: ``stored``, and ``duplicates``, refused because
    their ``(request_id, step)`` was stored already (the stored rows are kept; the first
    few refused are named in ``duplicate_rows``). Adding two gives their sum."""

    stored: int = 0
    duplicates: int = 0
    duplicate_rows: tuple[tuple[str, int], ...] = ()

    @classmethod
    def of(cls, outcome: tuple[int, int, list[tuple[str, int]]]) -> Written:
        stored, duplicates, first = outcome
        return cls(int(stored), int(duplicates), tuple((str(r), int(s)) for r, s in first))

    @classmethod
    def wait(cls, tickets: Iterable[Any]) -> Written:
        """The sum of what a set of appends became (``_core.Ticket`` objects)."""
        total = cls()
        for ticket in tickets:
            total = total + cls.of(ticket.wait())
        return total

    def __add__(self, other: Written) -> Written:
        named = (self.duplicate_rows + other.duplicate_rows)[:5]
        return Written(self.stored + other.stored, self.duplicates + other.duplicates, named)

    def summary(self) -> str:
        """``"12 stored, 3 refused as duplicates (first: ('r', 4))"``."""
        text = f"{self.stored:,} stored"
        if self.duplicates:
            text += f", {self.duplicates:,} refused as duplicates of stored (request_id, step)"
        if self.duplicate_rows:
            first = ", ".join(f"({r!r}, {s})" for r, s in self.duplicate_rows[:3])
            text += f" (first: {first})"
        return text


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
        init: add attnfast's tables to an SQLite database that holds other tables. Without
            it such a database is refused with :class:`StoreError` and left as it is.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Literal["normal", "full"] = "normal",
        busy_timeout: float = 60.0,
        max_queued_rows: int = 262_144,
        on_duplicate: Literal["skip", "error"] = "skip",
        init: bool = False,
    ) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise StoreError(f"{self.path} is a folder; give the database file's path")
        if not self.path.parent.is_dir():
            raise MissingFileError(f"the folder of {self.path} does not exist")
        self._store = _core.Store(
            str(self.path),
            synchronous,
            float(busy_timeout),
            int(max_queued_rows),
            on_duplicate,
            bool(init),
        )

    @property
    def opened(self) -> dict[str, Any]:
        """What opening did: ``migrated_rows`` (converted from a seed database),
        ``quarantined_rows`` (unreadable rows an earlier attnfast let in, moved to
        ``af_quarantine``), ``upgraded_from`` (the physical schema upgraded, or None)."""
        migrated, quarantined, upgraded = self._store.opened()
        return {
            "migrated_rows": migrated,
            "quarantined_rows": quarantined,
            "upgraded_from": upgraded,
        }

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
        (a ``(T, k)`` array or a list of arrays), and ``invalid``: rows you know break their
        layout's rules, stored flagged with zone ``unknown`` instead of refused.

        Every other vector must be one of its layout (docs/store.md); one that is not is
        refused with :class:`InvalidInputError` naming the row, and nothing of the call is
        stored.
        """
        count: int = self._store.append(
            *self._arguments(request_ids, steps, fingerprints, layout, columns)
        )
        return count

    def write(
        self,
        request_ids: str | Sequence[str] | NDArray[Any],
        steps: int | Sequence[int] | NDArray[Any],
        fingerprints: Any,
        *,
        layout: Layout | str | int = "v1",
        **columns: Any,
    ) -> Written:
        """As :meth:`append`, and returns once the rows are committed, with what became of
        them: how many were stored and how many were refused as duplicates."""
        return Written.of(
            self._submit(request_ids, steps, fingerprints, layout=layout, **columns).wait()
        )

    def _submit(
        self,
        request_ids: str | Sequence[str] | NDArray[Any],
        steps: int | Sequence[int] | NDArray[Any],
        fingerprints: Any,
        *,
        layout: Layout | str | int = "v1",
        **columns: Any,
    ) -> Any:
        """As :meth:`append`; returns a ``_core.Ticket`` whose ``wait()`` gives the outcome,
        so that a caller can go on while the writer commits."""
        return self._store.append_tracked(
            *self._arguments(request_ids, steps, fingerprints, layout, columns)
        )

    @staticmethod
    def _arguments(
        request_ids: Any, steps: Any, fingerprints: Any, layout: Any, columns: dict[str, Any]
    ) -> tuple[Any, ...]:
        fps = float32_rows(fingerprints, "fingerprints", FINGERPRINT_DIM)
        rows = fps.shape[0]
        step_array = ints(steps, rows, "steps")
        ids: str | list[str]
        if isinstance(request_ids, str):
            ids = request_ids
        elif isinstance(request_ids, np.ndarray | Sequence):
            ids = request_ids.tolist() if isinstance(request_ids, np.ndarray) else list(request_ids)
            if len(ids) != rows:
                raise ShapeError(f"request_ids has {len(ids)} rows but fingerprints has {rows}")
        else:
            raise InvalidInputError(
                "request_ids must be one string or a sequence of strings (one per row), "
                f"got {type(request_ids).__name__}"
            )
        return ids, step_array, fps, Layout.of(layout).code, normalise_columns(rows, columns)

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

    def count(
        self,
        *,
        since: Any = None,
        until: Any = None,
        request_id: str | None = None,
        zone: str | None = None,
        cluster_id: int | None = None,
        layout: Layout | str | int | None = None,
    ) -> int:
        """Rows stored (committed, by every writer) that match every filter given (the
        filters of :meth:`read`). Without filters it reads a counter kept with the rows, so it
        costs nothing at any size; with them it counts the rows that can match."""
        filters = (since, until, request_id, zone, cluster_id, layout)
        if all(f is None for f in filters):
            return int(self._scalar("SELECT value FROM af_meta WHERE key = 'rows'"))
        return int(
            self._store.count(*self._filters(since, until, request_id, zone, cluster_id, layout))
        )

    @staticmethod
    def _filters(
        since: Any, until: Any, request_id: Any, zone: Any, cluster_id: Any, layout: Any
    ) -> tuple[Any, ...]:
        if zone is not None and zone not in ZONES:
            raise InvalidInputError(f"zone must be one of {', '.join(ZONES)}; got {zone!r}")
        if cluster_id is not None and (
            isinstance(cluster_id, bool) or not isinstance(cluster_id, int | np.integer)
        ):
            raise InvalidInputError(f"cluster_id must be an integer, got {cluster_id!r}")
        if request_id is not None and not isinstance(request_id, str):
            raise InvalidInputError(f"request_id must be a string, got {request_id!r}")
        since_us = None if since is None else to_us(since, "since")
        until_us = None if until is None else to_us(until, "until")
        check_window(since_us, until_us)
        return (
            since_us,
            until_us,
            request_id,
            None if zone is None else ZONES.index(zone),
            cluster_id,
            None if layout is None else Layout.of(layout).code,
        )

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
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int | np.integer) or limit < 0
        ):
            raise InvalidInputError(f"limit must be a non-negative integer, got {limit!r}")
        if format not in ("arrow", "numpy"):
            raise InvalidInputError(f"format must be 'arrow' or 'numpy', got {format!r}")
        since_us, until_us, request, zone_code, cluster, layout_code = self._filters(
            since, until, request_id, zone, cluster_id, layout
        )
        cols = self._store.read(
            since_us,
            until_us,
            request,
            zone_code,
            cluster,
            layout_code,
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
        """Counts for dashboards: rows, requests, rows per layout and per zone, rows without a
        zone, rows flagged invalid, duplicates refused (by every writer), rows quarantined,
        the time span, file sizes, and this handle's writer counters."""
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
        requests = self._scalar("SELECT count(*) FROM af_request_stats")
        zones = dict.fromkeys(ZONES, 0)
        for row in self.sql("SELECT zone, sum(count) AS n FROM af_zone_hourly GROUP BY zone"):
            zones[ZONES[row["zone"]]] = int(row["n"])
        meta = {r["key"]: r["value"] for r in self.sql("SELECT key, value FROM af_meta")}
        by_layout = {
            layout.value: int(meta.get(f"rows_layout:{layout.code}", 0)) for layout in Layout
        }
        written, duplicates, transactions, failed, queued = self._store.writer_stats()
        wal = self.path.with_name(self.path.name + "-wal")
        return {
            "path": str(self.path),
            "rows": int(rows),
            "requests": int(requests),
            "rows_by_layout": by_layout,
            "zones": zones,
            "unzoned_rows": int(rows) - sum(zones.values()),
            "invalid_rows": int(meta.get("invalid_rows", 0)),
            "duplicates_rejected": int(meta.get("duplicates_rejected", 0)),
            "quarantined_rows": int(self._scalar("SELECT count(*) FROM af_quarantine")),
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
        since_us = None if since is None else to_us(since, "since")
        until_us = None if until is None else to_us(until, "until")
        check_window(since_us, until_us)
        rows, files = self._store.export_parquet(
            str(out_dir),
            since_us,
            until_us,
            overwrite,
            progress,
        )
        return {
            "rows": rows,
            "files": [{"day": d, "path": p, "rows": n} for d, p, n in files],
        }


__all__ = ["OPTIONAL_COLUMNS", "THINK_PHASES", "FingerprintStore", "Written"]
