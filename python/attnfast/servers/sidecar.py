"""The sidecar next to an inference server: ZMQ PULL of the SGLang explorer's per-step JSON
messages and an HTTP API (the seed's endpoints and response shapes), both streaming into a
:class:`~attnfast.FingerprintStore`.

Start it with ``attnfast sidecar --db fingerprints.db --zmq tcp://127.0.0.1:5557 --http
127.0.0.1:9000``. Decisions (layouts, steps, replies, errors): docs/store.md. Needs the
``sidecar`` extra (FastAPI, uvicorn, pyzmq).
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from attnfast import _core
from attnfast.exceptions import AttnfastError, DecodeError, InvalidInputError, MissingFileError
from attnfast.fingerprint import unpack_fingerprints, zone_of
from attnfast.layout import Layout
from attnfast.messages import MessageDecoder
from attnfast.servers.body import read_body
from attnfast.servers.errors import UnavailableError, status_of
from attnfast.store import FingerprintStore, Written

MAX_BODY_BYTES = 64 << 20
# Messages drained from ZMQ per append: large enough to amortise, small enough to keep latency.
ZMQ_BATCH = 20_000
# Bodies at least this large hand their freed memory back to the system once handled.
LARGE_BODY = 1 << 20
# Statuses that refuse a request's data (unreadable, too large, invalid), for the summary.
BAD_INPUT_STATUSES = (400, 413, 422)


class Sidecar:
    """The store, the ZMQ receiver thread and the counters that ``GET /stats`` reports."""

    def __init__(
        self,
        store: FingerprintStore,
        *,
        zmq_endpoint: str | None = None,
        zmq_layout: Layout | str = "sglang",
        discovery_dir: Path | None = None,
        reload_interval_seconds: float = 300,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.store = store
        self.zmq_endpoint = zmq_endpoint
        self.zmq_layout = Layout.of(zmq_layout)
        self.discovery_dir = discovery_dir
        self.max_body_bytes = max_body_bytes
        self.started = time.time()
        self.counters: Counter[str] = Counter()
        self.written = Written()  # all sources: what the shutdown line reports
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._zmq_thread: threading.Thread | None = None
        self._zmq_ready = threading.Event()
        self._zmq_error: BaseException | None = None
        # The classifier and the decoders that classify as they store (HTTP's and ZMQ's).
        self.reload_interval_seconds = reload_interval_seconds
        self.classifier: Any = None
        self.classifier_error: str | None = None
        self._decoders: list[MessageDecoder] = []
        self._reload_thread: threading.Thread | None = None
        if discovery_dir is not None:
            # A folder with no run yet is fine: the hourly job fills it, the reload finds it.
            with contextlib.suppress(AttnfastError):
                self.reload_classifier()

    # -- discovery ---------------------------------------------------------------------------

    def decoder(self, layout: Layout | str) -> MessageDecoder:
        """A message decoder whose rows get the classifier's cluster as they are stored."""
        d = MessageDecoder(self.store, layout)
        with self._lock:
            self._decoders.append(d)
            d.classify_with(self.classifier)
        return d

    def reload_classifier(self) -> bool:
        """Loads the newest run of ``--discovery`` (the first time, or when ``latest`` moved);
        returns whether the classifier changed. A broken run keeps the current one in use."""
        from attnfast.discovery.classifier import SidecarClassifier

        if self.discovery_dir is None:
            raise UnavailableError("classifier unavailable: no --discovery folder was given")
        try:
            if self.classifier is None:
                loaded = SidecarClassifier(self.discovery_dir, self.reload_interval_seconds)
                changed = True
            else:
                loaded, changed = self.classifier, self.classifier.reload()
        except AttnfastError as e:
            self.classifier_error = str(e)
            if self.classifier is None:
                raise UnavailableError(f"classifier unavailable: {e}") from None
            raise
        with self._lock:
            self.classifier, self.classifier_error = loaded, None
            for d in self._decoders:
                d.classify_with(loaded)
        return changed

    def start_reloading(self) -> None:
        """Checks ``--discovery`` for a new run every ``reload_interval_seconds``."""
        if self.discovery_dir is None or self.reload_interval_seconds <= 0:
            return

        def loop() -> None:
            while not self._stop.wait(self.reload_interval_seconds):
                # A failure is kept in classifier_error, which /stats reports.
                with contextlib.suppress(AttnfastError):
                    self.reload_classifier()

        self._reload_thread = threading.Thread(target=loop, name="attnfast-reload", daemon=True)
        self._reload_thread.start()

    def count(self, key: str, n: int = 1, error: str | None = None) -> None:
        with self._lock:
            self.counters[key] += n
            if error is not None:
                self.last_error = error

    def count_written(self, source: str, written: Written) -> None:
        """Rows stored and rows refused as duplicates, counted apart."""
        with self._lock:
            self.written = self.written + written
        self.count(f"{source}_rows", written.stored)
        if written.duplicates:
            self.count(f"{source}_duplicates", written.duplicates)

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

        socket_: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PULL)
        socket_.setsockopt(zmq.LINGER, 0)
        socket_.setsockopt(zmq.RCVHWM, 1_000_000)
        try:
            socket_.bind(self.zmq_endpoint)
        except zmq.ZMQError as e:
            self._zmq_error = e
            self._zmq_ready.set()
            socket_.close()
            return
        self._zmq_ready.set()
        decoder = self.decoder(self.zmq_layout)
        poller = zmq.Poller()
        poller.register(socket_, zmq.POLLIN)
        # Batches queued but not yet known stored: the receiver goes on while the writer
        # commits, and counts each batch's outcome once it is known.
        pending: deque[Any] = deque()
        try:
            while not self._stop.is_set():
                self._settle(pending, wait=False)
                if not poller.poll(100):
                    continue
                raw: list[bytes] = []
                while len(raw) < ZMQ_BATCH:
                    try:
                        raw.append(socket_.recv(zmq.NOBLOCK))
                    except zmq.Again:
                        break
                self.count("zmq_messages", len(raw))
                try:
                    tickets, errors = decoder.submit(raw)
                except AttnfastError as e:
                    self.count("zmq_rejected", len(raw), error=f"zmq: {e}")
                    continue
                pending.extend(tickets)
                if errors:
                    self.count("zmq_rejected", len(errors), error=f"zmq: {errors[-1][1]}")
        finally:
            socket_.close()
            self._settle(pending, wait=True)

    def _settle(self, pending: deque[Any], *, wait: bool) -> None:
        while pending and (wait or pending[0].done()):
            ticket = pending.popleft()
            try:
                self.count_written("zmq", Written.of(ticket.wait()))
            except AttnfastError as e:
                self.count("zmq_failed", ticket.rows, error=f"zmq: {e}")

    def stop(self) -> None:
        """Stops receiving, then flushes and closes the store (what SIGTERM does)."""
        self._stop.set()
        if self._zmq_thread is not None:
            self._zmq_thread.join(timeout=10)
        self.store.close()

    def summary(self) -> str:
        """What the sidecar stored and refused, in one line. ZMQ refuses messages one by one;
        HTTP refuses whole requests (a bad batch stores nothing), so those are counted as
        requests, by the statuses that mean bad input."""
        with self._lock:
            c = Counter(self.counters)
            written = self.written
        requests = sum(c[f"http_{status}"] for status in BAD_INPUT_STATUSES)
        return (
            f"{written.summary()}; refused as invalid: {c['zmq_rejected']:,} ZMQ message(s), "
            f"{requests:,} HTTP request(s)"
        )

    def stats(self) -> dict[str, Any]:
        with self._lock:
            counters = dict(self.counters)
            last_error = self.last_error
        return {
            "uptime_seconds": round(time.time() - self.started, 3),
            "counters": counters,
            "last_error": last_error,
            "storage": self.store.stats(),
            "classifier": self.classifier_stats(),
        }

    def classifier_stats(self) -> dict[str, Any]:
        c = self.classifier
        out: dict[str, Any] = {"loaded": c is not None, "discovery_dir": _str(self.discovery_dir)}
        if c is not None:
            out.update(c.stats)
        if self.classifier_error is not None:
            out["error"] = self.classifier_error
        return out


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def rule_classification(vector: np.ndarray, layout: Layout) -> dict[str, Any]:
    """The seed's classification shape, from the zone rules (without a discovery run).
    Rules apply to v1 vectors only; other layouts classify as unknown."""
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


def stored_zone(message: dict[str, Any], layout: Layout, classification: dict[str, Any]) -> Any:
    """The zone the store gives the message's row: the one it carries, else for v1 the rules'
    (what the classification says), else none (SGLang rows are not zoned by rule)."""
    given = (message.get("manifold") or {}).get("zone")
    if given is not None:
        return given
    return classification["manifold"]["zone"] if layout is Layout.V1 else None


def written_reply(written: Written, received: int) -> dict[str, Any]:
    """What a batch became: ``status`` is ``accepted`` when every row was stored,
    ``duplicate`` when none was (every one repeated a stored ``(request_id, step)``), and
    ``partial`` in between."""
    if written.duplicates == 0:
        status = "accepted"
    elif written.stored == 0:
        status = "duplicate"
    else:
        status = "partial"
    return {
        "status": status,
        "received": received,
        "stored": written.stored,
        "duplicates": written.duplicates,
        "duplicate_rows": [list(r) for r in written.duplicate_rows],
    }


def create_app(sidecar: Sidecar) -> Any:
    """The FastAPI application. Errors are ``{"error": "..."}`` with the status of their class
    (:mod:`attnfast.servers.errors`): 400 for a body that cannot be read, 413 for one too
    large, 422 for readable but invalid input, 503 for no classifier."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        sidecar.stop()

    app = FastAPI(title="attnfast sidecar", lifespan=lifespan)

    @app.exception_handler(AttnfastError)
    async def refused(request: Request, e: AttnfastError) -> JSONResponse:
        status = status_of(e)
        sidecar.count(f"http_{status}", error=str(e))
        return JSONResponse({"error": str(e)}, status_code=status)

    @app.exception_handler(HTTPException)
    async def not_served(request: Request, e: HTTPException) -> JSONResponse:
        # A path or method the sidecar does not serve: the same {"error": ...} shape.
        sidecar.count(f"http_{e.status_code}")
        what = f"{request.method} {request.url.path}: {e.detail}"
        return JSONResponse({"error": what}, status_code=e.status_code, headers=e.headers)

    http_decoder = sidecar.decoder("v1")

    async def body_of(request: Request) -> bytearray:
        return await read_body(request, sidecar.max_body_bytes)

    def handled(body: bytearray, work: Callable[[], Any]) -> Any:
        try:
            return work()
        finally:
            if len(body) >= LARGE_BODY:
                del body[:]
                _core.release_memory()

    @app.post("/fingerprint")
    async def post_fingerprint(request: Request) -> Any:
        body = await body_of(request)

        def store() -> tuple[Written, dict[str, Any]]:
            written = http_decoder.write_one(bytes(body))
            return written, json.loads(body)  # it decoded: this cannot fail now

        written, message = await run_in_threadpool(handled, body, store)
        sidecar.count_written("http", written)
        vector = np.asarray(message["vector"], dtype=np.float32)
        layout = Layout.of(message.get("layout") or "v1")
        classifier = sidecar.classifier
        if classifier is not None and classifier.stats["layout"] == layout.value:
            classification = classifier.classify(vector)
        else:
            classification = rule_classification(vector, layout)
        # The row keeps a cluster its message carries (docs/discovery.md): say so.
        carried = (message.get("manifold") or {}).get("cluster_id")
        if isinstance(carried, int) and carried >= 0:
            classification["manifold"]["cluster_id"] = carried
            classification["manifold"]["cluster_probability"] = (message.get("manifold") or {}).get(
                "cluster_probability"
            )
            classification["source"] = "message"
        return {
            "status": "accepted" if written.stored else "duplicate",
            "stored": written.stored,
            "duplicates": written.duplicates,
            # The row as stored (for a duplicate, the row that was there is kept instead).
            "layout": layout.value,
            "zone": stored_zone(message, layout, classification) if written.stored else None,
            "classification": classification,
        }

    @app.post("/fingerprints")
    async def post_fingerprints(request: Request) -> Any:
        if request.headers.get("content-type", "").startswith("application/octet-stream"):
            return await _binary(request)
        body = await body_of(request)
        written = await run_in_threadpool(handled, body, lambda: http_decoder.write_body(body))
        sidecar.count_written("http", written)
        return written_reply(written, written.stored + written.duplicates)

    async def _binary(request: Request) -> Any:
        """Packed rows (80 bytes each, the seed's struct.pack('<20f')); the request id, first
        step (default 1, then consecutive) and layout come in the query string."""
        params = request.query_params
        request_id = params.get("request_id")
        if not request_id:
            raise InvalidInputError(
                "binary bodies need ?request_id=... (and optionally start_step, layout)"
            )
        try:
            start = int(params.get("start_step", "1"))
        except ValueError:
            raise InvalidInputError(
                f"start_step must be an integer, got {params['start_step']!r}"
            ) from None
        layout = Layout.of(params.get("layout", "v1"))
        body = await body_of(request)

        def store() -> Written:
            fps = unpack_fingerprints(bytes(body))
            steps = np.arange(start, start + len(fps), dtype=np.int64)
            columns: dict[str, Any] = {}
            classifier = sidecar.classifier
            if classifier is not None and classifier.stats["layout"] == layout.value:
                # Refuses the body if a row is not a vector of the layout: the store would.
                found = classifier.classify_batch(fps)
                columns = {
                    "cluster_id": found["cluster_id"].astype(np.int64),
                    "cluster_probability": found["cluster_probability"].astype(float),
                }
            return sidecar.store.write(request_id, steps, fps, layout=layout, **columns)

        written = await run_in_threadpool(handled, body, store)
        sidecar.count_written("http", written)
        return written_reply(written, written.stored + written.duplicates)

    def loaded() -> Any:
        if sidecar.classifier is None:
            where = (
                f"no discovery run could be loaded from {sidecar.discovery_dir}"
                + (f" ({sidecar.classifier_error})" if sidecar.classifier_error else "")
                if sidecar.discovery_dir
                else "no --discovery folder was given"
            )
            raise UnavailableError(
                f"classifier unavailable: {where}. Run `attnfast discover`, then POST "
                "/discovery/reload. Zones from the seed's rules come with POST /fingerprint."
            )
        return sidecar.classifier

    @app.post("/classify")
    async def classify(request: Request) -> Any:
        """``{"vector": [20 numbers]}``: the seed's classification; or ``{"vectors": [[...],
        ...]}``: one per vector. A vector that cannot be classified answers 422 with the seed's
        error shape."""
        classifier = loaded()
        body = await body_of(request)
        try:
            message = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DecodeError(f"the body is not JSON ({e})") from None
        if not isinstance(message, dict) or not ({"vector", "vectors"} & message.keys()):
            raise InvalidInputError(
                'the body must be {"vector": [20 numbers]} or {"vectors": [[20 numbers], ...]}'
            )
        if "vector" in message and "vectors" in message:
            raise InvalidInputError('give "vector" or "vectors", not both')
        if "vectors" in message:
            vectors = message["vectors"]
            if not isinstance(vectors, list):
                raise InvalidInputError("vectors must be a list of vectors")
            results = [classifier.classify(v) for v in vectors]
            bad = [i for i, r in enumerate(results) if "error" in r]
            if bad:
                # Counted apart from refused data: nothing was offered for storing.
                sidecar.count("classify_422", error=results[bad[0]]["error"])
                return JSONResponse(
                    {"results": results, "error": f"vectors[{bad[0]}]: {results[bad[0]]['error']}"},
                    status_code=422,
                )
            return {"results": results}
        result = classifier.classify(message["vector"])
        if "error" in result:
            sidecar.count("classify_422", error=result["error"])
            return JSONResponse(result, status_code=422)
        return result

    @app.post("/discovery/reload")
    async def reload() -> Any:
        if sidecar.discovery_dir is None:
            loaded()
        changed = await run_in_threadpool(sidecar.reload_classifier)
        return {"reloaded": changed, **sidecar.classifier_stats()}

    @app.get("/health")
    def health() -> Any:
        return {
            "status": "healthy",
            "db": str(sidecar.store.path),
            "zmq": sidecar.zmq_endpoint,
            "classifier_loaded": sidecar.classifier is not None,
            "schema_version": 1,
        }

    @app.get("/stats")
    def stats() -> Any:
        return sidecar.stats()

    @app.post("/storage/flush")
    def flush() -> Any:
        sidecar.store.flush()
        return {"status": "flushed", "rows": sidecar.store.count()}

    return app


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or one clear error (the port is in use, the host
    is not an address of this machine)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # The protocol is named: asyncio turns Nagle's algorithm off only on sockets whose
    # `proto` says TCP, and with it on every reply waited 40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        reason = "the port is in use" if e.errno == 98 else e.strerror or str(e)
        raise AttnfastError(f"cannot listen on http://{host}:{port}: {reason}") from None
    return sock


def serve(
    db: Path,
    *,
    zmq_endpoint: str | None,
    host: str,
    port: int,
    discovery_dir: Path | None = None,
    reload_interval_seconds: float = 300,
    zmq_layout: str = "sglang",
    synchronous: str = "normal",
    max_body_bytes: int = MAX_BODY_BYTES,
    say: Callable[[str], None] = print,
) -> None:
    """Runs the sidecar until SIGINT or SIGTERM; both flush the store before exiting. Options
    that cannot work are refused before anything starts; ``say`` hears where it listens and,
    at the end, what it stored."""
    import uvicorn

    if max_body_bytes <= 0:
        raise InvalidInputError(f"the body limit must be positive, got {max_body_bytes} bytes")
    if discovery_dir is not None and not discovery_dir.is_dir():
        raise MissingFileError(f"--discovery {discovery_dir}: no such folder")
    Layout.of(zmq_layout)
    sock = listen(host, port)
    created = not db.exists()
    try:
        store = FingerprintStore(db, synchronous=synchronous)  # type: ignore[arg-type]
    except BaseException:
        sock.close()
        raise
    sidecar = Sidecar(
        store,
        zmq_endpoint=zmq_endpoint,
        zmq_layout=zmq_layout,
        discovery_dir=discovery_dir,
        reload_interval_seconds=reload_interval_seconds,
        max_body_bytes=max_body_bytes,
    )
    try:
        sidecar.start_zmq()
        sidecar.start_reloading()
    except BaseException:
        sock.close()
        store.close()
        if created:  # nothing was stored: leave nothing behind
            for suffix in ("", "-wal", "-shm"):
                db.with_name(db.name + suffix).unlink(missing_ok=True)
        raise
    bound = sock.getsockname()[1]
    if discovery_dir is not None:
        c = sidecar.classifier_stats()
        say(
            f"attnfast sidecar: classifying with discovery run {c['run_id']} "
            f"({c['cluster_count']} clusters)"
            if c["loaded"]
            else f"attnfast sidecar: no discovery run loaded yet ({c.get('error')}); "
            f"checking {discovery_dir} every {reload_interval_seconds:g} s"
        )
    say(
        f"attnfast sidecar: listening on http://{host}:{bound}"
        + (f" and {zmq_endpoint} (ZMQ PULL)" if zmq_endpoint else "")
        + f", storing into {db}"
    )
    config = uvicorn.Config(create_app(sidecar), log_level="warning")
    # uvicorn shuts down gracefully on SIGTERM (the store is flushed and closed in the app's
    # lifespan), then re-raises the signal under the handlers it found. This no-op handler
    # turns that into a normal exit (status 0) once everything is stored.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn.Server(config).run(sockets=[sock])
    say(f"attnfast sidecar: stopped; {sidecar.summary()}; all of it flushed to {db}")


__all__ = ["MAX_BODY_BYTES", "Sidecar", "create_app", "rule_classification", "serve"]
