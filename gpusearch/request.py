"""The typed search request: built and checked once at an edge, trusted by every tier below.

Every edge (``Collection.search``, the HTTP ingress, a Python handle, a batch join)
turns what its caller sent into a :class:`SearchRequest` with :func:`build_request`:

- ``queries``: a float32 ``(nq, dim)`` matrix (NumPy, or a torch tensor on the
  collection's device), unit length for ``cosine``, every value finite, no row too long;
- ``k``: an int in ``1..limit``, where the limit is :data:`MAX_TOP_K` or a server's
  lower ``max_top_k`` (one check, one message: :func:`check_top_k`), and at most
  :data:`MAX_TOP_K_WITH_PAYLOAD` when metadata or vectors come back with the hits;
- ``params``: typed search parameters of the index's family (:class:`SearchParams`,
  :class:`IVFParams`, :class:`HNSWParams`);
- ``filter``: compiled once (:class:`gpusearch.filters.CompiledFilter`); hashable, so
  a batcher groups alike requests by :attr:`SearchRequest.group`;
- ``sparse``: a checked :class:`~gpusearch.sparse.SparseVector` (a hybrid or sparse-only
  query: one query, metric ``ip``), or ``None``;
- ``keyword``: a BM25 query (:class:`~gpusearch.bm25.KeywordQuery`; one query, a collection
  with a ``bm25_field``) and ``fusion``: how its list and the dense one are fused, or ``None``
  for keywords alone (see :mod:`gpusearch.bm25`).

Below the edge, shards, backends and kernels do not check these again.

>>> import numpy as np
>>> r = build_request(np.array([[3.0, 4.0]]), 2, dim=2, metric="cosine")
>>> r.queries, r.k, r.params
(array([[0.6, 0.8]], dtype=float32), 2, SearchParams())
>>> check_top_k(10001)
Traceback (most recent call last):
...
gpusearch.errors.LimitExceededError: k must be between 1 and 10000, got 10001
>>> parse_params({"efSearch": 128}, "hnsw")
HNSWParams(ef_search=128)
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import numpy as np

from . import kernels
from .arrays import MAX_SQUARED_NORM, prepare_vectors
from .errors import InvalidArgumentError, InvalidTypeError, LimitExceededError
from .filters import CompiledFilter, compile_filter
from .bm25 import KeywordQuery, check_fusion, keyword_query
from .sparse import SparseVector, check_sparse

__all__ = [
    "MAX_TOP_K",
    "MAX_TOP_K_WITH_PAYLOAD",
    "check_top_k",
    "SearchParams",
    "IVFParams",
    "HNSWParams",
    "RefineParams",
    "IVFRefineParams",
    "HNSWRefineParams",
    "PARAMS_BY_FAMILY",
    "parse_params",
    "SearchRequest",
    "build_request",
]

#: The largest ``k`` anything in gpusearch answers: the engine, the kernels' callers, the joins and
#: a server (whose ``max_top_k`` may be lower, never higher). The exact search asks a shard for
#: ``k + 1`` rows to see a tie at the k-th place, so it stays below the kernels' own capacity.
MAX_TOP_K = 10_000
#: The largest ``k`` when the hits carry their metadata or vectors (Pinecone's two limits: top_k up
#: to 10,000, and up to 1,000 with include_metadata or include_values).
MAX_TOP_K_WITH_PAYLOAD = 1000
if MAX_TOP_K + 1 > kernels.MAX_K:  # pragma: no cover - a constant pair edited apart
    raise ImportError(f"MAX_TOP_K ({MAX_TOP_K}) + 1 must fit the kernels' MAX_K ({kernels.MAX_K})")


def check_top_k(k: Any, limit: int = MAX_TOP_K) -> int:
    """``k`` as an int after checking it is one in ``1..limit``: the one check of every edge.

    ``limit`` is :data:`MAX_TOP_K` unless a server configured a lower ``max_top_k``.
    """
    if type(k) is int and 1 <= k <= limit:  # the common case, without the ABC checks below
        return k
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral):
        raise InvalidTypeError(f"k must be an int between 1 and {limit}, got {type(k).__name__} ({k!r})", field="k")
    k = int(k)
    if not 1 <= k <= limit:
        raise LimitExceededError(f"k must be between 1 and {limit}, got {k}", limit_name="MAX_TOP_K"
                                 if limit == MAX_TOP_K else "max_top_k", limit=limit, value=k, field="k")
    return k


# -- typed search parameters -----------------------------------------------------------------
@dataclass(frozen=True)
class SearchParams:
    """Search parameters of an index that takes none: the exact ``Flat`` index and FAISS
    indexes other than IVF and HNSW. Subclasses hold those of one family each."""

    family: ClassVar[str] = "flat"
    #: HTTP (Pinecone-style) spelling -> field name
    names: ClassVar[dict[str, str]] = {}

    def as_dict(self) -> dict[str, int]:
        """The set fields in their HTTP spelling, e.g. ``{"nprobe": 32}``."""
        wire = {v: k for k, v in self.names.items()}
        return {wire[f]: v for f, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class IVFParams(SearchParams):
    """IVF indexes (``"IVF1024,Flat"``, ``"IVF4096,PQ64"``): lists probed per query.
    ``None``: the collection's default."""

    nprobe: int | None = None
    family: ClassVar[str] = "ivf"
    names: ClassVar[dict[str, str]] = {"nprobe": "nprobe"}


@dataclass(frozen=True)
class HNSWParams(SearchParams):
    """HNSW indexes (``"HNSW32"``): candidates kept during the search (never fewer than ``k``).
    ``None``: the collection's default."""

    ef_search: int | None = None
    family: ClassVar[str] = "hnsw"
    names: ClassVar[dict[str, str]] = {"efSearch": "ef_search", "ef_search": "ef_search"}


@dataclass(frozen=True)
class RefineParams(SearchParams):
    """An index with an exact refine stage over a compressed one (``"PQ64,RFlat"``): the compressed
    search keeps ``k * k_factor`` candidates, re-scored exactly. ``None``: the collection's default."""

    k_factor: int | None = None
    family: ClassVar[str] = "flat+refine"
    names: ClassVar[dict[str, str]] = {"kFactor": "k_factor", "k_factor": "k_factor"}


@dataclass(frozen=True)
class IVFRefineParams(SearchParams):
    """IVF over compressed codes with an exact refine stage (``"IVF1024,PQ192x4fs,RFlat"``): lists
    probed, and candidates re-scored exactly per wanted result."""

    nprobe: int | None = None
    k_factor: int | None = None
    family: ClassVar[str] = "ivf+refine"
    names: ClassVar[dict[str, str]] = {"nprobe": "nprobe", "kFactor": "k_factor", "k_factor": "k_factor"}


@dataclass(frozen=True)
class HNSWRefineParams(SearchParams):
    """HNSW over compressed codes with an exact refine stage (``"HNSW32,SQ8,RFlat"``)."""

    ef_search: int | None = None
    k_factor: int | None = None
    family: ClassVar[str] = "hnsw+refine"
    names: ClassVar[dict[str, str]] = {"efSearch": "ef_search", "ef_search": "ef_search", "kFactor": "k_factor",
                                       "k_factor": "k_factor"}


PARAMS_BY_FAMILY: dict[str, type[SearchParams]] = {
    c.family: c for c in (SearchParams, IVFParams, HNSWParams, RefineParams, IVFRefineParams, HNSWRefineParams)}
_NO_PARAMS = SearchParams()
_DEFAULTS = {family: cls() for family, cls in PARAMS_BY_FAMILY.items()}
_MAX_PARAM = 1 << 20
# Parsed dicts, by (family, items): a search loop sends the same few dicts again and again.
_PARSED: dict[tuple, SearchParams] = {}
_PARSED_MAX = 512


def parse_params(params: Any, family: str) -> SearchParams:
    """Typed parameters for an index of ``family`` from a dict (``{"nprobe": 32}``,
    ``{"efSearch": 128}``), an instance, or ``None`` (the index's defaults)."""
    if params is None:
        return _DEFAULTS[family]
    if type(params) is dict:
        try:
            key = (family, *params.items())
            return _PARSED[key]
        except (KeyError, TypeError):  # not seen yet, or unhashable values (refused below)
            pass
    cls = PARAMS_BY_FAMILY[family]
    if isinstance(params, SearchParams):
        if type(params) is not cls:
            raise InvalidTypeError(f"params must be {cls.__name__} for this {family} index, got "
                                   f"{type(params).__name__}", field="params")
        return params
    if not isinstance(params, Mapping):
        raise InvalidTypeError(f"params must be a dict such as {{'nprobe': 32}}, got {type(params).__name__}",
                               field="params")
    fields = {}
    for name, value in params.items():
        field = cls.names.get(name)
        if field is None:
            if not cls.names:
                raise InvalidArgumentError(f"this {family} index takes no search params, got {name!r}",
                                           field="params")
            takes = ", ".join(sorted(n for n in cls.names if "_" not in n))
            raise InvalidArgumentError(f"search param {name!r} does not apply to a {family} index; it takes: "
                                       f"{takes}", field="params")
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value <= _MAX_PARAM:
            raise InvalidArgumentError(f"search param {name!r} must be a positive int (at most {_MAX_PARAM}), "
                                       f"got {value!r}", field="params")
        fields[field] = int(value)
    typed = cls(**fields)
    if type(params) is dict:
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[(family, *params.items())] = typed
    return typed


# -- the request -------------------------------------------------------------------------------
@dataclass(eq=False)  # not slots: Ray's serializer reads an argument's __dict__
class SearchRequest:
    """One checked search. Build it with :func:`build_request`; tiers below an edge trust it, so
    treat it as read-only (:meth:`with_k` and ``dataclasses.replace`` make changed copies; it is
    not frozen because a frozen dataclass costs ~1.5 us more to build, on every query).

    ``queries`` is a float32 ``(nq, dim)`` NumPy array (or a torch tensor on the
    collection's device), normalised for cosine. ``group`` is equal for requests a
    batcher may answer with one stacked search.
    """

    queries: Any
    k: int
    filter: CompiledFilter | None = None
    params: SearchParams = _NO_PARAMS
    include_metadata: bool = False
    include_vectors: bool = False
    sparse: SparseVector | None = None
    keyword: KeywordQuery | None = None
    fusion: dict | None = None

    @property
    def nq(self) -> int:
        return int(self.queries.shape[0])

    @property
    def group(self) -> tuple:
        """Requests with equal groups can be stacked into one search (their ``k`` may differ)."""
        return (self.filter, self.params, self.include_metadata, self.include_vectors, self.sparse, self.keyword)

    def with_k(self, k: int) -> "SearchRequest":
        """The same request asking for ``k`` (an over-fetch for re-ranking)."""
        return SearchRequest(self.queries, k, self.filter, self.params, self.include_metadata, self.include_vectors,
                             self.sparse, self.keyword, self.fusion)


def build_request(queries, k: Any = 10, *, dim: int, metric: str, device: str = "cpu", family: str = "flat",
                  schema: Mapping[str, str] | None = None, filter: Any = None, params: Any = None,
                  include_metadata: bool = False, include_vectors: bool = False,
                  limit: int = MAX_TOP_K, sparse_vector: Any = None, keywords: Any = None, fusion: Any = None,
                  bm25_field: str | None = None) -> SearchRequest:
    """Check what a caller sent and build the request: the one validation of every edge.

    ``schema`` is the collection's metadata field types (for the filter); ``family``
    the index's (``"flat"``, ``"ivf"``, ``"hnsw"``); ``limit`` the largest ``k``.
    ``sparse_vector`` makes it a hybrid query (dense + sparse scores; one query, metric
    ``ip``); a sparse-only collection (``dim`` 0) takes it alone, with ``queries`` None.
    ``keywords`` (a text) is a BM25 query on a collection with a ``bm25_field``: alone with
    ``queries`` None, or fused with the dense query by ``fusion`` (``"rrf"`` by default).
    Raises :class:`~gpusearch.errors.InvalidArgumentError` (a ``ValueError``) or
    :class:`~gpusearch.errors.InvalidTypeError` (a ``TypeError``) naming the problem.
    """
    k = check_top_k(k, limit)
    if k > MAX_TOP_K_WITH_PAYLOAD and (include_metadata or include_vectors):
        raise LimitExceededError(
            f"k must be at most {MAX_TOP_K_WITH_PAYLOAD} when metadata or vectors are included "
            f"(includeMetadata, includeValues), got {k}", limit_name="MAX_TOP_K_WITH_PAYLOAD",
            limit=MAX_TOP_K_WITH_PAYLOAD, value=k, field="k")
    typed = parse_params(params, family)
    if filter is None or isinstance(filter, CompiledFilter):
        compiled = filter
    else:
        compiled = compile_filter(filter, schema or {})
    if keywords is not None:
        if not bm25_field:
            raise InvalidArgumentError("this collection keeps no keyword (BM25) index: create it with bm25_field "
                                       "(the metadata field whose text is indexed) to search by keywords",
                                       field="keywords")
        if sparse_vector is not None:
            raise InvalidArgumentError("a keyword query takes no sparse_vector (the collection makes its sparse "
                                       "vectors from text)", field="sparse_vector")
        kw = keyword_query(keywords, "keywords")
        mode = check_fusion(fusion) if queries is not None else None
        if queries is None:
            q = np.zeros((1, dim), np.float32)
        else:
            q = prepare_vectors(queries, name="queries", dim=dim, metric=metric, device=device, zero_rows=True)
            if q.shape[0] != 1:
                raise InvalidArgumentError(f"a keyword query takes one dense query vector, got {q.shape[0]}",
                                           field="vector")
        return SearchRequest(q, k, compiled, typed, bool(include_metadata), bool(include_vectors), None, kw, mode)
    if fusion is not None:
        raise InvalidArgumentError("fusion applies to a query with keywords (a dense list and a keyword list)",
                                   field="fusion")
    if sparse_vector is not None and bm25_field:
        raise InvalidArgumentError(f"this collection makes its sparse vectors from the text in {bm25_field!r} "
                                   f"(BM25): search it with keywords, not sparse_vector", field="sparse_vector")
    sparse = None if sparse_vector is None else check_sparse(sparse_vector, "sparse_vector")
    if sparse is not None and metric != "ip":
        raise InvalidArgumentError(f"sparse_vector needs metric 'ip' (Pinecone's dotproduct); this collection's "
                                   f"metric is {metric!r}", field="sparse_vector")
    if dim == 0:  # a sparse-only collection
        if queries is not None:
            raise InvalidArgumentError("this collection holds sparse vectors only: query with sparse_vector, "
                                       "not a dense vector", field="vector")
        if sparse is None or not len(sparse):
            raise InvalidArgumentError("this collection holds sparse vectors only: sparse_vector with at least "
                                       "one value is required", field="sparse_vector")
        return SearchRequest(np.zeros((1, 0), np.float32), k, compiled, typed, bool(include_metadata),
                             bool(include_vectors), sparse)
    if queries is None:
        raise InvalidArgumentError(f"a query vector of {dim} values is required", field="vector")
    q = _one_query(queries, dim, metric) if device == "cpu" else None
    if q is None:
        q = prepare_vectors(queries, name="queries", dim=dim, metric=metric, device=device, zero_rows=True)
    if sparse is not None and not len(sparse):
        sparse = None  # no sparse part: a dense query
    if sparse is not None and q.shape[0] != 1:
        raise InvalidArgumentError(f"a query with sparse_vector takes one dense query vector, got {q.shape[0]}",
                                   field="vector")
    return SearchRequest(q, k, compiled, typed, bool(include_metadata), bool(include_vectors), sparse)


def _one_query(x, dim: int, metric: str):
    """The common case of a search, one float32 NumPy query, checked and normalised with one BLAS dot;
    ``None`` for anything else (or anything wrong: the general path finds it and says what)."""
    if type(x) is not np.ndarray or x.dtype != np.float32 or x.size != dim or not x.flags.c_contiguous:
        return None
    if x.ndim != 1 and x.shape != (1, dim):
        return None
    s = float(np.dot(x.reshape(-1), x.reshape(-1)))  # inf or nan when a value is: refused below
    if not s <= MAX_SQUARED_NORM or metric == "cosine" and not s > 0:
        return None
    q = x.reshape(1, dim)
    return q * np.float32(1.0 / math.sqrt(s)) if metric == "cosine" else q
