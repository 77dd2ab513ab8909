"""Capture is right or refuses: generation whose cache is reordered (beam search), forward
calls feeding several tokens on a cache, nested captures on one model; and the prompt rows of
mode "full", written into the capture file and checked against eager attention."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import attnfast
from attnfast import CaptureError, CaptureFile, DtypeError
from attnfast.analysis import replay_eviction
from capture_models import gpt2


def counting(model: Any) -> list[int]:
    """Counts the model's forward calls (a plain hook: capture's own wrapper sits above)."""
    calls: list[int] = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize(
    "options",
    [
        {"num_beams": 2},
        {"num_beams": 3, "num_return_sequences": 2},
        {"num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 0.5},
        {"prompt_lookup_num_tokens": 2},
        {"penalty_alpha": 0.6, "top_k": 4},
    ],
    ids=["beams", "beams-returning-2", "group-beams", "assisted", "contrastive"],
)
def test_cache_reordering_generation_is_refused_before_it_runs(options: dict[str, Any]) -> None:
    sdpa, _ = gpt2()
    ids = torch.randint(3, 90, (1, 8), generator=torch.Generator().manual_seed(0))
    calls = counting(sdpa)
    with (
        attnfast.capture(sdpa) as cap,
        pytest.raises(CaptureError, match=r"cannot follow (beam search|group beam|assisted|contr)"),
    ):
        sdpa.generate(ids, max_new_tokens=4, pad_token_id=0, do_sample=False, **options)
    assert calls == []  # refused before generating anything
    assert cap.records == []
    if "num_beams" in options and "num_beam_groups" not in options:
        # (group beams and contrastive search now need code from the hub)
        # Without capture, the same call runs: the refusal is capture's alone.
        out = sdpa.generate(ids, max_new_tokens=4, pad_token_id=0, do_sample=False, **options)
        assert out.shape[1] == 12


def test_greedy_and_sampled_generation_record_what_generate_returns() -> None:
    sdpa, _ = gpt2()
    ids = torch.randint(3, 90, (1, 8), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    with attnfast.capture(sdpa) as cap:
        greedy = sdpa.generate(ids, max_new_tokens=5, pad_token_id=0, do_sample=False)
        sampled = sdpa.generate(ids, max_new_tokens=5, pad_token_id=0, do_sample=True, top_k=5)
    for out, sequence in ((greedy, 0), (sampled, 1)):
        tokens = [r.token_id for r in cap.records if r.sequence == sequence]
        assert tokens == out[0, 8:].tolist()


def test_several_tokens_on_a_cache_are_refused() -> None:
    """A prompt fed in two pieces (or speculative decoding) would record wrong steps."""
    sdpa, _ = gpt2()
    ids = torch.randint(3, 90, (1, 10), generator=torch.Generator().manual_seed(2))
    with attnfast.capture(sdpa), torch.no_grad():
        first = sdpa(ids[:, :6], use_cache=True)
        with pytest.raises(CaptureError, match="fed 4 tokens on top of a KV cache of 6"):
            sdpa(ids[:, 6:], cache=first.cache, use_cache=True)


def test_nested_captures_on_one_model_are_refused() -> None:
    sdpa, _ = gpt2()
    ids = torch.randint(3, 90, (1, 6), generator=torch.Generator().manual_seed(3))
    with attnfast.capture(sdpa) as outer:
        with pytest.raises(CaptureError, match="a capture is already active on GPT2LMHeadModel"):
            attnfast.capture(sdpa, "topk").__enter__()
        out = sdpa.generate(ids, max_new_tokens=3, pad_token_id=0, do_sample=False)
    # The outer capture saw every step; after it, a new capture may start.
    assert [r.token_id for r in outer.records] == out[0, 6:].tolist()
    with attnfast.capture(sdpa) as again:
        sdpa.generate(ids, max_new_tokens=2, pad_token_id=0, do_sample=False)
    assert len(again.records) == 2


def test_full_capture_with_prefill_writes_the_prompt_rows(tmp_path: Path) -> None:
    sdpa, eager = gpt2()
    ids = torch.randint(3, 90, (1, 9), generator=torch.Generator().manual_seed(4))
    path = tmp_path / "p.attn"
    with attnfast.capture(sdpa, "full", sink=str(path), prefill=True) as cap:
        out = sdpa.generate(ids, max_new_tokens=4, pad_token_id=0, do_sample=False)
    assert (cap.prompt_rows_captured, cap.steps_captured) == (8, 4)
    f = CaptureFile(path)
    with torch.no_grad():
        rows = torch.stack(eager(out[:, :-1], output_attentions=True).attentions)[:, 0]
    # Prompt row q (over keys 0..q) chose the prompt token at q + 1.
    prompt = f.prompt_steps
    assert prompt["position"].tolist() == list(range(1, 9))
    assert prompt["token_id"].tolist() == ids[0, 1:].tolist()
    for i, q in enumerate(range(8)):
        np.testing.assert_allclose(f.prompt_attention(i), rows[:, :, q, : q + 1].numpy(), atol=2e-3)
    # The steps are as before; the analyses use the prompt rows (SnapKV votes from them).
    assert f.steps["step"].tolist() == [0, 1, 2, 3]
    snap = replay_eviction(f, "snapkv", 6, observation=3)
    assert (snap.cache_size <= 6).all()


def test_capture_writer_refuses_other_dtypes(tmp_path: Path) -> None:
    with (
        attnfast.CaptureWriter(tmp_path / "d.attn") as w,
        pytest.raises(DtypeError, match="attention must hold floats"),
    ):
        w.write_step(sequence=0, step=0, token_id=0, position=1, timestamp_ms=0, text="",
                     attention=np.ones((1, 1, 1), np.int64))  # fmt: skip
