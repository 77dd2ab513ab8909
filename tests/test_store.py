"""FingerprintStore: appending, reading back, filters, duplicates, errors, threads."""

from __future__ import annotations

import sqlite3
import struct
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import attnfast
from attnfast import (
    DuplicateStepError,
    FingerprintStore,
    InvalidInputError,
    MissingFileError,
    ShapeError,
    StoreError,
)
from attnfast.synthetic import fingerprints


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "fp.db"


def fps(rng: np.random.Generator, n: int, layout: str = "v1") -> np.ndarray:
    """Random fingerprints of a layout (random floats are not fingerprints: refused)."""
    return fingerprints(n, seed=int(rng.integers(1 << 31)), layout=layout)


ONE = fingerprints(1, seed=7)  # one valid v1 vector


def test_round_trip_all_columns(db: Path, rng: np.random.Generator) -> None:
    vectors = fps(rng, 4)
    created = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
    with FingerprintStore(db) as store:
        store.append(
            ["a", "a", "b", "a"],
            [1, 2, 1, 3],
            vectors,
            created_at=created,
            session_id="s1",
            token_id=[10, None, 12, 13],
            token_text=["x", "é", None, "z"],
            think_phase=["think", "output", None, "unknown"],
            segment_idx=[0, 1, 0, 2],
            manifold_zone=["syntax_floor", None, "unknown", "structure_ripple"],
            manifold_confidence=[0.5, None, 0.25, 1.0],
            cluster_id=[3, -1, 4, 3],
            cluster_probability=0.75,
            router_entropy=[1.5, 2.5, np.nan, 0.0],
            expert_load_balance=0.1,
            sink_token_mass=[0.9, 0.8, 0.7, 0.6],
            model_id="m",
            top_k_positions=[[5, 1], None, [7], [1, 2, 3]],
            top_k_scores=[[0.5, 0.5], None, [0.25], [0.5, 0.25, 0.125]],
            capture_layer_ids=[[0, 11]] * 4,
            top_expert_ids=[None, [1, 2], None, None],
        )
        store.flush()
        cols = store.read(format="numpy")
    # Ids order rows by request, then step.
    order = [0, 1, 3, 2]
    assert cols["request_id"] == ["a", "a", "a", "b"]
    assert cols["step"].tolist() == [1, 2, 3, 1]
    np.testing.assert_array_equal(cols["fingerprint"], vectors[order])
    assert cols["token_id"].tolist() == [10, 0, 13, 12]
    assert cols["token_id_valid"].tolist() == [True, False, True, True]
    assert cols["token_text"] == ["x", "é", "z", None]
    assert cols["think_phase"] == ["think", "output", "unknown", None]
    # A v1 row given no zone gets the rule zone and its confidence.
    (rule_zone,), (rule_confidence,) = attnfast.zone_of(vectors[1])
    assert cols["manifold_zone"] == ["syntax_floor", rule_zone, "structure_ripple", "unknown"]
    np.testing.assert_allclose(cols["manifold_confidence"], [0.5, rule_confidence, 1.0, 0.25])
    assert cols["cluster_id"].tolist() == [3, -1, 3, 4]
    np.testing.assert_array_equal(cols["router_entropy"], [1.5, 2.5, 0.0, np.nan])
    assert cols["session_id"] == ["s1"] * 4
    assert cols["model_id"] == ["m"] * 4
    assert [None if p is None else p.tolist() for p in cols["top_k_positions"]] == [
        [5, 1],
        None,
        [1, 2, 3],
        [7],
    ]
    assert cols["top_k_scores"][0].tolist() == [0.5, 0.5]
    assert cols["top_expert_ids"][1].tolist() == [1, 2]
    assert cols["top_expert_ids"][0] is None
    assert cols["schema_version"].tolist() == [1] * 4
    assert set(cols["created_at"].tolist()) == {np.datetime64("2026-03-04T05:06:07.123456")}


def test_arrow_table_types(db: Path, rng: np.random.Generator) -> None:
    with FingerprintStore(db) as store:
        store.append("r", np.arange(3), fps(rng, 3), token_id=[1, 2, 3])
        store.flush()
        table = store.read()
    assert isinstance(table, pa.Table)
    item = pa.field("item", pa.float32(), nullable=False)
    assert table.schema.field("fingerprint").type == pa.list_(item, 20)
    assert table.schema.field("invalid").type == pa.bool_()
    assert table.schema.field("created_at").type == pa.timestamp("us", tz="UTC")
    assert table.column("token_id").to_pylist() == [1, 2, 3]
    assert table.column("step").to_pylist() == [0, 1, 2]


def test_single_row_and_default_zone(db: Path) -> None:
    local = np.zeros(20, np.float32)
    local[0], local[1], local[3], local[5] = 0.9, 0.1, 0.5, 1.0  # local, low entropy: syntax_floor
    with FingerprintStore(db) as store:
        assert store.append("one", 7, local) == 1
        store.flush()
        cols = store.read(format="numpy")
    assert cols["step"].tolist() == [7]
    assert cols["manifold_zone"] == ["syntax_floor"]
    expected = min(1.0, 0.9 * (1 - 0.5 / 4))
    assert cols["manifold_confidence"][0] == pytest.approx(expected, rel=1e-6)


def test_sglang_layout_is_tagged_and_not_zoned(db: Path, rng: np.random.Generator) -> None:
    with FingerprintStore(db) as store:
        store.append("s", [1, 2], fps(rng, 2, "sglang"), layout="sglang")
        store.append("v", [1], fps(rng, 1))
        store.flush()
        sglang = store.read(layout="sglang", format="numpy")
        native = store.read(layout=attnfast.Layout.V1, format="numpy")
    assert sglang["request_id"] == ["s", "s"]
    assert sglang["schema_version"].tolist() == [1001, 1001]
    assert sglang["manifold_zone"] == [None, None]
    assert native["request_id"] == ["v"]


def test_filters(db: Path, rng: np.random.Generator) -> None:
    base = datetime(2026, 5, 1, 12, tzinfo=UTC)
    with FingerprintStore(db) as store:
        for hour in range(5):
            store.append(
                f"req-{hour}",
                np.arange(10),
                fps(rng, 10),
                created_at=base + timedelta(hours=hour),
                cluster_id=hour % 2,
                manifold_zone="semantic_bridge" if hour == 3 else "syntax_floor",
            )
        store.flush()
        since = store.read(since=base + timedelta(hours=2), format="numpy")
        assert sorted(set(since["request_id"])) == ["req-2", "req-3", "req-4"]
        window = store.read(
            since=base + timedelta(hours=1), until=base + timedelta(hours=3), format="numpy"
        )
        assert sorted(set(window["request_id"])) == ["req-1", "req-2"]
        # ISO text with 'T' against a row later the same day: the seed's bug dropped these.
        iso = store.read(since="2026-05-01T13:30:00", format="numpy")
        assert sorted(set(iso["request_id"])) == ["req-2", "req-3", "req-4"]
        # Unix seconds as a number or as text (what a command line passes) mean the same.
        seconds = (base + timedelta(hours=2)).timestamp()
        for as_given in (seconds, int(seconds), str(int(seconds)), f"{seconds:.1f}"):
            got = store.read(since=as_given, format="numpy")["request_id"]
            assert sorted(set(got)) == ["req-2", "req-3", "req-4"], as_given
        assert store.read(zone="semantic_bridge", format="numpy")["request_id"] == ["req-3"] * 10
        assert set(store.read(cluster_id=1, format="numpy")["request_id"]) == {"req-1", "req-3"}
        one = store.read(request_id="req-4", format="numpy")
        assert one["step"].tolist() == list(range(10))
        assert store.read(request_id="missing", format="numpy")["request_id"] == []
        newest = store.read(limit=3, newest_first=True, format="numpy")
        assert newest["request_id"] == ["req-4"] * 3
        assert newest["step"].tolist() == [9, 8, 7]
        assert store.read(since="1h").num_rows == 0  # rows are from May
        assert store.read(since=base + timedelta(days=9)).num_rows == 0


def test_duplicates_are_skipped_and_counted(db: Path, rng: np.random.Generator) -> None:
    first, second = fps(rng, 3), fps(rng, 3)
    with FingerprintStore(db) as store:
        store.append("r", [1, 2, 3], first)
        store.flush()
        store.append("r", [2, 3, 4], second)
        store.flush()
        cols = store.read(format="numpy")
        stats = store.stats()
    assert cols["step"].tolist() == [1, 2, 3, 4]
    np.testing.assert_array_equal(cols["fingerprint"][:3], first)  # never overwritten
    np.testing.assert_array_equal(cols["fingerprint"][3], second[2])
    assert stats["duplicates_rejected"] == 2
    assert stats["writer"]["duplicates_rejected"] == 2


def test_duplicates_within_one_batch_keep_the_first(db: Path, rng: np.random.Generator) -> None:
    vectors = fps(rng, 200)
    steps = np.arange(200)
    steps[150] = 10  # a repeat inside one chunk of the multi-row insert
    with FingerprintStore(db) as store:
        store.append("r", steps, vectors)
        store.flush()
        cols = store.read(request_id="r", format="numpy")
        assert store.stats()["duplicates_rejected"] == 1
    assert len(cols["step"]) == 199
    np.testing.assert_array_equal(cols["fingerprint"][10], vectors[10])


def test_duplicate_policy_error(db: Path, rng: np.random.Generator) -> None:
    with FingerprintStore(db, on_duplicate="error") as store:
        store.append("r", [1, 2], fps(rng, 2))
        store.flush()
        store.append("r", [2, 3], fps(rng, 2))
        with pytest.raises(DuplicateStepError, match=r'1 row\(s\) repeat .*\("r", 2\)'):
            store.flush()
        store.flush()  # reported once
        assert store.read(format="numpy")["step"].tolist() == [1, 2, 3]


def test_request_summary_counts(db: Path, rng: np.random.Generator) -> None:
    with FingerprintStore(db) as store:
        store.append("q", [1, 2, 3], fps(rng, 3), think_phase=["think", "think", "output"])
        store.flush()
        store.append("q", [4], fps(rng, 1), think_phase="think", model_id="m")
        store.flush()
        (summary,) = store.requests()
    assert summary["request_id"] == "q"
    assert summary["total_steps"] == 4
    # Every row counts (the seed's trigger left out the first row's phase).
    assert summary["think_steps"] == 3
    assert summary["output_steps"] == 1
    assert summary["model_id"] is None  # the first step had none


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"steps": [-1]}, InvalidInputError, "step of row 0 is -1"),
        ({"steps": [1 << 24]}, InvalidInputError, "steps must be from 0 to 16777215"),
        ({"request_ids": [""]}, InvalidInputError, "request_id of row 0 is empty"),
        ({"request_ids": [3]}, InvalidInputError, r"request_ids\[0\] must be a str"),
        ({"fingerprints": np.full((1, 20), np.nan, np.float32)}, InvalidInputError, "NaN"),
        (
            {"fingerprints": np.full((1, 20), 0.05, np.float32)},
            InvalidInputError,
            r"fingerprint of row 0 is not a v1 vector: it has masses \(indices 0..2\) summing",
        ),
        (
            {"fingerprints": ONE * np.where(np.arange(20) == 12, -1, 1).astype(np.float32)},
            InvalidInputError,
            r"negative value .* at index 12",
        ),
        (
            {"top_k_positions": [[1, 2]], "top_k_scores": [[0.5]]},
            ShapeError,
            "row 0: top_k_positions has 2 entries but top_k_scores has 1",
        ),
        ({"invalid": ["yes"]}, attnfast.DtypeError, "invalid must be booleans"),
        ({"fingerprints": np.zeros((1, 19), np.float32)}, ShapeError, r"\(T, 20\)"),
        ({"think_phase": "dreaming"}, InvalidInputError, "think_phase of row 0 is 'dreaming'"),
        ({"manifold_zone": "nowhere"}, InvalidInputError, "manifold_zone of row 0"),
        ({"token_id": [1, 2]}, ShapeError, "token_id must be one value or 1 values"),
        ({"steps": [1.5]}, attnfast.DtypeError, "steps must be integers"),
        ({"colour": "red"}, InvalidInputError, "unknown column"),
        ({"layout": "v9"}, attnfast.LayoutError, "unknown fingerprint layout 'v9'"),
        ({"created_at": "yesterday-ish"}, InvalidInputError, "created_at must be a datetime"),
    ],
)
def test_bad_rows_raise_and_store_nothing(
    db: Path, kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    args: dict[str, object] = {"request_ids": ["r"], "steps": [1], "fingerprints": ONE}
    extra = {k: v for k, v in kwargs.items() if k not in args}
    args.update({k: v for k, v in kwargs.items() if k in args})
    with FingerprintStore(db) as store:
        store.append("keep", [1], ONE)
        with pytest.raises(error, match=message):
            store.append(args["request_ids"], args["steps"], args["fingerprints"], **extra)  # type: ignore[arg-type]
        store.flush()
        assert store.read(format="numpy")["request_id"] == ["keep"]


def test_closed_store_and_bad_paths(tmp_path: Path) -> None:
    store = FingerprintStore(tmp_path / "x.db")
    store.close()
    store.close()
    assert store.closed
    with pytest.raises(StoreError, match="is closed"):
        store.append("r", [1], ONE)
    with pytest.raises(StoreError, match="is a folder"):
        FingerprintStore(tmp_path)
    with pytest.raises(MissingFileError, match="does not exist") as missing:
        FingerprintStore(tmp_path / "nope" / "x.db")
    assert isinstance(missing.value, FileNotFoundError)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=r"cannot open .*garbage.db"):
        FingerprintStore(garbage)
    assert garbage.read_bytes() == b"this is not a database" * 100
    with pytest.raises(InvalidInputError, match="synchronous must be"):
        FingerprintStore(tmp_path / "y.db", synchronous="sometimes")  # type: ignore[arg-type]


def test_many_threads_append_concurrently(db: Path) -> None:
    def work(t: int) -> None:
        rng = np.random.default_rng(t)
        for b in range(20):
            store.append(f"t{t}", np.arange(b * 50, (b + 1) * 50), fps(rng, 50))

    with FingerprintStore(db, max_queued_rows=100) as store:
        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        store.flush()
        assert store.count() == 4 * 20 * 50
        for t in range(4):
            assert store.read(request_id=f"t{t}", format="numpy")["step"].tolist() == list(
                range(1000)
            )


def test_synchronous_full_and_pragmas(db: Path) -> None:
    with FingerprintStore(db, synchronous="full") as store:
        store.append("r", [1], ONE)
        store.flush()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_blobs_are_the_seeds_packing(db: Path, rng: np.random.Generator) -> None:
    vectors = fps(rng, 2)
    with FingerprintStore(db) as store:
        store.append("r", [1, 2], vectors, top_k_positions=[[1, 2], [3, 4]])
        store.flush()
    conn = sqlite3.connect(db)
    rows = conn.execute(
        "SELECT fingerprint, top_k_positions FROM fingerprints ORDER BY step"
    ).fetchall()
    assert rows[0][0] == struct.pack("<20f", *vectors[0].tolist())
    assert struct.unpack("<2i", rows[1][1]) == (3, 4)


def test_back_pressure_bounds_the_queue(db: Path, rng: np.random.Generator) -> None:
    with FingerprintStore(db, max_queued_rows=1000) as store:
        peak = 0
        for i in range(50):
            store.append("r", np.arange(i * 500, (i + 1) * 500), fps(rng, 500))
            peak = max(peak, store.stats()["writer"]["queued_rows"])
        store.flush()
        assert store.count() == 25_000
    assert peak <= 1000


def test_bad_arguments_are_value_errors_that_name_them(db: Path) -> None:
    with FingerprintStore(db) as store:
        for request_ids in (None, 5):
            with pytest.raises(InvalidInputError, match="request_ids must be one string"):
                store.append(request_ids, [1], fingerprints(1))
        with pytest.raises(InvalidInputError, match="format must be 'arrow' or 'numpy'"):
            store.read(format="pandas")  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="cluster_id must be an integer"):
            store.read(cluster_id="x")  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="limit must be a non-negative integer"):
            store.read(limit=2.5)  # type: ignore[arg-type]
        # Nothing to write is not an error, whatever dtype numpy gives an empty list.
        assert store.write("a", [], np.zeros((0, 20), np.float32)).stored == 0
        taken = db.with_name("taken.npy")
        taken.write_bytes(b"keep me")
        with pytest.raises(InvalidInputError, match=f"{taken} is a file; export writes a folder"):
            store.export_parquet(taken)
        assert taken.read_bytes() == b"keep me"
        assert store.count() == 0
