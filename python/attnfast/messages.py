"""The SGLang attention explorer's per-step JSON messages, turned into store batches.

One message: ``{"request_id": str, "vector": [20 floats], "step": int, "metadata": {...},
"manifold": {...}}``. ``step`` may also sit in ``metadata``; when a message has none, the
request's next step is used (1 for its first message, as the server counts). Known metadata
keys become columns (``token_id``, ``token_text``, ``think_phase``, ``session_id``,
``model_id``, ``segment_idx``, ``sink_token_mass``, ``top_k_positions``, ``top_k_scores``,
``capture_layer_ids``, ``router_entropy``, ``expert_load_balance``, ``top_expert_ids``);
``manifold`` gives ``zone``, ``confidence``, ``cluster_id`` and ``cluster_probability``.
Other keys are ignored. ``layout`` ("v1" or "sglang") overrides the source's default.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from attnfast.exceptions import InvalidInputError
from attnfast.fingerprint import FINGERPRINT_DIM, ZONES
from attnfast.layout import Layout
from attnfast.store import THINK_PHASES, FingerprintStore

_METADATA_COLUMNS = (
    "token_id",
    "token_text",
    "think_phase",
    "session_id",
    "model_id",
    "segment_idx",
    "sink_token_mass",
    "top_k_positions",
    "top_k_scores",
    "capture_layer_ids",
    "router_entropy",
    "expert_load_balance",
    "top_expert_ids",
)
_MANIFOLD_COLUMNS = {
    "zone": "manifold_zone",
    "confidence": "manifold_confidence",
    "cluster_id": "cluster_id",
    "cluster_probability": "cluster_probability",
}
_REAL_COLUMNS = frozenset(
    {
        "sink_token_mass",
        "router_entropy",
        "expert_load_balance",
        "manifold_confidence",
        "cluster_probability",
    }
)
_INT_COLUMNS = frozenset({"token_id", "segment_idx", "cluster_id"})
_LIST_COLUMNS = frozenset(
    {"top_k_positions", "top_k_scores", "capture_layer_ids", "top_expert_ids"}
)
_TEXT_VALUES = {"think_phase": THINK_PHASES, "manifold_zone": ZONES}
_MAX_TRACKED_REQUESTS = 1 << 20
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _bad(msg: str) -> InvalidInputError:
    return InvalidInputError(msg)


def _check_column(name: str, value: Any) -> Any:
    """One optional value, checked so that a bad message fails alone, before batching."""
    if value is None:
        return None
    if name in _REAL_COLUMNS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _bad(f"{name} must be a number, got {value!r}")
        if math.isinf(value):
            raise _bad(f"{name} must be finite")
        return float(value)
    if name in _INT_COLUMNS:
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not -(1 << 63) <= value < 1 << 63
        ):
            raise _bad(f"{name} must be a 64-bit integer, got {value!r}")
        return value
    if name in _LIST_COLUMNS:
        if name == "top_k_scores":
            ok = (
                all(
                    isinstance(v, int | float)
                    and not isinstance(v, bool)
                    and abs(v) <= _FLOAT32_MAX
                    for v in value
                )
                if isinstance(value, list)
                else False
            )
            if not ok:
                raise _bad(f"{name} must be a list of float32 numbers")
        elif not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and -(1 << 31) <= v < 1 << 31
            for v in value
        ):
            raise _bad(f"{name} must be a list of 32-bit integers")
        return value
    if not isinstance(value, str):
        raise _bad(f"{name} must be a string, got {value!r}")
    allowed = _TEXT_VALUES.get(name)
    if allowed is not None and value not in allowed:
        raise _bad(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value


class MessageBatcher:
    """Collects decoded messages and appends them to a store in batches (one per layout)."""

    def __init__(self, store: FingerprintStore, default_layout: Layout | str = "v1") -> None:
        self.store = store
        self.default_layout = Layout.of(default_layout)
        self._next_step: dict[str, int] = {}
        self._rows: dict[Layout, list[tuple[str, int, list[float], dict[str, Any]]]] = defaultdict(
            list
        )
        self.pending = 0

    def add(self, message: Any) -> None:
        """Checks one decoded message and queues it; raises InvalidInputError naming the
        problem (nothing is queued then)."""
        if not isinstance(message, dict):
            raise _bad(f"a message must be a JSON object, got {type(message).__name__}")
        request_id = message.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            raise _bad("request_id must be a non-empty string")
        vector = message.get("vector")
        if not isinstance(vector, list) or len(vector) != FINGERPRINT_DIM:
            got = len(vector) if isinstance(vector, list) else type(vector).__name__
            raise _bad(f"vector must be a list of {FINGERPRINT_DIM} numbers, got {got}")
        for i, v in enumerate(vector):
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise _bad(f"vector[{i}] must be a finite number, got {v!r}")
            if abs(v) > _FLOAT32_MAX:
                raise _bad(f"vector[{i}] = {v!r} does not fit a float32")
        metadata = message.get("metadata") or {}
        manifold = message.get("manifold") or {}
        if not isinstance(metadata, dict) or not isinstance(manifold, dict):
            raise _bad("metadata and manifold must be JSON objects")
        step = message.get("step", metadata.get("step"))
        if step is None:
            step = self._next_step.get(request_id, 1)
        elif isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < 1 << 24:
            raise _bad(f"step must be an integer from 0 to 16777215, got {step!r}")
        layout = Layout.of(message["layout"]) if "layout" in message else self.default_layout
        columns = {k: _check_column(k, metadata.get(k)) for k in _METADATA_COLUMNS if k in metadata}
        for key, name in _MANIFOLD_COLUMNS.items():
            if key in manifold:
                columns[name] = _check_column(name, manifold[key])
        if len(self._next_step) > _MAX_TRACKED_REQUESTS:
            self._next_step.clear()
        self._next_step[request_id] = step + 1
        self._rows[layout].append((request_id, step, vector, columns))
        self.pending += 1

    def flush_to_store(self) -> int:
        """Appends everything queued; returns the number of rows."""
        total = 0
        for layout, rows in self._rows.items():
            if not rows:
                continue
            names = sorted({k for _, _, _, cols in rows for k in cols})
            columns: dict[str, Any] = {}
            for name in names:
                values = [cols.get(name) for _, _, _, cols in rows]
                if name in _REAL_COLUMNS:
                    columns[name] = [math.nan if v is None else v for v in values]
                else:
                    columns[name] = values
            total += self.store.append(
                [r[0] for r in rows],
                np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows)),
                np.array([r[2] for r in rows], dtype=np.float32),
                layout=layout,
                **columns,
            )
            rows.clear()
        self.pending = 0
        return total


__all__ = ["MessageBatcher"]
