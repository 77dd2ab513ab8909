"""Bad input raises a ValueError subclass that names the problem and where it is."""

from __future__ import annotations

import numpy as np
import pytest

import attnfast
from attnfast import AttentionValueError, DtypeError, ShapeError


def uniform(*shape: int) -> np.ndarray:
    return np.full(shape, 1.0 / shape[-1], dtype=np.float32)


@pytest.mark.usefixtures("kernel_path")
@pytest.mark.parametrize(
    ("value", "word"),
    [(np.nan, "NaN"), (np.inf, "infinity"), (-np.inf, "-infinity"), (-0.1, "negative")],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_bad_values_name_step_layer_head_key(value, word, dtype):
    attn = uniform(3, 4, 5, 40).astype(dtype)
    attn[2, 3, 1, 17] = value
    with pytest.raises(
        AttentionValueError, match=f"^attention step 2, layer 3, head 1, key 17 is {word}$"
    ):
        attnfast.compute_fingerprints(attn)


def test_first_bad_row_is_reported_even_across_threads():
    attn = uniform(200, 4, 4, 512)
    attn[150, 0, 0, 3] = np.nan
    attn[7, 1, 2, 5] = -1.0
    with pytest.raises(AttentionValueError, match="step 7, layer 1, head 2, key 5 is negative"):
        attnfast.compute_fingerprints(attn)


def test_zero_row_is_named():
    attn = uniform(1, 2, 3, 10)
    attn[0, 1, 2] = 0
    with pytest.raises(AttentionValueError, match="step 0, layer 1, head 2 sums to 0"):
        attnfast.compute_fingerprints(attn)


@pytest.mark.parametrize("shape", [(10,), (4, 10), (1, 1, 1, 1, 10)])
def test_wrong_number_of_dimensions(shape):
    with pytest.raises(ShapeError, match=r"\(L, H, N\) for one step or \(T, L, H, N\)"):
        attnfast.compute_fingerprints(uniform(*shape))


def test_empty_axes_are_refused_and_zero_steps_give_no_rows():
    with pytest.raises(ShapeError, match="no heads"):
        attnfast.compute_fingerprints(np.zeros((2, 3, 0, 10), dtype=np.float32))
    assert attnfast.compute_fingerprints(np.zeros((0, 3, 2, 10), dtype=np.float32)).shape == (0, 20)


@pytest.mark.parametrize(
    "array",
    [
        np.ones((2, 2, 4), dtype=np.int64),
        np.ones((2, 2, 4), dtype=bool),
        np.ones((2, 2, 4), dtype=np.complex64),
        np.array([[["a"]]]),
    ],
)
def test_wrong_dtypes(array):
    with pytest.raises(DtypeError, match="must be float32 or float16"):
        attnfast.compute_fingerprints(array)


def test_query_positions_are_checked():
    attn = uniform(2, 1, 1, 8)
    with pytest.raises(AttentionValueError, match=r"query position 8 of step 1 is outside 0\.\.7"):
        attnfast.compute_fingerprints(attn, [0, 8])
    with pytest.raises(AttentionValueError, match="query position -1 of step 0"):
        attnfast.compute_fingerprints(attn, [-1, 3])
    with pytest.raises(ShapeError, match="query_positions has 3 entries but there are 2 steps"):
        attnfast.compute_fingerprints(attn, [1, 2, 3])
    with pytest.raises(DtypeError, match="query_positions must be integers"):
        attnfast.compute_fingerprints(attn, [1.0, 2.0])
    with pytest.raises(ShapeError, match="pass query_positions"):
        attnfast.compute_fingerprints(uniform(9, 1, 1, 8))


def test_topk_errors_name_the_entry():
    positions = np.array([[[0, 1], [2, 2]]])  # (L=1, H=2, k=2); head 1 repeats position 2
    scores = np.full((1, 2, 2), 0.5, dtype=np.float32)
    with pytest.raises(
        AttentionValueError, match="layer 0, head 1: position 2 appears more than once"
    ):
        attnfast.fingerprint_from_topk(positions, scores, 3, 4)
    with pytest.raises(AttentionValueError, match=r"head 0, entry 1: position 1 is outside 0\.\.0"):
        attnfast.fingerprint_from_topk(np.array([[[0, 1]]]), scores[:, :1], 0, 1)
    with pytest.raises(ShapeError, match="scores have shape"):
        attnfast.fingerprint_from_topk(positions, scores[:, :1], 3, 4)
    with pytest.raises(DtypeError, match="top-k positions must be integers"):
        attnfast.fingerprint_from_topk(positions.astype(float), scores, 3, 4)
    with pytest.raises(ShapeError, match="context_length must be at least 1"):
        attnfast.fingerprint_from_topk(positions, scores, 0, 0)


def test_every_input_error_is_a_value_error_and_an_attnfast_error():
    for exc in (
        AttentionValueError,
        ShapeError,
        DtypeError,
        attnfast.BlobError,
        attnfast.LayoutError,
    ):
        assert issubclass(exc, ValueError)
        assert issubclass(exc, attnfast.AttnfastError)
