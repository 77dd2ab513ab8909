"""Torch tensors go in directly: CPU tensors without a copy, the rest converted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnfast
from attention_cases import causal_attention
from attnfast._arrays import attention_array
from fingerprint_reference import reference_fingerprints


def test_cpu_float32_tensor_is_read_in_place(rng):
    attn = torch.from_numpy(causal_attention(rng, 2, 3, 4, 100))
    view = attention_array(attn)
    assert np.shares_memory(view, attn.numpy())
    np.testing.assert_allclose(
        attnfast.compute_fingerprints(attn),
        reference_fingerprints(attn.numpy()),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes(rng, dtype):
    attn = torch.from_numpy(causal_attention(rng, 2, 3, 4, 100)).to(dtype)
    want = reference_fingerprints(attn.double().numpy())
    np.testing.assert_allclose(attnfast.compute_fingerprints(attn), want, rtol=1e-5, atol=1e-5)


def test_tensor_that_requires_grad_and_softmax_output(rng):
    # The usual way attention arrives: a softmax over logits inside an autograd graph.
    logits = torch.randn(
        3, 2, 4, 64, generator=torch.Generator().manual_seed(0), requires_grad=True
    )
    attn = torch.softmax(logits, dim=-1)
    got = attnfast.compute_fingerprints(attn)
    np.testing.assert_allclose(
        got, reference_fingerprints(attn.detach().numpy()), rtol=1e-5, atol=1e-5
    )


def test_topk_straight_from_torch_topk(rng):
    attn = torch.from_numpy(causal_attention(rng, 1, 4, 2, 300, sharp=1.0)[0])
    scores, positions = attn.topk(16, dim=-1)
    got = attnfast.fingerprint_from_topk(positions, scores, 299, 300)
    dense = torch.zeros_like(attn).scatter(-1, positions, scores)
    np.testing.assert_allclose(got, attnfast.compute_fingerprints(dense), rtol=1e-5, atol=1e-5)


def test_integer_tensor_is_refused():
    with pytest.raises(attnfast.DtypeError, match="got dtype int64"):
        attnfast.compute_fingerprints(torch.ones(2, 2, 4, dtype=torch.int64))
