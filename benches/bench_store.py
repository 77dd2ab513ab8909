"""Fingerprint store: ingest, sidecar and query speed, side by side with the seed's paths.

    .venv/bin/python benches/bench_store.py [--quick] [--only ingest,sidecar,memory,sql,large]
        [--baseline OLD/python]

1. ingest: 2,000,000 fingerprints (2,000 requests x 1,000 steps, appended in chunks of
   20,000 rows) into a fresh database through ``FingerprintStore``, timed until ``flush()``
   returns (the database is then queryable; the run checks the count), against (a) the seed's
   sidecar path: Python sqlite3, the seed schema with its trigger and six indexes, buffers of
   100 rows written with INSERT OR REPLACE and committed; (b) Python sqlite3 ``executemany`` in
   one transaction into a bare (request, step, blob) table; (c) with ``--baseline``, attnfast
   as it was before the hardening issue. Each runs in its own process so that its peak memory
   (VmHWM, reset once the input exists) is its own.
2. sidecar: ``attnfast sidecar`` in its own process; HTTP batches of 1,000 messages (JSON, and
   packed binary bodies) from one keep-alive client, and ZMQ with one pusher sending one JSON
   message per step. Rate = rows until they are all committed.
3. memory: the sidecar's resident memory before, at its peak during, and after JSON bodies of
   1, 10 and 50 MB, and a chunked 100 MB body over the 64 MB limit; with ``--baseline``, the
   sidecar before the hardening beside it.
4. sql: the seed's SQL writes from Python's sqlite3 (the seed's sidecar's client): inserts in
   transactions of 100 rows, updates of cluster_id and deletes by id, through attnfast's
   ``fingerprints`` view against the seed's own table (its trigger and indexes); with
   ``--baseline``, the view before the hardening (inserts only: it had no update or delete).
5. large: a 10,000,000-row database: the seed's ``zone_distribution_hourly`` view, one
   request's rows (the seed's SQL on the ``fingerprints`` view, and ``store.read``), and
   Parquet export, in a child process; with ``--baseline``, the same in the code before.

``--baseline`` is the ``python`` folder of an attnfast checkout with its extension built in
place (benches/README.md says how); every baseline runs in its own process.

Results go to ``benches/results/store.json`` and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import attnfast  # noqa: E402
from seed_schema import SEED_SCHEMA  # noqa: E402
from timing import best_time  # noqa: E402

STEPS_PER_REQUEST = 1000
HTTP_CLIENTS = 4


def dataset(rows: int, data: Path | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Valid v1 fingerprints (the store refuses other vectors), their steps and request ids;
    from ``data`` when given: a child process, maybe running the baseline, reads the parent's
    vectors rather than making its own with an attnfast that may not have the generator."""
    if data is None:
        from attnfast.synthetic import fingerprints

        fps = fingerprints(rows)
    else:
        fps = np.load(data)[:rows]
    steps = np.arange(rows, dtype=np.int64) % STEPS_PER_REQUEST + 1
    ids = [f"req-{i // STEPS_PER_REQUEST:07d}" for i in range(rows)]
    return ids, steps, fps


def memory_mb(pid: int | str = "self") -> tuple[float, float]:
    """Resident memory of a process now, and its peak since :func:`reset_peak`, in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def reset_peak(pid: int | str = "self") -> None:
    """Starts a new peak (VmHWM) for the process: what came before (making the input) is
    not counted."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def start_measuring() -> float:
    reset_peak()
    return memory_mb()[0]


def peak_since(base: float) -> float:
    return memory_mb()[1] - base


# -- 1. ingest, one method per process ----------------------------------------------------------


def ingest_attnfast(db: Path, rows: int, data: Path) -> dict[str, Any]:
    ids, steps, fps = dataset(rows, data)
    base = start_measuring()
    start = time.perf_counter()
    with attnfast.FingerprintStore(db) as store:
        chunk = 20_000
        for i in range(0, rows, chunk):
            store.append(ids[i : i + chunk], steps[i : i + chunk], fps[i : i + chunk])
        store.flush()
        seconds = time.perf_counter() - start
        assert store.count() == rows
        assert len(store.read(request_id=ids[-1], format="numpy")["step"]) == STEPS_PER_REQUEST
    return {"seconds": seconds, "peak_mb": peak_since(base)}


def ingest_seed(db: Path, rows: int, data: Path) -> dict[str, Any]:
    import sqlite3

    ids, steps, fps = dataset(rows, data)
    base = start_measuring()
    conn = sqlite3.connect(db)
    conn.executescript(SEED_SCHEMA)
    start = time.perf_counter()
    buffer: list[tuple[Any, ...]] = []
    for i in range(rows):
        buffer.append((ids[i], int(steps[i]), struct.pack("<20f", *fps[i].tolist())))
        if len(buffer) == 100:
            conn.executemany(
                "INSERT OR REPLACE INTO fingerprints (request_id, step, fingerprint) "
                "VALUES (?, ?, ?)",
                buffer,
            )
            conn.commit()
            buffer.clear()
    if buffer:
        conn.executemany(
            "INSERT OR REPLACE INTO fingerprints (request_id, step, fingerprint) VALUES (?, ?, ?)",
            buffer,
        )
        conn.commit()
    seconds = time.perf_counter() - start
    assert conn.execute("SELECT count(*) FROM fingerprints").fetchone()[0] == rows
    return {"seconds": seconds, "peak_mb": peak_since(base)}


def ingest_executemany(db: Path, rows: int, data: Path) -> dict[str, Any]:
    import sqlite3

    _, steps, fps = dataset(rows, data)
    base = start_measuring()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE t (request INTEGER, step INTEGER, fingerprint BLOB)")
    start = time.perf_counter()
    blobs = (
        (i // STEPS_PER_REQUEST, int(steps[i]), fps[i].astype("<f4").tobytes()) for i in range(rows)
    )
    with conn:
        conn.executemany("INSERT INTO t VALUES (?, ?, ?)", blobs)
    seconds = time.perf_counter() - start
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == rows
    return {"seconds": seconds, "peak_mb": peak_since(base)}


def sql_writes(db: Path, rows: int, data: Path) -> dict[str, Any]:
    """The seed's SQL writes from Python's sqlite3, on ``db``: attnfast's view when the file
    exists (made by the parent's attnfast), else the seed's own table."""
    import sqlite3

    ids, steps, fps = dataset(rows, data)
    conn = sqlite3.connect(db)
    if not db.stat().st_size:
        conn.executescript(SEED_SCHEMA)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    blobs = [fps[i].astype("<f4").tobytes() for i in range(rows)]
    out: dict[str, Any] = {}
    start = time.perf_counter()
    for i in range(0, rows, 100):  # the seed's sidecar: buffers of 100 rows, one commit each
        with conn:
            conn.executemany(
                "INSERT INTO fingerprints (request_id, step, fingerprint) VALUES (?, ?, ?)",
                [(ids[j], int(steps[j]), blobs[j]) for j in range(i, min(i + 100, rows))],
            )
    out["insert_rows_per_s"] = rows / (time.perf_counter() - start)
    assert conn.execute("SELECT count(*) FROM fingerprints").fetchone()[0] == rows
    row_ids = [r[0] for r in conn.execute("SELECT id FROM fingerprints ORDER BY id")]
    try:
        start = time.perf_counter()
        with conn:  # a discovery job writing cluster ids back
            conn.executemany(
                "UPDATE fingerprints SET cluster_id = ? WHERE id = ?",
                [(i % 7, row_id) for i, row_id in enumerate(row_ids)],
            )
        out["update_rows_per_s"] = rows / (time.perf_counter() - start)
        gone = row_ids[::2]
        start = time.perf_counter()
        with conn:
            conn.executemany("DELETE FROM fingerprints WHERE id = ?", [(i,) for i in gone])
        out["delete_rows_per_s"] = len(gone) / (time.perf_counter() - start)
        assert conn.execute("SELECT count(*) FROM fingerprints").fetchone()[0] == rows - len(gone)
    except sqlite3.OperationalError as e:  # the baseline's view had no update or delete
        out["update_error"] = str(e)
    return out


def run_child(
    method: str, rows: int, data: Path, db: Path | None = None, baseline: Path | None = None
) -> dict[str, Any]:
    """``method`` in its own process: the code under test, or the ``baseline`` package."""
    env = dict(os.environ)
    if baseline is not None:
        env["PYTHONPATH"] = str(baseline)
    with tempfile.TemporaryDirectory() as tmp:
        target = db or Path(tmp) / "x"
        out = subprocess.run(
            [sys.executable, __file__, "--child", method, "--rows", str(rows), "--db",
             str(target), "--data", str(data)],
            capture_output=True,
            text=True,
            env=env,
        )  # fmt: skip
    if out.returncode:
        raise RuntimeError(f"{method} failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if "seconds" in result:
        result["rows_per_s"] = rows / result["seconds"]
    return result


def saved_fingerprints(tmp: Path, rows: int) -> Path:
    from attnfast.synthetic import fingerprints

    path = tmp / f"fingerprints-{rows}.npy"
    np.save(path, fingerprints(rows))
    return path


def bench_ingest(rows: int, baseline: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        data = saved_fingerprints(Path(tmp), rows)
        results = {
            "attnfast": run_child("attnfast", rows, data),
            "seed": run_child("seed", rows, data),
            "executemany": run_child("executemany", rows, data),
        }
        # Second runs: the machine is shared and noisy; report the better one of each.
        again = run_child("attnfast", rows, data)
        if again["rows_per_s"] > results["attnfast"]["rows_per_s"]:
            results["attnfast"] = again
        if baseline is not None:
            before = [run_child("attnfast", rows, data, baseline=baseline) for _ in range(2)]
            results["before"] = max(before, key=lambda r: r["rows_per_s"])
    return {"rows": rows, **results}


def bench_sql(rows: int, baseline: Path | None) -> dict[str, Any]:
    out: dict[str, Any] = {"rows": rows}
    with tempfile.TemporaryDirectory() as tmp:
        data = saved_fingerprints(Path(tmp), rows)
        for name, package in (("attnfast", None), ("before", baseline), ("seed", None)):
            if name == "before" and package is None:
                continue
            db = Path(tmp) / f"{name}.db"
            db.touch()
            if name != "seed":  # the database made by that attnfast, then closed
                env = dict(os.environ, PYTHONPATH=str(package)) if package else None
                subprocess.run(
                    [sys.executable, "-c",
                     f"import attnfast; attnfast.FingerprintStore({str(db)!r}).close()"],
                    check=True, env=env,
                )  # fmt: skip
            out[name] = run_child("sql_writes", rows, data, db=db)
    return out


# -- 2. sidecar ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SidecarProcess:
    """``attnfast sidecar`` in its own process: the code under test, or the ``baseline``."""

    def __init__(self, db: Path, baseline: Path | None = None, max_body_mb: int = 64) -> None:
        self.http, self.zmq = free_port(), f"tcp://127.0.0.1:{free_port()}"
        env = dict(os.environ)
        if baseline is not None:
            env["PYTHONPATH"] = str(baseline)
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from attnfast.cli import main; main()", "sidecar",
             "--db", str(db), "--http", f"127.0.0.1:{self.http}", "--zmq", self.zmq,
             "--max-body-mb", str(max_body_mb)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )  # fmt: skip
        self.conn = http.client.HTTPConnection("127.0.0.1", self.http, timeout=600)
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.call("GET", "/health")[0] == 200:
                    break
            except OSError:
                self.conn.close()
                time.sleep(0.1)
            if time.monotonic() > deadline:
                raise RuntimeError("sidecar did not start")

    def memory_mb(self) -> tuple[float, float]:
        """Resident memory now and its peak since the last :meth:`reset_peak`, in MB."""
        return memory_mb(self.process.pid)

    def reset_peak(self) -> None:
        reset_peak(self.process.pid)

    def call(
        self, method: str, path: str, body: bytes | None = None, kind: str = "application/json"
    ) -> tuple[int, Any]:
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=body, headers={"Content-Type": kind})
                response = self.conn.getresponse()
                return response.status, json.loads(response.read())
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The server closes a keep-alive connection idle for 5 s (uvicorn's default),
                # as while the ZMQ part sends: reconnect once.
                self.conn.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        self.conn.close()
        self.process.terminate()
        self.process.wait(60)


def bench_sidecar(http_rows: int, zmq_messages: int, baseline: Path | None) -> dict[str, Any]:
    out = {"attnfast": sidecar_rates(http_rows, zmq_messages, None)}
    if baseline is not None:
        out["before"] = sidecar_rates(http_rows, zmq_messages, baseline)
    return {"http_rows": http_rows, "zmq_messages": zmq_messages, **out}


def sidecar_rates(http_rows: int, zmq_messages: int, baseline: Path | None) -> dict[str, Any]:
    import zmq

    from attnfast.synthetic import fingerprints

    # Valid vectors of each path's layout: v1 over HTTP, the SGLang server's over ZMQ.
    v1 = fingerprints(http_rows, seed=1).tolist()
    sglang = fingerprints(zmq_messages, seed=2, layout="sglang").tolist()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        car = SidecarProcess(Path(tmp) / "sidecar.db", baseline=baseline)
        try:
            batch = 1000
            bodies = [
                json.dumps(
                    {
                        "fingerprints": [
                            {"request_id": f"h{i // 100}", "step": i % 100 + 1, "vector": v}
                            for i, v in enumerate(v1[start : start + batch], start)
                        ]
                    }
                ).encode()
                for start in range(0, http_rows, batch)
            ]
            start = time.perf_counter()
            for body in bodies:
                status, reply = car.call("POST", "/fingerprints", body)
                assert status == 200, reply
                assert reply.get("stored", batch) == batch, reply  # (the baseline did not say)
            car.call("POST", "/storage/flush")
            out["http_json_rows_per_s"] = http_rows / (time.perf_counter() - start)

            packed = np.asarray(v1[:batch], dtype="<f4").tobytes()
            start = time.perf_counter()
            for b in range(http_rows // batch):
                status, reply = car.call(
                    "POST", f"/fingerprints?request_id=bin{b}", packed, "application/octet-stream"
                )
                assert status == 200, reply
                assert reply.get("stored", batch) == batch, reply
            car.call("POST", "/storage/flush")
            out["http_binary_rows_per_s"] = http_rows / (time.perf_counter() - start)

            # Clients at once, as an inference server's requests arrive: one waiting for its
            # commit does not stop the others, so the wait costs latency more than rate.
            def client(first: int) -> None:
                conn = http.client.HTTPConnection("127.0.0.1", car.http, timeout=600)
                for b in range(first, http_rows // batch, HTTP_CLIENTS):
                    conn.request("POST", f"/fingerprints?request_id=par{b}", body=packed,
                                 headers={"Content-Type": "application/octet-stream"})  # fmt: skip
                    response = conn.getresponse()
                    reply = json.loads(response.read())
                    if response.status != 200 or reply.get("stored", batch) != batch:
                        failures.append(reply)
                conn.close()

            failures: list[Any] = []

            clients = [threading.Thread(target=client, args=(c,)) for c in range(HTTP_CLIENTS)]
            start = time.perf_counter()
            for t in clients:
                t.start()
            for t in clients:
                t.join()
            car.call("POST", "/storage/flush")
            out["http_binary_clients_rows_per_s"] = http_rows / (time.perf_counter() - start)
            assert not failures, failures[:3]

            messages = [
                json.dumps(
                    {
                        "request_id": f"z{i // 500}",
                        "step": i % 500 + 1,
                        "vector": sglang[i],
                        "metadata": {"token_id": i % 50000},
                    }
                ).encode()
                for i in range(zmq_messages)
            ]
            push: Any = zmq.Context.instance().socket(zmq.PUSH)
            push.setsockopt(zmq.SNDHWM, 0)
            push.connect(car.zmq)
            time.sleep(0.3)
            start = time.perf_counter()
            for m in messages:
                push.send(m)
            # Stored rows (the baseline counted messages received, then needs the flush).
            counter = "zmq_messages" if baseline else "zmq_rows"
            while car.call("GET", "/stats")[1]["counters"].get(counter, 0) < zmq_messages:
                time.sleep(0.01)
            car.call("POST", "/storage/flush")
            out["zmq_messages_per_s"] = zmq_messages / (time.perf_counter() - start)
            push.close()
            stats = car.call("GET", "/stats")[1]
            assert stats["storage"]["rows"] == 3 * http_rows + zmq_messages, stats
            assert stats["counters"].get("zmq_rejected", 0) == 0, stats
        finally:
            car.stop()
    return out


def json_body(megabytes: float, tag: str) -> tuple[bytes, int]:
    """A ``POST /fingerprints`` body of ``megabytes`` MB (within 1%) of v1 messages, and its
    rows. Values are rounded to 6 decimals, as a JSON producer would print them; the sums
    stay within the store's tolerance."""
    from attnfast.synthetic import fingerprints

    def message(i: int, v: list[float]) -> str:
        vector = [round(x, 6) for x in v]
        return json.dumps({"request_id": f"{tag}-{i // 1000:06d}", "step": i % 1000 + 1,
                           "vector": vector})  # fmt: skip

    sample = fingerprints(1000, seed=3).tolist()
    each = sum(len(message(i, v)) + 2 for i, v in enumerate(sample)) / len(sample)
    rows = int(megabytes * 1e6 / each)
    vectors = fingerprints(rows, seed=3).tolist()
    body = ("[" + ", ".join(message(i, v) for i, v in enumerate(vectors)) + "]").encode()
    assert abs(len(body) / 1e6 - megabytes) < 0.01 * megabytes, len(body)
    return body, rows


def chunked_post(port: int, chunks: int, chunk: bytes) -> int:
    """POSTs ``chunks`` copies of ``chunk`` with chunked transfer encoding (no length); the
    status, or 0 when the server closed the connection before answering."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request(
            "POST", "/fingerprints", body=(chunk for _ in range(chunks)),
            headers={"Content-Type": "application/json"}, encode_chunked=True,
        )  # fmt: skip
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return 0
    finally:
        conn.close()


def bench_memory(quick: bool, baseline: Path | None) -> dict[str, Any]:
    """Resident memory of the sidecar around large bodies: before, peak, after."""
    sizes = (1, 2) if quick else (1, 10, 50)
    bodies = {mb: json_body(mb, f"m{mb}") for mb in sizes}
    out: dict[str, Any] = {"sizes_mb": list(sizes)}
    for name, package in (("attnfast", None), ("before", baseline)):
        if name == "before" and package is None:
            continue
        runs: list[dict[str, Any]] = []
        with tempfile.TemporaryDirectory() as tmp:
            car = SidecarProcess(Path(tmp) / "memory.db", baseline=package)
            try:
                for mb, (body, rows) in bodies.items():
                    before, _ = car.memory_mb()
                    car.reset_peak()
                    start = time.perf_counter()
                    status, _reply = car.call("POST", "/fingerprints", body)
                    seconds = time.perf_counter() - start
                    time.sleep(0.5)
                    after, peak = car.memory_mb()
                    runs.append(
                        {
                            "mb": mb,
                            "rows": rows,
                            "status": status,
                            "seconds": seconds,
                            "before_mb": before,
                            "peak_mb": peak,
                            "after_mb": after,
                        }
                    )
                # A chunked body (no Content-Length) past the limit: 100 MB against 64 MB.
                before, _ = car.memory_mb()
                car.reset_peak()
                status = chunked_post(car.http, 100 if not quick else 70, b" " * 1_000_000)
                time.sleep(0.5)
                after, peak = car.memory_mb()
                runs.append(
                    {
                        "mb": "chunked 100" if not quick else "chunked 70",
                        "status": status,
                        "before_mb": before,
                        "peak_mb": peak,
                        "after_mb": after,
                    }
                )
            finally:
                car.stop()
        out[name] = runs
    return out


# -- 3. a large database -------------------------------------------------------------------------


def large_database(db: Path, rows: int, data: Path) -> dict[str, Any]:
    """Builds a ``rows``-row database in ``db`` and times the queries and the export on it."""
    out: dict[str, Any] = {}
    ids, steps, fps = dataset(rows, data)
    # Spread the rows over two days so that hours and export partitions are realistic.
    created = 1_780_000_000 + np.arange(rows) * (2 * 86400 / rows)
    start = time.perf_counter()
    with attnfast.FingerprintStore(db) as store:
        for i in range(0, rows, 50_000):
            store.append(
                ids[i : i + 50_000],
                steps[i : i + 50_000],
                fps[i : i + 50_000],
                created_at=created[i : i + 50_000],
            )
        store.flush()
        out["build_rows_per_s"] = rows / (time.perf_counter() - start)
        del ids, steps, fps
        request = f"req-{rows // STEPS_PER_REQUEST // 2:07d}"
        zones = store.sql("SELECT * FROM zone_distribution_hourly")
        out["zone_hours_rows"] = len(zones)
        out["zone_hourly_s"] = best_time(
            lambda: store.sql("SELECT * FROM zone_distribution_hourly"), 3
        )
        seed_sql = "SELECT * FROM fingerprints WHERE request_id = ? ORDER BY step"
        assert len(store.sql(seed_sql, [request])) == STEPS_PER_REQUEST
        out["request_seed_sql_s"] = best_time(lambda: store.sql(seed_sql, [request]))
        out["request_read_s"] = best_time(lambda: store.read(request_id=request))
        out["since_1h_read_s"] = best_time(
            lambda: store.read(since=1_780_000_000 + 86400, until=1_780_000_000 + 90000)
        )
        target = db.parent / "export"
        out["export_s"] = best_time(lambda: store.export_parquet(target, overwrite=True), repeats=2)
        out["export_rows_per_s"] = rows / out["export_s"]
        out["db_mb"] = db.stat().st_size / 1e6
    return out


def bench_large(rows: int, baseline: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        data = saved_fingerprints(Path(tmp), rows)
        out = {"rows": rows, "attnfast": run_child("large", rows, data)}
        if baseline is not None:
            out["before"] = run_child("large", rows, data, baseline=baseline)
    return out


# -- report --------------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> str:
    lines = []
    if "ingest" in results:
        r = results["ingest"]
        a = r["attnfast"]["rows_per_s"]
        lines += [
            f"Ingest ({r['rows']:,} rows):",
            "",
            "| method | rows/s | x seed path | x executemany | peak memory MB |",
            "|---|---|---|---|---|",
        ]
        names = {"attnfast": "attnfast", "before": "attnfast before the hardening",
                 "seed": "seed path", "executemany": "executemany"}  # fmt: skip
        for name, label in names.items():
            if name not in r:
                continue
            rate = r[name]["rows_per_s"]
            vs_seed = rate / r["seed"]["rows_per_s"]
            vs_many = rate / r["executemany"]["rows_per_s"]
            lines.append(
                f"| {label} | {rate:,.0f} | {vs_seed:.1f}x | {vs_many:.2f}x"
                f" | {r[name]['peak_mb']:.0f} |"
            )
        lines.append(f"\nattnfast: {a / 1e6:.2f} M rows/s")
        if "before" in r:
            lines.append(f"attnfast / before the hardening: {a / r['before']['rows_per_s']:.2f}x")
        lines.append("")
    if "sidecar" in results:
        s = results["sidecar"]
        versions = [n for n in ("attnfast", "before") if n in s]
        lines += [
            "| sidecar path | " + " | ".join(
                {"attnfast": "attnfast", "before": "before the hardening"}[n] for n in versions
            ) + (" | attnfast / before |" if "before" in s else " |"),
            "|---|" + "---|" * (len(versions) + ("before" in s)),
        ]  # fmt: skip
        for key, label, unit in (
            ("http_json_rows_per_s", "HTTP JSON batches of 1,000", "rows/s"),
            ("http_binary_rows_per_s", "HTTP binary batches of 1,000", "rows/s"),
            (
                "http_binary_clients_rows_per_s",
                f"HTTP binary batches of 1,000, {HTTP_CLIENTS} clients at once",
                "rows/s",
            ),
            ("zmq_messages_per_s", "ZMQ, one JSON message per step", "messages/s"),
        ):
            cells = [f"{s[n][key]:,.0f} {unit}" for n in versions]
            if "before" in s:
                cells.append(f"{s['attnfast'][key] / s['before'][key]:.2f}x")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    if "memory" in results:
        m = results["memory"]
        lines += [
            "Sidecar memory around one POST /fingerprints (resident MB: before, peak, after):",
            "",
            "| body | rows | " + " | ".join(
                f"{n} status | {n} before | {n} peak | {n} after"
                for n in ("attnfast", "before") if n in m
            ) + " |",
            "|---|---|" + "---|---|---|---|" * sum(n in m for n in ("attnfast", "before")),
        ]  # fmt: skip
        for i, run in enumerate(m["attnfast"]):
            cells = [f"{run['mb']} MB", f"{run.get('rows', '-'):,}" if "rows" in run else "-"]
            for n in ("attnfast", "before"):
                if n in m:
                    r = m[n][i]
                    cells += [str(r["status"]), f"{r['before_mb']:.0f}", f"{r['peak_mb']:.0f}",
                              f"{r['after_mb']:.0f}"]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if "sql" in results:
        q = results["sql"]
        seed = q["seed"]
        lines += [
            f"SQL writes from Python's sqlite3 ({q['rows']:,} rows; inserts in transactions of "
            "100, updates and deletes by id in one transaction):",
            "",
            "| target | insert rows/s | update rows/s | delete rows/s | insert x seed |",
            "|---|---|---|---|---|",
        ]
        labels = {"attnfast": "attnfast's view", "before": "the view before the hardening",
                  "seed": "the seed's table"}  # fmt: skip
        for name, label in labels.items():
            if name not in q:
                continue
            r = q[name]
            upd = f"{r['update_rows_per_s']:,.0f}" if "update_rows_per_s" in r else "refused"
            dele = f"{r['delete_rows_per_s']:,.0f}" if "delete_rows_per_s" in r else "refused"
            ratio = r["insert_rows_per_s"] / seed["insert_rows_per_s"]
            lines.append(
                f"| {label} | {r['insert_rows_per_s']:,.0f} | {upd} | {dele} | {ratio:.2f}x |"
            )
        lines.append("")
    if "large" in results:
        g = results["large"]
        runs = [("attnfast", g["attnfast"])] + ([("before", g["before"])] if "before" in g else [])
        a = g["attnfast"]
        lines += [
            f"Large database ({g['rows']:,} rows, {a['db_mb']:.0f} MB), seconds:",
            "",
            "| query | " + " | ".join(name for name, _ in runs) + " |",
            "|---|" + "---|" * len(runs),
        ]
        rows_of = [
            ("build", lambda r: f"{r['build_rows_per_s']:,.0f} rows/s"),
            (f"zone_distribution_hourly ({a['zone_hours_rows']} rows)",
             lambda r: f"{r['zone_hourly_s']:.4f}"),
            ("one request, the seed's SQL on the view", lambda r: f"{r['request_seed_sql_s']:.4f}"),
            ("one request, store.read", lambda r: f"{r['request_read_s']:.4f}"),
            ("one hour, store.read", lambda r: f"{r['since_1h_read_s']:.4f}"),
            ("Parquet export",
             lambda r: f"{r['export_s']:.2f} ({r['export_rows_per_s']:,.0f} rows/s)"),
        ]  # fmt: skip
        for label, cell in rows_of:
            lines.append(f"| {label} | " + " | ".join(cell(r) for _, r in runs) + " |")
    return "\n".join(lines)


# Children by name, for --child.
METHODS = {
    "attnfast": ingest_attnfast,
    "seed": ingest_seed,
    "executemany": ingest_executemany,
    "sql_writes": sql_writes,
    "large": large_database,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only", default="ingest,sidecar,memory,sql,large")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument(
        "--baseline",
        type=Path,
        default=os.environ.get("ATTNFAST_BASELINE"),
        help="python/ folder of attnfast before the hardening (extension built in place)",
    )
    args = parser.parse_args()
    if args.child:
        print(json.dumps(METHODS[args.child](Path(args.db), args.rows, Path(args.data))))
        return
    parts = set(args.only.split(","))
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "attnfast": attnfast.__version__,
    }
    if args.baseline is not None:
        results["baseline"] = str(args.baseline)
    quick, baseline = args.quick, args.baseline
    benches: dict[str, Any] = {
        "ingest": lambda: bench_ingest(100_000 if quick else 2_000_000, baseline),
        "sidecar": lambda: bench_sidecar(
            10_000 if quick else 100_000, 20_000 if quick else 300_000, baseline
        ),
        "memory": lambda: bench_memory(quick, baseline),
        "sql": lambda: bench_sql(2_000 if quick else 20_000, baseline),
        "large": lambda: bench_large(200_000 if quick else 10_000_000, baseline),
    }
    (HERE / "results").mkdir(exist_ok=True)
    for name, bench in benches.items():
        if name not in parts:
            continue
        results[name] = bench()
        # Saved and shown part by part: a long run that fails later keeps what it measured.
        (HERE / "results" / "store.json").write_text(json.dumps(results, indent=2))
        print(report({name: results[name]}), flush=True)


if __name__ == "__main__":
    main()
