"""Invariants of the spec, on inputs hypothesis chooses."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import attnfast
from fingerprint_reference import reference_fingerprints


@st.composite
def attention(draw):
    """Non-negative rows with a positive sum, of any small shape, float32 or float16, with a
    random query position per step."""
    steps = draw(st.integers(1, 3))
    layers = draw(st.integers(1, 11))
    heads = draw(st.integers(1, 3))
    keys = draw(st.sampled_from([1, 2, 5, 31, 33, 64, 257, 300]))
    dtype = draw(st.sampled_from([np.float32, np.float16]))
    values = st.floats(0, 1, width=16) | st.just(0.0)
    a = draw(arrays(dtype, (steps, layers, heads, keys), elements=values))
    empty = a.astype(np.float64).sum(axis=-1) == 0
    a[..., 0][empty] = 1
    queries = draw(st.lists(st.integers(0, keys - 1), min_size=steps, max_size=steps))
    return a, np.array(queries)


@settings(max_examples=150, deadline=None)
@given(attention())
def test_invariants(case):
    attn, queries = case
    fps = attnfast.compute_fingerprints(attn, queries).astype(np.float64)
    keys = attn.shape[-1]
    assert np.isfinite(fps).all()
    assert (fps >= 0).all()
    np.testing.assert_allclose(fps[:, :3].sum(axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(fps[:, 4:12].sum(axis=1), 1, atol=1e-5)
    assert (fps[:, 3] <= np.log(keys) + 1e-5).all()
    assert (fps[:, 12:] <= np.log(keys) + 1e-5).all()
    np.testing.assert_allclose(
        fps, reference_fingerprints(attn.astype(np.float64), queries), rtol=1e-5, atol=1e-5
    )


@settings(max_examples=50, deadline=None)
@given(attention(), st.floats(1e-3, 1e3))
def test_scaling_a_row_changes_nothing(case, scale):
    attn, queries = case
    attn = attn.astype(np.float32)
    scaled = attn.copy()
    scaled[:, 0, 0] *= np.float32(scale)
    np.testing.assert_allclose(
        attnfast.compute_fingerprints(scaled, queries),
        attnfast.compute_fingerprints(attn, queries),
        rtol=1e-5,
        atol=1e-5,
    )


@settings(max_examples=50, deadline=None)
@given(attention())
def test_fingerprints_survive_packing(case):
    attn, queries = case
    fps = attnfast.compute_fingerprints(attn, queries)
    np.testing.assert_array_equal(
        attnfast.unpack_fingerprints(attnfast.pack_fingerprints(fps)), fps
    )
