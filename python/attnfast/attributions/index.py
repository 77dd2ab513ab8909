"""The inverted index of a database: the core's roaring bitmaps, loaded from ``af_index``, kept up
to date from ``component_activations`` (the table plain SQL reads), and rebuilt when that table
no longer matches what the bitmaps were built from.

The index remembers the largest rowid of the table it has read (``af_state``). Rows added since
(by attnfast in another process, or by the seed's code) are read by rowid before each query.
Rows deleted or changed mean a rebuild. In attnfast's databases a trigger counts deletions and
updates, so opening compares two numbers; in the seed's (whose schema attnfast does not touch)
the table's row count is compared instead, which costs a scan of its smallest index (about a
second per 10M rows)."""

from __future__ import annotations

import sqlite3

import numpy as np

from attnfast import _core

#: Keys persisted per statement batch; rows read per batch.
_BATCH = 2000
_ROWS = 1 << 18

#: Count deletions and updates of component_activations (attnfast's databases only).
TRIGGERS = tuple(
    f"CREATE TRIGGER IF NOT EXISTS af_component_activations_{event.lower()} "
    f"AFTER {event} ON component_activations BEGIN "
    "UPDATE af_state SET value = CAST(value AS INTEGER) + 1 WHERE key = 'index_changes'; END"
    for event in ("DELETE", "UPDATE")
)


class Index:
    """One connection's view of the index; every method runs inside the caller's transaction."""

    def __init__(self, counted: bool) -> None:
        #: Whether the database's triggers count deletions (attnfast's form).
        self.counted = counted
        self.bitmaps = _core.ComponentIndex()
        self.watermark = 0  # largest rowid of component_activations read
        self.check = 0  # deletions seen (counted) or rows read (seed databases)
        self.rebuilt = False

    def _current_check(self, conn: sqlite3.Connection) -> int:
        if self.counted:
            row = conn.execute("SELECT value FROM af_state WHERE key = 'index_changes'").fetchone()
            return int(row[0]) if row else 0
        return int(conn.execute("SELECT count(*) FROM component_activations").fetchone()[0])

    def open(self, conn: sqlite3.Connection, own_tables: bool) -> None:
        """Loads the persisted bitmaps when they match the table, else rebuilds."""
        top = int(conn.execute("SELECT max(rowid) FROM component_activations").fetchone()[0] or 0)
        stored = None
        if own_tables:
            got = dict(
                conn.execute(
                    "SELECT key, value FROM af_state "
                    "WHERE key IN ('index_watermark', 'index_check')"
                ).fetchall()
            )
            if len(got) == 2:
                stored = int(got["index_watermark"]), int(got["index_check"])
        if stored is not None and stored[0] <= top:
            current = self._current_check(conn)
            if not self.counted:
                current -= conn.execute(
                    "SELECT count(*) FROM component_activations WHERE rowid > ?", (stored[0],)
                ).fetchone()[0]
            if current == stored[1]:
                for key, blob in conn.execute("SELECT component_key, prompts FROM af_index"):
                    self.bitmaps.load(key, blob)
                self.watermark, self.check = stored
                self.catch_up(conn)
                return
        self.rebuild(conn)

    def _read(self, conn: sqlite3.Connection, sql: str, args: tuple[int, ...]) -> int:
        """Adds ``(rowid, prompt_id, component_key)`` rows in batches; returns how many."""
        cur = conn.execute(sql, args)
        n = 0
        while rows := cur.fetchmany(_ROWS):
            self.bitmaps.add(
                np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows)),
                [r[2] for r in rows],
            )
            self.watermark = max(self.watermark, int(rows[-1][0]))
            n += len(rows)
        return n

    def rebuild(self, conn: sqlite3.Connection) -> None:
        """From the table, read in rowid order: a sequential scan (reading by key would jump
        through the table once per row)."""
        self.bitmaps = _core.ComponentIndex()
        self.watermark = 0
        self.check = self._current_check(conn)
        n = self._read(
            conn,
            "SELECT rowid, prompt_id, component_key FROM component_activations ORDER BY rowid",
            (),
        )
        if not self.counted:
            self.check = n
        self.rebuilt = True

    def catch_up(self, conn: sqlite3.Connection) -> int:
        """Reads the rows added since the watermark; returns how many."""
        n = self._read(
            conn,
            "SELECT rowid, prompt_id, component_key FROM component_activations WHERE rowid > ? "
            "ORDER BY rowid",
            (self.watermark,),
        )
        if not self.counted:
            self.check += n
        return n

    def persist(self, conn: sqlite3.Connection) -> int:
        """Writes the bitmaps of the keys that changed and the state; returns how many keys."""
        if self.rebuilt:
            conn.execute("DELETE FROM af_index")
        dirty = self.bitmaps.take_dirty()
        for i in range(0, len(dirty), _BATCH):
            conn.executemany(
                "INSERT INTO af_index (component_key, prompts) VALUES (?, ?) "
                "ON CONFLICT(component_key) DO UPDATE SET prompts = excluded.prompts",
                dirty[i : i + _BATCH],
            )
        conn.executemany(
            "INSERT INTO af_state (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [("index_watermark", str(self.watermark)), ("index_check", str(self.check))],
        )
        self.rebuilt = False
        return len(dirty)
