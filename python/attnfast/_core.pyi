"""Type stubs of the private Rust extension. Use the public API in ``attnfast`` instead."""

from collections.abc import Callable
from typing import Any

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

class Store:
    def __init__(
        self,
        path: str,
        synchronous: str,
        busy_timeout_s: float,
        max_queued_rows: int,
        on_duplicate: str,
    ) -> None: ...
    def append(
        self,
        request_ids: str | list[str],
        steps: NDArray[np.int64],
        fingerprints: NDArray[np.float32],
        layout: int,
        columns: dict[str, Any],
    ) -> int: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    @property
    def migrated_rows(self) -> int: ...
    def writer_stats(self) -> tuple[int, int, int, int, int]: ...
    def read(
        self,
        since_us: int | None,
        until_us: int | None,
        request_id: str | None,
        zone: int | None,
        cluster_id: int | None,
        layout: int | None,
        limit: int | None,
        newest_first: bool,
    ) -> dict[str, Any]: ...
    def sql(self, sql: str, params: list[Any]) -> tuple[list[str], list[tuple[Any, ...]]]: ...
    def export_parquet(
        self,
        out_dir: str,
        since_us: int | None,
        until_us: int | None,
        overwrite: bool,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[int, list[tuple[str, str, int]]]: ...

class MessageDecoder:
    def __init__(self, default_layout: int) -> None: ...
    def append_raw(
        self, store: Store, messages: list[bytes], all_or_nothing: bool
    ) -> tuple[int, list[tuple[int, str]]]: ...
    def append_body(self, store: Store, body: bytes) -> tuple[int, list[tuple[int, str]]]: ...
