"""Heatmap PNGs (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from attnfast.exceptions import InvalidInputError

#: What ``save_heatmap`` writes, by the file's suffix.
FORMATS = (".png", ".svg", ".pdf")


def downsample(matrix: NDArray[np.float32], max_rows: int, max_cols: int) -> NDArray[np.float32]:
    """Averages blocks of rows and columns so that the result fits ``max_rows x max_cols``.
    Averages (not samples) keep every position's attention in the picture: a bright single
    token still shows in its block."""
    out = np.asarray(matrix, dtype=np.float32)
    for axis, limit in ((0, max_rows), (1, max_cols)):
        n = out.shape[axis]
        if n > limit:
            factor = -(-n // limit)
            pad = factor * (-(-n // factor)) - n
            padded = np.pad(
                out, [(0, pad) if a == axis else (0, 0) for a in range(2)], constant_values=np.nan
            )
            shape = list(padded.shape)
            shape[axis : axis + 1] = [shape[axis] // factor, factor]
            out = np.nanmean(padded.reshape(shape), axis=axis + 1)
    return out


def save_heatmap(
    matrix: NDArray[np.float32],
    path: str | Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    yticklabels: Sequence[str] | None = None,
    max_cells: tuple[int, int] = (512, 512),
) -> Path:
    """Writes ``matrix`` (rows = y, columns = x) as a PNG (or SVG, PDF, by the suffix); long
    axes are block-averaged to at most ``max_cells``. An empty matrix, or one holding nothing
    finite, is an error rather than an empty picture."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise InvalidInputError(
            f"{path}: a heatmap is written as {', '.join(FORMATS)}, by the file's suffix"
        )
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.size == 0 or not np.isfinite(matrix).any():
        raise InvalidInputError(
            f"nothing to draw: the matrix is {matrix.shape} with no finite value"
        )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    small = downsample(matrix, *max_cells)
    fig, ax = plt.subplots(figsize=(10, 6), dpi=100)
    image = ax.imshow(small, aspect="auto", interpolation="nearest", cmap="magma", origin="lower")
    ax.set_title(title)
    ax.set_xlabel(_label(xlabel, matrix.shape[1], small.shape[1]))
    ax.set_ylabel(_label(ylabel, matrix.shape[0], small.shape[0]))
    if yticklabels is not None and len(yticklabels) == small.shape[0]:
        ax.set_yticks(range(len(yticklabels)), [t[:40] for t in yticklabels], fontsize=7)
    fig.colorbar(image, ax=ax, label="attention share")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _label(name: str, full: int, shown: int) -> str:
    return name if shown == full else f"{name} (blocks of {-(-full // shown)})"
