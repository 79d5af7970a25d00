"""Any FAISS factory string as a shard's index (``"IVF1024,Flat"``, ``"IVF4096,PQ64"``, ``"HNSW32"``).

Rows are added to FAISS in row order, so FAISS ids are row numbers. An index
that needs training buffers rows until it has enough of them (or until
``train(sample)``); rows not yet in the index are searched exactly, so a
query always sees every record. Deleted and filtered-out rows are excluded by
an ``IDSelectorBitmap``; when a filter leaves few rows, or FAISS returns fewer
than ``k`` allowed rows that exist, the shard answers by exact search over the
allowed rows instead, so a filtered query never silently loses matches.
"""
from __future__ import annotations

import logging
import re

import numpy as np

from .. import kernels
from ..devices import faiss_gpu_count, is_cuda
from ..progress import progress
from ..errors import InvalidArgumentError
from ..hits import Hits
from .exact import exact_search
from .options import check_index_options

__all__ = ["FaissBackend", "train_size_for", "split_refine", "set_threads"]

log = logging.getLogger(__name__)

# Below this many allowed rows, exact search over just those rows is both
# exact and cheaper than asking an approximate index to find them.
EXACT_FALLBACK_ROWS = 4096
_ADD_CHUNK = 65536


def _faiss():
    import faiss

    return faiss


_NO_ROW = np.iinfo(np.int64).max  # sorts after every row

# How many OpenMP threads FAISS's batch searches, training and adds use: None leaves OpenMP's own choice.
# OpenMP keeps this setting per thread: faiss.omp_set_num_threads in one thread does not reach a search
# run from another, such as asyncio.to_thread's pool where a served shard replica searches, which then
# ran on the one thread Ray's OMP_NUM_THREADS=1 gives a fractional-CPU actor. So the choice is kept
# here and applied in whichever thread does the work.
_THREADS: list = [None]


def set_threads(n: int | None) -> None:
    """Make FAISS's batch work in every thread of this process use ``n`` threads (None: OpenMP's default)."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"threads must be a positive int or None, got {n!r}")
    _THREADS[0] = n


def _use_threads(faiss) -> None:
    """Apply :func:`set_threads`'s choice to the calling thread (a cheap check when it already holds)."""
    want = _THREADS[0]
    if want is not None and faiss.omp_get_max_threads() != want:
        faiss.omp_set_num_threads(want)


def split_refine(spec: str) -> tuple[str, bool]:
    """``("IVF1024,PQ192x4fs", True)`` for ``"IVF1024,PQ192x4fs,RFlat"``: gpusearch runs the exact refine
    stage itself, over the vectors the shard stores, so FAISS builds only the compressed index."""
    if spec.endswith(",RFlat"):
        return spec[: -len(",RFlat")], True
    return spec, False


def train_size_for(spec: str) -> int:
    """How many vectors an index wants before training: FAISS's k-means asks for 39 per centroid."""
    need = 0
    m = re.search(r"IVF(\d+)", spec)
    if m:
        need = max(need, 39 * int(m.group(1)))
    m = re.search(r"PQ(\d+)(?:x(\d+))?", spec)
    if m:
        nbits = int(m.group(2) or 8)
        need = max(need, 39 * (1 << nbits))
    if re.search(r"(OPQ|PCA|SQ|RQ|LSQ)", spec):
        need = max(need, 1000)
    return need


class FaissBackend:
    kind = "faiss"

    def __init__(self, spec: str, *, dim: int, metric: str, device: str, options: dict | None = None):
        self.spec, self.dim, self.metric, self.device = spec, dim, metric, device
        self.base_spec, self.refine = split_refine(spec)
        self.index = self.build_empty(spec, dim, metric, options)
        self.family = self.family_of(self.index) + ("+refine" if self.refine else "")
        self.options = check_index_options(spec, dim, metric, options, family=self.family)
        # An HNSW over flat float32 storage keeps every row in row order: the shard's VectorStore then
        # holds no copy of its own and views these rows instead (one copy of the vectors in memory).
        self.holds_rows = (device == "cpu" and not self.refine
                           and isinstance(_faiss().downcast_index(self.index), _faiss().IndexHNSWFlat))
        self.train_size = train_size_for(self.base_spec) if not self.index.is_trained else 0
        self.on_gpu = False
        self._params_cache: dict = {}

    @staticmethod
    def build_empty(spec: str, dim: int, metric: str, options: dict | None = None):
        """An empty FAISS index for ``spec`` with the collection's ``options`` (defaults when None)."""
        faiss = _faiss()
        fm = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        base, _ = split_refine(spec)
        try:
            index = faiss.index_factory(dim, base, fm)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[-1] if str(e).strip() else ""
            raise InvalidArgumentError(
                f"index must be 'Flat' or a FAISS factory string such as 'IVF1024,Flat', 'IVF4096,PQ64' "
                f"or 'HNSW32' for dim {dim}; FAISS could not build {spec!r}: {first}"
            ) from None
        inner = faiss.downcast_index(index)
        if isinstance(inner, faiss.IndexPreTransform):
            inner = faiss.downcast_index(inner.index)
        # Polysemous training (Hamming-ordered PQ codes) costs most of PQ training time
        # and serves only polysemous search, which we do not use.
        if hasattr(inner, "do_polysemous_training"):
            inner.do_polysemous_training = False
        FaissBackend._apply_options(index, spec, dim, metric, options)
        return index

    @staticmethod
    def _apply_options(index, spec: str, dim: int, metric: str, options: dict | None) -> None:
        """Set the build and default-search settings (gpusearch.backends.options) on ``index``: FAISS's
        own defaults (efConstruction 40, efSearch 16, nprobe 1) trade away most of the recall."""
        faiss = _faiss()
        inner = faiss.downcast_index(index)
        if isinstance(inner, faiss.IndexPreTransform):
            inner = faiss.downcast_index(inner.index)
        refine = split_refine(spec)[1]
        opts = check_index_options(spec, dim, metric, options,
                                   family=FaissBackend.family_of(index) + ("+refine" if refine else ""))
        if isinstance(inner, faiss.IndexIVF):
            inner.nprobe = opts["nprobe"]
        if isinstance(inner, faiss.IndexHNSW):
            inner.hnsw.efConstruction = opts["efConstruction"]
            inner.hnsw.efSearch = opts["efSearch"]

    # -- state ---------------------------------------------------------------
    @property
    def needs_training(self) -> bool:
        return not self.index.is_trained

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    @property
    def n_indexed(self) -> int:
        return int(self.index.ntotal)

    def memory_bytes(self) -> int:
        """About how many bytes the index holds (codes, plus the graph of an HNSW), without copying it."""
        if self.on_gpu:
            return 0
        n = int(self.index.ntotal)
        try:
            code = int(self.index.sa_code_size())
        except RuntimeError:  # not every index has standalone codes
            code = self.dim * 4
        hnsw = self._hnsw()
        links = int(hnsw.hnsw.neighbors.size()) * 4 if hnsw is not None else 0
        return n * code + links

    # -- rows held in the index (RowHolder, see gpusearch.vectors) ---------------
    def append_rows(self, x: np.ndarray) -> None:
        """Insert rows after those held (an HNSW insertion), in chunks with a progress bar."""
        n = x.shape[0]
        _use_threads(_faiss())
        with progress(n, f"adding to {self.spec}", min_total=_ADD_CHUNK) as bar:
            for lo in range(0, n, _ADD_CHUNK):
                hi = min(lo + _ADD_CHUNK, n)
                self.index.add(x[lo:hi])
                bar.update(hi - lo)

    def rows_view(self) -> np.ndarray:
        """The held rows, a view of the flat storage's codes (valid until the index changes)."""
        faiss = _faiss()
        storage = faiss.downcast_index(faiss.downcast_index(self.index).storage)
        n = int(storage.ntotal)
        if n == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        return faiss.rev_swig_ptr(storage.codes.data(), n * self.dim * 4).view(np.float32).reshape(n, self.dim)

    def clear_rows(self) -> None:
        """A new, empty index (an HNSW graph cannot be emptied in place)."""
        self.index = self.build_empty(self.spec, self.dim, self.metric, self.options)

    # -- building ------------------------------------------------------------
    def train(self, sample: np.ndarray) -> None:
        """Train on ``sample`` (k-means for IVF, codebooks for PQ); a no-op when already trained."""
        if self.index.is_trained:
            return
        sample = np.ascontiguousarray(sample, dtype=np.float32)
        _use_threads(_faiss())
        with progress(1, f"training {self.spec}", unit="index") as bar:
            self.index.train(sample)
            bar.update(1)
        self._maybe_to_gpu()

    def add(self, store, rows: range) -> None:
        """Index every row of ``store`` not yet in FAISS, training first once enough rows exist."""
        n = len(store)
        if not self.index.is_trained:
            if n < max(self.train_size, 1):
                return  # still buffering: these rows are searched exactly
            self.train(store.host[:n])
        start = self.n_indexed
        if start >= n:
            return
        _use_threads(_faiss())
        with progress(n - start, f"adding to {self.spec}", min_total=_ADD_CHUNK) as bar:
            for lo in range(start, n, _ADD_CHUNK):
                hi = min(lo + _ADD_CHUNK, n)
                self.index.add(np.ascontiguousarray(store.host[lo:hi]))
                bar.update(hi - lo)

    def rebuild(self, store) -> None:
        """Re-add every row after compaction renumbered them, keeping the trained quantiser and codebooks.

        A no-op when the store's rows live in this index: ``store.replace`` rebuilt it already."""
        if getattr(store, "external", False):
            return
        faiss = _faiss()
        if self.on_gpu:
            self.index = faiss.index_gpu_to_cpu(self.index)
            self.on_gpu = False
        was_trained = self.index.is_trained
        if was_trained and self._hnsw() is None:
            self.index.reset()
        else:
            # Nothing trained to keep, or an HNSW graph, which cannot be emptied in place: start
            # afresh, and retrain now on the rows kept if the old index had been trained.
            self.index = self.build_empty(self.spec, self.dim, self.metric, self.options)
            if was_trained and not self.index.is_trained and len(store):
                self.train(store.host)
        self.add(store, range(0, len(store)))
        self._maybe_to_gpu()

    def _maybe_to_gpu(self) -> None:
        if self.on_gpu or not is_cuda(self.device) or faiss_gpu_count() == 0:
            return
        faiss = _faiss()
        try:
            res = faiss.StandardGpuResources()
            self.index = faiss.index_cpu_to_gpu(res, int(self.device.split(":")[1]), self.index)
            self._gpu_res = res
            self.on_gpu = True
        except Exception as e:  # not every index type has a GPU version (HNSW does not)
            log.info("FAISS index %s stays on the CPU: %s", self.spec, e)

    # -- persistence ---------------------------------------------------------
    def to_bytes(self) -> bytes:
        faiss = _faiss()
        index = faiss.index_gpu_to_cpu(self.index) if self.on_gpu else self.index
        return faiss.serialize_index(index).tobytes()

    def load_bytes(self, data: bytes, n_indexed: int) -> None:
        self.adopt(self.decode(data, n_indexed))

    def decode(self, data: bytes, n_indexed: int):
        """A saved index (checked against ``n_indexed`` and the dim), with the collection's settings;
        not yet this backend's (see :meth:`adopt`)."""
        faiss = _faiss()
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        if index.ntotal != n_indexed or index.d != self.dim:
            raise ValueError(
                f"saved FAISS index holds {index.ntotal} vectors of dim {index.d}, "
                f"the manifest expects {n_indexed} of dim {self.dim}"
            )
        self._apply_options(index, self.spec, self.dim, self.metric, self.options)
        return index

    def adopt(self, index) -> None:
        """Search ``index`` (from :meth:`decode`) from now on, in place of the one held."""
        self.index = index
        self.on_gpu = False
        self._maybe_to_gpu()

    # -- search --------------------------------------------------------------
    @staticmethod
    def family_of(index) -> str:
        """The search-parameter family of a FAISS index: "ivf", "hnsw", or "flat" (takes none)."""
        faiss = _faiss()
        inner = faiss.downcast_index(index)
        if isinstance(inner, faiss.IndexPreTransform):
            inner = faiss.downcast_index(inner.index)
        if isinstance(inner, faiss.IndexIVF):
            return "ivf"
        if isinstance(inner, faiss.IndexHNSW):
            return "hnsw"
        return "flat"

    def _hnsw(self):
        faiss = _faiss()
        idx = faiss.downcast_index(self.index)
        if isinstance(idx, faiss.IndexPreTransform):
            idx = faiss.downcast_index(idx.index)
        return idx if isinstance(idx, faiss.IndexHNSW) else None

    def _search_parameters(self, sel, params, k: int = 1):
        """FAISS search parameters for the typed ``params``; an HNSW search looks at no fewer than ``k``
        candidates (FAISS does not raise efSearch to k itself: with efSearch < k the k-th answers are poor)."""
        faiss = _faiss()
        idx = faiss.downcast_index(self.index)
        wrap = None
        if isinstance(idx, faiss.IndexPreTransform):
            wrap, idx = idx, faiss.downcast_index(idx.index)
        if isinstance(idx, faiss.IndexIVF):
            nprobe = getattr(params, "nprobe", None) or idx.nprobe
            p = faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)
        elif isinstance(idx, faiss.IndexHNSW):
            ef = getattr(params, "ef_search", None) or idx.hnsw.efSearch
            p = faiss.SearchParametersHNSW(sel=sel, efSearch=max(k, ef))
        else:
            p = faiss.SearchParameters(sel=sel)
        if wrap is not None:
            return faiss.SearchParametersPreTransform(index_params=p)
        return p

    def search(self, store, queries, k: int, allow: np.ndarray | None, params=None) -> Hits:
        """Top-k rows; ``params`` are the request's typed parameters (checked at its edge)."""
        q = queries if isinstance(queries, np.ndarray) else queries.detach().cpu().numpy()
        n_idx = self.n_indexed
        allowed_idx = n_idx if allow is None else int(np.count_nonzero(allow[:n_idx]))
        if n_idx == 0 or allowed_idx <= EXACT_FALLBACK_ROWS and allow is not None:
            return Hits(*exact_search(store, queries, k, self.metric, allow))
        if self.refine:
            # The compressed index proposes k * k_factor candidates; their stored vectors decide.
            kf = getattr(params, "k_factor", None) or self.options["kFactor"]
            D, I = self._faiss_search(q, min(k * kf, max(n_idx, k)), allow, params)
            D, I = self._rescore(store, q, I, k)
        else:
            D, I = self._faiss_search(q, k, allow, params)
        # FAISS may find fewer than k allowed rows (an IVF probe that misses them, a
        # sparse HNSW neighbourhood); answer those queries exactly instead. FAISS puts
        # its -1 padding last, so a short row has -1 at place min(k, allowed).
        col = I[:, min(k, allowed_idx) - 1]
        if (col[0] < 0) if col.shape[0] == 1 else (col < 0).any():
            rows = np.flatnonzero(col < 0)
            D[rows], I[rows] = exact_search(store, queries[rows], k, self.metric, self._cut(allow, n_idx, len(store)))
        if n_idx < len(store):  # rows waiting for training: exact over them, then merge
            Dp, Ip = exact_search(store, queries, k, self.metric, allow, start=n_idx)
            D, I = kernels.merge_topk([D, Dp], [I, Ip], k, largest=self.metric != "l2")
        return Hits(D, I)

    def _rescore(self, store, q: np.ndarray, I: np.ndarray, k: int):
        """The ``k`` best of candidate rows ``I`` (-1: none) by their exact score, ties to the smaller row.

        FAISS's by-index kernels score each candidate against the stored row and keep the k best in
        a heap, in C. Candidates go in by ascending row: a later candidate replaces the heap's worst
        only when strictly better, and the heap orders equal scores by row, so ties go to the
        smaller row. (The Python version of this, a gather, a GEMV and a lexsort, cost more than
        the fast-scan search itself: 90 against 95 µs a query.)
        """
        faiss = _faiss()
        nq, c = I.shape
        # FAISS stops reading a query's candidates at the first one outside the table: send the
        # -1 padding there, after the sorted rows.
        cand = I.copy()
        cand[cand < 0] = _NO_ROW
        cand.sort(axis=1)
        D = np.empty((nq, k), dtype=np.float32)
        out = np.empty((nq, k), dtype=np.int64)
        q = np.ascontiguousarray(q, dtype=np.float32)
        y = store.host  # a prefix of the store's own C-ordered rows
        kernel = faiss.knn_L2sqr_by_idx if self.metric == "l2" else faiss.knn_inner_products_by_idx
        if nq > 1:
            _use_threads(faiss)
        # The row stride of the candidates is given: the default (-1) is not read as "nsubset" by
        # every FAISS build, and a query past the first then reads candidates from outside its row.
        kernel(faiss.swig_ptr(q), faiss.swig_ptr(y), faiss.swig_ptr(cand), self.dim, nq, y.shape[0], c, k,
               faiss.swig_ptr(D), faiss.swig_ptr(out), c)
        # Heap slots no candidate filled come last, with FAISS's -1 and +-FLT_MAX; the engine's
        # empty slot is -1 with an infinite score.
        if (out[0, -1] < 0) if nq == 1 else (out[:, -1] < 0).any():
            D[out < 0] = np.inf if self.metric == "l2" else -np.inf
        return D, out

    @staticmethod
    def _cut(allow, n_idx, n):
        """An allow mask over the indexed rows only (the pending ones are searched separately)."""
        cut = np.zeros(n, dtype=bool)
        cut[:n_idx] = True if allow is None else allow[:n_idx]
        return cut

    def _faiss_search(self, q: np.ndarray, k: int, allow, params: dict):
        faiss = _faiss()
        n_idx = self.n_indexed
        if self.on_gpu:
            # FAISS GPU indexes take no IDSelector: over-fetch and drop what is not allowed.
            kk = min(max(k * 4, k + 64), 2048, n_idx)
            D, I = self.index.search(q, kk)
            if allow is not None:
                bad = (I < 0) | ~allow[np.clip(I, 0, None)]
                D = np.where(bad, np.inf if self.metric == "l2" else -np.inf, D)
                I = np.where(bad, -1, I)
                order = np.argsort(bad, axis=1, kind="stable")
                D, I = np.take_along_axis(D, order, 1), np.take_along_axis(I, order, 1)
            D, I = D[:, :k], I[:, :k]
            if I.shape[1] < k:
                pad = k - I.shape[1]
                D = np.pad(D, ((0, 0), (0, pad)), constant_values=np.inf if self.metric == "l2" else -np.inf)
                I = np.pad(I, ((0, 0), (0, pad)), constant_values=-1)
            return D.astype(np.float32), I.astype(np.int64)
        sel = None
        if allow is not None:
            bits = np.packbits(np.ascontiguousarray(allow[:n_idx]), bitorder="little")
            sel = faiss.IDSelectorBitmap(bits)
            p = self._search_parameters(sel, params, k)
        else:
            # Without a selector the parameters depend only on params and k: build each set once.
            # (Read into a local first: another thread may swap the cache for other params meanwhile.)
            key, cache = (self.index, params, k), self._params_cache
            if cache.get("key") != key:
                cache = self._params_cache = {"key": key, "p": self._search_parameters(None, params, k)}
            p = cache["p"]
        q = np.ascontiguousarray(q, dtype=np.float32)  # the same array when it already is (it should be)
        nq = q.shape[0]
        D = np.empty((nq, k), dtype=np.float32)
        I = np.empty((nq, k), dtype=np.int64)
        # FAISS's C entry point: its Python wrapper's checks and copies were done at the request's edge.
        if nq == 1:
            # One query has nothing to share among threads, but FAISS still forks its OpenMP team, whose
            # spinning workers cost more than the search on a busy machine: run it on this thread alone.
            threads = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)
            try:
                self.index.search_c(1, faiss.swig_ptr(q), k, faiss.swig_ptr(D), faiss.swig_ptr(I), p)
            finally:
                faiss.omp_set_num_threads(threads)
        else:
            _use_threads(faiss)
            self.index.search_c(nq, faiss.swig_ptr(q), k, faiss.swig_ptr(D), faiss.swig_ptr(I), p)
        if (I[0, -1] < 0 if nq == 1 else I[:, -1].min() < 0):  # padding only ever sits at a row's end
            D[I < 0] = np.inf if self.metric == "l2" else -np.inf
        return D, I

