"""The discovery job's bulk write of clusters against the row-by-row path: the same rows
updated through the table's own trigger (what any SQL client gets) must leave every count
the same: cluster_growth, request_summary's dominant cluster and transitions."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np

from attnfast import FingerprintStore
from attnfast.synthetic import fingerprints

DERIVED = [
    "SELECT * FROM af_cluster_daily ORDER BY day, cluster_id",
    "SELECT * FROM af_request_clusters ORDER BY request_key, cluster_id",
    "SELECT request_key, cluster_transitions FROM af_request_stats ORDER BY request_key",
    "SELECT request_id, dominant_cluster_id, cluster_transitions FROM request_summary "
    "ORDER BY request_id",
    "SELECT * FROM cluster_growth ORDER BY day, cluster_id",
    "SELECT key, value FROM af_meta ORDER BY key",
    "SELECT id, cluster_id, cluster_probability FROM af_fingerprints ORDER BY id",
]


def derived(db: Path) -> list[list[tuple[object, ...]]]:
    conn = sqlite3.connect(db)
    try:
        return [conn.execute(q).fetchall() for q in DERIVED]
    finally:
        conn.close()


def test_bulk_cluster_writes_keep_every_count_as_the_trigger_does(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    a, b = tmp_path / "bulk.db", tmp_path / "rows.db"
    n = 1200
    with FingerprintStore(a) as store:
        store.append(
            [f"r{i % 37}" for i in range(n)],
            np.arange(n) // 37,
            fingerprints(n),
            created_at=1_700_000_000 + np.arange(n) * 400.0,
        )  # spans several days
        store.flush()
    shutil.copy(a, b)
    with sqlite3.connect(a) as conn:
        ids = np.asarray([r[0] for r in conn.execute("SELECT id FROM af_fingerprints")])
    for round_ in range(3):  # new clusters, then changed ones, then a subset
        pick = ids if round_ < 2 else rng.choice(ids, 300, replace=False)
        clusters = rng.integers(-1, 6, len(pick)).astype(np.int32)
        prob = np.where(clusters >= 0, rng.random(len(pick)), 0).astype(np.float32)
        with FingerprintStore(a) as store:
            stored = store._store.write_discovery([], pick.astype(np.int64), clusters, prob)
        assert stored == len(pick)
        conn = sqlite3.connect(b)
        conn.executemany(
            "UPDATE af_fingerprints SET cluster_id = ?, cluster_probability = ? WHERE id = ?",
            [(int(c), float(p), int(i)) for c, p, i in zip(clusters, prob, pick, strict=True)],
        )
        conn.commit()
        conn.close()
        assert derived(a) == derived(b), round_
    # The trigger is back: a later SQL update keeps the counts right on the bulk database too.
    for db in (a, b):
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE af_fingerprints SET cluster_id = 9 WHERE id = ?", [int(ids[5])])
    assert derived(a) == derived(b)
    # Ids no longer stored are skipped, and said so.
    with FingerprintStore(a) as store:
        gone = np.asarray([ids[0], 12345678901], np.int64)
        assert (
            store._store.write_discovery(
                [], gone, np.asarray([1, 1], np.int32), np.asarray([0.5, 0.5], np.float32)
            )
            == 1
        )
