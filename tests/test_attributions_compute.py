"""Attributions of torch models against autograd computed independently (one target at a
time, with torch.func.jacrev over the source activation), generation resumable over worker
processes, and the Hugging Face architectures found."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from attnfast import LocalAttrDB  # noqa: E402
from attnfast.attributions.compute import Attributor, find_layers  # noqa: E402
from attnfast.attributions.generate import generate  # noqa: E402
from attnfast.models.causal_lm import CausalLMConfig, TinyCausalLM  # noqa: E402


def tiny() -> TinyCausalLM:
    torch.manual_seed(0)
    return TinyCausalLM(CausalLMConfig(d_model=16, heads=2, kv_heads=1, layers=2, d_ff=32)).eval()


def reference_edge(
    model, ids, source: str, s_in: int, c_in: int, target: str, s_out: int, c_out: int
) -> float:
    """d target[s_out, c_out] / d source[s_in, c_in] * source[s_in, c_in], by perturbing the
    source module's output through a hook (no batching, no shared graph)."""
    names = dict(model.named_modules())
    mod = {
        "h.0.attn.k_proj": "blocks.0.attn.k_proj",
        "h.0.attn.o_proj": "blocks.0.attn.out_proj",
        "h.0.attn.q_proj": "blocks.0.attn.q_proj",
        "h.1.attn.q_proj": "blocks.1.attn.q_proj",
        "h.0.mlp.c_fc": "blocks.0.ff.net.0",
        "h.0.mlp.down_proj": "blocks.0.ff.net.3",
        "h.1.mlp.c_fc": "blocks.1.ff.net.0",
    }
    delta = torch.zeros(1, len(ids), names[mod[source]].out_features, requires_grad=True)
    seen = {}

    def add(_m, _i, out):
        seen["act"] = out.detach()
        return out + delta

    def grab(_m, _i, out):
        seen["target"] = out
        return out

    h1 = names[mod[source]].register_forward_hook(add)
    h2 = None if target == "output" else names[mod[target]].register_forward_hook(grab)
    try:
        logits = model(torch.tensor([ids])).logits
    finally:
        h1.remove()
        if h2:
            h2.remove()
    y = logits[0, s_out, c_out] if target == "output" else seen["target"][0, s_out, c_out]
    (g,) = torch.autograd.grad(y, delta)
    return float(g[0, s_in, c_in] * seen["act"][0, s_in, c_in])


def test_edges_equal_autograd_one_target_at_a_time() -> None:
    model = tiny()
    ids = [256, 72, 105, 33, 10]
    a = Attributor(model, ci_threshold=0.0, attr_threshold=0.0, batch_size=37)
    r = a.run(ids)
    assert r.graph is not None
    edges = {(e["src"], e["tgt"]): e["val"] for e in r.graph.edges()}
    checks = [
        ("h.0.attn.k_proj", 1, 3, "h.0.attn.o_proj", 3, 5),  # across positions
        ("h.0.attn.q_proj", 2, 7, "h.0.attn.o_proj", 2, 1),
        ("h.0.mlp.c_fc", 4, 9, "h.0.mlp.down_proj", 4, 2),
        ("h.0.mlp.down_proj", 3, 0, "h.1.attn.q_proj", 3, 4),  # through the residual stream
        ("h.0.mlp.down_proj", 2, 6, "output", 2, ids[3]),
    ]
    for src, si, ci, tgt, so, co in checks:
        want = reference_edge(model, ids, src, si, ci, tgt, so, co)
        key = (f"{src}:{si}:{ci}", f"{tgt}:{so}:{co}")
        if tgt == "output" and key not in edges:
            continue  # the output token was below 0.01 probability: no node
        assert edges[key] == pytest.approx(want, rel=1e-4, abs=1e-6), key
    # k/v -> o only from positions at or before the target's; no q edge across positions.
    for (s, t), _ in edges.items():
        sl, sp, _ = s.rsplit(":", 2)
        tl, tp, _ = t.rsplit(":", 2)
        if tl.endswith("o_proj") and sl.endswith(("k_proj", "v_proj")):
            assert int(sp) <= int(tp)
        elif sl != "wte" or tl != "output":
            assert sp == tp or tl.endswith("o_proj"), (s, t)
    # max_ci is the real maximum of the importance.
    imp = r.importance["h.0.mlp.c_fc"]
    assert r.active["h.0.mlp.c_fc:9"][0] == pytest.approx(float(imp[:, 9].max()))


def test_thresholds_and_a_user_importance() -> None:
    model = tiny()
    ids = [256, 72, 105, 33]
    full = Attributor(model, ci_threshold=0.0, attr_threshold=0.0).run(ids)
    cut = Attributor(model, ci_threshold=0.0, attr_threshold=0.01).run(ids)
    assert full.graph
    assert cut.graph
    assert cut.graph.n_edges == sum(abs(e["val"]) >= 0.01 for e in full.graph.edges())
    only_q = Attributor(
        model, importance=lambda layer, act: act.abs() * (1.0 if layer.endswith("q_proj") else 0.0)
    ).run(ids, graph=False)
    layers = {k.rsplit(":", 1)[0] for k in only_q.active}
    assert layers == {"wte", "h.0.attn.q_proj", "h.1.attn.q_proj"} | {"output"}


def test_generation_resumes_over_worker_processes(tmp_path: Path) -> None:
    db = tmp_path / "gen.db"
    prompts = [f"{i} is a prompt" for i in range(5)] + ["0 is a different prompt"]
    kw = dict(n_ctx=6, ci_threshold=2.0, attr_threshold=0.1)
    r = generate("builtin", db, prompts=prompts[:3], n_workers=2, **kw)
    assert (r.stored, r.skipped) == (3, 0)
    r = generate("builtin", db, prompts=prompts, n_workers=1, store_graphs=False, **kw)
    assert (r.stored, r.skipped) == (2, 4)  # the last one is the first once cut to 6 tokens
    with LocalAttrDB(db) as store:
        assert store.get_prompt_count() == 5
        stored = {"".join(store.get_prompt(i).tokens) for i in range(1, 6)}  # type: ignore[union-attr]
        assert stored == {"<bos>" + p[:5] for p in prompts}
        with_graph = [store.get_graph(i) is not None for i in range(1, 6)]
        assert sum(with_graph) == 3
        ctx = store.get_activation_contexts()
        assert ctx
        assert "mean_ci" in ctx["h.0.attn.q_proj:0"]
        assert len(ctx["h.0.attn.q_proj:0"]["example_tokens"]) == 5
        assert store.get_meta("n_blocks") == {"n_blocks": 4}
        key = store.get_unique_components()[0]
        assert store.get_component_stats(key) is not None
        assert not store.index_info()["rebuilt"]  # generation persisted it


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_hugging_face_models_built_from_configs(kind: str) -> None:
    transformers = pytest.importorskip("transformers")
    if kind == "gpt2":
        cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=50, n_positions=32)
        model = transformers.GPT2LMHeadModel(cfg)
    else:
        cfg = transformers.LlamaConfig(
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            hidden_size=16,
            intermediate_size=32,
            vocab_size=50,
            max_position_embeddings=32,
        )
        model = transformers.LlamaForCausalLM(cfg)
    specs, _ = find_layers(model)
    assert [s.name for s in specs[:6]] == [
        "h.0.attn.q_proj",
        "h.0.attn.k_proj",
        "h.0.attn.v_proj",
        "h.0.attn.o_proj",
        "h.0.mlp.c_fc",
        "h.0.mlp.down_proj",
    ]
    r = Attributor(model, ci_threshold=0.0, attr_threshold=1e-3).run([1, 5, 7, 9])
    assert r.graph is not None
    assert r.graph.n_edges > 0
    layers = set(r.graph.layers)
    assert {"wte", "h.1.attn.o_proj", "output"} <= layers
    assert np.isfinite([e["val"] for e in r.graph.edges(50)]).all()
