"""The torch fingerprint path that capture runs on the model's device."""

from __future__ import annotations

import numpy as np
import torch

from attnfast.hooks import device_fingerprint
from fingerprint_reference import reference_fingerprints


def test_device_fingerprint_matches_reference() -> None:
    """The torch path (used on GPUs) against the numpy float64 reference, including the
    layer-slot rule for L >= 8 and prefill chunks that start mid-sequence."""
    rng = np.random.default_rng(0)
    for layers, q0, q_count, n in [(3, 10, 1, 11), (12, 100, 8, 300), (9, 0, 5, 5000)]:
        a = rng.random((layers, 4, q_count, n)).astype(np.float32) ** 4
        got = device_fingerprint.layer_stats(torch.from_numpy(a), q0)
        fp = device_fingerprint.assemble(got).numpy()
        want = reference_fingerprints(a.transpose(2, 0, 1, 3), np.arange(q0, q0 + q_count))
        np.testing.assert_allclose(fp, want, atol=2e-5)
