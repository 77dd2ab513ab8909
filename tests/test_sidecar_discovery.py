"""The sidecar with ``--discovery``: ``/classify`` and ``/discovery/reload`` over real HTTP,
and every stored v1 row classified as it is stored (JSON, binary and ZMQ)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq

from attnfast import FingerprintStore, pack_fingerprints
from attnfast.discovery import SidecarClassifier
from discovery_data import Runs
from test_sidecar import ATTNFAST, Sidecar, free_port


def start(db: Path, discovery: Path, *extra: str) -> Sidecar:
    http, zport = free_port(), free_port()
    process = subprocess.Popen(
        [ATTNFAST, "sidecar", "--db", str(db), "--http", f"127.0.0.1:{http}", "--zmq",
         f"tcp://127.0.0.1:{zport}", "--zmq-layout", "v1", "--discovery", str(discovery),
         *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    car = Sidecar(process, f"http://127.0.0.1:{http}", f"tcp://127.0.0.1:{zport}", db)
    deadline = time.monotonic() + 60
    while True:
        try:
            if car.call("GET", "/health")[0] == 200:
                return car
        except (urllib.error.URLError, ConnectionError):
            pass
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "the sidecar did not start"
        time.sleep(0.1)


@pytest.fixture
def classifying(discovery_runs: Runs, tmp_path: Path) -> Iterator[tuple[Sidecar, Path]]:
    out = tmp_path / "discovery"
    shutil.copytree(discovery_runs.sampled.run_dir.parent, out, symlinks=True)
    car = start(tmp_path / "fp.db", out)
    yield car, out
    car.process.terminate()
    car.process.communicate(timeout=60)


def stored(db: Path) -> dict[tuple[str, int], int]:
    with FingerprintStore(db) as store:
        rows = store.sql("SELECT request_id, step, cluster_id FROM fingerprints")
    return {(r["request_id"], r["step"]): r["cluster_id"] for r in rows}


def test_classify_and_classify_as_stored(
    classifying: tuple[Sidecar, Path], discovery_runs: Runs
) -> None:
    car, out = classifying
    fps = discovery_runs.held_out[:40]
    want = SidecarClassifier(out).classify_batch(fps)["cluster_id"].tolist()
    status, body = car.call("POST", "/classify", {"vector": fps[0].tolist()})
    assert status == 200
    assert body["run_id"] == discovery_runs.sampled.run_id
    assert body["manifold"]["cluster_id"] == want[0]
    status, body = car.call("POST", "/classify", {"vectors": fps[:3].tolist()})
    assert [r["manifold"]["cluster_id"] for r in body["results"]] == want[:3]
    # The seed's error shape, over HTTP.
    status, body = car.call("POST", "/classify", {"vector": [0.5] * 19})
    assert status == 422
    assert body["manifold"]["cluster_label"] == "Error"
    assert "20 values" in body["error"]
    status, body = car.call("POST", "/classify", {"vector": [0.5] * 20})
    assert status == 422
    assert "not a v1 fingerprint" in body["error"]
    assert car.call("POST", "/classify", {"nothing": 1})[0] == 422
    both = {"vector": fps[0].tolist(), "vectors": [fps[0].tolist()]}
    assert car.call("POST", "/classify", both)[0] == 422

    # Stored rows get their cluster: one message, a JSON batch, a binary body, ZMQ.
    status, body = car.call(
        "POST", "/fingerprint", {"request_id": "one", "step": 0, "vector": fps[0].tolist()}
    )
    assert status == 200
    assert body["classification"]["manifold"]["cluster_id"] == want[0]
    # A carried cluster is kept, and the reply says so; a carried -1 (the seed's "none") is not.
    status, body = car.call("POST", "/fingerprint", {
        "request_id": "carried", "step": 0, "vector": fps[1].tolist(),
        "manifold": {"cluster_id": 42, "cluster_probability": 0.5}})  # fmt: skip
    assert body["classification"]["manifold"]["cluster_id"] == 42
    car.call(
        "POST",
        "/fingerprint",
        {
            "request_id": "carried",
            "step": 1,
            "vector": fps[1].tolist(),
            "manifold": {"cluster_id": -1},
        },
    )
    batch = [{"request_id": "json", "step": i, "vector": fps[i].tolist()} for i in range(10)]
    assert car.call("POST", "/fingerprints", batch)[1]["stored"] == 10
    status, body = car.call(
        "POST",
        "/fingerprints?request_id=bin&start_step=0",
        raw=pack_fingerprints(fps[10:20]),
        content_type="application/octet-stream",
    )
    assert status == 200
    assert body["stored"] == 10
    context = zmq.Context.instance()
    push = context.socket(zmq.PUSH)
    push.connect(car.zmq)
    for i in range(20, 40):
        push.send(json.dumps({"request_id": "zmq", "step": i, "vector": fps[i].tolist()}).encode())
    push.close(linger=5000)
    deadline = time.monotonic() + 30
    while car.call("GET", "/stats")[1]["counters"].get("zmq_rows", 0) < 20:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    car.call("POST", "/storage/flush")
    rows = stored(car.db)
    assert rows[("one", 0)] == want[0]
    assert (rows[("carried", 0)], rows[("carried", 1)]) == (42, want[1])
    assert [rows[("json", i)] for i in range(10)] == want[:10]
    assert [rows[("bin", i)] for i in range(10)] == want[10:20]
    assert [rows[("zmq", i)] for i in range(20, 40)] == want[20:40]
    c = car.call("GET", "/stats")[1]["classifier"]
    assert c["loaded"]
    assert c["run_id"] == discovery_runs.sampled.run_id
    assert car.call("GET", "/health")[1]["classifier_loaded"] is True


def test_reload_picks_up_a_new_run(discovery_runs: Runs, tmp_path: Path) -> None:
    out = tmp_path / "discovery"
    out.mkdir()
    car = start(tmp_path / "fp.db", out, "--reload-seconds", "0")
    try:
        status, body = car.call("POST", "/classify", {"vector": [0.1] * 20})
        assert status == 503
        assert "no discovery run" in body["error"]
        assert car.call("POST", "/discovery/reload")[0] == 503
        shutil.copytree(discovery_runs.full.run_dir, out / discovery_runs.full.run_id)
        (out / "latest").symlink_to(discovery_runs.full.run_id)
        status, body = car.call("POST", "/discovery/reload")
        assert status == 200
        assert body["reloaded"] is True
        assert body["run_id"] == discovery_runs.full.run_id
        assert car.call("POST", "/discovery/reload")[1]["reloaded"] is False
        fp = discovery_runs.fps[0].tolist()
        assert car.call("POST", "/classify", {"vector": fp})[0] == 200
    finally:
        car.process.terminate()
        car.process.communicate(timeout=60)
    assert np.isfinite(car.process.returncode)
