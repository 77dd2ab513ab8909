"""Decoding the SGLang explorer's JSON messages (in Rust): any JSON is stored exactly or
refused with a message naming the problem, never anything else."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnfast import FingerprintStore
from attnfast.messages import MessageDecoder

FLOAT32_MAX = float(np.finfo(np.float32).max)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=22) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=40,
)
vectors = st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=18, max_size=22)
messages = st.fixed_dictionaries(
    {"request_id": st.one_of(st.text(max_size=4), st.integers()), "vector": vectors},
    optional={
        "step": st.one_of(st.integers(-2, 1 << 25), st.floats(), st.none()),
        "metadata": st.dictionaries(
            st.sampled_from(
                ["token_id", "token_text", "think_phase", "top_k_positions", "top_k_scores", "x"]
            ),
            json_values,
        ),
        "manifold": st.dictionaries(
            st.sampled_from(["zone", "confidence", "cluster_id"]), json_values
        ),
        "layout": st.sampled_from(["v1", "sglang", "v7", 1001]),
    },
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> FingerprintStore:
    return FingerprintStore(Path(tmp_path_factory.mktemp("m")) / "m.db")


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(messages, json_values))
def test_any_json_is_stored_or_refused(store: FingerprintStore, message: object) -> None:
    decoder = MessageDecoder(store, "v1")
    rows, errors = decoder.append([json.dumps(message).encode()])
    assert rows + len(errors) == 1
    if rows == 0:
        assert errors[0][0] == 0
        assert errors[0][1]
        return
    assert isinstance(message, dict)
    vector = message["vector"]
    assert all(
        isinstance(v, int | float)
        and not isinstance(v, bool)
        and math.isfinite(v)
        and abs(v) <= FLOAT32_MAX
        for v in vector
    )
    assert isinstance(message["request_id"], str)
    assert message["request_id"]


def test_missing_steps_count_on(store: FingerprintStore) -> None:
    decoder = MessageDecoder(store, "sglang")
    for step in (None, None, 10, None):
        m: dict[str, object] = {"request_id": "steps", "vector": [0.0] * 20}
        if step is not None:
            m["metadata"] = {"step": step}
        assert decoder.append([json.dumps(m).encode()]) == (1, [])
    store.flush()
    assert store.read(request_id="steps", format="numpy")["step"].tolist() == [1, 2, 10, 11]
    assert np.all(store.read(request_id="steps", format="numpy")["schema_version"] == 1001)
