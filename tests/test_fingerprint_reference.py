"""The Rust core against the independent numpy implementation of the spec."""

from __future__ import annotations

import numpy as np
import pytest

import attnfast
from attention_cases import causal_attention
from fingerprint_reference import reference_fingerprints, reference_topk

TOL = {"rtol": 1e-5, "atol": 1e-5}


@pytest.mark.usefixtures("kernel_path")
@pytest.mark.parametrize(
    ("steps", "layers", "heads", "keys"),
    [
        (1, 1, 1, 1),  # a single key: all mass at d = 0, zero entropy
        (3, 2, 4, 7),  # L < 8, a context shorter than one SIMD block
        (4, 8, 2, 300),  # L == 8: one layer a slot
        (5, 12, 3, 1100),  # L > 8: slots average 1 or 2 layers
        (2, 13, 2, 64),  # L > 8, uneven slots
        (2, 3, 2, 5000),  # d >= 4096: the last histogram bin
    ],
)
def test_causal_batches_match_reference(rng, steps, layers, heads, keys):
    attn = causal_attention(rng, steps, layers, heads, keys)
    got = attnfast.compute_fingerprints(attn)
    assert got.shape == (steps, 20)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, reference_fingerprints(attn), **TOL)


@pytest.mark.usefixtures("kernel_path")
def test_random_unnormalised_rows_match_reference(rng):
    # Rows that do not sum to 1, with exact zeros mixed in: each row is normalised first.
    attn = rng.random((6, 9, 4, 777), dtype=np.float32) * 3
    attn[attn < 0.2] = 0
    np.testing.assert_allclose(
        attnfast.compute_fingerprints(attn), reference_fingerprints(attn), **TOL
    )


@pytest.mark.usefixtures("kernel_path")
def test_bidirectional_queries_in_the_middle(rng):
    # An encoder: every query sees every key, before and after it.
    attn = rng.dirichlet(np.full(2000, 0.3), size=(5, 6, 2)).astype(np.float32)
    queries = np.array([0, 17, 999, 1500, 1999])
    got = attnfast.compute_fingerprints(attn, query_positions=queries)
    np.testing.assert_allclose(got, reference_fingerprints(attn, queries), **TOL)
    # The middle query has mass on both sides: the default (last key) would put it all behind.
    assert not np.allclose(got, attnfast.compute_fingerprints(attn), atol=1e-3)


@pytest.mark.usefixtures("kernel_path")
def test_one_step_takes_an_int_query_position(rng):
    attn = causal_attention(rng, 1, 4, 4, 500)[0]
    got = attnfast.compute_fingerprints(attn, query_positions=250)
    assert got.shape == (1, 20)
    np.testing.assert_allclose(got, reference_fingerprints(attn, [250]), **TOL)


@pytest.mark.usefixtures("kernel_path")
def test_float16_matches_reference_of_the_same_values(rng):
    attn = causal_attention(rng, 4, 10, 4, 1500).astype(np.float16)
    got = attnfast.compute_fingerprints(attn)
    np.testing.assert_allclose(got, reference_fingerprints(attn.astype(np.float64)), **TOL)


def test_float64_is_narrowed_and_matches(rng):
    attn = causal_attention(rng, 2, 3, 2, 100).astype(np.float64)
    np.testing.assert_allclose(
        attnfast.compute_fingerprints(attn), reference_fingerprints(attn), **TOL
    )


def test_non_contiguous_and_big_endian_inputs(rng):
    attn = causal_attention(rng, 3, 4, 2, 200)
    want = reference_fingerprints(attn)
    strided = np.ascontiguousarray(attn.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    assert not strided.flags.c_contiguous
    np.testing.assert_allclose(attnfast.compute_fingerprints(strided), want, **TOL)
    np.testing.assert_allclose(attnfast.compute_fingerprints(attn.astype(">f4")), want, **TOL)


@pytest.mark.usefixtures("kernel_path")
@pytest.mark.parametrize(("layers", "k", "keys"), [(3, 1, 10), (5, 8, 300), (12, 16, 6000)])
def test_topk_matches_reference(rng, layers, k, keys):
    steps, heads = 4, 3
    positions = np.stack(
        [rng.choice(keys, size=k, replace=False) for _ in range(steps * layers * heads)]
    ).reshape(steps, layers, heads, k)
    scores = rng.random((steps, layers, heads, k), dtype=np.float32)
    queries = rng.integers(0, keys, size=steps)
    got = attnfast.fingerprint_from_topk(positions, scores, queries, keys)
    np.testing.assert_allclose(got, reference_topk(positions, scores, queries, keys), **TOL)


def test_topk_one_step_and_float16_scores(rng):
    positions = np.array([[[9, 8, 2]], [[0, 5, 9]]])  # (L=2, H=1, k=3)
    scores = np.array([[[0.5, 0.3, 0.2]], [[0.1, 0.1, 0.8]]], dtype=np.float16)
    got = attnfast.fingerprint_from_topk(positions, scores, 9, 10)
    assert got.shape == (1, 20)
    np.testing.assert_allclose(
        got, reference_topk(positions, scores.astype(np.float64), [9], 10), **TOL
    )


def test_topk_of_the_full_row_equals_dense(rng):
    # k = N: the top-k path sees the whole row, so both paths must agree.
    attn = causal_attention(rng, 2, 3, 2, 50, sharp=1.0)
    positions = np.broadcast_to(np.arange(50), attn.shape).copy()
    got = attnfast.fingerprint_from_topk(positions, attn, [48, 49], 50)
    np.testing.assert_allclose(got, attnfast.compute_fingerprints(attn), **TOL)


def test_threads_do_not_change_results(rng, tmp_path):
    # The pool size is fixed per process, so compare against a one-thread subprocess.
    import subprocess
    import sys

    attn = causal_attention(rng, 64, 4, 4, 1024)
    np.save(tmp_path / "attn.npy", attn)
    code = (
        "import numpy as np, attnfast, sys; "
        f"fp = attnfast.compute_fingerprints(np.load(r'{tmp_path / 'attn.npy'}')); "
        f"np.save(r'{tmp_path / 'one.npy'}', fp); "
        "print(attnfast.build_info()['threads'])"
    )
    env = {"ATTNFAST_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "1"
    np.testing.assert_array_equal(
        np.load(tmp_path / "one.npy"), attnfast.compute_fingerprints(attn)
    )


def test_simd_cap_selects_the_path(kernel_path):
    # The fixture's cap is what the core reports using, so each parametrised case above really
    # ran on its own path (up to what this CPU has).
    assert attnfast.build_info()["simd"] == kernel_path
