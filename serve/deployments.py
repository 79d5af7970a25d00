"""The Ray Serve deployments: Writer, Shard<i>, Aggregator and Encoder. Thin wrappers over gpusearch.

- **Writer** (one replica): the writable :class:`gpusearch.catalog.Catalog`. Appends each
  write to the shard WALs, fsyncs, commits, and acknowledges with the sequence number.
- **Shard<i>** (one deployment per shard number, ``replicas`` replicas each): shard ``i``
  of every collection, read-only (:class:`gpusearch.catalog.ShardCatalog`). Before each
  batch it catches up with what the Writer made durable, so a query sent after an
  acknowledged write sees it; a replica loads and replays everything in its constructor,
  so Serve routes it queries only once it is caught up. Concurrent queries are batched
  into one engine search (:class:`~gpusearch.serve.batching.GreedyBatcher`).
- **Aggregator**: resolves an alias once per query, fans the query out to every shard
  deployment, retries a request whose replica died, merges with the kernels' k-way
  merge (:func:`gpusearch.merge.merge_hits`), optionally re-scores exactly, and says
  ``partial`` (naming the shards) when a shard did not answer within ``shard_timeout_s``.
- **Encoder**: the sentence-transformers model, batched with ``@serve.batch``.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Any

import numpy as np
from ray import serve

from gpusearch.catalog import (Catalog, CollectionNotFound, SearchRequest, ShardCatalog, check_name,
                               resolve_alias)
from gpusearch.collection import shard_of
from gpusearch.merge import candidates_per_shard, merge_and_rerank

from .batching import GreedyBatcher
from .config import ServeConfig

__all__ = ["Writer", "ShardServer", "Aggregator", "EncoderServer", "RETRYABLE"]

log = logging.getLogger("gpusearch.serve")


def _retryable() -> tuple[type, ...]:
    import ray.exceptions as rex

    names = ("ActorDiedError", "ActorUnavailableError", "RayActorError", "ActorUnschedulableError")
    return tuple(getattr(rex, n) for n in names if hasattr(rex, n))


RETRYABLE = _retryable()


@serve.deployment(name="Writer", num_replicas=1)
class Writer:
    def __init__(self, cfg: dict):
        self.cfg = ServeConfig(**cfg)
        # The writer never searches: its copy stays on the host and the GPUs stay with the shards.
        self.catalog = Catalog(self.cfg.data_dir, shards=self.cfg.shards, metric=self.cfg.metric,
                               index=self.cfg.index, device="cpu", fsync=self.cfg.fsync)
        self._lock = asyncio.Lock()

    async def _run(self, fn, *args, **kw):
        return await asyncio.to_thread(fn, *args, **kw)

    async def upsert(self, collection, ids, vectors, metadata=None) -> dict:
        r = await self._run(self.catalog.upsert, collection, ids, vectors, metadata)
        return {"count": r.count, "sequence": r.sequence}

    async def update(self, collection, record_id=None, values=None, set_metadata=None, filter=None) -> dict:
        r = await self._run(self.catalog.update, collection, record_id, values=values, set_metadata=set_metadata,
                            filter=filter)
        return {"count": r.count, "sequence": r.sequence}

    async def delete(self, collection, ids=None, filter=None, delete_all=False) -> dict:
        r = await self._run(self.catalog.delete, collection, ids, filter=filter, delete_all=delete_all)
        return {"count": r.count, "sequence": r.sequence}

    async def create(self, collection, dim, metric=None, index=None, lineage=None) -> dict:
        col = await self._run(self.catalog.create, collection, dim=dim, metric=metric, index=index, lineage=lineage)
        return _describe(col.stats())

    async def drop(self, collection) -> None:
        await self._run(self.catalog.drop, collection)

    async def set_alias(self, alias, target) -> None:
        await self._run(self.catalog.set_alias, alias, target)

    async def drop_alias(self, alias) -> None:
        await self._run(self.catalog.drop_alias, alias)

    async def list(self) -> dict:
        stats = await self._run(self.catalog.stats)
        return {"collections": {n: _describe(s) for n, s in stats.items()}, "aliases": self.catalog.aliases()}

    def check_health(self) -> None:
        self.catalog.names()  # raises when the data directory is gone


def _describe(stats: dict) -> dict:
    return {k: stats[k] for k in ("records", "dim", "metric", "index", "lineage", "sequence")}


def _set_search_threads(n: int) -> None:
    """Let this process's searches use ``n`` threads (Ray set OMP_NUM_THREADS=1 for a fractional-CPU replica)."""
    os.environ["OMP_NUM_THREADS"] = str(n)
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:
        pass
    # torch only when something already imported it (a GPU device, the encoder): importing it here
    # cost every CPU shard replica ~2.8 s of its restart, and a later import reads OMP_NUM_THREADS.
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)


@serve.deployment(name="Shard")
class ShardServer:
    def __init__(self, cfg: dict, shard: int):
        from ._faults import hold_while_file_exists; hold_while_file_exists()  # noqa: E702 - test hook, see _faults.py
        self.cfg = ServeConfig(**cfg)
        self.shard = shard
        _set_search_threads(self.cfg.shard_search_threads())
        self.catalog = ShardCatalog(self.cfg.data_dir, shard, device=self.cfg.device)
        self.catalog.open_all()  # caught up before Serve routes anything here
        # Concurrent queries share one engine search; see serve/batching.py for why not @serve.batch.
        self.batcher = GreedyBatcher(self._search_batch, max_size=self.cfg.batch_max_size,
                                     wait_s=self.cfg.batch_wait_s)

    async def search(self, request: SearchRequest):
        return await self.batcher.submit(request)

    async def _search_batch(self, requests: list[SearchRequest]) -> list:
        t0 = time.perf_counter()
        out = await asyncio.to_thread(self.catalog.search_batch, requests)
        seconds = time.perf_counter() - t0
        return [r if isinstance(r, Exception) else (*r, seconds, len(requests)) for r in out]

    async def fetch(self, collection: str, ids: list[str]):
        return await asyncio.to_thread(self.catalog.fetch, collection, ids)

    async def stats(self) -> dict:
        return await asyncio.to_thread(self.catalog.stats)

    def check_health(self) -> None:
        if not os.path.isdir(self.cfg.data_dir):
            raise RuntimeError(f"data directory {self.cfg.data_dir} is gone")


@serve.deployment(name="Aggregator")
class Aggregator:
    def __init__(self, cfg: dict, *shards):
        self.cfg = ServeConfig(**cfg)
        self.shards = list(shards)

    async def _ask(self, i: int, method: str, *args):
        """One shard's answer; a request whose replica died is sent again (Serve picks a live one)."""
        deadline = time.monotonic() + self.cfg.shard_timeout_s
        attempt = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise asyncio.TimeoutError
            response = getattr(self.shards[i], method).remote(*args)
            try:
                return await asyncio.wait_for(response, timeout=left)
            except asyncio.TimeoutError:
                response.cancel()
                raise
            except RETRYABLE as e:
                attempt += 1
                log.warning("shard %d: replica failed (%s); retrying (attempt %d)", i, type(e).__name__, attempt)
                await asyncio.sleep(min(0.05 * attempt, 0.5))

    def resolve(self, collection) -> str:
        return resolve_alias(self.cfg.data_dir, check_name(collection))

    async def fetch(self, collection, ids: list[str]) -> dict:
        """Records by id from their owner shards: {id: (vector, metadata)} plus the resolved name."""
        name = self.resolve(collection)
        by_shard: dict[int, list[str]] = {}
        for i in dict.fromkeys(ids):
            by_shard.setdefault(shard_of(i, len(self.shards)), []).append(i)
        parts = await asyncio.gather(*(self._ask(s, "fetch", name, part) for s, part in by_shard.items()))
        found = {rid: (vec, meta) for part in parts for rid, vec, meta in part}
        return {"collection": name, "records": {i: found[i] for i in ids if i in found}}

    async def query(self, collection, queries=None, k: int = 10, *, id: str | None = None, filter=None,
                    include_metadata: bool = False, include_vectors: bool = False, params=None) -> dict:
        """Search every shard and merge. ``queries``: (nq, dim) float32, or ``id`` of a stored record."""
        name = self.resolve(collection)
        if id is not None:
            rec = (await self.fetch(name, [id]))["records"].get(id)
            if rec is None:
                raise ValueError(f"query by id: no record {id!r} in {name!r}")
            queries = rec[0][None, :]
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        rerank = self.cfg.rerank
        k_fetch = candidates_per_shard(k, rerank=rerank, overfetch=self.cfg.overfetch, max_k=self.cfg.max_top_k)
        req = SearchRequest(name, queries, k_fetch, filter, include_metadata,
                            include_vectors or rerank == "exact", params)
        answers = await asyncio.gather(*(self._ask(i, "search", req) for i in range(len(self.shards))),
                                       return_exceptions=True)
        hits, missing, shard_seconds, info = [], [], {}, None
        for i, a in enumerate(answers):
            if isinstance(a, asyncio.TimeoutError) or isinstance(a, RETRYABLE):
                missing.append(i)
                continue
            if isinstance(a, BaseException):
                raise a
            h, info, seconds, batch = a
            hits.append(h)
            shard_seconds[i] = seconds
        if not hits:
            raise TimeoutError(f"no shard answered within {self.cfg.shard_timeout_s} s (shards {missing})")
        ids, scores, metas, vecs = merge_and_rerank(hits, queries, k, metric=info["metric"], dim=info["dim"],
                                                    rerank=rerank, include_vectors=include_vectors)
        return {
            "collection": name, "ids": ids, "scores": scores, "metadata": metas, "vectors": vecs,
            "index": info["index"], "lineage": info["lineage"], "sequence": info["sequence"],
            "partial": bool(missing), "missing_shards": missing, "shard_seconds": shard_seconds,
        }

    async def stats(self) -> dict:
        """Per collection, per shard: the stats of the replica that answered."""
        answers = await asyncio.gather(*(self._ask(i, "stats") for i in range(len(self.shards))),
                                       return_exceptions=True)
        out: dict[str, dict] = {}
        for i, a in enumerate(answers):
            if isinstance(a, BaseException):
                continue
            for name, s in a.items():
                out.setdefault(name, {})[i] = s
        return out


@serve.deployment(name="Encoder")
class EncoderServer:
    def __init__(self, cfg: dict):
        from gpusearch.encoders import SentenceEncoder

        self.cfg = ServeConfig(**cfg)
        self.encoder = SentenceEncoder(self.cfg.encoder, device=self.cfg.device)

    def lineage(self) -> dict:
        return self.encoder.lineage

    async def encode_many(self, texts: list[str]) -> np.ndarray:
        """Many texts at once (bulk loads): an (n, dim) float32 array."""
        v = await asyncio.to_thread(self.encoder.encode, texts)
        return v.float().cpu().numpy()

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def encode(self, texts: list[str]) -> list[np.ndarray]:
        v = await asyncio.to_thread(self.encoder.encode, texts)
        return list(v.float().cpu().numpy())
