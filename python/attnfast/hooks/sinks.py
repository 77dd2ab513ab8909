"""Where captured steps go: a fingerprint store, a capture file, a callback, or memory."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from attnfast.capture_file import CaptureWriter
from attnfast.exceptions import CaptureError, InvalidInputError
from attnfast.hooks.records import StepRecord
from attnfast.store import FingerprintStore, Written


class Sink(Protocol):
    def write(self, records: Sequence[StepRecord]) -> None: ...
    def start_sequences(self, sequences: list[dict[str, Any]]) -> None: ...
    def close(self) -> None: ...


class MemorySink:
    """Keeps every record (``Capture.records``)."""

    def __init__(self) -> None:
        self.records: list[StepRecord] = []

    def write(self, records: Sequence[StepRecord]) -> None:
        self.records.extend(records)

    def start_sequences(self, sequences: list[dict[str, Any]]) -> None:
        pass

    def close(self) -> None:
        pass


class CallbackSink:
    """Calls ``fn(records)`` with each forward's records."""

    def __init__(self, fn: Callable[[Sequence[StepRecord]], Any]) -> None:
        self.fn = fn

    def write(self, records: Sequence[StepRecord]) -> None:
        self.fn(records)

    def start_sequences(self, sequences: list[dict[str, Any]]) -> None:
        pass

    def close(self) -> None:
        pass


class StoreSink:
    """Appends fingerprints (with tokens, top-k, sink mass and layer ids) to a store, in
    batches; closing waits for every batch's commit, so a finished capture is acknowledged,
    and ``written`` then says how many rows were stored and how many were refused as
    duplicates (a request id reused). Prompt rows of a causal model (``prefill=True``) go
    under ``<request_id>/prompt`` with their query's position as the step."""

    BATCH = 512

    def __init__(self, store: FingerprintStore, model_id: str | None) -> None:
        self.store = store
        self.model_id = model_id
        self.pending: list[StepRecord] = []
        self.tickets: list[Any] = []
        self.written: Written | None = None

    def write(self, records: Sequence[StepRecord]) -> None:
        self.pending.extend(records)
        if len(self.pending) >= self.BATCH:
            self._append()

    def start_sequences(self, sequences: list[dict[str, Any]]) -> None:
        pass

    def _append(self) -> None:
        rows, self.pending = self.pending, []
        if not rows:
            return
        columns: dict[str, Any] = {
            "created_at": [r.timestamp for r in rows],
            "token_id": [r.token_id for r in rows],
            "token_text": [r.token_text for r in rows],
            "sink_token_mass": np.array([r.sink_mass for r in rows], dtype=np.float64),
            "capture_layer_ids": [np.asarray(r.layer_ids, dtype=np.int32) for r in rows],
        }
        if self.model_id is not None:
            columns["model_id"] = self.model_id
        # Any row, not the first: prompt rows (prefill=True) carry no top-k and may lead a batch.
        if any(r.topk_positions is not None for r in rows):
            columns["top_k_positions"] = [r.topk_positions for r in rows]
            columns["top_k_scores"] = [r.topk_scores for r in rows]
        self.tickets.append(
            self.store._submit(
                [r.request_id if r.step is not None else f"{r.request_id}/prompt" for r in rows],
                [r.step if r.step is not None else r.position - 1 for r in rows],
                np.stack([r.fingerprint for r in rows]),
                **columns,
            )
        )

    def close(self) -> None:
        self._append()
        self.written = Written.wait(self.tickets)
        self.tickets = []


class FileSink:
    """Writes full attention rows to a capture file (``.attn``) as they are produced."""

    def __init__(self, path: str | Path, meta: dict[str, Any], **options: Any) -> None:
        self.writer = CaptureWriter(path, meta, **options)
        self.sequences: list[dict[str, Any]] = []

    def start_sequences(self, sequences: list[dict[str, Any]]) -> None:
        self.sequences.extend(sequences)
        self.writer.write_meta({"sequences": self.sequences})

    def write(self, records: Sequence[StepRecord]) -> None:
        for r in records:
            if r.attention is None:
                raise CaptureError("a capture file needs mode='full'")
            # A causal model's prompt row (prefill=True): its step is its query's position.
            step = r.position - 1 if r.step is None else r.step
            self.writer.write_step(
                sequence=r.sequence,
                step=step,
                token_id=-1 if r.token_id is None else r.token_id,
                position=r.position,
                timestamp_ms=int(r.timestamp * 1000),
                text=r.token_text or "",
                attention=r.attention,
                prompt=r.step is None,
            )

    def close(self) -> None:
        self.writer.close()


def make_sink(sink: Any, *, mode: str, model_id: str | None, meta: dict[str, Any]) -> Sink:
    if sink is None:
        return MemorySink()
    if isinstance(sink, FingerprintStore):
        return StoreSink(sink, model_id)
    if isinstance(sink, str | Path):
        if mode != "full":
            raise CaptureError(
                f"a capture file holds full attention rows: use mode='full' (got mode={mode!r}), "
                "or a FingerprintStore for fingerprints"
            )
        if Path(sink).suffix == ".json":
            raise CaptureError(
                "capture writes the binary .attn format; convert it to the seed's JSON "
                "afterwards with `attnfast convert --to json`"
            )
        if Path(sink).suffix != ".attn":
            # Most likely a database path: writing a capture file under that name would
            # leave a file no store can open.
            raise InvalidInputError(
                f"a capture file path must end in .attn, got {str(sink)!r}; for fingerprints "
                "in a database, pass FingerprintStore(path) as the sink"
            )
        return FileSink(sink, meta)
    if callable(sink):
        return CallbackSink(sink)
    raise CaptureError(
        f"sink must be a FingerprintStore, a capture file path, a callable or None, got "
        f"{type(sink).__name__}"
    )
