"""The run's writes to the store, in one transaction: ``clusters`` and ``prototypes``
rewritten (as the seed's job does; the ``-1`` "Unassigned" row stays), the clusters of the
window's fingerprints, and the run record completed."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from attnfast._time import now_us
from attnfast.discovery.summary import ClusterRow
from attnfast.discovery.window import Window
from attnfast.discovery.writer import prototype_rows
from attnfast.store import FingerprintStore


def record(store: FingerprintStore, sql: str, row: list[Any]) -> None:
    """One parameterised statement on the run's record, committed at once."""
    empty = np.zeros(0, np.int64)
    store._store.write_discovery(
        [(sql, [row])], empty, empty.astype(np.int32), empty.astype(np.float32)
    )


def write_tables(
    store: FingerprintStore,
    *,
    run_id: str,
    window: Window,
    rows: list[ClusterRow],
    protos: dict[int, list[int]],
    previews: dict[str, str | None],
    xy: NDArray[np.float32],
    labels: NDArray[np.int32],
    prob: NDArray[np.float32],
    counts: dict[str, Any],
) -> int:
    from attnfast.discovery.job import _utc

    clusters = [
        [
            r.cluster_id,
            run_id,
            r.label,
            r.description,
            r.dominant_zone,
            r.zone_confidence,
            r.size,
            r.persistence,
            r.centroid_x,
            r.centroid_y,
            r.centroid_fingerprint.astype("<f4").tobytes(),
            r.medoid_request_id,
            r.medoid_step,
        ]
        for r in rows
    ]
    statements: list[tuple[str, list[list[Any]]]] = [
        ("DELETE FROM prototypes", [[]]),
        ("DELETE FROM clusters WHERE cluster_id >= 0", [[]]),
        (
            "INSERT INTO clusters (cluster_id, run_id, label, description, dominant_zone, "
            "zone_confidence, size, persistence, centroid_x, centroid_y, centroid_fingerprint, "
            "medoid_request_id, medoid_step) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            clusters,
        ),
        (
            "INSERT INTO prototypes (cluster_id, run_id, rank, fingerprint_id, request_id, step, "
            "token_text, context_before, context_after, prompt_preview, x, y) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [list(r) for r in prototype_rows(run_id, window, protos, previews, xy)],
        ),
        (
            "UPDATE discovery_runs SET status = 'completed', fingerprint_count = ?, "
            "request_count = ?, cluster_count = ?, noise_count = ?, completed_at = ? "
            "WHERE run_id = ?",
            [
                [
                    counts["fingerprints"],
                    counts["requests"],
                    counts["clusters"],
                    counts["noise"],
                    _utc(now_us()),
                    run_id,
                ]
            ],
        ),
    ]
    # Probabilities rounded to float32 as the classifier gives them.
    return int(
        store._store.write_discovery(
            statements,
            np.ascontiguousarray(window.ids),
            np.ascontiguousarray(labels),
            np.ascontiguousarray(prob),
        )
    )
