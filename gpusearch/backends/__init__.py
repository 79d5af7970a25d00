"""Index backends: search over one shard's vector block.

One protocol for all: ``add(store, rows)``, ``search(store, queries, k, allow, params)``
returning ``(scores, rows)`` best first with ``-1`` padding, ``rebuild(store)``,
``train(sample)``, ``to_bytes()`` / ``from_bytes()``, ``memory_bytes()``.
``"Flat"`` is our exact path; any other FAISS factory string is a FAISS index.
"""
from __future__ import annotations

import functools

from ..errors import InvalidTypeError
from ._cpu_batch import import_on_first_batch, warm_up
from .exact import ExactBackend
from .faiss_backend import FaissBackend, split_refine
from .options import DEFAULT_EF_CONSTRUCTION, check_index_options

__all__ = ["ExactBackend", "FaissBackend", "make_backend", "check_index_spec", "check_index_options",
           "index_family", "DEFAULT_EF_CONSTRUCTION", "import_on_first_batch", "warm_up"]


def check_index_spec(spec: str, dim: int, metric: str) -> str:
    """Validate an index spec by building it once (FAISS parses factory strings)."""
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidTypeError(f"index must be a FAISS factory string such as 'Flat', 'IVF1024,Flat' or 'HNSW32', got {spec!r}")
    spec = spec.strip()
    if spec == "Flat":
        return spec
    FaissBackend.build_empty(spec, dim, metric)
    return spec


def make_backend(spec: str, *, dim: int, metric: str, device: str, options: dict | None = None):
    """The backend for an index spec; ``options`` are its checked index options (see .options)."""
    if spec == "Flat":
        return ExactBackend(dim=dim, metric=metric, device=device)
    return FaissBackend(spec, dim=dim, metric=metric, device=device, options=options)


@functools.lru_cache(maxsize=256)
def index_family(spec: str, dim: int, metric: str) -> str:
    """Which typed search parameters an index spec takes: "flat" (none), "ivf" or "hnsw"."""
    if spec == "Flat":
        return "flat"
    refine = split_refine(spec)[1]
    return FaissBackend.family_of(FaissBackend.build_empty(spec, dim, metric)) + ("+refine" if refine else "")
