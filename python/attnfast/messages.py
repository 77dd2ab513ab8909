"""The SGLang attention explorer's per-step JSON messages, decoded (in Rust) into a store.

One message: ``{"request_id": str, "vector": [20 numbers], "step": int, "metadata": {...},
"manifold": {...}}``. ``step`` may also sit in ``metadata``; a message without one gets its
request's next step (1 for its first message, as the server counts). Known metadata keys
become columns (``token_id``, ``token_text``, ``think_phase``, ``session_id``, ``model_id``,
``segment_idx``, ``sink_token_mass``, ``top_k_positions``, ``top_k_scores``,
``capture_layer_ids``, ``router_entropy``, ``expert_load_balance``, ``top_expert_ids``);
``manifold`` gives ``zone``, ``confidence``, ``cluster_id`` and ``cluster_probability``. Other
keys are ignored. ``layout`` ("v1" or "sglang") overrides the decoder's default. Each vector
must be one of its layout (docs/store.md); a message that is not is refused alone.

>>> import attnfast, json, tempfile, os
>>> store = attnfast.FingerprintStore(os.path.join(tempfile.mkdtemp(), "m.db"))
>>> decoder = MessageDecoder(store, default_layout="sglang")
>>> good = json.dumps({"request_id": "r", "vector": [0.05] * 20}).encode()
>>> written, refused = decoder.write([good, b"{oops"])
>>> written
Written(stored=1, duplicates=0, duplicate_rows=())
>>> refused
[(1, 'the message is not valid JSON: key must be a string at line 1 column 2')]
>>> decoder.write([good.replace(b'"r"', b'"r", "step": 1')])[0].duplicates
1
>>> store.close()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from attnfast import _core
from attnfast.exceptions import InvalidInputError
from attnfast.layout import Layout
from attnfast.store import FingerprintStore, Written

Errors = list[tuple[int, str]]


class MessageDecoder:
    """Decodes messages into ``store``; remembers each request's next step across calls."""

    def __init__(self, store: FingerprintStore, default_layout: Layout | str = "v1") -> None:
        self.store = store
        self._decoder = _core.MessageDecoder(Layout.of(default_layout).code)

    def classify_with(self, classifier: Any) -> None:
        """Gives every row stored from now on the cluster of ``classifier`` (a
        :class:`~attnfast.discovery.SidecarClassifier`; None stops it), in Rust as the
        messages are decoded. Rows that carry a ``cluster_id`` keep it."""
        self._decoder.set_classifier(None if classifier is None else classifier._run.core)

    def append(
        self, messages: Sequence[bytes], *, all_or_nothing: bool = False
    ) -> tuple[int, Errors]:
        """Queues the messages that decode; returns ``(rows queued, [(index, error), ...])``.
        With ``all_or_nothing``, one refused message means nothing is queued."""
        tickets, errors = self.submit(messages, all_or_nothing=all_or_nothing)
        return sum(int(t.rows) for t in tickets), errors

    def write(
        self, messages: Sequence[bytes], *, all_or_nothing: bool = False
    ) -> tuple[Written, Errors]:
        """As :meth:`append`, and waits for the commit: returns what was stored and what was
        refused as duplicates, beside the messages refused as invalid."""
        tickets, errors = self.submit(messages, all_or_nothing=all_or_nothing)
        return Written.wait(tickets), errors

    def submit(
        self, messages: Sequence[bytes], *, all_or_nothing: bool = False
    ) -> tuple[list[Any], Errors]:
        """As :meth:`append`, returning the ``_core.Ticket`` of each batch queued, whose
        ``wait()`` gives its outcome, so that a receiver can go on meanwhile."""
        tickets, errors = self._decoder.append_raw(
            self.store._store, list(messages), all_or_nothing
        )
        return tickets, errors

    def write_one(self, message: bytes) -> Written:
        """Stores one message, or raises what is wrong with it: :class:`DecodeError` if it
        is not JSON, :class:`InvalidInputError` naming the field otherwise."""
        return Written.of(self._decoder.append_one(self.store._store, message).wait())

    def write_body(self, body: bytes | bytearray) -> Written:
        """Stores a JSON list of messages (or ``{"fingerprints": [...]}``) whole, or raises:
        :class:`~attnfast.DecodeError` if it is not JSON, :class:`InvalidInputError` naming
        the first refused message otherwise. Returns once committed. The body is read in
        place: do not change a ``bytearray`` meanwhile."""
        tickets, errors = self._decoder.append_body(self.store._store, body)
        if errors:
            index, message = errors[0]
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise InvalidInputError(f"fingerprints[{index}]: {message}{more}")
        return Written.wait(tickets)


__all__ = ["MessageDecoder"]
