"""Analyses of captures: eviction replay against hand-worked cases, sentence attention,
heatmaps, and the pruning simulation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnfast import CaptureFile, CaptureWriter
from attnfast.analysis import (
    POLICIES,
    downsample,
    replay_eviction,
    replay_rows,
    save_heatmap,
    sentence_attention,
)
from attnfast.analysis.pruning import prune_simulation
from attnfast.models import ByteTokenizer


def write_rows(path: Path, rows: list[list[float]], prompt: list[str]) -> CaptureFile:
    """One layer, one head: ``rows[t]`` is step t's attention over ``len(prompt) + t`` keys."""
    tokens = [
        {
            "token_id": i,
            "text": t,
            "position": i,
            "turn_id": 0,
            "message_role": "user",
            "sentence_id": int(t == "B"),
        }
        for i, t in enumerate(prompt)
    ]
    with CaptureWriter(path, {"sequences": [{"request_id": "x", "prompt_tokens": tokens}]}) as w:
        for t, r in enumerate(rows):
            w.write_step(
                sequence=0,
                step=t,
                token_id=0,
                position=len(r),
                timestamp_ms=0,
                text="",
                attention=np.array([[r]], dtype=np.float32),
            )
    return CaptureFile(path)


def test_eviction_policies_by_hand(tmp_path: Path) -> None:
    # Prompt of 4 keys, then one new key per step; budget 3.
    rows = [
        [0.5, 0.1, 0.1, 0.3],
        [0.4, 0.0, 0.1, 0.2, 0.3],
        [0.25, 0.25, 0.0, 0.25, 0.0, 0.25],
    ]
    f = write_rows(tmp_path / "e.attn", rows, ["A", "a", "B", "b"])
    s = replay_eviction(f, "streaming", 3, sinks=1)
    # Step 0: the prompt cut to {0} + the most recent {2, 3}: kept .5+.1+.3. Then each step
    # leaves room for the next key: {0, 3} + 4 -> .4+.2+.3; {0, 4} + 5 -> .25+0+.25.
    np.testing.assert_allclose(s.kept_share, [0.9, 0.9, 0.5], atol=1e-3)  # float16 file
    assert [k.tolist() for k in s.kept] == [[0, 2, 3], [0, 3, 4], [0, 4, 5]]
    t = replay_eviction(f, "tova", 3)
    # Step 0 keeps the newest key and the two step 0 attends to most (1 and 2 tie: 1 stays);
    # after it, key 1 (step 0 gave it 0.1, key 0 0.5) goes; after step 1, key 3 (0.2 < 0.4).
    assert [k.tolist() for k in t.kept] == [[0, 1, 3], [0, 3, 4], [0, 4, 5]]
    np.testing.assert_allclose(t.kept_share, [0.9, 0.9, 0.5], atol=1e-3)
    h = replay_eviction(f, "h2o", 3, window=1)
    # Accumulated attention after step 1: [.9, .1, .2, .5, .3]: key 0 outlasts key 3.
    assert [k.tolist() for k in h.kept] == [[0, 1, 3], [0, 3, 4], [0, 4, 5]]
    # A window longer than the budget keeps the most recent keys, not the oldest of it.
    wide = replay_eviction(f, "h2o", 3, window=10)
    assert [k.tolist() for k in wide.kept] == [[1, 2, 3], [2, 3, 4], [3, 4, 5]]
    np.testing.assert_allclose(wide.kept_share, [0.5, 0.6, 0.5], atol=1e-3)
    # SnapKV compresses the prompt at once, even in a capture shorter than its window.
    snap = replay_eviction(f, "snapkv", 3, observation=2)
    assert [k.tolist() for k in snap.kept] == [[0, 2, 3], [0, 3, 4], [3, 4, 5]]
    for r in (s, t, h, wide, snap):
        assert (r.cache_size <= 3).all()
    with pytest.raises(ValueError, match="policy must be one of"):
        replay_eviction(f, "lru", 3)
    with pytest.raises(ValueError, match="budget must be at least 1"):
        replay_eviction(f, "tova", 0)


@st.composite
def replays(draw: st.DrawFn) -> dict[str, Any]:
    prompt = draw(st.integers(1, 24))
    steps = draw(st.integers(1, 16))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    # Sparse rows, with exact ties and zeros, as attention has.
    rows = [np.round(rng.dirichlet([0.3] * (prompt + t)), 2) for t in range(steps)]
    prompt_rows = (
        [rng.dirichlet([0.5] * (q + 1)) for q in range(prompt - 1)] if draw(st.booleans()) else []
    )
    return {
        "rows": rows,
        "prompt_rows": prompt_rows,
        "policy": draw(st.sampled_from(POLICIES)),
        "budget": draw(st.integers(1, 40)),
        "sinks": draw(st.integers(0, 6)),
        "window": draw(st.none() | st.integers(1, 50)),
        "observation": draw(st.integers(1, 12)),
    }


@settings(max_examples=400, deadline=None)
@given(replays())
def test_every_policy_keeps_its_budget(case: dict[str, Any]) -> None:
    rows = case.pop("rows")
    r = replay_rows(rows, **case)
    budget = case["budget"]
    previous: set[int] | None = None
    for t, (a, kept) in enumerate(zip(rows, r.kept, strict=True)):
        n = len(a)
        assert len(kept) == r.cache_size[t] <= budget
        assert n - 1 in kept  # the newest key is always there
        assert r.kept_share[t] == pytest.approx(float(np.sum(a[kept])), abs=1e-12)
        if n <= budget:
            assert len(kept) == n  # nothing is evicted before the budget is reached
        if previous is not None:
            assert set(kept.tolist()) <= previous | {n - 1}  # an evicted key never returns
        previous = set(kept.tolist())


def test_sentence_attention_and_heatmaps(tmp_path: Path) -> None:
    rows = [[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.05, 0.05]]
    f = write_rows(tmp_path / "s.attn", rows, ["A", "a", "B", "b"])
    s = sentence_attention(f)
    assert s.sentences == ["Aab", "B"]
    # sentence 0 = tokens A, a, b (sentence_id 0), sentence 1 = token B
    np.testing.assert_allclose(s.matrix, [[0.7, 0.3], [0.75, 0.2]], atol=1e-3)
    trend = s.trend()
    assert trend[1]["ratio"] == pytest.approx(0.2 / 0.3, rel=1e-3)
    png = save_heatmap(
        np.random.default_rng(0).random((3000, 40)).astype(np.float32),
        tmp_path / "h.png",
        title="t",
        xlabel="step",
        ylabel="pos",
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_allclose(downsample(m, 2, 2), [[2.5, 4.5], [8.5, 10.5]])


def test_prune_simulation(builtin_model) -> None:  # type: ignore[no-untyped-def]
    ids = torch.tensor([ByteTokenizer().encode("copy: cache layer | cache layer")])
    same = prune_simulation(builtin_model, ids, drop_fraction=0.0, max_new_tokens=12)
    assert same.agreement == 1.0
    assert same.first_divergence is None
    assert same.dropped_positions == []
    cut = prune_simulation(builtin_model, ids, drop_fraction=0.5, max_new_tokens=12)
    assert len(cut.dropped_positions) == round(0.5 * ids.shape[1])
    assert 0 not in cut.dropped_positions
    assert len(cut.pruned) == 12
    if cut.first_divergence is not None:
        assert cut.original[: cut.first_divergence] == cut.pruned[: cut.first_divergence]
        assert cut.original[cut.first_divergence] != cut.pruned[cut.first_divergence]
