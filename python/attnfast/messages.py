"""The SGLang attention explorer's per-step JSON messages, decoded (in Rust) into a store.

One message: ``{"request_id": str, "vector": [20 numbers], "step": int, "metadata": {...},
"manifold": {...}}``. ``step`` may also sit in ``metadata``; a message without one gets its
request's next step (1 for its first message, as the server counts). Known metadata keys
become columns (``token_id``, ``token_text``, ``think_phase``, ``session_id``, ``model_id``,
``segment_idx``, ``sink_token_mass``, ``top_k_positions``, ``top_k_scores``,
``capture_layer_ids``, ``router_entropy``, ``expert_load_balance``, ``top_expert_ids``);
``manifold`` gives ``zone``, ``confidence``, ``cluster_id`` and ``cluster_probability``. Other
keys are ignored. ``layout`` ("v1" or "sglang") overrides the decoder's default.

>>> import attnfast, json, tempfile, os
>>> store = attnfast.FingerprintStore(os.path.join(tempfile.mkdtemp(), "m.db"))
>>> decoder = MessageDecoder(store, default_layout="sglang")
>>> good = json.dumps({"request_id": "r", "vector": [0.05] * 20}).encode()
>>> decoder.append([good, b"{oops"])
(1, [(1, 'not valid JSON: key must be a string at line 1 column 2')])
>>> store.close()
"""

from __future__ import annotations

from collections.abc import Sequence

from attnfast import _core
from attnfast.exceptions import InvalidInputError
from attnfast.layout import Layout
from attnfast.store import FingerprintStore


class MessageDecoder:
    """Decodes messages into ``store``; remembers each request's next step across calls."""

    def __init__(self, store: FingerprintStore, default_layout: Layout | str = "v1") -> None:
        self.store = store
        self._decoder = _core.MessageDecoder(Layout.of(default_layout).code)

    def append(
        self, messages: Sequence[bytes], *, all_or_nothing: bool = False
    ) -> tuple[int, list[tuple[int, str]]]:
        """Appends the messages that decode; returns ``(rows, [(index, error), ...])``. With
        ``all_or_nothing``, one refused message means nothing is appended."""
        rows, errors = self._decoder.append_raw(self.store._store, list(messages), all_or_nothing)
        return rows, errors

    def append_body(self, body: bytes) -> int:
        """Appends a JSON list of messages (or ``{"fingerprints": [...]}``) whole, or raises
        :class:`InvalidInputError` naming the first refused message; returns the rows."""
        rows, errors = self._decoder.append_body(self.store._store, body)
        if errors:
            index, message = errors[0]
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise InvalidInputError(f"fingerprints[{index}]: {message}{more}")
        return rows


__all__ = ["MessageDecoder"]
