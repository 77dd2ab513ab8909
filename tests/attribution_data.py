"""Databases for the attributions tests: random prompts with Zipf-distributed components,
written by attnfast and by the seed's own SQL in both of its schema forms."""

from __future__ import annotations

import gzip
import json
import sqlite3
from pathlib import Path

import numpy as np

# The seed's schema, first form (seed 001) and later form (seed 002), as REFERENCE.md gives.
SEED_META = "CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)"
SEED_PROMPTS_PAIRS = (
    "CREATE TABLE prompts (id INTEGER PRIMARY KEY AUTOINCREMENT, tokens TEXT NOT NULL, "
    "pairs BLOB NOT NULL)"
)
SEED_PROMPTS_IDS = "CREATE TABLE prompts (id INTEGER PRIMARY KEY AUTOINCREMENT, token_ids TEXT)"
SEED_ACTIVATIONS = (
    "CREATE TABLE component_activations (prompt_id INTEGER NOT NULL REFERENCES prompts(id), "
    "component_key TEXT NOT NULL, max_ci REAL NOT NULL, positions TEXT NOT NULL)"
)
SEED_INDEXES = [
    "CREATE INDEX idx_key ON component_activations(component_key)",
    "CREATE INDEX idx_prompt ON component_activations(prompt_id)",
]

# The seed's queries.
SEED_ALL = (
    "SELECT prompt_id FROM component_activations WHERE component_key IN ({marks}) "
    "GROUP BY prompt_id HAVING COUNT(DISTINCT component_key) = ?"
)
SEED_ANY = "SELECT DISTINCT prompt_id FROM component_activations WHERE component_key IN ({marks})"


def seed_all(path: Path, keys: list[str]) -> list[int]:
    if not keys:
        return []
    with sqlite3.connect(path) as c:
        sql = SEED_ALL.format(marks=",".join("?" * len(keys)))
        return sorted(r[0] for r in c.execute(sql, [*keys, len(set(keys))]))


def seed_any(path: Path, keys: list[str]) -> list[int]:
    if not keys:
        return []
    with sqlite3.connect(path) as c:
        sql = SEED_ANY.format(marks=",".join("?" * len(keys)))
        return sorted(r[0] for r in c.execute(sql, keys))


def random_prompts(
    n: int, *, keys: int = 60, per_prompt: int = 8, tokens: int = 6, seed: int = 0
) -> list[tuple[list[str], dict[str, tuple[float, list[int]]]]]:
    """``(tokens, active components)`` with Zipf-distributed keys over ``keys`` names."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, keys + 1)
    weights /= weights.sum()
    names = [f"h.{i % 3}.mlp.c_fc:{i}" for i in range(keys)]
    out = []
    for _ in range(n):
        chosen = rng.choice(keys, size=min(per_prompt, keys), replace=False, p=weights)
        active = {}
        for k in chosen.tolist():
            pos = sorted(set(rng.integers(0, tokens, size=rng.integers(1, 3)).tolist()))
            active[names[k]] = (float(rng.random()), pos)
        out.append(([f"t{j}" for j in range(tokens)], active))
    return out


def seed_pairs_json(rng: np.random.Generator, tokens: int) -> list[dict]:
    """A small graph in the seed's pairs format."""
    c_in = sorted(rng.choice(40, size=4, replace=False).tolist())
    c_out = sorted(rng.choice(40, size=3, replace=False).tolist())
    same = [
        [s, int(rng.integers(0, 4)), int(rng.integers(0, 3)), round(float(rng.normal()), 6)]
        for s in range(tokens)
    ]
    same = list({(e[0], e[1], e[2]): e for e in same}.values())
    cross = [[0, 1, tokens - 1, 0, 0.25], [1, 2, tokens - 1, 1, -0.5]]
    return [
        {
            "source": "wte",
            "target": "h.0.attn.q_proj",
            "is_cross_seq": False,
            "attribution": same,
            "trimmed_c_in_idxs": [0, 1, 2, 3],
            "trimmed_c_out_idxs": c_out,
        },
        {
            "source": "h.0.attn.k_proj",
            "target": "h.0.attn.o_proj",
            "is_cross_seq": True,
            "attribution": cross,
            "trimmed_c_in_idxs": c_in,
            "trimmed_c_out_idxs": c_out,
        },
    ]


def write_seed_db(path: Path, prompts: list, *, form: str, seed: int = 0) -> None:
    """A database as the seed's code writes it (``form`` "pairs" or "token_ids")."""
    rng = np.random.default_rng(seed)
    with sqlite3.connect(path) as c:
        c.execute("PRAGMA journal_mode = WAL")
        c.execute(SEED_META)
        c.execute(SEED_PROMPTS_PAIRS if form == "pairs" else SEED_PROMPTS_IDS)
        c.execute(SEED_ACTIVATIONS)
        for s in SEED_INDEXES:
            c.execute(s)
        c.execute("INSERT INTO meta VALUES ('n_blocks', ?)", (gzip.compress(b'{"n_blocks": 2}'),))
        for tokens, active in prompts:
            if form == "pairs":
                pairs = gzip.compress(json.dumps(seed_pairs_json(rng, len(tokens))).encode())
                cur = c.execute(
                    "INSERT INTO prompts (tokens, pairs) VALUES (?, ?)", (json.dumps(tokens), pairs)
                )
            else:
                ids = list(range(len(tokens)))
                cur = c.execute("INSERT INTO prompts (token_ids) VALUES (?)", (json.dumps(ids),))
            # The seed stored max_ci as 0.0 (its bug); its rows are what they are.
            c.executemany(
                "INSERT INTO component_activations VALUES (?, ?, 0.0, ?)",
                [(cur.lastrowid, k, json.dumps(pos)) for k, (_, pos) in active.items()],
            )


def schema_dump(
    path: Path, tables: tuple[str, ...] = ("meta", "prompts", "component_activations")
) -> list:
    """The seed's tables' definitions and rows: what opening with attnfast must not change."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as c:
        out = []
        for t in tables:
            out.append(c.execute("SELECT sql FROM sqlite_master WHERE name = ?", (t,)).fetchone())
            out.append(c.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall())
        return out
