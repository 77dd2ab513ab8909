"""The sidecar as users run it: `attnfast sidecar` in its own process, real HTTP on
127.0.0.1 and a real ZMQ PUSH socket."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from attnfast import FingerprintStore

ATTNFAST = str(Path(sys.executable).with_name("attnfast"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Sidecar:
    process: subprocess.Popen[str]
    url: str
    zmq: str
    db: Path

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": content_type}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[Sidecar]:
    db, http, zport = tmp_path / "fp.db", free_port(), free_port()
    process = subprocess.Popen(
        [
            ATTNFAST, "sidecar", "--db", str(db), "--http", f"127.0.0.1:{http}",
            "--zmq", f"tcp://127.0.0.1:{zport}", "--max-body-mb", "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    car = Sidecar(process, f"http://127.0.0.1:{http}", f"tcp://127.0.0.1:{zport}", db)
    deadline = time.monotonic() + 60
    while True:
        try:
            if car.call("GET", "/health")[0] == 200:
                break
        except (urllib.error.URLError, ConnectionError):
            pass
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "the sidecar did not start"
        time.sleep(0.1)
    yield car
    if process.poll() is None:
        process.kill()
    process.communicate(timeout=60)  # also closes the pipes


def message(request: str, step: int | None, rng: np.random.Generator) -> dict[str, Any]:
    m: dict[str, Any] = {
        "request_id": request,
        "vector": rng.random(20).tolist(),
        "metadata": {"token_text": "x", "token_id": 5},
        "manifold": {"zone": "semantic_bridge", "confidence": 0.5},
    }
    if step is not None:
        m["step"] = step
    return m


def rows(db: Path, request: str) -> dict[str, Any]:
    with FingerprintStore(db) as store:
        result: dict[str, Any] = store.read(request_id=request, format="numpy")
        return result


def test_http_endpoints(sidecar: Sidecar, rng: np.random.Generator) -> None:
    status, health = sidecar.call("GET", "/health")
    assert status == 200
    assert health["status"] == "healthy"

    local = [0.9, 0.05, 0.0, 0.5] + [0.0] * 16
    status, body = sidecar.call(
        "POST", "/fingerprint", {"request_id": "h1", "step": 3, "vector": local}
    )
    assert status == 200
    assert body["status"] == "accepted"
    assert body["classification"]["manifold"]["zone"] == "syntax_floor"
    assert body["classification"]["schema_version"] == 1

    batch = [message("h2", 1, rng), message("h2", None, rng), message("h2", 7, rng)]
    status, body = sidecar.call("POST", "/fingerprints", {"fingerprints": batch})
    assert (status, body) == (200, {"status": "accepted", "accepted": 3})

    packed = struct.pack("<40f", *rng.random(40).tolist())
    status, body = sidecar.call(
        "POST", "/fingerprints?request_id=h3&start_step=10", raw=packed,
        content_type="application/octet-stream",
    )  # fmt: skip
    assert (status, body) == (200, {"status": "accepted", "accepted": 2})

    status, body = sidecar.call("POST", "/storage/flush")
    assert (status, body) == (200, {"status": "flushed", "rows": 6})
    status, stats = sidecar.call("GET", "/stats")
    assert stats["storage"]["rows"] == 6
    assert stats["counters"]["http_rows"] == 6

    assert rows(sidecar.db, "h1")["step"].tolist() == [3]
    h2 = rows(sidecar.db, "h2")
    assert h2["step"].tolist() == [1, 2, 7]  # a missing step follows the request's last one
    assert h2["manifold_zone"] == ["semantic_bridge"] * 3  # the message's own zone is kept
    assert h2["token_id"].tolist() == [5, 5, 5]
    np.testing.assert_array_equal(
        rows(sidecar.db, "h3")["fingerprint"].reshape(-1), np.frombuffer(packed, "<f4")
    )


def test_bad_input_is_refused_and_counted(sidecar: Sidecar, rng: np.random.Generator) -> None:
    sidecar.call("POST", "/fingerprints", [message("keep", 1, rng)])
    cases = [
        ("/fingerprint", b"{not json", "application/json", 400, "not valid JSON"),
        ("/fingerprint", json.dumps({"request_id": "x", "vector": [1.0] * 19}).encode(),
         "application/json", 422, "vector must be a list of 20 numbers, got 19"),
        ("/fingerprint", json.dumps({"request_id": "", "vector": [0.0] * 20}).encode(),
         "application/json", 422, "request_id must be a non-empty string"),
        ("/fingerprints", json.dumps([message("bad", 1, rng), {"request_id": "bad"}]).encode(),
         "application/json", 422, r"fingerprints[1]: vector must be"),
        ("/fingerprints?request_id=b", b"\0" * 81, "application/octet-stream", 400, "81"),
        ("/fingerprints", b"\0" * 80, "application/octet-stream", 422, "request_id"),
    ]  # fmt: skip
    for path, raw, content_type, code, text in cases:
        status, body = sidecar.call("POST", path, raw=raw, content_type=content_type)
        assert status == code, (path, body)
        assert text in body["error"]
    # A body over the limit is refused from its Content-Length, before it is read.
    conn = http.client.HTTPConnection(sidecar.url.removeprefix("http://"), timeout=30)
    conn.putrequest("POST", "/fingerprints")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(2 << 20))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413
    assert "exceeds" in json.loads(response.read())["error"]
    conn.close()

    status, body = sidecar.call("POST", "/classify", {"vector": [0.0] * 20})
    assert status == 503
    assert "classifier unavailable" in body["error"]
    assert sidecar.call("POST", "/discovery/reload")[0] == 503

    status, body = sidecar.call("POST", "/storage/flush")
    assert body["rows"] == 1  # the bad batch stored nothing, the good row is still there
    counters = sidecar.call("GET", "/stats")[1]["counters"]
    assert counters["http_400"] == 2
    assert counters["http_422"] == 4
    assert counters["http_413"] == 1
    assert rows(sidecar.db, "bad")["request_id"] == []


def test_zmq_messages_and_sigterm_flush(sidecar: Sidecar, rng: np.random.Generator) -> None:
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.connect(sidecar.zmq)
    sent = 0
    for r in range(20):
        for step in range(1, 101):
            m = message(f"z{r}", step if r % 2 else None, rng)
            push.send(json.dumps(m).encode())
            sent += 1
    push.send(b"{broken")
    push.send(json.dumps({"request_id": "z0", "vector": [float("nan")] * 20}).encode())
    push.close(linger=5000)
    deadline = time.monotonic() + 60
    while sidecar.call("GET", "/stats")[1]["counters"].get("zmq_messages", 0) < sent + 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # No flush: SIGTERM must flush before the process exits.
    sidecar.process.send_signal(signal.SIGTERM)
    assert sidecar.process.wait(timeout=60) == 0
    with FingerprintStore(sidecar.db) as store:
        assert store.count() == sent
        stats = store.stats()
        z3 = store.read(request_id="z3", format="numpy")
        z4 = store.read(request_id="z4", format="numpy")
    assert stats["duplicates_rejected"] == 0
    assert z3["step"].tolist() == list(range(1, 101))  # explicit steps honoured
    assert z4["step"].tolist() == list(range(1, 101))  # implicit steps count from 1
    assert set(z3["schema_version"].tolist()) == {1001}  # the server's layout, under its tag
