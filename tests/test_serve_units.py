"""Serve pieces that need no running Ray: config, GPU shares, and the aggregator's merge, retry and
``partial`` logic over shard handles that answer late or die (stand-ins for DeploymentHandles).

No cluster: ``ray.init`` raises here (as in Ray Serve's own unit tests), so a test that would start
Ray, or let Ray start itself on first use, fails and says so. Tests that need the served app belong
in tests/test_serve.py."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import threading

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from gpusearch.catalog import Catalog, CatalogReader, ShardCatalog  # noqa: E402
from gpusearch.serve.app import gpus_per_shard_replica  # noqa: E402
from gpusearch.serve.config import ServeConfig  # noqa: E402


@pytest.fixture(autouse=True)
def no_ray_cluster(monkeypatch):
    """``ray.init`` raises: these tests must not start Ray (nor have Ray start itself on first use)."""
    def refuse(*args, **kwargs):
        raise RuntimeError("tests/test_serve_units.py needs no Ray cluster, but something called ray.init; "
                           "test it with stand-ins here, or move it to tests/test_serve.py (the served app)")

    monkeypatch.setattr(ray, "init", refuse)


def test_ray_init_is_refused():
    with pytest.raises(RuntimeError, match="needs no Ray cluster"):
        ray.init()


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
    """``handle.method.remote(*args)``: the arguments go through pickle, as Ray sends them to a replica."""

    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        import pickle

        return _Response(self.fn(*pickle.loads(pickle.dumps(args))))


class _ShardHandle:
    """A Shard deployment's handle answering from a real ShardCatalog, as ShardServer does
    (``search(collection, request)`` -> ``(Hits, info, seconds, batch size)``); it can be slow, or die
    a number of times first."""

    def __init__(self, catalog, delay=0.0, deaths=0):
        from ray.exceptions import ActorDiedError

        self.catalog, self.delay, self.deaths, self.calls = catalog, delay, deaths, 0
        self.answers = []  # what it sent back: (Hits, info) or the exception

        async def search(collection, request):
            self.calls += 1
            if self.deaths:
                self.deaths -= 1
                raise ActorDiedError()
            await asyncio.sleep(self.delay)
            out = self.catalog.search_batch([(collection, request)])[0]
            self.answers.append(out)
            if isinstance(out, Exception):
                raise out
            return (*out, 0.0, 1)

        async def fetch(collection, ids):
            return self.catalog.fetch(collection, ids)

        async def stats():
            return self.catalog.stats()

        self.search, self.fetch, self.stats = _Method(search), _Method(fetch), _Method(stats)


def _aggregator(cfg, handles, writer=None):
    """The Aggregator deployment's own class over stand-in handles (no Ray). Serve's deployment wraps
    it for the FastAPI ingress (an async constructor Serve awaits): the class is that wrapper's base.
    Without the encoder unless a test puts one in."""
    from gpusearch.serve.deployments import Aggregator, AggregatorServer

    assert Aggregator.func_or_class.__bases__[0] is AggregatorServer
    return AggregatorServer({**cfg.to_dict(), "encoder_enabled": False}, writer, *handles)


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
    assert r.ids == ref.ids and not r.info["partial"]
    for a, b in zip(r.scores, ref.scores):
        np.testing.assert_allclose(a, b, rtol=1e-6)


@contextlib.contextmanager
def access_lines():
    """The access log's lines (messages) written inside the block, at INFO."""
    access, got, lines = logging.getLogger("gpusearch.access"), [], []
    grab = logging.Handler()
    grab.emit = got.append
    access.addHandler(grab)  # the replica's set-up may keep gpusearch.* from the root logger (and caplog)
    level = access.level
    access.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        access.removeHandler(grab)
        access.setLevel(level)
        lines.extend(r.getMessage() for r in got)


def test_handle_calls_write_one_access_line_each(two_shards):
    """A Python handle's read gets the access line an HTTP request gets: method HANDLE, the call's
    name, its status (the error's HTTP status when it fails), time and collection; never the query."""
    from gpusearch.errors import CollectionNotFoundError

    path, X, cat = two_shards
    agg = _aggregator(ServeConfig(data_dir=str(path), shards=2),
                      [_ShardHandle(ShardCatalog(path, i, device="cpu")) for i in range(2)])
    with access_lines() as lines:
        asyncio.run(agg.query("c", X[:1], 3))
        asyncio.run(agg.fetch("c", ["i1"]))
        with pytest.raises(CollectionNotFoundError):
            asyncio.run(agg.query("nope", X[:1], 3))
    assert len(lines) == 3, lines
    assert re.fullmatch(r"HANDLE query 200 [0-9.]+ms collection=c", lines[0]), lines
    assert re.fullmatch(r"HANDLE fetch 200 [0-9.]+ms collection=c", lines[1]), lines
    assert re.fullmatch(r"HANDLE query 404 [0-9.]+ms collection=nope", lines[2]), lines
    assert agg.in_flight == 0


def test_aggregator_retries_a_dead_replica_and_reports_a_late_shard(two_shards):
    path, X, cat = two_shards
    cfg = ServeConfig(data_dir=str(path), shards=2, shard_timeout_s=0.5)
    dying = _ShardHandle(ShardCatalog(path, 0, device="cpu"), deaths=2)
    late = _ShardHandle(ShardCatalog(path, 1, device="cpu"), delay=5.0)
    r = asyncio.run(_aggregator(cfg, [dying, late]).query("c", X[:1], 5))
    assert dying.calls == 3  # two deaths, then an answer
    assert r.info["partial"] and r.info["missing_shards"] == [1]
    held = set(ShardCatalog(path, 0, device="cpu").follower("c").shard.ids)
    assert r.ids[0] and set(r.ids[0]) <= held


def test_exact_rerank_reorders_by_full_precision(two_shards):
    path, X, cat = two_shards
    cfg = ServeConfig(data_dir=str(path), shards=2, rerank="exact", overfetch=3)
    agg = _aggregator(cfg, [_ShardHandle(ShardCatalog(path, i, device="cpu")) for i in range(2)])
    r = asyncio.run(agg.query("c", X[:2], 4, include_metadata=True))
    ref = cat.get("c").search(X[:2], k=4)
    assert r.ids == ref.ids and r.vectors is None


def test_filter_on_a_field_only_another_shard_has(tmp_path):
    cat = Catalog(tmp_path, shards=2, device="cpu", fsync=False)
    from gpusearch import shard_of

    a = next(f"x{i}" for i in range(100) if shard_of(f"x{i}", 2) == 0)
    cat.upsert("c", [a], np.ones((1, 4), np.float32), [{"only_here": 1}])
    cat.upsert("c", ["other"] if shard_of("other", 2) == 1 else ["other2"], np.ones((1, 4), np.float32))
    request = CatalogReader(tmp_path).request("c", np.ones((1, 4), np.float32), 3, filter={"only_here": {"$eq": 1}})
    out = ShardCatalog(tmp_path, 1, device="cpu").search_batch([("c", request)])
    assert not isinstance(out[0], Exception), out[0]
    assert out[0][0].counts.tolist() == [0]
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
    deploy = yaml.safe_load((configs / "multi-node.yaml").read_text())
    ServeDeploySchema.model_validate(deploy) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(deploy)
    cfg = ServeConfig.load(None, env={"GPUSEARCH_API_KEYS": "k:rw"}, **deploy["applications"][0]["args"])
    assert (cfg.replication, cfg.writer_resources, cfg.backup_uri) == (
        "ray", {"gpusearch_writer": 1.0}, "s3://my-bucket/gpusearch-backups")
    assert cfg.storage_uri == "s3://my-bucket/gpusearch-data"


def test_replication_and_backup_settings_are_checked():
    with pytest.raises(ValueError, match="replication must be 'shared' or 'ray'"):
        ServeConfig(replication="nfs")
    with pytest.raises(ValueError, match="writer_resources must map Ray resource names to positive numbers"):
        ServeConfig(writer_resources={"gpusearch_writer": 0})
    with pytest.raises(ValueError, match="backup_locations must be a list"):
        ServeConfig(backup_locations="s3://b/x")
    cfg = ServeConfig.load(None, env={"GPUSEARCH_REPLICATION": "ray", "GPUSEARCH_SHARD_RESOURCES": '{"slot": 1}',
                                      "GPUSEARCH_BACKUP_LOCATIONS": "s3://b/x,/srv/bk"})
    assert (cfg.replication, cfg.shard_resources, cfg.backup_locations) == ("ray", {"slot": 1.0}, ["s3://b/x", "/srv/bk"])
    assert cfg.backup_uri == cfg.data_dir + "-backups"
    assert cfg.storage_uri is None
    with pytest.raises(ValueError, match="storage_uri needs replication 'ray'"):
        ServeConfig(storage_uri="s3://b/gs")
    with pytest.raises(ValueError, match="storage_uri must be outside data_dir"):
        ServeConfig(replication="ray", data_dir="/tmp/gsd", storage_uri="/tmp/gsd/bucket")
    cfg = ServeConfig.load(None, env={"GPUSEARCH_REPLICATION": "ray", "GPUSEARCH_STORAGE_URI": "s3://b/gs?region=x"})
    assert cfg.storage_uri == "s3://b/gs?region=x"


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

    from gpusearch.serve import _auth

    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(_auth.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    keys = {"k-rw-0123": "rw", "k-ro-4567": "ro", "k-ro-89ab": "ro"}
    assert _auth.key_role(keys, "k-rw-0123") == "rw"
    assert len(calls) == 3
    calls.clear()
    assert _auth.key_role(keys, "k-ro-89ab") == "ro" and len(calls) == 3
    calls.clear()
    assert _auth.key_role(keys, "nope") is None and len(calls) == 3
    assert _auth.key_role(keys, "k-rw-012") is None  # a prefix is not a match
    assert _auth.key_role(keys, "\udcff") is None  # a lone surrogate in a header does not crash


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

    from gpusearch.serve import _auth
    from gpusearch.serve.config import KeyGrant

    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(_auth.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    grants = {"k-rw": KeyGrant("rw"), "k-docs": KeyGrant("ro", frozenset({"docs"})), "k-x": KeyGrant("ro")}
    assert _auth.key_grant(grants, "k-docs") == KeyGrant("ro", frozenset({"docs"})) and len(calls) == 3
    assert _auth.key_grant(grants, "k-doc") is None and len(calls) == 6
    assert _auth.key_role({"k-docs": {"role": "ro", "collections": ["docs"]}}, "k-docs") == "ro"


def test_json_limits_name_the_limit():
    from gpusearch.errors import LimitExceededError
    from gpusearch.serve._limits import json_limits

    json_limits({"a": [1, {"b": 2}]}, "filter", 100, 3, "max_filter_bytes")
    with pytest.raises(LimitExceededError, match="filter nests deeper than 2 levels"):
        json_limits({"a": [1, {"b": 2}]}, "filter", 100, 2, "max_filter_bytes")
    with pytest.raises(LimitExceededError,
                       match="metadata is 20 bytes as JSON; the limit is 10 bytes \\(max_metadata_bytes\\)") as ei:
        json_limits({"t": "é" * 6}, "metadata", 10, 3, "max_metadata_bytes")
    assert (ei.value.limit_name, ei.value.limit, ei.value.value) == ("max_metadata_bytes", 10, 20)
    deep = []
    for _ in range(100000):  # far deeper than the stack: counted without recursion
        deep = [deep]
    with pytest.raises(LimitExceededError, match="deeper than 16"):
        json_limits(deep, "filter", 10**9, 16, "max_filter_bytes")


def test_openapi_states_the_servers_limits(tmp_path):
    from gpusearch.serve.http import openapi_with_limits

    doc = openapi_with_limits(ServeConfig(data_dir=str(tmp_path), max_top_k=77, max_batch=9, max_dim=33,
                                          api_keys={"k": "rw"}))
    s = doc["components"]["schemas"]
    assert s["QueryBody"]["properties"]["topK"]["maximum"] == 77
    assert s["UpsertBody"]["properties"]["vectors"]["maxItems"] == 9
    values = s["VectorIn"]["properties"]["values"]["anyOf"][0]  # optional: a sparse index's records have none
    assert values["maxItems"] == 33 and "sparseValues" in s["VectorIn"]["properties"]
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
    from gpusearch.serve._errors import error_response
    from gpusearch.wal import WALCorruptError

    full = error_response(DiskFullError(errno.ENOSPC, "no space left on device: appending failed", "/srv/d/wal.log"))
    body = json.loads(full.body)
    assert full.status_code == 507 and body["code"] == 8 and "disk is full" in body["message"]
    assert "/srv/d" not in body["message"]
    plain = error_response(OSError(errno.ENOSPC, "No space left on device"))
    assert plain.status_code == 507
    bad = error_response(WALCorruptError("WAL /srv/d/wal-1.log: bad magic at offset 0", "/srv/d/wal-1.log", 0))
    assert bad.status_code == 503 and "/srv/d" not in json.loads(bad.body)["message"]


def test_fault_hook_holds_while_its_file_exists(tmp_path, monkeypatch):
    """GPUSEARCH_FAULT_HOLD_SHARD_START (serve/_faults.py): no wait without the variable or the file;
    a wait that ends when the file goes, or at the bound."""
    from gpusearch.serve._faults import HOLD_SHARD_START, hold_while_file_exists

    hold = tmp_path / "hold"
    monkeypatch.delenv(HOLD_SHARD_START, raising=False)
    hold.touch()
    assert hold_while_file_exists() == 0.0  # the file alone does nothing
    monkeypatch.setenv(HOLD_SHARD_START, str(hold))
    assert hold_while_file_exists(max_s=0.2) >= 0.2  # gives up at the bound, file still there
    waited = []
    t = threading.Thread(target=lambda: waited.append(hold_while_file_exists(max_s=60)))
    t.start()
    hold.unlink()
    t.join(timeout=30)
    assert not t.is_alive() and waited and waited[0] < 30
    assert hold_while_file_exists() == 0.0  # the variable alone does nothing


# -- the one query path: one request, one result shape, errors by class ---------------------------
def test_each_tier_returns_its_type(two_shards):
    """Shards answer with columnar Hits (integer keys, their ids attached); the Aggregator merges them
    into the edge's answer, a SearchResult; HTTP writes that as Pinecone's JSON."""
    from gpusearch.hits import Hits
    from gpusearch.results import SearchResult
    from gpusearch.serve.http import _matches

    path, X, cat = two_shards
    request = CatalogReader(path).request("c", X[:2], 4, include_metadata=True)
    answers = ShardCatalog(path, 0, device="cpu").search_batch([("c", request), ("c", request.with_k(2))])
    for (hits, info), k in zip(answers, (4, 2)):
        assert isinstance(hits, Hits) and (hits.nq, hits.k) == (2, k)
        assert hits.keys.dtype == np.int64 and hits.scores.dtype == np.float32
        assert hits.ids.shape == (2, k) and all(isinstance(i, str) for i in hits.ids.ravel())
        assert set(info) >= {"metric", "dim", "index", "lineage", "sequence"}
    assert isinstance(ShardCatalog(path, 0, device="cpu").search_batch([("nope", request)])[0], Exception)

    shards = [_ShardHandle(ShardCatalog(path, i, device="cpu")) for i in range(2)]
    r = asyncio.run(_aggregator(ServeConfig(data_dir=str(path), shards=2), shards).query(
        "c", X[:2], 4, include_metadata=True))
    assert all(isinstance(a[0], Hits) and a[0].ids is not None for s in shards for a in s.answers)
    assert isinstance(r, SearchResult) and len(r) == 2
    assert all(isinstance(i, str) for row in r.ids for i in row) and r.scores[0].dtype == np.float32
    assert r.metadata is not None and len(r.metadata[0]) == 4
    assert r.info["collection"] == "c" and not r.info["partial"] and set(r.info["shard_seconds"]) == {0, 1}
    m = _matches(r, 0, values=False, metadata=True)
    assert [x["id"] for x in m] == r.ids[0] and isinstance(m[0]["score"], float) and "metadata" in m[0]


def test_filter_is_compiled_once_per_request(two_shards, monkeypatch):
    """One query fanned out to two shards compiles its filter once, at the edge: the shards get the
    compiled filter (through pickle, as a replica does) and never compile it again."""
    import sys

    import gpusearch.filters

    path, X, cat = two_shards
    cat.upsert("c", [f"m{j}" for j in range(40)], X[:40], [{"g": j % 4} for j in range(40)])
    real = gpusearch.filters.compile_filter
    calls = []

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    for module in list(sys.modules.values()):  # wherever a module bound the name
        if getattr(module, "__name__", "").startswith("gpusearch") and getattr(module, "compile_filter", None) is real:
            monkeypatch.setattr(module, "compile_filter", counting)
    shards = [_ShardHandle(ShardCatalog(path, i, device="cpu")) for i in range(2)]
    agg = _aggregator(ServeConfig(data_dir=str(path), shards=2), shards)
    r = asyncio.run(agg.query("c", X[:1], 5, filter={"g": {"$eq": 2}}, include_metadata=True))
    assert calls == [{"g": {"$eq": 2}}]
    assert all(s.calls == 1 for s in shards)  # fanned out to both
    assert len(r.ids[0]) == 5 and all(m == {"g": 2} for m in r.metadata[0])


def test_k_has_one_limit_and_one_message(two_shards):
    """The engine's check_top_k is the one k check: a handle's k (and, in test_serve, HTTP's topK) gets
    its message, against the engine's MAX_TOP_K by default or a server's lower max_top_k."""
    from gpusearch.errors import LimitExceededError
    from gpusearch.request import MAX_TOP_K, check_top_k
    from gpusearch.serve._errors import error_response

    path, X, cat = two_shards
    shards = [_ShardHandle(ShardCatalog(path, i, device="cpu")) for i in range(2)]
    with pytest.raises(LimitExceededError) as engine:
        check_top_k(MAX_TOP_K + 1)
    assert str(engine.value) == "k must be between 1 and 10000, got 10001"
    agg = _aggregator(ServeConfig(data_dir=str(path), shards=2), shards)
    assert agg.cfg.max_top_k == MAX_TOP_K
    with pytest.raises(LimitExceededError) as served:
        asyncio.run(agg.query("c", X[:1], MAX_TOP_K + 1))
    assert str(served.value) == str(engine.value)
    with pytest.raises(LimitExceededError, match="^k must be between 1 and 10000, got 10001$"):
        cat.get("c").search(X[:1], k=MAX_TOP_K + 1)
    response = error_response(served.value)
    assert response.status_code == 400 and __import__("json").loads(response.body)["message"] == str(engine.value)
    lower = _aggregator(ServeConfig(data_dir=str(path), shards=2, max_top_k=50), shards)
    with pytest.raises(LimitExceededError, match="^k must be between 1 and 50, got 51$"):
        asyncio.run(lower.query("c", X[:1], 51))
    assert all(s.calls == 0 for s in shards)  # refused at the edge


def test_max_top_k_above_the_engine_limit_refuses_to_build_the_app(tmp_path):
    from gpusearch.request import MAX_TOP_K
    from gpusearch.serve.app import app_builder

    assert ServeConfig(data_dir=str(tmp_path)).max_top_k == MAX_TOP_K
    assert ServeConfig(data_dir=str(tmp_path), max_top_k=MAX_TOP_K).max_top_k == MAX_TOP_K
    msg = f"max_top_k {MAX_TOP_K + 1000} is above the engine's limit MAX_TOP_K {MAX_TOP_K}"
    with pytest.raises(ValueError, match=msg):
        ServeConfig(data_dir=str(tmp_path), max_top_k=MAX_TOP_K + 1000)
    with pytest.raises(ValueError, match=msg):
        app_builder({"data_dir": str(tmp_path), "max_top_k": MAX_TOP_K + 1000})
    with pytest.raises(ValueError, match=msg):
        ServeConfig.load(None, env={"GPUSEARCH_MAX_TOP_K": str(MAX_TOP_K + 1000), "GPUSEARCH_DATA_DIR": str(tmp_path)})


def test_errors_map_to_http_by_class():
    """Each gpusearch.errors class has its status; an unexpected ValueError or TypeError is a bug (500)
    whose answer names only its class; a closed collection is a 503 that does not repeat its message
    (it names a server path); Ray's wrapper around a deployment's error is looked through."""
    import json

    from ray.exceptions import RayTaskError

    from gpusearch import errors as E
    from gpusearch.serve._errors import error_response

    def answer(e):
        r = error_response(e)
        return r.status_code, json.loads(r.body)

    cases = [(E.InvalidArgumentError("bad x", field="x"), 400, 3), (E.InvalidTypeError("x must be str"), 400, 3),
             (E.LimitExceededError("too many", limit_name="max_batch", limit=5, value=6), 400, 3),
             (E.UnauthenticatedError("missing Api-Key header"), 401, 16),
             (E.PermissionDeniedError("read-only"), 403, 7), (E.CollectionNotFoundError("no c", name="c"), 404, 5),
             (E.NotFoundError("no record r", kind="record", name="r"), 404, 5),
             (E.AlreadyExistsError("collection 'c' already exists"), 409, 6),
             (E.UnavailableError("every shard is down"), 503, 14), (E.DeadlineExceededError("too slow"), 504, 4)]
    for e, status, code in cases:
        got, body = answer(e)
        assert (got, body["code"], body["message"]) == (status, code, str(e)), type(e).__name__
        assert set(body) == {"code", "message", "details"}
    assert answer(E.LimitExceededError("k must be between 1 and 1000, got 1001", limit_name="MAX_TOP_K", limit=1000,
                                       value=1001, field="k"))[1]["details"] == [
        {"field": "topK", "limit": "MAX_TOP_K", "max": 1000, "got": 1001}]
    for bug in (ValueError("operands could not be broadcast in /srv/gpusearch/x.py"), TypeError("/srv/y"),
                KeyError("/srv/z")):
        status, body = answer(bug)
        assert status == 500 and body["code"] == 13 and "/srv" not in body["message"]
        assert body["message"] == f"internal error ({type(bug).__name__}); this is a bug, please report it"
    status, body = answer(E.ClosedError("collection /srv/data/collections/c is closed"))
    assert status == 503 and "/srv" not in body["message"] and "closed" in body["message"]
    wrapped = RayTaskError("search", "Traceback ... /srv/secret.py", E.CollectionNotFoundError("no collection 'q'"))
    assert answer(wrapped.as_instanceof_cause()) == (404, {"code": 5, "message": "no collection 'q'", "details": []})
    status, body = answer(RayTaskError("search", "tb", ValueError("/srv/boom")).as_instanceof_cause())
    assert status == 500 and "/srv" not in body["message"] and "ValueError" in body["message"]


class _FakeEncoder:
    """Text "t<i>" -> the i-th unit vector of ``dim``; counts its calls (each one forward pass)."""

    def __init__(self, dim):
        self.dim, self.calls, self.lineage = dim, [], {"model": "fake-model", "version": "1", "dim": dim}

    def encode(self, texts):
        import time

        import torch

        self.calls.append(list(texts))
        time.sleep(0.05)  # a forward pass takes a while: callers arriving meanwhile queue up
        return torch.eye(self.dim)[[int(t[1:]) for t in texts]]


def _with_encoder(agg, encoder):
    agg.encoder, agg._encoder_lineage = encoder, encoder.lineage
    return agg


def test_text_queries_are_embedded_in_the_aggregator_and_batched(tmp_path):
    """No Encoder hop: the Aggregator embeds text itself; texts that arrive while one forward pass runs
    share the next one; a collection of another model refuses text queries."""
    cat = Catalog(tmp_path, shards=2, device="cpu", fsync=False)
    enc = _FakeEncoder(8)
    cat.create("docs", dim=8, lineage=enc.lineage)
    cat.upsert("docs", [f"d{i}" for i in range(8)], np.eye(8, dtype=np.float32))
    cat.create("other", dim=8, lineage={"model": "another-model"})
    cat.upsert("other", ["x"], np.ones((1, 8), np.float32))
    shards = [_ShardHandle(ShardCatalog(tmp_path, i, device="cpu")) for i in range(2)]
    agg = _with_encoder(_aggregator(ServeConfig(data_dir=str(tmp_path), shards=2), shards), enc)

    async def many():
        first = asyncio.ensure_future(agg.query_text("docs", "t0", 1))
        await asyncio.sleep(0.01)  # the first forward pass is running
        rest = [asyncio.ensure_future(agg.query_text("docs", [f"t{i}"], 1)) for i in range(1, 6)]
        return await asyncio.gather(first, *rest)

    results = asyncio.run(many())
    assert [r.ids for r in results] == [[[f"d{i}"]] for i in range(6)]
    assert enc.calls == [["t0"], ["t1", "t2", "t3", "t4", "t5"]]
    assert asyncio.run(agg.encode(["t7", "t2"])).tolist() == np.eye(8, dtype=np.float32)[[7, 2]].tolist()
    from gpusearch.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="'another-model'.*'fake-model'"):
        asyncio.run(agg.query_text("other", "t1", 1))
    with pytest.raises(InvalidArgumentError, match="text is empty"):
        asyncio.run(agg.query_text("docs", "  ", 1))
    plain = _aggregator(ServeConfig(data_dir=str(tmp_path), shards=2), shards)
    with pytest.raises(InvalidArgumentError, match="encoder_enabled"):
        asyncio.run(plain.query_text("docs", "t1", 1))
    cat.close()


def _http_client(agg, monkeypatch):
    """FastAPI's test client on the app's routes, served by ``agg`` (Serve's replica context stubbed)."""
    from types import SimpleNamespace

    from fastapi.testclient import TestClient
    from ray import serve

    from gpusearch.serve.http import api

    monkeypatch.setattr(serve, "get_replica_context", lambda: SimpleNamespace(servable_object=agg))
    return TestClient(api)


def test_http_routes_without_a_cluster(two_shards, monkeypatch):
    """The routes on the Aggregator's own methods: a query answers like the collection; topK gets the
    engine's message; HTTP keeps its own checks (counts, ids, JSON size); a bad key is 401."""
    path, X, cat = two_shards
    shards = [_ShardHandle(ShardCatalog(path, i, device="cpu")) for i in range(2)]
    agg = _aggregator(ServeConfig(data_dir=str(path), shards=2, max_batch=3, api_keys={"k-ro": "ro"}), shards)
    http = _http_client(agg, monkeypatch)
    key = {"Api-Key": "k-ro"}
    r = http.post("/query", json={"namespace": "c", "vector": X[0].tolist(), "topK": 3}, headers=key)
    assert r.status_code == 200, r.text
    assert [m["id"] for m in r.json()["matches"]] == cat.get("c").search(X[0], k=3).ids[0]
    r = http.post("/query", json={"namespace": "c", "vector": X[0].tolist(), "topK": 10001}, headers=key)
    assert r.status_code == 400 and r.json()["message"] == "k must be between 1 and 10000, got 10001", r.text
    r = http.post("/query", json={"namespace": "c", "queries": [X[0].tolist()] * 4, "topK": 1}, headers=key)
    assert r.status_code == 400 and r.json()["message"] == "4 queries in one request; the limit is 3"
    r = http.post("/query", json={"namespace": "c", "vector": X[0].tolist()[:5], "topK": 1}, headers=key)
    assert r.status_code == 400 and "must have 8 columns" in r.json()["message"]
    r = http.post("/query", json={"namespace": "c", "id": "i0" * 300, "topK": 1}, headers=key)
    assert r.status_code == 400 and "max_id_length" in r.json()["message"]
    r = http.post("/query", json={"namespace": "c", "id": "missing", "topK": 1}, headers=key)
    assert r.status_code == 404 and "missing" in r.json()["message"]
    r = http.post("/query", json={"namespace": "nope", "vector": X[0].tolist(), "topK": 1}, headers=key)
    assert r.status_code == 404
    assert http.post("/query", json={"namespace": "c", "vector": X[0].tolist()}, headers={"Api-Key": "x"}
                     ).status_code == 401
    assert http.get("/healthz").json() == {"status": "ok"}
    assert [s.calls for s in shards] == [1, 1]  # only the good query reached the shards' search


def test_drain_refuses_new_requests_and_waits_for_those_under_way(two_shards, monkeypatch):
    """Stopping, without a cluster: a query under way (a slow shard) finishes with 200 while drain()
    waits for it; meanwhile /healthz says draining and new HTTP requests and handle calls get 503."""
    import threading

    from gpusearch.errors import UnavailableError

    import time

    path, X, _ = two_shards
    shards = [_ShardHandle(ShardCatalog(path, i, device="cpu")) for i in range(2)]
    gate = threading.Event()  # the query under way stays under way until the test lets it go
    for s in shards:
        inner = s.search.fn

        async def held(collection, request, inner=inner):
            await asyncio.to_thread(gate.wait, 60)
            return await inner(collection, request)
        s.search = _Method(held)
    agg = _aggregator(ServeConfig(data_dir=str(path), shards=2), shards)
    http = _http_client(agg, monkeypatch)
    slow: list = []
    t = threading.Thread(target=lambda: slow.append(http.post("/query", json={"namespace": "c", "vector":
                                                                            X[0].tolist(), "topK": 2})))
    t.start()
    deadline = time.monotonic() + 60
    while agg.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert agg.in_flight == 1
    left: list = []
    d = threading.Thread(target=lambda: left.append(asyncio.run(agg.drain(60.0))))
    d.start()
    while not agg.draining and time.monotonic() < deadline:
        time.sleep(0.005)
    r = http.get("/healthz")
    assert r.status_code == 503 and r.json() == {"status": "draining"} and r.headers["retry-after"] == "1"
    r = http.post("/query", json={"namespace": "c", "vector": X[0].tolist(), "topK": 2})
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and "stopping" in r.json()["message"]
    with pytest.raises(UnavailableError, match="stopping"):
        asyncio.run(agg.query("c", X[:1], 2))
    assert d.is_alive() and not slow  # drain() waits for the query it let in
    gate.set()
    t.join(60)
    d.join(60)
    assert slow[0].status_code == 200 and len(slow[0].json()["matches"]) == 2
    assert left == [0] and agg.in_flight == 0


def test_stop_and_log_settings_are_checked():
    from gpusearch.serve._logs import serve_logging_config

    cfg = ServeConfig(log_level="debug", log_format="json", drain_grace_s=2)
    assert (cfg.log_level, cfg.drain_grace_s) == ("DEBUG", 2.0)
    lc = serve_logging_config(cfg)
    assert str(lc.encoding).endswith("JSON") and lc.enable_access_log is False and lc.log_level == "DEBUG"
    with pytest.raises(ValueError, match="log_format must be 'text' or 'json'"):
        ServeConfig(log_format="xml")
    with pytest.raises(ValueError, match="log_level must be one of DEBUG, INFO, WARNING, ERROR"):
        ServeConfig(log_level="loud")
    with pytest.raises(ValueError, match="drain_grace_s must be a number of seconds"):
        ServeConfig(drain_grace_s=-1)
    assert ServeConfig.load(None, env={"GPUSEARCH_DRAIN_GRACE_S": "7.5"}).drain_grace_s == 7.5


def test_the_aggregators_copy_of_the_catalog_follows_the_writer(tmp_path):
    """replication "ray": the Aggregator reads a copy of the Writer's small catalog files (Writer.meta_sync,
    _CatalogCopy.apply): new collections, aliases and fields arrive, a drop removes the collection, and an
    unchanged catalog costs an answer without files."""
    from gpusearch.errors import CollectionNotFoundError
    from gpusearch.serve.deployments import Writer, _CatalogCopy

    W = Writer.func_or_class
    w = W.__new__(W)
    w.catalog = Catalog(tmp_path / "data", shards=2, device="cpu", fsync=False)
    w.identity = "writer-1"
    copy = _CatalogCopy(writer=None, root=str(tmp_path / "agg"))
    reader = CatalogReader(copy.dir)
    w.catalog.upsert("docs", ["a"], np.ones((1, 4), np.float32), [{"lang": "en"}])
    copy.apply(W.meta_sync(w, copy.token))
    assert reader.info("docs").dim == 4 and reader.schema("docs") == {"lang": "string"}
    again = W.meta_sync(w, copy.token)
    assert again == {"token": copy.token}  # nothing changed: no files
    w.catalog.set_alias("latest", "docs")
    w.catalog.upsert("docs", ["b"], np.ones((1, 4), np.float32), [{"year": 2020}])
    w.catalog.create("other", dim=3)
    copy.apply(W.meta_sync(w, copy.token))
    assert reader.resolve("latest") == "docs" and reader.info("other").dim == 3
    assert set(reader.schema("docs")) == {"lang", "year"}
    w.catalog.drop_alias("latest")
    w.catalog.drop("other")
    copy.apply(W.meta_sync(w, copy.token))
    assert reader.resolve("latest") == "latest"
    with pytest.raises(CollectionNotFoundError):
        reader.info("other")
    # another Writer (a takeover) is another identity: everything is sent again
    w.identity = "writer-2"
    assert "files" in W.meta_sync(w, copy.token)
    w.catalog.close()
    copy.close()


def test_handle_writes_are_logged_and_refused_once_stopping(tmp_path, rng):
    """A Python handle's writes (Client.upsert, delete, ...) go through Writer.handle_call: one access line
    each, as for the reads (never ids, vectors or metadata), and 503 once the stop has begun, while the
    writes the Aggregator forwards for requests it took before its own drain still run."""
    from gpusearch.errors import InvalidArgumentError, UnavailableError
    from gpusearch.serve.deployments import Writer

    w = Writer.func_or_class(ServeConfig(data_dir=str(tmp_path / "data"), shards=2, fsync=False).to_dict())
    X = rng.standard_normal((3, 4)).astype(np.float32)
    with access_lines() as lines:
        r = asyncio.run(w.handle_call("upsert", "docs", ["a", "b", "c"], X, [{"secret": "s3cr3t"}] * 3))
        assert r["count"] == 3
        asyncio.run(w.handle_call("set_alias", "latest", "docs"))
        with pytest.raises(InvalidArgumentError, match="dimension|dim"):
            asyncio.run(w.handle_call("upsert", "docs", ["d"], np.ones((1, 5), np.float32)))
        with pytest.raises(InvalidArgumentError, match="a handle may call upsert, delete"):
            asyncio.run(w.handle_call("_upsert", "docs", ["d"], X[:1], None))
        w.drain()
        with pytest.raises(UnavailableError, match="stopping"):
            asyncio.run(w.handle_call("delete", "docs", ["a"]))
        assert asyncio.run(w.delete("docs", ["a"]))["count"] == 1  # the Aggregator's, admitted before its drain
        assert asyncio.run(w.close(5.0))["checkpointed"]
    assert len(lines) == 4, lines
    assert re.fullmatch(r"HANDLE upsert 200 [0-9.]+ms collection=docs", lines[0]), lines
    assert re.fullmatch(r"HANDLE set_alias 200 [0-9.]+ms collection=docs", lines[1]), lines
    assert re.fullmatch(r"HANDLE upsert 400 [0-9.]+ms collection=docs", lines[2]), lines
    assert re.fullmatch(r"HANDLE delete 503 [0-9.]+ms collection=docs", lines[3]), lines
    assert not any("s3cr3t" in line or "secret" in line for line in lines)


def test_local_ray_listens_on_loopback_unless_a_cluster_is_named(monkeypatch):
    from gpusearch._ray import local_ray_kwargs

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert local_ray_kwargs() == {"_node_ip_address": "127.0.0.1"}
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")  # connecting to a cluster: its address is its own
    assert local_ray_kwargs() == {}
    monkeypatch.setenv("RAY_ADDRESS", "")
    assert local_ray_kwargs() == {"_node_ip_address": "127.0.0.1"}


def test_the_writer_builds_indexes_on_every_core(tmp_path, monkeypatch):
    """The Writer inserts into HNSW on every upsert and trains IVF: batch work it used to run on the one
    OpenMP thread Ray gives a fractional-CPU actor (ingest of 40k x 384 into HNSW32 on the 2-core VM:
    1,900-2,300 records/s on one thread, 2,800-3,500 on both)."""
    from gpusearch.serve import deployments

    asked = []
    monkeypatch.setattr(deployments, "_set_search_threads", asked.append)
    w = deployments.Writer.func_or_class(ServeConfig(data_dir=str(tmp_path / "data"), fsync=False).to_dict())
    assert asked == [os.cpu_count() or 1]
    asyncio.run(w.close(5.0))
