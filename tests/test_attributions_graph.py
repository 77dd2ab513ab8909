"""The edge codec from Python: round trips, and the seed's serving order (filter, top-k,
normalise by target) against a numpy reference."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attnfast import AttributionGraph
from attnfast.exceptions import DecodeError, GraphError, InvalidInputError


def random_graph(
    rng: np.random.Generator, n_edges: int
) -> tuple[list[tuple[str, str, float]], AttributionGraph]:
    layers = ["wte", "h.0.attn.q_proj", "h.0.mlp.c_fc", "output"]
    pairs: set[tuple[str, str]] = set()
    triples = []
    while len(triples) < n_edges:
        a, b = sorted(rng.choice(len(layers), size=2, replace=False).tolist())
        s = f"{layers[a]}:{rng.integers(0, 8)}:{rng.integers(0, 30)}"
        t = f"{layers[b]}:{rng.integers(0, 8)}:{rng.integers(0, 30)}"
        if (s, t) not in pairs:
            pairs.add((s, t))
            triples.append((s, t, float(np.float32(rng.normal()))))
    return triples, AttributionGraph.from_edges(triples)


def reference(triples, top_k, normalize, keep=None):
    """The seed's rule in plain Python."""
    edges = [e for e in triples if keep is None or (keep(e[0]) and keep(e[1]))]
    edges.sort(key=lambda e: -abs(e[2]))
    edges = edges[:top_k] if top_k is not None else edges
    if normalize:
        sums: dict[str, float] = {}
        for _, t, v in edges:
            sums[t] = sums.get(t, 0.0) + abs(v)
        edges = [(s, t, v / sums[t] if sums[t] else v) for s, t, v in edges]
    return edges


@pytest.mark.parametrize("n_edges", [0, 1, 50, 20_000])
def test_serving_matches_the_reference(n_edges: int) -> None:
    rng = np.random.default_rng(n_edges)
    triples, g = random_graph(rng, n_edges)
    assert g.n_edges == n_edges
    mean = {
        k: float(rng.random())
        for k in {
            n.rsplit(":", 1)[0].rsplit(":", 1)[0] + ":" + n.rsplit(":", 1)[1]
            for e in triples
            for n in e[:2]
        }
    }
    for top_k in (None, 0, 5, 9000):
        for normalize in (False, True):
            got = g.edges(top_k, normalize=normalize)
            want = reference(triples, top_k, normalize)
            assert [(e["src"], e["tgt"]) for e in got] == [(s, t) for s, t, _ in want] or sorted(
                abs(e["val"]) for e in got
            ) == pytest.approx(sorted(abs(v) for *_, v in want))
            assert sorted(e["val"] for e in got) == pytest.approx(
                sorted(v for *_, v in want), rel=1e-5
            )

    def key(node: str) -> str:
        layer, _, comp = node.rsplit(":", 2)
        return f"{layer}:{comp}"

    # 4000 needs more than the first chunk once the filter drops about half of it.
    for k in (100, 4000, None):
        got = g.edges(k, max_mean_ci=0.5, mean_ci=mean, normalize=True)
        want = reference(triples, k, True, keep=lambda n: mean.get(key(n), 0.0) <= 0.5)
        assert len(got) == len(want)
        assert sorted(e["val"] for e in got) == pytest.approx(sorted(v for *_, v in want), rel=1e-5)


def test_edges_of_a_node_and_thresholds() -> None:
    triples, g = random_graph(np.random.default_rng(7), 3000)
    node = triples[0][1]
    want = sorted(v for s, t, v in triples if t == node)
    assert sorted(e["val"] for e in g.edges_into(node)) == pytest.approx(want)
    src = triples[0][0]
    assert sorted(e["val"] for e in g.edges_out_of(src)) == pytest.approx(
        sorted(v for s, _, v in triples if s == src)
    )
    assert g.edges_into("wte:99:99") == []
    assert len(g.edge_columns(min_abs=1.0)[0]) == sum(abs(v) >= 1.0 for *_, v in triples)
    with pytest.raises(InvalidInputError, match="malformed node"):
        g.edges_into("nonsense")
    with pytest.raises(InvalidInputError, match="top_k"):
        g.edges(-1)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 5),
            st.integers(0, 40),
            st.integers(0, 5),
            st.integers(0, 40),
            st.floats(-1e3, 1e3, width=32, allow_nan=False),
        ),
        max_size=200,
        unique_by=lambda e: (e[0], e[1], e[2], e[3]),
    )
)
def test_round_trip_through_blob_and_seed_pairs(edges: list) -> None:
    triples = [
        (f"h.0.attn.k_proj:{a}:{b}", f"h.0.attn.o_proj:{c}:{d}", v) for a, b, c, d, v in edges
    ]
    g = AttributionGraph.from_edges(triples)
    back = AttributionGraph.from_blob(g.blob)
    assert sorted((e["src"], e["tgt"], e["val"]) for e in back.edges()) == sorted(triples)
    seed = AttributionGraph.from_seed_pairs(gzip.compress(json.dumps(g.to_seed_pairs()).encode()))
    # The seed rounds values to 6 places.
    assert sorted((e["src"], e["tgt"]) for e in seed.edges()) == sorted(
        (s, t) for s, t, _ in triples
    )
    for e, w in zip(
        sorted(seed.edges(), key=lambda e: (e["src"], e["tgt"])), sorted(triples), strict=True
    ):
        assert e["val"] == pytest.approx(w[2], abs=1e-6)


def test_float16_is_smaller_and_close() -> None:
    triples, g = random_graph(np.random.default_rng(8), 20_000)
    h = AttributionGraph.from_edges(triples, values="float16")
    assert h.values == "float16"
    assert len(h.blob) < len(g.blob)
    got = sorted(e["val"] for e in h.edges())
    assert got == pytest.approx(sorted(v for *_, v in triples), rel=1e-3, abs=1e-4)


def test_bad_graphs_and_blobs_are_refused() -> None:
    with pytest.raises(GraphError, match="appears twice"):
        AttributionGraph.from_edges([("a:0:0", "b:0:0", 1.0), ("a:0:0", "b:0:0", 2.0)])
    with pytest.raises(GraphError, match="has the value inf"):
        AttributionGraph.from_edges([("a:0:0", "b:0:0", float("inf"))])
    with pytest.raises(GraphError, match="wrong magic"):
        AttributionGraph.from_blob(b"x" * 100)
    with pytest.raises(GraphError, match="not valid gzip"):
        AttributionGraph.from_seed_pairs(b"\x1f\x8b garbage")
    with pytest.raises(DecodeError, match="not the seed's JSON"):
        AttributionGraph.from_seed_pairs(b'{"not": "a list"}')
