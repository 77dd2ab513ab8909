"""How captured steps reach the sink: batches, end-of-sequence, layers that did not run, and
what the capture leaves on the model."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import attnfast
from attnfast import CaptureError
from attnfast.hooks.pending import EMIT_EVERY
from attnfast.models import ByteTokenizer, CausalLMConfig, TinyCausalLM

EOS = ByteTokenizer.eos_token_id


def small_model() -> TinyCausalLM:
    torch.manual_seed(2)
    return TinyCausalLM(CausalLMConfig(d_model=32, heads=4, kv_heads=2, layers=2)).eval()


def test_long_generations_reach_the_sink_in_batches_each_step_once() -> None:
    model = small_model()
    ids = torch.tensor([ByteTokenizer().encode("abc")])
    calls: list[list[int]] = []
    steps = 3 * EMIT_EVERY + 5
    with attnfast.capture(model, sink=lambda records: calls.append([r.step for r in records])):
        out = model.generate(ids, steps)
        # Batches go out while generate runs, not all at its end.
        assert len(calls) >= 2
    assert [s for c in calls for s in c] == list(range(steps))
    assert all(len(c) <= EMIT_EVERY + 1 for c in calls)
    with attnfast.capture(model) as cap:
        model.generate(ids, steps)
    assert [r.token_id for r in cap.records] == out[0, ids.shape[1] :].tolist()


def test_steps_after_a_sequence_chose_eos_are_dropped() -> None:
    """A hand-written batch loop that keeps stepping a finished sequence, as generate does."""
    model = small_model()
    ids = torch.tensor([ByteTokenizer().encode("xy")] * 2)
    with attnfast.capture(model, request_id=["a", "b"]) as cap, torch.no_grad():
        out = model(ids)
        past = out.past_key_values
        for step in range(1, 6):
            # Sequence a chooses EOS at step 2; both go on being fed tokens.
            token = torch.tensor([[EOS if step == 3 else 65], [66]])
            past = model(token, past_key_values=past).past_key_values
    a = [r for r in cap.records if r.request_id == "a"]
    b = [r for r in cap.records if r.request_id == "b"]
    assert [r.step for r in a] == [0, 1, 2]
    assert a[-1].token_id == EOS
    assert [r.step for r in b] == [0, 1, 2, 3, 4, 5]
    assert cap.steps_captured == len(cap.records) == 9


def test_a_layer_that_did_not_run_is_named() -> None:
    model = small_model()
    with attnfast.capture(model):
        model.blocks[1].attn.capture_observer = None  # this layer stops reporting
        with pytest.raises(CaptureError, match=r"layers \[1\] did not run their attention"):
            model.generate(torch.tensor([[1, 2, 3]]), 2)


def test_an_instance_forward_is_wrapped_and_given_back() -> None:
    """Wrappers such as accelerate's hooks live in the instance's ``forward``."""
    model = small_model()
    calls: list[int] = []
    plain = type(model).forward

    def hooked(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return plain(model, *args, **kwargs)

    model.forward = hooked  # type: ignore[method-assign]
    with attnfast.capture(model) as cap:
        model.generate(torch.tensor([[1, 2, 3]]), 4)
    assert len(calls) == 4
    assert len(cap.records) == 4
    assert model.forward is hooked
    del model.forward
    with attnfast.capture(model):
        assert "forward" in vars(model)
    assert "forward" not in vars(model)
    assert "generate" not in vars(model)


def test_full_rows_do_not_wait_in_memory() -> None:
    """Mode "full" hands each step's rows on at the next step: memory stays bounded."""
    model = small_model()
    seen: list[int] = []
    with (
        attnfast.capture(model, "full", sink=lambda rs: seen.extend(r.step for r in rs)) as cap,
        torch.no_grad(),
    ):
        out = model(torch.tensor([[1, 2, 3]]))
        for step in range(1, 20):
            out = model(torch.tensor([[65]]), past_key_values=out.past_key_values)
            assert len(cap._pending) == 1  # only the step whose token is still unknown
            assert seen == list(range(step))
    assert seen == list(range(20))
