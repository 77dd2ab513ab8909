"""Benchmarks of the attributions database (issue 12), each side by side with its baseline:

1. Search: a database of N prompts (default 1,000,000) with 50 active components each,
   Zipf-distributed over 100,000 keys; AND and OR of three keys, p50 and p99 latency of
   attnfast's roaring index against the seed's SQL on the same file.
2. Edge codec: graphs of 10k and 1M edges, size and decode time against the seed's gzip-JSON
   pairs and circuit-tracer's graph JSON of the same graph.
3. Generation: prompts/s on the built-in model and on a GPT-2-small-shaped model (random
   weights from the config).

    .venv/bin/python benches/bench_attributions.py [--only search,codec,generate] [--prompts N]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from attnfast import AttributionGraph, LocalAttrDB
from timing import best_time

SEED_ALL = (
    "SELECT prompt_id FROM component_activations WHERE component_key IN ({m}) "
    "GROUP BY prompt_id HAVING COUNT(DISTINCT component_key) = ?"
)
SEED_ANY = "SELECT DISTINCT prompt_id FROM component_activations WHERE component_key IN ({m})"


def key_name(rank: int) -> str:
    return f"h.{rank % 12}.mlp.c_fc:{rank}"


def build_search_db(path: Path, n: int, keys: int = 100_000, per: int = 50) -> float:
    """Writes the database in bulk, as the seed's generation would, in attnfast's schema."""
    LocalAttrDB(path).close()
    rng = np.random.default_rng(0)
    cdf = np.cumsum(1.0 / np.arange(1, keys + 1))
    cdf /= cdf[-1]
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA synchronous = OFF")
    c.execute("DROP INDEX idx_component_activations_key")
    c.execute("DROP INDEX idx_component_activations_prompt")
    c.execute("BEGIN")
    c.executemany(
        "INSERT INTO prompts (id, tokens) VALUES (?, ?)", ((i, '["t"]') for i in range(1, n + 1))
    )
    total = 0
    for start in range(0, n, 20_000):
        m = min(20_000, n - start)
        draws = np.searchsorted(cdf, rng.random((m, per + 14)))
        rows = []
        for j in range(m):
            ranks = list(dict.fromkeys(draws[j].tolist()))[:per]
            pid = start + j + 1
            rows.extend((pid, key_name(r), 0.5, "[0]") for r in ranks)
        c.executemany("INSERT INTO component_activations VALUES (?, ?, ?, ?)", rows)
        total += len(rows)
    c.execute("COMMIT")
    c.execute("CREATE INDEX idx_component_activations_key ON component_activations(component_key)")
    c.execute("CREATE INDEX idx_component_activations_prompt ON component_activations(prompt_id)")
    c.close()
    return total / n


def percentiles(times: list[float]) -> tuple[float, float]:
    a = np.array(times) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def bench_search(tmp: Path, n: int) -> dict[str, Any]:
    path = tmp / "search.db"
    t = time.perf_counter()
    mean_per = build_search_db(path, n)
    built = time.perf_counter() - t
    t = time.perf_counter()
    with LocalAttrDB(path) as db:
        db.index_info()
    rebuild = time.perf_counter() - t  # includes persisting the bitmaps on close
    t = time.perf_counter()
    db = LocalAttrDB(path)
    info = db.index_info()
    load = time.perf_counter() - t
    seed = sqlite3.connect(path)
    f, m, r = key_name(0), key_name(300), key_name(30_000)
    queries = {
        "AND frequent+medium+rare": ([f, m, r], True),
        "AND 3 frequent": ([key_name(0), key_name(1), key_name(2)], True),
        "OR frequent+medium+rare": ([f, m, r], False),
        "OR 3 medium": ([key_name(300), key_name(301), key_name(302)], False),
    }
    out: dict[str, Any] = {
        "prompts": n,
        "components_per_prompt": round(mean_per, 1),
        "rows": info["rows"],
        "build_s": round(built, 1),
        "index_rebuild_s": round(rebuild, 2),
        "index_load_s": round(load, 2),
        "db_bytes": path.stat().st_size,
        "queries": {},
    }
    for name, (keys, all_) in queries.items():
        ours, listed, theirs = [], [], []
        for _ in range(60):
            t = time.perf_counter()
            ids = db.find_prompt_ids(keys, all_)
            ours.append(time.perf_counter() - t)
        for _ in range(15):
            t = time.perf_counter()
            got = db.find_prompts_with_components(keys, all_)
            listed.append(time.perf_counter() - t)
        for _ in range(7):
            t = time.perf_counter()
            sql = (SEED_ALL if all_ else SEED_ANY).format(m=",".join("?" * 3))
            want = [row[0] for row in seed.execute(sql, [*keys, 3] if all_ else keys)]
            theirs.append(time.perf_counter() - t)
        assert sorted(want) == got == ids.tolist(), name
        o50, o99 = percentiles(ours)
        l50, l99 = percentiles(listed)
        s50, s99 = percentiles(theirs)
        out["queries"][name] = {
            "results": len(got),
            "attnfast_p50_ms": round(o50, 3),
            "attnfast_p99_ms": round(o99, 3),
            "attnfast_list_p50_ms": round(l50, 3),
            "attnfast_list_p99_ms": round(l99, 3),
            "seed_sql_p50_ms": round(s50, 1),
            "seed_sql_p99_ms": round(s99, 1),
            "speedup_p50": round(s50 / o50, 1),
            "speedup_list_p50": round(s50 / l50, 1),
        }
        print(name, out["queries"][name], flush=True)
    db.close()
    seed.close()
    return out


def random_graph(n_edges: int, seed: int = 0) -> AttributionGraph:
    """The worst case: edges between random nodes of 13 layers x 64 positions x 768 channels."""
    rng = np.random.default_rng(seed)
    parts = (
        "attn.q_proj",
        "attn.k_proj",
        "attn.v_proj",
        "attn.o_proj",
        "mlp.c_fc",
        "mlp.down_proj",
    )
    layers = ["wte"] + [f"h.{b}.{p}" for b in range(2) for p in parts] + ["output"]
    n_nodes = max(64, n_edges // 20)
    keyed = np.unique(
        np.stack(
            [
                rng.integers(0, len(layers), n_nodes),
                rng.integers(0, 64, n_nodes),
                rng.integers(0, 768, n_nodes),
            ],
            1,
        ),
        axis=0,
    )
    m = len(keyed)
    pairs = np.unique(rng.integers(0, m, (int(n_edges * 1.1), 2)), axis=0)[:n_edges]
    val = np.round(rng.standard_cauchy(len(pairs)).astype(np.float32) * 0.01, 6)
    return AttributionGraph.from_columns(
        layers, keyed[:, 0], keyed[:, 1], keyed[:, 2], pairs[:, 0], pairs[:, 1], val
    )


def generated_graph() -> AttributionGraph:
    """A real graph: the built-in model on 32 tokens of its corpus, at least 1M edges."""
    from attnfast.attributions.compute import Attributor
    from attnfast.models.loading import load_model

    model, tok, _ = load_model("builtin")
    text = "Secondary factors include A and B. By the way, it's a nice day today."
    attributor = Attributor(model, ci_threshold=1.0, attr_threshold=0.015)
    return attributor.run(tok.encode(text)[:32]).graph


def top(g: AttributionGraph, k: int) -> AttributionGraph:
    """The k strongest edges of a graph and the nodes they join (a pruned graph)."""
    src, tgt, val = g.edge_columns(k)
    used, inverse = np.unique(np.concatenate([src, tgt]), return_inverse=True)
    layer, position, component = (c[used] for c in g.node_columns())
    return AttributionGraph.from_columns(
        g.layers, layer, position, component, inverse[: len(src)], inverse[len(src) :], val
    )


def codec_row(tmp: Path, g: AttributionGraph) -> dict[str, Any]:
    from attnfast.attributions.circuit_tracer import export_graph

    n = g.n_edges
    half = AttributionGraph.from_columns(
        g.layers, *g.node_columns(), *g.edge_columns(), values="float16"
    )
    seed_blob = gzip.compress(json.dumps(g.to_seed_pairs()).encode(), compresslevel=6)
    with LocalAttrDB(tmp / f"codec{n}-{len(g.blob)}.db") as db:
        pid = db.add_prompt([f"t{i}" for i in range(64)], {"wte:0": (1.0, [0])}, graph=g)
        ct_json = json.dumps(export_graph(db, pid)).encode()
    reps = 5 if n < 100_000 else 3
    ours = best_time(lambda: AttributionGraph.from_blob(g.blob).edge_columns(), reps)
    ours_half = best_time(lambda: AttributionGraph.from_blob(half.blob).edge_columns(), reps)
    top1000 = best_time(lambda: AttributionGraph.from_blob(g.blob).edge_columns(1000), reps)
    seed_t = best_time(lambda: json.loads(gzip.decompress(seed_blob)), reps)
    ct_t = best_time(lambda: json.loads(ct_json), reps)
    enc = best_time(
        lambda: AttributionGraph.from_columns(g.layers, *g.node_columns(), *g.edge_columns()), reps
    )
    return {
        "edges": n,
        "bytes_attnfast_f32": len(g.blob),
        "bytes_attnfast_f16": len(half.blob),
        "bytes_seed_gzip_json": len(seed_blob),
        "bytes_circuit_tracer_json": len(ct_json),
        "smaller_than_seed_f32": round(len(seed_blob) / len(g.blob), 2),
        "smaller_than_seed_f16": round(len(seed_blob) / len(half.blob), 2),
        "smaller_than_circuit_tracer_f32": round(len(ct_json) / len(g.blob), 1),
        "decode_attnfast_f32_ms": round(ours * 1e3, 2),
        "decode_attnfast_f16_ms": round(ours_half * 1e3, 2),
        "top1000_attnfast_ms": round(top1000 * 1e3, 3),
        "decode_seed_gzip_json_ms": round(seed_t * 1e3, 1),
        "decode_circuit_tracer_json_ms": round(ct_t * 1e3, 1),
        "decode_faster_than_seed": round(seed_t / ours, 1),
        "decode_faster_than_circuit_tracer": round(ct_t / ours, 1),
        "encode_attnfast_ms": round(enc * 1e3, 1),
    }


def bench_codec(tmp: Path) -> dict[str, Any]:
    real = generated_graph()
    assert real.n_edges >= 1_000_000, real.n_edges
    out: dict[str, Any] = {}
    for name, g in (
        ("generated 10k", top(real, 10_000)),
        ("generated 1M", top(real, 1_000_000)),
        ("random 10k", random_graph(10_000)),
        ("random 1M", random_graph(1_000_000)),
    ):
        out[name] = codec_row(tmp, g)
        print(name, out[name], flush=True)
    return out


def bench_generate() -> dict[str, Any]:
    import torch
    import transformers

    from attnfast.attributions.compute import Attributor
    from attnfast.models.loading import load_model

    torch.set_num_threads(2)
    model, tok, _ = load_model("builtin")
    lines = [
        line
        for line in Path("python/attnfast/models/data/corpus.txt").read_text().splitlines()
        if line.strip()
    ]
    prompts = [tok.encode(line)[:32] for line in lines[:24]]
    out: dict[str, Any] = {}
    for name, kw, graph, n in (
        ("builtin on-demand (index only), 32 tokens", {}, False, 24),
        (
            "builtin graphs, 32 tokens, ci 1.0, attr 0.05",
            {"ci_threshold": 1.0, "attr_threshold": 0.05},
            True,
            3,
        ),
    ):
        a = Attributor(model, **kw)
        t = time.perf_counter()
        edges = 0
        for p in prompts[:n]:
            r = a.run(p, graph=graph)
            edges += r.graph.n_edges if r.graph else 0
        dt = time.perf_counter() - t
        out[name] = {"prompts_per_s": round(n / dt, 2), "edges_per_prompt": edges // n}
        print(name, out[name], flush=True)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    a = Attributor(gpt2)
    ids = [list(np.random.default_rng(i).integers(0, 50257, 64)) for i in range(8)]
    t = time.perf_counter()
    for p in ids:
        a.run([int(x) for x in p], graph=False)
    dt = time.perf_counter() - t
    out["gpt2-small on-demand (index only), 64 tokens"] = {"prompts_per_s": round(len(ids) / dt, 2)}
    a = Attributor(gpt2, ci_threshold=1.5, attr_threshold=0.01, batch_size=64)
    t = time.perf_counter()
    r = a.run([int(x) for x in ids[0][:4]], graph=True)
    dt = time.perf_counter() - t
    out["gpt2-small graph, 4 tokens, ci 1.5, attr 0.01"] = {
        "prompts_per_s": round(1 / dt, 3),
        "edges_per_prompt": r.graph.n_edges if r.graph else 0,
    }
    print(out, flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--only", default="search,codec,generate")
    p.add_argument("--prompts", type=int, default=1_000_000)
    args = p.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=Path.cwd() / "target") as tmp:
        if "codec" in args.only:
            results["codec"] = bench_codec(Path(tmp))
        if "generate" in args.only:
            results["generate"] = bench_generate()
        if "search" in args.only:
            results["search"] = bench_search(Path(tmp), args.prompts)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
