"""Zones: the seed discovery job's rules, against a row-by-row numpy implementation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import attnfast
from attnfast.synthetic import attention_pattern
from fingerprint_reference import reference_zones


@given(
    arrays(
        np.float32, st.tuples(st.integers(1, 30), st.just(20)), elements=st.floats(0, 4, width=32)
    )
)
def test_rules_match_reference(fps):
    zones, confidences = attnfast.zone_of(fps)
    want_zones, want_conf = reference_zones(fps)
    assert zones.tolist() == want_zones
    np.testing.assert_allclose(confidences, want_conf, rtol=1e-6, atol=1e-6)


def test_thresholds_are_strict():
    fp = np.zeros(20, dtype=np.float32)
    fp[0], fp[3] = 0.5, 1.0  # local exactly 0.5: not syntax_floor
    assert attnfast.zone_of(fp)[0].tolist() == ["semantic_bridge"]
    fp[0] = 0.51
    assert attnfast.zone_of(fp)[0].tolist() == ["syntax_floor"]


@pytest.mark.parametrize(
    ("pattern", "zone"),
    [
        ("local", "syntax_floor"),
        ("periodic", "structure_ripple"),
        ("long-range", "structure_ripple"),
        ("mid-range", "semantic_bridge"),
    ],
)
def test_generated_patterns_land_in_their_zones(pattern, zone):
    zones, confidences = attnfast.zone_of(attnfast.compute_fingerprints(attention_pattern(pattern)))
    assert set(zones.tolist()) == {zone}
    assert (confidences > 0.5).all()


def test_non_finite_fingerprints_are_refused():
    fps = np.zeros((2, 20), dtype=np.float32)
    fps[1, 4] = np.nan
    with pytest.raises(attnfast.AttentionValueError, match="fingerprint row 1 has NaN at index 4"):
        attnfast.zone_of(fps)
