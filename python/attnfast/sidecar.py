"""The sidecar next to an inference server: ZMQ PULL of the SGLang explorer's per-step JSON
messages and an HTTP API (the seed's endpoints and response shapes), both streaming into a
:class:`~attnfast.FingerprintStore`.

Start it with ``attnfast sidecar --db fingerprints.db --zmq tcp://127.0.0.1:5557 --http
127.0.0.1:9000``. Decisions (layouts, steps, errors): docs/store.md. Needs the ``sidecar``
extra (FastAPI, uvicorn, pyzmq).
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from attnfast.exceptions import AttnfastError, InvalidInputError
from attnfast.fingerprint import unpack_fingerprints, zone_of
from attnfast.layout import Layout
from attnfast.messages import MessageDecoder
from attnfast.store import FingerprintStore

MAX_BODY_BYTES = 64 << 20
# Messages drained from ZMQ per append: large enough to amortise, small enough to keep latency.
ZMQ_BATCH = 20_000


class Sidecar:
    """The store, the ZMQ receiver thread and the counters that ``GET /stats`` reports."""

    def __init__(
        self,
        store: FingerprintStore,
        *,
        zmq_endpoint: str | None = None,
        zmq_layout: Layout | str = "sglang",
        discovery_dir: Path | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.store = store
        self.zmq_endpoint = zmq_endpoint
        self.zmq_layout = Layout.of(zmq_layout)
        self.discovery_dir = discovery_dir
        self.max_body_bytes = max_body_bytes
        self.started = time.time()
        self.counters: Counter[str] = Counter()
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._zmq_thread: threading.Thread | None = None
        self._zmq_ready = threading.Event()
        self._zmq_error: BaseException | None = None

    def count(self, key: str, n: int = 1, error: str | None = None) -> None:
        with self._lock:
            self.counters[key] += n
            if error is not None:
                self.last_error = error

    # -- ZMQ ---------------------------------------------------------------------------------

    def start_zmq(self) -> None:
        """Binds the PULL socket and starts receiving; raises if the bind fails."""
        if self.zmq_endpoint is None:
            return
        self._zmq_thread = threading.Thread(target=self._receive, name="attnfast-zmq", daemon=True)
        self._zmq_thread.start()
        self._zmq_ready.wait(10)
        if self._zmq_error is not None:
            raise AttnfastError(f"cannot bind ZMQ {self.zmq_endpoint}: {self._zmq_error}")

    def _receive(self) -> None:
        import zmq

        assert self.zmq_endpoint is not None

        socket: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PULL)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.RCVHWM, 1_000_000)
        try:
            socket.bind(self.zmq_endpoint)
        except zmq.ZMQError as e:
            self._zmq_error = e
            self._zmq_ready.set()
            socket.close()
            return
        self._zmq_ready.set()
        decoder = MessageDecoder(self.store, self.zmq_layout)
        poller = zmq.Poller()
        poller.register(socket, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if not poller.poll(100):
                    continue
                raw: list[bytes] = []
                while len(raw) < ZMQ_BATCH:
                    try:
                        raw.append(socket.recv(zmq.NOBLOCK))
                    except zmq.Again:
                        break
                try:
                    rows, errors = decoder.append(raw)
                except AttnfastError as e:
                    self.count("zmq_messages", len(raw))
                    self.count("zmq_rejected", len(raw), error=f"zmq: {e}")
                    continue
                self.count("zmq_messages", len(raw))
                self.count("zmq_rows", rows)
                if errors:
                    self.count("zmq_rejected", len(errors), error=f"zmq: {errors[-1][1]}")
        finally:
            socket.close()

    def stop(self) -> None:
        """Stops receiving, then flushes and closes the store (what SIGTERM does)."""
        self._stop.set()
        if self._zmq_thread is not None:
            self._zmq_thread.join(timeout=10)
        self.store.close()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            counters = dict(self.counters)
            last_error = self.last_error
        return {
            "uptime_seconds": round(time.time() - self.started, 3),
            "counters": counters,
            "last_error": last_error,
            "storage": self.store.stats(),
            "classifier": {"loaded": False, "discovery_dir": _str(self.discovery_dir)},
        }


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def rule_classification(vector: np.ndarray, layout: Layout) -> dict[str, Any]:
    """The seed's classification shape, from the zone rules (the discovery classifier is not
    there yet). Rules apply to v1 vectors only; other layouts classify as unknown."""
    if layout is not Layout.V1:
        zone, confidence = "unknown", 0.0
    else:
        zones, confidences = zone_of(vector.reshape(1, -1))
        zone, confidence = str(zones[0]), float(confidences[0])
    return {
        "manifold": {
            "zone": zone,
            "confidence": confidence,
            "cluster_id": -1,
            "cluster_label": None,
            "cluster_probability": None,
        },
        "schema_version": 1,
        "source": "rules",
    }


def create_app(sidecar: Sidecar) -> Any:
    """The FastAPI application. Errors are ``{"error": "..."}`` with 400 (unreadable body),
    413 (too large), 422 (readable but invalid) or 503 (no classifier)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        sidecar.stop()

    app = FastAPI(title="attnfast sidecar", lifespan=lifespan)

    def error(status: int, message: str) -> JSONResponse:
        sidecar.count(f"http_{status}", error=message)
        return JSONResponse({"error": message}, status_code=status)

    async def body_of(request: Request) -> bytes | JSONResponse:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > sidecar.max_body_bytes:
            return error(413, f"body of {length} bytes exceeds {sidecar.max_body_bytes}")
        body = await request.body()
        if len(body) > sidecar.max_body_bytes:
            return error(413, f"body of {len(body)} bytes exceeds {sidecar.max_body_bytes}")
        return body

    http_decoder = MessageDecoder(sidecar.store, "v1")

    def accept(body: bytes) -> int | JSONResponse:
        """A JSON list of messages, stored whole or not at all."""
        try:
            rows = http_decoder.append_body(body)
        except InvalidInputError as e:
            text = str(e)
            return error(400 if "not valid JSON" in text else 422, text)
        sidecar.count("http_rows", rows)
        return rows

    @app.post("/fingerprint")
    async def post_fingerprint(request: Request) -> Any:
        body = await body_of(request)
        if isinstance(body, JSONResponse):
            return body
        try:
            message = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            return error(400, f"body is not valid JSON: {e}")
        if not isinstance(message, dict):
            return error(422, "body must be a JSON object")
        stored = await run_in_threadpool(accept, b"[" + body + b"]")
        if isinstance(stored, JSONResponse):
            if stored.status_code == 422:  # one message: no index to name
                detail = json.loads(bytes(stored.body))["error"].removeprefix("fingerprints[0]: ")
                return JSONResponse({"error": detail}, status_code=422)
            return stored
        vector = np.asarray(message["vector"], dtype=np.float32)
        layout = Layout.of(message.get("layout", "v1"))
        return {"status": "accepted", "classification": rule_classification(vector, layout)}

    @app.post("/fingerprints")
    async def post_fingerprints(request: Request) -> Any:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("application/octet-stream"):
            return await _binary(request)
        body = await body_of(request)
        if isinstance(body, JSONResponse):
            return body
        stored = await run_in_threadpool(accept, body)
        if isinstance(stored, JSONResponse):
            return stored
        return {"status": "accepted", "accepted": stored}

    async def _binary(request: Request) -> Any:
        """Packed rows (80 bytes each, the seed's struct.pack('<20f')); the request id, first
        step (default 1, then consecutive) and layout come in the query string."""
        body = await body_of(request)
        if isinstance(body, JSONResponse):
            return body
        params = request.query_params
        request_id = params.get("request_id")
        if not request_id:
            return error(422, "binary bodies need ?request_id=... (and optionally start_step)")
        try:
            start = int(params.get("start_step", "1"))
            layout = Layout.of(params.get("layout", "v1"))
        except (ValueError, AttnfastError) as e:
            return error(422, f"bad query parameter: {e}")
        try:
            fps = unpack_fingerprints(body)
        except InvalidInputError as e:
            return error(400, f"binary body: {e}")
        steps = np.arange(start, start + len(fps), dtype=np.int64)
        try:
            rows = sidecar.store.append(request_id, steps, fps, layout=layout)
        except InvalidInputError as e:
            return error(422, str(e))
        sidecar.count("http_rows", rows)
        return {"status": "accepted", "accepted": rows}

    def no_classifier() -> JSONResponse:
        where = (
            f"discovery artifacts in {sidecar.discovery_dir} are not loaded"
            if sidecar.discovery_dir
            else "no --discovery folder was given"
        )
        return error(
            503,
            f"classifier unavailable: {where}; the online classifier arrives with the "
            "discovery job. Zones from the seed's rules come with POST /fingerprint.",
        )

    @app.post("/classify")
    async def classify() -> Any:
        return no_classifier()

    @app.post("/discovery/reload")
    async def reload() -> Any:
        return no_classifier()

    @app.get("/health")
    def health() -> Any:
        return {
            "status": "healthy",
            "db": str(sidecar.store.path),
            "zmq": sidecar.zmq_endpoint,
            "classifier_loaded": False,
            "schema_version": 1,
        }

    @app.get("/stats")
    def stats() -> Any:
        return sidecar.stats()

    @app.post("/storage/flush")
    def flush() -> Any:
        try:
            sidecar.store.flush()
        except AttnfastError as e:
            return error(500, f"flush failed: {e}")
        return {"status": "flushed", "rows": sidecar.store.count()}

    return app


def serve(
    db: Path,
    *,
    zmq_endpoint: str | None,
    host: str,
    port: int,
    discovery_dir: Path | None = None,
    zmq_layout: str = "sglang",
    synchronous: str = "normal",
    max_body_bytes: int = MAX_BODY_BYTES,
) -> None:
    """Runs the sidecar until SIGINT or SIGTERM; both flush the store before exiting."""
    import uvicorn

    store = FingerprintStore(db, synchronous=synchronous)  # type: ignore[arg-type]
    sidecar = Sidecar(
        store,
        zmq_endpoint=zmq_endpoint,
        zmq_layout=zmq_layout,
        discovery_dir=discovery_dir,
        max_body_bytes=max_body_bytes,
    )
    try:
        sidecar.start_zmq()
    except BaseException:
        store.close()
        raise
    config = uvicorn.Config(create_app(sidecar), host=host, port=port, log_level="warning")
    # uvicorn shuts down gracefully on SIGTERM (the store is flushed and closed in the app's
    # lifespan), then re-raises the signal under the handlers it found. This no-op handler
    # turns that into a normal exit (status 0) once everything is stored.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn.Server(config).run()


__all__ = ["MAX_BODY_BYTES", "Sidecar", "create_app", "rule_classification", "serve"]
