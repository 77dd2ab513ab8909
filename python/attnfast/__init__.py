"""attnfast: see where a language model's attention goes, at production scale.

The public API lives here; the Rust extension ``attnfast._core`` is private.

>>> import numpy as np, attnfast
>>> attn = np.full((2, 4, 64), 1 / 64, dtype=np.float32)  # one step: 2 layers, 4 heads, 64 keys
>>> fp = attnfast.compute_fingerprints(attn)
>>> fp.shape
(1, 20)
>>> attnfast.zone_of(fp)[0].tolist()
['semantic_bridge']
"""

from __future__ import annotations

from typing import Any

from attnfast import _core
from attnfast.attributions import AttributionGraph, LocalAttrDB
from attnfast.capture_file import CaptureFile, CaptureWriter
from attnfast.exceptions import (
    ArtifactError,
    AttentionValueError,
    AttnfastError,
    BlobError,
    CaptureError,
    CaptureFileError,
    DecodeError,
    DtypeError,
    DuplicateStepError,
    GraphError,
    InvalidInputError,
    LayoutError,
    MissingFileError,
    ShapeError,
    StoreError,
)
from attnfast.fingerprint import (
    FINGERPRINT_BYTES,
    FINGERPRINT_DIM,
    FINGERPRINT_FIELDS,
    ZONES,
    compute_fingerprints,
    fingerprint_from_topk,
    pack_fingerprints,
    unpack_fingerprints,
    zone_of,
)
from attnfast.layout import Layout
from attnfast.store import FingerprintStore, Written

__version__: str = _core.__version__

# Capture needs torch (the `torch` extra); importing attnfast must not.
_TORCH_EXPORTS = {"capture", "Capture", "StepRecord"}


def __getattr__(name: str) -> Any:
    if name in _TORCH_EXPORTS:
        from attnfast import hooks

        return getattr(hooks, name)
    raise AttributeError(f"module 'attnfast' has no attribute {name!r}")


def build_info() -> dict[str, object]:
    """What this build of the core uses: version, vector path, threads."""
    simd, threads = _core.build_info()
    return {"version": __version__, "simd": simd, "threads": threads}


__all__ = [
    "FINGERPRINT_BYTES",
    "FINGERPRINT_DIM",
    "FINGERPRINT_FIELDS",
    "ZONES",
    "ArtifactError",
    "AttentionValueError",
    "AttnfastError",
    "AttributionGraph",
    "BlobError",
    "Capture",
    "CaptureError",
    "CaptureFile",
    "CaptureFileError",
    "CaptureWriter",
    "DecodeError",
    "DtypeError",
    "DuplicateStepError",
    "FingerprintStore",
    "GraphError",
    "InvalidInputError",
    "Layout",
    "LayoutError",
    "LocalAttrDB",
    "MissingFileError",
    "ShapeError",
    "StepRecord",
    "StoreError",
    "Written",
    "__version__",
    "build_info",
    "capture",
    "compute_fingerprints",
    "fingerprint_from_topk",
    "pack_fingerprints",
    "unpack_fingerprints",
    "zone_of",
]
