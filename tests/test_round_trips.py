"""What attnfast writes, attnfast reads back equal: export -> ingest -> export on a database
with every column and both layouts (and rows flagged invalid), a whole export folder at once,
``query --format parquet`` beside export, and capture files through the seed's JSON."""

from __future__ import annotations

import json
import os
import sqlite3
import struct
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from attnfast import CaptureFile, CaptureWriter, FingerprintStore
from attnfast.synthetic import fingerprints

ATTNFAST = str(Path(sys.executable).with_name("attnfast"))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [ATTNFAST, *args], capture_output=True, text=True, check=True, env=env, timeout=300
    )


def full_database(path: Path) -> None:
    """Rows with every column, both layouts, two days, and a row flagged invalid."""
    day = datetime(2026, 6, 1, 22, tzinfo=UTC)
    rng = np.random.default_rng(3)
    n = 60
    with FingerprintStore(path) as store:
        store.append(
            [f"v{i % 3}" for i in range(n)], np.arange(n) // 3, fingerprints(n, seed=1),
            created_at=[day + timedelta(minutes=5 * i) for i in range(n)],
            session_id=[None if i % 4 else "s" for i in range(n)],
            token_id=[None if i % 5 == 0 else i for i in range(n)],
            token_text=[f"t{i}" if i % 6 else None for i in range(n)],
            think_phase=["think", "output", "unknown", None] * (n // 4),
            segment_idx=np.arange(n) % 3,
            manifold_confidence=[None if i % 7 == 0 else 0.5 for i in range(n)],
            cluster_id=[None if i % 9 == 0 else int(i % 4) - 1 for i in range(n)],
            cluster_probability=rng.random(n),
            router_entropy=[None if i % 2 else float(i) for i in range(n)],
            expert_load_balance=0.25,
            sink_token_mass=rng.random(n),
            model_id="m",
            top_k_positions=[None if i % 8 == 0 else [i, i + 1] for i in range(n)],
            top_k_scores=[None if i % 8 == 0 else [0.75, 0.25] for i in range(n)],
            capture_layer_ids=[[0, 1, 2]] * n,
            top_expert_ids=[None if i % 3 else [i % 5, 7] for i in range(n)],
        )  # fmt: skip
        store.append("g", np.arange(20), fingerprints(20, seed=2, layout="sglang"),
                     layout="sglang", created_at=day, token_text="x")  # fmt: skip
        flagged = np.full((1, 20), 0.05, np.float32)
        store.append("bad", [0], flagged, invalid=True, created_at=day)


def read_export(out: Path) -> pa.Table:
    table = ds.dataset(out, format="parquet", partitioning="hive").to_table()
    return table.drop_columns(["day"]).sort_by([("request_id", "ascending"), ("step", "ascending")])


def test_export_ingest_export_is_equal(tmp_path: Path) -> None:
    first, second = tmp_path / "a.db", tmp_path / "b.db"
    full_database(first)
    run("export", "--db", str(first), "--out", str(tmp_path / "e1"))
    # One day's file mixes both layouts and the invalid row: one layout per row.
    day1 = pq.read_table(tmp_path / "e1" / "day=2026-06-01" / "part-0.parquet")
    assert set(day1.column("schema_version").to_pylist()) == {1, 1001}
    printed = run("ingest", "--db", str(second), str(tmp_path / "e1")).stdout  # the folder
    assert "2 files: 81 stored" in printed
    run("export", "--db", str(second), "--out", str(tmp_path / "e2"))
    a, b = read_export(tmp_path / "e1"), read_export(tmp_path / "e2")
    assert a.num_rows == 81
    # Equal in every column; ids are the target store's own (its requests' keys).
    assert a.drop_columns(["id"]).equals(b.drop_columns(["id"]))
    assert a.column("invalid").to_pylist().count(True) == 1
    # The second store knows what the first knew about its rows.
    with FingerprintStore(first) as s1, FingerprintStore(second) as s2:
        keys = ("rows", "rows_by_layout", "zones", "unzoned_rows", "invalid_rows", "requests")
        assert {k: s1.stats()[k] for k in keys} == {k: s2.stats()[k] for k in keys}
        assert summaries(s1) == summaries(s2)
    # --layout is for untagged vectors: each exported row keeps its own schema_version.
    third = tmp_path / "c.db"
    run("ingest", "--db", str(third), "--layout", "sglang", str(tmp_path / "e1"))
    with FingerprintStore(first) as s1, FingerprintStore(third) as s3:
        assert s3.stats()["rows_by_layout"] == s1.stats()["rows_by_layout"]


def summaries(store: FingerprintStore) -> dict[str, dict[str, Any]]:
    """request_summary by request, without created_at (when the summary row was made)."""
    return {
        r["request_id"]: {k: v for k, v in r.items() if k != "created_at"} for r in store.requests()
    }


def test_query_parquet_and_export_share_one_schema(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    full_database(db)
    run("export", "--db", str(db), "--out", str(tmp_path / "e"))
    run("query", "--db", str(db), "--request", "g", "--format", "parquet",
        "--out", str(tmp_path / "q.parquet"))  # fmt: skip
    queried = pq.read_table(tmp_path / "q.parquet")
    exported = pq.read_table(tmp_path / "e" / "day=2026-06-01" / "part-0.parquet")
    assert queried.schema.remove_metadata() == exported.schema.remove_metadata()
    both = pa.concat_tables([queried, exported])
    assert both.num_rows == queried.num_rows + exported.num_rows
    # And the queried file ingests like an exported one.
    printed = run("ingest", "--db", str(tmp_path / "b.db"), str(tmp_path / "q.parquet")).stdout
    assert "20 stored" in printed


def test_query_json_gives_every_row_and_limit_zero_is_all(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    full_database(db)
    rows = json.loads(run("query", "--db", str(db), "--format", "json").stdout)
    assert len(rows) == 81  # not cut at the table's 20
    assert (
        len(json.loads(run("query", "--db", str(db), "--format", "json", "--limit", "0").stdout))
        == 81
    )
    limited = run("query", "--db", str(db), "--format", "json", "--limit", "5")
    assert len(json.loads(limited.stdout)) == 5
    assert "76 more matching rows left out" in limited.stderr
    table = run("query", "--db", str(db)).stdout
    assert "20 of 81 rows" in table
    assert "--limit 0 shows them all" in table
    assert "81 rows" in run("query", "--db", str(db), "--limit", "0").stdout


def capture_with_prompt_rows(path: Path) -> None:
    tokens = [{"token_id": 1, "text": "a"}]
    meta = {"model": "m", "mode": "full", "layers": [0, 2], "heads": None, "every_n": 2,
            "sequences": [{"request_id": "req", "prompt_tokens": tokens}]}  # fmt: skip
    rng = np.random.default_rng(0)
    with CaptureWriter(path, meta) as w:
        for q in range(3):
            w.write_step(sequence=0, step=q, token_id=10 + q, position=q + 1, timestamp_ms=q,
                         text=f"p{q}", attention=rng.dirichlet([1] * (q + 1), size=(2, 3)),
                         prompt=True)  # fmt: skip
        for t in range(4):
            row = rng.dirichlet([1] * (4 + t), size=(2, 3))
            w.write_step(sequence=0, step=t, token_id=20 + t, position=4 + t, timestamp_ms=9,
                         text=f"g{t}", attention=row)  # fmt: skip


def test_capture_json_round_trip_keeps_metadata_and_prompt_rows(tmp_path: Path) -> None:
    src, js, back = tmp_path / "a.attn", tmp_path / "a.json", tmp_path / "b.attn"
    capture_with_prompt_rows(src)
    run("convert", str(src), "--to", "json", "--out", str(js))
    run("convert", str(js), "--to", "attn", "--out", str(back))
    a, b = CaptureFile(src), CaptureFile(back)
    for key in ("model", "mode", "layers", "heads", "every_n"):
        assert a.meta[key] == b.meta[key], key
    assert b.sequences[0]["request_id"] == "req"
    assert b.prompt_tokens() == a.prompt_tokens()
    for table in ("steps", "prompt_steps"):
        for column, values in getattr(a, table).items():
            got = getattr(b, table)[column]
            assert list(got) == list(values), (table, column)
    for i in range(len(a)):
        np.testing.assert_array_equal(a.attention(i), b.attention(i))
    for i in range(3):
        np.testing.assert_array_equal(a.prompt_attention(i), b.prompt_attention(i))
    # The seed's readers see what they know: the JSON is the seed's, with additions.
    data = json.loads(js.read_text())
    assert len(data["generated_tokens"]) == 4
    assert len(data["prompt_attention"]) == 3
    assert data["metadata"]["layers"] == [0, 2]


def test_parquet_from_elsewhere_is_read_or_refused_clearly(tmp_path: Path) -> None:
    """A Parquet file written by another tool: lists of doubles are fingerprints too; a file
    without the needed columns is refused naming them."""
    vectors = fingerprints(4).astype(np.float64)
    table = pa.table({
        "request_id": ["x"] * 4, "step": [1, 2, 3, 4],
        "fingerprint": pa.array(vectors.tolist(), pa.list_(pa.float64())),
    })  # fmt: skip
    pq.write_table(table, tmp_path / "other.parquet")
    assert (
        "4 stored"
        in run("ingest", "--db", str(tmp_path / "a.db"), str(tmp_path / "other.parquet")).stdout
    )
    pq.write_table(table.drop_columns(["step"]), tmp_path / "nostep.parquet")
    bad = subprocess.run(
        [ATTNFAST, "ingest", "--db", str(tmp_path / "a.db"), str(tmp_path / "nostep.parquet")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert "missing column(s) step" in bad.stderr
    conn = sqlite3.connect(tmp_path / "a.db")
    (raw,) = conn.execute("SELECT fingerprint FROM fingerprints WHERE step = 1").fetchone()
    assert struct.unpack("<20f", raw) == tuple(vectors[0].astype(np.float32).tolist())
