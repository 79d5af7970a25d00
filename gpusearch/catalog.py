"""Many named collections under one data directory, with aliases: what a server holds.

>>> import numpy as np, tempfile
>>> cat = Catalog(tempfile.mkdtemp(), shards=2, device="cpu", fsync=False)
>>> cat.upsert("docs-v1", ["a", "b"], np.eye(2, 3, dtype="float32")).count   # created by its first upsert
2
>>> cat.set_alias("docs", "docs-v1")
>>> cat.resolve("docs")
'docs-v1'
>>> cat.close()

Layout of ``<data_dir>/``::

    catalog.json           format version and the shard count every collection here uses
    aliases.json           alias -> collection name (replaced atomically on every switch)
    collections/<name>/    one gpusearch.Collection per name
    trash/                 dropped collections on their way out

The writable :class:`Catalog` lives in one process (it holds each collection's
WAL lock). Read replicas follow it with :class:`ShardCatalog`, which holds one
shard of every collection (a :class:`gpusearch.replica.ShardFollower` each) and
answers batches of searches; :func:`resolve_alias` reads the alias file.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .arrays import as_ids, as_matrix
from .collection import METRICS, Collection
from .errors import (AlreadyExistsError, CollectionNotFoundError, CollectionReplacedError, InvalidArgumentError,
                     InvalidTypeError)
from .fileio import atomic_write_json, read_json
from .request import MAX_TOP_K, SearchRequest, build_request
from .results import WriteResult

__all__ = ["Catalog", "ShardCatalog", "CatalogReader", "CollectionInfo", "CollectionNotFound", "resolve_alias",
           "check_name", "DEFAULT_COLLECTION", "CATALOG_FORMAT_VERSION"]

CATALOG_FORMAT_VERSION = 1
DEFAULT_COLLECTION = "default"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


#: No collection or alias of that name (HTTP 404); the name older code knows it by.
CollectionNotFound = CollectionNotFoundError


def check_name(name: Any, what: str = "collection name") -> str:
    """A collection or alias name: 1-128 letters, digits, ``_ . -``, starting with a letter or digit.

    ``""`` and ``"__default__"`` (Pinecone's default namespace) mean ``"default"``.
    """
    if name is None or name in ("", "__default__"):
        return DEFAULT_COLLECTION
    if not isinstance(name, str):
        raise InvalidTypeError(f"{what} must be a string, got {type(name).__name__}")
    if not _NAME_RE.match(name):
        raise InvalidArgumentError(f"{what} must be 1-128 letters, digits, '_', '.' or '-' starting with a letter or digit, "
                         f"got {name!r}")
    return name


class _JsonFileCache:
    """A JSON file re-read only when its (inode, size, mtime) changes: a stat per lookup."""

    def __init__(self, path: Path, default):
        self.path, self.default = path, default
        self._key, self._value = None, default
        self._lock = threading.Lock()

    def get(self):
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return self.default
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            if key != self._key:
                self._value, self._key = read_json(self.path), key
            return self._value


_alias_caches: dict[str, _JsonFileCache] = {}


def resolve_alias(data_dir, name: str) -> str:
    """The collection an alias points at (``name`` itself when it is not an alias)."""
    key = str(Path(data_dir).resolve())
    cache = _alias_caches.get(key)
    if cache is None:
        cache = _alias_caches.setdefault(key, _JsonFileCache(Path(key) / "aliases.json", {}))
    return cache.get().get(name, name)


def _collection_dir(data_dir: Path, name: str) -> Path:
    return data_dir / "collections" / name


@dataclass(frozen=True)
class CollectionInfo:
    """A collection's settings as an edge needs them to check a request."""

    name: str
    dim: int
    metric: str
    index: str
    family: str  # which typed search params its index takes: "flat", "ivf", "hnsw"
    lineage: dict
    shards: int
    bm25_field: str | None = None  # the metadata text its keyword index is made of


class CatalogReader:
    """What an edge (the serve aggregator) knows of a data directory without opening a collection:
    aliases, each collection's settings and metadata fields. Each file is re-read only when it
    changes (a ``stat`` per lookup), so a dropped and re-created collection is seen at once.
    Thread-safe.
    """

    def __init__(self, data_dir):
        self.data_dir = Path(data_dir).resolve()
        self._aliases = _JsonFileCache(self.data_dir / "aliases.json", {})
        self._configs: dict[str, _JsonFileCache] = {}
        self._schemas: dict[str, _JsonFileCache] = {}
        self._infos: dict[str, tuple[Any, CollectionInfo]] = {}

    def resolve(self, name) -> str:
        """The collection a name (or alias) means; ``""`` and ``"__default__"`` mean ``default``."""
        name = check_name(name)
        return self._aliases.get().get(name, name)

    def info(self, name: str) -> CollectionInfo:
        """Settings of collection ``name`` (already resolved); :class:`CollectionNotFound` if none."""
        cache = self._configs.get(name)
        if cache is None:
            cache = self._configs.setdefault(name, _JsonFileCache(_collection_dir(self.data_dir, name) /
                                                                  "collection.json", None))
        config = cache.get()
        if config is None:
            raise CollectionNotFound(f"no collection or alias named {name!r}", name=name)
        held = self._infos.get(name)
        if held is None or held[0] is not config:
            from .backends import index_family

            info = CollectionInfo(name, int(config["dim"]), config["metric"], config["index"],
                                  index_family(config["index"], int(config["dim"]), config["metric"]),
                                  dict(config.get("lineage") or {}), int(config["shards"]),
                                  config.get("bm25_field"))
            self._infos[name] = held = (config, info)
        return held[1]

    def schema(self, name: str) -> dict[str, str]:
        """The collection-wide metadata fields (the Writer publishes them before acknowledging a write
        that adds one), so a filter on a field only some shards hold is valid everywhere."""
        cache = self._schemas.get(name)
        if cache is None:
            cache = self._schemas.setdefault(name, _JsonFileCache(_collection_dir(self.data_dir, name) /
                                                                  "schema.json", None))
        return cache.get() or {}

    def request(self, name: str, queries, k, *, filter=None, params=None, include_metadata: bool = False,
                include_vectors: bool = False, limit: int = MAX_TOP_K, sparse_vector=None, keywords=None,
                fusion=None) -> SearchRequest:
        """Check a search of collection ``name`` (resolved) and build its request: the edge's one validation."""
        info = self.info(name)
        return build_request(queries, k, dim=info.dim, metric=info.metric, family=info.family,
                             schema=self.schema(name), filter=filter, params=params,
                             include_metadata=include_metadata, include_vectors=include_vectors, limit=limit,
                             sparse_vector=sparse_vector, keywords=keywords, fusion=fusion,
                             bm25_field=info.bm25_field)


class Catalog:
    """The writable side: create, drop, alias and write collections under ``data_dir``.

    Every collection in one catalog has the same shard count (the serve app has
    one shard deployment per shard number). Thread-safe.
    """

    def __init__(self, data_dir, *, shards: int = 2, metric: str = "cosine", index: str = "Flat",
                 device: str = "auto", fsync: bool = True, index_options: Mapping | None = None,
                 durable=None, index_role: str = "inline"):
        """``durable``: a :class:`gpusearch.durable.DurableStore` that has taken over (a Writer whose log
        and snapshots live at a storage URI): every collection's writes are shipped there, and
        creating, dropping, restoring and aliasing change the catalog there first.

        ``index_role``: every collection's (see :meth:`Collection.create`); ``"builder"`` for the
        served Writer, whose replicas load the indexes it saves."""
        self.index_role = index_role
        self.data_dir = Path(data_dir)
        self.durable = durable
        self.index_options = dict(index_options) if index_options else None  # for collections of `index`
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
        self.metric, self.index, self.device, self.fsync = metric, index, device, fsync
        (self.data_dir / "collections").mkdir(parents=True, exist_ok=True)
        meta_path = self.data_dir / "catalog.json"
        if meta_path.exists():
            meta = read_json(meta_path)
            if meta.get("shards") != shards:
                raise ValueError(f"{self.data_dir} holds collections with {meta.get('shards')} shards; "
                                 f"serve it with shards={meta.get('shards')} (got shards={shards})")
        else:
            atomic_write_json(meta_path, {"format_version": CATALOG_FORMAT_VERSION, "shards": int(shards)})
        self.shards = int(shards)
        self._open: dict[str, Collection] = {}
        self._lock = threading.RLock()
        self._aliases_path = self.data_dir / "aliases.json"
        # A writer that restarts checkpoints what it replayed, so a batch a crash left uncommitted
        # is folded away and followers never wait for it.
        for name in self.names():
            self._get(name).checkpoint()

    # -- names ---------------------------------------------------------------
    def names(self) -> list[str]:
        """Collection names, sorted."""
        root = self.data_dir / "collections"
        return sorted(p.name for p in root.iterdir() if (p / "collection.json").exists())

    def aliases(self) -> dict[str, str]:
        return dict(read_json(self._aliases_path)) if self._aliases_path.exists() else {}

    def resolve(self, name) -> str:
        name = check_name(name)
        return self.aliases().get(name, name)

    def set_alias(self, alias, target) -> None:
        """Point ``alias`` at collection ``target``; one atomic file replace, so a query sees the old or the new."""
        alias, target = check_name(alias, "alias"), check_name(target)
        with self._lock:
            if target not in self.names():
                raise CollectionNotFound(f"collection {target!r} does not exist; create it before pointing an alias at it", name=target)
            if alias in self.names():
                raise InvalidArgumentError(f"{alias!r} is a collection; an alias needs a name no collection has")
            aliases = self.aliases()
            aliases[alias] = target
            if self.durable is not None:
                self.durable.publish(aliases=aliases)
            atomic_write_json(self._aliases_path, aliases)

    def drop_alias(self, alias) -> None:
        alias = check_name(alias, "alias")
        with self._lock:
            aliases = self.aliases()
            if alias not in aliases:
                raise CollectionNotFound(f"no alias {alias!r}", name=alias)
            del aliases[alias]
            if self.durable is not None:
                self.durable.publish(aliases=aliases)
            atomic_write_json(self._aliases_path, aliases)

    # -- collections ---------------------------------------------------------
    def _check_free(self, name: str, hint: str = "") -> None:
        """Refuse ``name`` for a new collection when an alias or a collection has it (call under the lock)."""
        if name in self.aliases():
            raise AlreadyExistsError(f"{name!r} is an alias; pick another collection name")
        if name in self.names():
            raise AlreadyExistsError(f"collection {name!r} already exists{hint}")

    def create(self, name, *, dim: int | None, metric: str | None = None, index: str | None = None,
               lineage: Mapping | None = None, index_options: Mapping | None = None,
               vector_type: str = "dense", bm25_field: str | None = None) -> Collection:
        """A new collection ``name``; ``vector_type="sparse"`` (no ``dim``, metric ``ip``, index ``Flat``)
        for records with sparse vectors only."""
        name = check_name(name)
        with self._lock:
            self._check_free(name)
            sparse = vector_type == "sparse"
            col = Collection.create(_collection_dir(self.data_dir, name), dim=dim, metric=metric or self.metric,
                                    index="Flat" if sparse else index or self.index, shards=self.shards,
                                    device=self.device, lineage=lineage, fsync=self.fsync,
                                    index_options=index_options if index_options is not None else
                                    (self.index_options if not index and not sparse else None),
                                    vector_type=vector_type, bm25_field=bm25_field, index_role=self.index_role)
            self._open[name] = col
            if self.durable is not None:
                self._made_durable(name, col)
            return col

    def _made_durable(self, name: str, col: Collection) -> None:
        """Snapshot a collection made here to the storage URI and publish it; when that fails, the
        collection is removed again (a refused request leaves nothing behind)."""
        try:
            self.durable.created(name, col)
        except BaseException:
            col.close()
            del self._open[name]
            shutil.rmtree(_collection_dir(self.data_dir, name), ignore_errors=True)
            raise

    def _get(self, name: str) -> Collection:
        col = self._open.get(name)
        if col is None:
            path = _collection_dir(self.data_dir, name)
            if not (path / "collection.json").exists():
                raise CollectionNotFound(f"no collection or alias named {name!r}", name=name)
            col = self._open[name] = Collection.open(path, device=self.device, fsync=self.fsync,
                                                                 index_role=self.index_role)
            if self.durable is not None:
                self.durable.attach(name, col)
        return col

    def open_collections(self) -> list[Collection]:
        """The collections open now (none is opened by asking)."""
        with self._lock:
            return list(self._open.values())

    def get(self, name) -> Collection:
        """The collection ``name`` (or the one the alias ``name`` points at)."""
        with self._lock:
            return self._get(self.resolve(name))

    def drop(self, name) -> None:
        """Delete a collection and its files. Refused while an alias points at it."""
        name = check_name(name)
        with self._lock:
            pointing = sorted(a for a, t in self.aliases().items() if t == name)
            if pointing:
                raise InvalidArgumentError(f"alias {pointing[0]!r} points at {name!r}; switch or drop the alias first")
            col = self._get(name)
            if self.durable is not None:
                self.durable.dropped(name)  # the commit point: a new Writer no longer rebuilds it
            col.close()
            del self._open[name]
            trash = self.data_dir / "trash"
            trash.mkdir(exist_ok=True)
            doomed = trash / f"{name}-{time.time_ns()}"
            os.replace(_collection_dir(self.data_dir, name), doomed)  # atomic: readers see it or not
            shutil.rmtree(doomed, ignore_errors=True)

    # -- writes --------------------------------------------------------------
    def upsert(self, name, ids, vectors, metadata=None, *, create: bool = True, metric: str | None = None,
               sparse_values=None, vector_type: str | None = None, create_options: Mapping | None = None
               ) -> WriteResult:
        """Upsert into ``name``; with ``create`` a missing collection is made (dim from the vectors, ``metric``
        or the catalog's; a sparse one, metric ``ip``, when ``vector_type`` is ``"sparse"`` or the records
        have sparse values and no vectors). A collection made for a write that is then refused (a bad id,
        metadata value or vector) is removed again: a refused request leaves nothing behind, not even an
        empty collection. ``create_options``: more settings of a collection this write makes
        (``lineage``, ``bm25_field``)."""
        with self._lock:
            target = self.resolve(name)
            if not (create and target not in self.names()):
                col = self._get(target)
            else:
                if vector_type is None:
                    vector_type = "sparse" if vectors is None and sparse_values is not None else "dense"
                if vector_type == "sparse":
                    col = self.create(target, dim=None, metric="ip", vector_type="sparse")
                else:
                    m = as_matrix(vectors, name="vectors")
                    col = self.create(target, dim=int(m.shape[1]), metric=metric, **dict(create_options or {}))
                try:
                    return col.upsert(ids, vectors, metadata, sparse_values=sparse_values)
                except Exception:
                    if len(col) == 0:
                        self.drop(target)
                    raise
        return col.upsert(ids, vectors, metadata, sparse_values=sparse_values)

    def update(self, name, record_id=None, *, values=None, set_metadata=None, filter=None,
               sparse_values=None) -> WriteResult:
        """Pinecone's update: one id (new values and/or merged metadata), or every record a filter passes."""
        col = self.get(name)
        if (record_id is None) == (filter is None):
            raise InvalidArgumentError("update takes exactly one of id or filter")
        if record_id is not None:
            return col.update(record_id, values=values, set_metadata=set_metadata, sparse_values=sparse_values)
        if values is not None or sparse_values is not None:
            raise InvalidArgumentError("update by filter can only set metadata, not values or sparse values")
        if not isinstance(set_metadata, Mapping):
            raise InvalidArgumentError("update by filter needs setMetadata={...}")
        count, seq = 0, 0
        for rid in col.ids_matching(filter):
            r = col.update(rid, set_metadata=set_metadata)
            count, seq = count + r.count, r.sequence
        return WriteResult(count, seq)

    def delete(self, name, ids=None, *, filter=None, delete_all: bool = False) -> WriteResult:
        return self.get(name).delete(ids, filter=filter, delete_all=delete_all)

    def stats(self) -> dict[str, dict]:
        with self._lock:
            return {n: self._get(n).stats() for n in self.names()}

    def backup(self, name, uri, *, note: str | None = None) -> dict:
        """Back up collection ``name`` (or the one an alias names) to ``uri``: see :mod:`gpusearch.backup`.
        Writes to it go on meanwhile. A local location inside the data directory is refused."""
        from .storage import Location

        loc = Location(uri)
        if loc.local and Path(loc.root).resolve().is_relative_to(self.data_dir.resolve()):
            raise InvalidArgumentError(f"back up to a location outside the server's data directory, got {uri!r}",
                                       field="uri")
        return self.get(name).backup(uri, note=note)

    def restore(self, name, uri, *, backup_id: str | None = None) -> dict:
        """A new collection ``name`` from a backup at ``uri`` (the newest unless ``backup_id``); assembled
        under ``<data_dir>/restoring/`` and renamed into ``collections/`` when whole."""
        from .backup import restore

        name = check_name(name)
        with self._lock:
            self._check_free(name, "; restore to another name")
        # Downloading can take minutes: not under the lock. The final rename refuses a name taken meanwhile.
        info = restore(uri, _collection_dir(self.data_dir, name), backup_id=backup_id, shards=self.shards,
                       work_dir=self.data_dir / "restoring")
        with self._lock:
            if self.durable is None:
                self._get(name)  # open it: replays the WAL tail the backup holds, checks that it loads
            else:
                path = _collection_dir(self.data_dir, name)
                col = self._open[name] = Collection.open(path, device=self.device, fsync=self.fsync,
                                                                 index_role=self.index_role)
                self._made_durable(name, col)
        return info

    def unchanged_sync(self, name: str, shard: int, epoch, token) -> dict | None:
        """:func:`gpusearch.mirror.unchanged_answer` for collection ``name`` when it is open here, without
        the catalog's lock or the file system (an event loop calls it on every replica's sync); None when
        the answer needs :func:`gpusearch.mirror.sync_answer`."""
        from .mirror import unchanged_answer

        col = self._open.get(name)
        return None if col is None or col._closed else unchanged_answer(col, shard, epoch, token)

    def close(self) -> None:
        with self._lock:
            for col in self._open.values():
                col.close()
            self._open.clear()


class ShardCatalog:
    """Shard ``shard`` of every collection under ``data_dir``, read-only, caught up on every batch."""

    def __init__(self, data_dir, shard: int, *, device: str = "auto", source=None, load_indexes: bool = False):
        """``source``: None to read the writer's own files at ``data_dir``; or, for a replica that shares
        no file system with the writer, an object whose ``names()`` lists the writer's collections and
        whose ``fetch(name, shard, have, epoch, token)`` returns :func:`gpusearch.mirror.sync_answer`'s
        answer (raising ``CollectionNotFoundError`` for a collection the writer does not have): this
        shard of each collection is then copied under ``data_dir`` (:class:`gpusearch.mirror.ShardMirror`)
        and synced before every search, fetch and listing, so a query sees every write acknowledged
        before it.

        ``load_indexes``: see :meth:`gpusearch.replica.ShardFollower.open` (True behind a Writer whose
        catalog has ``index_role="builder"``); the indexes are then loaded by :meth:`refresh_all`."""
        from .replica import ShardFollower  # the replica module is only needed on the read side

        self.load_indexes = load_indexes
        self._Follower = ShardFollower
        self.data_dir, self.shard, self.device = Path(data_dir), int(shard), device
        self._source = source
        self._mirrors: dict[str, Any] = {}
        self._followers: dict[str, Any] = {}
        self._schemas: dict[str, _JsonFileCache] = {}
        self._lock = threading.Lock()
        meta_path = self.data_dir / "catalog.json"
        if source is None and meta_path.exists():
            n = read_json(meta_path).get("shards")
            if not 0 <= self.shard < n:
                raise ValueError(f"shard must be in [0, {n}) for {self.data_dir}, got {shard}")

    def names(self) -> list[str]:
        if self._source is not None:
            return sorted(self._source.names())
        root = self.data_dir / "collections"
        return sorted(p.name for p in root.iterdir() if (p / "collection.json").exists()) if root.exists() else []

    def _sync(self, name: str) -> None:
        """Bring this shard's copy of ``name`` up to the writer (a replica without a shared file system)."""
        m = self._mirror(name)
        try:
            m.sync()
        except CollectionNotFound:
            with self._lock:
                if self._mirrors.get(name) is m:
                    del self._mirrors[name]

    def seed(self, name: str, rel: str, size: int, sha256: str) -> Path:
        """Where to put a copy of the writer's file ``rel`` of collection ``name`` got from a storage URI
        (see :meth:`gpusearch.mirror.ShardMirror.seed`); a replica that shares no file system only."""
        if self._source is None:
            raise ValueError("only a replica that copies from its writer (source=...) takes seeds")
        return self._mirror(name).seed(rel, size, sha256)

    def _mirror(self, name: str):
        from .mirror import ShardMirror

        with self._lock:
            m = self._mirrors.get(name)
            if m is None:
                fetch = lambda have, epoch, token: self._source.fetch(name, self.shard, have, epoch, token)  # noqa: E731
                m = self._mirrors[name] = ShardMirror(_collection_dir(self.data_dir, name), self.shard, fetch)
            return m

    def open_all(self) -> None:
        """Load every collection now (a replica does this before it takes queries)."""
        for name in self.names():
            self.follower(name)

    def follower(self, name: str):
        """The caught-up follower of this shard of ``name`` (opened on first use, forgotten once dropped)."""
        path = _collection_dir(self.data_dir, name)
        if self._source is not None:
            self._sync(name)
        with self._lock:
            f = self._followers.get(name)
            if not (path / "collection.json").exists():
                if f is not None:
                    self._followers.pop(name).close()
                raise CollectionNotFound(f"no collection or alias named {name!r}", name=name)
            if f is None:
                f = self._followers[name] = self._Follower.open(path, self.shard, device=self.device,
                                                                         load_indexes=self.load_indexes)
        try:
            f.refresh(load_index=False)  # indexes are loaded by refresh_all, off the query path
        except CollectionReplacedError:  # dropped and made again with another shape: follow the new one
            with self._lock:
                if self._followers.get(name) is f:
                    self._followers.pop(name).close()
                f = self._followers.get(name)
                if f is None:
                    f = self._followers[name] = self._Follower.open(path, self.shard, device=self.device,
                                                                         load_indexes=self.load_indexes)
            f.refresh(load_index=False)  # indexes are loaded by refresh_all, off the query path
        return f

    def refresh_all(self) -> int:
        """Catch every collection's follower up with the writer, and load the newer indexes its
        checkpoints saved (``load_indexes``). A served replica calls this from a thread of its own
        twice a second: its queries then neither load an index nor, as a rule, find WAL files dropped
        before they were read (which reloads the whole shard). Returns how many indexes it loaded."""
        loaded = 0
        for name in self.names():
            try:
                loaded += self.follower(name).load_index()
            except CollectionNotFound:
                pass  # dropped meanwhile
        return loaded

    def schema(self, name: str) -> dict[str, str] | None:
        """The collection-wide metadata fields (the Writer publishes them before acknowledging a write
        that adds one), so a filter on a field only other shards hold is valid here too."""
        cache = self._schemas.get(name)
        if cache is None:
            cache = self._schemas.setdefault(name, _JsonFileCache(_collection_dir(self.data_dir, name) / "schema.json",
                                                                  None))
        return cache.get()

    def search_batch(self, requests: Sequence[tuple[str, Any]]) -> list:
        """Answer many ``(collection, SearchRequest)`` pairs, one engine call per group of alike
        requests (same collection, filter, params and include flags) with their queries stacked:
        concurrent clients share one GEMM.

        Returns per request ``(Hits, info)`` (the hits carry their ids; ``info``: the collection's
        metric, dim, index, lineage and this shard's applied sequence number), or the exception
        that request raised.
        """
        out: list = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for pos, (name, r) in enumerate(requests):
            groups.setdefault((name, r.group), []).append(pos)
        for (name, _), members in groups.items():
            first = requests[members[0]][1]
            try:
                f = self.follower(name)
                qs = [requests[p][1].queries for p in members]
                k = max(requests[p][1].k for p in members)
                stacked = first.with_k(k) if len(qs) == 1 else dataclasses.replace(first, queries=np.concatenate(qs), k=k)
                hits = f.search_request(stacked, schema=self.schema(name))
                info = {"metric": f.metric, "dim": f.dim, "index": f.config["index"], "lineage": f.lineage,
                        "sequence": f.applied_seq, "records": len(f)}
            except Exception as e:  # noqa: BLE001 - handed back per request, raised by the caller
                for p in members:
                    out[p] = e
                continue
            lo = 0
            for p, q in zip(members, qs):
                out[p] = (hits.slice(lo, lo + q.shape[0], requests[p][1].k), info)
                lo += q.shape[0]
        return out

    def keyword_stats(self, name: str, terms) -> tuple:
        """This shard's BM25 statistics of collection ``name`` for ``terms`` (see Collection.keyword_stats)."""
        return self.follower(name).shard.keyword_stats(terms)

    def fetch(self, name: str, ids) -> list[tuple]:
        return self.follower(name).fetch([i for i in as_ids(ids)])

    def stats(self) -> dict[str, dict]:
        return {n: self.follower(n).stats() for n in self.names()}

    def close(self) -> None:
        with self._lock:
            for f in self._followers.values():
                f.close()
            self._followers.clear()
