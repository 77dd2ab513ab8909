"""Type stubs of the private Rust extension. Use the public API in ``attnfast`` instead."""

from collections.abc import Callable
from os import PathLike
from typing import Any, TypeAlias, final

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "FINGERPRINT_FIELDS",
    "LAYOUTS",
    "ZONE_NAMES",
    "CaptureReader",
    "CaptureWriter",
    "Classifier",
    "ComponentIndex",
    "GraphBlob",
    "MessageDecoder",
    "Store",
    "Ticket",
    "__version__",
    "attention_step",
    "build_info",
    "encode_graph",
    "fingerprints_f16",
    "fingerprints_f32",
    "fingerprints_topk",
    "order_layers",
    "pack_fingerprints",
    "release_memory",
    "seed_pairs_graph",
    "set_simd_limit",
    "step_summary",
    "unpack_fingerprints",
    "zone_codes",
]

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
def attention_step(
    queries: list[Any],  # float32 CPU torch tensors (B, H, Q, D); the last row is used
    keys: list[Any],  # float32 CPU torch tensors (B, KV, N, D)
    biases: list[NDArray[np.float32] | None],
    scales: list[float],
    heads: list[int] | None,
    pads: list[int],
    topk: int,
    want_rows: bool,
) -> tuple[NDArray[np.float32], NDArray[np.float32] | None, int]: ...
def step_summary(rows: NDArray[np.float32], pads: list[int], topk: int) -> NDArray[np.float32]: ...
def build_info() -> tuple[str, int]: ...
def release_memory() -> None: ...

# (stored, duplicates, first duplicates as (request_id, step))
_Outcome: TypeAlias = tuple[int, int, list[tuple[str, int]]]

@final
class Ticket:
    def wait(self) -> _Outcome: ...
    def done(self) -> bool: ...
    @property
    def rows(self) -> int: ...

@final
class Store:
    def __new__(
        cls,
        path: str,
        synchronous: str,
        busy_timeout_s: float,
        max_queued_rows: int,
        on_duplicate: str,
        init: bool,
    ) -> Store: ...
    def append(
        self,
        request_ids: str | list[str],
        steps: NDArray[np.int64],
        fingerprints: NDArray[np.float32],
        layout: int,
        columns: dict[str, Any],
    ) -> int: ...
    def append_tracked(
        self,
        request_ids: str | list[str],
        steps: NDArray[np.int64],
        fingerprints: NDArray[np.float32],
        layout: int,
        columns: dict[str, Any],
    ) -> Ticket: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    def opened(self) -> tuple[int, int, int | None]: ...
    def writer_stats(self) -> tuple[int, int, int, int, int]: ...
    def count(
        self,
        since_us: int | None,
        until_us: int | None,
        request_id: str | None,
        zone: int | None,
        cluster_id: int | None,
        layout: int | None,
    ) -> int: ...
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
    def write_discovery(
        self,
        statements: list[tuple[str, list[list[Any]]]],
        ids: NDArray[np.int64],
        cluster_id: NDArray[np.int32],
        probability: NDArray[np.float32],
    ) -> int: ...
    def export_parquet(
        self,
        out_dir: str,
        since_us: int | None,
        until_us: int | None,
        overwrite: bool,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[int, list[tuple[str, str, int]]]: ...

@final
class MessageDecoder:
    def __new__(cls, default_layout: int) -> MessageDecoder: ...
    def append_raw(
        self, store: Store, messages: list[bytes], all_or_nothing: bool
    ) -> tuple[list[Ticket], list[tuple[int, str]]]: ...
    def append_one(self, store: Store, message: bytes) -> Ticket: ...
    def append_body(
        self, store: Store, body: bytes | bytearray
    ) -> tuple[list[Ticket], list[tuple[int, str]]]: ...
    def set_classifier(self, classifier: Classifier | None) -> None: ...

_Placements = tuple[
    NDArray[np.float32], NDArray[np.float32], NDArray[np.int32], NDArray[np.float32]
]

@final
class Classifier:
    def __new__(
        cls,
        layout: str,
        scaler_mean: list[float],
        scaler_scale: list[float],
        pca_mean: list[float],
        pca_components: NDArray[np.float64],
        fingerprints: NDArray[np.float32],
        x: NDArray[np.float32],
        y: NDArray[np.float32],
        cluster_id: NDArray[np.int32],
        probability: NDArray[np.float32],
        neighbours: int,
        search_leaves: int,
    ) -> Classifier: ...
    @staticmethod
    def load(folder: str | PathLike[str]) -> Classifier: ...
    @property
    def layout(self) -> str: ...
    @property
    def dims(self) -> int: ...
    @property
    def neighbours(self) -> int: ...
    @property
    def search_leaves(self) -> int: ...
    @property
    def sample_rows(self) -> int: ...
    def project(self, fingerprints: NDArray[np.float32]) -> NDArray[np.float32]: ...
    def assign(self, fingerprints: NDArray[np.float32]) -> _Placements: ...
    def assign_one(self, fingerprint: NDArray[np.float32]) -> tuple[float, float, int, float]: ...

@final
class CaptureWriter:
    def __new__(cls, path: str, meta_json: str, chunk_bytes: int, level: int) -> CaptureWriter: ...
    def write_meta(self, meta_json: str) -> None: ...
    def write_step(
        self,
        sequence: int,
        step: int,
        token_id: int,
        position: int,
        timestamp_ms: int,
        text: str,
        attention: NDArray[Any],
        prompt: bool = False,
    ) -> None: ...
    @property
    def steps(self) -> int: ...
    @property
    def prompt_rows(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    def close(self) -> int: ...

@final
class CaptureReader:
    def __new__(cls, path: str) -> CaptureReader: ...
    def meta_json(self) -> str: ...
    @property
    def indexed(self) -> bool: ...
    def problems(self) -> list[tuple[int, int, str]]: ...
    def verify(self) -> list[tuple[int, int, str]]: ...
    def __len__(self) -> int: ...
    def steps(self, prompt: bool = False) -> tuple[Any, ...]: ...
    def read(self, i: int, prompt: bool = False) -> NDArray[np.float32]: ...

_EdgeColumns: TypeAlias = tuple[NDArray[np.uint32], NDArray[np.uint32], NDArray[np.float32]]
_NodeColumns: TypeAlias = tuple[NDArray[np.uint16], NDArray[np.uint32], NDArray[np.uint32]]

def encode_graph(
    layers: list[str],
    layer: NDArray[np.uint16],
    position: NDArray[np.uint32],
    component: NDArray[np.uint32],
    src: NDArray[np.uint32],
    tgt: NDArray[np.uint32],
    val: NDArray[np.float32],
    values: str = "float32",
    level: int = 9,
) -> bytes: ...
def seed_pairs_graph(json: bytes) -> tuple[list[str], _NodeColumns, _EdgeColumns]: ...
def order_layers(names: list[str]) -> list[str]: ...

@final
class GraphBlob:
    def __new__(cls, data: bytes) -> GraphBlob: ...
    @property
    def layers(self) -> list[str]: ...
    @property
    def n_nodes(self) -> int: ...
    @property
    def n_edges(self) -> int: ...
    @property
    def n_chunks(self) -> int: ...
    @property
    def values(self) -> str: ...
    @property
    def byte_len(self) -> int: ...
    def nodes(self) -> _NodeColumns: ...
    def node_index(self, layer: str, position: int, component: int) -> int | None: ...
    def select(
        self,
        top_k: int | None = None,
        min_abs: float = 0.0,
        keep: NDArray[np.bool_] | None = None,
        normalize: bool = False,
    ) -> _EdgeColumns: ...
    def edges_of(self, node: int, into: bool) -> _EdgeColumns: ...

@final
class ComponentIndex:
    def __new__(cls) -> ComponentIndex: ...
    def add(self, prompts: NDArray[np.int64], keys: list[str]) -> None: ...
    def add_concatenated(self, key: str, ids: str) -> None: ...
    def load(self, key: str, bitmap: bytes) -> None: ...
    def take_dirty(self) -> list[tuple[str, bytes]]: ...
    @property
    def dirty_count(self) -> int: ...
    @property
    def rows(self) -> int: ...
    @property
    def key_count(self) -> int: ...
    def contains(self, key: str) -> bool: ...
    def prompts_of(self, key: str) -> NDArray[np.uint32]: ...
    def query(
        self, include: list[str], mode: str = "all", exclude: list[str] = ...
    ) -> NDArray[np.uint32]: ...
