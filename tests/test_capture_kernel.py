"""The Rust step kernel behind CPU capture (`_core.attention_step`): rows recomputed from
queries and keys, checked against a float64 numpy softmax, and its refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnfast
from attnfast import ShapeError, _core


def numpy_rows(q: np.ndarray, k: np.ndarray, bias: np.ndarray | None, scale: float) -> np.ndarray:
    """softmax(q k^T * scale + bias) of the last query row, float64: (B, H, N)."""
    q64, k64 = q[:, :, -1].astype(np.float64), k.astype(np.float64)
    groups = q.shape[1] // k.shape[1]
    k_all = np.repeat(k64, groups, axis=1)  # (B, H, N, D)
    scores = np.einsum("bhd,bhnd->bhn", q64, k_all) * scale
    if bias is not None:
        scores = scores + bias
    scores -= scores.max(-1, keepdims=True)
    e = np.exp(scores)
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("dim", [16, 12])  # the AVX2 block path, and the plain one
def test_rows_fingerprints_sink_and_topk_match_numpy(dim: int) -> None:
    gen = torch.Generator().manual_seed(0)
    batch, heads, kv, n, layers = 3, 4, 2, 41, 2
    queries = [torch.randn(batch, heads, 2, dim, generator=gen) for _ in range(layers)]
    # A transposed view, as attention layers hand keys over before the cache makes a copy.
    keys = [torch.randn(batch, n, kv, dim, generator=gen).transpose(1, 2) for _ in range(layers)]
    bias = np.zeros((batch, 1, n), np.float32)
    pads = [0, 5, 2]
    for b, p in enumerate(pads):
        bias[b, 0, :p] = -np.inf  # left padding
    host, rows, got_n = _core.attention_step(
        queries, keys, [bias, None], [0.3, 0.25], [3, 0, 1], pads, 4, True
    )
    assert got_n == n
    assert rows is not None
    assert rows.shape == (batch, layers, 3, n)
    want = np.stack(
        [
            numpy_rows(queries[0].numpy(), keys[0].numpy(), bias, 0.3),
            numpy_rows(queries[1].numpy(), keys[1].numpy(), None, 0.25),
        ],
        axis=1,
    )[:, :, [3, 0, 1]]
    np.testing.assert_allclose(rows, want, atol=2e-6)
    fps = attnfast.compute_fingerprints(want.astype(np.float32), np.full(batch, n - 1))
    np.testing.assert_allclose(host[:, :20], fps, atol=1e-5)
    p = want.mean(axis=(1, 2))  # (B, N)
    for b, pad in enumerate(pads):
        assert host[b, 20] == pytest.approx(p[b, pad], abs=1e-6)
        top = np.argsort(-p[b], kind="stable")[:4]
        np.testing.assert_allclose(host[b, 21:25], p[b, top], atol=1e-6)
        np.testing.assert_array_equal(host[b, 25:29], top - pad)


def test_bad_inputs_name_the_problem() -> None:
    q = [torch.randn(1, 4, 1, 8)]
    k = [torch.randn(1, 2, 5, 8)]

    def call(queries: list, keys: list, heads: list[int] | None = None) -> None:
        _core.attention_step(queries, keys, [None], [0.5], heads, [0], 0, False)

    with pytest.raises(ShapeError, match=r"layer 0 queries must be float32, not torch\.float64"):
        call([q[0].double()], k)
    with pytest.raises(ShapeError, match="layer 0 keys must be a non-empty 4-dimensional"):
        call(q, [k[0][0]])
    with pytest.raises(ShapeError, match="4 query heads are not a multiple of 3 key heads"):
        call(q, [torch.randn(1, 3, 5, 8)])
    with pytest.raises(ShapeError, match="head 4 is out of range"):
        call(q, k, [4])
    with pytest.raises(attnfast.AttentionValueError, match="scores are not finite"):
        call([torch.full((1, 4, 1, 8), float("nan"))], k)
    with pytest.raises(ShapeError, match="1 queries, 2 keys"):
        call(q, k * 2)
    with pytest.raises(ShapeError, match="layer 0 keys must be a torch tensor, not ndarray"):
        call(q, [k[0].numpy()])
