"""LocalAttrDB against the seed's SQL: searches, stats, summaries, merges, the seed's own
databases in both forms, the index kept and rebuilt, bad input, several writers at once."""

from __future__ import annotations

import json
import multiprocessing as mp
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from tests.attribution_data import (
    random_prompts,
    schema_dump,
    seed_all,
    seed_any,
    write_seed_db,
)

from attnfast import AttributionGraph, LocalAttrDB
from attnfast.exceptions import GraphError, InvalidInputError, MissingFileError, StoreError

KEYS = [f"h.{i % 3}.mlp.c_fc:{i}" for i in range(60)]


@pytest.fixture
def filled(tmp_path: Path) -> Path:
    path = tmp_path / "attr.db"
    with LocalAttrDB(path) as db:
        for tokens, active in random_prompts(300, seed=1):
            db.add_prompt(tokens, active)
    return path


def queries(rng: np.random.Generator, n: int = 40) -> list[list[str]]:
    out: list[list[str]] = [[], [KEYS[0]], [KEYS[0], KEYS[0]], ["h.0.mlp.c_fc:999"]]
    for _ in range(n):
        out.append([KEYS[i] for i in rng.choice(len(KEYS), size=rng.integers(1, 4), replace=False)])
    return out


def test_searches_answer_as_the_seeds_sql(filled: Path) -> None:
    rng = np.random.default_rng(2)
    with LocalAttrDB(filled) as db:
        for keys in queries(rng):
            assert db.find_prompts_with_components(keys) == seed_all(filled, keys), keys
            assert db.find_prompts_with_components(keys, require_all=False) == seed_any(
                filled, keys
            )
            if len(keys) > 1:
                want = sorted(set(seed_any(filled, keys[:1])) - set(seed_any(filled, keys[1:])))
                got = db.find_prompts_with_components(keys[:1], exclude=keys[1:])
                assert got == want


def test_same_position_needs_a_shared_position(tmp_path: Path) -> None:
    with LocalAttrDB(tmp_path / "a.db") as db:
        a = db.add_prompt(
            ["x", "y", "z"], {"wte:0": (1.0, [0, 1]), "h.0.attn.q_proj:1": (0.5, [1])}
        )
        db.add_prompt(["x", "y", "z"], {"wte:0": (1.0, [0]), "h.0.attn.q_proj:1": (0.5, [2])})
        keys = ["wte:0", "h.0.attn.q_proj:1"]
        assert len(db.find_prompts_with_components(keys)) == 2
        assert db.find_prompts_with_components(keys, same_position=True) == [a]
        with pytest.raises(InvalidInputError, match="same_position needs require_all"):
            db.find_prompts_with_components(keys, require_all=False, same_position=True)


def test_stats_summaries_and_components_match_sql(filled: Path) -> None:
    with LocalAttrDB(filled) as db, sqlite3.connect(filled) as c:
        for key in KEYS[:5] + KEYS[-3:]:
            s = db.get_component_stats(key)
            n, mean, top = c.execute(
                "SELECT count(DISTINCT prompt_id), avg(max_ci), max(max_ci) FROM "
                "component_activations WHERE component_key = ?",
                (key,),
            ).fetchone()
            if n == 0:
                assert s is None
                continue
            assert s is not None
            assert s.prompt_count == n
            assert s.mean_max_ci == pytest.approx(mean)
            assert s.max_max_ci == pytest.approx(top)
            assert s.prompt_ids == seed_any(filled, [key])
        want = [r[0] for r in c.execute("SELECT DISTINCT component_key FROM component_activations")]
        assert db.get_unique_components() == sorted(want)
        assert db.get_prompt_count() == 300
        page = db.get_all_prompt_summaries(limit=7, offset=290)
        assert [p["id"] for p in page] == list(range(291, 298))
        assert page[0]["preview"] == "t0t1t2t3t4t5"
        assert db.get_all_prompt_summaries(limit=0) == []


def test_max_ci_holds_the_real_maximum(tmp_path: Path) -> None:
    with LocalAttrDB(tmp_path / "a.db") as db:
        db.add_prompt(["a", "b"], {"wte:0": (0.75, [0, 1])})
    with sqlite3.connect(tmp_path / "a.db") as c:
        assert c.execute("SELECT max_ci, positions FROM component_activations").fetchone() == (
            0.75,
            "[0, 1]",
        )


def test_preview_is_the_first_ten_tokens(tmp_path: Path) -> None:
    with LocalAttrDB(tmp_path / "a.db") as db:
        db.add_prompt([f"{i} " for i in range(12)], {"wte:0": (1.0, [0])})
        db.add_prompt(["only"], {"wte:0": (1.0, [0])})
        a, b = db.get_all_prompt_summaries()
        assert a["preview"] == "0 1 2 3 4 5 6 7 8 9 ..."
        assert b["preview"] == "only"


@pytest.mark.parametrize("form", ["pairs", "token_ids"])
def test_seed_databases_are_read_in_place(tmp_path: Path, form: str) -> None:
    path = tmp_path / "seed.db"
    write_seed_db(path, random_prompts(120, seed=3), form=form)
    before = schema_dump(path)
    rng = np.random.default_rng(4)
    with LocalAttrDB(path) as db:
        assert db.form.value == ("seed-pairs" if form == "pairs" else "seed-token-ids")
        for keys in queries(rng, 15):
            assert db.find_prompts_with_components(keys) == seed_all(path, keys)
            assert db.find_prompts_with_components(keys, False) == seed_any(path, keys)
        record = db.get_prompt(5)
        assert record is not None
        if form == "pairs":
            assert record.graph is not None
            assert record.graph.n_edges > 0
            assert record.tokens == [f"t{j}" for j in range(6)]
            # The seed's pairs back in its own shape, the same edges.
            assert (
                AttributionGraph.from_seed_pairs(record.pairs_json or "").edges()
                == record.graph.edges()
            )
        else:
            assert record.graph is None
            assert record.token_ids == list(range(6))
            assert db.get_all_prompt_summaries(limit=1)[0]["tokens"] == [str(i) for i in range(6)]
        assert db.get_meta("n_blocks") == {"n_blocks": 2}
        with pytest.raises(StoreError, match="seed's code"):
            db.add_prompt(["a"], {"wte:0": (1.0, [0])})
    assert schema_dump(path) == before


def test_the_index_is_persisted_and_rebuilt_when_stale(tmp_path: Path) -> None:
    path = tmp_path / "seed.db"
    write_seed_db(path, random_prompts(50, seed=5), form="pairs")
    with LocalAttrDB(path) as db:
        assert db.index_info()["rebuilt"]
    with LocalAttrDB(path) as db:  # loaded from af_index this time
        assert not db.index_info()["rebuilt"]
        assert db.find_prompts_with_components([KEYS[0]]) == seed_any(path, [KEYS[0]])
    # The seed's code adds a prompt: read by rowid, no rebuild.
    with sqlite3.connect(path) as c:
        c.execute("INSERT INTO prompts (tokens, pairs) VALUES ('[\"x\"]', x'1f8b')")
        c.execute("INSERT INTO component_activations VALUES (51, 'h.9.mlp.c_fc:1', 0.0, '[0]')")
    with LocalAttrDB(path) as db:
        assert db.find_prompts_with_components(["h.9.mlp.c_fc:1"]) == [51]
        assert not db.index_info()["rebuilt"]
    # It deletes rows: the counts no longer add up, so the index is rebuilt.
    with sqlite3.connect(path) as c:
        c.execute("DELETE FROM component_activations WHERE component_key = ?", (KEYS[0],))
    with LocalAttrDB(path) as db:
        assert db.find_prompts_with_components([KEYS[0]]) == []
        assert db.index_info()["rebuilt"]
        # A damaged pairs blob names its prompt.
        with pytest.raises(GraphError, match="prompt 51"):
            db.get_prompt(51)


def test_plain_sql_changes_to_an_attnfast_database_are_seen(filled: Path) -> None:
    with LocalAttrDB(filled) as db:
        db.index_info()
    with LocalAttrDB(filled) as db:
        assert not db.index_info()["rebuilt"]
    with sqlite3.connect(filled) as c:  # the triggers count what plain SQL changes
        c.execute("UPDATE component_activations SET component_key = 'wte:7' WHERE rowid = 1")
        c.execute("INSERT INTO component_activations VALUES (3, 'wte:8', 1.0, '[0]')")
    with LocalAttrDB(filled) as db:
        assert db.index_info()["rebuilt"]
        assert db.find_prompts_with_components(["wte:7"]) == seed_any(filled, ["wte:7"])
        assert db.find_prompts_with_components(["wte:8"]) == [3]
        for key in KEYS[:10]:
            assert db.find_prompts_with_components([key]) == seed_any(filled, [key])
        assert db.find_prompt_ids([KEYS[0]]).dtype == np.uint32


def test_bad_input_is_refused_and_stores_nothing(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    with LocalAttrDB(path) as db:
        db.add_prompt(["a", "b"], {"wte:0": (1.0, [0])})
        before = schema_dump(path)
        bad = [
            ({"bad key": (1.0, [0])}, "malformed component key"),
            ({"wte:0": (float("nan"), [0])}, "finite number"),
            ({"wte:0": (1.0, [5])}, "token positions in 0..1"),
            ({"wte:0": (1.0, [])}, "at least one"),
            ({"wte:0": (1.0, [0, 0])}, "distinct"),
            ({"wte:0": 3}, "expected \\(max_ci, positions\\)"),
        ]
        for active, message in bad:
            with pytest.raises(InvalidInputError, match=message):
                db.add_prompt(["a", "b"], active)
        with pytest.raises(InvalidInputError, match="list of strings"):
            db.add_prompt("ab", {})  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="malformed component key"):
            db.find_prompts_with_components(["h.0:x"])
        with pytest.raises(InvalidInputError, match="not the string"):
            db.find_prompts_with_components("wte:0")
        with pytest.raises(InvalidInputError, match="prompt id"):
            db.get_prompt(0)
        assert db.get_prompt(99) is None
        with pytest.raises(InvalidInputError, match="JSON-serialisable"):
            db.set_meta("x", object())
    assert schema_dump(path) == before
    with pytest.raises(MissingFileError):
        LocalAttrDB(tmp_path / "none.db", create=False)
    assert not (tmp_path / "none.db").exists()
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(StoreError, match="not a readable SQLite database"):
        LocalAttrDB(tmp_path / "junk.db")


def test_a_damaged_graph_blob_names_the_prompt(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    g = AttributionGraph.from_edges([("wte:0:0", "h.0.attn.q_proj:0:1", 0.5)])
    with LocalAttrDB(path) as db:
        pid = db.add_prompt(["a"], {"wte:0": (1.0, [0])}, graph=g)
    with sqlite3.connect(path) as c:
        blob = bytearray(g.blob)
        blob[-3] ^= 0xFF
        c.execute("UPDATE af_graphs SET graph = ? WHERE prompt_id = ?", (bytes(blob), pid))
    with LocalAttrDB(path) as db:
        graph = db.get_graph(pid)  # the header and dictionary are whole; the chunk is not
        assert graph is not None
        with pytest.raises(GraphError, match=f"prompt {pid}: .*damaged.*checksum"):
            graph.edges()
        blob[9] = 7  # an unknown value type: refused on open
    with sqlite3.connect(path) as c:
        c.execute("UPDATE af_graphs SET graph = ? WHERE prompt_id = ?", (bytes(blob), pid))
    with LocalAttrDB(path) as db, pytest.raises(GraphError, match=f"prompt {pid}: .*value type"):
        db.get_prompt(pid)


def test_merge_remaps_ids_that_are_not_contiguous(tmp_path: Path) -> None:
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    g = AttributionGraph.from_edges([("wte:0:0", "h.0.attn.q_proj:0:1", 0.5)])
    with LocalAttrDB(a) as db:
        db.add_prompt(["a"], {"wte:0": (1.0, [0])})
    with LocalAttrDB(b) as db:
        for i in range(5):
            db.add_prompt(
                [f"b{i}"], {f"h.0.attn.q_proj:{i}": (0.1 * i, [0])}, graph=g if i == 4 else None
            )
    with sqlite3.connect(b) as c:  # gaps in b's ids, as deletions leave them
        c.execute("DELETE FROM component_activations WHERE prompt_id IN (1, 3)")
        c.execute("DELETE FROM prompts WHERE id IN (1, 3)")
    with LocalAttrDB(a) as db:
        r = db.merge_from(b)
        assert r.id_map == {2: 2, 4: 3, 5: 4}
        for old, new in r.id_map.items():
            record = db.get_prompt(new)
            assert record is not None
            assert record.tokens == [f"b{old - 1}"]
            assert db.component_rows(new) == {
                f"h.0.attn.q_proj:{old - 1}": (pytest.approx(0.1 * (old - 1)), [0])
            }
        assert db.find_prompts_with_components(["h.0.attn.q_proj:4"]) == [4]
        graph = db.get_graph(4)
        assert graph is not None
        assert graph.edges() == g.edges()
        with pytest.raises(InvalidInputError, match="into itself"):
            db.merge_from(a)
    seed = tmp_path / "seed.db"
    write_seed_db(seed, random_prompts(10, seed=6), form="pairs")
    with LocalAttrDB(a) as db:
        r = db.merge_from(seed)
        assert r.added == 10
        assert db.get_graph(r.id_map[3]) is not None


def _writer(path: str, start: int) -> None:
    with LocalAttrDB(path) as db:
        for i in range(start, start + 40):
            db.add_prompt([f"w{i}"], {f"h.0.attn.q_proj:{i % 7}": (1.0, [0]), "wte:0": (1.0, [0])})


def test_several_writer_processes_share_one_database(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    LocalAttrDB(path).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), 100 * k)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with LocalAttrDB(path) as db:
        assert db.get_prompt_count() == 120
        assert len(db.find_prompts_with_components(["wte:0"])) == 120
        assert db.find_prompts_with_components(["h.0.attn.q_proj:3"]) == seed_any(
            path, ["h.0.attn.q_proj:3"]
        )
        tokens = {json.dumps(db.get_prompt(i).tokens) for i in range(1, 121)}  # type: ignore[union-attr]
        assert len(tokens) == 120
