"""A shard's vector block: a growable host array, mirrored on the device when the shard runs on a GPU.

One copy of the vectors: when the shard's index itself keeps every row flat and in row
order (FAISS ``IndexHNSWFlat`` on the CPU), the store holds no array of its own and
``host`` is a view of the index's storage; the rows go in through the index
(``rows.append_rows``), which is the insertion the index needs anyway.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from .devices import is_cuda

__all__ = ["VectorStore", "RowHolder"]


class RowHolder(Protocol):
    """An index that keeps the rows itself, flat and in row order (see :class:`VectorStore`)."""

    def append_rows(self, x: np.ndarray) -> None:
        """Add rows (float32, C-contiguous) after those held."""

    def rows_view(self) -> np.ndarray:
        """Every held row as a float32 (n, dim) view of the index's own memory; valid until the next change."""

    def clear_rows(self) -> None:
        """Drop every row (a new, empty index)."""


class VectorStore:
    """Rows are only appended (deletes are tombstones kept by the shard) until :meth:`replace`.

    ``host`` is the float32 source of truth: an array of the store's own, or, with
    ``rows`` (a :class:`RowHolder`), a view of the index's memory that is only valid
    while the shard's lock is held (readers copy what they keep). On a CUDA device a
    mirror in the storage dtype (float32 or float16) lives in device memory, so
    searches never copy the base vectors.
    """

    def __init__(self, dim: int, *, device: str = "cpu", dtype: str = "float32", capacity: int = 1024,
                 rows: RowHolder | None = None):
        self.dim = dim
        self.device = device
        self.dtype = dtype
        self._n = 0
        self._rows = rows
        self._view = np.empty((0, dim), dtype=np.float32)  # the holder's rows (external mode)
        self._host = np.empty((0 if rows is not None else max(capacity, 1), dim), dtype=np.float32)
        self._dev = self._dev_sq = None
        self._sqnorms = np.empty(max(capacity, 1), dtype=np.float32)
        if is_cuda(device):
            self._dev, self._dev_sq = self._device_buffers(self._sqnorms.shape[0])

    def __len__(self) -> int:
        return self._n

    @property
    def external(self) -> bool:
        """Whether the rows live in the index (no copy of the store's own)."""
        return self._rows is not None

    @property
    def host(self) -> np.ndarray:
        if self._rows is not None:
            return self._view[: self._n]
        return self._host[: self._n]

    @property
    def sqnorms(self) -> np.ndarray:
        """Squared L2 norm of every row (for l2 search), on the host."""
        return self._sqnorms[: self._n]

    def search_sqnorms(self):
        """Squared norms where the search runs (host NumPy, or a float32 device tensor), so an
        l2 search does not read the base vectors twice."""
        return self.sqnorms if self._dev_sq is None else self._dev_sq[: self._n]

    def search_view(self):
        """The rows as the search kernels want them: host NumPy on CPU, a device tensor on CUDA."""
        if self._dev is None:
            return self.host
        return self._dev[: self._n]

    def _device_buffers(self, rows: int):
        import torch

        dtype = torch.float16 if self.dtype == "float16" else torch.float32
        return (torch.empty((rows, self.dim), dtype=dtype, device=self.device),
                torch.empty(rows, dtype=torch.float32, device=self.device))

    def _grow(self, need: int) -> None:
        cap = self._sqnorms.shape[0]
        if need <= cap:
            return
        new_cap = max(need, cap * 2)
        if self._rows is None:
            host = np.empty((new_cap, self.dim), dtype=np.float32)
            host[: self._n] = self._host[: self._n]
            self._host = host
        sq = np.empty(new_cap, dtype=np.float32)
        sq[: self._n] = self._sqnorms[: self._n]
        self._sqnorms = sq
        if self._dev is not None:
            dev, dev_sq = self._device_buffers(new_cap)
            dev[: self._n] = self._dev[: self._n]
            dev_sq[: self._n] = self._dev_sq[: self._n]
            self._dev, self._dev_sq = dev, dev_sq

    def append(self, x: np.ndarray) -> range:
        """Append float32 rows; returns their row numbers."""
        n = x.shape[0]
        self._grow(self._n + n)
        start = self._n
        if self._rows is not None:
            self._rows.append_rows(np.ascontiguousarray(x, dtype=np.float32))
            self._view = self._rows.rows_view()
        else:
            self._host[start : start + n] = x
        self._sqnorms[start : start + n] = np.einsum("ij,ij->i", x, x)
        if self._dev is not None:
            import torch

            self._dev[start : start + n] = torch.from_numpy(np.ascontiguousarray(x)).to(self.device, dtype=self._dev.dtype)
            self._dev_sq[start : start + n] = torch.from_numpy(self._sqnorms[start : start + n]).to(self.device)
        self._n += n
        return range(start, start + n)

    def replace(self, blocks) -> None:
        """Drop every row and hold ``blocks`` instead: one array, or a list of them copied in
        order (a snapshot's segments), so loading needs no concatenated temporary copy."""
        blocks = [blocks] if isinstance(blocks, np.ndarray) else list(blocks)
        n = sum(b.shape[0] for b in blocks)
        self._n = 0
        if self._rows is not None:
            self._rows.clear_rows()
            self._view = self._rows.rows_view()
        else:
            self._host = np.empty((max(int(n * 1.25), 1024), self.dim), dtype=np.float32)
        self._sqnorms = np.empty(max(int(n * 1.25), 1024), dtype=np.float32)
        if self._dev is not None:
            self._dev, self._dev_sq = self._device_buffers(self._sqnorms.shape[0])
        for b in blocks:
            self.append(b)

    def adopt(self) -> None:
        """Take every row the holder has now as this store's rows (after the index was loaded whole)."""
        if self._rows is None:
            raise ValueError("adopt() is for a store whose rows live in its index")
        self._view = self._rows.rows_view()
        n = self._view.shape[0]
        self._n = 0
        self._sqnorms = np.empty(max(int(n * 1.25), 1024), dtype=np.float32)
        self._sqnorms[:n] = np.einsum("ij,ij->i", self._view, self._view)
        if self._dev is not None:
            import torch

            self._dev, self._dev_sq = self._device_buffers(self._sqnorms.shape[0])
            self._dev[:n] = torch.from_numpy(np.ascontiguousarray(self._view)).to(self.device, dtype=self._dev.dtype)
            self._dev_sq[:n] = torch.from_numpy(self._sqnorms[:n]).to(self.device)
        self._n = n

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held: ``host`` is 0 when the rows live in the index (counted there)."""
        own = 0 if self._rows is not None else self._host.nbytes
        out = {"host": int(own + self._sqnorms.nbytes)}
        if self._dev is not None:
            out["device"] = int(self._dev.numel() * self._dev.element_size() + self._dev_sq.numel() * 4)
        return out
