"""Writing a run folder's files (docs/discovery-artifacts.md): the classifier's model and
sample, the seed's four Parquet tables, HDBSCAN's condensed tree, and on request the seed's
joblib pickles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from attnfast.discovery import artifacts
from attnfast.discovery.fit import ProjectionFit
from attnfast.discovery.summary import ClusterRow, contexts
from attnfast.discovery.window import Window
from attnfast.fingerprint import FINGERPRINT_DIM, ZONES


def _fingerprint_column(values: NDArray[np.float32]) -> Any:
    import pyarrow as pa

    flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, FINGERPRINT_DIM)


def _write(path: Path, columns: dict[str, Any], compression: str = "zstd") -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path, compression=compression)


def write_run(
    folder: Path,
    *,
    run_id: str,
    window: Window,
    params: Any,
    proj: ProjectionFit,
    neighbours: int,
    search_leaves: int,
    fit_idx: NDArray[np.int64],
    fit_xy: NDArray[np.float32],
    fit_labels: NDArray[np.int32],
    fit_prob: NDArray[np.float32],
    xy: NDArray[np.float32],
    labels: NDArray[np.int32],
    prob: NDArray[np.float32],
    in_sample: NDArray[np.bool_],
    zone_codes: NDArray[np.uint8],
    zone_conf: NDArray[np.float32],
    rows: list[ClusterRow],
    protos: dict[int, list[int]],
    previews: dict[str, str | None],
    requests: dict[str, Any],
    clusterer: Any,
    reducer: Any,
    write_joblib: bool,
) -> None:
    import pyarrow as pa

    artifacts.write_json(
        folder / "model.json",
        {
            "format": artifacts.MODEL_FORMAT,
            "format_version": 1,
            "layout": params.layout,
            "scaler_mean": proj.scaler_mean.tolist(),
            "scaler_scale": proj.scaler_scale.tolist(),
            "pca_mean": proj.pca_mean.tolist(),
            "pca_components": proj.pca_components.tolist(),
            "neighbours": neighbours,
            "search_leaves": search_leaves,
        },
    )
    core = getattr(getattr(clusterer, "prediction_data_", None), "core_distances", None)
    _write(
        folder / "sample.parquet",
        {
            "fingerprint_id": pa.array(window.ids[fit_idx], pa.int64()),
            "fingerprint": _fingerprint_column(window.fingerprints[fit_idx]),
            "x": pa.array(fit_xy[:, 0], pa.float32()),
            "y": pa.array(fit_xy[:, 1], pa.float32()),
            "cluster_id": pa.array(fit_labels, pa.int32()),
            "probability": pa.array(fit_prob, pa.float32()),
            "core_distance": pa.array(
                np.zeros(len(fit_idx)) if core is None else core, pa.float32()
            ),
        },
        compression="snappy",  # what the Rust reader decodes (docs/discovery-artifacts.md)
    )
    tree = clusterer.condensed_tree_.to_numpy()
    _write(
        folder / "condensed_tree.parquet",
        {
            "parent": pa.array(tree["parent"], pa.int64()),
            "child": pa.array(tree["child"], pa.int64()),
            "lambda_val": pa.array(tree["lambda_val"], pa.float64()),
            "child_size": pa.array(tree["child_size"], pa.int64()),
        },
    )
    _write(
        folder / "embeddings.parquet",
        {
            "fingerprint_id": pa.array(window.ids, pa.int64()),
            "request_id": pa.array(window.request_id, pa.string()),
            "step": pa.array(window.step, pa.int64()),
            "x": pa.array(xy[:, 0], pa.float32()),
            "y": pa.array(xy[:, 1], pa.float32()),
            "cluster_id": pa.array(labels, pa.int32()),
            "cluster_prob": pa.array(prob, pa.float32()),
            "zone_label": pa.array([ZONES[c] for c in zone_codes.tolist()], pa.string()),
            "zone_confidence": pa.array(zone_conf, pa.float32()),
            "in_sample": pa.array(in_sample, pa.bool_()),
        },
    )
    _write(
        folder / "clusters.parquet",
        {
            "cluster_id": pa.array([r.cluster_id for r in rows], pa.int32()),
            "run_id": pa.array([run_id] * len(rows), pa.string()),
            "label": pa.array([r.label for r in rows], pa.string()),
            "description": pa.array([r.description for r in rows], pa.string()),
            "dominant_zone": pa.array([r.dominant_zone for r in rows], pa.string()),
            "zone_confidence": pa.array([r.zone_confidence for r in rows], pa.float64()),
            "size": pa.array([r.size for r in rows], pa.int64()),
            "persistence": pa.array([r.persistence for r in rows], pa.float64()),
            "centroid_x": pa.array([r.centroid_x for r in rows], pa.float64()),
            "centroid_y": pa.array([r.centroid_y for r in rows], pa.float64()),
            "centroid_fingerprint": _fingerprint_column(
                np.stack([r.centroid_fingerprint for r in rows])
                if rows
                else np.zeros((0, FINGERPRINT_DIM), np.float32)
            ),
            "medoid_request_id": pa.array([r.medoid_request_id for r in rows], pa.string()),
            "medoid_step": pa.array([r.medoid_step for r in rows], pa.int64()),
        },
    )
    p_rows = prototype_rows(run_id, window, protos, previews, xy)
    _write(
        folder / "prototypes.parquet",
        {
            "cluster_id": pa.array([r[0] for r in p_rows], pa.int32()),
            "run_id": pa.array([r[1] for r in p_rows], pa.string()),
            "rank": pa.array([r[2] for r in p_rows], pa.int32()),
            "fingerprint_id": pa.array([r[3] for r in p_rows], pa.int64()),
            "request_id": pa.array([r[4] for r in p_rows], pa.string()),
            "step": pa.array([r[5] for r in p_rows], pa.int64()),
            "token_text": pa.array([r[6] for r in p_rows], pa.string()),
            "context_before": pa.array([r[7] for r in p_rows], pa.string()),
            "context_after": pa.array([r[8] for r in p_rows], pa.string()),
            "prompt_preview": pa.array([r[9] for r in p_rows], pa.string()),
            "x": pa.array([r[10] for r in p_rows], pa.float64()),
            "y": pa.array([r[11] for r in p_rows], pa.float64()),
        },
    )
    _write(folder / "request_embeddings.parquet", requests)
    if write_joblib:
        import joblib

        joblib.dump(clusterer, folder / "clusterer.joblib")
        joblib.dump(
            {"scaler": proj.scaler, "pca": proj.pca, "umap": reducer},
            folder / "embedding_models.joblib",
        )


def prototype_rows(
    run_id: str,
    window: Window,
    protos: dict[int, list[int]],
    previews: dict[str, str | None],
    xy: NDArray[np.float32],
) -> list[tuple[Any, ...]]:
    """The ``prototypes`` table's rows, in the seed's column order (without its ``id``)."""
    out = []
    for cid, members in protos.items():
        for rank, i in enumerate(members):
            before, after = contexts(i, window.request_id, window.token_text)
            rid = window.request_id[i]
            out.append(
                (
                    cid,
                    run_id,
                    rank,
                    int(window.ids[i]),
                    rid,
                    int(window.step[i]),
                    window.token_text[i],
                    before,
                    after,
                    previews.get(rid),
                    float(xy[i, 0]),
                    float(xy[i, 1]),
                )
            )
    return out
