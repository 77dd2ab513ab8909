"""Writes made with SQL, by the seed's tools and by hand, through Python's own sqlite3 (SQLite
3.40 here, not the store's bundled one): inserts, updates and deletes through the seed's
``fingerprints`` view, refusals that name the column and store nothing, vectors flagged
invalid, other programs' databases, seed databases with unreadable rows, and databases of
attnfast's first physical schema (which let such rows in) upgraded and repaired."""

from __future__ import annotations

import math
import re
import sqlite3
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from attnfast import ZONES, FingerprintStore, StoreError, zone_of
from attnfast.synthetic import fingerprints
from seed_schema import create_seed_db, seed_insert
from summary_reference import assert_summaries_match, vector_ok

V1 = fingerprints(400, seed=11)
SGLANG = fingerprints(50, seed=12, layout="sglang")


def blob(v: np.ndarray) -> bytes:
    return struct.pack("<20f", *v.tolist())


def connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def insert(conn: sqlite3.Connection, **values: Any) -> None:
    names = ", ".join(values)
    marks = ", ".join("?" for _ in values)
    conn.execute(f"INSERT INTO fingerprints ({names}) VALUES ({marks})", list(values.values()))


def good_row(step: int, **extra: Any) -> dict[str, Any]:
    """A valid row of request "r"; ``extra`` replaces or adds columns."""
    return {"request_id": "r", "step": step, "fingerprint": blob(V1[step]), **extra}


def assert_counts_right(conn: sqlite3.Connection) -> None:
    """The derived counts equal a recount of the rows."""
    (rows,) = conn.execute("SELECT count(*) FROM af_fingerprints").fetchone()
    meta = dict(conn.execute("SELECT key, value FROM af_meta").fetchall())
    assert meta["rows"] == rows
    (invalid,) = conn.execute("SELECT count(*) FROM af_fingerprints WHERE invalid").fetchone()
    assert meta["invalid_rows"] == invalid
    for code, n in conn.execute("SELECT layout, count(*) FROM af_fingerprints GROUP BY 1"):
        assert meta[f"rows_layout:{code}"] == n
    hourly = dict(
        conn.execute(
            "SELECT manifold_zone, sum(count) FROM zone_distribution_hourly GROUP BY 1"
        ).fetchall()
    )
    zones = dict(
        conn.execute(
            "SELECT manifold_zone, count(*) FROM fingerprints WHERE manifold_zone IS NOT NULL "
            "GROUP BY 1"
        ).fetchall()
    )
    assert hourly == zones
    growth = dict(
        conn.execute("SELECT cluster_id, sum(count) FROM cluster_growth GROUP BY 1").fetchall()
    )
    clusters = dict(
        conn.execute(
            "SELECT cluster_id, count(*) FROM fingerprints WHERE cluster_id >= 0 GROUP BY 1"
        ).fetchall()
    )
    assert growth == clusters
    assert_summaries_match(conn)


BAD_COLUMNS = [
    ({"fingerprint": b"\x01\x02\x03\x04\x05"}, "fingerprints.fingerprint must be a blob of 80"),
    ({"fingerprint": "not a blob"}, "fingerprints.fingerprint must be a blob of 80"),
    ({"step": -3}, "fingerprints.step must be an integer from 0 to 16777215"),
    ({"request_id": ""}, "fingerprints.request_id must be non-empty text"),
    ({"token_id": "seven"}, "fingerprints.token_id must be an integer or NULL"),
    ({"cluster_id": 1.5}, "fingerprints.cluster_id must be an integer or NULL"),
    ({"token_text": b"\x00"}, "fingerprints.token_text must be text or NULL"),
    ({"manifold_confidence": "high"}, "fingerprints.manifold_confidence must be a finite"),
    ({"sink_token_mass": math.inf}, "fingerprints.sink_token_mass must be a finite"),
    ({"top_k_positions": b"\x01\x02\x03"}, "fingerprints.top_k_positions must be a non-empty"),
    ({"top_k_positions": b""}, "fingerprints.top_k_positions must be a non-empty"),
    (
        {"top_k_positions": struct.pack("<2i", 1, 2), "top_k_scores": struct.pack("<f", 0.5)},
        "fingerprints.top_k_scores must be one score per top_k_positions entry",
    ),
    ({"capture_layer_ids": 7}, "fingerprints.capture_layer_ids must be a non-empty blob"),
    ({"top_expert_ids": b"\x00" * 16388}, "fingerprints.top_expert_ids must be a non-empty"),
    ({"schema_version": 2}, "fingerprints.schema_version must be 1 (v1), 1001 (sglang)"),
    ({"think_phase": "dreaming"}, "fingerprints.think_phase must be think, output"),
    ({"manifold_zone": "nowhere"}, "fingerprints.manifold_zone must be syntax_floor"),
    ({"created_at": "yesterday"}, "fingerprints.created_at must be a UTC time as text"),
    ({"created_at": 1700000000}, "fingerprints.created_at must be a UTC time as text"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_COLUMNS)
def test_view_refuses_what_readers_cannot_read(
    tmp_path: Path, bad: dict[str, Any], message: str
) -> None:
    path = tmp_path / "a.db"
    FingerprintStore(path).close()
    conn = connect(path)
    insert(conn, **good_row(1))
    row = {**good_row(2), **bad}
    with pytest.raises(sqlite3.IntegrityError, match=re.escape(message)):
        insert(conn, **row)
    # Nothing of the refused row is anywhere; the good one reads as before.
    assert conn.execute("SELECT count(*) FROM af_fingerprints").fetchone() == (1,)
    assert_counts_right(conn)
    # An update through the view is held to the same rules.
    if "step" not in bad and "request_id" not in bad:
        sets = ", ".join(f"{k} = ?" for k in bad)
        with pytest.raises(sqlite3.IntegrityError, match=r"fingerprints\."):
            conn.execute(f"UPDATE fingerprints SET {sets} WHERE step = 1", list(bad.values()))
    conn.close()
    with FingerprintStore(path) as store:
        table = store.read()
        assert table.num_rows == 1
        assert store.stats()["rows"] == 1
        store.export_parquet(tmp_path / "export")


def test_vectors_that_are_not_fingerprints_are_stored_flagged(tmp_path: Path) -> None:
    """The seed's sidecar stores the SGLang server's vectors as schema_version 1: refusing
    them would stop it, so they are kept, flagged invalid, with zone unknown."""
    path = tmp_path / "a.db"
    FingerprintStore(path).close()
    conn = connect(path)
    nan = V1[0].copy()
    nan[5] = np.nan
    negative = V1[1].copy()
    negative[14] = -0.5
    cases = [SGLANG[0], SGLANG[1], nan, negative, V1[2]]
    assert [vector_ok(v, 1) for v in cases] == [False, False, False, False, True]
    for step, v in enumerate(cases):
        zone = {"manifold_zone": "syntax_floor", "manifold_confidence": 0.9}
        insert(conn, request_id="seed", step=step, fingerprint=blob(v), token_text=f"t{step}",
               **zone)  # fmt: skip
    # Vectors tagged with their own layout are judged by its rules.
    insert(conn, request_id="tagged", step=0, fingerprint=blob(SGLANG[2]), schema_version=1001)
    rows = conn.execute(
        "SELECT step, manifold_zone, manifold_confidence FROM fingerprints "
        "WHERE request_id = 'seed' ORDER BY step"
    ).fetchall()
    assert rows[:4] == [(s, "unknown", None) for s in range(4)]
    assert rows[4] == (4, "syntax_floor", 0.9)
    (tagged,) = conn.execute("SELECT invalid FROM af_fingerprints WHERE layout = 1001").fetchone()
    assert tagged == 0
    assert_counts_right(conn)
    # Fixing a vector with SQL clears its flag; breaking one sets it.
    conn.execute("UPDATE fingerprints SET fingerprint = ?, manifold_zone = NULL "
                 "WHERE request_id = 'seed' AND step = 0", (blob(V1[3]),))  # fmt: skip
    conn.execute("UPDATE fingerprints SET fingerprint = ? WHERE request_id = 'seed' AND step = 4",
                 (blob(SGLANG[3]),))  # fmt: skip
    flags = conn.execute(
        "SELECT id & 16777215, invalid, zone FROM af_fingerprints ORDER BY id"
    ).fetchall()
    (rule_zone,), _ = zone_of(V1[3])
    assert flags[0][1:] == (0, ZONES.index(rule_zone))  # valid now, and given the rule zone
    assert flags[4][1:] == (1, 3)
    assert_counts_right(conn)
    conn.close()
    with FingerprintStore(path) as store:
        stats = store.stats()
        table = store.read(request_id="seed")
    assert stats["invalid_rows"] == 4
    assert table.column("invalid").to_pylist() == [False, True, True, True, True]


def test_updates_and_deletes_through_the_view_keep_everything_right(tmp_path: Path) -> None:
    """What a discovery job and a cleanup do with SQL, mixed with the writer's appends."""
    rng = np.random.default_rng(5)
    path = tmp_path / "a.db"
    with FingerprintStore(path) as store:
        for r in range(4):
            store.append(
                f"w{r}", np.arange(0, 60, 2), V1[r * 30 : r * 30 + 30],
                token_text=[f"{r}:{i}" for i in range(30)],
                top_expert_ids=[[int(e) for e in rng.integers(0, 8, 3)] for _ in range(30)],
                router_entropy=rng.random(30), think_phase="think", model_id="m",
                session_id="s",
            )  # fmt: skip
    conn = connect(path)
    for step in range(1, 40, 2):  # the seed's sidecar fills the odd steps in between
        insert(conn, request_id="w1", step=step, fingerprint=blob(V1[200 + step]),
               token_text=f"v{step}", think_phase="output", cluster_id=step % 3)  # fmt: skip
    insert(conn, request_id="v", step=0, fingerprint=blob(SGLANG[0]), schema_version=1001)
    assert_counts_right(conn)
    # A discovery job writes cluster ids back.
    conn.execute("UPDATE fingerprints SET cluster_id = step % 4, cluster_probability = 0.5")
    conn.execute("UPDATE fingerprints SET cluster_id = -1 WHERE step % 5 = 0")
    assert_counts_right(conn)
    # Zones, phases, texts, experts, entropies and times changed with SQL.
    conn.execute("UPDATE fingerprints SET manifold_zone = 'structure_ripple' WHERE step < 10")
    conn.execute("UPDATE fingerprints SET think_phase = 'unknown', token_text = 'X' "
                 "WHERE request_id = 'w2' AND step BETWEEN 4 AND 12")  # fmt: skip
    conn.execute("UPDATE fingerprints SET top_expert_ids = ? WHERE step % 3 = 0",
                 (struct.pack("<2i", 9, 1),))  # fmt: skip
    conn.execute("UPDATE fingerprints SET router_entropy = NULL WHERE step % 7 = 0")
    conn.execute("UPDATE fingerprints SET created_at = '2026-01-01 00:00:00' WHERE step = 2")
    assert_counts_right(conn)
    # A cleanup deletes rows: some, then whole requests.
    conn.execute("DELETE FROM fingerprints WHERE step % 4 = 1")
    assert_counts_right(conn)
    conn.execute("DELETE FROM fingerprints WHERE request_id IN ('w3', 'v')")
    assert_counts_right(conn)
    assert conn.execute(
        "SELECT count(*) FROM request_summary WHERE request_id = 'w3'"
    ).fetchone() == (0,)
    with pytest.raises(sqlite3.IntegrityError, match="cannot be changed"):
        conn.execute("UPDATE fingerprints SET step = 99 WHERE request_id = 'w0' AND step = 0")
    conn.close()
    with FingerprintStore(path) as store:  # the writer goes on from where SQL left it
        store.append("w1", [100, 101], V1[300:302], token_text=["y", "z"])
        store.append("w2", [1], V1[303:304])  # lands among stored steps
    conn = connect(path)
    assert_counts_right(conn)


def test_other_programs_databases_are_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "app.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.execute("INSERT INTO users VALUES ('ada')")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match=r"not a fingerprint database \(it has the tables users\)"):
        FingerprintStore(path)
    assert path.read_bytes() == before
    with FingerprintStore(path, init=True) as store:  # asked for: the tables are added
        store.append("r", [1], V1[:1])
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT name FROM users").fetchall() == [("ada",)]
    assert conn.execute("SELECT count(*) FROM fingerprints").fetchone() == (1,)
    conn.close()
    FingerprintStore(path).close()  # now it is one


def test_triggers_of_an_earlier_build_are_replaced(tmp_path: Path) -> None:
    """A database whose triggers differ from this build's (an earlier build's, or tampered
    with) gets this build's on the next open, without a schema upgrade."""
    path = tmp_path / "a.db"
    FingerprintStore(path).close()
    conn = connect(path)
    (version,) = conn.execute("PRAGMA schema_version").fetchone()
    conn.close()
    FingerprintStore(path).close()  # the same build: the schema is left as it is
    conn = connect(path)
    assert conn.execute("PRAGMA schema_version").fetchone() == (version,)
    conn.execute("DROP TRIGGER af_fingerprints_insert_through_view")
    conn.execute(
        "CREATE TRIGGER af_fingerprints_insert_through_view INSTEAD OF INSERT ON fingerprints "
        "BEGIN SELECT 1; END"
    )
    insert(conn, **good_row(1))  # the stand-in stores nothing
    assert conn.execute("SELECT count(*) FROM fingerprints").fetchone() == (0,)
    conn.close()
    FingerprintStore(path).close()
    conn = connect(path)
    insert(conn, **good_row(1))
    assert conn.execute("SELECT count(*) FROM fingerprints").fetchone() == (1,)
    with pytest.raises(sqlite3.IntegrityError, match=r"fingerprints\.fingerprint must be"):
        insert(conn, request_id="r", step=2, fingerprint=b"12345")
    assert_counts_right(conn)
    conn.close()


def test_seed_database_with_unreadable_rows_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "seed.db"
    seed = create_seed_db(path)
    seed_insert(
        seed, [{"request_id": "q", "step": s, "fingerprint": V1[s].tolist()} for s in range(3)]
    )
    seed.execute(
        "INSERT INTO fingerprints (request_id, step, fingerprint) VALUES ('q', 9, x'0102')"
    )
    seed.close()
    before = path.read_bytes()
    with pytest.raises(
        StoreError, match=r"its row id 4 breaks a rule \(fingerprints.fingerprint must"
    ):
        FingerprintStore(path)
    assert path.read_bytes() == before  # nothing was changed


def schema_1_database(path: Path) -> None:
    """A database as attnfast 0.1 (physical schema 1) left it, poisoned through its view by
    a fingerprint blob of 5 bytes, which that version accepted."""
    conn = connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(
        "BEGIN;" + (Path(__file__).parent / "data" / "store_schema_1.sql").read_text() + "COMMIT;"
    )
    for step in range(6):
        insert(conn, request_id="old", step=step, fingerprint=blob(V1[step]), token_text=f"t{step}",
               cluster_id=step % 2, manifold_zone="semantic_bridge")  # fmt: skip
    insert(conn, request_id="sg", step=1, fingerprint=blob(SGLANG[0]))  # mislabelled as v1
    insert(conn, request_id="old", step=9, fingerprint=b"\x01\x02\x03\x04\x05")
    conn.close()


def test_schema_1_databases_are_upgraded_and_repaired(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    schema_1_database(path)
    with FingerprintStore(path) as store:
        assert store.opened == {"migrated_rows": 0, "quarantined_rows": 1, "upgraded_from": 1}
        table = store.read()  # the poison row no longer stops every reader
        stats = store.stats()
        store.export_parquet(tmp_path / "export")
    assert table.num_rows == 7
    assert stats["quarantined_rows"] == 1
    assert stats["invalid_rows"] == 1  # the SGLang vector stored as v1
    conn = connect(path)
    (reason, request) = conn.execute("SELECT reason, request_id FROM af_quarantine").fetchone()
    assert request == "old"
    assert reason.startswith("fingerprints.fingerprint must be a blob of 80 bytes")
    assert conn.execute("SELECT value FROM af_meta WHERE key = 'store_schema'").fetchone() == (2,)
    assert_counts_right(conn)
    # The new triggers are in place: updates through the view now work.
    conn.execute("UPDATE fingerprints SET cluster_id = 7 WHERE request_id = 'old'")
    assert_counts_right(conn)
    conn.close()
    with FingerprintStore(path) as store:  # opened again: nothing more to do
        assert store.opened["upgraded_from"] is None
