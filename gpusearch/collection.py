"""The in-process engine: a persistent, sharded collection of (id, vector, metadata) records.

>>> import numpy as np, tempfile, gpusearch as gs
>>> col = gs.Collection.create(tempfile.mkdtemp() + "/docs", dim=3, metric="cosine", device="cpu")
>>> col.upsert(["a", "b"], np.array([[1, 0, 0], [0, 1, 0]], "float32"), metadata=[{"genre": "drama"}, {"genre": "news"}]).count
2
>>> col.search([1, 0.1, 0], k=1, filter={"genre": {"$eq": "drama"}}).ids
[['a']]
>>> col.close()

Writes: a batch is validated whole, split by a stable hash of each id into
shard parts, each part appended to its shard's WAL and fsynced, and (when it
spans several shards) a commit record appended to the collection's commit
log; only then is it applied in memory and acknowledged. Reopening replays
committed parts only, so a batch is all there or not at all.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from . import metadata as md
from . import ops as ops_mod
from ._memory import RELEASE_AFTER_BYTES, release_freed
from .arrays import as_ids, prepare_vectors, to_host
from .backends import check_index_options, check_index_spec
from .backends.options import LEGACY_OPTIONS
from .devices import resolve_device
from .errors import ClosedError, InvalidArgumentError, InvalidTypeError
from .fileio import DiskFullError, atomic_write_json, read_json
from .bm25 import encode_text, fuse_hits, keyword_requests, sum_stats
from .sparse import check_sparse, check_sparse_list, sparse_to_arrow
from .filters import compile_filter
from .hits import Hits
from .merge import merge
from .progress import progress
from .request import MAX_TOP_K, SearchParams, SearchRequest, build_request
from .results import FetchResult, SearchResult, WriteResult, result_of_hits
from .shard import Shard
from .wal import WALCorruptError, WriteAheadLog

__all__ = ["Collection", "FORMAT_VERSION", "MAX_TOP_K", "METRICS"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
METRICS = ("cosine", "ip", "l2")
DTYPES = ("float32", "float16")
MAX_SHARDS = 256
CHECKPOINT_WAL_BYTES = 256 << 20
# Below this many multiply-adds per search, shards are searched one after another in the caller's thread.
PARALLEL_SEARCH_FLOPS = 20_000_000
_MANIFEST = "collection.json"
_SCHEMA = "schema.json"


def shard_of(record_id: str, shards: int) -> int:
    """The shard that owns an id: a stable 64-bit hash (the same in every process and release)."""
    h = hashlib.blake2b(record_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "little") % shards


def _replayed_op(record, shard: Shard, dim: int) -> ops_mod.Op:
    """Decode a WAL record for replay; a clear error for one that passed its CRC but holds no op."""
    try:
        op = ops_mod.decode(record.payload)
    except Exception as e:  # a bug or a foreign file: the WAL's checks cannot tell it from an op
        raise ValueError(f"shard {shard.number} of {shard.path}: WAL record {record.seq} passed its checksum "
                         f"but is not a gpusearch op ({type(e).__name__}: {e}); cannot replay it") from e
    if op.kind == ops_mod.UPSERT and (op.vectors.ndim != 2 or op.vectors.shape[1] != dim or
                                      len(op.vectors) != len(op.ids)):
        raise ValueError(f"shard {shard.number} of {shard.path}: WAL record {record.seq} is not a gpusearch op "
                         f"for this collection: {len(op.ids)} ids with vectors of shape {op.vectors.shape}, "
                         f"the collection's dim is {dim}")
    return op


def _commit_payload(shards: list[int]) -> bytes:
    """A commit record names the shards of its batch, so that a lost part is noticed on open."""
    return b"shards " + ",".join(map(str, shards)).encode("ascii")


def _commit_shards(payload: bytes) -> list[int] | None:
    """The shards a commit record names; None for the empty records of older releases."""
    if not payload.startswith(b"shards "):
        return None
    try:
        return [int(x) for x in payload[7:].split(b",")]
    except ValueError:
        return None


def _check_committed_parts(path: Path, committed: dict, shards: list[Shard], pending: list) -> None:
    """Refuse to open when a committed batch lost its part on some shard.

    A commit record is appended only after every part of its batch is durable, so
    a part that is gone (a damaged WAL would cut it, or a file lost it) means an
    acknowledged write is lost. Replaying the other parts would leave the batch
    half applied, and dropping it everywhere would lose it silently: both break a
    promise, so the collection does not open and nothing on disk is changed.
    """
    held = [{seq: op for seq, op in ops} for ops in pending]
    n = len(shards)
    for seq in sorted(committed):
        parts = committed[seq]
        if parts is not None:
            missing = [i for i in parts if i < n and seq not in held[i] and shards[i].applied_seq < seq]
        else:  # an older commit record: only the count of participants is known, from a part that is there
            holders = [i for i in range(n) if seq in held[i]]
            if not holders:
                continue
            expected = held[holders[0]][seq].participants
            others = [i for i in range(n) if i not in holders]
            if len(holders) + sum(shards[i].applied_seq >= seq for i in others) >= expected:
                continue
            unknown = [i for i in others if shards[i].applied_seq < seq]
            missing = [i for i in unknown if shards[i].wal.damage is not None] or unknown
        if not missing:
            continue
        i = missing[0]
        damage = shards[i].wal.damage
        if damage is not None:
            where = (f"its WAL {damage.path} is damaged at offset {damage.offset} ({damage.problem}), and that "
                     f"record and everything after it would have to be cut")
            culprit, offset = damage.path, damage.offset
        else:
            where = f"its WAL ({shards[i].wal.directory}) holds no record of it (a WAL file was cut or removed)"
            culprit, offset = shards[i].wal.directory, None
        across = f"shards {', '.join(map(str, parts))}" if parts is not None else "several shards"
        raise WALCorruptError(
            f"cannot open {path}: batch {seq} was committed across {across} (so it was acknowledged), but the "
            f"part on shard {i} is gone: {where}. Replaying the other shards alone would leave the batch half "
            f"applied, so the collection was not opened and nothing on disk was changed. Restore "
            f"{culprit} from a backup or a copy of the collection", culprit, offset)


def index_options_of(config: dict) -> dict:
    """A collection's index options: as stored, or what a collection made before options existed
    was built with."""
    if "index_options" in config:
        return dict(config["index_options"])
    from .backends import index_family

    family = index_family(config["index"], int(config["dim"]), config["metric"])
    return check_index_options(config["index"], int(config["dim"]), config["metric"],
                               LEGACY_OPTIONS.get(family), family=family)


def read_config(path) -> dict:
    """The ``collection.json`` of the collection at ``path``, checked to be one this release can read."""
    path = Path(path)
    mpath = path / _MANIFEST
    if not mpath.is_file():
        raise ValueError(f"{path} is not a gpusearch collection (no {_MANIFEST}); create one with Collection.create")
    config = read_json(mpath)
    version = config.get("format_version") if isinstance(config, dict) else None
    if not isinstance(version, int):
        raise ValueError(f"{mpath} is not a gpusearch collection manifest (no format_version)")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path} was written in collection format {version}; this gpusearch reads format "
            f"{FORMAT_VERSION} or older: upgrade gpusearch to open it"
        )
    return config


def sorted_page(keys, after: str | None = None, limit: int | None = None) -> tuple[list[str], bool]:
    """The first ``limit`` of ``keys`` in sorted order that sort after ``after``, and whether more follow
    (all of them for ``limit=None``): one page of a listing, in n log limit.

    >>> sorted_page(["b", "d", "a", "c"], after="a", limit=2)
    (['b', 'c'], True)
    """
    import heapq

    if after is not None:
        keys = [k for k in keys if k > after]
    if limit is None:
        return sorted(keys), False
    page = heapq.nsmallest(limit + 1, keys)
    return page[:limit], len(page) > limit


class Collection:
    """A named, persistent set of records with a fixed ``dim``, ``metric`` and index.

    Use :meth:`create` or :meth:`open`; see the module docstring for an example.
    Thread-safe: searches run concurrently, writes one at a time.
    """

    def __init__(self, path: Path, config: dict, shards: list[Shard], *, device: str, next_seq: int,
                 commits: WriteAheadLog):
        self.path = path
        self._config = config
        self.dim: int = config["dim"]  # 0 for a sparse-only collection
        self.vector_type: str = config.get("vector_type", "dense")
        self.bm25_field: str | None = config.get("bm25_field")  # the metadata text a keyword index is made of
        self.metric: str = config["metric"]
        self.index: str = config["index"]
        self.dtype: str = config["dtype"]
        self.family: str = shards[0].backend.family  # which typed search params the index takes
        self.lineage: dict = dict(config.get("lineage") or {})
        self.device = device
        self._shards = shards
        self._seq = next_seq - 1
        self._commits = commits
        # Which opening of the collection this is: a reopen may have cut a torn WAL tail and appended at
        # the cut, which a copy of the files made before it must not take as an extension (gpusearch.mirror).
        self.epoch = uuid.uuid4().hex
        self._log_sink = None  # gpusearch.durable's shipper, when the Writer keeps its log at a storage URI
        self._backup_hashes: dict = {}  # SHA-256 of snapshot files hashed by the last backup (gpusearch.backup)
        self._write_lock = threading.Lock()
        self._build_lock = threading.Lock()  # one index build at a time (index_role "builder")
        self._last_write = time.monotonic()
        # More threads than cores only makes BLAS and FAISS threads fight over them.
        self._pool = cf.ThreadPoolExecutor(max_workers=max(1, min(len(shards), os.cpu_count() or 1)),
                                           thread_name_prefix="gpusearch-shard")
        self.schema: dict[str, str] = {}
        for s in shards:
            self.schema = md.merge_schemas(self.schema, s.schema)
        self._closed = False
        spath = path / _SCHEMA
        if self.schema and (not spath.exists() or read_json(spath) != self.schema):
            try:
                atomic_write_json(spath, self.schema)
            except DiskFullError as exc:  # a full disk must not keep the collection from opening
                log.warning("collection %s: cannot update %s (%s); written again with the next new field",
                            path, _SCHEMA, exc)

    # -- construction --------------------------------------------------------
    @classmethod
    def create(cls, path, *, dim: int | None = None, metric: str = "cosine", index: str = "Flat", shards: int = 1,
               device: str = "auto", dtype: str = "float32", lineage: Mapping[str, Any] | None = None,
               fsync: bool = True, index_options: Mapping[str, int] | None = None,
               vector_type: str = "dense", bm25_field: str | None = None,
               index_role: str = "inline") -> "Collection":
        """Create an empty collection at ``path`` (a directory that must not hold one yet).

        Parameters
        ----------
        dim : vector length.
        metric : ``"cosine"`` (vectors are stored unit-normalised), ``"ip"`` or ``"l2"``
            (scores are squared distances, smaller is better).
        index : ``"Flat"`` (exact search on our kernels) or any FAISS factory string,
            e.g. ``"IVF1024,Flat"``, ``"IVF4096,PQ64"``, ``"HNSW32"``.
        shards : number of partitions; records are placed by a stable hash of their id.
        device : ``"auto"`` (a GPU when torch sees one), ``"cpu"`` or ``"cuda:N"``.
        dtype : ``"float32"``, or ``"float16"`` for the copy held in GPU memory.
        lineage : which embedding model made the vectors, e.g. ``{"model": "all-MiniLM-L6-v2", "version": "1"}``.
        index_options : the index's build and default-search settings, e.g. ``{"efConstruction": 200,
            "efSearch": 64}`` (HNSW) or ``{"nprobe": 16}`` (IVF); see :mod:`gpusearch.backends.options`
            for the defaults. ``M`` and ``nlist`` are in the index string (``"HNSW32"``, ``"IVF1024,Flat"``).
        fsync : keep True; False trades the durability guarantee for speed (tests, bulk loads).
        vector_type : ``"dense"``, or ``"sparse"`` for records with sparse vectors only (``dim`` None,
            metric ``"ip"``, index ``"Flat"``). Dense ``"ip"`` collections take sparse vectors beside
            the dense ones (hybrid search).
        bm25_field : a metadata field (e.g. ``"text"``) whose text the collection keeps a BM25 keyword
            index of (:mod:`gpusearch.bm25`): ``search(..., keywords=...)`` then searches it, alone or
            fused with the dense query. Such a collection makes its sparse vectors itself.
        index_role : ``"inline"`` (every write is added to the FAISS index at once), or ``"builder"``
            for a server's Writer, which never searches: the index is built at checkpoints, for
            the shard replicas to load (see :mod:`gpusearch.shard`).
        """
        path = Path(path)
        if vector_type not in ("dense", "sparse"):
            raise InvalidArgumentError(f"vector_type must be 'dense' or 'sparse', got {vector_type!r}")
        if bm25_field is not None:
            if not isinstance(bm25_field, str) or not bm25_field or len(bm25_field) > 512:
                raise InvalidArgumentError(f"bm25_field must be a metadata field name, got {bm25_field!r}")
            if vector_type == "sparse":
                raise InvalidArgumentError("bm25_field applies to dense collections (a sparse collection holds "
                                           "the sparse vectors it is sent)")
        if vector_type == "sparse":
            if dim not in (None, 0):
                raise InvalidArgumentError(f"a sparse collection has no dimension: leave dim out, got {dim!r}")
            if metric != "ip":
                raise InvalidArgumentError(f"a sparse collection's metric must be 'ip' (Pinecone's dotproduct), "
                                           f"got {metric!r}")
            if index != "Flat":
                raise InvalidArgumentError(f"a sparse collection's index must be 'Flat' (sparse search is exact), "
                                           f"got {index!r}")
            dim = 0
        elif dim is None:
            raise InvalidArgumentError("dim is required for a dense collection (the length of its vectors)")
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
            raise InvalidTypeError(f"dim must be an int, got {type(dim).__name__}")
        if not 1 <= dim <= 65536 and not (vector_type == "sparse" and dim == 0):
            raise InvalidArgumentError(f"dim must be between 1 and 65536, got {dim}")
        if metric not in METRICS:
            raise InvalidArgumentError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
        if dtype not in DTYPES:
            raise InvalidArgumentError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if isinstance(shards, bool) or not isinstance(shards, (int, np.integer)) or not 1 <= shards <= MAX_SHARDS:
            raise InvalidArgumentError(f"shards must be an int between 1 and {MAX_SHARDS}, got {shards!r}")
        if lineage is not None and not isinstance(lineage, Mapping):
            raise InvalidTypeError(f"lineage must be a dict such as {{'model': ..., 'version': ...}}, got {type(lineage).__name__}")
        if vector_type == "sparse":
            options = check_index_options(index, 1, metric, index_options)
        else:
            index = check_index_spec(index, int(dim), metric)
            options = check_index_options(index, int(dim), metric, index_options)
        resolve_device(device)  # fail before creating anything
        if (path / _MANIFEST).exists():
            raise ValueError(f"{path} already holds a collection; use Collection.open({str(path)!r})")
        if path.exists() and not path.is_dir():
            raise ValueError(f"{path} is a file; create a collection in a new or empty directory")
        if path.exists() and any(path.iterdir()):
            raise ValueError(f"{path} exists and is not empty; create a collection in a new or empty directory")
        path.mkdir(parents=True, exist_ok=True)
        config = {
            "format_version": FORMAT_VERSION,
            "dim": int(dim),
            "vector_type": vector_type,
            **({"bm25_field": bm25_field} if bm25_field else {}),
            "metric": metric,
            "index": index,
            "index_options": options,
            "shards": int(shards),
            "dtype": dtype,
            "lineage": json.loads(json.dumps(dict(lineage or {}))),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        atomic_write_json(path / _MANIFEST, config)
        return cls._load(path, config, device=device, fsync=fsync, index_role=index_role)

    @classmethod
    def open(cls, path, *, device: str = "auto", fsync: bool = True, index_role: str = "inline") -> "Collection":
        """Open an existing collection: load each shard's snapshot and replay its WAL.

        Torn or corrupt WAL tails are cut (see :mod:`gpusearch.wal`); a batch that spans
        shards is replayed only with its commit record. Raises ``ValueError`` when a WAL
        record passes its checksum but holds no op (a bug or a foreign file), naming
        the shard and the record's seq.

        Raises :class:`gpusearch.wal.WALCorruptError` (a ``ValueError``), changing
        nothing on disk, when recovery would otherwise lose an acknowledged write:
        damage in a WAL file other than the newest (or a sealed one, or a stray file
        named like one), a finished file cut short or missing, or a committed batch
        whose part on some shard is damaged or gone (replaying the other parts
        would leave it half applied). The message names the file.
        """
        path = Path(path)
        return cls._load(path, read_config(path), device=device, fsync=fsync, index_role=index_role)

    @classmethod
    def _load(cls, path: Path, config: dict, *, device: str, fsync: bool, index_role: str = "inline") -> "Collection":
        device = resolve_device(device)
        # Torn tails are cut only once the cuts are known to lose no committed batch (repair below).
        commits, commit_records = WriteAheadLog.open(path / "commits", fsync=fsync, repair=False)
        committed = {r.seq: _commit_shards(r.payload) for r in commit_records}
        shards, pending = [], []
        try:
            for i in range(config["shards"]):
                shard, records = Shard.open(
                    path / f"shard-{i:03d}", number=i, dim=config["dim"], metric=config["metric"],
                    index=config["index"], device=device, dtype=config["dtype"], fsync=fsync, repair=False,
                    index_options=index_options_of(config), index_role=index_role,
                )
                shards.append(shard)
                pending.append([(r.seq, _replayed_op(r, shard, config["dim"])) for r in records])
            _check_committed_parts(path, committed, shards, pending)
            commits.repair()
            for shard in shards:
                shard.wal.repair()
            last = commits.last_seq
            for i, (shard, ops) in enumerate(zip(shards, pending)):
                last = max(last, shard.applied_seq, shard.wal.last_seq)
                with progress(len(ops), f"replaying shard {i} WAL", unit="op", min_total=100) as bar:
                    for seq, op in ops:
                        if op.participants == 1 or seq in committed:
                            shard.apply(seq, op)
                        else:
                            log.warning("shard %d: dropping batch %d, which was never committed (a crash or a "
                                        "failed write cut it short)", i, seq)
                        bar.update(1)
                pending[i] = None
        except BaseException:
            # Let go of the WAL locks, so that the caller can repair the files and open again.
            for shard in shards:
                shard.close()
            commits.close()
            raise
        from .backup import remove_stale_pins

        remove_stale_pins(path)  # this process holds the collection's locks now
        return cls(path, config, shards, device=device, next_seq=last + 1, commits=commits)

    # -- helpers -------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"collection {self.path} is closed; open it again with Collection.open")

    def _prepare_vectors(self, x, name: str, device: str = "cpu", with_norms: bool = False):
        if not self.dim:
            raise InvalidArgumentError(f"this collection holds sparse vectors only: send sparse_values, not "
                                       f"dense {name}", field=name)
        return prepare_vectors(x, name=name, dim=self.dim, metric=self.metric, device=device, with_norms=with_norms)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _commit(self, parts: dict[int, bytes], apply: dict[int, ops_mod.Op]) -> int:
        """Log ``parts`` (shard -> payload) durably, commit, apply; returns the sequence number.

        With a log sink attached (:mod:`gpusearch.durable`: the Writer's log at a storage URI), the
        write is refused before anything is written when the sink cannot take it, and, once logged
        here, it is shipped before it counts as acknowledged: a failure to ship is raised after the
        write is applied (it is in this WAL, so this copy must show it), as a retryable error."""
        sink = self._log_sink
        if sink is not None:
            sink.before_write()
        seq = self._next_seq()
        shards = sorted(parts)
        self._on_every(lambda i: self._shards[i].log(seq, parts[i]), shards)
        if len(shards) > 1:
            self._commits.append(seq, _commit_payload(shards))
        shipped = sink.ship(seq, parts) if sink is not None else None
        for i in shards:
            self._shards[i].apply(seq, apply[i])
        if shipped is not None:
            raise shipped
        return seq

    def apply_logged(self, seq: int, parts: dict[int, bytes]) -> None:
        """Log and apply a write another copy of this collection logged as ``seq`` (``parts``: shard ->
        payload, as :meth:`_commit` logged them): how a Writer rebuilds a collection from the log at
        a storage URI (:mod:`gpusearch.durable`). ``seq`` must be above every sequence number here."""
        from .wal import WALRecord

        self._check_open()
        with self._write_lock:
            if seq <= self._seq:
                raise ValueError(f"collection {self.path}: write {seq} is not after {self._seq}")
            if any(not 0 <= i < len(self._shards) for i in parts):
                raise ValueError(f"collection {self.path}: write {seq} names shards {sorted(parts)}, the "
                                 f"collection has {len(self._shards)}")
            ops = {i: _replayed_op(WALRecord(seq, p), self._shards[i], self.dim) for i, p in parts.items()}
            self._seq = seq
            shards = sorted(parts)
            self._on_every(lambda i: self._shards[i].log(seq, parts[i]), shards)
            if len(shards) > 1:
                self._commits.append(seq, _commit_payload(shards))
            schema = self.schema
            for i in shards:
                self._shards[i].apply(seq, ops[i])
                schema = md.merge_schemas(schema, self._shards[i].schema)
            if schema != self.schema:
                atomic_write_json(self.path / _SCHEMA, schema)
                self.schema = schema
            self._maybe_checkpoint()

    def attach_log(self, sink) -> None:
        """Ship every write from now on to ``sink`` (see :meth:`_commit`); None to stop."""
        with self._write_lock:
            self._log_sink = sink

    def _on_every(self, fn, items) -> None:
        """Run ``fn`` on every item in the pool and wait for all, then raise the first failure.

        Never returns (or raises) while a shard is still writing: after a failure (a
        full disk) the caller must see every shard's files settled.
        """
        futures = [self._pool.submit(fn, item) for item in items]
        cf.wait(futures)
        for f in futures:
            exc = f.exception()
            if exc is not None:
                raise exc

    def _maybe_checkpoint(self) -> None:
        self._last_write = time.monotonic()
        if any(s.wal.size_bytes > CHECKPOINT_WAL_BYTES for s in self._shards):
            try:
                self._checkpoint_locked()
            except OSError as exc:
                # The write that got here is acknowledged (durable in the WAL): it must not raise. The
                # WAL keeps everything; the checkpoint is tried again after the next write.
                log.warning("collection %s: automatic checkpoint failed (%s); the WAL keeps every write, "
                            "the checkpoint is retried after the next one", self.path, exc)

    # -- writes --------------------------------------------------------------
    def upsert(self, ids, vectors=None, metadata: Sequence[Mapping | None] | None = None, *,
               sparse_values: Sequence | None = None, batch_size: int | None = None) -> WriteResult:
        """Insert or overwrite records. Durable (fsynced) when it returns.

        On a full disk it raises :class:`gpusearch.fileio.DiskFullError` (an
        ``OSError`` with ``errno.ENOSPC`` naming the file) and nothing of the batch
        is kept: not in memory, not after a reopen. Earlier writes are untouched.

        ``ids`` are str or int (ints are stored as their decimal string). If an id
        appears twice in one call the last occurrence wins. The whole call is one
        atomic batch unless ``batch_size`` is given: then it commits in batches of
        that many records (each atomic, with a progress bar), for bulk loads.

        ``sparse_values``: one sparse vector per record (a dict ``{"indices": [...], "values": [...]}``,
        a :class:`~gpusearch.sparse.SparseVector`, or ``None`` for none), beside ``vectors`` in an
        ``"ip"`` collection or instead of them in a sparse one (where every record needs one).
        """
        self._check_open()
        ids = as_ids(ids)
        sparse = None
        if sparse_values is not None:
            self._check_takes_sparse()
            sparse = check_sparse_list(sparse_values, len(ids))
        if not self.dim:
            if vectors is not None:
                raise InvalidArgumentError("this collection holds sparse vectors only: send sparse_values, not "
                                           "dense vectors", field="vectors")
            if sparse is None or None in sparse:
                at = 0 if sparse is None else sparse.index(None)
                raise InvalidArgumentError(f"record {at} has no sparse values: every record of a sparse collection "
                                           f"needs sparse_values with at least one value", field="sparse_values")
            vecs, norms = np.zeros((len(ids), 0), np.float32), None
        elif vectors is None:
            raise InvalidArgumentError(f"vectors are required: one list of {self.dim} values per record",
                                       field="vectors")
        else:
            vecs, norms = self._prepare_vectors(vectors, "vectors", with_norms=True)
        if sparse is not None and all(v is None for v in sparse):
            sparse = None
        if len(ids) != vecs.shape[0]:
            raise InvalidArgumentError(f"ids and vectors must have the same length, got {len(ids)} ids and {vecs.shape[0]} vectors")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise InvalidArgumentError(f"batch_size must be a positive int or None, got {batch_size!r}")
        last: dict[str, int] = {}
        for pos, i in enumerate(ids):
            last[i] = pos
        keep = np.fromiter(last.values(), dtype=np.int64, count=len(last))
        keep.sort()
        step = batch_size or len(keep)
        if self.bm25_field:
            sparse = self._keyword_vectors(metadata, len(ids))
        with self._write_lock:
            # Under the lock: the schema this batch extends must be the one it commits against,
            # or two concurrent upserts could each add a field (or one type per field) and one lose.
            table, schema = md.normalize_metadata(metadata, len(ids), self.schema)
            seq = self._seq
            with progress(len(keep), "upsert", min_total=100_000) as bar:
                for lo in range(0, len(keep), step):
                    sel = keep[lo : lo + step]
                    seq = self._upsert_rows([ids[p] for p in sel.tolist()], vecs[sel], md.take(table, sel), schema,
                                            None if norms is None else norms[sel],
                                            None if sparse is None else [sparse[p] for p in sel.tolist()])
                    bar.update(len(sel))
            self.schema = schema
            self._maybe_checkpoint()
        if vecs.nbytes >= RELEASE_AFTER_BYTES:
            release_freed()  # the batch's WAL record and copies went through pools that keep freed pages
        return WriteResult(len(keep), seq)

    def _check_takes_sparse(self) -> None:
        """Sparse values are sent only to an ``ip`` collection that does not make its own (BM25)."""
        if self.bm25_field:
            raise InvalidArgumentError(f"this collection makes its sparse vectors from the text in metadata field "
                                       f"{self.bm25_field!r} (BM25); send the text, not sparse_values",
                                       field="sparse_values")
        if self.metric != "ip":
            raise InvalidArgumentError(f"sparse_values need metric 'ip' (Pinecone's dotproduct); this "
                                       f"collection's metric is {self.metric!r}", field="sparse_values")

    def _keyword_vectors(self, metadata, n: int) -> list | None:
        """The term counts of each record's ``bm25_field`` text (``None`` where it has none)."""
        if metadata is None:
            return None
        if isinstance(metadata, (str, bytes, Mapping)) or not isinstance(metadata, Sequence) or len(metadata) != n:
            return None  # normalize_metadata says what is wrong
        out = []
        for pos, m in enumerate(metadata):
            text = m.get(self.bm25_field) if isinstance(m, Mapping) else None
            out.append(None if text is None else encode_text(text, f"metadata[{pos}].{self.bm25_field}"))
        return out if any(v is not None for v in out) else None

    def _upsert_rows(self, ids: list[str], vecs: np.ndarray, table, schema, norms: np.ndarray | None,
                     sparse: list | None = None) -> int:
        """Log and apply one batch: ``vecs`` as stored (unit length for cosine), ``norms`` their lengths as
        sent (cosine; ``None`` otherwise), ``sparse`` one checked sparse vector or ``None`` per record
        (``None``: no record has one)."""
        groups: dict[int, list[int]] = {}
        for pos, i in enumerate(ids):
            groups.setdefault(shard_of(i, len(self._shards)), []).append(pos)
        parts, apply = {}, {}
        for s, positions in groups.items():
            p = np.asarray(positions, dtype=np.int64)
            sub_ids = [ids[j] for j in positions]
            sub_meta = md.take(table, p)
            sub_norms = None if norms is None else norms[p]
            sub_sparse = None if sparse is None else sparse_to_arrow([sparse[j] for j in positions])
            parts[s] = ops_mod.encode_upsert(sub_ids, vecs[p], sub_meta, len(groups), sub_norms, sub_sparse)
            apply[s] = ops_mod.Op(ops_mod.UPSERT, len(groups), sub_ids, vecs[p], sub_meta, sub_norms, sub_sparse)
        if schema != self.schema:
            # Read replicas compile filters against the collection-wide fields, so a field is
            # published before the first record that has it is acknowledged.
            atomic_write_json(self.path / _SCHEMA, schema)
        seq = self._commit(parts, apply)
        self.schema = schema
        return seq

    def delete(self, ids=None, *, filter: Mapping | None = None, delete_all: bool = False) -> WriteResult:
        """Delete records by ``ids``, by metadata ``filter``, or every record (``delete_all=True``).

        Exactly one of the three. Ids that do not exist are ignored; ``count`` is how many records were deleted.
        """
        self._check_open()
        given = sum([ids is not None, filter is not None, bool(delete_all)])
        if given != 1:
            raise InvalidArgumentError("delete takes exactly one of ids=[...], filter={...} or delete_all=True")
        compiled = None
        if filter is not None:
            compiled = compile_filter(filter, self.schema)
            if compiled is None:
                raise InvalidArgumentError("delete with an empty filter would delete everything; use delete_all=True for that")
        id_list = as_ids(ids) if ids is not None else None
        with self._write_lock:
            groups: dict[int, list[str]] = {}
            if id_list is not None:
                for i in dict.fromkeys(id_list):
                    s = shard_of(i, len(self._shards))
                    if self._shards[s].rows_of([i])[0] is not None:
                        groups.setdefault(s, []).append(i)
            else:
                for s, shard in enumerate(self._shards):
                    found = shard.ids_matching(compiled, self.schema)
                    if found:
                        groups[s] = found
            if not groups:
                return WriteResult(0, self._seq)
            parts = {s: ops_mod.encode_delete(g, len(groups)) for s, g in groups.items()}
            apply = {s: ops_mod.Op(ops_mod.DELETE, len(groups), g) for s, g in groups.items()}
            seq = self._commit(parts, apply)
            self._maybe_checkpoint()
        return WriteResult(sum(len(g) for g in groups.values()), seq)

    def update(self, record_id, *, values=None, set_metadata: Mapping | None = None,
               sparse_values=None) -> WriteResult:
        """Change one record in place: new ``values``, new ``sparse_values``, and/or ``set_metadata``
        merged into its metadata.

        Fields in ``set_metadata`` overwrite those of the same name; the others stay.
        ``count`` is 0 when the id does not exist (nothing is written then).
        """
        self._check_open()
        rid = as_ids([record_id])[0]
        if values is None and set_metadata is None and sparse_values is None:
            raise InvalidArgumentError("update needs values=[...], sparse_values={...} and/or set_metadata={...}")
        new_sparse = None
        if sparse_values is not None:
            self._check_takes_sparse()
            new_sparse = check_sparse(sparse_values, "sparse_values")
            if not len(new_sparse) and not self.dim:
                raise InvalidArgumentError("a record of a sparse collection needs sparse_values with at least one "
                                           "value", field="sparse_values")
        if set_metadata is not None and not isinstance(set_metadata, Mapping):
            raise InvalidTypeError(f"set_metadata must be a dict, got {type(set_metadata).__name__}")
        new_vec, new_norm = (None, None) if values is None else self._prepare_vectors(values, "values", with_norms=True)
        with self._write_lock:
            shard = self._shards[shard_of(rid, len(self._shards))]
            with shard.lock.read():
                r = shard.id_to_row.get(rid)
                if r is None:
                    return WriteResult(0, self._seq)
                vec = shard.store.host[r].copy()[None, :]
                norm = shard.norms_of([r])
                meta = shard.metadata_of([r], dict(self.schema))[0]
                sparse = shard.sparse_of([r])[0]
            if new_vec is not None:
                vec, norm = to_host(new_vec), new_norm
            if new_sparse is not None:
                sparse = new_sparse if len(new_sparse) else None
            if set_metadata is not None:
                meta = {**meta, **dict(set_metadata)}
                if self.bm25_field:
                    kv = self._keyword_vectors([meta], 1)
                    sparse = None if kv is None else kv[0]
            table, schema = md.normalize_metadata([meta], 1, self.schema)
            seq = self._upsert_rows([rid], np.asarray(vec, np.float32), table, schema, norm,
                                    None if sparse is None else [sparse])
            self._maybe_checkpoint()
        return WriteResult(1, seq)

    def ids_matching(self, filter: Mapping) -> list[str]:
        """Ids of the live records that pass ``filter`` (all of them for ``{}``), shard by shard."""
        self._check_open()
        compiled = compile_filter(filter, self.schema)
        schema = dict(self.schema)
        return [i for s in self._shards for i in s.ids_matching(compiled, schema)]

    def list_ids(self, prefix: str = "", *, after: str | None = None, limit: int = 100) -> tuple[list[str], bool]:
        """Up to ``limit`` live ids that start with ``prefix`` and sort after ``after``, in sorted order
        (code points, which is also UTF-8 byte order), and whether more follow: one page of Pinecone's
        ``list``. Costs a pass over the ids (n log limit), not a sort of them all.

        >>> import tempfile
        >>> col = Collection.create(tempfile.mkdtemp(), dim=2, fsync=False)
        >>> _ = col.upsert(["doc#2", "doc#10", "img#1", "doc#1"], [[1, 0]] * 4)
        >>> col.list_ids("doc#", limit=2)
        (['doc#1', 'doc#10'], True)
        >>> col.list_ids("doc#", after="doc#10", limit=2)
        (['doc#2'], False)
        """
        self._check_open()
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidArgumentError(f"limit must be a positive int, got {limit!r}")
        with self._write_lock:
            keys = [i for s in self._shards for i in s.id_to_row if i.startswith(prefix)]
        return sorted_page(keys, after, limit)

    def train(self, sample) -> None:
        """Train every shard's index on ``sample`` (an (n, dim) array) now, instead of on the first vectors.

        Rows already held are then added to the index. A no-op for ``"Flat"`` and
        for indexes that need no training (HNSW).
        """
        self._check_open()
        x = to_host(self._prepare_vectors(sample, "sample"))
        with self._write_lock:
            for shard in self._shards:
                with shard.lock.write():
                    shard.train_index(x)
            self._checkpoint_locked(force=True)

    # -- reads ---------------------------------------------------------------
    def search(self, queries=None, k: int = 10, *, filter: Mapping | None = None, include_metadata: bool = False,
               include_vectors: bool = False, params: Mapping[str, int] | SearchParams | None = None,
               sparse_vector=None, keywords: str | None = None, fusion=None) -> SearchResult:
        """The ``k`` best records for each query, best first; ties go to the smaller id.

        ``queries``: (nq, dim) or one (dim,) vector, NumPy / torch / CuPy / list.
        ``k``: 1 to :data:`~gpusearch.request.MAX_TOP_K`.
        ``filter``: Pinecone-style, e.g. ``{"genre": {"$eq": "drama"}, "year": {"$gte": 2019}}``.
        ``params``: search parameters of the index's family, ``{"nprobe": 32}`` (IVF) or
        ``{"efSearch": 128}`` (HNSW), or an :class:`~gpusearch.request.IVFParams` /
        :class:`~gpusearch.request.HNSWParams`.
        ``sparse_vector``: ``{"indices": [...], "values": [...]}`` for a hybrid query (one query;
        score = dense inner product + sparse dot product; ``"ip"`` collections), or alone on a
        sparse collection (``queries`` None; then only records that share a term with it come
        back). Exact on ``Flat``; an approximate index re-scores exactly the union of its
        candidates and the best rows by sparse score.
        ``keywords``: a text searched with BM25 (a collection with a ``bm25_field``): alone
        (``queries`` None; scores are BM25 scores) or with one dense query, the two lists fused
        by ``fusion``: ``"rrf"`` (default), ``{"method": "rrf", "k": 60}`` or ``{"method":
        "weighted", "alpha": 0.5}`` (``alpha``: the dense list's weight); see :mod:`gpusearch.bm25`.
        """
        return self.search_request(self.request(queries, k, filter=filter, include_metadata=include_metadata,
                                                include_vectors=include_vectors, params=params,
                                                sparse_vector=sparse_vector, keywords=keywords, fusion=fusion))

    def request(self, queries=None, k: int = 10, *, filter=None, include_metadata: bool = False,
                include_vectors: bool = False, params=None, sparse_vector=None, keywords=None,
                fusion=None) -> SearchRequest:
        """Check a search against this collection and build its :class:`~gpusearch.request.SearchRequest`."""
        self._check_open()
        return build_request(queries, k, dim=self.dim, metric=self.metric, device=self.device, family=self.family,
                             schema=self.schema, filter=filter, params=params, include_metadata=include_metadata,
                             include_vectors=include_vectors, sparse_vector=sparse_vector, keywords=keywords,
                             fusion=fusion, bm25_field=self.bm25_field)

    def keyword_stats(self, terms) -> tuple[int, float, np.ndarray]:
        """BM25 statistics over every shard: live records with text, their total length, and how many
        hold each of ``terms``."""
        return sum_stats((s.keyword_stats(terms) for s in self._shards), len(terms))

    def _with_ids(self, hits, ids_lists):
        n = len(self._shards)
        out = np.full(hits.keys.shape, None, dtype=object)
        for q, row in enumerate(hits.keys.tolist()):
            for j, g in enumerate(row):
                if g >= 0:
                    out[q, j] = ids_lists[g % n][g // n]
        hits.ids = out
        return hits

    def _search_fused(self, request: SearchRequest):
        """A keyword query: BM25 over the collection's statistics, alone or fused with the dense list."""
        k_req, d_req = keyword_requests(request, self.keyword_stats(request.keyword.terms))
        k_hits = self._with_ids(*self.search_hits(k_req))
        if d_req is None:
            return k_hits
        d_hits = self._with_ids(*self.search_hits(d_req))
        return fuse_hits([d_hits, k_hits], request.k, request.fusion, largest=(self.metric != "l2", True))

    def search_request(self, request: SearchRequest) -> SearchResult:
        """Answer a request built by :meth:`request` (the edge: ids are looked up for the final k only)."""
        if request.keyword is not None:
            return result_of_hits(self._search_fused(request),
                                  {"sequence": self._seq, "index": self.index, "lineage": self.lineage})
        hits, ids_lists = self.search_hits(request)
        n = len(self._shards)
        keys = hits.keys.tolist()
        if n == 1:
            table = ids_lists[0]
            ids = [[table[r] for r in row if r >= 0] for row in keys]
        else:
            ids = [[ids_lists[g % n][g // n] for g in row if g >= 0] for row in keys]
        scores = [hits.scores[q, : len(row)] for q, row in enumerate(ids)]
        vecs = None if hits.vectors is None else [hits.vectors[q, : len(row)] for q, row in enumerate(ids)]
        sparse = None if hits.sparse is None else [hits.sparse[q, : len(row)].tolist() for q, row in enumerate(ids)]
        info = {"sequence": self._seq, "index": self.index, "lineage": self.lineage}
        return SearchResult(ids, scores, hits.metadata, vecs, info, sparse)

    def search_hits(self, request: SearchRequest) -> tuple[Hits, list[list[str]]]:
        """Columnar hits of every shard merged: keys are ``row * shards + shard``.

        Returns the hits and each shard's id list as the search saw it (``ids[shard][row]``).
        """
        shards = self._shards
        schema = self.schema
        if len(shards) == 1:
            hits, ids = shards[0].search(request, schema)
            return hits, [ids]
        # Handing a shard to a thread costs ~0.1-1 ms; only worth it when each shard has real work.
        work = request.nq * sum(s.n_rows for s in shards) * self.dim
        if work < PARALLEL_SEARCH_FLOPS:
            answers = [s.search(request, schema) for s in shards]
        else:
            answers = list(self._pool.map(lambda s: s.search(request, schema), shards))
        lists = [ids for _, ids in answers]
        hits, part = merge([h for h, _ in answers], request.k, largest=self.metric != "l2" or request.keyword is not None,
                           ids_of=lambda p, rows: [lists[p][r] for r in rows.tolist()])
        hits.keys = np.where(part >= 0, hits.keys * len(shards) + part, -1)
        return hits, lists

    def fetch(self, ids) -> FetchResult:
        """Records by id, in the order asked (duplicates once); unknown ids are listed in ``missing``."""
        self._check_open()
        id_list = list(dict.fromkeys(as_ids(ids)))
        found, vecs, metas, missing, sparse = [], [], [], [], []
        schema = dict(self.schema)
        for i in id_list:
            shard = self._shards[shard_of(i, len(self._shards))]
            with shard.lock.read():
                r = shard.id_to_row.get(i)
                if r is None:
                    missing.append(i)
                    continue
                found.append(i)
                vecs.append(shard.values_of([r])[0])
                metas.append(shard.metadata_of([r], schema)[0])
                sparse.append(shard.sparse_of([r])[0])
        v = np.stack(vecs) if vecs else np.empty((0, self.dim), np.float32)
        return FetchResult(found, v, metas, missing, sparse)

    def __len__(self) -> int:
        return sum(len(s) for s in self._shards)

    def stats(self) -> dict:
        """Counts, sizes and settings, per shard and in total."""
        shards = [s.stats() for s in self._shards]
        return {
            "path": str(self.path),
            "records": sum(s["records"] for s in shards),
            "dim": self.dim,
            "vector_type": self.vector_type,
            "bm25_field": self.bm25_field,
            "metric": self.metric,
            "index": self.index,
            "index_options": index_options_of(self._config),
            "dtype": self.dtype,
            "device": self.device,
            "lineage": self.lineage,
            "sequence": self._seq,
            "schema": dict(self.schema),
            "shards": shards,
        }

    # -- backups ---------------------------------------------------------------
    def backup(self, uri, *, note: str | None = None) -> dict:
        """A consistent point-in-time copy of this collection at ``uri`` (a local path, ``file://``,
        ``s3://bucket/prefix``, ``gs://...``), taken while writes go on; incremental when ``uri`` already
        holds an older backup of it. Restore with :func:`gpusearch.restore`. See :mod:`gpusearch.backup`."""
        from .backup import backup

        return backup(self, uri, note=note)

    # -- maintenance ---------------------------------------------------------
    def checkpoint(self) -> None:
        """Fold every shard's WAL into its snapshot (the FAISS index is saved with it)."""
        self._check_open()
        with self._write_lock:
            self._checkpoint_locked()

    def _checkpoint_locked(self, force: bool = False, prepared: dict | None = None) -> None:
        schema, prepared = dict(self.schema), prepared or {}
        self._on_every(lambda s: s.checkpoint(schema, force=force, prepared=prepared.get(s.number)), self._shards)
        self._drop_commits()

    def index_pending(self) -> int:
        """Rows not yet in a saved FAISS index (``index_role="builder"``; 0 otherwise)."""
        return sum(s.index_pending() for s in self._shards if s.index_role == "builder")

    def maybe_build_index(self, idle_s: float) -> bool:
        """A builder's :meth:`build_index` when it is due: enough rows wait outside a shard's saved
        index (:meth:`gpusearch.shard.Shard.index_due`), or some wait and no write came for ``idle_s``
        seconds. The served Writer calls this in the background, so that the replicas' exact search of
        those rows does not last. True when it built."""
        if self._closed or not any(s.index_buildable() for s in self._shards):
            return False
        if time.monotonic() - self._last_write < idle_s and not any(s.index_due() for s in self._shards):
            return False
        return self.build_index()

    def build_index(self) -> bool:
        """A builder (``index_role="builder"``): add the rows that wait outside each shard's saved index
        and save it with a checkpoint. The build holds no lock that writes or searches take (only the
        checkpoint at its end does), so writes go on meanwhile. True when it built."""
        with self._build_lock:
            if self._closed:
                return False
            prepared = {}
            try:
                for s in self._shards:  # one at a time: each build uses every core
                    p = s.prepare_index()
                    if p is not None:
                        prepared[s.number] = p
                if not prepared:
                    return False
                with self._write_lock:
                    if self._closed:
                        return False
                    self._checkpoint_locked(prepared=prepared)
                    return True
            except OSError:
                if self._closed:  # dropped or closed under the build: its files may be gone
                    return False
                raise
            finally:
                for p in prepared.values():
                    p.discard()  # (those a checkpoint named are no longer there)

    def _drop_commits(self) -> None:
        self._commits.rotate()
        self._commits.drop_through(min(s.applied_seq for s in self._shards))

    def compact(self) -> None:
        """Reclaim deleted and overwritten rows: rewrite each shard as one segment and rebuild its index."""
        self._check_open()
        with self._write_lock:
            schema = dict(self.schema)
            with progress(len(self._shards), "compacting", unit="shard", min_total=2) as bar:
                for s in self._shards:
                    s.compact(schema)
                    bar.update(1)
            self._drop_commits()

    def close(self) -> None:
        """Checkpoint what the WAL holds and release files. Safe to call twice.

        A checkpoint that fails (``DiskFullError`` on a full disk) is logged as a
        warning, not raised: the WAL still holds every write, replayed on the next open.
        """
        if self._closed:
            return
        with self._write_lock:
            try:
                if any(s.wal.size_bytes for s in self._shards):
                    self._checkpoint_locked()
            except OSError as exc:
                # On a full disk, say. Nothing is lost: the WAL holds every acknowledged write and the
                # next open replays it. The files are released all the same.
                log.warning("collection %s: checkpoint on close failed (%s); the WAL keeps every write and "
                            "the next open replays it", self.path, exc)
            finally:
                for s in self._shards:
                    s.close()
                self._commits.close()
                self._pool.shutdown(wait=True)
                self._closed = True

    def __enter__(self) -> "Collection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Collection({str(self.path)!r}, dim={self.dim}, metric={self.metric!r}, index={self.index!r}, "
                f"shards={len(self._shards)}, device={self.device!r}, records={len(self)})")
