"""Analyses of captures: eviction replay against hand-worked cases, sentence attention,
heatmaps, and the pruning simulation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from attnfast import CaptureFile, CaptureWriter
from attnfast.analysis import downsample, replay_eviction, save_heatmap, sentence_attention
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
    # After step 0: keys {0} + recent {2, 3}; step 1 adds key 4: kept 0.4+0.1+0.2+0.3.
    # After step 1: {0, 3, 4}; step 2 adds key 5: kept 0.25+0.25+0+0.25.
    np.testing.assert_allclose(s.kept_share, [1.0, 1.0, 0.75], atol=1e-3)
    t = replay_eviction(f, "tova", 3)
    # Step 0 drops the least attended of 4: keys 1 and 2 tie, the earlier stays: {0, 1, 3}.
    # Step 1: cache {0,1,3,4} -> kept .4+0+.2+.3 = .9, key 2's 0.1 was evicted; drops key 1.
    # Step 2: cache {0,3,4,5} -> 0.25+0.25+0+0.25.
    np.testing.assert_allclose(t.kept_share, [1.0, 0.9, 0.75], atol=1e-3)
    h = replay_eviction(f, "h2o", 3, window=1)
    # Accumulated after step 0: [.5,.1,.1,.3]; keep newest {3} + top2 {0, 1 or 2}: ties keep key 1.
    # Step 1 cache {0,1,3,4}: kept .4+0+.2+.3 = .9.
    assert h.kept_share[1] == pytest.approx(0.9, abs=1e-3)
    assert (h.cache_size <= 3).all()
    assert (s.cache_size <= 3).all()
    with pytest.raises(ValueError, match="policy must be one of"):
        replay_eviction(f, "lru", 3)
    with pytest.raises(ValueError, match="budget must be at least 1"):
        replay_eviction(f, "tova", 0)


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
