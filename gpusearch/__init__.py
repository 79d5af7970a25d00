"""gpusearch: GPU-accelerated similarity search.

>>> import gpusearch as gs
>>> sorted(gs.METRICS)
['cosine', 'ip', 'l2']

Start with :class:`Collection` (``Collection.create`` / ``Collection.open``).
"""
from __future__ import annotations

from . import errors
from .collection import FORMAT_VERSION, METRICS, Collection, shard_of
from .request import MAX_TOP_K, HNSWParams, IVFParams, SearchParams, SearchRequest
from .results import FetchResult, QueryResult, SearchResult, WriteResult
from .sparse import SparseVector
from .backup import list_backups, restore

__version__ = "0.1.0"

__all__ = [
    "Collection",
    "SearchResult",
    "QueryResult",
    "FetchResult",
    "WriteResult",
    "METRICS",
    "MAX_TOP_K",
    "SearchRequest",
    "SearchParams",
    "IVFParams",
    "HNSWParams",
    "SparseVector",
    "restore",
    "list_backups",
    "errors",
    "FORMAT_VERSION",
    "shard_of",
    "__version__",
]
