"""What a run says about its clusters: zones, sizes, centroids, medoids, prototypes, readable
labels, and the per-request view (request embeddings)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from attnfast.fingerprint import FINGERPRINT_FIELDS, ZONES

#: Tokens of context on each side of a prototype.
CONTEXT_TOKENS = 8

_ZONE_TITLES = {
    "syntax_floor": "Syntax floor",
    "semantic_bridge": "Semantic bridge",
    "structure_ripple": "Structure ripple",
    "unknown": "Unzoned",
}


def majority(
    codes: NDArray[np.integer[Any]], groups: NDArray[np.integer[Any]], n_groups: int, n_values: int
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Per group: its most common code (-1 for an empty group; ties to the lowest code) and
    that code's share of the group."""
    counts = np.bincount(groups * n_values + codes, minlength=n_groups * n_values).reshape(
        n_groups, n_values
    )
    best = counts.argmax(axis=1)
    total = counts.sum(axis=1)
    share = np.where(total > 0, counts[np.arange(n_groups), best] / np.maximum(total, 1), 0.0)
    return np.where(total > 0, best, -1), share


@dataclass
class ClusterRow:
    cluster_id: int
    label: str
    description: str
    dominant_zone: str
    zone_confidence: float
    size: int
    persistence: float
    centroid_x: float
    centroid_y: float
    centroid_fingerprint: NDArray[np.float32]
    medoid_request_id: str
    medoid_step: int
    medoid_index: int


def _features(
    cluster_mean: NDArray[np.float64], mean: NDArray[np.float64], std: NDArray[np.float64]
) -> list[tuple[str, float, float, float]]:
    """Fields that set a cluster apart: (name, cluster mean, overall mean, z), strongest first."""
    z = (cluster_mean - mean) / np.where(std > 0, std, 1.0)
    order = np.argsort(-np.abs(z), kind="stable")
    return [
        (FINGERPRINT_FIELDS[i], float(cluster_mean[i]), float(mean[i]), float(z[i])) for i in order
    ]


def label_of(zone: str, features: list[tuple[str, float, float, float]]) -> str:
    """A readable name from what is known: the zone and the two fields that most set the
    cluster apart ("Syntax floor: high local_mass, low entropy")."""
    parts = [
        f"{'high' if z > 0 else 'low'} {name}" for name, _, _, z in features[:2] if abs(z) >= 0.5
    ]
    title = _ZONE_TITLES.get(zone, zone)
    return f"{title}: {', '.join(parts)}" if parts else f"{title}: typical"


def describe(
    size: int,
    total: int,
    zone: str,
    zone_share: float,
    features: list[tuple[str, float, float, float]],
    tokens: list[str],
) -> str:
    stands_out = "; ".join(
        f"{name} {value:.3g} (overall {overall:.3g})" for name, value, overall, _ in features[:3]
    )
    text = (
        f"{size} fingerprints ({100 * size / max(total, 1):.1f}% of the run); "
        f"zone {zone} for {100 * zone_share:.0f}% of them; stands out by {stands_out}"
    )
    if tokens:
        text += "; commonest prototype tokens: " + ", ".join(repr(t) for t in tokens)
    return text


def cluster_rows(
    *,
    labels: NDArray[np.int32],
    xy: NDArray[np.float32],
    fps: NDArray[np.float32],
    zone_codes: NDArray[np.uint8],
    persistence: NDArray[np.float64],
    request_id: list[str],
    step: NDArray[np.int64],
) -> list[ClusterRow]:
    """One row per cluster (ids 0..n-1 as HDBSCAN numbered them)."""
    n_clusters = int(labels.max()) + 1 if len(labels) else 0
    if n_clusters == 0:
        return []
    member = labels >= 0
    groups = labels[member]
    zone, share = majority(zone_codes[member].astype(np.int64), groups, n_clusters, len(ZONES))
    sizes = np.bincount(groups, minlength=n_clusters)
    cx = np.bincount(groups, weights=xy[member, 0], minlength=n_clusters) / sizes
    cy = np.bincount(groups, weights=xy[member, 1], minlength=n_clusters) / sizes
    mean = fps.mean(axis=0, dtype=np.float64)
    std = fps.std(axis=0, dtype=np.float64)
    rows = []
    index = np.flatnonzero(member)
    for c in range(n_clusters):
        members = index[groups == c]
        d = (xy[members, 0] - cx[c]) ** 2 + (xy[members, 1] - cy[c]) ** 2
        medoid = int(members[int(np.argmin(d))])
        centroid = fps[members].mean(axis=0, dtype=np.float64)
        rows.append(
            ClusterRow(
                cluster_id=c,
                label="",
                description="",
                dominant_zone=ZONES[int(zone[c])],
                zone_confidence=float(share[c]),
                size=int(sizes[c]),
                persistence=float(persistence[c]) if c < len(persistence) else 0.0,
                centroid_x=float(cx[c]),
                centroid_y=float(cy[c]),
                centroid_fingerprint=centroid.astype(np.float32),
                medoid_request_id=request_id[medoid],
                medoid_step=int(step[medoid]),
                medoid_index=medoid,
            )
        )
        rows[-1].label = label_of(rows[-1].dominant_zone, _features(centroid, mean, std))
    repeated = Counter(r.label for r in rows)
    for r in rows:
        if repeated[r.label] > 1:
            r.label += f" #{r.cluster_id}"
    return rows


def prototype_indices(
    labels: NDArray[np.int32], xy: NDArray[np.float32], rows: list[ClusterRow], k: int
) -> dict[int, list[int]]:
    """Per cluster, the ``k`` members nearest its 2-D mean (rank 0 nearest)."""
    out: dict[int, list[int]] = {}
    for r in rows:
        members = np.flatnonzero(labels == r.cluster_id)
        d = (xy[members, 0] - r.centroid_x) ** 2 + (xy[members, 1] - r.centroid_y) ** 2
        out[r.cluster_id] = members[np.argsort(d, kind="stable")[:k]].tolist()
    return out


def contexts(index: int, request_id: list[str], token_text: list[str | None]) -> tuple[str, str]:
    """Token texts just before and after row ``index`` within its request (rows of a request
    are adjacent, in step order)."""
    rid = request_id[index]
    before: list[str] = []
    i = index - 1
    while i >= 0 and request_id[i] == rid and len(before) < CONTEXT_TOKENS:
        before.append(token_text[i] or "")
        i -= 1
    after: list[str] = []
    i = index + 1
    while i < len(request_id) and request_id[i] == rid and len(after) < CONTEXT_TOKENS:
        after.append(token_text[i] or "")
        i += 1
    return "".join(reversed(before)), "".join(after)


def finish_labels(
    rows: list[ClusterRow],
    protos: dict[int, list[int]],
    fps: NDArray[np.float32],
    labels: NDArray[np.int32],
    token_text: list[str | None],
) -> None:
    """Descriptions, with the commonest token texts of each cluster's prototypes."""
    mean = fps.mean(axis=0, dtype=np.float64)
    std = fps.std(axis=0, dtype=np.float64)
    total = len(labels)
    for r in rows:
        tokens = [
            t
            for t, _ in Counter(
                token_text[i] for i in protos[r.cluster_id] if token_text[i]
            ).most_common(3)
            if t
        ]
        features = _features(r.centroid_fingerprint.astype(np.float64), mean, std)
        r.description = describe(
            r.size, total, r.dominant_zone, r.zone_confidence, features, [str(t) for t in tokens]
        )


def request_embeddings(
    *,
    request_id: list[str],
    think_phase: list[str | None],
    xy: NDArray[np.float32],
    labels: NDArray[np.int32],
    zone_codes: NDArray[np.uint8],
) -> dict[str, Any]:
    """Per request: mean x/y, step counts, and the commonest zone and non-noise cluster overall,
    in the think phase and in the output phase (None where there is none)."""
    names, groups = np.unique(np.asarray(request_id, dtype=object), return_inverse=True)
    g = groups.astype(np.int64)
    n = len(names)
    steps = np.bincount(g, minlength=n)
    phase = np.asarray([p or "unknown" for p in think_phase], dtype=object)
    out: dict[str, Any] = {
        "request_id": names.tolist(),
        "x": (np.bincount(g, weights=xy[:, 0], minlength=n) / steps).astype(np.float32),
        "y": (np.bincount(g, weights=xy[:, 1], minlength=n) / steps).astype(np.float32),
        "n_steps": steps,
        "think_steps": np.bincount(g[phase == "think"], minlength=n),
        "output_steps": np.bincount(g[phase == "output"], minlength=n),
    }
    n_clusters = int(labels.max()) + 1 if len(labels) else 0
    for prefix, mask in (
        ("", np.ones(len(g), bool)),
        ("think_", phase == "think"),
        ("output_", phase == "output"),
    ):
        zone, _ = majority(zone_codes[mask].astype(np.int64), g[mask], n, len(ZONES))
        out[f"{prefix}dominant_zone"] = [ZONES[z] if z >= 0 else None for z in zone.tolist()]
        clustered = mask & (labels >= 0)
        if n_clusters:
            cl, _ = majority(labels[clustered].astype(np.int64), g[clustered], n, n_clusters)
        else:
            cl = np.full(n, -1)
        out[f"{prefix}dominant_cluster"] = cl.astype(np.int32)
    return out
