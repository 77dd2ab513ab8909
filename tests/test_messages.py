"""Decoding the SGLang explorer's JSON messages: any JSON is stored exactly or refused with
InvalidInputError, never anything else."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnfast import FingerprintStore, InvalidInputError
from attnfast.messages import MessageBatcher

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


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(messages, json_values))
def test_any_json_is_stored_or_refused(store: FingerprintStore, message: object) -> None:
    batcher = MessageBatcher(store, "v1")
    try:
        batcher.add(message)
    except InvalidInputError:
        assert batcher.pending == 0
        return
    assert isinstance(message, dict)
    assert all(math.isfinite(v) for v in message["vector"])
    assert batcher.flush_to_store() == 1


def test_missing_steps_count_on(store: FingerprintStore) -> None:
    batcher = MessageBatcher(store, "sglang")
    for step in (None, None, 10, None):
        m: dict[str, object] = {"request_id": "steps", "vector": [0.0] * 20}
        if step is not None:
            m["metadata"] = {"step": step}
        batcher.add(m)
    batcher.flush_to_store()
    store.flush()
    assert store.read(request_id="steps", format="numpy")["step"].tolist() == [1, 2, 10, 11]
    assert np.all(store.read(request_id="steps", format="numpy")["schema_version"] == 1001)
