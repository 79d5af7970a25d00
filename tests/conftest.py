"""Shared fixtures. The one place that decides whether GPU tests run."""
from __future__ import annotations

import functools
import os
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Tests may use bench/'s helpers (a real server in a subprocess, free ports, the load generator).
BENCH = Path(__file__).resolve().parents[1] / "bench"
if str(BENCH) not in sys.path:
    sys.path.append(str(BENCH))

from server_proc import free_port  # noqa: E402  (bench/server_proc.py)

_free_port = free_port  # the name tests/test_serve_cli.py imports


@functools.lru_cache(maxsize=1)
def cuda_available() -> bool:
    """True when CuPy can reach a CUDA device (CuPy imports without one, but device calls fail)."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    # Tests on the session-wide `served` app run last: its local Ray lives until the session ends
    # and its replicas hold that Ray's CPUs, so a test that starts Ray for itself (the joins) and
    # ran after it would join that cluster and wait forever for CPUs. Order is otherwise kept.
    items.sort(key=lambda item: "served" in getattr(item, "fixturenames", ()))
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


RW_KEY, RO_KEY = "test-rw-key", "test-ro-key"
# Keys limited to some collections (tests/reliability/test_security.py owns the sec-* names).
SCOPED_RW_KEY, SCOPED_RO_KEY = "test-scoped-rw-key", "test-scoped-ro-key"
SCOPED_KEYS = {SCOPED_RW_KEY: {"role": "rw", "collections": ["sec-a", "sec-live"]},
               SCOPED_RO_KEY: {"role": "ro", "collections": ["sec-a"]}}


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """One local Ray + Serve for the whole test run: the gpusearch app with 2 shards x 2 replicas,
    API keys, the MiniLM encoder, data under a temporary directory, HTTP on a random port."""
    pytest.importorskip("ray")
    pytest.importorskip("fastapi")
    import tempfile

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray import serve

    from gpusearch.serve.app import build_app
    from gpusearch.serve.config import ServeConfig

    cfg = ServeConfig(data_dir=str(tmp_path_factory.mktemp("served")), port=free_port(), shards=2, replicas=2,
                      api_keys={RW_KEY: "rw", RO_KEY: "ro", **SCOPED_KEYS}, max_batch=500, shard_timeout_s=20.0,
                      fsync=True, device="cpu")
    ray.init(include_dashboard=False, num_cpus=2, log_to_driver=False,
             _temp_dir=tempfile.mkdtemp(prefix="gsray-", dir="/tmp"))
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(build_app(cfg), name=cfg.app_name, route_prefix="/")
    try:
        yield cfg
    finally:
        serve.shutdown()
        ray.shutdown()
