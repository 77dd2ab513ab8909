"""The seed's schema, SQL and tools against attnfast databases, and seed databases opened by
attnfast. The references are tests/seed_schema.py (the seed's tables, trigger and views) and
tests/summary_reference.py (request_summary as attnfast fills it)."""

from __future__ import annotations

import sqlite3
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import attnfast
from attnfast import FingerprintStore
from attnfast.synthetic import fingerprints
from seed_schema import create_seed_db, seed_insert
from summary_reference import assert_summaries_match

PHASES = ["think", "output", "unknown", None]
# Every row is given a zone: attnfast gives a v1 row without one the rule zone, where the
# seed's views would skip it (tested in test_store_sql_writes.py).
ZONE_NAMES = ["syntax_floor", "semantic_bridge", "structure_ripple", "unknown"]
BASE = datetime(2026, 2, 3, 22, 50, tzinfo=UTC)


def make_rows(rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
    """Interleaved requests, mixed phases, zones and clusters, times across an hour and a day
    boundary, at whole seconds (the seed's CURRENT_TIMESTAMP resolution)."""
    rows = []
    steps: dict[str, int] = {}
    vectors = fingerprints(n, seed=int(rng.integers(1 << 31)))
    for i in range(n):
        request = f"req-{int(rng.integers(0, 7))}"
        steps[request] = steps.get(request, 0) + 1
        created = BASE + timedelta(seconds=int(i * 37))
        rows.append(
            {
                "request_id": request,
                "step": steps[request],
                "fingerprint": vectors[i].tolist(),
                "token_text": f"t{i}",
                "think_phase": PHASES[int(rng.integers(0, 4))],
                "manifold_zone": ZONE_NAMES[int(rng.integers(0, 4))],
                "manifold_confidence": None if i % 5 == 0 else float(rng.random()),
                "cluster_id": int(rng.integers(-1, 3)),
                "model_id": None if i % 3 else f"model-{i % 2}",
                "created_at": created.strftime("%Y-%m-%d %H:%M:%S"),
            }
        )
    return rows


def append_rows(store: FingerprintStore, rows: list[dict[str, Any]]) -> None:
    store.append(
        [r["request_id"] for r in rows],
        [r["step"] for r in rows],
        np.array([r["fingerprint"] for r in rows], dtype=np.float32),
        token_text=[r["token_text"] for r in rows],
        think_phase=[r["think_phase"] for r in rows],
        manifold_zone=[r["manifold_zone"] for r in rows],
        manifold_confidence=[r["manifold_confidence"] for r in rows],
        cluster_id=[r["cluster_id"] for r in rows],
        model_id=[r["model_id"] for r in rows],
        created_at=[datetime.fromisoformat(r["created_at"] + "+00:00") for r in rows],
    )


SEED_QUERIES = [
    "SELECT * FROM zone_distribution_hourly ORDER BY hour, manifold_zone",
    "SELECT * FROM cluster_growth ORDER BY day, cluster_id",
    "SELECT request_id, step, token_text, think_phase, manifold_zone, manifold_confidence, "
    "cluster_id, fingerprint, model_id, created_at, schema_version, segment_idx "
    "FROM fingerprints ORDER BY request_id, step",
    "SELECT request_id, count(*), min(step), max(step) FROM fingerprints "
    "WHERE created_at >= '2026-02-03 23:00:00' GROUP BY request_id ORDER BY request_id",
    "SELECT manifold_zone, count(*) FROM fingerprints WHERE request_id = 'req-3' "
    "GROUP BY manifold_zone ORDER BY manifold_zone",
]


def rounded(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [tuple(round(v, 9) if isinstance(v, float) else v for v in row) for row in rows]


@pytest.fixture
def both(tmp_path: Path, rng: np.random.Generator) -> tuple[sqlite3.Connection, Path]:
    """The same rows in a seed database (its trigger) and in an attnfast one (in batches)."""
    rows = make_rows(rng, 400)
    seed = create_seed_db(tmp_path / "seed.db")
    seed_insert(seed, rows)
    path = tmp_path / "attnfast.db"
    with FingerprintStore(path) as store:
        for start in range(0, len(rows), 64):
            append_rows(store, rows[start : start + 64])
            if start % 128 == 0:
                store.flush()
    return seed, path


def test_request_summary_is_filled(both: tuple[sqlite3.Connection, Path]) -> None:
    """Every column the seed's trigger left at its default, filled from the rows; the
    columns it did fill agree with it where it was not wrong."""
    seed, path = both
    ours = sqlite3.connect(path)
    assert_summaries_match(ours)
    compare = "SELECT request_id, total_steps, started_at FROM request_summary ORDER BY 1"
    assert ours.execute(compare).fetchall() == seed.execute(compare).fetchall()
    # The seed's trigger left the first row's phase out of the counts; here they add up.
    unknown_or_none = ours.execute(
        "SELECT request_id, sum(think_phase IS NULL OR think_phase = 'unknown') FROM fingerprints "
        "GROUP BY 1 ORDER BY 1"
    ).fetchall()
    counts = ours.execute(
        "SELECT request_id, total_steps - think_steps - output_steps FROM request_summary "
        "ORDER BY 1"
    ).fetchall()
    assert counts == unknown_or_none


@pytest.mark.parametrize("query", SEED_QUERIES)
def test_seed_queries_give_the_same_answers(
    both: tuple[sqlite3.Connection, Path], query: str
) -> None:
    seed, path = both
    ours = sqlite3.connect(path)
    expected = rounded(seed.execute(query).fetchall())
    assert expected  # the query must select something to compare
    assert rounded(ours.execute(query).fetchall()) == expected


def test_store_sql_runs_seed_queries_while_open(tmp_path: Path, rng: np.random.Generator) -> None:
    rows = make_rows(rng, 50)
    with FingerprintStore(tmp_path / "a.db") as store:
        append_rows(store, rows)
        store.flush()
        got = store.sql("SELECT count(*) AS n FROM fingerprints WHERE request_id = ?", ["req-1"])
        assert got == [{"n": sum(r["request_id"] == "req-1" for r in rows)}]
        with pytest.raises(ValueError, match="read-only"):
            store.sql("DELETE FROM af_fingerprints")
        assert store.count() == 50


def test_recent_rows_compare_with_current_timestamp(tmp_path: Path) -> None:
    with FingerprintStore(tmp_path / "a.db") as store:
        store.append("now", [1, 2], fingerprints(2))
        store.append("old", [1], fingerprints(1), created_at=BASE)
        store.flush()
        recent = store.sql(
            "SELECT request_id FROM fingerprints WHERE created_at >= datetime('now', '-1 hour')"
        )
    assert [r["request_id"] for r in recent] == ["now", "now"]


def test_seed_database_is_converted(tmp_path: Path, rng: np.random.Generator) -> None:
    rows = make_rows(rng, 120)
    path = tmp_path / "seed.db"
    seed = create_seed_db(path)
    seed_insert(seed, rows)
    seed.execute(
        "INSERT INTO prototypes (cluster_id, run_id, rank, fingerprint_id, request_id, step) "
        "SELECT 1, 'run', 0, id, request_id, step FROM fingerprints WHERE id IN (5, 77)"
    )
    answers_before = [rounded(seed.execute(q).fetchall()) for q in SEED_QUERIES]
    seed.close()

    with FingerprintStore(path) as store:
        assert store.stats()["migrated_seed_rows"] == 120
        assert store.count() == 120

    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute(
        "SELECT type FROM sqlite_master WHERE name = 'fingerprints'"
    ).fetchone() == ("view",)
    assert_summaries_match(conn)  # recomputed from the rows, not the seed trigger's quirks
    assert [rounded(conn.execute(q).fetchall()) for q in SEED_QUERIES] == answers_before
    # Prototypes follow their rows to the new ids.
    linked = conn.execute(
        "SELECT p.request_id, p.step, f.request_id, f.step FROM prototypes p "
        "JOIN fingerprints f ON f.id = p.fingerprint_id"
    ).fetchall()
    assert len(linked) == 2
    assert all(a == c and b == d for a, b, c, d in linked)
    conn.close()
    before = sum(r["request_id"] == "req-0" for r in rows)
    with FingerprintStore(path) as store:  # converted once; appends keep the summary going
        store.append("req-0", [999], fingerprints(1), think_phase="think")
        store.flush()
        (after,) = store.sql("SELECT total_steps FROM request_summary WHERE request_id = 'req-0'")
        assert after["total_steps"] == before + 1
        assert store.stats()["migrated_seed_rows"] == 120
    assert_summaries_match(sqlite3.connect(path))


def test_seed_tools_write_through_the_view(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    FingerprintStore(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    blob = struct.pack("<20f", *fingerprints(1)[0].tolist())
    for step, text in [(1, "a"), (2, "b"), (2, "REPLACED")]:
        conn.execute(
            "INSERT OR REPLACE INTO fingerprints (request_id, step, fingerprint, token_text, "
            "think_phase, manifold_zone) VALUES ('seed-req', ?, ?, ?, 'think', 'syntax_floor')",
            (step, blob, text),
        )
    with pytest.raises(sqlite3.IntegrityError, match="think_phase must be"):
        conn.execute(
            "INSERT INTO fingerprints (request_id, step, fingerprint, think_phase) "
            "VALUES ('seed-req', 9, ?, 'dreaming')",
            (blob,),
        )
    conn.close()
    with FingerprintStore(path) as store:
        cols = store.read(format="numpy")
        stats = store.stats()
        (summary,) = store.requests()
    assert cols["token_text"] == ["a", "b"]  # never overwritten
    assert stats["duplicates_rejected"] == 1
    assert stats["zones"]["syntax_floor"] == 2
    assert (summary["total_steps"], summary["think_steps"]) == (2, 2)


def test_rows_changed_with_sql_keep_the_views_right(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    with FingerprintStore(path) as store:
        store.append("r", np.arange(10), fingerprints(10), cluster_id=2)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE af_fingerprints SET cluster_id = 5 WHERE (id & 16777215) < 4")
    conn.execute("DELETE FROM af_fingerprints WHERE (id & 16777215) >= 8")
    growth = {c: n for _, c, n in conn.execute("SELECT * FROM cluster_growth")}
    assert growth == {2: 4, 5: 4}
    (total,) = conn.execute("SELECT sum(count) FROM zone_distribution_hourly").fetchone()
    assert total == 8
    conn.close()
    with FingerprintStore(path) as store:
        assert store.count() == 8
        assert store.stats()["rows"] == 8
    assert_summaries_match(sqlite3.connect(path))


def test_converted_rows_without_a_zone_get_the_rule_zone(tmp_path: Path) -> None:
    path = tmp_path / "seed.db"
    seed = create_seed_db(path)
    v1, sglang = fingerprints(5, seed=4), fingerprints(1, seed=5, layout="sglang")
    rows = [{"request_id": "a", "step": i, "fingerprint": v.tolist()} for i, v in enumerate(v1)]
    rows[0]["manifold_zone"] = "structure_ripple"  # the seed's classifier saw this one
    rows.append(
        {"request_id": "b", "step": 0, "fingerprint": sglang[0].tolist(), "schema_version": 1001}
    )
    seed_insert(seed, rows)
    seed.close()
    zones, confidences = attnfast.zone_of(v1)
    with FingerprintStore(path) as store:
        a = store.read(request_id="a", format="numpy")
        assert a["manifold_zone"] == ["structure_ripple", *zones[1:]]
        np.testing.assert_allclose(a["manifold_confidence"][1:], confidences[1:], rtol=1e-6)
        # SGLang vectors are not zoned by rule: the row stays without a zone.
        assert store.read(request_id="b", format="numpy")["manifold_zone"] == [None]
        stats = store.stats()
        assert stats["unzoned_rows"] == 1
        assert sum(stats["zones"].values()) == 5
        hourly = store.sql("SELECT sum(count) AS n FROM zone_distribution_hourly")
        assert hourly[0]["n"] == 5  # the hourly counts include the zones given on the way in
