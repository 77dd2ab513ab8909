"""The attributions database: per-prompt attribution graphs between model components, stored
in attnfast's edge codec, searched by component through a roaring-bitmap index. Reads the
seed's databases (both forms) and circuit-tracer's graph JSON. See docs/attributions.md."""

from __future__ import annotations

from attnfast.attributions.db import ComponentStats, LocalAttrDB, MergeResult, PromptRecord
from attnfast.attributions.graph import AttributionGraph
from attnfast.attributions.keys import parse_key

__all__ = [
    "AttributionGraph",
    "ComponentStats",
    "LocalAttrDB",
    "MergeResult",
    "PromptRecord",
    "parse_key",
]
