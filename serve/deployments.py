"""The Ray Serve deployments: Writer, Shard<i> and the Aggregator (also the HTTP ingress). Thin wrappers over gpusearch.

- **Aggregator** (the FastAPI ingress, :mod:`gpusearch.serve.http`, and the target of
  Python handles): the one edge of a query. It authenticates an HTTP request, resolves an
  alias once, embeds text in its own process (the sentence-transformers model on the
  configured device, concurrent texts batched into one encode), builds the typed search
  request once (:meth:`gpusearch.catalog.CatalogReader.request`: the engine's one
  validation), fans it out to every shard deployment, retries a request whose replica
  died, merges the shards' columnar hits (:func:`gpusearch.merge.merge`), optionally
  re-scores exactly, and answers with a :class:`~gpusearch.results.SearchResult` (JSON
  over HTTP); ``partial`` names the shards that did not answer within
  ``shard_timeout_s``. Writes go one hop on, to the Writer.
- **Writer** (one replica): the writable :class:`gpusearch.catalog.Catalog`. Appends each
  write to the shard WALs, fsyncs, commits, and acknowledges with the sequence number.
- **Shard<i>** (one deployment per shard number, ``replicas`` replicas each): shard ``i``
  of every collection, read-only (:class:`gpusearch.catalog.ShardCatalog`). It trusts
  the request it is given (checked at the edge) and answers with
  :class:`~gpusearch.hits.Hits` carrying their ids. Before each batch it catches up with
  what the Writer made durable, so a query sent after an acknowledged write sees it; a
  replica loads and replays everything in its constructor, so Serve routes it queries
  only once it is caught up. Concurrent queries are batched into one engine search
  (:class:`~gpusearch.serve.batching.GreedyBatcher`).
"""
from __future__ import annotations

import asyncio
import errno
import dataclasses
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from typing import Sequence

import numpy as np
from ray import serve

from gpusearch.arrays import as_ids
from gpusearch.bm25 import fuse_hits, keyword_requests, sum_stats
from gpusearch.backends import import_on_first_batch, warm_up
from gpusearch.catalog import Catalog, CatalogReader, CollectionNotFound, ShardCatalog
from gpusearch.collection import shard_of, sorted_page
from gpusearch.errors import (AlreadyExistsError, ClosedError, DeadlineExceededError, InvalidArgumentError,
                              InvalidTypeError, NotFoundError, PermissionDeniedError, UnavailableError)
from gpusearch.fileio import atomic_write_json, read_json
from gpusearch.merge import candidates_per_shard, merge, rescore_exact
from gpusearch.request import SearchRequest
from gpusearch.results import FetchResult, SearchResult, result_of_hits

from . import _limits
from . import http as _http
from ._errors import status_of, unwrap
from ._logs import COLLECTION, access_line, replica_logging
from ._metrics import Metrics
from .batching import GreedyBatcher
from ._indexes import INDEXES_FILE, collection_namespace
from .config import ServeConfig

__all__ = ["Writer", "ShardServer", "Aggregator", "AggregatorServer", "RETRYABLE"]

log = logging.getLogger("gpusearch.serve")
# The Writer adds the rows waiting outside a saved index once a collection has had no write for
# INDEX_IDLE_S seconds (looking every INDEX_IDLE_CHECK_S): until then the replicas search them exactly.
INDEX_IDLE_S = 1.0
INDEX_IDLE_CHECK_S = 0.5


def _retryable() -> tuple[type, ...]:
    import ray.exceptions as rex

    names = ("ActorDiedError", "ActorUnavailableError", "RayActorError", "ActorUnschedulableError")
    return tuple(getattr(rex, n) for n in names if hasattr(rex, n))


RETRYABLE = _retryable()


@serve.deployment(name="Writer", num_replicas=1)
class Writer:
    def __init__(self, cfg: dict):
        self.cfg = ServeConfig(**cfg)
        replica_logging(self.cfg.log_level)
        # Its index work (HNSW insertions on each upsert, IVF training) is a batch job on the whole
        # machine; Ray's OMP_NUM_THREADS=1 for a fractional-CPU actor ran it on one thread.
        _set_search_threads(os.cpu_count() or 1)
        self.closed = False
        self.draining = False  # stopping: a Python handle's new calls are refused (see handle_call)
        self.writing = 0
        self.durable, self._dir_lock = None, None
        data_dir = self.cfg.data_dir
        if self.cfg.storage_uri:
            data_dir = self._take_over()
        # The writer never searches: its copy stays on the host and the GPUs stay with the shards. It
        # holds no index either: it builds each at checkpoints, and the replicas load what it saves
        # (index_role "builder", see gpusearch.shard), in the background once writes pause.
        self.catalog = Catalog(data_dir, shards=self.cfg.shards, metric=self.cfg.metric,
                               index=self.cfg.index, device="cpu", fsync=self.cfg.fsync,
                               index_options=self.cfg.index_options, durable=self.durable,
                               index_role="builder")
        self._stop_builds = threading.Event()
        threading.Thread(target=self._build_when_idle, daemon=True, name="gpusearch-index-builds").start()
        self.identity = uuid.uuid4().hex  # tells the Aggregator's copy of the catalog files this Writer's
        self._lock = asyncio.Lock()
        self._index_lock = threading.Lock()

    def _build_when_idle(self) -> None:
        """Add the rows that wait outside a saved index to it, once enough wait or once a collection's
        writes pause (gpusearch.Collection.maybe_build_index); writes go on while it builds."""
        while not self._stop_builds.wait(INDEX_IDLE_CHECK_S):
            for col in self.catalog.open_collections():
                try:
                    if col.maybe_build_index(INDEX_IDLE_S):
                        log.info("collection %s: index built and saved (%d rows wait outside it now)",
                                 col.path.name, col.index_pending())
                except ClosedError:
                    pass  # dropped or closed meanwhile
                except Exception:  # noqa: BLE001 - a failed build (full disk) is retried at the next pause
                    log.exception("building an index while writes pause failed; retried at the next pause")

    def _take_over(self) -> str:
        """Durability at the storage URI (gpusearch.durable): take a new lease term (fencing any older
        Writer) and rebuild every collection from the URI in a directory of this Writer's own under
        data_dir; copies older Writers on this node left (no process holds their lock) are removed."""
        import fcntl
        from pathlib import Path

        from gpusearch.durable import DurableStore, RayLease

        root = Path(self.cfg.data_dir)
        root.mkdir(parents=True, exist_ok=True)
        for old in root.glob("writer-*"):
            try:
                fd = os.open(old / ".lock", os.O_RDWR)
            except OSError:
                shutil.rmtree(old, ignore_errors=True)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a Writer still runs there (being replaced): never touched
            finally:
                os.close(fd)
            shutil.rmtree(old, ignore_errors=True)
        mine = Path(tempfile.mkdtemp(prefix="writer-", dir=root))
        self._dir_lock = os.open(mine / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._dir_lock, fcntl.LOCK_EX)
        self.durable = DurableStore(self.cfg.storage_uri, RayLease(self.cfg.storage_uri), shards=self.cfg.shards)
        self.durable.take_over(mine, device="cpu", fsync=self.cfg.fsync, index_role="builder")
        if self.durable.catalog.get("indexes"):
            atomic_write_json(mine / INDEXES_FILE, self.durable.catalog["indexes"])
        return str(mine)

    async def _run(self, fn, *args, **kw):
        if self.closed:
            raise UnavailableError("the server is stopping: writes are no longer taken here; retry once it "
                                   "is back (every acknowledged write is kept)")
        self.writing += 1
        try:
            return await asyncio.to_thread(fn, *args, **kw)
        finally:
            self.writing -= 1

    #: What a Python handle (gpusearch.serve.Client) may call through :meth:`handle_call`, and where the
    #: collection's name is among each call's arguments (None: the call names none).
    HANDLE_CALLS = {"upsert": 0, "delete": 0, "create": 0, "drop": 0, "set_alias": 1, "list": None}

    def drain(self) -> None:
        """The stop's first step: refuse a Python handle's new calls (503, retryable). Writes the Aggregator
        sends for requests it took before its own drain still run, until :meth:`close`."""
        self.draining = True

    async def handle_call(self, method: str, *args, **kw):
        """A Python handle's write (``Client.upsert``, ``delete``, ...): refused once the server is
        stopping, and one access line either way, as the Aggregator writes for its reads and for HTTP
        requests (``HANDLE upsert 200 4.2ms collection=docs``; never ids, vectors or metadata)."""
        if method not in self.HANDLE_CALLS:
            raise InvalidArgumentError(f"a handle may call {', '.join(self.HANDLE_CALLS)}; got {method!r}")
        where = self.HANDLE_CALLS[method]
        name = args[where] if where is not None and len(args) > where else None
        t0, status = time.perf_counter(), 200
        try:
            if self.draining or self.closed:
                raise UnavailableError("the server is stopping; retry in a moment (or against another server)")
            return await getattr(self, method)(*args, **kw)
        except BaseException as e:
            status = status_of(e, quiet=True)[0]
            raise
        finally:
            access_line("HANDLE", method, status, time.perf_counter() - t0, name if isinstance(name, str) else None)

    async def close(self, timeout_s: float = 30.0) -> dict:
        """Stop taking writes, let those under way finish (at most ``timeout_s``), then close every
        collection (each checkpoints what its WAL holds). Returns what it did, for the stop's log line."""
        self.closed = True
        self._stop_builds.set()
        unfinished = await _settled(lambda: self.writing, timeout_s)
        if unfinished:  # the WAL keeps whatever they acknowledge; the next open replays it
            log.warning("stopping with %d writes still running after %.1f s", unfinished, timeout_s)
            return {"checkpointed": False, "unfinished_writes": unfinished}
        await asyncio.to_thread(self.catalog.close)
        return {"checkpointed": True, "unfinished_writes": 0}

    def _upsert(self, collection, ids, vectors, metadata, metric=None, sparse_values=None, vector_type=None,
                create_options=None):
        from ._faults import HOLD_WRITE, hold_while_file_exists; hold_while_file_exists(HOLD_WRITE)  # noqa: E702
        return self.catalog.upsert(collection, ids, vectors, metadata, metric=metric, sparse_values=sparse_values,
                                   vector_type=vector_type, create_options=create_options)

    async def upsert(self, collection, ids, vectors, metadata=None, metric=None, sparse_values=None,
                     vector_type=None, create_options=None) -> dict:
        """``metric``, ``vector_type`` and ``create_options`` (lineage, bm25_field): those of the collection
        if this upsert creates it (a Pinecone index's), else the server's metric (and a sparse collection
        when only sparse values come)."""
        r = await self._run(self._upsert, collection, ids, vectors, metadata, metric, sparse_values, vector_type,
                            create_options)
        return {"count": r.count, "sequence": r.sequence}

    # -- Pinecone indexes (serve/_indexes.py): records in <data_dir>/indexes.json, written here only --
    def _indexes(self) -> dict:
        path = os.path.join(self.catalog.data_dir, INDEXES_FILE)
        return read_json(path) if os.path.exists(path) else {}

    def _save_indexes(self, indexes: dict) -> None:
        if self.durable is not None:
            self.durable.publish(indexes=indexes)  # first: refused there, nothing changes here
        atomic_write_json(os.path.join(self.catalog.data_dir, INDEXES_FILE), indexes)

    def _create_index(self, record: dict) -> dict:
        with self._index_lock:
            indexes = self._indexes()
            name = record["name"]
            if name in indexes:
                raise AlreadyExistsError(f"index {name!r} already exists")
            stray = [c for c in self.catalog.names() if collection_namespace(name, c) is not None]
            if stray:  # they would show up as the new index's namespaces
                raise AlreadyExistsError(f"collections named {name}.* exist ({stray[0]!r}); drop them or pick "
                                         f"another index name")
            indexes[name] = record
            self._save_indexes(indexes)
            return record

    def _configure_index(self, name: str, changes: dict) -> dict:
        with self._index_lock:
            indexes = self._indexes()
            if name not in indexes:
                raise NotFoundError(f"index {name!r} not found", name=name)
            record = indexes[name]
            if "tags" in changes:
                tags = {**(record.get("tags") or {}), **changes.pop("tags")}
                record["tags"] = {k: v for k, v in tags.items() if v != ""} or None
            record.update(changes)
            self._save_indexes(indexes)
            return record

    def _drop_index(self, name: str) -> None:
        with self._index_lock:
            indexes = self._indexes()
            if name not in indexes:
                raise NotFoundError(f"index {name!r} not found", name=name)
            if indexes[name].get("deletion_protection") == "enabled":
                raise PermissionDeniedError(f"deletion protection is enabled for index {name!r}; disable it "
                                            f"(configure_index) before deleting")
            # namespaces first: a stop half-way leaves the index with fewer namespaces, never stray ones
            for c in self.catalog.names():
                if collection_namespace(name, c) is not None:
                    self.catalog.drop(c)
            del indexes[name]
            self._save_indexes(indexes)

    def _name_namespace(self, index: str, suffix: str, namespace: str) -> None:
        with self._index_lock:
            indexes = self._indexes()
            if index not in indexes:
                raise NotFoundError(f"index {index!r} not found", name=index)
            names = indexes[index].setdefault("namespaces", {})
            if names.get(suffix) != namespace:
                names[suffix] = namespace
                self._save_indexes(indexes)

    async def name_namespace(self, index: str, suffix: str, namespace: str) -> None:
        """Record which namespace name the hashed collection ``{index}.{suffix}`` holds (for listings)."""
        await self._run(self._name_namespace, index, suffix, namespace)

    async def create_index(self, record: dict) -> dict:
        return await self._run(self._create_index, record)

    async def configure_index(self, name: str, changes: dict) -> dict:
        return await self._run(self._configure_index, name, changes)

    async def drop_index(self, name: str) -> None:
        await self._run(self._drop_index, name)

    async def ids_matching(self, collection, filter, after=None, limit=None) -> tuple[list[str], bool]:
        """Ids of the records ``filter`` passes, sorted, after ``after``; a page of ``limit`` and whether
        more follow (all of them for ``limit=None``)."""
        return await self._run(lambda: sorted_page(self.catalog.get(collection).ids_matching(filter), after, limit))

    async def list_ids(self, collection, prefix: str = "", after=None, limit: int = 100) -> tuple[list[str], bool]:
        return await self._run(lambda: self.catalog.get(collection).list_ids(prefix, after=after, limit=limit))

    async def update(self, collection, record_id=None, values=None, set_metadata=None, filter=None,
                     sparse_values=None) -> dict:
        r = await self._run(self.catalog.update, collection, record_id, values=values, set_metadata=set_metadata,
                            filter=filter, sparse_values=sparse_values)
        return {"count": r.count, "sequence": r.sequence}

    async def delete(self, collection, ids=None, filter=None, delete_all=False) -> dict:
        r = await self._run(self.catalog.delete, collection, ids, filter=filter, delete_all=delete_all)
        return {"count": r.count, "sequence": r.sequence}

    async def create(self, collection, dim, metric=None, index=None, lineage=None, index_options=None,
                     vector_type="dense", bm25_field=None) -> dict:
        col = await self._run(self.catalog.create, collection, dim=dim, metric=metric, index=index, lineage=lineage,
                              index_options=index_options, vector_type=vector_type, bm25_field=bm25_field)
        return _describe(col.stats())

    async def drop(self, collection) -> None:
        await self._run(self.catalog.drop, collection)

    def _storage(self, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except OSError as exc:  # pyarrow's S3 and GCS clients raise OSError naming the request that failed
            if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):  # this machine's disk: 507
                raise
            raise UnavailableError(f"the storage location failed: {exc}; nothing was changed here, retry "
                                   f"once it is reachable") from exc

    def _location(self, uri) -> str:
        """``uri``, when it is the server's backup location or under one of ``backup_locations``; the
        backup location when None."""
        from gpusearch.storage import within

        if uri is None:
            return self.cfg.backup_uri
        allowed = [self.cfg.backup_uri, *self.cfg.backup_locations]
        if not isinstance(uri, str) or not any(within(uri, a) for a in allowed):
            raise InvalidArgumentError(f"uri must be this server's backup location or below one of its "
                                       f"backup_locations (settings backup_uri, backup_locations), or left out "
                                       f"for the backup location; got {str(uri)[:200]!r}", field="uri")
        return uri

    async def backup(self, collection, uri=None, note=None) -> dict:
        """A point-in-time copy of ``collection`` at ``uri`` (gpusearch.backup); writes go on meanwhile."""
        uri = self._location(uri)
        return await self._run(self._storage, self.catalog.backup, collection, uri, note=note)

    async def restore(self, collection, uri=None, backup_id=None) -> dict:
        """A new collection ``collection`` from a backup at ``uri`` (the newest there unless ``backup_id``)."""
        uri = self._location(uri)
        info = await self._run(self._storage, self.catalog.restore, collection, uri, backup_id=backup_id)
        return {**info, "collection": _describe(self.catalog.get(collection).stats())}

    async def backups(self, uri=None) -> dict:
        from gpusearch.backup import list_backups

        uri = self._location(uri)
        return {"uri": uri, "backups": await self._run(self._storage, list_backups, uri)}

    async def set_alias(self, alias, target) -> None:
        await self._run(self.catalog.set_alias, alias, target)

    async def drop_alias(self, alias) -> None:
        await self._run(self.catalog.drop_alias, alias)

    async def list(self) -> dict:
        stats = await self._run(self.catalog.stats)
        return {"collections": {n: _describe(s) for n, s in stats.items()}, "aliases": self.catalog.aliases()}

    # -- replicas without a shared file system (replication "ray"; gpusearch.mirror) --------------
    async def mirror_sync(self, collection: str, shard: int, have: dict, epoch, token=None) -> dict:
        """What shard ``shard``'s copy of ``collection`` on a replica needs (:func:`gpusearch.mirror.sync_answer`)."""
        from gpusearch.mirror import sync_answer

        quick = self.catalog.unchanged_sync(collection, shard, epoch, token)  # nothing new: no thread hop
        if quick is not None:
            return quick
        return await asyncio.to_thread(lambda: sync_answer(self.catalog.get(collection), shard, have, epoch, token))

    async def collection_names(self) -> list[str]:
        return await asyncio.to_thread(self.catalog.names)

    # -- the Aggregator's copy of the catalog's small files (replication "ray") -----------------
    def _meta_files(self) -> list[tuple[str, str]]:
        root = self.catalog.data_dir
        out = [(n, str(root / n)) for n in ("catalog.json", "aliases.json", INDEXES_FILE)]
        for name in self.catalog.names():
            for f in ("collection.json", "schema.json"):
                out.append((f"collections/{name}/{f}", str(root / "collections" / name / f)))
        return out

    def meta_sync(self, token=None) -> dict:
        """The catalog's small files (settings, aliases, indexes, each collection's settings and fields)
        for an Aggregator that shares no file system with this Writer: ``{"token": t}`` alone when
        nothing changed since ``token``, else also ``files`` {path: bytes}. A stat per file: cheap
        enough for every request the Aggregator takes."""
        stamps, found = [self.identity], []
        for rel, path in self._meta_files():
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            stamps.append((rel, st.st_size, st.st_mtime_ns, st.st_ino))
            found.append((rel, path))
        import hashlib

        now = hashlib.sha256(repr(stamps).encode()).hexdigest()
        if now == token:
            return {"token": now}
        files = {}
        for rel, path in found:
            with contextlib.suppress(FileNotFoundError):
                with open(path, "rb") as f:
                    files[rel] = f.read()
        return {"token": now, "files": files}

    def where(self) -> dict:
        """This Writer's node, directory and lease term (tests and operators)."""
        import ray

        return {"node_id": ray.get_runtime_context().get_node_id(), "data_dir": str(self.catalog.data_dir),
                "durable": None if self.durable is None else self.durable.stats()}

    def check_health(self) -> None:
        if self.durable is not None and self.durable.fenced:
            raise RuntimeError("a newer Writer took over this one's lease")
        self.catalog.names()  # raises when the data directory is gone


async def _settled(count, timeout_s: float) -> int:
    """Wait until ``count()`` (requests or writes under way) is 0, at most ``timeout_s``; what is left."""
    deadline = time.monotonic() + timeout_s
    while count() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return count()


def _describe(stats: dict) -> dict:
    return {k: stats[k] for k in ("records", "dim", "vector_type", "bm25_field", "metric", "index", "index_options",
                                  "lineage", "sequence")}


def _set_search_threads(n: int) -> None:
    """Let this process's searches use ``n`` threads (Ray set OMP_NUM_THREADS=1 for a fractional-CPU replica)."""
    os.environ["OMP_NUM_THREADS"] = str(n)
    # Applied by the backend in the thread that searches (OpenMP's count is per thread: set here, in
    # the constructor's thread, it did not reach the to_thread pool where the searches run).
    from gpusearch.backends.faiss_backend import set_threads

    set_threads(n)
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


def _warm_up_gently(threads: int) -> None:
    """Import torch for the CPU batch path at a lower priority than the rest of this replica (its nice
    value + 4, this thread only: Linux keeps a nice value per thread; Ray starts workers at 15), so that
    it yields the cores to what a starting server needs first (the other replicas starting, the
    encoder's load, the first writes)."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + 4))
    except (AttributeError, OSError):  # not Linux, or not allowed: import at the usual priority
        pass
    warm_up(threads)


class _WriterFiles:
    """The Writer's files, reached through Ray (a shard replica of replication "ray")."""

    def __init__(self, writer, timeout_s: float):
        self.writer, self.timeout_s = writer, timeout_s

    def _call(self, method: str, *args):
        try:
            return getattr(self.writer, method).remote(*args).result(timeout_s=self.timeout_s)
        except Exception as e:  # noqa: BLE001 - Ray wraps the Writer's errors; keep the one that matters
            cause = unwrap(e)
            if isinstance(cause, CollectionNotFound):
                raise CollectionNotFound(str(cause), name=getattr(cause, "name", None)) from None
            raise

    def names(self) -> list[str]:
        return self._call("collection_names")

    def fetch(self, name: str, shard: int, have: dict, epoch, token) -> dict:
        return self._call("mirror_sync", name, shard, have, epoch, token)


def _off_the_event_loop(fn, name: str) -> None:
    """Run ``fn`` in a thread and wait for it, raising what it raised: a replica's constructor runs on
    its event loop, where a Ray handle's blocking ``result()`` must not be called."""
    failed: list = []

    def run():
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - raised below, in the caller
            failed.append(exc)

    t = threading.Thread(target=run, name=name)
    t.start()
    t.join()
    if failed:
        raise failed[0]


KEEP_UP_S = 0.5  # how often a shard replica follows the Writer between queries


def _keep_up(catalog, stop: threading.Event, shard: int) -> None:
    """A shard replica's background thread (holds the catalog, not the replica, which may then go)."""
    while not stop.wait(KEEP_UP_S):
        try:
            catalog.refresh_all()
        except Exception as e:  # noqa: BLE001 - the Writer away, a collection made anew: the queries report it
            log.debug("shard %d: following the Writer in the background failed: %s", shard, e)


@serve.deployment(name="Shard")
class ShardServer:
    def __init__(self, cfg: dict, shard: int, writer=None):
        from ._faults import hold_while_file_exists; hold_while_file_exists()  # noqa: E702 - test hook, see _faults.py
        self.cfg = ServeConfig(**cfg)
        replica_logging(self.cfg.log_level)
        self.shard = shard
        _set_search_threads(self.cfg.shard_search_threads())
        # A query must never wait for torch's import (1.5-3 s) past the aggregator's shard timeout: CPU
        # batches take the NumPy path until a background thread has imported it (gpusearch.backends._cpu_batch).
        import_on_first_batch(False)
        self.seeded, self.load_s = None, None
        if self.cfg.replication == "ray":
            # Its own copy on this node, of this shard only: nothing of the Writer's data_dir is read here.
            root = self.cfg.replica_dir or tempfile.gettempdir()
            os.makedirs(root, exist_ok=True)
            self.local_dir = tempfile.mkdtemp(prefix=f"gpusearch-shard{shard}-", dir=root)
            source = _WriterFiles(writer, timeout_s=max(30.0, self.cfg.shard_timeout_s))
            self.catalog = ShardCatalog(self.local_dir, shard, device=self.cfg.device, source=source,
                                        load_indexes=True)
            # Ray handles block only off the replica's event loop: load (copy every collection) in a thread.
            def load():
                if self.cfg.storage_uri:
                    from gpusearch.durable import seed_replica

                    self.seeded = seed_replica(self.catalog, self.cfg.storage_uri, shard)
                t = time.perf_counter()
                self.catalog.open_all()
                self.load_s = round(time.perf_counter() - t, 3)  # the copy from the Writer, and the open
                self._keep_up()

            _off_the_event_loop(load, "gpusearch-mirror-load")
        else:
            self.local_dir = None
            self.catalog = ShardCatalog(self.cfg.data_dir, shard, device=self.cfg.device, load_indexes=True)
            self.catalog.open_all()  # caught up before Serve routes anything here
            self._keep_up()
        threading.Thread(target=_warm_up_gently, args=(self.cfg.shard_search_threads(),), daemon=True,
                         name="gpusearch-torch-import").start()
        # Concurrent queries share one engine search; see serve/batching.py for why not @serve.batch.
        self.batcher = GreedyBatcher(self._search_batch, max_size=self.cfg.batch_max_size,
                                     wait_s=self.cfg.batch_wait_s)

    def _keep_up(self) -> None:
        """Follow the Writer between queries too, and load the indexes it saves (ShardCatalog.refresh_all)."""
        self._stop = threading.Event()
        threading.Thread(target=_keep_up, args=(self.catalog, self._stop, self.shard), daemon=True,
                         name="gpusearch-keep-up").start()

    async def search(self, collection: str, request: SearchRequest):
        return await self.batcher.submit((collection, request))

    async def _search_batch(self, requests: list[tuple[str, SearchRequest]]) -> list:
        t0 = time.perf_counter()
        out = await asyncio.to_thread(self.catalog.search_batch, requests)
        seconds = time.perf_counter() - t0
        log.debug("shard %d searched a batch of %d requests in %.1f ms", self.shard, len(requests), seconds * 1e3)
        return [r if isinstance(r, Exception) else (*r, seconds, len(requests)) for r in out]

    async def fetch(self, collection: str, ids: list[str]):
        return await asyncio.to_thread(self.catalog.fetch, collection, ids)

    async def keyword_stats(self, collection: str, terms):
        return await asyncio.to_thread(self.catalog.keyword_stats, collection, terms)

    async def stats(self) -> dict:
        return await asyncio.to_thread(self.catalog.stats)

    def where(self) -> dict:
        """This replica's node, its copy's directory (None when it reads the Writer's data_dir) and what
        is in it: for operators, and for the multi-node tests."""
        import ray

        files = []
        if self.local_dir:
            for root, _dirs, names in os.walk(self.local_dir):
                files += [os.path.relpath(os.path.join(root, n), self.local_dir) for n in names]
        return {"shard": self.shard, "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "local_dir": self.local_dir, "files": sorted(files), "seeded": self.seeded, "load_s": self.load_s,
                "seeded_bytes_used": sum(m.seeded_bytes for m in getattr(self.catalog, "_mirrors", {}).values()),
                "bytes_from_writer": sum(m.bytes_received for m in getattr(self.catalog, "_mirrors", {}).values())}

    def check_health(self) -> None:
        where = self.local_dir or self.cfg.data_dir
        if not os.path.isdir(where):
            raise RuntimeError(f"data directory {where} is gone")

    def __del__(self):
        if getattr(self, "_stop", None) is not None:
            self._stop.set()
        if getattr(self, "local_dir", None):
            shutil.rmtree(self.local_dir, ignore_errors=True)


class _CatalogCopy:
    """The Aggregator's copy of the Writer's small catalog files (settings, aliases, indexes, each
    collection's settings and fields) when it shares no file system with the Writer (replication
    "ray"): synced after every call the Aggregator makes to the Writer, so a request sees what the
    requests before it changed, and every half second for what other Aggregator replicas changed."""

    PERIOD_S = 0.5

    def __init__(self, writer, root: str):
        from pathlib import Path

        os.makedirs(root, exist_ok=True)
        self.writer, self.dir = writer, Path(tempfile.mkdtemp(prefix="gpusearch-aggregator-", dir=root))
        self.token = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def apply(self, ans: dict) -> None:
        from gpusearch.fileio import atomic_write_bytes

        with self._lock:
            files = ans.get("files")
            if files is None or ans["token"] == self.token:
                return
            for rel, data in files.items():
                path = self.dir / rel
                if path.exists() and path.read_bytes() == data:
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(path, data)
            names = {rel.split("/")[1] for rel in files if rel.startswith("collections/")}
            cols = self.dir / "collections"
            for d in (cols.iterdir() if cols.exists() else ()):
                if d.name not in names:  # dropped: its settings go first, so nobody reads it as a collection
                    (d / "collection.json").unlink(missing_ok=True)
                    shutil.rmtree(d, ignore_errors=True)
                elif f"collections/{d.name}/schema.json" not in files:
                    (d / "schema.json").unlink(missing_ok=True)
            for n in ("aliases.json", INDEXES_FILE):
                if n not in files:
                    (self.dir / n).unlink(missing_ok=True)
            self.token = ans["token"]

    async def sync(self) -> None:
        self.apply(await self.writer.meta_sync.remote(self.token))

    def sync_blocking(self, timeout_s: float = 60.0) -> None:
        self.apply(self.writer.meta_sync.remote(self.token).result(timeout_s=timeout_s))

    def start(self) -> None:
        """The first copy (blocking, off the event loop), then the periodic sync in a thread."""
        # a Writer taking over may rebuild big collections first
        _off_the_event_loop(lambda: self.sync_blocking(timeout_s=600.0), "gpusearch-catalog-copy")

        def loop():
            while not self._stopped.wait(self.PERIOD_S):
                try:
                    self.sync_blocking(timeout_s=10.0)
                except Exception as exc:  # noqa: BLE001 - the Writer is moving or gone: keep the last copy
                    log.debug("catalog copy: sync failed (%s)", exc)

        threading.Thread(target=loop, daemon=True, name="gpusearch-catalog-sync").start()

    def close(self) -> None:
        self._stopped.set()
        shutil.rmtree(self.dir, ignore_errors=True)


class _ThenSync:
    """The Writer's handle, with the Aggregator's catalog copy synced after every call."""

    def __init__(self, handle, copy: _CatalogCopy):
        self._handle, self._copy = handle, copy

    def __getattr__(self, method: str):
        return _ThenSyncMethod(getattr(self._handle, method), self._copy)


class _ThenSyncMethod:
    def __init__(self, method, copy: _CatalogCopy):
        self._method, self._copy = method, copy

    def remote(self, *args, **kw):
        return self._call(args, kw)

    async def _call(self, args, kw):
        try:
            return await self._method.remote(*args, **kw)
        finally:
            try:
                await self._copy.sync()
            except Exception as exc:  # noqa: BLE001 - the periodic sync catches up
                log.debug("catalog copy: sync after a write failed (%s)", exc)


class AggregatorServer(_http.HttpRoutes):
    """The Aggregator's class: :class:`~gpusearch.serve.http.HttpRoutes` for HTTP, and the Python
    methods a handle calls (:meth:`query`, :meth:`query_text`, :meth:`fetch`, :meth:`encode`,
    :meth:`encoder_lineage`, :meth:`stats`), both over the same :meth:`_search`.

    ``writer`` is the Writer's handle and ``shards`` one handle per shard deployment (any objects
    with ``.search/.fetch/.stats.remote(...)`` returning awaitables: unit tests pass stand-ins).
    """

    def __init__(self, cfg: dict, writer=None, *shards):
        self.cfg = ServeConfig(**cfg)
        replica_logging(self.cfg.log_level)
        self.writer = writer
        self.shards = list(shards)
        # Stopping: once draining, HTTP requests and handle calls are refused with 503 (retryable)
        # and drain() waits for in_flight (requests under way) to reach 0.
        self.draining = False
        self.in_flight = 0
        self.catalog_copy = None
        if self.cfg.replication == "ray" and writer is not None:
            # No file system shared with the Writer: read a copy of its catalog files on this node.
            self.catalog_copy = _CatalogCopy(writer, self.cfg.replica_dir or tempfile.gettempdir())
            self.catalog_copy.start()
            self.writer = _ThenSync(writer, self.catalog_copy)
        self.reader = CatalogReader(self.catalog_copy.dir if self.catalog_copy else self.cfg.data_dir)
        self.grants = self.cfg.key_grants()
        self.metrics = Metrics()
        _limits.BODY_LIMIT["bytes"] = self.cfg.max_body_bytes
        _http.OPENAPI.clear()
        _http.OPENAPI["cfg"] = self.cfg  # /openapi.json and /docs state this server's limits
        self.encoder, self._encoder_lineage = None, None
        # The model loads in the background (importing sentence-transformers and reading the weights
        # took 11 of this replica's 18 s start on the 2-core VM): vector queries and writes are served
        # meanwhile, and a text request waits for the load (it is not refused).
        self._encoder_loader: threading.Thread | None = None
        self._encoder_error: BaseException | None = None
        if self.cfg.encoder_enabled:
            self._encoder_loader = threading.Thread(target=self._load_encoder, daemon=True,
                                                    name="gpusearch-encoder-load")
            self._encoder_loader.start()
        # Concurrent text queries share one forward pass of the model (see serve/batching.py).
        self.texts = GreedyBatcher(self._encode_batch, max_size=self.cfg.batch_max_size)
        # The cross-encoder (cfg.reranker), loaded in the background like the encoder; concurrent
        # rerank requests share one model call.
        self.reranker = None
        self._reranker_error: BaseException | None = None
        self._reranker_loader: threading.Thread | None = None
        if self.cfg.reranker:
            self._reranker_loader = threading.Thread(target=self._load_reranker, daemon=True,
                                                     name="gpusearch-reranker-load")
            self._reranker_loader.start()
        self.reranks = GreedyBatcher(self._rerank_batch, max_size=self.cfg.batch_max_size)

    # -- the shards ------------------------------------------------------------
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

    async def _fetch_records(self, name: str, ids) -> dict:
        """Records of collection ``name`` (resolved) by id, from their owner shards:
        {id: (vector, metadata, sparse vector or None)}."""
        by_shard: dict[int, list[str]] = {}
        for i in dict.fromkeys(as_ids(ids)):
            by_shard.setdefault(shard_of(i, len(self.shards)), []).append(i)
        parts = await asyncio.gather(*(self._ask(s, "fetch", name, part) for s, part in by_shard.items()))
        return {rid: (vec, meta, sv) for part in parts for rid, vec, meta, sv in part}

    async def _fan_out(self, name: str, request: SearchRequest):
        """Every shard's hits for ``request`` (the shards' ``k`` and payloads already set):
        (hits, info of the last shard that answered, missing shards, search seconds per shard)."""
        answers = await asyncio.gather(*(self._ask(i, "search", name, request) for i in range(len(self.shards))),
                                       return_exceptions=True)
        hits, missing, seconds, info, records = [], [], {}, None, 0
        for i, a in enumerate(answers):
            if isinstance(a, (asyncio.TimeoutError, *RETRYABLE)):
                missing.append(i)
                continue
            if isinstance(a, BaseException):
                raise unwrap(a)
            h, info, sec, _batch = a
            hits.append(h)
            seconds[i] = sec
            records += info.get("records", 0)
        if not hits:
            raise DeadlineExceededError(f"no shard answered within {self.cfg.shard_timeout_s} s (shards {missing})")
        return hits, {**info, "records": records}, missing, seconds

    # -- text ------------------------------------------------------------------
    def _load_encoder(self) -> None:
        try:
            from gpusearch.encoders import SentenceEncoder

            encoder = SentenceEncoder(self.cfg.encoder, device=self.cfg.device, precision=self.cfg.encoder_precision)
            # Ray gave this fractional-CPU replica one thread (OMP_NUM_THREADS=1); on a CPU the encoder
            # is the heaviest work here (the demo corpus embedded 2x slower with one thread of two cores).
            if encoder.device == "cpu":
                _set_search_threads(os.cpu_count() or 1)
            self.encoder, self._encoder_lineage = encoder, encoder.lineage
        except BaseException as e:  # noqa: BLE001 - reported by every text request and by check_health
            log.error("the text encoder could not be loaded", exc_info=e)
            self._encoder_error = e

    def _load_reranker(self) -> None:
        try:
            from gpusearch.rerank import CrossEncoderReranker

            self.reranker = CrossEncoderReranker(self.cfg.reranker, device=self.cfg.device)
        except BaseException as e:  # noqa: BLE001 - reported by every rerank request
            log.error("the reranker could not be loaded from %s", self.cfg.reranker, exc_info=e)
            self._reranker_error = e

    async def _reranker_ready(self):
        """The loaded reranker (waiting for its load); 400 when the server has none."""
        if self._reranker_loader is None:
            raise InvalidArgumentError("this server has no reranker: start it with reranker: <a local "
                                       "cross-encoder folder> in its configuration", field="rerank")
        if self._reranker_loader.is_alive():
            await asyncio.to_thread(self._reranker_loader.join)
        if self._reranker_error is not None:
            raise UnavailableError(f"the server's reranker could not be loaded "
                                   f"({type(self._reranker_error).__name__}); the server log says why")
        return self.reranker

    async def _rerank_batch(self, items: list[tuple[str, list[str]]]) -> list[np.ndarray]:
        """One model call for the (query, documents) of every waiting caller."""
        return await asyncio.to_thread(self.reranker.score_many, items)

    async def rerank_scores(self, query: str, documents: list[str]) -> np.ndarray:
        """The reranker's score of each document for ``query`` (batched with concurrent calls)."""
        reranker = await self._reranker_ready()
        documents = reranker.validate(query, documents)
        if not documents:
            return np.empty(0, np.float32)
        return await self.reranks.submit((query, documents))

    async def _encoder_ready(self) -> None:
        """Wait for the background load of the encoder (at once when it is done or off)."""
        loader = self._encoder_loader
        if loader is not None and loader.is_alive():
            await asyncio.to_thread(loader.join)
        if self._encoder_error is not None:
            raise UnavailableError(f"the server's text encoder could not be loaded "
                                   f"({type(self._encoder_error).__name__}); the server log says why")

    def check_health(self) -> None:
        """Serve's health check: a failed encoder load makes Serve replace this replica."""
        if self._encoder_error is not None:
            raise RuntimeError(f"the text encoder could not be loaded: {self._encoder_error!r}")

    async def _encode_batch(self, items: list[Sequence[str]]) -> list[np.ndarray]:
        """One forward pass for the texts of every waiting caller; each gets its rows back."""
        texts = [t for item in items for t in item]
        v = await asyncio.to_thread(self.encoder.encode, texts)
        m = v.float().cpu().numpy()
        out, lo = [], 0
        for item in items:
            out.append(m[lo:lo + len(item)])
            lo += len(item)
        return out

    def _texts(self, texts) -> list[str]:
        if self.encoder is None and self._encoder_loader is None:
            raise InvalidArgumentError("text queries need the encoder; start the server with encoder_enabled: true",
                                       field="text")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, (list, tuple)) or not texts:
            raise InvalidTypeError(f"texts must be a str or a non-empty list of str, got {type(texts).__name__}",
                                   field="text")
        for t in texts:
            if not isinstance(t, str):
                raise InvalidTypeError(f"each text must be a str, got {type(t).__name__}", field="text")
            if not t.strip():
                raise InvalidArgumentError("text is empty; send the text to search for", field="text")
        return list(texts)

    def _check_model(self, model, kind: str, own: str) -> None:
        """``model`` (a request's model name) must be this server's ``own`` encoder or reranker, or a name
        ``model_aliases`` maps onto it: another model's vectors or scores would be silently wrong."""
        names = {own} | {a for a, k in self.cfg.model_aliases.items() if k == kind}
        if not isinstance(model, str) or model not in names:
            what = "embeds text with" if kind == "encoder" else "reranks with"
            raise InvalidArgumentError(f"model {model!r} is not served here: this server {what} {own!r}; map a "
                                       f"model name onto it with model_aliases in the server's configuration "
                                       f"(e.g. {{{model!r}: {kind!r}}})", field="model")

    async def _count_tokens(self, texts: list[str]) -> int:
        """How many tokens the encoder's tokenizer makes of ``texts`` (Pinecone's embed_total_tokens)."""
        return sum(await self._token_counts(texts))

    async def _token_counts(self, texts: list[str]) -> list[int]:
        """How many tokens the encoder's tokenizer makes of each text (words without a tokenizer)."""
        tok = getattr(self.encoder.model, "tokenizer", None)
        if tok is None:
            return [len(t.split()) for t in texts]
        return [len(ids) for ids in (await asyncio.to_thread(tok, texts))["input_ids"]]

    def _max_tokens(self) -> int | None:
        """The most tokens the encoder reads of one text (the rest is cut), None when it does not say."""
        n = getattr(self.encoder.model, "max_seq_length", None)
        return int(n) if isinstance(n, int) else None

    async def _embed_records(self, name: str, texts: list[str]) -> np.ndarray:
        """The texts of records bound for collection ``name`` embedded by this server's encoder (an
        existing collection must hold this encoder's vectors)."""
        texts = self._texts(texts)
        await self._encoder_ready()
        try:
            model = self.reader.info(name).lineage.get("model")
        except CollectionNotFound:  # the write makes it, with this encoder's lineage
            model = None
        if model and model != self._encoder_lineage["model"]:
            raise InvalidArgumentError(f"namespace {name!r} holds vectors of model {model!r}; the server "
                                       f"embeds text with {self._encoder_lineage['model']!r}")
        return await self.texts.submit(texts)

    async def _embed_for(self, name: str, texts) -> np.ndarray:
        """``texts`` embedded for a search of collection ``name``, whose vectors must come from this
        server's encoder (its lineage says which model made them)."""
        texts = self._texts(texts)
        await self._encoder_ready()
        model = self.reader.info(name).lineage.get("model")
        if model and model != self._encoder_lineage["model"]:
            raise InvalidArgumentError(f"collection {name!r} holds vectors of model {model!r}; the server "
                                       f"encodes text with {self._encoder_lineage['model']!r}", field="text")
        return await self.texts.submit(texts)

    # -- the query path (HTTP and handles) -------------------------------------
    async def _search(self, name: str, queries=None, k=10, *, id: str | None = None, texts=None, filter=None,
                      include_metadata: bool = False, include_vectors: bool = False, params=None,
                      sparse_vector=None, mode: str = "dense", fusion=None) -> SearchResult:
        """Search collection ``name`` (resolved) with ``queries`` (a matrix), the stored record ``id``,
        or ``texts``, and/or ``sparse_vector``; check the request once, fan it out, merge, re-rank when
        configured (a hybrid query's shards already score exactly: it is not re-scored). ``mode`` says
        what ``texts`` are searched with: ``"dense"`` (embedded), ``"keyword"`` (BM25) or ``"hybrid"``
        (both, fused by ``fusion``)."""
        keywords = None
        if mode not in ("dense", "keyword", "hybrid"):
            raise InvalidArgumentError(f"mode must be 'dense', 'keyword' or 'hybrid', got {mode!r}", field="mode")
        if mode != "dense":
            if isinstance(texts, str):
                texts = [texts]
            if not isinstance(texts, (list, tuple)) or len(texts) != 1:
                raise InvalidArgumentError(f"mode {mode!r} searches one text (text=...)", field="text")
            keywords = texts[0]
            if mode == "keyword":
                texts = None
        if texts is not None:
            queries = await self._embed_for(name, texts)
        elif id is not None:
            rec = (await self._fetch_records(name, [id])).get(id)
            if rec is None:
                raise NotFoundError(f"query by id: no record {id!r} in {name!r}", kind="record", name=id)
            if rec[0].shape[0]:
                queries = rec[0][None, :]
            elif sparse_vector is None:  # a sparse collection's record: its sparse vector is the query
                sparse_vector = rec[2]
        request = self.reader.request(name, queries, k, filter=filter, params=params,
                                      include_metadata=include_metadata, include_vectors=include_vectors,
                                      limit=self.cfg.max_top_k, sparse_vector=sparse_vector, keywords=keywords,
                                      fusion=fusion)
        if request.keyword is not None:
            return await self._search_keyword(name, request)
        rerank = self.cfg.rerank if request.sparse is None else "none"
        k_fetch = candidates_per_shard(request.k, rerank=rerank, overfetch=self.cfg.overfetch,
                                       max_k=self.cfg.max_top_k)
        asked = request.with_k(k_fetch)
        if rerank == "exact" and not asked.include_vectors:
            asked = dataclasses.replace(asked, include_vectors=True)
        hits, info, missing, seconds = await self._fan_out(name, asked)
        merged, _ = merge(hits, k_fetch, largest=info["metric"] != "l2")
        if rerank == "exact":
            merged = rescore_exact(request.queries, merged, request.k, metric=info["metric"])
        return self._answer(name, request, merged, info, missing, seconds)

    def _answer(self, name: str, request: SearchRequest, merged, info: dict, missing: list,
                seconds: dict) -> SearchResult:
        """The merged hits of a search as its result, with what the shards said about it."""
        self.metrics.answered(seconds, bool(missing))
        return result_of_hits(merged, {
            "collection": name, "sequence": info["sequence"], "index": info["index"], "lineage": info["lineage"],
            "partial": bool(missing), "missing_shards": missing, "shard_seconds": seconds,
            "records": info["records"], "dim": info["dim"]},
            metadata=request.include_metadata, vectors=request.include_vectors)

    async def _search_keyword(self, name: str, request: SearchRequest) -> SearchResult:
        """A keyword query: the collection's BM25 statistics from every shard, then the keyword list
        and, for fusion, the dense one from every shard (both at once), merged, then fused."""
        terms = request.keyword.terms
        parts = await asyncio.gather(*(self._ask(i, "keyword_stats", name, terms) for i in range(len(self.shards))))
        k_req, d_req = keyword_requests(request, sum_stats(parts, len(terms)))
        if d_req is None:
            k_hits, info, missing, seconds = await self._fan_out(name, k_req)
            return self._answer(name, request, merge(k_hits, k_req.k, largest=True)[0], info, missing, seconds)
        (k_hits, info, missing, seconds), (d_hits, _, d_missing, _) = await asyncio.gather(
            self._fan_out(name, k_req), self._fan_out(name, d_req))
        largest = info["metric"] != "l2"
        merged = fuse_hits([merge(d_hits, d_req.k, largest=largest)[0], merge(k_hits, k_req.k, largest=True)[0]],
                           request.k, request.fusion, largest=(largest, True))
        return self._answer(name, request, merged, info, sorted(set(missing) | set(d_missing)), seconds)

    # -- stopping ----------------------------------------------------------------
    async def drain(self, grace_s: float) -> int:
        """Refuse new requests from now on (503, and ``/healthz`` says draining), wait up to
        ``grace_s`` seconds for those under way to finish, and return how many are still running."""
        self.draining = True
        return await _settled(lambda: self.in_flight, grace_s)

    @contextlib.asynccontextmanager
    async def _handle_call(self, method: str, collection=None):
        """A Python handle's call: refused while draining, else counted in ``in_flight`` until it ends;
        one access line either way, as for an HTTP request (``HANDLE query 200 2.1ms collection=docs``).
        Yields the name ``collection`` (a name or alias) resolves to, the one the line logs."""
        t0, status, counted = time.perf_counter(), 200, False
        token = COLLECTION.set(None)
        try:
            if self.draining:
                raise UnavailableError("the server is stopping; retry in a moment (or against another server)")
            self.in_flight += 1
            counted = True
            name = None if collection is None else self.resolve(collection)
            COLLECTION.set(name)
            yield name
        except BaseException as e:
            status = status_of(e, quiet=True)[0]
            raise
        finally:
            if counted:
                self.in_flight -= 1
            access_line("HANDLE", method, status, time.perf_counter() - t0)
            COLLECTION.reset(token)

    # -- the Python handle's methods -------------------------------------------
    def resolve(self, collection) -> str:
        return self.reader.resolve(collection)

    async def query(self, collection, queries=None, k=10, *, id: str | None = None, filter=None,
                    include_metadata: bool = False, include_vectors: bool = False, params=None,
                    sparse_vector=None) -> SearchResult:
        """The ``k`` best records of ``collection`` (a name or alias) for each row of ``queries``
        (NumPy, a list, a CPU torch tensor), or for the stored record ``id``; with ``sparse_vector``
        (``{"indices": [...], "values": [...]}``) a hybrid query of one row (or a sparse collection's)."""
        async with self._handle_call("query", collection) as name:
            return await self._search(name, queries, k, id=id, filter=filter,
                                      include_metadata=include_metadata, include_vectors=include_vectors,
                                      params=params, sparse_vector=sparse_vector)

    async def query_text(self, collection, texts, k=10, *, filter=None, include_metadata: bool = False,
                         include_vectors: bool = False, params=None, mode: str = "dense",
                         fusion=None) -> SearchResult:
        """Embed ``texts`` (a str or a list) with this server's encoder, then :meth:`query`. ``mode``:
        ``"keyword"`` searches one text with BM25 instead, ``"hybrid"`` both, fused by ``fusion``
        (``"rrf"``, or ``{"method": "weighted", "alpha": 0.5}``); a collection with a ``bm25_field``."""
        async with self._handle_call("query_text", collection) as name:
            return await self._search(name, None, k, texts=texts, filter=filter,
                                      include_metadata=include_metadata, include_vectors=include_vectors,
                                      params=params, mode=mode, fusion=fusion)

    async def fetch(self, collection, ids) -> FetchResult:
        """Records by id, in the order asked; ids that do not exist are listed in ``missing``."""
        wanted = list(dict.fromkeys(as_ids(ids)))
        async with self._handle_call("fetch", collection) as name:
            records = await self._fetch_records(name, wanted)
        found = [i for i in wanted if i in records]
        vecs = np.stack([records[i][0] for i in found]) if found else np.empty((0, 0), np.float32)
        return FetchResult(found, vecs, [records[i][1] for i in found], [i for i in wanted if i not in records],
                           [records[i][2] for i in found])

    async def encode(self, texts) -> np.ndarray:
        """``texts`` (a str or a list) embedded with this server's encoder: an (n, dim) float32 array
        (bulk loads, e.g. ``gpusearch serve``'s demo corpus)."""
        async with self._handle_call("encode"):
            texts = self._texts(texts)
            await self._encoder_ready()
            return await self.texts.submit(texts)

    async def encoder_lineage(self) -> dict | None:
        """The lineage a collection made with this server's encoder records (None without an encoder);
        waits for the encoder's load."""
        await self._encoder_ready()
        return None if self._encoder_lineage is None else dict(self._encoder_lineage)

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


# The deployment: the class above as the FastAPI ingress (its routes come from HttpRoutes).
# ``Aggregator.func_or_class`` is Serve's wrapper of it; its constructor is async, so unit tests
# build ``AggregatorServer`` (the wrapper's base) with stand-in handles instead.
Aggregator = serve.deployment(name="Aggregator")(serve.ingress(_http.api)(AggregatorServer))
