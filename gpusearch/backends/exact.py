"""Exact search: distances + top-k on our own kernels (GPU), their NumPy path (CPU, one query or a
few), or torch's GEMM and top-k with an exactness check (CPU batches, see ._cpu_batch)."""
from __future__ import annotations

import numpy as np

from .. import kernels
from ..hits import Hits
from . import _cpu_batch

__all__ = ["ExactBackend", "kernel_metric", "exact_search"]


def kernel_metric(metric: str) -> str:
    """Cosine is inner product over unit vectors; the kernels know ``ip`` and ``l2``."""
    return "l2" if metric == "l2" else "ip"


def exact_search(store, queries, k: int, metric: str, allow: np.ndarray | None, *, start: int = 0):
    """Exact top-k over rows ``start..len(store)`` of ``store``; row numbers are absolute."""
    base = store.search_view()[start:]
    if base.shape[0] == 0:
        nq = queries.shape[0]
        sentinel = np.inf if metric == "l2" else -np.inf
        return np.full((nq, k), sentinel, np.float32), np.full((nq, k), -1, np.int64)
    mask = None if allow is None else allow[start:]
    sq = store.search_sqnorms()[start:] if metric == "l2" else None
    if not isinstance(base, np.ndarray):
        import torch

        if mask is not None:
            mask = torch.from_numpy(np.ascontiguousarray(mask)).to(base.device)
        if queries.dtype != base.dtype:  # a float16 device copy takes float16 queries (fp32 accumulate)
            queries = queries.to(base.dtype)
    if isinstance(base, np.ndarray) and queries.shape[0] >= _cpu_batch.MIN_BATCH and _cpu_batch.available():
        D, I, redo = _cpu_batch.exact_batch(queries, base, k, l2=metric == "l2", mask=mask, base_sqnorms=sq)
        if len(redo):  # a tie at the k-th place torch may have cut anywhere: the kernels' exact rule decides
            D[redo], I[redo] = kernels.fused_search(queries[redo], base, k, metric=kernel_metric(metric),
                                                    mask=mask, base_sqnorms=sq)
    else:
        D, I = kernels.fused_search(queries, base, k, metric=kernel_metric(metric), mask=mask, base_sqnorms=sq)
        D, I = _host(D), _host(I)
    if start:
        I = np.where(I >= 0, I + start, -1)
    return D, I


def _host(x) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "get"):  # CuPy
        return x.get()
    return x.detach().cpu().numpy()


class ExactBackend:
    """Brute force over every row: exact results, nothing to train or save."""

    kind = "exact"
    family = "flat"
    needs_training = False

    def __init__(self, *, dim: int, metric: str, device: str):
        self.dim, self.metric, self.device = dim, metric, device

    @property
    def is_trained(self) -> bool:
        return True

    def train(self, sample: np.ndarray) -> None:
        return None

    def add(self, store, rows: range) -> None:
        return None

    def rebuild(self, store) -> None:
        return None

    def search(self, store, queries, k: int, allow: np.ndarray | None, params=None) -> Hits:
        """Exact top-k rows (the request's params were checked at its edge: Flat takes none)."""
        return Hits(*exact_search(store, queries, k, self.metric, allow))

    def to_bytes(self) -> bytes | None:
        return None

    def load_bytes(self, data: bytes, n_indexed: int) -> None:
        return None

    @property
    def n_indexed(self) -> int:
        return 0

    def memory_bytes(self) -> int:
        return 0
