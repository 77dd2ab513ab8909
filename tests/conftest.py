"""Shared fixtures. Tests import the installed package, which ``make test`` rebuilds first."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from attnfast import _core


@pytest.fixture(params=["baseline", "avx2+fma", "avx512"])
def kernel_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs a test on each vector path of the core, capped at the CPU's best (so on a CPU
    without AVX-512 the last case runs the AVX2 path again rather than being skipped)."""
    in_use = _core.set_simd_limit(request.param)
    try:
        yield in_use
    finally:
        _core.set_simd_limit("avx512")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261122)


@pytest.fixture(scope="session")
def builtin_model():  # type: ignore[no-untyped-def]
    """The built-in model (trained once per cache directory, under a minute)."""
    from attnfast.models import load_builtin

    return load_builtin()


@pytest.fixture(scope="session")
def discovery_runs(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Two discovery runs over one planted database: a full fit and a sampled one
    (tests/discovery_data.py)."""
    from discovery_data import make_runs

    return make_runs(tmp_path_factory.mktemp("discovery"))
