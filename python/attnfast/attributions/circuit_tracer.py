"""circuit-tracer's graph JSON (``metadata``, ``qParams``, ``nodes``, ``links``: what
``create_graph_files`` writes and Neuronpedia hosts), read into and written from the database.

Import: one prompt per graph. Nodes become components by ``feature_type``, never by parsing
``node_id``: ``embedding`` -> ``wte:0``; ``logit`` -> ``output:<vocab index>`` (``feature``);
an error type (``mlp reconstruction error``...) -> ``error.<layer>:0``; any other (transcoder)
feature -> ``<layer>:<feature index>``, the index recovered from the Cantor pairing that schema
version 1 stores in ``feature`` (checked against ``layer``). Links go into the edge codec,
activations become the importance (``max_ci``), and the nodes' own fields are kept beside the
graph so that an export gives them back.

Export: a graph JSON that circuit-tracer's own pydantic model validates and Neuronpedia's upload
accepts (layer as a string, ``schema_version`` 1, ``feature`` by the Cantor pairing), pruned to
the strongest links so that it stays under Neuronpedia's 100 MiB upload limit."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attnfast.attributions.db import LocalAttrDB
from attnfast.attributions.graph import AttributionGraph
from attnfast.exceptions import DecodeError, InvalidInputError, MissingFileError

#: Neuronpedia's upload limit.
UPLOAD_LIMIT = 100 * 1024 * 1024
ERROR_LAYER = "error."


def cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def uncantor(z: int) -> tuple[int, int]:
    w = (math.isqrt(8 * z + 1) - 1) // 2
    y = z - w * (w + 1) // 2
    return w - y, y


def _bad(path: Path, msg: str) -> DecodeError:
    return DecodeError(f"{path}: not a circuit-tracer graph: {msg}")


def _component(node: Mapping[str, Any], schema_version: int | None, path: Path) -> tuple[str, int]:
    """``(layer name, component index)`` of a node, by its ``feature_type``."""
    kind = str(node.get("feature_type", ""))
    layer = str(node.get("layer", ""))
    feature = node.get("feature")
    if kind == "embedding":
        return "wte", 0
    if kind == "logit":
        if not isinstance(feature, int) or feature < 0:
            raise _bad(path, f"logit node {node.get('node_id')!r} has no vocabulary index")
        return "output", feature
    if "error" in kind:
        return f"{ERROR_LAYER}{layer}", 0
    if not layer.isdigit() or not isinstance(feature, int) or feature < 0:
        raise _bad(path, f"feature node {node.get('node_id')!r} needs a numeric layer and feature")
    if schema_version == 1:
        x, y = uncantor(feature)
        if x != int(layer):
            raise _bad(
                path,
                f"node {node.get('node_id')!r}: feature {feature} is not the Cantor pairing of "
                f"layer {layer} (schema_version 1)",
            )
        return layer, y
    return layer, feature


def read_graph(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MissingFileError(f"{path} does not exist")
    try:
        data = json.loads(path.read_bytes())
    except ValueError as e:
        raise _bad(path, f"invalid JSON ({e})") from None
    if not isinstance(data, dict) or not all(k in data for k in ("metadata", "nodes", "links")):
        raise _bad(path, "it needs 'metadata', 'nodes' and 'links'")
    if not isinstance(data["nodes"], list) or not isinstance(data["links"], list):
        raise _bad(path, "'nodes' and 'links' must be lists")
    return data


def import_graph(db: LocalAttrDB, path: Path, *, values: str = "float32") -> int:
    """Stores one circuit-tracer graph file as a prompt; returns its id."""
    data = read_graph(path)
    meta = data["metadata"] if isinstance(data["metadata"], dict) else {}
    # The field defaults to 1 in circuit-tracer's model; files from before it had raw indices.
    version = meta.get("schema_version", 1)
    tokens = [str(t) for t in meta.get("prompt_tokens") or []]
    index: dict[str, int] = {}
    parsed: list[tuple[str, int, int]] = []
    kept_nodes: list[dict[str, Any]] = []
    active: dict[str, tuple[float, list[int]]] = {}
    for node in data["nodes"]:
        if not isinstance(node, dict) or not isinstance(node.get("node_id"), str):
            raise _bad(path, "every node needs a string 'node_id'")
        layer, comp = _component(node, version, path)
        pos = node.get("ctx_idx")
        if not isinstance(pos, int) or pos < 0:
            raise _bad(path, f"node {node['node_id']!r} has no ctx_idx")
        if node["node_id"] in index:
            raise _bad(path, f"node {node['node_id']!r} appears twice")
        index[node["node_id"]] = len(parsed)
        parsed.append((layer, pos, comp))
        kept_nodes.append(node)
        key = f"{layer}:{comp}"
        act = node.get("activation")
        weight = abs(float(act)) if isinstance(act, int | float) else 1.0
        if layer == "output":
            weight = float(node.get("token_prob") or 0.0)
        old = active.get(key, (0.0, []))
        active[key] = (max(old[0], weight), sorted({*old[1], pos}))
    n_tokens = max([len(tokens)] + [p + 1 for _, p, _ in parsed])
    if len(tokens) < n_tokens:
        tokens += [""] * (n_tokens - len(tokens))
    src, tgt, val = [], [], []
    for link in data["links"]:
        try:
            s, t, w = index[link["source"]], index[link["target"]], float(link["weight"])
        except (KeyError, TypeError, ValueError):
            raise _bad(
                path, f"link {link!r} names a node that is not there or has no weight"
            ) from None
        src.append(s)
        tgt.append(t)
        val.append(w)
    from attnfast import _core

    layers = _core.order_layers(list(dict.fromkeys(p[0] for p in parsed)))
    where = {name: i for i, name in enumerate(layers)}
    graph = AttributionGraph.from_columns(
        layers,
        [where[p[0]] for p in parsed],
        [p[1] for p in parsed],
        [p[2] for p in parsed],
        src,
        tgt,
        val,
        values=values,
    )
    probs = {
        f"{p[1]}:{p[2]}": float(n.get("token_prob") or 0.0)
        for p, n in zip(parsed, kept_nodes, strict=True)
        if p[0] == "output"
    }
    extra = {
        "metadata": meta,
        "qParams": data.get("qParams"),
        "nodes": {f"{p[0]}:{p[1]}:{p[2]}": n for p, n in zip(parsed, kept_nodes, strict=True)},
    }
    return db.add_prompt(
        tokens, active, graph=graph, output_probs=probs, source="circuit-tracer", extra=extra
    )


def export_graph(
    db: LocalAttrDB,
    prompt_id: int,
    *,
    top_k: int | None = None,
    limit_bytes: int = UPLOAD_LIMIT,
    slug: str | None = None,
) -> dict[str, Any]:
    """A prompt's graph as circuit-tracer's graph JSON, the ``top_k`` strongest links (all by
    default) and fewer if needed to stay under ``limit_bytes``."""
    record = db.get_prompt(prompt_id)
    if record is None:
        raise InvalidInputError(f"no prompt {prompt_id} in {db.path}")
    if record.graph is None:
        raise InvalidInputError(
            f"prompt {prompt_id} has no stored graph (generated with --on-demand); generate it "
            "with --store-graphs to export it"
        )
    graph = record.graph
    extra = db.graph_extra(prompt_id) or {}
    kept_nodes: dict[str, Any] = extra.get("nodes") or {}
    labels = record.labels
    layer_names = graph.layers
    # circuit-tracer numbers layers: feature layers keep theirs; other layers are numbered in
    # display order; logits come one after the last.
    numbered = [n for n in layer_names if n not in ("wte", "output")]
    number: dict[str, int] = {}
    for i, n in enumerate(numbered):
        if n.isdigit():
            number[n] = int(n)
        elif n.startswith(ERROR_LAYER) and n[len(ERROR_LAYER) :].isdigit():
            number[n] = int(n[len(ERROR_LAYER) :])
        else:
            number[n] = i
    n_layers = max(number.values(), default=-1) + 1
    names = graph.node_names()
    node_json: list[dict[str, Any]] = []
    ids: list[str] = []
    for name in names:
        layer, pos, comp = name.rsplit(":", 2)
        p, c = int(pos), int(comp)
        if name in kept_nodes:
            node = dict(kept_nodes[name])
        elif layer == "wte":
            vocab = record.token_ids[p] if record.token_ids and p < len(record.token_ids) else 0
            node = {
                "node_id": f"E_{vocab}_{p}",
                "feature": p,
                "layer": "E",
                "ctx_idx": p,
                "feature_type": "embedding",
                "jsNodeId": f"E_{vocab}-{p}",
            }
        elif layer == "output":
            prob = record.output_probs.get(f"{p}:{c}", 0.0)
            lay = str(n_layers + 1)
            node = {
                "node_id": f"{lay}_{c}_{p}",
                "feature": c,
                "layer": lay,
                "ctx_idx": p,
                "feature_type": "logit",
                "token_prob": prob,
                "jsNodeId": f"L_{c}-{p}",
                "clerp": f"output {c} (p={prob:.3f})",
            }
        elif layer.startswith(ERROR_LAYER):
            num = number[layer]
            node = {
                "node_id": f"0_{num}_{p}",
                "feature": -1,
                "layer": str(num),
                "ctx_idx": p,
                "feature_type": "mlp reconstruction error",
                "jsNodeId": f"{num}_{p}-0",
            }
        else:
            num = number[layer]
            node = {
                "node_id": f"{num}_{c}_{p}",
                "feature": cantor(num, c),
                "layer": str(num),
                "ctx_idx": p,
                "feature_type": "cross layer transcoder",
                "jsNodeId": f"{num}_{c}-0",
                "clerp": f"{layer}:{c}",
            }
        node_json.append(node)
        ids.append(node["node_id"])
    meta = dict(extra.get("metadata") or {})
    meta.setdefault("slug", slug or f"attnfast-prompt-{prompt_id}")
    if slug:
        meta["slug"] = slug
    meta.setdefault("scan", "attnfast")
    meta.setdefault("transcoder_list", [])
    meta["prompt_tokens"] = labels
    meta.setdefault("prompt", "".join(labels))
    meta["schema_version"] = 1
    qparams = extra.get("qParams") or {
        "pinnedIds": [],
        "supernodes": [],
        "linkType": "both",
        "clickedId": "",
        "sg_pos": "",
    }
    k = top_k
    while True:
        src, tgt, val = graph.edge_columns(k)
        links = [
            {"source": ids[s], "target": ids[t], "weight": v}
            for s, t, v in zip(src.tolist(), tgt.tolist(), val.tolist(), strict=True)
        ]
        used = {x for link in links for x in (link["source"], link["target"])}
        nodes = [
            n
            for n in node_json
            if n["node_id"] in used or n["feature_type"] in ("embedding", "logit")
        ]
        out = {"metadata": meta, "qParams": qparams, "nodes": nodes, "links": links}
        size = len(json.dumps(out))
        if size <= limit_bytes or not links:
            return out
        # Cut to the share of links that fits, with a margin; repeat until it does.
        k = max(0, int(len(links) * limit_bytes / size * 0.95) - 1)
