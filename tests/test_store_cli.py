"""`attnfast init | ingest | query | stats | export` on real files, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from attnfast import FingerprintStore, pack_fingerprints
from attnfast.synthetic import fingerprints

ATTNFAST = str(Path(sys.executable).with_name("attnfast"))


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [ATTNFAST, *args], capture_output=True, text=True, check=check, env=env, timeout=300
    )


@pytest.fixture
def jsonl(tmp_path: Path, rng: np.random.Generator) -> Path:
    path = tmp_path / "messages.jsonl"
    vectors = fingerprints(100, layout="sglang").tolist()  # the server's layout, as JSONL is
    with path.open("w") as f:
        for r in range(4):
            for step in range(1, 26):
                vector = vectors[r * 25 + step - 1]
                f.write(json.dumps({"request_id": f"r{r}", "step": step, "vector": vector}) + "\n")
        f.write('{"request_id": "r9", "vector": [1, 2]}\n')
        # A list rule broken on one line: that line is skipped, the file's other rows stored.
        unpaired = {"top_k_positions": [1, 2], "top_k_scores": [0.5]}
        f.write(json.dumps({"request_id": "r9", "vector": vectors[0], "metadata": unpaired}))
    return path


def test_ingest_query_stats(tmp_path: Path, jsonl: Path, rng: np.random.Generator) -> None:
    db = tmp_path / "fp.db"
    assert "ready, 0 rows" in run("init", "--db", str(db)).stdout
    out = run("ingest", "--db", str(db), str(jsonl))
    assert "100 stored, 2 line(s) refused as invalid" in out.stdout
    assert "vector must be a list of 20 numbers, got 2" in out.stderr
    assert "messages.jsonl:102: top_k_positions has 2 entries but top_k_scores has 1" in out.stderr

    npy, packed = tmp_path / "a.npy", tmp_path / "b.fp"
    np.save(npy, fingerprints(7, seed=1))
    packed.write_bytes(pack_fingerprints(fingerprints(3, seed=2)))
    run("ingest", "--db", str(db), str(npy), "--request-id", "npy-req")
    run("ingest", "--db", str(db), str(packed), "--request-id", "fp-req", "--start-step", "5")

    rows = json.loads(
        run("query", "--db", str(db), "--request", "fp-req", "--format", "json").stdout
    )
    assert [r["step"] for r in rows] == [5, 6, 7]
    assert rows[0]["schema_version"] == 1
    jsonl_rows = json.loads(
        run(
            "query", "--db", str(db), "--request", "r2", "--limit", "100", "--format", "json"
        ).stdout
    )
    assert len(jsonl_rows) == 25
    assert jsonl_rows[0]["schema_version"] == 1001
    table = run("query", "--db", str(db), "--limit", "5").stdout
    assert "5 of 110 rows" in table
    assert "fp-req" in table  # the newest request comes first

    stats = json.loads(run("stats", "--db", str(db), "--json").stdout)
    assert stats["rows"] == 110
    assert stats["requests"] == 6

    out_file = tmp_path / "q.parquet"
    run("query", "--db", str(db), "--since", "1h", "--limit", "1000", "--format", "parquet",
        "--out", str(out_file))  # fmt: skip
    assert pq.read_table(out_file).num_rows == 110
    # An existing --out is replaced only when asked.
    again = ["query", "--db", str(db), "--request", "r1", "--format", "parquet", "--out",
             str(out_file)]  # fmt: skip
    refused = run(*again, check=False)
    assert refused.returncode == 2
    assert "exists; pass --overwrite" in refused.stderr
    assert pq.read_table(out_file).num_rows == 110
    run(*again, "--overwrite")
    assert pq.read_table(out_file).num_rows == 25


def test_cli_errors(tmp_path: Path) -> None:
    missing = run("query", "--db", str(tmp_path / "none.db"), check=False)
    assert missing.returncode == 2
    assert "no such database" in missing.stderr
    db = tmp_path / "fp.db"
    run("init", "--db", str(db))
    bad = run("query", "--db", str(db), "--since", "yesterday-ish", check=False)
    assert bad.returncode == 2
    assert "since must be" in bad.stderr
    npy = tmp_path / "a.npy"
    np.save(npy, fingerprints(2))
    no_id = run("ingest", "--db", str(db), str(npy), check=False)
    assert no_id.returncode == 2
    assert "--request-id" in no_id.stderr


def test_export_is_read_by_pyarrow_polars_duckdb(tmp_path: Path, rng: np.random.Generator) -> None:
    from datetime import UTC, datetime, timedelta

    db, out = tmp_path / "fp.db", tmp_path / "export"
    day = datetime(2026, 4, 1, 23, 30, tzinfo=UTC)
    vectors = fingerprints(300)
    with FingerprintStore(db) as store:
        store.append("a", np.arange(100), vectors[:100], created_at=day, token_text="x",
                     top_k_positions=np.tile([3, 1], (100, 1)))  # fmt: skip
        store.append("b", np.arange(200), vectors[100:], created_at=day + timedelta(hours=1))
    printed = run("export", "--db", str(db), "--out", str(out)).stdout
    assert "exported 300 rows" in printed
    assert sorted(p.name for p in out.iterdir()) == ["day=2026-04-01", "day=2026-04-02"]

    table = ds.dataset(out, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 300
    by_id = table.sort_by([("request_id", "ascending"), ("step", "ascending")])
    np.testing.assert_array_equal(
        np.array(by_id.column("fingerprint").to_pylist(), dtype=np.float32), vectors
    )
    assert by_id.column("top_k_positions")[0].as_py() == [3, 1]

    frame = pl.scan_parquet(str(out / "**" / "*.parquet"), hive_partitioning=True).collect()
    assert frame.height == 300
    assert frame.filter(pl.col("request_id") == "b").height == 200

    con = duckdb.connect()
    glob = str(out / "*" / "*.parquet")
    n, days = con.execute(
        f"SELECT count(*), count(DISTINCT day) FROM read_parquet('{glob}', hive_partitioning=true)"
    ).fetchone()
    assert (n, days) == (300, 2)

    again = run("export", "--db", str(db), "--out", str(out), check=False)
    assert again.returncode == 2
    assert "already holds an export" in again.stderr
    run("export", "--db", str(db), "--out", str(out), "--overwrite", "--since", "2026-04-02")
    assert ds.dataset(out, format="parquet", partitioning="hive").to_table().num_rows == 200


def test_a_failed_export_leaves_nothing_that_blocks_the_next(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    db, out = tmp_path / "fp.db", tmp_path / "export"
    day = datetime(2026, 4, 1, 12, tzinfo=UTC)
    with FingerprintStore(db) as store:
        store.append("a", np.arange(100), fingerprints(100), created_at=day)
        store.append("b", np.arange(100), fingerprints(100), created_at=day + timedelta(days=1))
    out.mkdir()
    blocker = out / "day=2026-04-02"
    blocker.write_text("a file where the second day's folder must go")
    failed = run("export", "--db", str(db), "--out", str(out), check=False)
    assert failed.returncode == 2, failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    assert "Traceback" not in failed.stderr
    # The first day's folder and file, made before the failure, are gone.
    assert sorted(p.name for p in out.iterdir()) == ["day=2026-04-02"]
    blocker.unlink()
    run("export", "--db", str(db), "--out", str(out))  # no --overwrite needed
    assert ds.dataset(out, format="parquet", partitioning="hive").to_table().num_rows == 200


def test_export_keeps_sparse_columns_however_written(tmp_path: Path) -> None:
    """Exports skip sparse columns that never held a value; each way of writing one (append,
    SQL UPDATE, the seed's view, a converted seed database) must make it count again."""
    import sqlite3
    import struct

    from seed_schema import create_seed_db, seed_insert

    blob = struct.pack("<20f", *([0.05] * 20))
    db = tmp_path / "a.db"
    with FingerprintStore(db) as store:
        store.append("r", [1, 2], fingerprints(2), session_id=["s", None])
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("UPDATE af_fingerprints SET model_id = 'm' WHERE (id & 16777215) = 2")
    conn.execute(
        "INSERT INTO fingerprints (request_id, step, fingerprint, token_text) "
        "VALUES ('v', 1, ?, 'hello')",
        (blob,),
    )
    conn.close()
    seed_path = tmp_path / "seed.db"
    seed = create_seed_db(seed_path)
    seed_insert(seed, [{"request_id": "q", "step": 1, "fingerprint": [0.1] * 20,
                        "sink_token_mass": 0.25}])  # fmt: skip
    seed.close()

    def exported(path: Path) -> dict[str, list[object]]:
        out = tmp_path / f"out-{path.stem}"
        with FingerprintStore(path) as store:
            store.export_parquet(out)
        table = ds.dataset(out, format="parquet", partitioning="hive").to_table()
        return table.sort_by([("request_id", "ascending"), ("step", "ascending")]).to_pydict()

    a = exported(db)
    assert a["session_id"] == ["s", None, None]
    assert a["model_id"] == [None, "m", None]
    assert a["token_text"] == [None, None, "hello"]
    assert a["router_entropy"] == [None, None, None]
    assert exported(seed_path)["sink_token_mass"] == [0.25]


def without_file_capabilities() -> list[str]:
    """A command prefix under which file permissions hold: root's capabilities bypass them."""
    if os.geteuid() != 0:
        return []
    caps = "-dac_override,-dac_read_search,-fowner"
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", "--"]


@pytest.mark.parametrize("read_only", ["file", "folder"])
def test_a_read_only_database_is_one_line_that_names_it(tmp_path: Path, read_only: str) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    db = folder / "fp.db"
    with FingerprintStore(db) as store:
        store.append("r", [1, 2, 3], fingerprints(3))
    before = db.read_bytes()
    (db if read_only == "file" else folder).chmod(0o444 if read_only == "file" else 0o555)
    try:
        for args in (
            ["stats"],
            ["query", "--limit", "2"],
            ["export", "--out", str(tmp_path / "x")],
        ):
            done = subprocess.run(
                [*without_file_capabilities(), ATTNFAST, *args, "--db", str(db)],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert done.returncode == 2, done.stderr
            assert done.stderr.count("\n") == 1, done.stderr
            assert f"cannot open {db}" in done.stderr
            assert "make it writable" in done.stderr
            assert sorted(p.name for p in folder.iterdir()) == ["fp.db"]  # no -wal, no -shm
            assert not (tmp_path / "x").exists()
    finally:
        db.chmod(0o644)
        folder.chmod(0o755)
    assert db.read_bytes() == before
