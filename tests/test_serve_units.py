"""Serve pieces that need no running Ray: config, GPU shares, and the aggregator's merge, retry and
``partial`` logic over shard handles that answer late or die (stand-ins for DeploymentHandles)."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gpusearch.catalog import Catalog, ShardCatalog
from gpusearch.serve.app import gpus_per_shard_replica
from gpusearch.serve.config import ServeConfig

pytest.importorskip("ray")


def test_config_sources(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("shards: 3\nport: 9001\n")
    cfg = ServeConfig.load(f, env={"GPUSEARCH_PORT": "9002", "GPUSEARCH_FSYNC": "false"}, replicas=2)
    assert (cfg.shards, cfg.port, cfg.replicas, cfg.fsync) == (3, 9002, 2, False)
    f.write_text("shard: 3\n")
    with pytest.raises(ValueError, match="unknown settings \\['shard'\\]"):
        ServeConfig.load(f, env={})
    with pytest.raises(ValueError, match="GPUSEARCH_PORT must be an int"):
        ServeConfig.load(None, env={"GPUSEARCH_PORT": "x"})
    assert ServeConfig.load(None, env={"GPUSEARCH_NUM_GPUS_SHARD": "0.5"}).num_gpus_shard == 0.5
    with pytest.raises(ValueError, match="roles are 'rw' or 'ro'"):
        ServeConfig(api_keys={"k": "admin"})


def test_refuses_public_host_without_keys():
    from gpusearch.serve.app import build_app

    with pytest.raises(ValueError, match="only listens on loopback"):
        build_app(ServeConfig(host="0.0.0.0"))


def test_gpu_share():
    assert gpus_per_shard_replica(ServeConfig(shards=4, replicas=2), 0) == 0
    assert gpus_per_shard_replica(ServeConfig(shards=4, replicas=2), 4) == pytest.approx(4 / 9, abs=1e-4)
    assert gpus_per_shard_replica(ServeConfig(shards=1, replicas=1, encoder_enabled=False), 8) == 1.0
    assert gpus_per_shard_replica(ServeConfig(num_gpus_shard=0.5), 8) == 0.5


class _Response:
    def __init__(self, coro):
        self._task = asyncio.ensure_future(coro)

    def __await__(self):
        return self._task.__await__()

    def cancel(self):
        self._task.cancel()


class _Method:
    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        return _Response(self.fn(*args))


class _ShardHandle:
    """Answers from a real ShardCatalog; can be slow, or die a number of times first."""

    def __init__(self, catalog, delay=0.0, deaths=0):
        from ray.exceptions import ActorDiedError

        self.catalog, self.delay, self.deaths, self.calls = catalog, delay, deaths, 0

        async def search(req):
            self.calls += 1
            if self.deaths:
                self.deaths -= 1
                raise ActorDiedError()
            await asyncio.sleep(self.delay)
            return (*self.catalog.search_batch([req])[0], 0.0, 1)

        self.search = _Method(search)


def _aggregator(cfg, handles):
    from gpusearch.serve.deployments import Aggregator

    return Aggregator.func_or_class(cfg.to_dict(), *handles)


@pytest.fixture
def two_shards(tmp_path, rng):
    cat = Catalog(tmp_path, shards=2, device="cpu", fsync=False)
    X = rng.standard_normal((100, 8)).astype(np.float32)
    cat.upsert("c", [f"i{j}" for j in range(100)], X)
    yield tmp_path, X, cat
    cat.close()


def test_aggregator_merges_like_the_collection(two_shards):
    path, X, cat = two_shards
    cfg = ServeConfig(data_dir=str(path), shards=2)
    agg = _aggregator(cfg, [_ShardHandle(ShardCatalog(path, i, device="cpu")) for i in range(2)])
    r = asyncio.run(agg.query("c", X[:3], 5))
    ref = cat.get("c").search(X[:3], k=5)
    assert r["ids"] == ref.ids and not r["partial"]
    for a, b in zip(r["scores"], ref.scores):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_aggregator_retries_a_dead_replica_and_reports_a_late_shard(two_shards):
    path, X, cat = two_shards
    cfg = ServeConfig(data_dir=str(path), shards=2, shard_timeout_s=0.5)
    dying = _ShardHandle(ShardCatalog(path, 0, device="cpu"), deaths=2)
    late = _ShardHandle(ShardCatalog(path, 1, device="cpu"), delay=5.0)
    r = asyncio.run(_aggregator(cfg, [dying, late]).query("c", X[:1], 5))
    assert dying.calls == 3  # two deaths, then an answer
    assert r["partial"] and r["missing_shards"] == [1]
    held = set(ShardCatalog(path, 0, device="cpu").follower("c").shard.ids)
    assert r["ids"][0] and set(r["ids"][0]) <= held


def test_exact_rerank_reorders_by_full_precision(two_shards):
    path, X, cat = two_shards
    cfg = ServeConfig(data_dir=str(path), shards=2, rerank="exact", overfetch=3)
    agg = _aggregator(cfg, [_ShardHandle(ShardCatalog(path, i, device="cpu")) for i in range(2)])
    r = asyncio.run(agg.query("c", X[:2], 4, include_metadata=True))
    ref = cat.get("c").search(X[:2], k=4)
    assert r["ids"] == ref.ids and r["vectors"] is None


def test_filter_on_a_field_only_another_shard_has(tmp_path):
    cat = Catalog(tmp_path, shards=2, device="cpu", fsync=False)
    from gpusearch import shard_of

    a = next(f"x{i}" for i in range(100) if shard_of(f"x{i}", 2) == 0)
    cat.upsert("c", [a], np.ones((1, 4), np.float32), [{"only_here": 1}])
    cat.upsert("c", ["other"] if shard_of("other", 2) == 1 else ["other2"], np.ones((1, 4), np.float32))
    out = ShardCatalog(tmp_path, 1, device="cpu").search_batch(
        [__import__("gpusearch.catalog", fromlist=["SearchRequest"]).SearchRequest(
            "c", np.ones((1, 4), np.float32), 3, {"only_here": {"$eq": 1}})])
    assert not isinstance(out[0], Exception), out[0]
    assert out[0][0].ids == [[]]
    cat.close()


def test_shipped_configs_are_valid():
    import yaml
    from pathlib import Path

    from ray.serve.schema import ServeDeploySchema

    configs = Path(__file__).resolve().parent.parent / "serve" / "configs"
    local = ServeConfig.load(configs / "local.yaml", env={})
    assert (local.host, local.port, local.shards) == ("127.0.0.1", 8000, 2)
    deploy = yaml.safe_load((configs / "multi-gpu.yaml").read_text())
    ServeDeploySchema.model_validate(deploy) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(deploy)
    args = deploy["applications"][0]["args"]
    cfg = ServeConfig.load(None, env={"GPUSEARCH_API_KEYS": "k:rw"}, **args)
    assert (cfg.shards, cfg.replicas, cfg.num_gpus_shard) == (4, 2, 0.45)


def test_greedy_batcher_takes_everything_that_queued():
    from gpusearch.serve.batching import GreedyBatcher

    sizes = []

    async def handler(items):
        sizes.append(len(items))
        await asyncio.sleep(0.05)
        return [ValueError(f"bad {i}") if i == 7 else i * 10 for i in items]

    async def main():
        b = GreedyBatcher(handler, max_size=64)
        first = asyncio.ensure_future(b.submit(0))
        await asyncio.sleep(0.01)  # the first batch (one item) is running
        rest = [asyncio.ensure_future(b.submit(i)) for i in range(1, 10)]
        out = await asyncio.gather(first, *rest, return_exceptions=True)
        return out

    out = asyncio.run(main())
    assert sizes == [1, 9]
    assert out[:7] == [0, 10, 20, 30, 40, 50, 60] and isinstance(out[7], ValueError) and out[9] == 90


def test_api_keys_are_compared_in_constant_time(monkeypatch):
    """Every configured key goes through hmac.compare_digest, with no early exit and no dict lookup."""
    import hmac

    from gpusearch.serve import http

    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(http.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    keys = {"k-rw-0123": "rw", "k-ro-4567": "ro", "k-ro-89ab": "ro"}
    assert http.key_role(keys, "k-rw-0123") == "rw"
    assert len(calls) == 3
    calls.clear()
    assert http.key_role(keys, "k-ro-89ab") == "ro" and len(calls) == 3
    calls.clear()
    assert http.key_role(keys, "nope") is None and len(calls) == 3
    assert http.key_role(keys, "k-rw-012") is None  # a prefix is not a match
    assert http.key_role(keys, "\udcff") is None  # a lone surrogate in a header does not crash


def test_search_threads_default_shares_the_cores_and_bad_values_are_refused(tmp_path):
    from gpusearch.serve import ServeConfig

    assert ServeConfig(data_dir=str(tmp_path), shards=1, replicas=1).shard_search_threads(cores=16) == 16
    assert ServeConfig(data_dir=str(tmp_path), shards=2, replicas=2).shard_search_threads(cores=16) == 4
    assert ServeConfig(data_dir=str(tmp_path), shards=4, replicas=2).shard_search_threads(cores=2) == 1
    assert ServeConfig(data_dir=str(tmp_path), search_threads=3).shard_search_threads(cores=16) == 3
    for bad in (0, -1, 2.5, True, "4"):
        with pytest.raises(ValueError, match="search_threads must be an int"):
            ServeConfig(data_dir=str(tmp_path), search_threads=bad)
    cfg = ServeConfig.load(None, env={"GPUSEARCH_SEARCH_THREADS": "2", "GPUSEARCH_DATA_DIR": str(tmp_path)})
    assert cfg.search_threads == 2


def test_api_keys_scoped_to_collections_from_yaml_env_and_code(tmp_path):
    """Old forms keep working; a key may be limited to some collections; bad forms are refused by name."""
    from gpusearch.serve.config import KeyGrant

    cfg = ServeConfig.load(None, env={"GPUSEARCH_API_KEYS": "a:rw, b:ro ,c,d:ro:docs|faq, e:rw:x.1|__default__"})
    grants = cfg.key_grants()
    assert grants["a"] == KeyGrant("rw") and grants["b"] == KeyGrant("ro") and grants["c"] == KeyGrant("rw")
    assert grants["d"] == KeyGrant("ro", frozenset({"docs", "faq"})) and grants["d"].scoped
    assert grants["e"].collections == {"x.1", "default"}  # Pinecone's default namespace is "default"
    assert cfg.api_keys["a"] == "rw" and cfg.api_keys["d"] == {"role": "ro", "collections": ["docs", "faq"]}
    # the normalized form travels to replicas (ServeConfig(**to_dict())) unchanged
    assert ServeConfig(**cfg.to_dict()).key_grants() == grants
    f = tmp_path / "keys.yaml"
    f.write_text("api_keys:\n  s3cret: rw\n  reader: {role: ro, collections: [docs]}\n  bot: {collections: [faq]}\n")
    grants = ServeConfig.load(f, env={}).key_grants()
    assert grants == {"s3cret": KeyGrant("rw"), "reader": KeyGrant("ro", frozenset({"docs"})),
                      "bot": KeyGrant("rw", frozenset({"faq"}))}
    for keys, match in [({"k": {"role": "ro", "collections": []}}, "collections is empty"),
                        ({"k": {"role": "ro", "collections": "docs"}}, "must be a list"),
                        ({"k": {"role": "ro", "colections": ["docs"]}}, "unknown fields \\['colections'\\]"),
                        ({"k": {"role": "admin"}}, "roles are 'rw' or 'ro'"),
                        ({"k": {"role": "ro", "collections": ["bad name"]}}, "collection name must be"),
                        ({"k": 3}, "expected 'rw', 'ro' or"),
                        ({"k k": "rw"}, "no whitespace")]:
        with pytest.raises(ValueError, match=match):
            ServeConfig(data_dir=str(tmp_path), api_keys=keys)
    for raw, match in [("k:ro:docs:x", "more ':'"), ("k:ro:|", "collections is empty"), (":rw", "no key"),
                       ("k:rw,k:ro", "twice"), ("k:admin", "roles are")]:
        with pytest.raises(ValueError, match=match):
            ServeConfig.load(None, env={"GPUSEARCH_API_KEYS": raw, "GPUSEARCH_DATA_DIR": str(tmp_path)})


def test_key_grant_is_constant_time_with_scoped_keys(monkeypatch):
    """A scoped key is found like any other: every configured key through compare_digest."""
    import hmac

    from gpusearch.serve import http
    from gpusearch.serve.config import KeyGrant

    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(http.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    grants = {"k-rw": KeyGrant("rw"), "k-docs": KeyGrant("ro", frozenset({"docs"})), "k-x": KeyGrant("ro")}
    assert http.key_grant(grants, "k-docs") == KeyGrant("ro", frozenset({"docs"})) and len(calls) == 3
    assert http.key_grant(grants, "k-doc") is None and len(calls) == 6
    assert http.key_role({"k-docs": {"role": "ro", "collections": ["docs"]}}, "k-docs") == "ro"


def test_json_limits_name_the_limit():
    from gpusearch.serve.http import ApiError, json_limits

    json_limits({"a": [1, {"b": 2}]}, "filter", 100, 3, "max_filter_bytes")
    with pytest.raises(ApiError, match="filter nests deeper than 2 levels"):
        json_limits({"a": [1, {"b": 2}]}, "filter", 100, 2, "max_filter_bytes")
    with pytest.raises(ApiError, match="metadata is 20 bytes as JSON; the limit is 10 bytes \\(max_metadata_bytes\\)"):
        json_limits({"t": "é" * 6}, "metadata", 10, 3, "max_metadata_bytes")
    deep = []
    for _ in range(100000):  # far deeper than the stack: counted without recursion
        deep = [deep]
    with pytest.raises(ApiError, match="deeper than 16"):
        json_limits(deep, "filter", 10**9, 16, "max_filter_bytes")


def test_openapi_states_the_servers_limits(tmp_path):
    from gpusearch.serve.http import openapi_with_limits

    doc = openapi_with_limits(ServeConfig(data_dir=str(tmp_path), max_top_k=77, max_batch=9, max_dim=33,
                                          api_keys={"k": "rw"}))
    s = doc["components"]["schemas"]
    assert s["QueryBody"]["properties"]["topK"]["maximum"] == 77
    assert s["UpsertBody"]["properties"]["vectors"]["maxItems"] == 9
    assert s["VectorIn"]["properties"]["values"]["maxItems"] == 33 and "sparseValues" not in s["VectorIn"]["properties"]
    assert s["CreateBody"]["properties"]["dimension"]["maximum"] == 33
    upsert = doc["paths"]["/vectors/upsert"]["post"]
    assert "422" not in upsert["responses"] and upsert["responses"]["413"]["content"]
    assert upsert["security"] == [{"ApiKey": []}]


def test_disk_full_and_a_damaged_wal_are_server_side_errors():
    """A full disk is a 507 that names no server path; a WAL that cannot be opened without losing
    acknowledged records is a 503, not the client's 400; both say what the client can do."""
    import errno
    import json

    from gpusearch.fileio import DiskFullError
    from gpusearch.serve.http import error_response
    from gpusearch.wal import WALCorruptError

    full = error_response(DiskFullError(errno.ENOSPC, "no space left on device: appending failed", "/srv/d/wal.log"))
    body = json.loads(full.body)
    assert full.status_code == 507 and body["code"] == 8 and "disk is full" in body["message"]
    assert "/srv/d" not in body["message"]
    plain = error_response(OSError(errno.ENOSPC, "No space left on device"))
    assert plain.status_code == 507
    bad = error_response(WALCorruptError("WAL /srv/d/wal-1.log: bad magic at offset 0", "/srv/d/wal-1.log", 0))
    assert bad.status_code == 503 and "/srv/d" not in json.loads(bad.body)["message"]
    assert error_response(ValueError("k must be positive")).status_code == 400
