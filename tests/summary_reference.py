"""An independent reference for ``request_summary`` as docs/store.md defines it, computed from
scratch in Python from the seed's ``fingerprints`` view, and the vector rules in numpy. The
store keeps the summary incrementally (Rust for its writer, SQL triggers for everything
else); tests hold both to this."""

from __future__ import annotations

import math
import sqlite3
import struct
from collections import Counter
from itertools import pairwise
from typing import Any

import numpy as np

ZONES = ("syntax_floor", "semantic_bridge", "structure_ripple", "unknown")
TOLERANCE = 1e-3


def vector_ok(fp: np.ndarray, layout: int) -> bool:
    """docs/store.md: finite, not negative; v1 masses and histogram sum to 1; the SGLang
    layout's masses and 16 bins sum to at most 1."""
    if not np.isfinite(fp).all() or (fp < 0).any():
        return False
    masses = float(fp[0:3].astype(np.float64).sum())
    if layout == 1:
        return (
            abs(masses - 1) <= TOLERANCE and abs(fp[4:12].astype(np.float64).sum() - 1) <= TOLERANCE
        )
    return masses <= 1 + TOLERANCE and float(fp[4:20].astype(np.float64).sum()) <= 1 + TOLERANCE


def _ints(blob: bytes | None) -> list[int]:
    return [] if blob is None else list(struct.unpack(f"<{len(blob) // 4}i", blob))


def summaries(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """Every request's summary columns, from its rows in step order."""
    rows = conn.execute(
        "SELECT request_id, step, think_phase, manifold_zone, fingerprint, schema_version, "
        "cluster_id, router_entropy, top_expert_ids, token_text, model_id, session_id, "
        "created_at FROM fingerprints ORDER BY request_id, step"
    ).fetchall()
    by_request: dict[str, list[tuple[Any, ...]]] = {}
    for r in rows:
        by_request.setdefault(r[0], []).append(r)
    out = {}
    for request, rs in by_request.items():
        n = len(rs)
        zones = Counter(r[3] if r[3] in ZONES else "unknown" for r in rs)
        dominant = max(ZONES, key=lambda z: (zones[z], -ZONES.index(z)))
        measured = []
        for r in rs:
            fp = np.frombuffer(r[4], dtype="<f4")
            if vector_ok(fp, r[5]):
                entropy = float(fp[3]) * (math.log(16) if r[5] == 1001 else 1.0)
                measured.append((float(fp[0]), float(fp[2]), entropy))
        routers = [r[7] for r in rs if r[7] is not None]
        experts = [_ints(r[8]) for r in rs]
        clusters = Counter(r[6] for r in rs if r[6] is not None and r[6] >= 0)
        firsts = [e[0] if e else None for e in experts]
        transitions = sum(
            1
            for a, b in pairwise(rs)
            if a[6] is not None and b[6] is not None and a[6] >= 0 and b[6] >= 0 and a[6] != b[6]
        )
        switches = sum(1 for a, b in pairwise(firsts) if a is not None and b is not None and a != b)
        preview = "".join(r[9] or "" for r in rs[:500])[:500]
        out[request] = {
            "total_steps": n,
            "think_steps": sum(r[2] == "think" for r in rs),
            "output_steps": sum(r[2] == "output" for r in rs),
            **{f"{z}_pct": 100.0 * zones[z] / n for z in ZONES},
            "dominant_zone": dominant,
            "mean_local_mass": np.mean([m[0] for m in measured]) if measured else None,
            "mean_long_mass": np.mean([m[1] for m in measured]) if measured else None,
            "mean_entropy": np.mean([m[2] for m in measured]) if measured else None,
            "expert_entropy_mean": np.mean(routers) if routers else None,
            "expert_switch_count": switches,
            "unique_experts_used": len({e for es in experts for e in es}),
            "dominant_cluster_id": min(clusters, key=lambda c: (-clusters[c], c))
            if clusters
            else -1,
            "cluster_transitions": transitions,
            "response_preview": preview or None,
            "model_id": rs[0][10],
            "session_id": rs[0][11],
            "started_at": rs[0][12],
            "finished_at": rs[-1][12],
        }
    return out


SUMMARY_KEYS = (
    "total_steps",
    "think_steps",
    "output_steps",
    *(f"{z}_pct" for z in ZONES),
    "dominant_zone",
    "mean_local_mass",
    "mean_long_mass",
    "mean_entropy",
    "expert_entropy_mean",
    "expert_switch_count",
    "unique_experts_used",
    "dominant_cluster_id",
    "cluster_transitions",
    "response_preview",
    "model_id",
    "session_id",
    "started_at",
    "finished_at",
)


def stored(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """The store's request_summary, in the same shape."""
    columns = ", ".join(SUMMARY_KEYS)
    rows = conn.execute(f"SELECT request_id, {columns} FROM request_summary").fetchall()
    return {r[0]: dict(zip(SUMMARY_KEYS, r[1:], strict=True)) for r in rows}


def assert_summaries_match(conn: sqlite3.Connection) -> None:
    """The stored request_summary equals the reference, request by request, column by column
    (means within 1e-9: the store adds and subtracts)."""
    want, got = summaries(conn), stored(conn)
    assert sorted(got) == sorted(want), "requests differ"
    for request, expected in want.items():
        for key, value in expected.items():
            actual = got[request][key]
            if isinstance(value, float) and actual is not None:
                assert abs(actual - value) <= 1e-9 * max(1.0, abs(value)), (request, key)
            else:
                assert actual == value, (request, key, actual, value)
