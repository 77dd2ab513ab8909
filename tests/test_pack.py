"""Packing: 80 little-endian bytes a row, refusing anything that would be misread."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import attnfast
from attnfast import BlobError, Layout, LayoutError

finite = st.floats(allow_nan=False, allow_infinity=False, width=32)


@given(arrays(np.float32, st.tuples(st.integers(0, 40), st.just(20)), elements=finite))
def test_round_trip_is_exact(fps):
    blob = attnfast.pack_fingerprints(fps)
    assert len(blob) == 80 * len(fps)
    back = attnfast.unpack_fingerprints(blob)
    assert back.shape == fps.shape
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back.view(np.uint32), fps.view(np.uint32))


def test_bytes_are_the_seed_struct_layout():
    # The seed's sidecar wrote struct.pack('<20f', *fingerprint); attnfast rows are the same.
    fp = np.arange(20, dtype=np.float32) / 7
    assert attnfast.pack_fingerprints(fp) == struct.pack("<20f", *fp.tolist())
    np.testing.assert_array_equal(
        attnfast.unpack_fingerprints(struct.pack("<20f", *fp.tolist()))[0], fp
    )


def test_accepts_one_row_lists_and_buffers():
    row = [0.5] * 20
    blob = attnfast.pack_fingerprints(row)
    for buf in (blob, bytearray(blob), memoryview(blob)):
        np.testing.assert_array_equal(attnfast.unpack_fingerprints(buf), [row])


def test_non_finite_values_are_refused_with_row_and_index():
    fps = np.zeros((3, 20), dtype=np.float32)
    fps[2, 7] = np.inf
    with pytest.raises(BlobError, match=r"^fingerprint row 2 has infinity at index 7$"):
        attnfast.pack_fingerprints(fps)
    blob = bytearray(attnfast.pack_fingerprints(np.zeros((3, 20), dtype=np.float32)))
    blob[80 + 4 * 5 : 80 + 4 * 6] = struct.pack("<f", float("nan"))
    with pytest.raises(BlobError, match=r"^packed row 1 has NaN at index 5$"):
        attnfast.unpack_fingerprints(bytes(blob))


@pytest.mark.parametrize("length", [1, 79, 81, 170, 96])
def test_partial_rows_are_refused(length):
    with pytest.raises(
        BlobError, match=f"blob of {length} bytes is not a whole number of 80-byte v1 rows"
    ):
        attnfast.unpack_fingerprints(b"\0" * length)


def test_wrong_widths_are_refused():
    with pytest.raises(attnfast.ShapeError, match=r"must be \(20,\) or \(T, 20\)"):
        attnfast.pack_fingerprints(np.zeros((2, 24), dtype=np.float32))


def test_layouts():
    assert Layout.of("v1") is Layout.V1
    assert Layout.of(1001) is Layout.SGLANG
    assert Layout.V1.code == 1
    assert Layout.V1.fields == attnfast.FINGERPRINT_FIELDS
    assert Layout.SGLANG.fields[3] == "entropy_norm"
    assert len(attnfast.FINGERPRINT_FIELDS) == 20
    blob = attnfast.pack_fingerprints(np.ones(20), layout="sglang")
    assert attnfast.unpack_fingerprints(blob, Layout.SGLANG).shape == (1, 20)
    for bad in ("v2", 2, True):
        with pytest.raises(LayoutError, match="unknown fingerprint layout"):
            Layout.of(bad)
