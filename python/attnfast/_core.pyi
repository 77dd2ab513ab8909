"""Type stubs of the private Rust extension. Use the public API in ``attnfast`` instead."""

import numpy as np
from numpy.typing import NDArray

__version__: str
FINGERPRINT_FIELDS: list[str]
ZONE_NAMES: list[str]
LAYOUTS: list[tuple[str, int, int, list[str]]]

def fingerprints_f32(
    attn: NDArray[np.float32], query_positions: NDArray[np.int64] | None = None
) -> NDArray[np.float32]: ...
def fingerprints_f16(
    attn: NDArray[np.float16], query_positions: NDArray[np.int64] | None = None
) -> NDArray[np.float32]: ...
def fingerprints_topk(
    positions: NDArray[np.int64],
    scores: NDArray[np.float32],
    query_positions: NDArray[np.int64],
    context_length: int,
) -> NDArray[np.float32]: ...
def pack_fingerprints(fps: NDArray[np.float32], layout: int) -> bytes: ...
def unpack_fingerprints(blob: bytes, layout: int) -> NDArray[np.float32]: ...
def zone_codes(fps: NDArray[np.float32]) -> tuple[NDArray[np.uint8], NDArray[np.float32]]: ...
def set_simd_limit(limit: str) -> str: ...
def build_info() -> tuple[str, int]: ...
