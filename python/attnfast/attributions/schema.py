"""The tables of an attributions database, and which form a file is in.

attnfast writes the seed's three tables (``meta``, ``prompts``, ``component_activations``) so
that the seed's SQL keeps working, and keeps what is its own in ``af_*`` tables: graphs in the
edge codec, the persisted inverted index, the digests that make generation resumable. A
database written by the seed's code is read in place; attnfast adds only its ``af_*`` tables
to it (and none when the file is read-only)."""

from __future__ import annotations

import sqlite3
from enum import StrEnum

SCHEMA_NAME = "attnfast-attributions"
SCHEMA_VERSION = 1

SEED_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS prompts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tokens TEXT NOT NULL,
    token_ids TEXT,
    pairs BLOB
);
CREATE TABLE IF NOT EXISTS component_activations (
    prompt_id INTEGER NOT NULL REFERENCES prompts(id),
    component_key TEXT NOT NULL,
    max_ci REAL NOT NULL,
    positions TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_component_activations_key
    ON component_activations(component_key);
CREATE INDEX IF NOT EXISTS idx_component_activations_prompt
    ON component_activations(prompt_id);
"""

OWN_TABLES = """
CREATE TABLE IF NOT EXISTS af_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS af_index (component_key TEXT PRIMARY KEY, prompts BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS af_graphs (
    prompt_id INTEGER PRIMARY KEY REFERENCES prompts(id),
    graph BLOB NOT NULL,
    output_probs TEXT,
    source TEXT,
    extra BLOB
);
CREATE TABLE IF NOT EXISTS af_prompt_digests (
    digest TEXT PRIMARY KEY,
    prompt_id INTEGER NOT NULL REFERENCES prompts(id)
);
"""


class Form(StrEnum):
    """Which code wrote the database."""

    attnfast = "attnfast"
    #: seed 001: ``prompts(id, tokens, pairs)``, graphs stored as gzip-JSON pairs.
    seed_pairs = "seed-pairs"
    #: seed 002: ``prompts(id, token_ids)``, graphs computed on demand.
    seed_token_ids = "seed-token-ids"
    #: No tables yet.
    empty = "empty"


def columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def detect(conn: sqlite3.Connection) -> Form:
    names = tables(conn)
    if "prompts" not in names:
        return Form.empty
    if "af_state" in names:
        row = conn.execute("SELECT value FROM af_state WHERE key = 'schema'").fetchone()
        if row is not None and row[0].startswith(SCHEMA_NAME):
            return Form.attnfast
    cols = columns(conn, "prompts")
    if "pairs" in cols and "tokens" in cols:
        return Form.seed_pairs
    if "token_ids" in cols:
        return Form.seed_token_ids
    from attnfast.exceptions import StoreError

    raise StoreError(
        f"its prompts table has the columns {cols}, which is neither attnfast's nor either of "
        "the seed's forms"
    )
