"""Third-party systems of the recall-versus-speed benchmark, each behind the ``System`` protocol
(``bench/ann/__init__.py``): raw FAISS (flat, IVF, HNSW, IVF over 4-bit fast-scan PQ with an exact
refine), ScaNN, hnswlib, USearch, Milvus Lite, Chroma.

Every adapter gets unit-length float32 rows and returns the cosine neighbours as int64 row numbers,
best first. Each uses its library's fastest documented call: one query per call for
``search_one`` (single-threaded where the library lets the caller choose), one call with all the
queries and all cores for ``search_batch``. Libraries are imported when a system is constructed, so
this module imports without any of them installed.

Search parameters below the requested ``k`` (an ``ef`` of 16 with ``k`` = 100) are raised to ``k``
at search time for every HNSW system: hnswlib, USearch and Chroma (hnswlib inside) do it
themselves, FAISS does not (its recall drops when ``efSearch < k``), so the FAISS adapter does it.
ScaNN's ``pre_reorder_num_neighbors`` is raised to ``k`` the same way.

Each adapter's ``build_params`` holds what it was built with (graph links, build beam, lists,
code size), filled in at build time where the size depends on the data; the runner records it.
"""
from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import pad_ids

HNSW_EFS = (16, 24, 32, 48, 64, 96, 128, 256)
IVF_NPROBES = (1, 2, 4, 8, 16, 32, 64, 128)
# Partitioned indexes over compressed codes with an exact re-rank (ScaNN, FAISS IVF-PQ fast scan + refine):
# one staircase of (share of the lists searched, re-rank depth), both growing, cheapest first. The
# shares run from 1/128 of the lists to half of them, so recall@10 spans about 0.9-0.99 from a
# 20k synthetic set (which needs a large share) to 1M rows; ``RERANK`` is ScaNN's
# ``pre_reorder_num_neighbors`` (candidates re-scored exactly) and ``K_FACTORS`` FAISS's refine
# ``k_factor`` (k * k_factor candidates re-scored exactly).
PARTITION_SHARES = (1 / 128, 1 / 64, 1 / 32, 1 / 24, 1 / 16, 1 / 12, 1 / 8, 1 / 6, 1 / 4, 1 / 3, 1 / 2)
RERANK = (40, 50, 60, 80, 100, 120, 150, 200, 250, 300, 400)
K_FACTORS = (2, 2, 3, 4, 4, 5, 6, 8, 10, 12, 16)


def partition_steps(nlists: int) -> list[int]:
    """Lists to search at each step of the staircase for an index of ``nlists`` lists (at least 1,
    at most nlists; a step that rounds to the previous one's count is kept, the re-rank depth differs)."""
    return [min(nlists, max(1, int(round(share * nlists)))) for share in PARTITION_SHARES]


def sqrt_lists(n: int) -> int:
    """About sqrt(n) lists (ScaNN's recommended ``num_leaves``, and FAISS's for IVF over fast-scan codes,
    where scanning a list is cheap): at least 1, at most n."""
    return max(1, min(n, int(round(math.sqrt(n)))))


def default_nlist(n: int) -> int:
    """IVF list count for ``n`` rows: about 4 * sqrt(n), at least 1 and at most n."""
    return max(1, min(n, int(round(4 * math.sqrt(n)))))


def child_pids(pid: int | None = None) -> list[int]:
    """Every live descendant of ``pid`` (default: this process), read from /proc (Linux)."""
    pid = os.getpid() if pid is None else pid
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids: list[int] = []
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    kids += [int(c) for c in f.read().split()]
        except OSError:
            continue
        out += kids
        todo += kids
    return out


class _Base:
    """What every adapter shares: one exact search setting by default, no child process."""

    name = "?"
    index = "?"
    build_params: dict = {}

    def sweep(self) -> list[dict]:
        return [{}]

    def set_params(self, params: dict) -> None:
        if params:
            raise ValueError(f"{self.name}: unknown search parameters {params}")

    def server_pids(self) -> list[int]:
        """Processes this system started (whose memory is not in the runner's own RSS)."""
        return []

    def __repr__(self) -> str:
        return f"<{self.name}: {self.index}>"


# ── FAISS ────────────────────────────────────────────────────────────────────────────────────


class _Faiss(_Base):
    def __init__(self):
        import faiss  # never faiss.contrib.torch_utils: it patches search's signature

        self._faiss = faiss
        self._ix = None

    def _search(self, q: np.ndarray, k: int) -> np.ndarray:
        _, ids = self._ix.search(q, k)
        return ids  # int64, -1 where fewer than k

    def search_one(self, q: np.ndarray, k: int) -> np.ndarray:
        return self._search(q[None], k)[0]

    def search_batch(self, q: np.ndarray, k: int) -> np.ndarray:
        return self._search(q, k)

    def close(self) -> None:
        self._ix = None


class FaissFlat(_Faiss):
    """Exact search: ``faiss.IndexFlatIP`` (inner product = cosine on unit rows). Nothing to tune.
    FAISS threads over queries with OpenMP (all cores for a batch); one query runs on one thread."""

    name = "FAISS flat"

    def __init__(self):
        super().__init__()
        self.index = "FlatIP (exact)"
        self.build_params = {"index": "IndexFlatIP"}

    def build(self, x: np.ndarray) -> None:
        self._ix = self._faiss.IndexFlatIP(x.shape[1])
        self._ix.add(np.ascontiguousarray(x, dtype=np.float32))


class FaissIVF(_Faiss):
    """``faiss.IndexIVFFlat`` with an inner-product flat quantizer, k-means trained on the data
    itself (FAISS subsamples to 256 points per list). ``nlist`` defaults to about 4 * sqrt(n).
    Sweep: ``nprobe`` (lists scanned per query), values above nlist left out."""

    name = "FAISS IVF"

    def __init__(self, nlist: int | None = None):
        super().__init__()
        self.nlist = nlist
        self.index = f"IVFFlat nlist={nlist or '4*sqrt(n)'}"
        self.build_params = {"index": "IndexIVFFlat", "nlist": nlist}

    def build(self, x: np.ndarray) -> None:
        f = self._faiss
        x = np.ascontiguousarray(x, dtype=np.float32)
        nlist = self.nlist or default_nlist(len(x))
        self._nlist = nlist
        quantizer = f.IndexFlatIP(x.shape[1])
        ix = f.IndexIVFFlat(quantizer, x.shape[1], nlist, f.METRIC_INNER_PRODUCT)
        ix.train(x)
        ix.add(x)
        self._quantizer, self._ix = quantizer, ix  # keep the quantizer alive with the index
        self.index = f"IVFFlat nlist={nlist}"
        self.build_params = {"index": "IndexIVFFlat", "nlist": nlist}

    def sweep(self) -> list[dict]:
        nlist = getattr(self, "_nlist", self.nlist) or max(IVF_NPROBES)
        return [{"nprobe": p} for p in IVF_NPROBES if p <= nlist]

    def set_params(self, params: dict) -> None:
        self._ix.nprobe = int(params["nprobe"])


class FaissHNSW(_Faiss):
    """``faiss.IndexHNSWFlat`` with METRIC_INNER_PRODUCT (build multi-threaded by OpenMP).
    Sweep: ``efSearch``; a search for k > efSearch uses efSearch = k, because FAISS, unlike
    hnswlib, does not raise it itself."""

    name = "FAISS HNSW"

    def __init__(self, M: int = 32, efConstruction: int = 200):
        super().__init__()
        self.M, self.efConstruction = M, efConstruction
        self.index = f"HNSWFlat M={M} efConstruction={efConstruction}"
        self.build_params = {"index": "IndexHNSWFlat", "M": M, "efConstruction": efConstruction}
        self._ef = 16

    def build(self, x: np.ndarray) -> None:
        f = self._faiss
        ix = f.IndexHNSWFlat(x.shape[1], self.M, f.METRIC_INNER_PRODUCT)
        ix.hnsw.efConstruction = self.efConstruction
        ix.add(np.ascontiguousarray(x, dtype=np.float32))
        self._ix = ix

    def sweep(self) -> list[dict]:
        return [{"efSearch": ef} for ef in HNSW_EFS]

    def set_params(self, params: dict) -> None:
        self._ef = int(params["efSearch"])
        self._ix.hnsw.efSearch = self._ef

    def _search(self, q: np.ndarray, k: int) -> np.ndarray:
        ef = max(self._ef, k)
        if self._ix.hnsw.efSearch != ef:
            self._ix.hnsw.efSearch = ef
        return super()._search(q, k)


class FaissIVFPQRefine(_Faiss):
    """FAISS's nearest equivalent of ScaNN: an inverted file over 4-bit product-quantisation codes
    scanned with SIMD look-up tables ("fast scan"), whose candidates an exact re-rank over the
    float32 rows orders: ``index_factory(d, "IVF<nlist>,PQ<m>x4fs,RFlat", METRIC_INNER_PRODUCT)``
    (an ``IndexRefineFlat`` around an ``IndexIVFPQFastScan``; FAISS 1.15 accepts the string).
    ``nlist`` defaults to about sqrt(n) (the lists are cheap to scan, as ScaNN's leaves),
    ``m`` to d/2 sub-quantisers (2 dimensions per 4-bit code: d/4 bytes a row, the same code size
    as ScaNN's ``score_ah(2)``). Trained on the data itself (FAISS subsamples).

    Sweep: the staircase of (``nprobe``, ``k_factor``) pairs in ``PARTITION_SHARES`` and
    ``K_FACTORS``: lists scanned per query, and k * k_factor candidates re-scored exactly.
    Both are set on the index (``IndexIVF.nprobe``, ``IndexRefine.k_factor``). ``search_batch`` uses
    FAISS's OpenMP threads (all cores) as the other FAISS adapters do; ``search_one`` runs on one
    thread (``omp_set_num_threads(1)`` around the call, as hnswlib's and USearch's single queries):
    ``IndexRefineFlat`` opens a parallel region even for one query, and on this project's 2-core
    machine, shared, a single query then took 12 ms at 2 threads against 0.14 ms at 1 (20k rows,
    nprobe 12, k_factor 5; its base index alone answers in 0.08 ms either way), a cost that is
    FAISS's thread hand-off, not its search. Without the refine, FAISS answers one query on one
    thread anyway."""

    name = "FAISS IVF-PQfs+refine"

    def __init__(self, nlist: int | None = None, m: int | None = None):
        super().__init__()
        self.nlist, self.m = nlist, m
        self.spec = None
        self.index = f"IVF{nlist or 'sqrt(n)'},PQ{m or 'd/2'}x4fs,RFlat"
        self.build_params = {"factory": self.index, "nlist": nlist, "pq_m": m, "pq_nbits": 4}
        self._steps: list[dict] = []

    @staticmethod
    def factory(n: int, d: int, nlist: int | None = None, m: int | None = None) -> str:
        """The factory string for ``n`` rows of ``d`` dims (nlist about sqrt(n), d/2 sub-quantisers)."""
        return f"IVF{nlist or sqrt_lists(n)},PQ{m or max(1, d // 2)}x4fs,RFlat"

    def build(self, x: np.ndarray) -> None:
        f = self._faiss
        x = np.ascontiguousarray(x, dtype=np.float32)
        n, d = x.shape
        self.spec = self.factory(n, d, self.nlist, self.m)
        ix = f.index_factory(d, self.spec, f.METRIC_INNER_PRODUCT)
        ix.train(x)
        ix.add(x)
        self._ix, self._ivf = ix, f.extract_index_ivf(ix)
        nlist = int(self._ivf.nlist)
        self.index = self.spec
        self.build_params = {"factory": self.spec, "nlist": nlist, "pq_m": int(self.m or max(1, d // 2)),
                             "pq_nbits": 4, "single_query_threads": 1}
        self._steps = [{"nprobe": p, "k_factor": kf} for p, kf in zip(partition_steps(nlist), K_FACTORS)]

    def sweep(self) -> list[dict]:
        if not self._steps:  # before build: the shape of the sweep, for a reader of the code
            return [{"nprobe": p, "k_factor": kf} for p, kf in zip(partition_steps(max(IVF_NPROBES)), K_FACTORS)]
        return list(self._steps)

    def set_params(self, params: dict) -> None:
        self._ivf.nprobe = int(params["nprobe"])
        self._ix.k_factor = float(params["k_factor"])

    def search_one(self, q: np.ndarray, k: int) -> np.ndarray:
        f = self._faiss
        threads = f.omp_get_max_threads()
        f.omp_set_num_threads(1)
        try:
            return self._search(q[None], k)[0]
        finally:
            f.omp_set_num_threads(threads)


# ── ScaNN ────────────────────────────────────────────────────────────────────────────────────


class ScaNN(_Base):
    """Google's ScaNN (``scann`` on PyPI), built as its README recommends for ~100k-1M rows and
    dot-product (= cosine on unit rows) search::

        scann.scann_ops_pybind.builder(x, 10, "dot_product")
            .tree(num_leaves=L, num_leaves_to_search=..., training_sample_size=S)
            .score_ah(2, anisotropic_quantization_threshold=0.2)
            .reorder(R).build()

    a k-means tree of ``num_leaves`` (default about sqrt(n)) partitions trained on ``S`` rows
    (default n/4, at least 50 per leaf), anisotropic 4-bit quantisation of 2 dimensions per code
    (d/4 bytes a row, scanned with SIMD look-up tables), then an exact float32 re-rank of the
    best ``pre_reorder_num_neighbors`` candidates. Training uses every core.

    Sweep: the staircase of (``leaves_to_search``, ``pre_reorder_num_neighbors``) pairs in
    ``PARTITION_SHARES`` and ``RERANK`` (the re-rank depth is raised to ``k`` when k is larger).
    ``search_one`` is ``searcher.search`` (one query, on the calling thread: ScaNN's single-query
    call runs on one thread); ``search_batch`` is ``searcher.search_batched_parallel`` on a pool
    of ``set_num_threads(os.cpu_count())`` threads. ScaNN's single-query and batched paths score
    with slightly different arithmetic, so a query's answer may differ between them in a place or
    two (the recall is the same).
    """

    name = "ScaNN"

    def __init__(self, num_leaves: int | None = None, training_sample_size: int | None = None,
                 dims_per_block: int = 2, aq_threshold: float = 0.2, threads: int | None = None):
        import scann  # noqa: F401  (fail at construction when it is missing)

        self.num_leaves, self.training_sample_size = num_leaves, training_sample_size
        self.dims_per_block, self.aq_threshold = dims_per_block, aq_threshold
        self.threads = threads or os.cpu_count() or 1
        self._searcher = None
        self._params: dict = {}
        self._steps: list[dict] = []
        self.index = self._describe(num_leaves or "sqrt(n)", training_sample_size or "n/4")
        self.build_params = {"num_leaves": num_leaves, "training_sample_size": training_sample_size,
                             "dims_per_block": dims_per_block, "anisotropic_quantization_threshold": aq_threshold}

    def _describe(self, leaves, sample) -> str:
        try:
            from importlib.metadata import version

            v = f", scann {version('scann')}"
        except Exception:
            v = ""
        return (f"tree leaves={leaves} (trained on {sample}), AH {self.dims_per_block} dims/4-bit code "
                f"threshold {self.aq_threshold}, float32 reorder{v}")

    def build(self, x: np.ndarray) -> None:
        import scann

        x = np.ascontiguousarray(x, dtype=np.float32)
        n = len(x)
        leaves = min(n, self.num_leaves or sqrt_lists(n))
        sample = min(n, self.training_sample_size or max(n // 4, 50 * leaves))
        steps = partition_steps(leaves)
        self._searcher = (scann.scann_ops_pybind.builder(x, 10, "dot_product")
                          .tree(num_leaves=leaves, num_leaves_to_search=steps[len(steps) // 2],
                                training_sample_size=sample)
                          .score_ah(self.dims_per_block, anisotropic_quantization_threshold=self.aq_threshold)
                          .reorder(RERANK[len(RERANK) // 2])
                          .build())
        self._searcher.set_num_threads(self.threads)
        self.index = self._describe(leaves, sample)
        self.build_params = {"num_leaves": leaves, "training_sample_size": sample,
                             "dims_per_block": self.dims_per_block,
                             "anisotropic_quantization_threshold": self.aq_threshold, "search_threads": self.threads}
        self._steps = [{"leaves_to_search": lv, "reorder": r} for lv, r in zip(steps, RERANK)]
        self._params = self._steps[len(self._steps) // 2]

    def sweep(self) -> list[dict]:
        if not self._steps:
            return [{"leaves_to_search": lv, "reorder": r} for lv, r in zip(partition_steps(1000), RERANK)]
        return list(self._steps)

    def set_params(self, params: dict) -> None:
        self._params = {"leaves_to_search": int(params["leaves_to_search"]), "reorder": int(params["reorder"])}

    def search_one(self, q: np.ndarray, k: int) -> np.ndarray:
        p = self._params
        ids, _ = self._searcher.search(q, final_num_neighbors=k, leaves_to_search=p["leaves_to_search"],
                                       pre_reorder_num_neighbors=max(p["reorder"], k))
        return np.asarray(ids, dtype=np.int64)

    def search_batch(self, q: np.ndarray, k: int) -> np.ndarray:
        p = self._params
        ids, _ = self._searcher.search_batched_parallel(
            np.ascontiguousarray(q, dtype=np.float32), final_num_neighbors=k,
            leaves_to_search=p["leaves_to_search"], pre_reorder_num_neighbors=max(p["reorder"], k))
        ids = np.asarray(ids, dtype=np.int64)
        if ids.shape != (len(q), k):  # fewer than k came back
            return pad_ids(ids, k)
        return ids

    def close(self) -> None:
        self._searcher = None


# ── hnswlib ──────────────────────────────────────────────────────────────────────────────────


class Hnswlib(_Base):
    """``hnswlib.Index(space="ip")``, built with ``add_items(..., num_threads=-1)`` (all cores).
    Sweep: ``ef``; the search uses max(ef, k) (hnswlib would raise it to k itself anyway).
    ``search_one`` runs on one thread (``num_threads=1``), ``search_batch`` on all cores."""

    name = "hnswlib"

    def __init__(self, M: int = 32, ef_construction: int = 200):
        import hnswlib

        self._hnswlib = hnswlib
        self.M, self.ef_construction = M, ef_construction
        self.index = f"HNSW M={M} efConstruction={ef_construction}"
        self.build_params = {"M": M, "ef_construction": ef_construction}
        self._ix = None
        self._ef = 16
        self._ef_set = None

    def build(self, x: np.ndarray) -> None:
        ix = self._hnswlib.Index(space="ip", dim=x.shape[1])
        ix.init_index(max_elements=len(x), ef_construction=self.ef_construction, M=self.M)
        ix.add_items(x, np.arange(len(x)), num_threads=-1)
        self._ix = ix

    def sweep(self) -> list[dict]:
        return [{"ef": ef} for ef in HNSW_EFS]

    def set_params(self, params: dict) -> None:
        self._ef = int(params["ef"])

    def _apply_ef(self, k: int) -> None:
        ef = max(self._ef, k)
        if ef != self._ef_set:
            self._ix.set_ef(ef)
            self._ef_set = ef

    def search_one(self, q: np.ndarray, k: int) -> np.ndarray:
        self._apply_ef(k)
        labels, _ = self._ix.knn_query(q, k, num_threads=1)
        return labels[0].astype(np.int64)

    def search_batch(self, q: np.ndarray, k: int) -> np.ndarray:
        self._apply_ef(k)
        labels, _ = self._ix.knn_query(q, k, num_threads=-1)
        return labels.astype(np.int64)

    def close(self) -> None:
        self._ix = None


# ── USearch ──────────────────────────────────────────────────────────────────────────────────


class USearch(_Base):
    """``usearch.index.Index(metric="ip", dtype="f32")``: HNSW over full float32 vectors (no
    quantisation, so its recall compares with the others), built with ``add(..., threads=0)``
    (all cores). Sweep: ``expansion_search`` (USearch raises it to k itself). ``search_one`` runs
    on the calling thread (``threads=1``), ``search_batch`` on all cores (``threads=0``)."""

    name = "USearch"

    def __init__(self, connectivity: int = 32, expansion_add: int = 200):
        from usearch.index import Index

        self._Index = Index
        self.connectivity, self.expansion_add = connectivity, expansion_add
        self.index = f"HNSW connectivity={connectivity} expansion_add={expansion_add} f32"
        self.build_params = {"connectivity": connectivity, "expansion_add": expansion_add, "dtype": "f32"}
        self._ix = None

    def build(self, x: np.ndarray) -> None:
        ix = self._Index(ndim=x.shape[1], metric="ip", dtype="f32",
                         connectivity=self.connectivity, expansion_add=self.expansion_add)
        ix.add(np.arange(len(x), dtype=np.uint64), np.ascontiguousarray(x, dtype=np.float32),
               threads=0)
        self._ix = ix

    def sweep(self) -> list[dict]:
        return [{"expansion_search": ef} for ef in HNSW_EFS]

    def set_params(self, params: dict) -> None:
        self._ix.expansion_search = int(params["expansion_search"])

    def search_one(self, q: np.ndarray, k: int) -> np.ndarray:
        m = self._ix.search(q, k, threads=1)
        return m.keys[: len(m)].astype(np.int64)

    def search_batch(self, q: np.ndarray, k: int) -> np.ndarray:
        m = self._ix.search(q, k, threads=0)
        keys = m.keys.astype(np.int64)
        keys[np.arange(k)[None, :] >= m.counts[:, None]] = -1
        return keys

    def close(self) -> None:
        self._ix = None


# ── Milvus Lite ──────────────────────────────────────────────────────────────────────────────


class MilvusLite(_Base):
    """Milvus Lite (``pymilvus.MilvusClient("<dir>/milvus.db")``), metric IP.

    Milvus Lite 3.x is a pure-Python re-implementation, not the Milvus C++ core: data lives in
    LSM-style Parquet segments (the memtable flushes at 128 MiB of Arrow data, about 85k rows of
    384 floats), each segment gets its own FAISS index built by a background thread, and a
    search runs every segment's index plus a brute-force scan of the unflushed memtable, then
    merges in Python. Index types it builds (milvus_lite/index/factory.py): ``HNSW`` (FAISS
    IndexHNSWFlat, build params M/efConstruction, search param ``ef``), ``IVF_FLAT`` (FAISS
    IndexIVFFlat per segment, ``nlist``/``nprobe``), ``FLAT`` (exact numpy scan), plus
    HNSW_SQ/IVF_SQ8 (quantised, not offered here). The search params are honoured; the build
    params only when sent under a "params" key (pymilvus 3 flattens them, and Milvus Lite then
    builds with its defaults without a word), so ``build`` sends both and checks. Each search
    also walks every row's primary key in Python (dedup and delete masks,
    search/executor_indexed.py), so a query costs O(n) Python work whatever the index.

    ``server="embedded"`` (default) is what ``MilvusClient("x.db")`` does: the gRPC server runs
    as threads inside this process, so there is no child process and its memory is in the
    runner's own RSS (``server_pids()`` is empty). ``server="process"`` starts
    ``python -m milvus_lite server`` as a child and connects to it over localhost gRPC, like a
    Milvus server; ``server_pids()`` then names it.

    ``build`` inserts in batches of ``insert_batch`` rows, flushes, and waits until every segment
    has its index (Milvus Lite's ``describe_index`` says "Finished" before the background build
    has run, and until it has, searches fall back to brute force). Searches ask for the primary
    key only (``output_fields=["id"]``): with no output fields Milvus Lite returns every field,
    the vector included.
    """

    name = "Milvus Lite"
    COLLECTION = "bench"
    NQ_MAX = 16384  # Milvus's limit on queries per search request

    def __init__(self, index_type: str = "HNSW", M: int = 32, efConstruction: int = 200,
                 nlist: int | None = None, db_path: str | None = None,
                 server: str = "embedded", insert_batch: int = 5000):
        import pymilvus  # noqa: F401  (fail at construction when it is missing)

        index_type = index_type.upper()
        if index_type not in ("HNSW", "IVF_FLAT", "FLAT"):
            raise ValueError(f"index_type {index_type!r}: use HNSW, IVF_FLAT or FLAT")
        if server not in ("embedded", "process"):
            raise ValueError(f"server {server!r}: use 'embedded' or 'process'")
        self.index_type, self.nlist = index_type, nlist
        self.M, self.efConstruction = M, efConstruction
        self.db_path, self.server, self.insert_batch = db_path, server, insert_batch
        self._client = self._proc = self._dir = None
        self._search_params: dict = {"metric_type": "IP", "params": {}}
        self.index = self._describe(nlist)
        self.build_params = {"index_type": index_type, **({"M": M, "efConstruction": efConstruction}
                                                         if index_type == "HNSW" else
                                                         {"nlist": nlist} if index_type == "IVF_FLAT" else {})}
        if index_type == "FLAT":
            self.name = "Milvus Lite FLAT"
        if server == "process":
            self.name += " (server process)"

    def _describe(self, nlist) -> str:
        try:
            from importlib.metadata import version

            v = " " + version("milvus-lite")
        except Exception:
            v = ""
        if self.index_type == "HNSW":
            what = f"HNSW M={self.M} efConstruction={self.efConstruction}"
        elif self.index_type == "IVF_FLAT":
            what = f"IVF_FLAT nlist={nlist or '4*sqrt(n)'}"
        else:
            what = "FLAT (brute force)"
        return f"{what} (Milvus Lite{v}, FAISS per segment, {self.server})"

    # ── lifecycle ──

    def _start(self) -> str:
        """Make the data directory and, in process mode, start the server; return the URI."""
        parent = self.db_path or None
        if parent:
            os.makedirs(parent, exist_ok=True)
        self._dir = tempfile.mkdtemp(prefix="milvus-lite-", dir=parent)
        self._data = os.path.join(self._dir, "milvus.db")
        if self.server == "embedded":
            return self._data
        from server_proc import free_port  # bench/server_proc.py: the one free_port

        port = free_port()
        self._log = open(os.path.join(self._dir, "server.log"), "wb")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "milvus_lite", "server", "--data-dir", self._data,
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"milvus_lite server exited with {self._proc.returncode}; "
                                   f"see {self._dir}/server.log")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return f"http://127.0.0.1:{port}"
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("milvus_lite server did not open its port in 60 s")

    def build(self, x: np.ndarray) -> None:
        from pymilvus import DataType, MilvusClient

        n, dim = x.shape
        uri = self._start()
        self._client = c = MilvusClient(uri)
        schema = c.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        if self.index_type == "HNSW":
            params = {"M": self.M, "efConstruction": self.efConstruction}
        elif self.index_type == "IVF_FLAT":
            self._nlist = self.nlist or default_nlist(n)
            params = {"nlist": self._nlist}
            self.index = self._describe(self._nlist)
            self.build_params = {"index_type": self.index_type, "nlist": self._nlist}
        else:
            params = {}
        ip = c.prepare_index_params()
        # pymilvus 3 sends each build parameter as its own key; Milvus Lite 3.2 reads only a
        # "params" key holding them all as JSON and silently builds with its defaults otherwise
        # (M=16, efConstruction=200, nlist=128). So send both shapes, and check what it kept.
        ip.add_index("vector", index_type=self.index_type, metric_type="IP",
                     params={**params, "params": params} if params else {})
        c.create_collection(self.COLLECTION, schema=schema, index_params=ip)
        kept = c.describe_index(self.COLLECTION, "vector")
        kept = kept.get("params") if isinstance(kept.get("params"), dict) else kept
        if any(str(kept.get(key)) != str(v) for key, v in params.items()):
            raise RuntimeError(f"Milvus Lite did not keep the build parameters {params}: {kept}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        for s in range(0, n, self.insert_batch):
            e = min(n, s + self.insert_batch)
            c.insert(self.COLLECTION, [{"id": i, "vector": x[i]} for i in range(s, e)])
        c.flush(self.COLLECTION)
        self._wait_indexed()
        c.load_collection(self.COLLECTION)  # already loaded (index_params given); a no-op then

    def _wait_indexed(self, timeout: float = 6 * 3600) -> None:
        """Block until every flushed segment has its index attached. Embedded: drain the
        collection's background worker (private API, the engine's own test hook). Process:
        wait for an index file per data file in the manifest, its size steady for 0.5 s
        (the server attaches the index right after writing it)."""
        if self.server == "embedded":
            try:
                from milvus_lite.server_manager import server_manager_instance as smi

                db = smi._servers[os.path.abspath(self._data)][1]
                col = db.get_collection(self.COLLECTION)
                col._wait_for_bg(timeout=timeout)
                missing = [s for s in col._segments_snapshot()
                           if s.num_rows and "vector" not in s.indexes]
                if missing:
                    raise RuntimeError(f"Milvus Lite: {len(missing)} segments have no index")
                return
            except (ImportError, AttributeError, KeyError):
                pass  # another milvus-lite version: fall back to the files
        import json

        col_dir = Path(self._data) / "collections" / self.COLLECTION
        suffix = f".vector.{self.index_type.lower()}.idx"
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:
                man = json.loads((col_dir / "manifest.json").read_text())
                sizes = []
                for part, info in man["partitions"].items():
                    idx_dir = col_dir / "partitions" / part / "indexes"
                    for df in info["data_files"]:
                        sizes.append((idx_dir / (Path(df).stem + suffix)).stat().st_size)
            except (OSError, ValueError, KeyError):
                sizes = None
            if sizes is not None and sizes == last:
                return
            last = sizes
            time.sleep(0.5)
        raise TimeoutError("Milvus Lite: segment indexes not built in time")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.server == "embedded" and self._dir:
            try:
                from milvus_lite.server_manager import server_manager_instance as smi

                smi.release_server(self._data)  # MilvusClient.close() leaves it running
            except ImportError:
                pass
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
            self._log.close()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def server_pids(self) -> list[int]:
        if self._proc is None or self._proc.poll() is not None:
            return []
        return [self._proc.pid] + child_pids(self._proc.pid)

    # ── search ──

    def sweep(self) -> list[dict]:
        if self.index_type == "HNSW":
            return [{"ef": ef} for ef in HNSW_EFS]
        if self.index_type == "IVF_FLAT":
            nlist = getattr(self, "_nlist", self.nlist) or max(IVF_NPROBES)
            return [{"nprobe": p} for p in IVF_NPROBES if p <= nlist]
        return [{}]

    def set_params(self, params: dict) -> None:
        self._search_params = {"metric_type": "IP", "params": dict(params)}

    def _search(self, data, k: int):
        return self._client.search(self.COLLECTION, data=data, limit=k, output_fields=["id"],
                                   search_params=self._search_params)

    def search_one(self, q: np.ndarray, k: int) -> np.ndarray:
        hits = self._search([q.tolist()], k)[0]
        return np.fromiter((h["id"] for h in hits), dtype=np.int64, count=len(hits))

    def search_batch(self, q: np.ndarray, k: int) -> np.ndarray:
        rows = []
        for s in range(0, len(q), self.NQ_MAX):
            res = self._search(q[s: s + self.NQ_MAX].tolist(), k)
            rows += [[h["id"] for h in hits] for hits in res]
        return pad_ids(rows, k)


# ── Chroma ───────────────────────────────────────────────────────────────────────────────────


class Chroma(_Base):
    """Chroma (``chromadb.PersistentClient`` in a temporary directory, deleted by ``close``):
    one collection whose HNSW (hnswlib inside Chroma's Rust core) is configured through
    ``configuration={"hnsw": {"space": "cosine", "max_neighbors": M, "ef_construction": ...,
    "ef_search": ...}}``; ids are the row numbers as strings. Rows are added in batches of
    ``client.get_max_batch_size()``.

    Sweep: ``ef_search``. ``collection.modify(configuration={"hnsw": {"ef_search": ef}})`` is
    accepted and stored, but the running client keeps searching its open index with the old
    value (chromadb 1.5.9, measured); the new value takes effect when the index is opened
    again. So ``set_params`` modifies the collection, closes the client and opens a fresh one on
    the same directory, then runs one query to load the index (that is why the client is
    persistent, not ephemeral: an ephemeral client's data would go with it). Everything runs
    inside this process (no ``server_pids``). ``search_batch`` sends all queries in one call.
    """

    name = "Chroma"
    COLLECTION = "bench"

    def __init__(self, M: int = 32, construction_ef: int = 200, db_path: str | None = None):
        import chromadb  # noqa: F401

        self.M, self.construction_ef, self.db_path = M, construction_ef, db_path
        self.index = (f"HNSW M={M} construction_ef={construction_ef}"
                      f" (chromadb {chromadb.__version__})")
        self.build_params = {"max_neighbors": M, "ef_construction": construction_ef}
        self._client = self._col = self._dir = None
        self._ef = None

    def _open(self) -> None:
        import chromadb
        from chromadb.config import Settings

        self._client = chromadb.PersistentClient(
            path=self._dir, settings=Settings(anonymized_telemetry=False))

    def build(self, x: np.ndarray) -> None:
        if self.db_path:
            os.makedirs(self.db_path, exist_ok=True)
        self._dir = tempfile.mkdtemp(prefix="chroma-", dir=self.db_path or None)
        self._d = x.shape[1]
        self._open()
        self._ef = HNSW_EFS[-1]
        self._col = self._client.create_collection(
            self.COLLECTION,
            configuration={"hnsw": {"space": "cosine", "max_neighbors": self.M,
                                    "ef_construction": self.construction_ef,
                                    "ef_search": self._ef}})
        bs = self._client.get_max_batch_size()
        x = np.ascontiguousarray(x, dtype=np.float32)
        for s in range(0, len(x), bs):
            e = min(len(x), s + bs)
            self._col.add(ids=[str(i) for i in range(s, e)], embeddings=x[s:e])

    def sweep(self) -> list[dict]:
        return [{"ef_search": ef} for ef in HNSW_EFS]

    def set_params(self, params: dict) -> None:
        ef = int(params["ef_search"])
        if ef == self._ef:
            return
        self._col.modify(configuration={"hnsw": {"ef_search": ef}})
        self._client.close()
        self._open()
        self._col = self._client.get_collection(self.COLLECTION)
        if self._col.configuration["hnsw"]["ef_search"] != ef:
            raise RuntimeError(f"Chroma: ef_search {ef} not stored")
        self._ef = ef
        self._col.query(query_embeddings=np.eye(1, self._d, dtype=np.float32), n_results=1,
                        include=[])  # load the index now, not in the first timed query

    def search_one(self, q: np.ndarray, k: int) -> np.ndarray:
        ids = self._col.query(query_embeddings=[q], n_results=k, include=[])["ids"][0]
        return np.array([int(i) for i in ids], dtype=np.int64)

    def search_batch(self, q: np.ndarray, k: int) -> np.ndarray:
        res = self._col.query(query_embeddings=q, n_results=k, include=[])["ids"]
        return pad_ids([[int(i) for i in r] for r in res], k)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = self._col = None
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
