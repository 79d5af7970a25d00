"""One part of the right side, on one device: the engine's vector store, searched by the engine.

A :class:`Partition` (a Ray actor in a join) holds its rows in a
:class:`gpusearch.vectors.VectorStore` in id order, so a row number orders like
the row's id and the kernels' tie rule (the smaller row) is the join's (the
smaller id). k-NN answers come from the engine's exact search
(:class:`gpusearch.backends.exact.ExactBackend`) as :class:`gpusearch.hits.Hits`
carrying their ids, for the join workers to merge with :func:`gpusearch.merge.merge`.
Range answers come from a tile scan over the same store.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpusearch import kernels
from gpusearch import metadata as md
from gpusearch.arrays import to_host
from gpusearch.backends.exact import ExactBackend
from gpusearch.devices import is_cuda, resolve_device
from gpusearch.filters import compile_filter
from gpusearch.hits import Hits, sentinel
from gpusearch.sparse import SparseRows
from gpusearch.vectors import VectorStore

from . import _inputs as inputs
from ._spec import Spec

__all__ = ["Partition", "encode", "LOAD_BATCH", "RANGE_TILE_BYTES"]

#: Rows of the right side read per batch while partitions load.
LOAD_BATCH = 65536
#: Range join: query x base scores held at once per partition.
RANGE_TILE_BYTES = 128 << 20
#: Rows normalised and appended to the store at once while a partition finishes loading.
_APPEND_ROWS = 65536
#: With sparse vectors: query x base dense scores (float64) computed at once per partition.
_HYBRID_TILE_BYTES = 64 << 20


class _Encoder:
    """The text encoder, loaded once per process on first use."""

    _cache: dict = {}

    @classmethod
    def get(cls, model: str | None, device: str):
        key = (model, device)
        if key not in cls._cache:
            from gpusearch.encoders import SentenceEncoder

            cls._cache[key] = SentenceEncoder(model, device=device)
        return cls._cache[key]


def encoder_dim(model: str | None) -> int:
    return _Encoder.get(model, "cpu").dim


def encode(spec: Spec, texts: list[str], device: str) -> np.ndarray:
    enc = _Encoder.get(spec.encoder, device)
    if not texts:
        return np.empty((0, enc.dim), np.float32)
    return np.ascontiguousarray(to_host(enc.encode(texts)), dtype=np.float32)


def _set_threads(n: int) -> None:
    """Let this process's searches use ``n`` threads: NumPy's BLAS (the exact search's GEMM) and,
    where loaded, torch. Ray set OMP_NUM_THREADS=1 for an actor with a fraction of a CPU."""
    os.environ["OMP_NUM_THREADS"] = str(n)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:  # the `join` extra brings threadpoolctl; without it BLAS keeps Ray's setting
        pass
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)


class Partition:
    """One part of the right side, on one device, searched exactly by the engine.

    Used as a Ray actor by the joins; usable directly for tests and debugging::

        p = Partition(0, spec, device="cpu")
        p.add_batch(table); p.finish(); p.set_filter(spec.filter, spec.schema)
        hits = p.knn(queries, k)
    """

    def __init__(self, number: int, spec: Spec, *, device: str = "auto", threads: int | None = None):
        self.number = number
        self.spec = spec
        self.device = resolve_device(device)
        if threads:
            _set_threads(threads)
        self.where = f"right partition {number}"
        self.backend = ExactBackend(dim=spec.dim, metric=spec.metric, device=self.device)
        self.store = VectorStore(spec.dim, device=self.device)
        self.ids: np.ndarray = np.empty(0, object)  # the id of each store row, ascending
        self.allow: np.ndarray | None = None  # rows the filter lets through (None: every row)
        self._allow_dev = None
        self._meta: pa.Table | None = None  # the filter's columns, in row order, until set_filter
        self.sparse: SparseRows | None = None  # the rows' sparse vectors (spec.sparse), in row order
        self._parts: list = []

    # -- loading -------------------------------------------------------------
    def add_batch(self, batch: pa.Table) -> int:
        """Take a batch of right rows (ids, vectors or text, the filter's columns); kept until :meth:`finish`."""
        spec = self.spec
        ids = inputs.ids(batch.column(spec.right_id), where=self.where, name=spec.right_id)
        if spec.text:
            vecs = encode(spec, inputs.texts(batch.column(spec.text), where=self.where, name=spec.text), self.device)
        elif spec.vector:
            vecs = inputs.vectors(batch.column(spec.vector), spec.dim, where=self.where, name=spec.vector, ids=ids)
        else:  # sparse vectors alone
            vecs = np.empty((len(ids), 0), np.float32)
        meta = inputs.filter_table(batch, spec.filter_fields, spec.schema) if spec.filter_fields else None
        sparse = (inputs.sparse_vectors(batch.column(spec.sparse), where=self.where, name=spec.sparse, ids=ids)
                  if spec.sparse else None)
        self._parts.append((ids, vecs, meta, sparse))
        return len(ids)

    def load_split(self, it) -> dict:
        """Read this partition's share of the right side from a ``DataIterator`` (``streaming_split``).
        Returns the rows and the filter columns' field types."""
        for batch in it.iter_batches(batch_format="pyarrow", batch_size=LOAD_BATCH, prefetch_batches=1):
            self.add_batch(batch)
        schema = {f: self.spec.schema[f] for f in self.spec.filter_fields}
        return {"rows": self.finish(schema), "schema": schema}

    def load_collection(self, path: str, shards: Sequence[int]) -> dict:
        """Read the live records of some shards of a collection through the engine's
        :class:`~gpusearch.replica.ShardFollower` (a snapshot and the WAL after it, as the writer
        last made them durable). Returns the rows and the shards' metadata field types, which
        the join merges into the collection's for :meth:`set_filter`."""
        from gpusearch.replica import ShardFollower

        spec = self.spec
        schema: dict[str, str] = {}
        for s in shards:
            with ShardFollower.open(path, s, device="cpu") as f:
                sh = f.shard
                with sh.lock.read():
                    rows = np.flatnonzero(sh.alive[: sh.n_rows])
                    ids = pa.array([sh.ids[r] for r in rows.tolist()], pa.string())
                    vecs = sh.values_of(rows)  # as upserted; the join normalises for its own metric
                    sparse = sh.sparse_of(rows) if self.spec.sparse else None
                    meta = None
                    if spec.filter_fields:
                        have = [x for x in spec.filter_fields if x in sh.schema]
                        meta = md.take(sh.metadata_table(), rows).select(have) if have else md.empty_table(len(rows))
                    schema = md.merge_schemas(schema, sh.schema)
                self._parts.append((ids, vecs, meta, sparse))
        return {"rows": self.finish({f: schema[f] for f in spec.filter_fields if f in schema}), "schema": schema}

    def finish(self, meta_schema: Mapping[str, str] | None = None) -> int:
        """Put the loaded rows in id order into the store (normalised for cosine, on the device).

        ``meta_schema``: the types of the filter columns loaded with the rows, kept in row order
        for :meth:`set_filter`.
        """
        spec = self.spec
        parts, self._parts = self._parts, []
        if parts:
            ids = pa.concat_arrays([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
            host = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
        else:
            ids, host = pa.array([], pa.string()), np.empty((0, spec.dim), np.float32)
        metas = [p[2] for p in parts]
        sparse = [v for p in parts for v in p[3]] if spec.sparse else None
        del parts
        order = np.asarray(pc.sort_indices(ids))
        ids = ids.take(pa.array(order))
        self.sparse = None
        if sparse is not None:
            self.sparse = SparseRows()
            self.sparse.append([sparse[r] for r in order.tolist()])
        store = VectorStore(spec.dim, device=self.device, capacity=len(order))
        for a in range(0, len(order) if spec.dim else 0, _APPEND_ROWS):
            rows = np.ascontiguousarray(host[order[a : a + _APPEND_ROWS]], dtype=np.float32)
            store.append(inputs.prepare(rows, dim=spec.dim, metric=spec.metric, where=self.where,
                                        ids=ids.slice(a, len(rows))))
        del host
        self.store = store
        self._meta = None
        if spec.filter_fields:
            self._meta = md.take(md.concat(metas, dict(meta_schema or {})), order)
        self.ids = ids.to_numpy(zero_copy_only=False)  # int64, or object (str)
        self.allow = self._allow_dev = None
        return len(self.ids)

    def set_filter(self, flt: Mapping | None, schema: Mapping[str, str]) -> int:
        """Let only the rows that pass ``flt`` be found; ``schema`` is the right side's field types
        (for a collection: the union of its shards', known once every partition has loaded).
        Returns how many rows pass."""
        compiled = compile_filter(flt, dict(schema)) if flt else None
        if compiled is None:
            self.allow = None
        else:
            meta = self._meta if self._meta is not None else md.empty_table(len(self.ids))
            present = {f: schema[f] for f in meta.column_names}
            missing = {f: schema[f] for f in self.spec.filter_fields if f in schema and f not in present}
            self.allow = np.asarray(compiled.mask(md.conform(meta, {**present, **missing})), dtype=bool)
        self._meta = None
        self._allow_dev = None
        return len(self.ids) if self.allow is None else int(self.allow.sum())

    def size(self) -> dict:
        allowed = len(self.ids) if self.allow is None else int(self.allow.sum())
        return {"rows": len(self.ids), "allowed": allowed}

    # -- searching -------------------------------------------------------------
    def _queries(self, q: np.ndarray):
        if is_cuda(self.device):
            import torch

            return torch.from_numpy(q).to(self.device)
        return q

    def knn(self, q: np.ndarray, k: int, exclude: np.ndarray | None = None, sparse: list | None = None) -> Hits:
        """This partition's ``k`` best rows for each query (the join's checked, prepared queries).

        Keys are rows of this partition (in id order), best first, ties to the smaller id, and the
        hits carry their ids. ``exclude``: per query, an id not to return (a self-join's own row).
        ``sparse``: the queries' sparse vectors (``spec.sparse``; ``None`` for a query without one).
        """
        nq = len(q)
        largest = self.spec.largest
        if nq == 0 or len(self.ids) == 0 or (self.allow is not None and not self.allow.any()):
            hits = Hits.empty(nq, k, largest)
            hits.ids = np.full((nq, k), None, object)
            return hits
        if self.spec.sparse:
            return self._knn_hybrid(q, k, exclude, sparse)
        want = k + (1 if exclude is not None else 0)
        hits = self.backend.search(self.store, self._queries(q), want, self.allow)
        D, K = hits.scores, hits.keys
        valid = K >= 0
        ids = np.full(K.shape, None, object)
        ids[valid] = self.ids[K[valid]]
        if exclude is not None:
            gone = valid & (ids == np.asarray(exclude, object)[:, None])
            if gone.any():  # move the excluded hit behind the others, keeping their order
                gone |= ~valid
                order = np.argsort(gone, axis=1, kind="stable")
                D, K, ids, gone = (np.take_along_axis(x, order, axis=1) for x in (D, K, ids, gone))
                D[gone], K[gone], ids[gone] = sentinel(largest), -1, None
        return Hits(np.ascontiguousarray(D[:, :k]), np.ascontiguousarray(K[:, :k]), ids[:, :k])

    def _hybrid_tiles(self, q: np.ndarray, sparse: list | None):
        """Tile by tile of queries: (the tile's first query, its scores for every row as float32, ``-inf``
        where a query may not match). A score is the dense inner product plus the sparse dot product, summed
        in float64 as the engine's hybrid search does; a query may match the rows the filter lets through
        and, with sparse vectors alone, only those sharing a term with it."""
        n = len(self.ids)
        step = max(1, _HYBRID_TILE_BYTES // (8 * max(1, n)))
        for a in range(0, len(q), step):
            t = min(step, len(q) - a)
            if self.spec.dim:
                qd = self._queries(np.ascontiguousarray(q[a : a + t]))
                total = np.asarray(to_host(qd @ self.store.search_view().T), np.float64)
                ok = np.ones((t, n), bool)
            else:
                total, ok = np.zeros((t, n)), np.zeros((t, n), bool)
            for j in range(t):
                v = None if sparse is None else sparse[a + j]
                if v is not None and self.sparse is not None:
                    s, touched = self.sparse.scores(v, n, touched=True)
                    total[j] += s
                    if not self.spec.dim:
                        ok[j] = touched
            if self.allow is not None:
                ok &= self.allow
            scores = total.astype(np.float32)
            scores[~ok] = -np.inf
            yield a, scores

    def _knn_hybrid(self, q: np.ndarray, k: int, exclude, sparse) -> Hits:
        """k-NN with sparse vectors: every row a query may match scored exactly, the best ``k`` chosen by
        the kernels' top-k (ties to the smaller row, which is the smaller id here)."""
        D, K = [], []
        row_of = {x: r for r, x in enumerate(self.ids.tolist())} if exclude is not None else None
        for a, scores in self._hybrid_tiles(q, sparse):
            if row_of is not None:  # a self-join's own row
                for j, x in enumerate(np.asarray(exclude)[a : a + len(scores)].tolist()):
                    r = row_of.get(x)
                    if r is not None:
                        scores[j, r] = -np.inf
            d, key = kernels.topk(scores, k, largest=True)
            D.append(d)
            K.append(key)
        D, K = np.concatenate(D), np.concatenate(K)
        ids = np.full(K.shape, None, object)
        ids[K >= 0] = self.ids[K[K >= 0]]
        return Hits(D, K, ids)

    def _device_allow(self):
        if self._allow_dev is None:
            import torch

            self._allow_dev = torch.from_numpy(self.allow).to(self.device)
        return self._allow_dev

    def range(self, q: np.ndarray, threshold: float, sparse: list | None = None):
        """Every (query row, right id, score) pair within the threshold, unordered: a tile scan
        over the same store the k-NN search reads (with sparse vectors, their exact scores per query)."""
        n = len(self.ids)
        out_q, out_r, out_s = [], [], []
        if n and len(q) and self.spec.sparse:
            for a, scores in self._hybrid_tiles(q, sparse):
                qi, rj = np.nonzero(scores >= threshold)  # never where a query may not match (-inf)
                out_q.append(qi.astype(np.int64) + a)
                out_r.append(rj)
                out_s.append(scores[qi, rj])
        elif n and len(q):
            cuda = is_cuda(self.device)
            base, sq = self.store.search_view(), self.store.search_sqnorms()
            qd = self._queries(q)
            qn = (qd * qd).sum(1) if self.spec.metric == "l2" else None
            step = max(1, RANGE_TILE_BYTES // (4 * max(1, len(q))))
            for start in range(0, n, step):
                s = qd @ base[start : start + step].T
                if self.spec.metric == "l2":
                    s = qn[:, None] + sq[start : start + step][None, :] - 2 * s
                    s = s.clip(min=0) if cuda else np.maximum(s, 0)
                    hit = s <= threshold
                else:
                    hit = s >= threshold
                if self.allow is not None:
                    m = (self._device_allow() if cuda else self.allow)[start : start + step]
                    hit = hit & m[None, :]
                if cuda:
                    import torch

                    qi, rj = (t.cpu().numpy() for t in torch.nonzero(hit, as_tuple=True))
                    sv = to_host(s[hit])
                else:
                    qi, rj = np.nonzero(hit)
                    sv = s[qi, rj]
                out_q.append(qi.astype(np.int64))
                out_r.append(rj + start)
                out_s.append(np.asarray(sv, np.float32))
        if not out_q:
            return np.empty(0, np.int64), self.ids[:0], np.empty(0, np.float32)
        rows = np.concatenate(out_r)
        return np.concatenate(out_q), self.ids[rows], np.concatenate(out_s)
