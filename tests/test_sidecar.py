"""The sidecar as users run it: `attnfast sidecar` in its own process, real HTTP on
127.0.0.1 and a real ZMQ PUSH socket."""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import socket
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

from attnfast import FingerprintStore, pack_fingerprints
from attnfast.synthetic import fingerprints

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


def message(
    request: str, step: int | None, rng: np.random.Generator, layout: str = "v1"
) -> dict[str, Any]:
    m: dict[str, Any] = {
        "request_id": request,
        "vector": fingerprints(1, seed=int(rng.integers(1 << 31)), layout=layout)[0].tolist(),
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

    local = [0.9, 0.1, 0.0, 0.5, 0.0, 1.0] + [0.0] * 14  # local mass, low entropy
    status, body = sidecar.call(
        "POST", "/fingerprint", {"request_id": "h1", "step": 3, "vector": local}
    )
    assert status == 200
    assert (body["status"], body["stored"], body["duplicates"]) == ("accepted", 1, 0)
    assert body["classification"]["manifold"]["zone"] == "syntax_floor"
    assert body["classification"]["schema_version"] == 1
    assert (body["layout"], body["zone"]) == ("v1", "syntax_floor")  # the row as stored
    # The reply's zone is the stored row's: the message's own, not the rules' verdict.
    given = {
        "request_id": "h4",
        "step": 1,
        "vector": local,
        "manifold": {"zone": "structure_ripple"},
    }
    body = sidecar.call("POST", "/fingerprint", given)[1]
    assert (body["zone"], body["classification"]["manifold"]["zone"]) == (
        "structure_ripple",
        "syntax_floor",
    )
    sglang = fingerprints(1, layout="sglang")[0].tolist()
    tagged = {"request_id": "h5", "step": 1, "vector": sglang, "layout": "sglang"}
    body = sidecar.call("POST", "/fingerprint", tagged)[1]
    assert (body["stored"], body["layout"], body["zone"]) == (1, "sglang", None)
    # The same step again (a client retrying): stored already, and said so.
    status, body = sidecar.call(
        "POST", "/fingerprint", {"request_id": "h1", "step": 3, "vector": local}
    )
    assert status == 200
    assert (body["status"], body["stored"], body["duplicates"]) == ("duplicate", 0, 1)

    batch = [message("h2", 1, rng), message("h2", None, rng), message("h2", 7, rng)]
    status, body = sidecar.call("POST", "/fingerprints", {"fingerprints": batch})
    assert (status, body) == (
        200,
        {"status": "accepted", "received": 3, "stored": 3, "duplicates": 0, "duplicate_rows": []},
    )
    again = [batch[2], message("h2", 8, rng)]
    status, body = sidecar.call("POST", "/fingerprints", again)
    assert (status, body) == (
        200,
        {
            "status": "partial",
            "received": 2,
            "stored": 1,
            "duplicates": 1,
            "duplicate_rows": [["h2", 7]],
        },
    )

    packed = pack_fingerprints(fingerprints(2, seed=3))
    status, body = sidecar.call(
        "POST", "/fingerprints?request_id=h3&start_step=10", raw=packed,
        content_type="application/octet-stream",
    )  # fmt: skip
    assert (status, body["status"], body["stored"]) == (200, "accepted", 2)
    status, body = sidecar.call(
        "POST", "/fingerprints?request_id=h3&start_step=10", raw=packed,
        content_type="application/octet-stream",
    )  # fmt: skip
    assert (body["status"], body["stored"], body["duplicates"]) == ("duplicate", 0, 2)

    status, body = sidecar.call("POST", "/storage/flush")
    assert (status, body) == (200, {"status": "flushed", "rows": 9})
    status, stats = sidecar.call("GET", "/stats")
    assert stats["storage"]["rows"] == 9
    assert stats["counters"]["http_rows"] == 9
    assert stats["counters"]["http_duplicates"] == 4

    assert rows(sidecar.db, "h1")["step"].tolist() == [3]
    assert rows(sidecar.db, "h4")["manifold_zone"] == ["structure_ripple"]
    assert rows(sidecar.db, "h5")["manifold_zone"] == [None]
    h2 = rows(sidecar.db, "h2")
    assert h2["step"].tolist() == [1, 2, 7, 8]  # a missing step follows the request's last one
    assert h2["manifold_zone"] == ["semantic_bridge"] * 4  # the message's own zone is kept
    assert h2["token_id"].tolist() == [5, 5, 5, 5]
    np.testing.assert_array_equal(
        rows(sidecar.db, "h3")["fingerprint"].reshape(-1), np.frombuffer(packed, "<f4")
    )


def test_bad_input_is_refused_and_counted(sidecar: Sidecar, rng: np.random.Generator) -> None:
    sidecar.call("POST", "/fingerprints", [message("keep", 1, rng)])
    not_v1 = {"request_id": "x", "vector": [0.05] * 20}
    unpaired = message("bad", 2, rng)
    unpaired["metadata"] = {"top_k_positions": [1, 2], "top_k_scores": [0.5]}
    cases = [
        ("/fingerprint", b"{not json", "application/json", 400, "not valid JSON"),
        ("/fingerprint", json.dumps({"request_id": "x", "vector": [1.0] * 19}).encode(),
         "application/json", 422, "vector must be a list of 20 numbers, got 19"),
        ("/fingerprint", json.dumps({"request_id": "", "vector": [0.0] * 20}).encode(),
         "application/json", 422, "request_id must be a non-empty string"),
        ("/fingerprint", json.dumps(not_v1).encode(), "application/json", 422,
         "vector is not a v1 vector: it has masses (indices 0..2) summing to"),
        ("/fingerprints", json.dumps([message("bad", 1, rng), {"request_id": "bad"}]).encode(),
         "application/json", 422, r"fingerprints[1]: vector must be"),
        ("/fingerprints", json.dumps([message("bad", 1, rng), unpaired]).encode(),
         "application/json", 422, "fingerprints[1]: top_k_positions has 2 entries"),
        ("/fingerprints", b"[1, 2", "application/json", 400, "the body is not valid JSON"),
        ("/fingerprints", b'{"rows": []}', "application/json", 422, "list of messages"),
        ("/fingerprints?request_id=b", b"\0" * 81, "application/octet-stream", 400, "81"),
        ("/fingerprints", b"\0" * 80, "application/octet-stream", 422, "request_id"),
        ("/fingerprints?request_id=b&start_step=x", b"\0" * 80, "application/octet-stream",
         422, "start_step must be an integer"),
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
    assert "exceeds the limit" in json.loads(response.read())["error"]
    conn.close()

    # A chunked body (no length) is refused at the first chunk past the limit: the client
    # gets its answer while it would still be sending.
    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield b" " * (256 << 10)

    conn = http.client.HTTPConnection(sidecar.url.removeprefix("http://"), timeout=30)
    # The server may answer and close before the client has finished sending.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        conn.request(
            "POST", "/fingerprints", body=chunks(), encode_chunked=True,
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
    response = conn.getresponse()
    assert response.status == 413
    assert "refused after" in json.loads(response.read())["error"]
    conn.close()

    # Paths and methods it does not serve answer in the same shape.
    assert sidecar.call("GET", "/nowhere") == (404, {"error": "GET /nowhere: Not Found"})
    status, body = sidecar.call("GET", "/fingerprint")
    assert (status, body) == (405, {"error": "GET /fingerprint: Method Not Allowed"})

    status, body = sidecar.call("POST", "/classify", {"vector": [0.0] * 20})
    assert status == 503
    assert "classifier unavailable" in body["error"]
    assert sidecar.call("POST", "/discovery/reload")[0] == 503

    status, body = sidecar.call("POST", "/storage/flush")
    assert body["rows"] == 1  # the bad batch stored nothing, the good row is still there
    counters = sidecar.call("GET", "/stats")[1]["counters"]
    assert counters["http_400"] == 3
    assert counters["http_422"] == 8
    assert counters["http_413"] == 2
    assert counters["http_503"] == 2
    assert rows(sidecar.db, "bad")["request_id"] == []


def test_zmq_messages_and_sigterm_flush(sidecar: Sidecar, rng: np.random.Generator) -> None:
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.connect(sidecar.zmq)
    sent = 0
    for r in range(20):
        for step in range(1, 101):
            m = message(f"z{r}", step if r % 2 else None, rng, layout="sglang")
            push.send(json.dumps(m).encode())
            sent += 1
    push.send(b"{broken")
    push.send(json.dumps({"request_id": "z0", "vector": [float("nan")] * 20}).encode())
    push.send(json.dumps(message("z1", 5, rng, layout="sglang")).encode())  # a duplicate
    # Breaks a list rule checked per message: refused alone, not with the batch it lands in.
    unpaired = message("z0", 500, rng, layout="sglang")
    unpaired["metadata"] = {"top_k_positions": [1, 2], "top_k_scores": [0.5]}
    push.send(json.dumps(unpaired).encode())
    push.close(linger=5000)
    deadline = time.monotonic() + 60
    while True:
        counters = sidecar.call("GET", "/stats")[1]["counters"]
        if counters.get("zmq_rows", 0) + counters.get("zmq_duplicates", 0) >= sent + 1:
            break
        assert time.monotonic() < deadline, counters
        time.sleep(0.05)
    assert counters["zmq_messages"] == sent + 4
    assert counters["zmq_rows"] == sent
    assert counters["zmq_duplicates"] == 1
    assert counters["zmq_rejected"] == 3
    # No flush: SIGTERM must flush before the process exits, and say what it stored.
    sidecar.process.send_signal(signal.SIGTERM)
    assert sidecar.process.wait(timeout=60) == 0
    err = sidecar.process.communicate(timeout=60)[1]
    assert f"stopped; {sent:,} stored, 1 refused as duplicates" in err
    assert "(first: ('z1', 5)); refused as invalid: 3 ZMQ message(s), 0 HTTP request(s)" in err
    with FingerprintStore(sidecar.db) as store:
        assert store.count() == sent
        stats = store.stats()
        z3 = store.read(request_id="z3", format="numpy")
        z4 = store.read(request_id="z4", format="numpy")
    assert stats["duplicates_rejected"] == 1
    assert z3["step"].tolist() == list(range(1, 101))  # explicit steps honoured
    assert z4["step"].tolist() == list(range(1, 101))  # implicit steps count from 1
    assert set(z3["schema_version"].tolist()) == {1001}  # the server's layout, under its tag
    assert stats["rows_by_layout"] == {"v1": 0, "sglang": sent}
    assert stats["unzoned_rows"] == 0  # each message carried its zone


def start(args: list[str], db: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ATTNFAST, "sidecar", "--db", str(db), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_impossible_options_are_refused_at_start(tmp_path: Path) -> None:
    db = tmp_path / "fp.db"
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    cases = [
        (["--max-body-mb", "-1"], "--max-body-mb"),
        (["--discovery", str(tmp_path / "none")], "no such folder"),
        (["--http", "localhost"], "HOST:PORT"),
        (["--http", "127.0.0.1:99999"], "port up to 65535"),
        (["--synchronous", "sometimes"], "synchronous"),
        (["--http", f"127.0.0.1:{port}"], "the port is in use"),
        (["--zmq", "tcp://nowhere:1"], "cannot bind ZMQ"),
    ]
    for args, text in cases:
        done = start(args, db)
        assert done.returncode == 2, (args, done.stderr)
        assert text in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "Traceback" not in done.stderr
        assert not db.exists(), args  # nothing was stored: no database left behind
    busy.close()


def test_listening_socket_lets_asyncio_turn_nagle_off() -> None:
    """asyncio sets TCP_NODELAY only on sockets whose ``proto`` is TCP; a socket made without
    it answered every request 40 ms late (Nagle's algorithm against delayed ACKs)."""
    from attnfast.servers.sidecar import listen

    sock = listen("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
        client = socket.create_connection(sock.getsockname())
        accepted, _ = sock.accept()
        assert accepted.proto == socket.IPPROTO_TCP
        accepted.close()
        client.close()
    finally:
        sock.close()


def test_memory_returns_after_a_large_body(tmp_path: Path) -> None:
    """A large body is decoded without a Python object per row, and its memory is handed
    back afterwards (the issue's 50 MB body took the sidecar from 69 to 634 MB, for good)."""
    db, http = tmp_path / "fp.db", free_port()
    process = subprocess.Popen(
        [ATTNFAST, "sidecar", "--db", str(db), "--http", f"127.0.0.1:{http}"],
        stderr=subprocess.PIPE,
        text=True,
    )
    car = Sidecar(process, f"http://127.0.0.1:{http}", "", db)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if car.call("GET", "/health")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.monotonic() < deadline
            time.sleep(0.1)
        vectors = fingerprints(50_000).round(6).tolist()
        body = json.dumps(
            [{"request_id": f"m{i // 500}", "step": i % 500, "vector": v}
             for i, v in enumerate(vectors)]
        ).encode()  # fmt: skip
        assert len(body) > 10 << 20
        before = rss_kb(process.pid)
        status, reply = car.call("POST", "/fingerprints", raw=body)
        assert (status, reply["stored"]) == (200, 50_000)
        after = rss_kb(process.pid)
        # Resident memory after the request: within a few body sizes of where it started.
        assert after - before < 3 * len(body) / 1024, (before, after, len(body))
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)  # also closes the pipe


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")
