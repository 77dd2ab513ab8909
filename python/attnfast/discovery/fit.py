"""The fitting stages of a discovery run, as the seed's job does them: StandardScaler, PCA,
UMAP to 2-D (euclidean), HDBSCAN (eom, with prediction data) on the 2-D embedding.

Imports of scikit-learn, umap-learn and hdbscan happen here, inside the functions: ``import
umap`` costs 10-17 s of numba compilation, which nothing but a fit should pay."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from attnfast.fingerprint import FINGERPRINT_DIM


@dataclass(frozen=True)
class ProjectionFit:
    """StandardScaler and PCA parameters, as sklearn stores them."""

    scaler_mean: NDArray[np.float64]
    scaler_scale: NDArray[np.float64]
    pca_mean: NDArray[np.float64]
    pca_components: NDArray[np.float64]
    explained_variance_ratio: NDArray[np.float64]
    scaler: Any
    pca: Any


def pca_components_used(requested: int, rows: int) -> int:
    """PCA keeps at most the 20 dimensions there are and at most one fewer than the rows
    (the seed asked for 50 of 20, which sklearn refuses or ignores)."""
    return max(1, min(requested, FINGERPRINT_DIM, rows - 1))


def fit_projection(fps: NDArray[np.float32], components: int, seed: int) -> ProjectionFit:
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(fps.astype(np.float64))
    scaled = scaler.transform(fps.astype(np.float64))
    pca = PCA(n_components=components, random_state=seed).fit(scaled)
    return ProjectionFit(
        scaler_mean=np.asarray(scaler.mean_, dtype=np.float64),
        scaler_scale=np.asarray(scaler.scale_, dtype=np.float64),
        pca_mean=np.asarray(pca.mean_, dtype=np.float64),
        pca_components=np.ascontiguousarray(pca.components_, dtype=np.float64),
        explained_variance_ratio=np.asarray(pca.explained_variance_ratio_, dtype=np.float64),
        scaler=scaler,
        pca=pca,
    )


def fit_umap(points: NDArray[np.float32], neighbours: int, min_dist: float, seed: int) -> Any:
    """UMAP to 2-D. ``random_state`` makes runs reproducible (and umap-learn single-threaded,
    which is why the job fits on a sample above ``--sample-size``)."""
    with warnings.catch_warnings():
        # umap-learn warns on import that TensorFlow (ParametricUMAP) is missing, and on fit
        # that random_state sets n_jobs to 1: both known and intended here.
        warnings.simplefilter("ignore")
        import umap

        model = umap.UMAP(
            n_components=2,
            n_neighbors=neighbours,
            min_dist=min_dist,
            metric="euclidean",
            random_state=seed,
        )
        model.fit(points)
    return model


def fit_hdbscan(xy: NDArray[np.float32], min_cluster_size: int, min_samples: int) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import hdbscan

        return hdbscan.HDBSCAN(
            min_cluster_size=min_cluster_size,
            min_samples=min_samples,
            cluster_selection_method="eom",
            prediction_data=True,
        ).fit(xy.astype(np.float64))
