"""Real processes: SIGKILL during ingestion, and several processes appending to one file."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from attnfast import FingerprintStore
from attnfast.synthetic import fingerprints
from summary_reference import assert_summaries_match

BATCH = 1000

# Appends batch after batch; after each flush() returns, records the batch as acknowledged.
KILLED_WRITER = f"""
import os, sys, numpy as np
from attnfast import FingerprintStore
from attnfast.synthetic import fingerprints
db, acks = sys.argv[1], sys.argv[2]
with FingerprintStore(db) as store, open(acks, "a") as out:
    for i in range(100000):
        fps = fingerprints({BATCH}, seed=i)
        store.append(f"kill-{{i}}", np.arange({BATCH}), fps, token_text=f"batch {{i}}")
        if i % 3 == 0:
            store.flush()
            out.write(f"{{i}}\\n")
            out.flush()
"""

PARALLEL_WRITER = """
import sys, numpy as np
from attnfast import FingerprintStore
from attnfast.synthetic import fingerprints
db, me = sys.argv[1], int(sys.argv[2])
with FingerprintStore(db) as store:
    for b in range(30):
        fps = fingerprints(500, seed=me)
        store.append(f"p{me}-{b}", np.arange(500), fps)
        store.append("shared", np.arange(b * 10, b * 10 + 10), fps[:10])
        if b % 5 == 0:
            store.flush()
print("ok")
"""


def test_sigkill_loses_nothing_acknowledged(tmp_path: Path) -> None:
    db, acks = tmp_path / "fp.db", tmp_path / "acks.txt"
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(db), str(acks)])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if acks.exists() and len(acks.read_text().split()) >= 8:
            break
        assert child.poll() is None, "the writer died on its own"
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    acknowledged = [int(x) for x in acks.read_text().split()]
    assert len(acknowledged) >= 8

    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # Three writers interleaved the shared request's steps: its summary still adds up.
    assert_summaries_match(conn)
    conn.close()
    with FingerprintStore(db) as store:
        # Every batch up to the last acknowledged one was appended before that flush.
        for i in range(acknowledged[-1] + 1):
            cols = store.read(request_id=f"kill-{i}", format="numpy")
            expected = fingerprints(BATCH, seed=i)
            np.testing.assert_array_equal(cols["fingerprint"], expected)
            assert cols["step"].tolist() == list(range(BATCH))
        # request_summary is written in the same transactions as the rows.
        summary = store.sql("SELECT sum(total_steps) AS n FROM request_summary")[0]["n"]
        assert summary == store.count()


def test_processes_append_to_one_database(tmp_path: Path) -> None:
    db = tmp_path / "fp.db"
    FingerprintStore(db).close()
    children = [
        subprocess.Popen(
            [sys.executable, "-c", PARALLEL_WRITER, str(db), str(me)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for me in range(3)
    ]
    for child in children:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err
        assert out.strip() == "ok"
        assert "locked" not in err
    with FingerprintStore(db) as store:
        assert store.count() == 3 * 30 * 500 + 300
        # Each process offered all 300 shared steps; the first writer of each step won.
        assert store.stats()["duplicates_rejected"] == 2 * 300
        for me in range(3):
            for b in range(30):
                cols = store.read(request_id=f"p{me}-{b}", format="numpy")
                assert len(cols["step"]) == 500
                np.testing.assert_array_equal(cols["fingerprint"], fingerprints(500, seed=me))
        shared = store.read(request_id="shared", format="numpy")
        assert shared["step"].tolist() == list(range(300))
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # Three writers interleaved the shared request's steps: its summary still adds up.
    assert_summaries_match(conn)
