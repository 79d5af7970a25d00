"""Shared fixtures. The one place that decides whether GPU tests run."""
from __future__ import annotations

import functools
import os
import zlib

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@functools.lru_cache(maxsize=1)
def cuda_available() -> bool:
    """True when CuPy can reach a CUDA device (CuPy imports without one, but device calls fail)."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if cuda_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device visible (gpu marker, tests/conftest.py)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng(request):
    """A seeded generator per test, so failures reproduce."""
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)
