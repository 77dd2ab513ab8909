"""``LocalAttrDB``: the seed's attributions database (seeds 001 and 002) with attnfast's edge
codec and roaring-bitmap index. See docs/attributions.md."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import sqlite3
import threading
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from attnfast.attributions.graph import AttributionGraph
from attnfast.attributions.index import TRIGGERS, Index
from attnfast.attributions.keys import check_keys, parse_key
from attnfast.attributions.schema import (
    OWN_TABLES,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    SEED_TABLES,
    Form,
    detect,
    tables,
)
from attnfast.exceptions import (
    GraphError,
    InvalidInputError,
    MissingFileError,
    StoreError,
)

#: Preview length of a prompt summary (the seed's).
PREVIEW_TOKENS = 10
#: Ids per ``IN (...)`` list.
_IN_BATCH = 500


@dataclass(frozen=True)
class PromptRecord:
    """A stored prompt. ``tokens`` is None for seed 002's form (token ids only)."""

    id: int
    tokens: list[str] | None
    token_ids: list[int] | None
    graph: AttributionGraph | None
    output_probs: dict[str, float] = field(default_factory=dict)

    @property
    def pairs_json(self) -> str | None:
        """The graph as the seed's pairs JSON (a string), as the seed's ``get_prompt`` gave."""
        return None if self.graph is None else json.dumps(self.graph.to_seed_pairs())

    @property
    def labels(self) -> list[str]:
        """Token strings, or the token ids as strings when only those are stored."""
        if self.tokens is not None:
            return self.tokens
        return [str(t) for t in self.token_ids or []]


@dataclass(frozen=True)
class ComponentStats:
    component_key: str
    prompt_count: int
    mean_max_ci: float | None
    max_max_ci: float | None
    prompt_ids: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "component_key": self.component_key,
            "prompt_count": self.prompt_count,
            "mean_max_ci": self.mean_max_ci,
            "max_max_ci": self.max_max_ci,
            "prompt_ids": self.prompt_ids,
        }


@dataclass(frozen=True)
class MergeResult:
    added: int
    skipped: int
    id_map: dict[int, int]


def preview(labels: Sequence[str]) -> str:
    """The seed's preview: the first ten tokens joined, ``...`` if there are more."""
    text = "".join(labels[:PREVIEW_TOKENS])
    return text + "..." if len(labels) > PREVIEW_TOKENS else text


def prompt_digest(token_ids: Sequence[int] | None, tokens: Sequence[str]) -> str:
    """What makes generation resumable: the same tokens give the same digest."""
    what = {"ids": list(token_ids)} if token_ids is not None else {"tokens": list(tokens)}
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()


def _gzip_json(value: Any) -> bytes:
    return gzip.compress(json.dumps(value).encode(), mtime=0)


def _gunzip_json(blob: bytes, what: str) -> Any:
    try:
        raw = gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else bytes(blob)
        return json.loads(raw)
    except (OSError, EOFError, zlib.error, ValueError) as e:
        raise StoreError(f"{what} is not gzip-compressed JSON ({e})") from None


def _check_id(prompt_id: object) -> int:
    if isinstance(prompt_id, bool) or not isinstance(prompt_id, int) or prompt_id < 1:
        raise InvalidInputError(f"a prompt id is an integer >= 1, got {prompt_id!r}")
    return prompt_id


class LocalAttrDB:
    """An attributions database: a context manager over one SQLite file in WAL mode.

    Opens attnfast's databases and the seed's in both forms (``prompts(tokens, pairs)`` and
    ``prompts(token_ids)``); on the seed's it reads and searches but never writes their
    tables. Several processes may write one database at once."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        readonly: bool = False,
        timeout: float = 30.0,
    ) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise InvalidInputError(f"{self.path} is a folder, not a database file")
        exists = self.path.exists()
        if not exists and (readonly or not create):
            raise MissingFileError(f"no attributions database at {self.path}")
        if not exists and not self.path.absolute().parent.is_dir():
            raise MissingFileError(f"{self.path}: the folder {self.path.parent} does not exist")
        self.readonly = readonly or (exists and not os.access(self.path, os.W_OK))
        uri = f"file:{self.path.absolute()}?mode={'ro' if self.readonly else 'rwc'}"
        try:
            self._conn = sqlite3.connect(
                uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False
            )
            self._conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            self.form = detect(self._conn)
        except sqlite3.DatabaseError as e:
            self._close_quietly()
            raise StoreError(f"{self.path} is not a readable SQLite database ({e})") from None
        self._lock = threading.RLock()
        self._index: Index | None = None
        self._closed = False
        if not self.readonly:
            if self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
                raise StoreError(f"{self.path}: cannot switch the database to WAL mode")
            self._conn.execute("PRAGMA synchronous = NORMAL")
            if self.form is Form.empty:
                self.init_schema()

    def _close_quietly(self) -> None:
        with suppress(Exception):
            self._conn.close()

    # Life cycle ------------------------------------------------------------------------------
    def __enter__(self) -> LocalAttrDB:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Persists the index's changed bitmaps (when writable) and closes the file."""
        with self._lock:
            if self._closed:
                return
            try:
                index = self._index
                if index is not None and not self.readonly:
                    index.catch_up(self._conn)
                    if index.bitmaps.dirty_count or index.rebuilt:  # a reader writes nothing
                        with self._write():
                            self._own_tables_in(self._conn)
                            index.catch_up(self._conn)
                            index.persist(self._conn)
            finally:
                self._closed = True
                self._conn.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the attributions database {self.path} is closed")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``): all of it or nothing."""
        if self.readonly:
            raise StoreError(f"{self.path} is open read-only")
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        else:
            self._conn.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction, so that a query sees one snapshot."""
        self._conn.execute("BEGIN")
        try:
            yield self._conn
        finally:
            self._conn.execute("COMMIT")

    def _own_tables(self) -> bool:
        return "af_state" in tables(self._conn)

    @staticmethod
    def _own_tables_in(c: sqlite3.Connection) -> None:
        """attnfast's tables, added beside the seed's (whose tables stay as they are)."""
        for statement in filter(str.strip, OWN_TABLES.split(";")):
            c.execute(statement)

    def _require_own(self, what: str) -> None:
        if self.form is not Form.attnfast:
            raise StoreError(
                f"{self.path} was written by the seed's code ({self.form.value} form); attnfast "
                f"does not {what} in it. Merge it into an attnfast database instead: "
                f"`attnfast attributions merge --db NEW.db {self.path}`"
            )

    # Schema and meta -------------------------------------------------------------------------
    def init_schema(self) -> None:
        """Creates the tables (idempotent). On a seed database, only attnfast's own tables."""
        with self._lock:
            self._check_open()
            with self._write() as c:
                # Statement by statement: executescript would commit the transaction first.
                own = self.form in (Form.empty, Form.attnfast)
                if own:
                    for statement in filter(str.strip, SEED_TABLES.split(";")):
                        c.execute(statement)
                self._own_tables_in(c)
                if own:
                    c.execute(
                        "INSERT OR IGNORE INTO af_state (key, value) VALUES ('index_changes', '0')"
                    )
                    for statement in TRIGGERS:
                        c.execute(statement)
                if self.form is Form.empty:
                    c.execute(
                        "INSERT OR REPLACE INTO af_state (key, value) VALUES ('schema', ?)",
                        (f"{SCHEMA_NAME} {SCHEMA_VERSION}",),
                    )
                    self.form = Form.attnfast

    def set_meta(self, key: str, value: Any) -> None:
        """Stores ``value`` (JSON) gzip-compressed under ``key``, as the seed does."""
        if not isinstance(key, str) or not key:
            raise InvalidInputError(f"a meta key is a non-empty string, got {key!r}")
        try:
            blob = _gzip_json(value)
        except (TypeError, ValueError) as e:
            raise InvalidInputError(f"meta {key!r} is not JSON-serialisable ({e})") from None
        with self._lock:
            self._check_open()
            self._require_own("write meta")
            with self._write() as c:
                c.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (key, blob),
                )

    def get_meta(self, key: str, default: Any = None) -> Any:
        with self._lock:
            self._check_open()
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else _gunzip_json(row[0], f"meta {key!r}")

    def get_activation_contexts(self) -> dict[str, Any] | None:
        value = self.get_meta("activation_contexts")
        return value if value is None or isinstance(value, dict) else None

    def set_activation_contexts(self, contexts: Mapping[str, Any]) -> None:
        if not isinstance(contexts, Mapping):
            raise InvalidInputError("activation contexts are a mapping of component key to data")
        check_keys(contexts.keys())
        self.set_meta("activation_contexts", dict(contexts))

    def mean_ci(self) -> dict[str, float]:
        """Each component's mean importance from the activation contexts (empty without)."""
        ctx = self.get_activation_contexts() or {}
        out = {}
        for k, v in ctx.items():
            if isinstance(v, Mapping) and isinstance(v.get("mean_ci"), int | float):
                out[k] = float(v["mean_ci"])
        return out

    # Writing prompts -------------------------------------------------------------------------
    def add_prompt(
        self,
        tokens: Sequence[str],
        active_components: Mapping[str, tuple[float, Sequence[int]]],
        *,
        graph: AttributionGraph | None = None,
        token_ids: Sequence[int] | None = None,
        output_probs: Mapping[str, float] | None = None,
        digest: str | None = None,
        source: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> int:
        """Stores a prompt, its active components (``key -> (max_ci, positions)``) and optionally
        its graph, in one transaction; returns its id. Everything is checked first: a bad key,
        position or value stores nothing."""
        tokens, token_ids, rows = self._checked_prompt(tokens, active_components, token_ids)
        if graph is not None and not isinstance(graph, AttributionGraph):
            raise InvalidInputError("graph must be an AttributionGraph")
        probs = self._checked_probs(output_probs)
        with self._lock:
            self._check_open()
            self._require_own("add prompts")
            with self._write() as c:
                return self._insert(c, tokens, token_ids, rows, graph, probs, digest, source, extra)

    def _insert(
        self,
        c: sqlite3.Connection,
        tokens: list[str],
        token_ids: list[int] | None,
        rows: list[tuple[str, float, str]],
        graph: AttributionGraph | None,
        probs: dict[str, float],
        digest: str | None,
        source: str | None,
        extra: Mapping[str, Any] | None = None,
    ) -> int:
        cur = c.execute(
            "INSERT INTO prompts (tokens, token_ids) VALUES (?, ?)",
            (json.dumps(tokens), None if token_ids is None else json.dumps(token_ids)),
        )
        pid = int(cur.lastrowid or 0)
        c.executemany(
            "INSERT INTO component_activations (prompt_id, component_key, max_ci, positions) "
            "VALUES (?, ?, ?, ?)",
            [(pid, k, ci, pos) for k, ci, pos in rows],
        )
        if graph is not None:
            c.execute(
                "INSERT INTO af_graphs (prompt_id, graph, output_probs, source, extra) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    pid,
                    graph.blob,
                    json.dumps(probs),
                    source,
                    None if extra is None else _gzip_json(extra),
                ),
            )
        if digest is not None:
            try:
                c.execute(
                    "INSERT INTO af_prompt_digests (digest, prompt_id) VALUES (?, ?)", (digest, pid)
                )
            except sqlite3.IntegrityError:
                raise InvalidInputError(
                    f"a prompt with digest {digest[:12]}... is already stored"
                ) from None
        return pid

    @staticmethod
    def _checked_probs(probs: Mapping[str, float] | None) -> dict[str, float]:
        out: dict[str, float] = {}
        for k, v in (probs or {}).items():
            if not isinstance(v, int | float) or not 0.0 <= float(v) <= 1.0:
                raise InvalidInputError(f"output probability {k!r} = {v!r} is not within [0, 1]")
            out[str(k)] = float(v)
        return out

    @staticmethod
    def _checked_prompt(
        tokens: Sequence[str],
        active: Mapping[str, tuple[float, Sequence[int]]],
        token_ids: Sequence[int] | None,
    ) -> tuple[list[str], list[int] | None, list[tuple[str, float, str]]]:
        if isinstance(tokens, str) or not all(isinstance(t, str) for t in tokens):
            raise InvalidInputError("tokens must be a list of strings")
        tokens = list(tokens)
        if not tokens:
            raise InvalidInputError("a prompt needs at least one token")
        ids = None
        if token_ids is not None:
            ids = [int(t) for t in token_ids]
            if len(ids) != len(tokens) or any(t < 0 for t in ids):
                raise InvalidInputError(
                    f"token_ids must be {len(tokens)} non-negative integers, one per token"
                )
        if not isinstance(active, Mapping):
            raise InvalidInputError("active_components maps a component key to (max_ci, positions)")
        rows = []
        for key, value in active.items():
            parse_key(key)
            try:
                max_ci, positions = value
            except (TypeError, ValueError):
                raise InvalidInputError(
                    f"component {key!r}: expected (max_ci, positions), got {value!r}"
                ) from None
            if (
                isinstance(max_ci, bool)
                or not isinstance(max_ci, int | float)
                or not math.isfinite(max_ci)
                or max_ci < 0
            ):
                raise InvalidInputError(
                    f"component {key!r}: max_ci must be a finite number >= 0, got {max_ci!r}"
                )
            pos = list(positions)
            bad = [
                p
                for p in pos
                if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < len(tokens)
            ]
            if bad or not pos or len(set(pos)) != len(pos):
                raise InvalidInputError(
                    f"component {key!r}: positions must be distinct token positions in "
                    f"0..{len(tokens) - 1}, at least one, got {pos!r}"
                )
            rows.append((key, float(max_ci), json.dumps(sorted(pos))))
        return tokens, ids, rows

    def has_digest(self, digest: str) -> bool:
        with self._lock:
            self._check_open()
            if self.form is not Form.attnfast:
                return False
            return (
                self._conn.execute(
                    "SELECT 1 FROM af_prompt_digests WHERE digest = ?", (digest,)
                ).fetchone()
                is not None
            )

    def stored_digests(self) -> set[str]:
        with self._lock:
            self._check_open()
            if self.form is not Form.attnfast:
                return set()
            return {r[0] for r in self._conn.execute("SELECT digest FROM af_prompt_digests")}

    # Reading prompts -------------------------------------------------------------------------
    def get_prompt_count(self) -> int:
        with self._lock:
            self._check_open()
            return int(self._conn.execute("SELECT count(*) FROM prompts").fetchone()[0])

    def _prompt_row(self, prompt_id: int) -> tuple[Any, ...] | None:
        if self.form is Form.seed_token_ids:
            sql = "SELECT id, NULL, token_ids, NULL FROM prompts WHERE id = ?"
        elif self.form is Form.seed_pairs:
            sql = "SELECT id, tokens, NULL, pairs FROM prompts WHERE id = ?"
        else:
            sql = "SELECT id, tokens, token_ids, pairs FROM prompts WHERE id = ?"
        row: tuple[Any, ...] | None = self._conn.execute(sql, (prompt_id,)).fetchone()
        return row

    def get_prompt(self, prompt_id: int) -> PromptRecord | None:
        """The prompt with its graph (None when the id is not stored). A damaged graph raises a
        :class:`GraphError` naming the prompt."""
        pid = _check_id(prompt_id)
        with self._lock:
            self._check_open()
            row = self._prompt_row(pid)
            if row is None:
                return None
            own = None
            if self.form is Form.attnfast:
                own = self._conn.execute(
                    "SELECT graph, output_probs FROM af_graphs WHERE prompt_id = ?", (pid,)
                ).fetchone()
        _, tokens, token_ids, pairs = row
        graph = None
        probs: dict[str, float] = {}
        label = f"prompt {pid}"
        if own is not None:
            graph = AttributionGraph.from_blob(own[0], label=label)
            probs = json.loads(own[1] or "{}")
        elif pairs is not None:
            try:
                graph = AttributionGraph.from_seed_pairs(pairs)
            except ValueError as e:  # GraphError and DecodeError are ValueErrors
                raise GraphError(f"{label}: its stored graph is damaged: {e}") from None
            graph.label = label
        return PromptRecord(
            id=pid,
            tokens=None if tokens is None else json.loads(tokens),
            token_ids=None if token_ids is None else json.loads(token_ids),
            graph=graph,
            output_probs=probs,
        )

    def graph_extra(self, prompt_id: int) -> dict[str, Any] | None:
        """What an imported graph kept beside its edges (circuit-tracer's metadata and nodes)."""
        pid = _check_id(prompt_id)
        with self._lock:
            self._check_open()
            if self.form is not Form.attnfast:
                return None
            row = self._conn.execute(
                "SELECT extra FROM af_graphs WHERE prompt_id = ?", (pid,)
            ).fetchone()
        if row is None or row[0] is None:
            return None
        value = _gunzip_json(row[0], f"prompt {pid}'s graph extras")
        return value if isinstance(value, dict) else None

    def get_graph(self, prompt_id: int) -> AttributionGraph | None:
        record = self.get_prompt(prompt_id)
        return None if record is None else record.graph

    def get_all_prompt_summaries(
        self, limit: int | None = None, offset: int = 0
    ) -> list[dict[str, Any]]:
        """``[{id, tokens, preview}]`` by id; ``limit``/``offset`` page through them."""
        if limit is not None and (isinstance(limit, bool) or limit < 0):
            raise InvalidInputError(f"limit must be >= 0, got {limit!r}")
        if isinstance(offset, bool) or offset < 0:
            raise InvalidInputError(f"offset must be >= 0, got {offset!r}")
        column = "token_ids" if self.form is Form.seed_token_ids else "tokens"
        with self._lock:
            self._check_open()
            rows = self._conn.execute(
                f"SELECT id, {column} FROM prompts ORDER BY id LIMIT ? OFFSET ?",
                (-1 if limit is None else limit, offset),
            ).fetchall()
        return [self._summary(pid, text) for pid, text in rows]

    def _summary(self, pid: int, text: str) -> dict[str, Any]:
        labels = [str(t) for t in json.loads(text)]
        return {"id": pid, "tokens": labels, "preview": preview(labels)}

    def get_prompt_summaries(self, ids: Iterable[int]) -> list[dict[str, Any]]:
        """Summaries of the given ids, in the given order (ids not stored are left out)."""
        want = [int(i) for i in ids]
        column = "token_ids" if self.form is Form.seed_token_ids else "tokens"
        found: dict[int, dict[str, Any]] = {}
        with self._lock:
            self._check_open()
            for i in range(0, len(want), _IN_BATCH):
                part = want[i : i + _IN_BATCH]
                marks = ",".join("?" * len(part))
                sql = f"SELECT id, {column} FROM prompts WHERE id IN ({marks})"
                for pid, text in self._conn.execute(sql, part):
                    found[pid] = self._summary(pid, text)
        return [found[i] for i in want if i in found]

    # The index -------------------------------------------------------------------------------
    def _fresh_index(self) -> Index:
        """The index, read up to the table's last row (caller holds the lock)."""
        if self._index is None:
            index = Index(counted=self.form is Form.attnfast)
            with self._read() as c:
                index.open(c, self._own_tables())
            self._index = index
        else:
            self._index.catch_up(self._conn)
        return self._index

    def index_info(self) -> dict[str, Any]:
        """How the index stands: keys, rows, and whether it was rebuilt on open."""
        with self._lock:
            self._check_open()
            index = self._fresh_index()
            return {
                "keys": index.bitmaps.key_count,
                "rows": index.bitmaps.rows,
                "watermark": index.watermark,
                "rebuilt": index.rebuilt,
            }

    def save_index(self) -> int:
        """Persists the bitmaps that changed (also done on close); returns how many keys."""
        with self._lock:
            self._check_open()
            index = self._fresh_index()
            if self.readonly:
                return 0
            with self._write() as c:
                self._own_tables_in(c)
                index.catch_up(c)
                return index.persist(c)

    def find_prompts_with_components(
        self,
        component_keys: Iterable[str],
        require_all: bool = True,
        *,
        exclude: Iterable[str] = (),
        same_position: bool = False,
    ) -> list[int]:
        """Prompt ids (ascending) where all (``require_all``) or any of the keys are active,
        without those where an ``exclude`` key is; ``same_position`` (with ``require_all``)
        asks that all keys be active at one token position. No keys: no prompts."""
        ids: list[int] = self.find_prompt_ids(
            component_keys, require_all, exclude=exclude, same_position=same_position
        ).tolist()
        return ids

    def find_prompt_ids(
        self,
        component_keys: Iterable[str],
        require_all: bool = True,
        *,
        exclude: Iterable[str] = (),
        same_position: bool = False,
    ) -> np.ndarray:
        """:meth:`find_prompts_with_components` as a numpy ``uint32`` array: a search that
        matches most of a million prompts costs the bitmap operation, not a million Python
        ints."""
        keys = check_keys(component_keys)
        excluded = check_keys(exclude)
        if same_position and not require_all:
            raise InvalidInputError("same_position needs require_all (every key at one position)")
        with self._lock:
            self._check_open()
            index = self._fresh_index()
            ids = index.bitmaps.query(keys, "all" if require_all else "any", excluded)
            if same_position and len(set(keys)) > 1 and len(ids):
                ids = np.array(self._same_position(sorted(set(keys)), ids.tolist()), np.uint32)
        return ids

    def _same_position(self, keys: list[str], candidates: list[int]) -> list[int]:
        positions: dict[int, list[set[int]]] = {}
        key_marks = ",".join("?" * len(keys))
        for i in range(0, len(candidates), _IN_BATCH):
            part = candidates[i : i + _IN_BATCH]
            id_marks = ",".join("?" * len(part))
            sql = (
                "SELECT prompt_id, positions FROM component_activations "
                f"WHERE component_key IN ({key_marks}) AND prompt_id IN ({id_marks})"
            )
            for pid, pos in self._conn.execute(sql, [*keys, *part]):
                positions.setdefault(pid, []).append(set(json.loads(pos)))
        return [
            pid
            for pid in candidates
            if len(positions.get(pid, [])) >= len(keys) and set.intersection(*positions[pid])
        ]

    def unknown_components(self, component_keys: Iterable[str]) -> list[str]:
        """The keys (checked) that are active on no stored prompt."""
        keys = check_keys(component_keys)
        with self._lock:
            self._check_open()
            index = self._fresh_index()
            return [k for k in keys if not index.bitmaps.contains(k)]

    def get_component_stats(self, component_key: str) -> ComponentStats | None:
        """Prompt count, mean and max of ``max_ci``, and the prompt ids of one key; None when
        the key is active nowhere."""
        parse_key(component_key)
        with self._lock:
            self._check_open()
            with self._read() as c:
                n, mean, top = c.execute(
                    "SELECT count(DISTINCT prompt_id), avg(max_ci), max(max_ci) "
                    "FROM component_activations WHERE component_key = ?",
                    (component_key,),
                ).fetchone()
            if not n:
                return None
            ids = [int(i) for i in self._fresh_index().bitmaps.prompts_of(component_key)]
        return ComponentStats(component_key, int(n), mean, top, ids)

    def get_unique_components(self) -> list[str]:
        """Every key active on at least one prompt, sorted."""
        with self._lock:
            self._check_open()
            return [
                r[0]
                for r in self._conn.execute(
                    "SELECT DISTINCT component_key FROM component_activations "
                    "ORDER BY component_key"
                )
            ]

    def component_rows(self, prompt_id: int) -> dict[str, tuple[float, list[int]]]:
        """A prompt's active components: ``key -> (max_ci, positions)``."""
        pid = _check_id(prompt_id)
        with self._lock:
            self._check_open()
            rows = self._conn.execute(
                "SELECT component_key, max_ci, positions FROM component_activations "
                "WHERE prompt_id = ?",
                (pid,),
            ).fetchall()
        return {k: (float(ci), [int(p) for p in json.loads(pos)]) for k, ci, pos in rows}

    # Merging ---------------------------------------------------------------------------------
    def merge_from(self, other_path: str | os.PathLike[str]) -> MergeResult:
        """Copies every prompt of another database (attnfast's or the seed's, either form) with
        new ids, its component rows remapped to them, in one transaction. Prompts whose digest
        is already stored are skipped; meta keys this database lacks are copied."""
        other_path = Path(other_path)
        if other_path.absolute() == self.path.absolute():
            raise InvalidInputError(f"cannot merge {self.path} into itself")
        with LocalAttrDB(other_path, readonly=True) as other, self._lock:
            self._check_open()
            self._require_own("merge prompts")
            digests = self.stored_digests()
            other_digests: dict[int, str] = {}
            if other.form is Form.attnfast:
                other_digests = {
                    pid: d
                    for d, pid in other._conn.execute(
                        "SELECT digest, prompt_id FROM af_prompt_digests"
                    )
                }
            id_map: dict[int, int] = {}
            skipped = 0
            with self._write() as c:
                for key, value in other._conn.execute("SELECT key, value FROM meta"):
                    c.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
                for (pid,) in other._conn.execute("SELECT id FROM prompts ORDER BY id").fetchall():
                    digest = other_digests.get(pid)
                    if digest is not None and digest in digests:
                        skipped += 1
                        continue
                    record = other.get_prompt(pid)
                    assert record is not None
                    rows = [
                        (k, ci, json.dumps(pos))
                        for k, (ci, pos) in other.component_rows(pid).items()
                    ]
                    id_map[pid] = self._insert(
                        c,
                        record.labels,
                        record.token_ids,
                        rows,
                        record.graph,
                        record.output_probs,
                        digest,
                        "merge",
                        other.graph_extra(pid),
                    )
        return MergeResult(added=len(id_map), skipped=skipped, id_map=id_map)
