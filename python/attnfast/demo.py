"""``attnfast demo``: the whole pipeline as far as it exists, on built-in inputs.

Today: fingerprints of generated attention patterns, their zones, the same from top-k entries,
a pack/unpack round trip, and the fingerprint store (a temporary database, read back with the
seed's SQL), and capture: the built-in model generates while its attention is fingerprinted
into a store and written in full to a capture file, which the analyses then read; then
discovery on the captured plus synthetic fingerprints, and an online classification.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

import attnfast
from attnfast.synthetic import PATTERNS, attention_pattern


def _topk(attn: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    positions = np.argpartition(attn, -k, axis=-1)[..., -k:]
    return positions.astype(np.int64), np.take_along_axis(attn, positions, axis=-1)


def run(
    console: Console, *, steps: int = 16, layers: int = 4, heads: int = 4, context: int = 1024
) -> dict[str, str]:
    """Runs the demo and returns each pattern's majority zone."""
    info = attnfast.build_info()
    console.print(
        f"[bold]attnfast {info['version']}[/bold] demo: core path {info['simd']}, "
        f"{info['threads']} threads"
    )
    console.print(
        f"Fingerprints of {len(PATTERNS)} generated attention patterns, each {steps} steps x "
        f"{layers} layers x {heads} heads over {context} keys.\n"
    )
    table = Table(title="Attention patterns, fingerprinted (means over steps)")
    for col in ("pattern", "local", "mid", "long", "entropy", "zone", "conf", "top-8 zone"):
        table.add_column(
            col, justify="left" if col in ("pattern", "zone", "top-8 zone") else "right"
        )
    majority: dict[str, str] = {}
    all_fps = []
    total_bytes = 0
    total_seconds = 0.0
    for name in PATTERNS:
        attn = attention_pattern(name, steps=steps, layers=layers, heads=heads, context=context)
        start = time.perf_counter()
        fps = attnfast.compute_fingerprints(attn)
        total_seconds += time.perf_counter() - start
        total_bytes += attn.nbytes
        zones, conf = attnfast.zone_of(fps)
        positions, scores = _topk(attn, 8)
        queries = context - steps + np.arange(steps)
        sparse_zones, _ = attnfast.zone_of(
            attnfast.fingerprint_from_topk(positions, scores, queries, context)
        )
        zone = Counter(zones.tolist()).most_common(1)[0][0]
        majority[name] = zone
        mean = fps.mean(axis=0)
        table.add_row(
            name,
            f"{mean[0]:.3f}",
            f"{mean[1]:.3f}",
            f"{mean[2]:.3f}",
            f"{mean[3]:.2f}",
            zone,
            f"{conf.mean():.2f}",
            Counter(sparse_zones.tolist()).most_common(1)[0][0],
        )
        all_fps.append(fps)
    console.print(table)
    fps = np.concatenate(all_fps)
    blob = attnfast.pack_fingerprints(fps)
    back = attnfast.unpack_fingerprints(blob)
    exact = bool(np.array_equal(back, fps))
    console.print(
        f"Computed {len(fps)} fingerprints from {total_bytes / 1e6:.1f} MB of attention "
        f"in {total_seconds * 1e3:.1f} ms."
    )
    console.print(
        f"Packed them into {len(blob)} bytes ({attnfast.FINGERPRINT_BYTES} a row); "
        f"round trip exact: {exact}."
    )
    if not exact:
        raise attnfast.AttnfastError("pack/unpack round trip changed the fingerprints")
    _store(console, all_fps)
    _capture(console)
    return majority


def _capture(console: Console) -> None:
    """The built-in model generates under capture: fingerprints into a store, full attention
    into a capture file, then the capture analyses."""
    try:
        import torch

        from attnfast.analysis import replay_eviction, sentence_attention
        from attnfast.models import ByteTokenizer, load_builtin
    except ImportError:
        console.print("(capture skipped: install the 'capture' extra for torch)")
        return
    console.print("\n[bold]Capture[/bold]: the built-in model (trained at first use, then cached)")
    model = load_builtin()
    tok = ByteTokenizer()
    prompt = (
        "Please analyze the following data. First, consider the primary factors: X, Y, and Z. "
        "By the way, it's a nice day today. Finally, summarize your findings."
    )
    ids = torch.tensor([tok.encode(prompt)])
    with tempfile.TemporaryDirectory() as tmp:
        db, attn = Path(tmp) / "capture.db", Path(tmp) / "capture.attn"
        with attnfast.FingerprintStore(db) as store:
            with attnfast.capture(model, "topk", sink=store, request_id="demo", topk=8):
                out = model.generate(ids, 64)
            zones = store.sql(
                "SELECT manifold_zone, count(*) AS n FROM fingerprints GROUP BY manifold_zone "
                "ORDER BY n DESC"
            )
            rows = store.count()
        console.print(f"Generated {tok.decode(out[0, ids.shape[1] :])!r}")
        console.print(
            f"{rows} steps fingerprinted into the store; zones: "
            + ", ".join(f"{z['manifold_zone']} {z['n']}" for z in zones)
        )
        with attnfast.capture(model, "full", sink=str(attn)):
            model.generate(ids, 64)
        f = attnfast.CaptureFile(attn)
        console.print(
            f"Full capture: {len(f)} steps in {attn.stat().st_size / 1e3:.0f} kB "
            f"(float16 + zstd, chunked)."
        )
        s = sentence_attention(f)
        table = Table(title="Attention share per prompt sentence (first vs last quarter)")
        for col in ("sentence", "early", "late", "trend"):
            table.add_column(col, justify="left" if col == "sentence" else "right")
        for t in s.trend():
            trend = "fades" if float(t["ratio"]) < 0.8 else "stays bright"
            table.add_row(str(t["sentence"])[:48], f"{t['early']:.1%}", f"{t['late']:.1%}", trend)
        console.print(table)
        kept = [replay_eviction(f, p, 48).summary() for p in ("streaming", "h2o", "snapkv", "tova")]
        console.print(
            "KV-cache eviction at a 48-token budget, mean attention kept: "
            + ", ".join(f"{k['policy']} {k['mean_kept']:.1%}" for k in kept)
        )
        if rows != 64 or len(f) != 64:
            raise attnfast.AttnfastError("capture lost steps")
        _discover(console, db, Path(tmp) / "runs")
        _attributions(console, Path(tmp) / "attributions.db")


def _attributions(console: Console, db: Path) -> None:
    """A small attributions database from the built-in model, and a search on it."""
    from attnfast.attributions import LocalAttrDB
    from attnfast.attributions.generate import generate

    console.print(
        "\n[bold]Attributions[/bold]: 8 prompts of the built-in corpus, 12 tokens each, "
        "gradient x activation between components"
    )
    r = generate("builtin", db, n_prompts=8, n_ctx=12, ci_threshold=2.0, attr_threshold=0.05)
    with LocalAttrDB(db, create=False) as store:
        graph = store.get_graph(1)
        assert graph is not None
        size = sum(len(g.blob) for i in range(1, r.stored + 1) if (g := store.get_graph(i)))
        # Two components active on about half of the prompts each: a search worth showing.
        counts = {
            k: len(store.find_prompts_with_components([k])) for k in store.get_unique_components()
        }
        keys = sorted(counts, key=lambda k: abs(counts[k] - r.stored / 2))[:2]
        found = store.find_prompts_with_components(keys)
        top = graph.edges(top_k=3, normalize=True)
    console.print(
        f"{r.stored} prompts in {r.seconds:.1f}s; prompt 1's graph: {graph.n_edges:,} edges in "
        f"{len(graph.blob) / 1e3:.0f} kB (all graphs {size / 1e6:.1f} MB)"
    )
    console.print(f"Prompts where {keys[0]} and {keys[1]} fire together: {found}")
    for e in top:
        console.print(f"  {e['src']} -> {e['tgt']}: {e['val']:+.3f} (normalised)")


def _discover(console: Console, db: Path, runs: Path) -> None:
    """Discovery on the captured fingerprints plus planted synthetic ones, then the online
    classifier on a captured step."""
    import importlib.util

    if importlib.util.find_spec("umap") is None or importlib.util.find_spec("hdbscan") is None:
        console.print("(discovery skipped: install the 'discovery' extra)")
        return
    from attnfast.discovery import SidecarClassifier, run_discovery
    from attnfast.synthetic import planted

    console.print(
        "\n[bold]Discovery[/bold]: the captured steps plus 4,000 synthetic fingerprints around "
        "8 centres (the first run compiles umap-learn's numba code: about a minute)"
    )
    fps, _ = planted(4000, clusters=8, seed=4)
    with attnfast.FingerprintStore(db) as store:
        store.append(
            [f"synthetic-{i // 100}" for i in range(len(fps))],
            np.arange(len(fps)) % 100,
            fps,
            model_id="synthetic",
        )
    result = run_discovery(db, runs, progress=console.is_terminal)
    import pyarrow.parquet as pq

    clusters = pq.read_table(result.run_dir / "clusters.parquet").to_pylist()
    table = Table(title=f"Attention programs of run {result.run_id}")
    for col in ("cluster", "size", "zone", "label"):
        table.add_column(col, justify="left" if col in ("zone", "label") else "right")
    for c in sorted(clusters, key=lambda c: -c["size"]):
        table.add_row(str(c["cluster_id"]), f"{c['size']:,}", c["dominant_zone"], c["label"])
    console.print(table)
    console.print(
        f"{result.fingerprint_count:,} fingerprints, {result.cluster_count} clusters, "
        f"{100 * result.clustered_share:.0f}% clustered; stages: "
        + ", ".join(f"{k} {v:.1f}s" for k, v in result.stages.items())
    )
    with attnfast.FingerprintStore(db) as store:
        captured = store.read(request_id="demo", format="numpy")["fingerprint"]
    found = SidecarClassifier(runs).classify(captured[-1])
    console.print(f"The last captured step, classified online: {found['manifold']}")
    if result.cluster_count < 2:
        raise attnfast.AttnfastError("discovery found no clusters in planted data")


def _store(console: Console, per_pattern: list[np.ndarray]) -> None:
    """Each pattern as one request in a temporary database, then the seed's zone view."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        attnfast.FingerprintStore(Path(tmp) / "demo.db") as store,
    ):
        start = time.perf_counter()
        for name, fps in zip(PATTERNS, per_pattern, strict=True):
            store.append(f"demo-{name}", np.arange(1, len(fps) + 1), fps, model_id="synthetic")
        store.flush()
        seconds = time.perf_counter() - start
        zones = store.sql(
            "SELECT manifold_zone, sum(count) AS n FROM zone_distribution_hourly "
            "GROUP BY manifold_zone ORDER BY n DESC"
        )
        stats = store.stats()
        console.print(
            f"Stored them in a fingerprint database ({stats['rows']} rows, "
            f"{stats['requests']} requests) in {seconds * 1e3:.1f} ms; by zone: "
            + ", ".join(f"{z['manifold_zone']} {z['n']}" for z in zones)
            + "."
        )
        if stats["rows"] != sum(len(f) for f in per_pattern):
            raise attnfast.AttnfastError("the store lost rows")
