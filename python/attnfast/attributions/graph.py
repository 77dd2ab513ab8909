"""An attribution graph: nodes ``layer:position:component`` and weighted edges between them,
held as a blob of attnfast's edge codec (docs/graph-format.md) and served from it without
decoding more than a query needs."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from attnfast import _core
from attnfast.exceptions import GraphError, InvalidInputError

#: Blobs of the edge codec start with these bytes.
MAGIC = b"AFGRAPH1"


def parse_node(name: str) -> tuple[str, int, int]:
    """``(layer, position, component)`` of ``"layer:position:component"``."""
    parts = name.rsplit(":", 2) if isinstance(name, str) else []
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit() or not parts[0]:
        raise InvalidInputError(
            f"malformed node {name!r}: expected 'layer:position:component' such as "
            "'h.0.attn.q_proj:3:5'"
        )
    return parts[0], int(parts[1]), int(parts[2])


def _ordered(layers: Iterable[str]) -> list[str]:
    """Distinct layer names in display order (the core's rule: ``wte``, blocks, ``output``)."""
    return _core.order_layers(list(dict.fromkeys(layers)))


class AttributionGraph:
    """One prompt's graph. Build it with :meth:`from_edges` or :meth:`from_columns`, read it with
    :meth:`from_blob` or :meth:`from_seed_pairs`; query it with :meth:`edges`."""

    __slots__ = ("_blob", "_data", "label")

    def __init__(self, data: bytes, *, label: str | None = None) -> None:
        #: Where the graph came from ("prompt 5"), put in front of errors of its chunks.
        self.label = label
        self._data = bytes(data)
        try:
            self._blob = _core.GraphBlob(self._data)
        except GraphError as e:
            raise self._named_error(e) from None

    def _named_error(self, e: GraphError) -> GraphError:
        return GraphError(f"{self.label}: its stored graph is damaged: {e}") if self.label else e

    @classmethod
    def from_blob(cls, data: bytes, *, label: str | None = None) -> AttributionGraph:
        return cls(data, label=label)

    @classmethod
    def from_columns(
        cls,
        layers: Sequence[str],
        layer: Any,
        position: Any,
        component: Any,
        src: Any,
        tgt: Any,
        val: Any,
        *,
        values: str = "float32",
    ) -> AttributionGraph:
        """Nodes as columns (an index into ``layers``, a position, a component) and edges as
        columns of node indices and values."""
        blob = _core.encode_graph(
            list(layers),
            np.ascontiguousarray(layer, dtype=np.uint16),
            np.ascontiguousarray(position, dtype=np.uint32),
            np.ascontiguousarray(component, dtype=np.uint32),
            np.ascontiguousarray(src, dtype=np.uint32),
            np.ascontiguousarray(tgt, dtype=np.uint32),
            np.ascontiguousarray(val, dtype=np.float32),
            values,
        )
        return cls(blob)

    @classmethod
    def from_edges(
        cls, edges: Iterable[tuple[str, str, float]], *, values: str = "float32"
    ) -> AttributionGraph:
        """From ``(src, tgt, val)`` with nodes named ``"layer:position:component"``."""
        triples = list(edges)
        names: dict[str, int] = {}
        parsed: list[tuple[str, int, int]] = []

        def node(n: str) -> int:
            if n not in names:
                names[n] = len(parsed)
                parsed.append(parse_node(n))
            return names[n]

        src = [node(s) for s, _, _ in triples]
        tgt = [node(t) for _, t, _ in triples]
        layers = _ordered(p[0] for p in parsed)
        where = {name: i for i, name in enumerate(layers)}
        return cls.from_columns(
            layers,
            [where[p[0]] for p in parsed],
            [p[1] for p in parsed],
            [p[2] for p in parsed],
            src,
            tgt,
            [float(v) for _, _, v in triples],
            values=values,
        )

    @classmethod
    def from_seed_pairs(cls, pairs: bytes | str, *, values: str = "float32") -> AttributionGraph:
        """The seed's ``pairs`` column: gzip(JSON), or the JSON itself."""
        raw = pairs.encode() if isinstance(pairs, str) else bytes(pairs)
        if raw[:2] == b"\x1f\x8b":
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError, zlib.error) as e:
                raise GraphError(f"the seed's pairs are not valid gzip ({e})") from None
        layers, (layer, position, component), (src, tgt, val) = _core.seed_pairs_graph(raw)
        return cls.from_columns(layers, layer, position, component, src, tgt, val, values=values)

    @property
    def blob(self) -> bytes:
        return self._data

    @property
    def layers(self) -> list[str]:
        return self._blob.layers

    @property
    def n_nodes(self) -> int:
        return self._blob.n_nodes

    @property
    def n_edges(self) -> int:
        return int(self._blob.n_edges)

    @property
    def values(self) -> str:
        return self._blob.values

    def node_names(self) -> list[str]:
        """``layer:position:component`` of every node, in dictionary order."""
        layer, position, component = self._blob.nodes()
        names = self.layers
        return [
            f"{names[ly]}:{p}:{c}"
            for ly, p, c in zip(layer.tolist(), position.tolist(), component.tolist(), strict=True)
        ]

    def node_columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._blob.nodes()

    def component_keys(self) -> list[str]:
        """``layer:component`` of every node, in dictionary order."""
        layer, _, component = self._blob.nodes()
        names = self.layers
        return [
            f"{names[ly]}:{c}" for ly, c in zip(layer.tolist(), component.tolist(), strict=True)
        ]

    def node_index(self, name: str) -> int | None:
        return self._blob.node_index(*parse_node(name))

    def edge_columns(
        self,
        top_k: int | None = None,
        *,
        min_abs: float = 0.0,
        normalize: bool = False,
        max_mean_ci: float | None = None,
        mean_ci: Mapping[str, float] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(src, tgt, val)`` node indices and values, by falling |val| (the seed's serving
        order: filter, top-k, then normalise by target)."""
        if top_k is not None and (isinstance(top_k, bool) or top_k < 0):
            raise InvalidInputError(f"top_k must be a count >= 0, got {top_k!r}")
        keep = None
        if max_mean_ci is not None:
            if mean_ci is None:
                raise InvalidInputError(
                    "max_mean_ci needs the components' mean importance (activation contexts)"
                )
            keep = np.array(
                [mean_ci.get(k, 0.0) <= max_mean_ci for k in self.component_keys()], dtype=bool
            )
        try:
            return self._blob.select(top_k, float(min_abs), keep, normalize)
        except GraphError as e:
            raise self._named_error(e) from None

    def edges(
        self,
        top_k: int | None = None,
        *,
        min_abs: float = 0.0,
        normalize: bool = False,
        max_mean_ci: float | None = None,
        mean_ci: Mapping[str, float] | None = None,
    ) -> list[dict[str, Any]]:
        """Edges in the seed's shape ``{"src", "tgt", "val"}``, by falling |val|."""
        src, tgt, val = self.edge_columns(
            top_k, min_abs=min_abs, normalize=normalize, max_mean_ci=max_mean_ci, mean_ci=mean_ci
        )
        return self._named(src, tgt, val)

    def _named(self, src: np.ndarray, tgt: np.ndarray, val: np.ndarray) -> list[dict[str, Any]]:
        names = self.node_names()
        return [
            {"src": names[s], "tgt": names[t], "val": v}
            for s, t, v in zip(src.tolist(), tgt.tolist(), val.tolist(), strict=True)
        ]

    def edges_into(self, node: str) -> list[dict[str, Any]]:
        """Edges whose target is ``node`` (``layer:position:component``), by falling |val|."""
        return self._edges_of(node, True)

    def edges_out_of(self, node: str) -> list[dict[str, Any]]:
        """Edges whose source is ``node``, by falling |val|."""
        return self._edges_of(node, False)

    def _edges_of(self, node: str, into: bool) -> list[dict[str, Any]]:
        i = self.node_index(node)
        if i is None:
            return []
        try:
            return self._named(*self._blob.edges_of(i, into))
        except GraphError as e:
            raise self._named_error(e) from None

    def to_seed_pairs(self) -> list[dict[str, Any]]:
        """The graph as the seed's pairs JSON: one entry per (source, target) layer pair, local
        component indices through the trimmed arrays, values rounded to 6 places."""
        layer, position, component = (a.astype(np.int64) for a in self._blob.nodes())
        src, tgt, val = self.edge_columns()
        names = self.layers
        groups: dict[tuple[int, int], list[int]] = {}
        for k, (s, t) in enumerate(zip(layer[src].tolist(), layer[tgt].tolist(), strict=True)):
            groups.setdefault((s, t), []).append(k)
        pairs = []
        for (ls, lt), ks in groups.items():
            idx = np.array(ks)
            s_nodes, t_nodes = src[idx], tgt[idx]
            cross = bool(np.any(position[s_nodes] != position[t_nodes]))
            c_in = sorted(set(component[s_nodes].tolist()))
            c_out = sorted(set(component[t_nodes].tolist()))
            local_in = {c: i for i, c in enumerate(c_in)}
            local_out = {c: i for i, c in enumerate(c_out)}
            rows: list[list[float]] = []
            for s, t, v in zip(s_nodes.tolist(), t_nodes.tolist(), val[idx].tolist(), strict=True):
                ci, co = local_in[int(component[s])], local_out[int(component[t])]
                if cross:
                    rows.append([int(position[s]), ci, int(position[t]), co, round(v, 6)])
                else:
                    rows.append([int(position[s]), ci, co, round(v, 6)])
            pairs.append(
                {
                    "source": names[ls],
                    "target": names[lt],
                    "is_cross_seq": cross,
                    "attribution": rows,
                    "trimmed_c_in_idxs": c_in,
                    "trimmed_c_out_idxs": c_out,
                }
            )
        return pairs

    def __repr__(self) -> str:
        return (
            f"AttributionGraph({self.n_nodes} nodes, {self.n_edges} edges, {len(self._data)} "
            f"bytes, {self.values})"
        )
