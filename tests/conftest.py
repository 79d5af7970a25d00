"""Shared fixtures. The one place that decides whether GPU tests run, and the one place that starts
the local Ray the tests share (:func:`ray_cluster`)."""
from __future__ import annotations

import functools
import os
import shutil
import sys
import tempfile
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


RW_KEY, RO_KEY = "test-rw-key", "test-ro-key"
# Keys limited to some collections (tests/reliability/test_security.py owns the sec-* names).
SCOPED_RW_KEY, SCOPED_RO_KEY = "test-scoped-rw-key", "test-scoped-ro-key"
SCOPED_KEYS = {SCOPED_RW_KEY: {"role": "rw", "collections": ["sec-a", "sec-live"]},
               SCOPED_RO_KEY: {"role": "ro", "collections": ["sec-a"]}}


# Logical CPUs of the shared Ray: more than this machine's cores, since every reservation below is
# a fraction and the work runs in threads. The served app's replicas hold theirs for as long as the
# session lives (ServeConfig: num_cpus_shard 0.25 per shard replica, num_cpus_other 0.1 for each
# other deployment; under 2 CPUs for 2 shards x 2 replicas), and a join started at any point must
# still fit beside them. The join's _plan_resources (gpusearch.join) makes min(CPUs, 8) partitions
# and as many workers by default, 0.25 CPU each, so a default join reserves 4 of 8 and its Ray Data
# tasks (read_parquet 0.5, map_batches 0.25) fit in what is left: 2 + 4 + 0.75 <= 8. The tests'
# joins ask for 2 partitions and 2 workers (1 CPU).
RAY_CPUS = 8


@pytest.fixture(scope="session")
def ray_cluster():
    """The local Ray every test that needs one shares, started once for the whole run, whatever the
    order of the tests: no dashboard, token auth off (a private cluster), its temp dir a fresh short
    directory under /tmp (Ray's socket paths must stay short), removed at the end.

    Code under test that would start Ray itself (``gpusearch.join._ensure_ray``,
    ``gpusearch.serve.app.start``) finds it running and uses it."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        raise RuntimeError("Ray was started before the ray_cluster fixture; a test that needs Ray must use "
                           "ray_cluster (tests/conftest.py) rather than call ray.init itself")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    temp_dir = tempfile.mkdtemp(prefix="gsray-", dir="/tmp")
    from gpusearch._ray import local_ray_kwargs  # on the loopback address, as gpusearch starts its own

    ray.init(include_dashboard=False, num_cpus=RAY_CPUS, log_to_driver=False, _temp_dir=temp_dir,
             **local_ray_kwargs())
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def served(ray_cluster, tmp_path_factory):
    """The gpusearch app on the shared Ray for the whole test run: 2 shards x 2 replicas, API keys,
    the MiniLM encoder, a cross-encoder reranker, data under a temporary directory, HTTP on 127.0.0.1 on a free port. Its
    deployments go at the end of the run (``serve.shutdown``), before the Ray they ran on."""
    pytest.importorskip("fastapi")
    from ray import serve

    from gpusearch.serve._logs import serve_logging_config
    from gpusearch.serve.app import build_app
    from gpusearch.serve.config import ServeConfig

    from cross_encoder_model import build_cross_encoder

    # A real cross-encoder (the packaged MiniLM with a new one-label head) as the reranker, and the
    # Pinecone model names the SDK suites use mapped onto the server's own models.
    reranker = build_cross_encoder(str(tmp_path_factory.mktemp("reranker") / "minilm-cross-encoder"))
    cfg = ServeConfig(data_dir=str(tmp_path_factory.mktemp("served")), host="127.0.0.1", port=free_port(),
                      shards=2, replicas=2, api_keys={RW_KEY: "rw", RO_KEY: "ro", **SCOPED_KEYS}, max_batch=500,
                      shard_timeout_s=20.0, fsync=True, device="cpu", reranker=reranker,
                      model_aliases={"multilingual-e5-large": "encoder", "bge-reranker-v2-m3": "reranker"})
    logging_config = serve_logging_config(cfg)  # what `gpusearch serve` uses: one line per request
    serve.start(http_options={"host": cfg.host, "port": cfg.port}, logging_config=logging_config)
    serve.run(build_app(cfg), name=cfg.app_name, route_prefix="/", logging_config=logging_config)
    try:
        yield cfg
    finally:
        serve.shutdown()
