"""circuit-tracer graphs imported and exported (validated by circuit-tracer's own model), and
the ``attnfast attributions`` commands, their output and their one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from circuit_tracer.frontend.graph_models import Metadata, Model, Node, QParams
from tests.attribution_data import random_prompts, seed_all, write_seed_db

from attnfast import AttributionGraph, LocalAttrDB
from attnfast.attributions.circuit_tracer import cantor, export_graph, import_graph, uncantor
from attnfast.exceptions import DecodeError


def ct_graph(n_features: int = 30) -> Model:
    nodes = [Node.token_node(p, 100 + p) for p in range(3)]
    nodes += [
        Node.feature_node(p % 4, p % 3, 1000 + p, activation=0.5 + p, influence=0.1)
        for p in range(n_features)
    ]
    nodes += [Node.error_node(1, 2), Node.logit_node(2, 42, "x", 4, True, 0.7)]
    links = []
    for i, n in enumerate(nodes[3:-1]):
        links.append(
            {"source": nodes[i % 3].node_id, "target": n.node_id, "weight": 0.01 * (i + 1)}
        )
        links.append({"source": n.node_id, "target": nodes[-1].node_id, "weight": -0.02 * (i + 1)})
    meta = Metadata(
        slug="demo",
        scan="gemma-2-2b",
        transcoder_list=[],
        prompt_tokens=["a", "b", "c"],
        prompt="abc",
    )
    q = QParams(pinnedIds=[], supernodes=[], linkType="both", clickedId="", sg_pos="")
    return Model(metadata=meta, qParams=q, nodes=nodes, links=links)


def test_cantor_pairing_inverts() -> None:
    for x in range(0, 40, 3):
        for y in (0, 1, 77, 16383, 10**6):
            assert uncantor(cantor(x, y)) == (x, y)


def test_circuit_tracer_graphs_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "g.json"
    model = ct_graph()
    src.write_text(model.model_dump_json())
    with LocalAttrDB(tmp_path / "a.db") as db:
        pid = import_graph(db, src)
        rows = db.component_rows(pid)
        assert rows["wte:0"][1] == [0, 1, 2]
        assert rows["output:42"] == (pytest.approx(0.7), [2])
        assert "error.1:0" in rows
        assert rows["3:1003"][0] == pytest.approx(3.5)
        # Search works across imported graphs.
        assert db.find_prompts_with_components(["3:1003", "output:42"]) == [pid]
        out = export_graph(db, pid)
    Model.model_validate(out)
    want = json.loads(model.model_dump_json())
    assert out["metadata"]["schema_version"] == 1
    assert out["metadata"]["slug"] == "demo"
    assert sorted(n["node_id"] for n in out["nodes"]) == sorted(n["node_id"] for n in want["nodes"])
    triple = lambda ls: sorted((x["source"], x["target"], round(x["weight"], 6)) for x in ls)  # noqa: E731
    assert triple(out["links"]) == triple(want["links"])
    assert all(isinstance(n["layer"], str) for n in out["nodes"])


def test_generated_graphs_export_pruned_under_a_limit(tmp_path: Path) -> None:
    g = AttributionGraph.from_edges(
        [
            (f"h.0.mlp.c_fc:{i % 9}:{i}", f"h.1.attn.q_proj:{i % 9}:{i % 50}", (i % 97) / 97 - 0.5)
            for i in range(4000)
        ]
        + [("h.1.attn.q_proj:3:3", "output:3:42", 2.0)]
    )
    with LocalAttrDB(tmp_path / "a.db") as db:
        pid = db.add_prompt(
            [f"t{i}" for i in range(9)], {"wte:0": (1.0, [0])}, graph=g, output_probs={"3:42": 0.5}
        )
        full = export_graph(db, pid)
        small = export_graph(db, pid, limit_bytes=60_000)
        top = export_graph(db, pid, top_k=10)
    for out in (full, small, top):
        Model.model_validate(out)
    assert len(json.dumps(small)) <= 60_000 < len(json.dumps(full))
    assert len(top["links"]) == 10
    assert top["links"][0]["weight"] == 2.0
    # The strongest links are the ones kept.
    kept = min(abs(x["weight"]) for x in small["links"])
    assert all(abs(x["weight"]) <= kept + 1e-6 for x in full["links"] if x not in small["links"])
    logit = next(n for n in full["nodes"] if n["feature_type"] == "logit")
    assert logit["token_prob"] == 0.5
    assert logit["feature"] == 42


def test_bad_graph_files_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    cases = [
        ("{", "invalid JSON"),
        ('{"nodes": []}', "needs 'metadata'"),
        (
            '{"metadata": {}, "nodes": [{"node_id": "x", "feature_type": "cross layer '
            'transcoder", "layer": "3", "feature": 5, "ctx_idx": 0}], "links": []}',
            "not the Cantor pairing",
        ),
        (
            '{"metadata": {}, "nodes": [], "links": [{"source": "a", "target": "b", "weight": 1}]}',
            "names a node",
        ),
    ]
    with LocalAttrDB(tmp_path / "a.db") as db:
        for text, message in cases:
            bad.write_text(text)
            with pytest.raises(DecodeError, match=message):
                import_graph(db, bad)
        assert db.get_prompt_count() == 0


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name("attnfast")), "attributions", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_search_stats_show_merge_import_export(tmp_path: Path) -> None:
    seed = tmp_path / "seed.db"
    write_seed_db(seed, random_prompts(40, seed=9), form="pairs")
    db = tmp_path / "mine.db"
    r = cli("merge", "--db", str(db), str(seed))
    assert r.returncode == 0
    assert "40 prompts added" in r.stdout
    keys = ["h.0.mlp.c_fc:0", "h.1.mlp.c_fc:1"]
    r = cli(
        "search",
        "--db",
        str(db),
        "--components",
        ",".join(keys),
        "--format",
        "json",
        "--limit",
        "3",
    )
    out = json.loads(r.stdout)
    assert out["count"] == len(seed_all(seed, keys))  # ids differ only in numbering: same count
    assert len(out["results"]) == min(3, out["count"])
    assert out["unknown"] == []
    r = cli("search", "--db", str(db), "--components", "h.0.mlp.c_fc:0,nope:3")
    assert r.returncode == 0
    assert "nope:3 is active on no prompt" in r.stderr
    assert "0 prompts" in r.stdout
    r = cli("stats", "--db", str(db), "--component", "h.0.mlp.c_fc:0", "--format", "json")
    assert json.loads(r.stdout)["prompt_count"] == len(seed_all(seed, ["h.0.mlp.c_fc:0"]))
    r = cli("show", "--db", str(db), "--prompt", "1", "--top-k", "3", "--format", "json")
    assert len(json.loads(r.stdout)["edges"]) == 3
    ct = tmp_path / "ct.json"
    ct.write_text(ct_graph().model_dump_json())
    r = cli("import-graphs", "--db", str(db), str(ct))
    assert r.returncode == 0
    assert "-> prompt 41" in r.stdout
    out_file = tmp_path / "out.json"
    r = cli("export", "--db", str(db), "--prompt", "41", "--out", str(out_file), "--top-k", "5")
    assert r.returncode == 0
    Model.model_validate_json(out_file.read_text())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search", "--db", "{db}", "--components", "bad key"], "malformed component key"),
        (["search", "--db", "{missing}", "--components", "wte:0"], "no attributions database"),
        (["show", "--db", "{db}", "--prompt", "99"], "no prompt 99"),
        (["stats", "--db", "{db}", "--component", "x"], "malformed component key"),
        (
            ["export", "--db", "{db}", "--prompt", "1", "--out", "{out}", "--format", "dot"],
            "--format must be",
        ),
        (["import-graphs", "--db", "{new}", "{bad}"], "not a circuit-tracer graph"),
        (["merge", "--db", "{new}", "{missing}"], "does not exist"),
        (["generate", "--output", "{new}", "--n-ctx", "0", "--n-prompts", "1"], "n_ctx must be"),
    ],
)
def test_cli_errors_are_one_line_and_leave_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    db = tmp_path / "db.db"
    with LocalAttrDB(db) as store:
        store.add_prompt(["a"], {"wte:0": (1.0, [0])})
    (tmp_path / "bad.json").write_text("{}")
    paths = {
        "db": db,
        "missing": tmp_path / "missing.db",
        "out": tmp_path / "out.json",
        "new": tmp_path / "new.db",
        "bad": tmp_path / "bad.json",
    }
    before = sorted(p.name for p in tmp_path.iterdir())
    r = cli(*[a.format(**paths) for a in args])
    assert r.returncode == 2
    assert message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
