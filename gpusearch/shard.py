"""One partition of a collection: vectors, ids, tombstones, metadata, an index backend and storage.

A shard applies the ops the collection hands it, searches its rows, and
persists itself as a snapshot (segments + alive bitmap + FAISS index + a
manifest) plus a WAL of the ops applied since. Rows are append-only: an
overwrite or delete marks the old row dead; ``compact()`` drops dead rows.

On-disk layout of ``<collection>/shard-NNN/``::

    manifest.json          format version, applied sequence number, files below
    seg-<seq>.arrow        snapshot segments, rows in order (ids, vectors, norms for cosine, sparse vectors, metadata)
    alive-<seq>.bits       which snapshot rows are alive (packed bits)
    index-<seq>.faiss      the FAISS index over the first n_indexed rows
    wal/                   ops after the snapshot (see gpusearch.wal)

Who builds the FAISS index (``index_role``):

``"inline"`` (a :class:`gpusearch.Collection` in one process, the default)
    every applied upsert is added to the index at once; a checkpoint saves it.
``"builder"`` (the served Writer, which never searches)
    holds no index. Rows are only stored. A build (:meth:`Shard.prepare_index`, which
    the collection runs when it is due, without the locks writes take) loads the
    last saved index, adds the rows since (training first when it needs to) and
    writes it to a file of its own; the next checkpoint names that file, unless a
    compaction or a retraining changed the saved index meanwhile. Other checkpoints
    name the last saved index again. A compaction rebuilds the index under its lock.
``"loader"`` (a served shard replica, see gpusearch.replica)
    never builds: it loads the index a snapshot names (:meth:`Shard.adopt_index`
    when a newer one appears) and searches the rows after it exactly. The rows are
    then held twice (in the store and in an HNSW's own storage).
"""
from __future__ import annotations

import contextlib
import logging
import os
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa

from . import kernels
from . import metadata as md
from . import ops as ops_mod
from ._memory import RELEASE_AFTER_BYTES, release_freed
from .backends import make_backend
from .hits import Hits
from .fileio import atomic_write_bytes, atomic_write_json, fsync_dir, read_json, remove_stale_temp_files
from .locks import RWLock
from .progress import progress
from .segments import read_segment, write_segment
from .bm25 import bm25_row_weights
from .sparse import SparseRows
from .vectors import VectorStore
from .wal import WriteAheadLog

__all__ = ["Shard", "SHARD_FORMAT_VERSION"]

log = logging.getLogger(__name__)
SHARD_FORMAT_VERSION = 1
_META_CHUNKS_BEFORE_MERGE = 32
_MIN_ROWS = 1024  # per-row arrays (alive, norms) start this long and double as rows are added
INDEX_ROLES = ("inline", "builder", "loader")
# A builder's next build is due once this many rows (and at least 1/INDEX_BUILD_FRACTION of those
# indexed) wait outside the saved index: a loader searches them exactly until then.
INDEX_BUILD_MIN_ROWS = 10_000
INDEX_BUILD_FRACTION = 8


def _padded(values: np.ndarray, fill, dtype) -> np.ndarray:
    """A per-row array: ``values``, then ``fill`` up to at least _MIN_ROWS."""
    out = np.full(max(len(values), _MIN_ROWS), fill, dtype=dtype)
    out[: len(values)] = values
    return out


def _room(a: np.ndarray, rows: int, fill) -> np.ndarray:
    """``a``, or a copy at least twice as long (the new places ``fill``) when it has fewer than ``rows``."""
    if a.shape[0] >= rows:
        return a
    out = np.full(max(rows, 2 * a.shape[0]), fill, dtype=a.dtype)
    out[: a.shape[0]] = a
    return out


class _Rows:
    """Rows as an index backend's ``add`` reads a store (``host``, ``len``)."""

    def __init__(self, host: np.ndarray):
        self.host = host

    def __len__(self) -> int:
        return self.host.shape[0]


class PreparedIndex:
    """An index a builder made without the shard's lock (:meth:`Shard.prepare_index`): the file it is
    in, the rows it holds, and what it was built on."""

    def __init__(self, path: Path, rows: int, base: tuple):
        self.path, self.rows, self.base = path, rows, base

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class Shard:
    def __init__(self, path: Path, *, number: int, dim: int, metric: str, index: str, device: str,
                 dtype: str = "float32", fsync: bool = True, index_options: dict | None = None,
                 index_role: str = "inline"):
        if index_role not in INDEX_ROLES:
            raise ValueError(f"index_role must be one of {', '.join(INDEX_ROLES)}, got {index_role!r}")
        self.path, self.number = Path(path), number
        self.index_role = index_role
        self.dim, self.metric, self.index_spec, self.device = dim, metric, index, device
        self.backend = make_backend(index, dim=dim, metric=metric, device=device, options=index_options)
        # When the index keeps the rows itself (HNSW over flat storage), the store views them: one copy.
        # (Not when another process builds the index: rows then wait outside it, so the store keeps them.)
        holds = getattr(self.backend, "holds_rows", False) and index_role == "inline"
        self.store = VectorStore(dim, device=device, dtype=dtype, rows=self.backend if holds else None)
        # The index the newest manifest names and how many rows it holds (a builder keeps no other).
        self._saved_index: str | None = None
        self._saved_indexed = 0
        self._built = False  # a builder's index is in memory, newer than the saved one
        self._layout = 0  # bumped when rows are renumbered (compaction) or the index retrained
        self._index_options = index_options
        self.ids: list[str] = []
        self.id_to_row: dict[str, int] = {}
        self._alive = np.zeros(_MIN_ROWS, dtype=bool)
        # Cosine rows are stored unit length (that is what is searched); their lengths as sent are kept
        # beside them so that fetch and includeValues give back the values that were upserted.
        self._norms = np.ones(_MIN_ROWS, dtype=np.float32) if metric == "cosine" else None
        # Sparse vectors (gpusearch.sparse), made with the first row that has one; rows without one have none.
        self._sparse: SparseRows | None = None
        self._meta_chunks: list[pa.Table] = []
        self._meta_cache: pa.Table | None = None
        self._meta_cache_schema: dict | None = None
        self.schema: dict[str, str] = {}
        self.applied_seq = 0
        self.lock = RWLock()
        self._fsync = fsync
        self._manifest: dict = {}
        self._pending_segment: str | None = None  # written by a compaction whose manifest failed (see compact)
        self.wal: WriteAheadLog | None = None

    # -- opening -------------------------------------------------------------
    @classmethod
    def open(cls, path, *, repair: bool = True, **kw) -> tuple["Shard", list]:
        """Load the snapshot; return the shard and the WAL records after it (not yet applied).

        The collection decides which records to apply: a batch that spans shards
        counts only once its commit record exists. With ``repair=False`` a torn
        WAL tail is not cut yet (see ``WriteAheadLog.open``): the collection first
        checks that the cut loses no committed batch, then calls ``shard.wal.repair()``.
        """
        shard = cls(path, **kw)
        shard.path.mkdir(parents=True, exist_ok=True)
        mpath = shard.path / "manifest.json"
        if mpath.exists():
            shard._load_snapshot(read_json(mpath))
        shard._remove_unnamed_files()
        shard.wal, records = WriteAheadLog.open(shard.path / "wal", fsync=shard._fsync, repair=repair)
        return shard, [r for r in records if r.seq > shard.applied_seq]

    def _load_snapshot(self, m: dict) -> None:
        version = m.get("format_version")
        if not isinstance(version, int) or version > SHARD_FORMAT_VERSION:
            raise ValueError(
                f"{self.path} was written by a newer gpusearch (shard format {version}); "
                f"this version reads format {SHARD_FORMAT_VERSION} or older: upgrade gpusearch"
            )
        self._manifest = m
        ids, vecs, tables, norms, sparse = [], [], [], [], []
        for seg in m["segments"]:
            s = read_segment(self.path / seg)
            sparse.append((len(s), s.sparse))
            ids.extend(s.ids.to_pylist())
            vecs.append(s.vectors)
            norms.append(np.ones(len(s), np.float32) if s.norms is None else s.norms)
            tables.append(s.metadata if s.metadata.num_columns else md.empty_table(len(s.vectors)))
        n = len(ids)
        self.schema = dict(m.get("schema", {}))
        for t in tables:
            # A checkpoint writes the collection's fields, some of which this shard may never have
            # seen (all null here): they are the shard's fields too, or its own reads refuse its rows.
            self.schema = md.merge_schemas(self.schema, md.schema_of(t))
        if self.store.external:
            # The rows live in the index: load it whole (they come with it), then insert the rest.
            if m.get("index"):
                self.backend.load_bytes((self.path / m["index"]).read_bytes(), int(m["n_indexed"]))
            else:
                self.backend.clear_rows()
            self.store.adopt()
            have = len(self.store)
            lo = 0
            for block in vecs:
                if lo + len(block) > have:
                    self.store.append(block[max(0, have - lo):])
                lo += len(block)
        elif vecs:
            self.store.replace(vecs)
        self.ids = ids
        alive = np.ones(n, dtype=bool)
        if m.get("alive"):
            bits = np.frombuffer((self.path / m["alive"]).read_bytes(), dtype=np.uint8)
            alive = np.unpackbits(bits, count=n, bitorder="little").astype(bool)
        self._alive = _padded(alive, False, bool)
        if self._norms is not None:
            self._norms = _padded(np.concatenate(norms) if n else [], 1.0, np.float32)
        self.id_to_row = {ids[r]: r for r in np.flatnonzero(self._alive[:n]).tolist()}
        self._sparse = None
        if any(cols is not None for _, cols in sparse):
            self._sparse = SparseRows()
            for rows, cols in sparse:
                if cols is None:
                    self._sparse.append_empty(rows)
                else:
                    self._sparse.append_arrow(*cols)
        self._meta_chunks, self._meta_cache = tables, None
        self._saved_index, self._saved_indexed = m.get("index"), int(m.get("n_indexed") or 0)
        if m.get("index") and not self.store.external and self.index_role != "builder":
            self.backend.load_bytes((self.path / m["index"]).read_bytes(), int(m["n_indexed"]))
        if self.index_role == "inline":
            self.backend.add(self.store, range(self.backend.n_indexed, n))
        self.applied_seq = int(m["applied_seq"])
        if n * self.dim * 4 >= RELEASE_AFTER_BYTES:
            release_freed()  # the segments and the index file were read through pools that keep freed pages

    def _remove_unnamed_files(self) -> None:
        """Delete snapshot files the manifest does not name (a checkpoint that failed, on a full disk
        say, or crashed before its manifest) and temporary files of dead writers: never read, they only
        take space."""
        m = self._manifest or {}
        named = set(m.get("segments", [])) | {m.get("alive"), m.get("index")}
        removed = [p for p in self.path.iterdir()
                   if p.is_file() and (p.name.startswith(("seg-", "alive-", "index-")) and p.name not in named
                                       or p.name.startswith("building-"))]  # a build a crash cut short
        for p in removed:
            p.unlink()
            log.info("shard %d: removed %s, which no manifest names", self.number, p)
        removed += remove_stale_temp_files(self.path)
        if removed:
            fsync_dir(self.path)

    # -- sizes ---------------------------------------------------------------
    def __len__(self) -> int:
        """Live records."""
        return len(self.id_to_row)

    @property
    def n_rows(self) -> int:
        """Rows held, dead ones included (until compaction)."""
        return len(self.store)

    @property
    def alive(self) -> np.ndarray:
        return self._alive[: self.n_rows]

    # -- writes --------------------------------------------------------------
    def log(self, seq: int, payload: bytes) -> None:
        """Append an op to the WAL; durable (fsynced) when this returns."""
        self.wal.append(seq, payload)

    def apply(self, seq: int, op: ops_mod.Op) -> None:
        """Apply a logged op in memory (the caller logged it, or is replaying it)."""
        with self.lock.write():
            if op.kind == ops_mod.UPSERT:
                self._apply_upsert(op.ids, op.vectors, op.metadata, op.norms, op.sparse)
            else:
                self._apply_delete(op.ids)
            self.applied_seq = max(self.applied_seq, seq)

    def _apply_upsert(self, ids: list[str], vectors: np.ndarray, meta: pa.Table,
                      norms: np.ndarray | None = None, sparse=None) -> None:
        for i in ids:
            old = self.id_to_row.get(i)
            if old is not None:
                self._alive[old] = False
        rows = self.store.append(np.ascontiguousarray(vectors, dtype=np.float32))
        self._alive = _room(self._alive, rows.stop, False)
        self._alive[rows.start : rows.stop] = True
        if self._norms is not None:
            self._norms = _room(self._norms, rows.stop, 1.0)
            self._norms[rows.start : rows.stop] = 1.0 if norms is None else norms
        if sparse is not None:
            if self._sparse is None:
                self._sparse = SparseRows()
                self._sparse.append_empty(rows.start)
            self._sparse.append_arrow(*sparse)
        elif self._sparse is not None:
            self._sparse.append_empty(len(rows))
        self.ids.extend(ids)
        for i, r in zip(ids, rows):
            self.id_to_row[i] = r
        self._meta_chunks.append(meta)
        self._meta_cache = None
        self.schema = md.merge_schemas(self.schema, md.schema_of(meta))
        if self.index_role == "inline":
            self.backend.add(self.store, rows)

    def _apply_delete(self, ids: list[str]) -> None:
        for i in ids:
            r = self.id_to_row.pop(i, None)
            if r is not None:
                self._alive[r] = False

    # -- reads ---------------------------------------------------------------
    def values_of(self, rows) -> np.ndarray:
        """The rows' vectors as they were sent (float32 copies; under the caller's lock): the stored
        rows, scaled back to their sent lengths on a cosine collection."""
        rows = np.asarray(rows, dtype=np.int64)
        v = self.store.host[rows]  # fancy indexing: a copy
        if self._norms is not None:
            v *= self._norms[rows][..., None]
        return v

    def sparse_of(self, rows) -> list:
        """The rows' sparse vectors (``SparseVector``, or ``None`` for a row without one; -1: ``None``)."""
        if self._sparse is None:
            return [None] * len(rows)
        return self._sparse.rows(np.asarray(rows, dtype=np.int64).tolist())

    def norms_of(self, rows) -> np.ndarray | None:
        """The rows' sent lengths (cosine), else ``None``."""
        return None if self._norms is None else self._norms[np.asarray(rows, dtype=np.int64)].copy()

    def metadata_table(self, schema: dict[str, str] | None = None) -> pa.Table:
        """All rows' metadata as one table (dead rows included, so row numbers line up)."""
        schema = self.schema if schema is None else schema
        if self._meta_cache is None or self._meta_cache_schema != schema:
            table = md.concat(self._meta_chunks, schema)
            if len(self._meta_chunks) > _META_CHUNKS_BEFORE_MERGE:
                self._meta_chunks = [table]
            self._meta_cache, self._meta_cache_schema = table, dict(schema)
        return self._meta_cache

    def allow_mask(self, compiled_filter, schema) -> np.ndarray | None:
        """Rows a query may return: alive and passing the filter; ``None`` when every row may."""
        n = self.n_rows
        allow = None if len(self.id_to_row) == n else self.alive.copy()
        if compiled_filter is not None:
            m = compiled_filter.mask(self.metadata_table(schema))
            allow = m if allow is None else allow & m
        return allow

    def search(self, request, schema: dict[str, str] | None = None) -> tuple[Hits, list[str]]:
        """Top-k rows of this shard for a checked :class:`~gpusearch.request.SearchRequest`,
        best first, ties to the smaller id.

        Returns the hits (keys are row numbers; metadata and vectors attached when the
        request asks for them, read under the same lock as the search, so a concurrent
        compaction cannot mix up rows) and the shard's id list as it was: a row's id is
        ``ids[row]`` for as long as the caller holds that list (rows are only appended
        to it; a compaction makes a new one). ``schema`` is the collection's field types
        (for metadata of fields this shard never saw); default: the shard's own.

        For the exact index the order is exact even when tied scores straddle the k-th place.
        """
        if request.keyword is not None:
            return self._search_keyword(request, schema)
        if request.sparse is not None:
            return self._search_hybrid(request, schema)
        with self.lock.read():
            queries, k = request.queries, request.k
            n = self.n_rows
            allow = self.allow_mask(request.filter, schema) if n else None
            if n == 0 or allow is not None and not allow.any():
                hits = Hits.empty(queries.shape[0], k, self.metric != "l2")
            else:
                exact = self.backend.kind == "exact"
                hits = self.backend.search(self.store, queries, k + 1 if exact else k, allow, request.params)
                D, I = self._order_by_id(hits.scores, hits.keys)  # in place
                if exact:
                    tied = (I[:, k] >= 0) & (D[:, k] == D[:, k - 1])
                    for q in np.flatnonzero(tied):
                        D[q, :k], I[q, :k] = self._exact_row(queries, q, k, allow)
                    hits = Hits(D[:, :k], I[:, :k])
            if request.include_metadata or request.include_vectors:
                self._attach(hits, request, schema)
            return hits, self.ids

    def _search_hybrid(self, request, schema) -> tuple[Hits, list[str]]:
        """One query with a sparse part: dense inner product + sparse dot product (float64, then float32).

        The exact index scores every row. An approximate one re-scores exactly the union of its own
        ``c = max(4k, 100)`` candidates and ``c`` sparse ones: for each query term the ``c`` rows that
        add the most to it, ranked by what they add (:meth:`SparseRows.top_rows`); a row outside both
        lists is missed, so the recall is measured (``bench/bench_sparse.py``), not promised."""
        with self.lock.read():
            k, n = request.k, self.n_rows
            allow = self.allow_mask(request.filter, schema) if n else None
            if n == 0 or allow is not None and not allow.any():
                hits = Hits.empty(1, k, True)
            elif self.dim and self.backend.kind != "exact":
                q = request.queries
                q = (q if isinstance(q, np.ndarray) else q.float().cpu().numpy()).reshape(-1).astype(np.float32)
                c = min(n, max(4 * k, 100), kernels.MAX_K - 1)
                found = self.backend.search(self.store, request.queries, c, allow, request.params).keys[0]
                found = found[found >= 0]
                if self._sparse is not None:
                    cand = np.union1d(found, self._sparse.top_rows(request.sparse, n, c, allow))
                    total = self._sparse.dot(request.sparse, cand)
                else:
                    cand = np.unique(found)
                    total = np.zeros(len(cand), np.float64)
                score = (total + self.store.host[cand] @ q).astype(np.float32)
                hits = self._best_of(cand, score, k)  # both lists hold allowed rows only
            else:
                total, touched = (self._sparse.scores(request.sparse, n, touched=True) if self._sparse is not None
                                  else (np.zeros(n, np.float64), np.zeros(n, bool)))
                cand = None
                if self.dim:
                    base = self.store.search_view()  # the dense part where the rows are: a GPU's GEMV
                    if isinstance(base, np.ndarray):
                        q = request.queries
                        q = q if isinstance(q, np.ndarray) else q.float().cpu().numpy()
                        total += base @ q.reshape(-1).astype(np.float32)
                    else:  # n scores come to the host (4 bytes a row), the sparse part is added there
                        qt = request.queries.reshape(-1).to(base.dtype)
                        total += (base @ qt).float().cpu().numpy()
                else:  # a sparse collection answers with the records that share a term with the query
                    cand = np.flatnonzero(touched)
                    total = total[cand]
                score = total.astype(np.float32)
                rows = np.arange(n) if cand is None else cand
                if allow is not None:
                    keep = allow[rows]
                    rows, score = rows[keep], score[keep]
                hits = self._best_of(rows, score, k)
            if request.include_metadata or request.include_vectors:
                self._attach(hits, request, schema)
            return hits, self.ids

    def _best_of(self, rows: np.ndarray, score: np.ndarray, k: int) -> Hits:
        """One query's hits: the ``k`` of ``rows`` with the largest ``score``, ties to the smaller id."""
        hits = Hits.empty(1, k, True)
        if len(rows):
            kk = min(k, len(rows))
            kth = np.partition(-score, kk - 1)[kk - 1]
            pick = np.flatnonzero(-score <= kth)
            order = sorted(pick.tolist(), key=lambda j: (-float(score[j]), self.ids[int(rows[j])]))[:k]
            hits.keys[0, : len(order)] = rows[order]
            hits.scores[0, : len(order)] = score[order]
        return hits

    def keyword_stats(self, terms: np.ndarray) -> tuple[int, float, np.ndarray]:
        """This shard's part of the BM25 statistics: live records with terms, their total length, and
        how many of them hold each of ``terms`` (the collection sums them over its shards)."""
        with self.lock.read():
            n = self.n_rows
            if self._sparse is None or n == 0:
                return 0, 0.0, np.zeros(len(terms), np.int64)
            alive = self.alive
            lengths = self._sparse.lengths(n)
            has = alive & (lengths > 0)
            rows, _, at = self._sparse.entries(terms, n)
            live = alive[rows]
            return int(has.sum()), float(lengths[has].sum()), np.bincount(at[live], minlength=len(terms))

    def _search_keyword(self, request, schema) -> tuple[Hits, list[str]]:
        """The BM25 top-k of one keyword query whose statistics are set (``request.keyword.idf``)."""
        kw = request.keyword
        with self.lock.read():
            k, n = request.k, self.n_rows
            hits = Hits.empty(1, k, True)
            if n and self._sparse is not None:
                rows, tf, at = self._sparse.entries(kw.terms, n)
                if len(rows):
                    lengths = self._sparse.lengths(n)
                    w = bm25_row_weights(tf.astype(np.float64), lengths[rows], kw, kw.idf[at])
                    cand, inv = np.unique(rows, return_inverse=True)
                    score = np.bincount(inv, weights=w).astype(np.float32)
                    allow = self.allow_mask(request.filter, schema)
                    keep = self.alive[cand] if allow is None else allow[cand]
                    hits = self._best_of(cand[keep], score[keep], k)
            if request.include_metadata or request.include_vectors:
                self._attach(hits, request, schema)
            return hits, self.ids

    def _attach(self, hits: Hits, request, schema) -> None:
        """The metadata and vectors of the hits' rows (under the caller's read lock)."""
        keys = hits.keys
        if request.include_metadata:
            rows = [[r for r in row if r >= 0] for row in keys.tolist()]
            flat = sorted({r for row in rows for r in row})
            found = dict(zip(flat, self.metadata_of(flat, schema)))
            hits.metadata = [[found[r] for r in row] for row in rows]
        if request.include_vectors:
            if self.n_rows:
                vecs = self.values_of(np.maximum(keys, 0))
                vecs[keys < 0] = 0
            else:  # no row to gather from: every hit is absent
                vecs = np.zeros((*keys.shape, self.dim), np.float32)
            hits.vectors = vecs
            sparse = np.empty(keys.shape, dtype=object)
            if self._sparse is not None:
                for q in range(keys.shape[0]):
                    sparse[q, :] = self.sparse_of(keys[q])
            hits.sparse = sparse

    def _order_by_id(self, D: np.ndarray, I: np.ndarray):
        """Within equal scores, put the smaller id first (kernels break ties by row number)."""
        if D.shape[0] == 1:  # one query: plain Python over k values beats three NumPy passes
            d = D[0].tolist()
            if len(set(d)) == len(d):  # no two scores equal: no tie (the common case)
                return D, I
            i = I[0].tolist()
            if not any(d[j] == d[j + 1] and i[j + 1] >= 0 for j in range(len(d) - 1)):
                return D, I
            tied_rows = [0]
        else:
            tied_rows = np.flatnonzero(np.any((D[:, 1:] == D[:, :-1]) & (I[:, 1:] >= 0), axis=1))
        for q in tied_rows:
            valid = I[q] >= 0
            rows = I[q, valid]
            keys = [self.ids[r] for r in rows.tolist()]
            sign = 1.0 if self.metric == "l2" else -1.0
            order = sorted(range(len(keys)), key=lambda j: (sign * float(D[q, j]), keys[j]))
            I[q, : len(order)] = rows[order]
            D[q, : len(order)] = D[q, valid][order]
        return D, I

    def _exact_row(self, queries, q: int, k: int, allow):
        """The exact top-k of one query from its full score row, ties by smaller id (rare slow path)."""
        base = self.store.search_view()
        if isinstance(base, np.ndarray):
            s = base @ queries[q]
        else:
            s = (base.float() @ queries[q].float()).cpu().numpy()
        if self.metric == "l2":
            qn = queries[q] if isinstance(queries, np.ndarray) else queries[q].cpu().numpy()
            s = np.maximum(self.store.sqnorms + np.float32(qn @ qn) - 2 * s, 0)
        else:
            s = -s  # smaller is better below
        s = s.astype(np.float32)
        if allow is not None:
            s = np.where(allow, s, np.inf)
        kth = np.partition(s, min(k, len(s)) - 1)[min(k, len(s)) - 1]
        cand = np.flatnonzero(s <= kth)
        cand = cand[np.isfinite(s[cand])]
        order = sorted(cand.tolist(), key=lambda r: (float(s[r]), self.ids[r]))[:k]
        D = np.full(k, np.inf if self.metric == "l2" else -np.inf, np.float32)
        I = np.full(k, -1, np.int64)
        I[: len(order)] = order
        D[: len(order)] = s[order] if self.metric == "l2" else -s[order]
        return D, I

    def rows_of(self, ids: list[str]) -> list[int | None]:
        with self.lock.read():
            return [self.id_to_row.get(i) for i in ids]

    def ids_matching(self, compiled_filter, schema) -> list[str]:
        with self.lock.read():
            allow = self.allow_mask(compiled_filter, schema)
            rows = np.flatnonzero(self.alive if allow is None else allow)
            return [self.ids[r] for r in rows.tolist()]

    def metadata_of(self, rows: list[int], schema) -> list[dict]:
        if not rows:
            return []
        return md.rows_to_dicts(self.metadata_table(schema), rows)

    # -- persistence ---------------------------------------------------------
    def checkpoint(self, schema: dict[str, str], *, force: bool = False, prepared: "PreparedIndex | None" = None) -> None:
        """Fold the WAL into the snapshot: a new segment for the rows added since, the alive bitmap,
        the FAISS index and the manifest; then drop the WAL files it covers.

        ``force`` writes a new manifest even when no op was applied since the last
        one (after training, which changes the index but is not an op).

        ``prepared`` (a builder's, from :meth:`prepare_index`): the index this snapshot names, when
        nothing changed the saved index since it was prepared (else it is dropped)."""
        with self.lock.write():
            if prepared is not None and prepared.base != self._index_base():
                log.info("shard %d: an index built meanwhile is dropped (the saved one changed under it)",
                         self.number)
                prepared.discard()
                prepared = None
            m = self._manifest or {"segments": [], "rows": 0}
            start = int(m.get("rows", 0))
            if not force and prepared is None and self.applied_seq == m.get("applied_seq") and start == self.n_rows:
                return
            seq = self.applied_seq
            segments = list(m.get("segments", []))
            new_files = []
            try:
                if self.n_rows > start:
                    name = f"seg-{seq:020d}.arrow"
                    table = self.metadata_table(schema)
                    write_segment(self.path / name, self.ids[start:], self.store.host[start:], table.slice(start),
                                  norms=None if self._norms is None else self._norms[start : self.n_rows],
                                  sparse=None if self._sparse is None else self._sparse.to_arrow(start, self.n_rows))
                    segments.append(name)
                    new_files.append(name)
                # On failure (a full disk) the new files go: the old manifest and the WAL still hold everything.
                self._write_manifest(seq, segments, keep=set(m.get("segments", [])), new_files=new_files,
                                     prepared=prepared)
            finally:
                if prepared is not None:
                    prepared.discard()  # renamed into place by now, unless this failed
                self._let_index_go()

    # -- a builder's index (see the module docstring) ------------------------------
    def index_pending(self) -> int:
        """Rows outside the saved index (a builder's; 0 for an index that needs none)."""
        if self.backend.kind != "faiss":
            return 0
        return self.n_rows - self._saved_indexed

    def index_buildable(self) -> bool:
        """Whether a builder has rows to add to its saved index (and enough to train it, when it
        still needs training)."""
        if self.index_role != "builder" or self.index_pending() <= 0:
            return False
        return self._saved_indexed > 0 or self.n_rows >= max(self.backend.train_size, 1)

    def index_due(self) -> bool:
        """Whether a builder should build now, writes or not: enough rows wait outside the saved index."""
        floor = max(INDEX_BUILD_MIN_ROWS, self._saved_indexed // INDEX_BUILD_FRACTION)
        return self.index_buildable() and self.index_pending() >= floor

    def _index_base(self) -> tuple:
        """What a prepared index was built on: the saved index, and the row numbering."""
        return self._saved_index, self._saved_indexed, self._layout

    def prepare_index(self) -> "PreparedIndex | None":
        """A builder: the saved index with every row held now added (training first when it needs to),
        written to a file of its own, for a :meth:`checkpoint` to name. Runs without the shard's lock
        (rows are only appended until a compaction, and a compaction or another build meanwhile makes
        the checkpoint drop it), so writes and checkpoints go on while it builds. None when there is
        nothing to add."""
        with self.lock.read():
            if not self.index_buildable():
                return None
            base, n = self._index_base(), self.n_rows
            rows = _Rows(self.store.host[:n])  # a view of the rows as they are: a growing store copies
        backend = make_backend(self.index_spec, dim=self.dim, metric=self.metric, device=self.device,
                               options=self._index_options)
        name, indexed, _ = base
        if name and indexed:
            backend.load_bytes((self.path / name).read_bytes(), indexed)
        with progress(n - backend.n_indexed, f"building shard {self.number} index", min_total=100_000):
            backend.add(rows, range(backend.n_indexed, n))
        path = self.path / f"building-{uuid.uuid4().hex}.faiss"
        try:
            atomic_write_bytes(path, backend.to_bytes())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            raise
        return PreparedIndex(path, n, base)

    def _load_saved_index(self) -> None:
        """A builder's saved index into memory (it holds none between builds)."""
        if not self._built and self.backend.kind == "faiss" and self._saved_index and self._saved_indexed:
            self.backend.load_bytes((self.path / self._saved_index).read_bytes(), self._saved_indexed)

    def adopt_index(self, name: str, n_indexed: int) -> bool:
        """A loader: search the saved index ``name`` (over the first ``n_indexed`` rows, all of which
        this shard holds) from now on, unless the one searched holds as many. The file is read and
        decoded before the write lock is taken. True when it was taken."""
        index = self.backend.decode((self.path / name).read_bytes(), n_indexed)
        with self.lock.write():
            if n_indexed > self.n_rows:
                raise ValueError(f"{name} indexes {n_indexed} rows, shard {self.number} holds {self.n_rows}")
            if n_indexed <= self.backend.n_indexed:
                return False  # another caller took this one, or a newer one, meanwhile
            self.backend.adopt(index)
            self._saved_index, self._saved_indexed = name, n_indexed
            return True

    def train_index(self, sample: np.ndarray) -> None:
        """Train the index on ``sample`` now (a no-op when trained) and add every row (under the
        caller's write lock); a builder's is saved by the next checkpoint."""
        if self.index_role == "builder":
            self._load_saved_index()
            self._built = True
            self._layout += 1  # an index being prepared meanwhile lacks this training
        self.backend.train(sample)
        self.backend.add(self.store, range(self.backend.n_indexed, len(self.store)))

    def _let_index_go(self) -> None:
        """A builder's index is on disk (or the build failed): free its memory until the next build."""
        if self.index_role == "builder" and self._built and self.backend.kind == "faiss":
            self.backend.clear_rows()
            self._built = False
            if self.n_rows * self.dim * 4 >= RELEASE_AFTER_BYTES:
                release_freed()  # glibc keeps the freed index's pages in the process otherwise

    def compact(self, schema: dict[str, str]) -> None:
        """Rewrite the shard as one segment of live rows and rebuild the index over them."""
        with self.lock.write():
            rows = np.flatnonzero(self.alive)
            seq = self.applied_seq
            table = self.metadata_table(schema)
            ids = [self.ids[r] for r in rows.tolist()]
            vecs = self.store.host[rows]
            norms = None if self._norms is None else self._norms[rows]
            sparse = None if self._sparse is None else self._sparse.take(rows)
            meta = md.take(table, rows)
            gen = int((self._manifest or {}).get("generation", 0)) + 1
            name = f"seg-{seq:020d}-c{gen}.arrow"
            if self._pending_segment is not None:
                # An earlier compaction's segment that no manifest on disk names; this one replaces it.
                with contextlib.suppress(FileNotFoundError):
                    (self.path / self._pending_segment).unlink()
                self._pending_segment = None
            write_segment(self.path / name, ids, vecs, meta, norms=norms,  # on failure nothing has changed yet
                          sparse=None if sparse is None else sparse.to_arrow(0, sparse.n))
            self.store.replace(vecs)
            self.ids = ids
            self.id_to_row = {i: r for r, i in enumerate(ids)}
            self._alive = _padded(np.ones(len(ids), dtype=bool), False, bool)
            if norms is not None:
                self._norms = _padded(norms, 1.0, np.float32)
            self._sparse = sparse
            self._meta_chunks, self._meta_cache = [meta], None
            self.schema = md.merge_schemas(self.schema, md.schema_of(meta))
            builder = self.index_role == "builder"
            self._layout += 1  # rows renumbered: an index being prepared meanwhile is of the old ones
            if self.index_role != "loader":  # (a loader never compacts: it follows a compacted snapshot)
                with progress(len(ids), f"rebuilding shard {self.number} index", min_total=100_000):
                    if builder:
                        self._load_saved_index()  # what was trained (IVF centroids, PQ codebooks) is kept
                        self._built = True
                    self.backend.rebuild(self.store)
            try:
                self._write_manifest(seq, [name], keep=set())
            except BaseException:
                # Memory holds the compacted rows, the disk the old snapshot (and the WAL since), which
                # hold the same records. The next checkpoint must write a snapshot of the compacted rows:
                # the segment just written is exactly them, so it starts from there.
                if (self._manifest or {}).get("segments") != [name]:  # the new manifest did not reach the disk
                    self._manifest = {**(self._manifest or {}), "segments": [name], "rows": len(ids),
                                      "applied_seq": None, "generation": gen}
                    self._pending_segment = name
                raise
            finally:
                self._let_index_go()

    def _write_manifest(self, seq: int, segments: list[str], keep: set[str], new_files: list[str] = (),
                        prepared: "PreparedIndex | None" = None) -> None:
        """The index saved is the one in memory, except for a builder that holds none (it did not
        build under the lock): then the ``prepared`` one, or the last saved one again."""
        n = self.n_rows
        # Every manifest has its own generation, and its files carry it, so a new snapshot at the
        # same seq (compaction, training) never rewrites a file an older manifest names.
        gen = int(self._manifest.get("generation", 0)) + 1 if self._manifest else 1
        alive_name = f"alive-{seq:020d}-{gen}.bits"
        index_name = None
        written = list(new_files)
        try:
            atomic_write_bytes(self.path / alive_name, np.packbits(self.alive, bitorder="little").tobytes())
            written.append(alive_name)
            n_indexed = self.backend.n_indexed
            held = self.index_role != "builder" or self._built
            if prepared is not None and not held:
                index_name, n_indexed = f"index-{seq:020d}-{gen}.faiss", prepared.rows
                os.replace(prepared.path, self.path / index_name)
                written.append(index_name)
            elif not held:
                index_name, n_indexed = self._saved_index, self._saved_indexed
            else:
                data = self.backend.to_bytes()
                if data is not None:
                    index_name = f"index-{seq:020d}-{gen}.faiss"
                    atomic_write_bytes(self.path / index_name, data)
                    written.append(index_name)
            self._commit_manifest(seq, n, segments, alive_name, index_name, gen, n_indexed)
        except BaseException:
            try:  # the manifest may have been renamed into place before a later step (a directory fsync) failed
                on_disk = read_json(self.path / "manifest.json")
            except (OSError, ValueError):
                on_disk = {}
            if isinstance(on_disk, dict) and on_disk.get("alive") == alive_name:
                self._manifest = on_disk
                self._pending_segment = None
            else:
                # The manifest was not replaced: the files of this attempt are named by none, and on a
                # full disk they hold the space a retry needs.
                for name in written:
                    with contextlib.suppress(FileNotFoundError):
                        (self.path / name).unlink()
            raise
        self._pending_segment = None  # the new manifest names it, or the clean-up below removes it
        self.wal.rotate()
        self.wal.drop_through(seq, keep_newest=False)  # the manifest keeps the applied seq
        wanted = set(segments) | {alive_name, "manifest.json"} | ({index_name} if index_name else set())
        for p in self.path.iterdir():
            if p.is_file() and p.name not in wanted and p.name.startswith(("seg-", "alive-", "index-")):
                p.unlink()
        fsync_dir(self.path)

    def _commit_manifest(self, seq: int, n: int, segments: list[str], alive_name: str, index_name: str | None,
                         gen: int, n_indexed: int) -> None:
        m = {
            "format_version": SHARD_FORMAT_VERSION,
            "applied_seq": seq,
            "rows": n,
            "segments": segments,
            "alive": alive_name,
            "index": index_name,
            "n_indexed": n_indexed,
            "schema": dict(self.schema),
            "generation": gen,
        }
        atomic_write_json(self.path / "manifest.json", m)
        self._manifest = m
        self._saved_index, self._saved_indexed = index_name, n_indexed

    def close(self) -> None:
        if self.wal is not None:
            self.wal.close()

    # -- reporting -----------------------------------------------------------
    def stats(self) -> dict:
        with self.lock.read():
            mem = self.store.memory_bytes()
            return {
                "shard": self.number,
                "records": len(self.id_to_row),
                "rows": self.n_rows,
                "deleted_rows": self.n_rows - len(self.id_to_row),
                "indexed_rows": (self.n_rows if self.backend.kind != "faiss" else
                                 self._saved_indexed if self.index_role == "builder" else self.backend.n_indexed),
                "index_trained": self.backend.is_trained or self.index_role == "builder" and self._saved_indexed > 0,
                "applied_seq": self.applied_seq,
                "wal_bytes": self.wal.size_bytes if self.wal else 0,
                "memory_bytes": {**mem, "index": self.backend.memory_bytes(),
                                 "sparse": 0 if self._sparse is None else self._sparse.memory_bytes()},
            }
