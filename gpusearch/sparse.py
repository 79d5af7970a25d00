"""Sparse vectors: checked at the edge, kept per row beside the dense ones, scored exactly.

A record may carry a sparse vector (Pinecone's ``sparseValues``: ``indices``
uint32, ``values`` float32) beside its dense values, or instead of them in a
``vector_type="sparse"`` collection. The score of a hybrid query is the dense
inner product plus the sparse dot product (Pinecone's ``dotproduct``
semantics), so sparse vectors need metric ``"ip"``.

:func:`check_sparse` is the one check of every edge. Indices may come in any
order (text encoders such as BM25 over hashed tokens emit them in order of
first appearance); they are sorted, values following. Repeated indices, indices
outside ``0..2**32-1``, values that are not finite and more than
:data:`MAX_SPARSE_NNZ` non-zeros are refused.

:class:`SparseRows` holds a shard's sparse vectors, append-only like its rows
(CSR: ``indptr``, ``indices``, ``values``), and answers a query's sparse scores
for every row: from a copy of the entries ordered by term (an inverted index, so
a query touches only the entries of its own terms) for the rows it covers, and a
scan of the rows appended since, which is folded in when it grows.

>>> v = check_sparse({"indices": [7, 2], "values": [0.5, 1.0]})
>>> v.indices.tolist(), v.values.tolist()
([2, 7], [1.0, 0.5])
>>> rows = SparseRows()
>>> rows.append([v, None, check_sparse(([2], [3.0]))])
>>> rows.scores(check_sparse({"indices": [2], "values": [2.0]}), 3).tolist()
[2.0, 0.0, 6.0]
"""
from __future__ import annotations

import numbers
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa

from .errors import InvalidArgumentError, InvalidTypeError

__all__ = ["SparseVector", "SparseRows", "check_sparse", "check_sparse_list", "MAX_SPARSE_NNZ", "MAX_SPARSE_INDEX"]

#: Non-zeros of one sparse vector at most (Pinecone's limit for a record's sparse values).
MAX_SPARSE_NNZ = 2048
MAX_SPARSE_INDEX = 2**32 - 1
_MIN_ROWS = 1024
# The rows appended after the term-ordered copy are scanned per query; past this many entries
# (or a quarter of the copy) the copy is rebuilt over all rows.
_DELTA_ENTRIES = 1 << 16


@dataclass(frozen=True, eq=False)
class SparseVector:
    """One checked sparse vector: ``indices`` uint32 ascending and unique, ``values`` float32 finite."""

    indices: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def as_dict(self) -> dict[str, list]:
        """Pinecone's wire shape: ``{"indices": [...], "values": [...]}``."""
        return {"indices": self.indices.tolist(), "values": self.values.tolist()}

    def dot(self, other: "SparseVector") -> float:
        """The sparse dot product with another vector (float64)."""
        common, a, b = np.intersect1d(self.indices, other.indices, assume_unique=True, return_indices=True)
        return float(np.dot(self.values[a].astype(np.float64), other.values[b].astype(np.float64)))

    def __eq__(self, other) -> bool:
        return (isinstance(other, SparseVector) and np.array_equal(self.indices, other.indices)
                and np.array_equal(self.values, other.values))

    __hash__ = object.__hash__  # by identity: a request holding one is grouped alone

    def __repr__(self) -> str:
        return f"SparseVector(nnz={len(self)})"


def _parts(x: Any, name: str):
    if isinstance(x, Mapping):
        missing = [key for key in ("indices", "values") if key not in x]
        if missing:
            raise InvalidArgumentError(f"{name} must have 'indices' and 'values', missing {', '.join(missing)}",
                                       field=name)
        extra = sorted(set(x) - {"indices", "values"})
        if extra:
            raise InvalidArgumentError(f"{name} takes only 'indices' and 'values', got {', '.join(map(repr, extra))}",
                                       field=name)
        return x["indices"], x["values"]
    if isinstance(x, tuple) and len(x) == 2:
        return x
    if hasattr(x, "indices") and hasattr(x, "values") and not callable(x.values):
        return x.indices, x.values  # the pinecone SDK's SparseValues, scipy-like objects
    raise InvalidTypeError(f"{name} must be a dict {{'indices': [...], 'values': [...]}}, got {type(x).__name__}",
                           field=name)


def _index_array(raw: Any, name: str) -> np.ndarray:
    if isinstance(raw, np.ndarray):
        if raw.ndim != 1:
            raise InvalidArgumentError(f"{name}.indices must be a flat list of ints, got shape {raw.shape}", field=name)
        if raw.dtype.kind in "iu":
            arr = raw.astype(np.int64, copy=False) if raw.dtype != np.uint64 else raw
            if arr.size and (arr.min() < 0 or arr.max() > MAX_SPARSE_INDEX):
                bad = arr[(arr < 0) | (arr > MAX_SPARSE_INDEX)][0]
                raise InvalidArgumentError(f"{name}.indices must be between 0 and {MAX_SPARSE_INDEX}, got {int(bad)}",
                                           field=name)
            return arr.astype(np.uint32)
        raw = raw.tolist()
    if isinstance(raw, (str, bytes)) or not isinstance(raw, (Sequence, np.ndarray)):
        raise InvalidTypeError(f"{name}.indices must be a list of ints, got {type(raw).__name__}", field=name)
    for i in raw:
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise InvalidTypeError(f"{name}.indices must be ints, got {type(i).__name__} ({i!r})", field=name)
        if not 0 <= i <= MAX_SPARSE_INDEX:
            raise InvalidArgumentError(f"{name}.indices must be between 0 and {MAX_SPARSE_INDEX}, got {i}", field=name)
    return np.asarray(raw, dtype=np.uint32).reshape(-1) if raw else np.empty(0, np.uint32)


def _value_array(raw: Any, name: str) -> np.ndarray:
    if isinstance(raw, (str, bytes)) or not isinstance(raw, (Sequence, np.ndarray)):
        raise InvalidTypeError(f"{name}.values must be a list of numbers, got {type(raw).__name__}", field=name)
    try:
        arr = np.asarray(raw, dtype=np.float64)
    except OverflowError:  # an integer too large for a float
        raise InvalidArgumentError(f"{name}.values must be finite float32 numbers, got one too large",
                                   field=name) from None
    except (TypeError, ValueError):
        bad = next((v for v in raw if isinstance(v, bool) or not isinstance(v, numbers.Real)), None)
        raise InvalidTypeError(f"{name}.values must be numbers, got {type(bad).__name__} ({bad!r})",
                               field=name) from None
    if arr.ndim != 1:
        raise InvalidArgumentError(f"{name}.values must be a flat list of numbers, got shape {arr.shape}", field=name)
    if not isinstance(raw, np.ndarray) and any(isinstance(v, bool) for v in raw):
        raise InvalidTypeError(f"{name}.values must be numbers, got a bool", field=name)
    if not np.all(np.isfinite(arr)) or np.any(np.abs(arr) > np.finfo(np.float32).max):
        bad = arr[~np.isfinite(arr) | (np.abs(arr) > np.finfo(np.float32).max)][0]
        raise InvalidArgumentError(f"{name}.values must be finite float32 numbers, got {bad}", field=name)
    return arr.astype(np.float32)


def check_sparse(x: Any, name: str = "sparse_values") -> SparseVector:
    """A :class:`SparseVector` from a dict ``{"indices", "values"}``, an ``(indices, values)`` pair or a
    SparseVector, checked; raises :class:`~gpusearch.errors.InvalidArgumentError` or
    :class:`~gpusearch.errors.InvalidTypeError` naming the problem."""
    if isinstance(x, SparseVector):
        return x
    raw_i, raw_v = _parts(x, name)
    idx = _index_array(raw_i, name)
    val = _value_array(raw_v, name)
    if idx.shape[0] != val.shape[0]:
        raise InvalidArgumentError(f"{name} must have as many indices as values, got {idx.shape[0]} indices and "
                                   f"{val.shape[0]} values", field=name)
    if idx.shape[0] > MAX_SPARSE_NNZ:
        raise InvalidArgumentError(f"{name} may have at most {MAX_SPARSE_NNZ} non-zero values, got {idx.shape[0]}",
                                   field=name)
    if idx.shape[0] > 1 and not np.all(idx[1:] > idx[:-1]):
        order = np.argsort(idx, kind="stable")
        idx, val = idx[order], val[order]
        dup = idx[1:] == idx[:-1]
        if dup.any():
            raise InvalidArgumentError(f"{name}.indices must not repeat, got {int(idx[1:][dup][0])} more than once",
                                       field=name)
    idx.setflags(write=False)
    val.setflags(write=False)
    return SparseVector(idx, val)


def check_sparse_list(items: Any, n: int, name: str = "sparse_values") -> list[SparseVector | None]:
    """One checked vector (or ``None``: no sparse part; an empty one counts as none) per record of ``n``."""
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, (Sequence, np.ndarray)):
        raise InvalidTypeError(f"{name} must be a list with one sparse vector (or None) per record, got "
                               f"{type(items).__name__}", field=name)
    if len(items) != n:
        raise InvalidArgumentError(f"{name} must have one item per record ({n}), got {len(items)}", field=name)
    out = []
    for pos, x in enumerate(items):
        v = None if x is None else check_sparse(x, f"{name}[{pos}]")
        out.append(v if v is not None and len(v) else None)
    return out


class SparseRows:
    """The sparse vectors of a shard's rows, row ``r``'s entries at ``indptr[r]:indptr[r+1]``.

    Append-only, like the rows; a row without a sparse vector has no entries. Read
    under the shard's lock (writers hold it exclusively); the term-ordered copy is
    built by the first query that needs it, under a lock of its own.
    """

    def __init__(self) -> None:
        self.n = 0
        self.nnz = 0
        self._indptr = np.zeros(_MIN_ROWS + 1, np.int64)
        self._rowsum = np.zeros(_MIN_ROWS, np.float64)  # each row's sum of values (a BM25 record's length)
        self._indices = np.empty(_MIN_ROWS * 8, np.uint32)
        self._values = np.empty(_MIN_ROWS * 8, np.float32)
        # (terms ascending, rows, values, each term present once, where its run starts + the end) of the
        # first _inv_rows rows, built and replaced whole (a reader holds one tuple)
        self._inv = None
        self._inv_rows = 0
        self._inv_lock = threading.Lock()

    # -- writes ----------------------------------------------------------------------------
    def _reserve(self, rows: int, nnz: int) -> None:
        if self._indptr.shape[0] < rows + 1:
            grown = np.zeros(max(rows + 1, 2 * self._indptr.shape[0]), np.int64)
            grown[: self.n + 1] = self._indptr[: self.n + 1]
            self._indptr = grown
            sums = np.zeros(grown.shape[0] - 1, np.float64)
            sums[: self.n] = self._rowsum[: self.n]
            self._rowsum = sums
        if self._indices.shape[0] < nnz:
            size = max(nnz, 2 * self._indices.shape[0])
            for attr in ("_indices", "_values"):
                old = getattr(self, attr)
                new = np.empty(size, old.dtype)
                new[: self.nnz] = old[: self.nnz]
                setattr(self, attr, new)

    def append(self, vectors: Iterable[SparseVector | None]) -> None:
        """Rows at the end, one per item (``None``: a row without a sparse vector)."""
        vectors = list(vectors)
        lengths = np.fromiter((0 if v is None else len(v) for v in vectors), np.int64, len(vectors))
        total = int(lengths.sum())
        self._reserve(self.n + len(vectors), self.nnz + total)
        ptr = self.nnz + np.cumsum(lengths)
        self._indptr[self.n + 1 : self.n + 1 + len(vectors)] = ptr
        if total:
            present = [v for v in vectors if v is not None and len(v)]
            self._indices[self.nnz : self.nnz + total] = np.concatenate([v.indices for v in present])
            self._values[self.nnz : self.nnz + total] = np.concatenate([v.values for v in present])
        self._sum_rows(self.n, self.n + len(vectors))
        self.n += len(vectors)
        self.nnz += total

    def _sum_rows(self, lo: int, hi: int) -> None:
        """Fill ``_rowsum[lo:hi]`` from the entries of rows lo..hi (their ``indptr`` already set)."""
        a, b = int(self._indptr[lo]), int(self._indptr[hi])
        cum = np.concatenate([[0.0], np.cumsum(self._values[a:b], dtype=np.float64)])
        ptr = self._indptr[lo : hi + 1] - a
        self._rowsum[lo:hi] = cum[ptr[1:]] - cum[ptr[:-1]]

    def append_empty(self, rows: int) -> None:
        self._reserve(self.n + rows, self.nnz)
        self._indptr[self.n + 1 : self.n + 1 + rows] = self.nnz
        self.n += rows

    def append_arrow(self, indices: pa.Array, values: pa.Array) -> None:
        """Rows from a segment's or WAL record's ``sparse_indices`` / ``sparse_values`` list columns."""
        n = len(indices)
        offsets = indices.offsets.to_numpy().astype(np.int64)
        lengths = np.diff(offsets)
        if indices.null_count:
            lengths = np.where(indices.is_null().to_numpy(zero_copy_only=False), 0, lengths)
        flat_i = indices.flatten().to_numpy(zero_copy_only=False)
        flat_v = values.flatten().to_numpy(zero_copy_only=False)
        total = int(lengths.sum())
        self._reserve(self.n + n, self.nnz + total)
        self._indptr[self.n + 1 : self.n + 1 + n] = self.nnz + np.cumsum(lengths)
        self._indices[self.nnz : self.nnz + total] = flat_i[:total]
        self._values[self.nnz : self.nnz + total] = flat_v[:total]
        self._sum_rows(self.n, self.n + n)
        self.n += n
        self.nnz += total

    # -- reads -----------------------------------------------------------------------------
    def row(self, r: int) -> SparseVector | None:
        lo, hi = int(self._indptr[r]), int(self._indptr[r + 1])
        if lo == hi:
            return None
        return SparseVector(self._indices[lo:hi].copy(), self._values[lo:hi].copy())

    def rows(self, rows: Iterable[int]) -> list[SparseVector | None]:
        return [None if r < 0 else self.row(r) for r in rows]

    def take(self, rows: np.ndarray) -> "SparseRows":
        """A new SparseRows of ``rows``, in that order (compaction)."""
        rows = np.asarray(rows, dtype=np.int64)
        lo, hi = self._indptr[rows], self._indptr[rows + 1]
        lengths = hi - lo
        total = int(lengths.sum())
        pos = np.repeat(lo - (np.cumsum(lengths) - lengths), lengths) + np.arange(total)
        out = SparseRows()
        out._reserve(len(rows), total)
        out._indptr[1 : len(rows) + 1] = np.cumsum(lengths)
        out._indices[:total] = self._indices[pos]
        out._values[:total] = self._values[pos]
        out._rowsum[: len(rows)] = self._rowsum[rows]
        out.n, out.nnz = len(rows), total
        return out

    def to_arrow(self, lo: int, hi: int) -> tuple[pa.Array, pa.Array]:
        """Rows ``lo:hi`` as ``list<uint32>`` and ``list<float32>`` columns; a row without entries is null."""
        ptr = self._indptr[lo : hi + 1]
        start, stop = int(ptr[0]), int(ptr[-1])
        offsets = pa.array((ptr - start).astype(np.int32))
        empty = ptr[1:] == ptr[:-1]
        mask = pa.array(empty) if empty.any() else None
        idx = pa.ListArray.from_arrays(offsets, pa.array(self._indices[start:stop], pa.uint32()), mask=mask)
        val = pa.ListArray.from_arrays(offsets, pa.array(self._values[start:stop], pa.float32()), mask=mask)
        return idx, val

    def _inverted(self):
        """The term-ordered copy, rebuilt when the rows after it hold too many entries."""
        delta = self.nnz - int(self._indptr[self._inv_rows])
        if self._inv is not None and (delta <= _DELTA_ENTRIES or delta * 4 <= self._inv[0].shape[0]):
            return self._inv, self._inv_rows
        with self._inv_lock:
            n, nnz = self.n, self.nnz
            terms = self._indices[:nnz]
            # One sort key: the term, then the value, largest first (within a term, the rows that add the
            # most to a query with a positive weight on it lead its run: see top_rows). Float32 bits map
            # onto unsigned ints in the floats' order: flip every bit of a negative, the sign bit of the rest.
            bits = self._values[:nnz].view(np.uint32)
            up = np.where(bits >> np.uint32(31) == 1, ~bits, bits | np.uint32(0x80000000))
            key = (terms.astype(np.uint64) << np.uint64(32)) | (~up).astype(np.uint64)
            order = np.argsort(key, kind="stable")
            del key, up
            rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(self._indptr[: n + 1]))
            inv_terms = terms[order]
            # The directory of the runs: each term present and where its run starts (the last entry: the
            # end), small enough to stay in cache, where a search of the whole copy reads far apart pages.
            first = np.flatnonzero(np.diff(inv_terms) != 0) + 1 if nnz else np.empty(0, np.int64)
            starts = np.concatenate([[0], first, [nnz]]).astype(np.int64) if nnz else np.zeros(1, np.int64)
            self._inv = (inv_terms, rows[order], self._values[:nnz][order], inv_terms[starts[:-1]], starts)
            self._inv_rows = n
            return self._inv, n

    @staticmethod
    def _runs(inv, terms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where each of ``terms`` (ascending) runs in the term-ordered copy ``inv``: ``(lo, hi)``, empty
        when absent."""
        present, starts = inv[3], inv[4]
        at = np.searchsorted(present, terms)
        inside = at < len(present)
        found = inside & (present[np.minimum(at, len(present) - 1)] == terms) if len(present) else inside
        lo = np.where(found, starts[np.minimum(at, len(starts) - 2)], 0)
        hi = np.where(found, starts[np.minimum(at + 1, len(starts) - 1)], 0)
        return lo, hi

    def entries(self, terms: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every entry of the first ``n_rows`` rows whose index is in ``terms`` (uint32, ascending):
        ``(rows, values, term positions)``; from the term-ordered copy, plus a scan of the rows after it."""
        empty = (np.empty(0, np.int64), np.empty(0, np.float32), np.empty(0, np.int64))
        if not len(terms) or not self.nnz:
            return empty
        inv, covered = self._inverted()
        _, inv_rows, inv_vals = inv[:3]
        lo, hi = self._runs(inv, terms)
        counts = hi - lo
        total = int(counts.sum())
        parts = []
        if total:
            # Each term's postings are one run of the term-ordered copy: copied run by run (slices), which
            # reads memory in order, unlike a gather through a position per entry (twice as slow here).
            runs = [(a, b) for a, b in zip(lo.tolist(), hi.tolist()) if b > a]
            r = np.concatenate([inv_rows[a:b] for a, b in runs])
            v = np.concatenate([inv_vals[a:b] for a, b in runs])
            t = np.repeat(np.arange(len(terms)), counts)
            if n_rows < covered:  # the copy holds rows past the ones asked for
                keep = r < n_rows
                r, v, t = r[keep], v[keep], t[keep]
            parts.append((r, v, t))
        tail = self._tail_entries(terms, covered, n_rows)
        if tail is not None:
            parts.append(tail)
        if not parts:
            return empty
        return tuple(np.concatenate(p) for p in zip(*parts))

    def _tail_entries(self, terms: np.ndarray, covered: int, n_rows: int):
        """The entries whose index is in ``terms`` of the rows appended since the term-ordered copy (which
        covers the first ``covered``), up to ``n_rows``: ``(rows, values, term positions)``, or None."""
        stop = min(n_rows, self.n)
        if covered >= stop:
            return None
        a, b = int(self._indptr[covered]), int(self._indptr[stop])
        ent = self._indices[a:b]
        at = np.minimum(np.searchsorted(terms, ent), len(terms) - 1)
        hit = terms[at] == ent
        if not hit.any():
            return None
        erow = np.repeat(np.arange(covered, stop, dtype=np.int64), np.diff(self._indptr[covered : stop + 1]))
        return erow[hit], self._values[a:b][hit], at[hit]

    def scores(self, q: SparseVector, n_rows: int, touched: bool = False):
        """The sparse dot product of ``q`` with every one of the first ``n_rows`` rows (float64); with
        ``touched``, also which rows share an index with ``q`` (a bool mask)."""
        rows, vals, at = self.entries(q.indices, n_rows)
        out = (np.bincount(rows, weights=vals * q.values.astype(np.float64)[at], minlength=n_rows) if len(rows)
               else np.zeros(n_rows, np.float64))
        if not touched:
            return out
        mask = np.zeros(n_rows, bool)
        mask[rows] = True
        return out, mask

    def top_rows(self, q: SparseVector, n_rows: int, depth: int, allow: np.ndarray | None = None) -> np.ndarray:
        """Rows among the first ``n_rows`` likely to hold the largest sparse dot products with ``q``
        (candidates for an approximate index's hybrid search, re-scored exactly by the caller): for each
        term of ``q``, the ``depth`` rows whose value adds the most to it (the head of the term's run in
        the term-ordered copy, its tail for a negative weight), and every row appended since the copy;
        ranked by the sum of what was read of each, the best ``depth`` of those ``allow`` lets through
        whose sum is positive. When a term's run was cut and fewer than ``depth`` rows are left (a filter
        or deletes removed the rest), every row sharing a term is read instead, so a filter cannot empty
        the sparse side. Row numbers ascending."""
        if not len(q) or not self.nnz or depth <= 0:
            return np.empty(0, np.int64)
        inv, covered = self._inverted()
        _, inv_rows, inv_vals = inv[:3]
        weights = q.values.astype(np.float64)
        lo, hi = (a.tolist() for a in self._runs(inv, q.indices))
        tail = self._tail_entries(q.indices, covered, n_rows)  # rows appended since the copy: read whole
        for cut in (True, False):
            rows, contrib, truncated = [], [], False
            for j, (a, b) in enumerate(zip(lo, hi)):
                if b - a > depth and cut:
                    truncated = True
                    a, b = (a, a + depth) if weights[j] >= 0 else (b - depth, b)
                if b > a:
                    rows.append(inv_rows[a:b])
                    contrib.append(inv_vals[a:b] * weights[j])
            if tail is not None:
                rows.append(tail[0])
                contrib.append(tail[1] * weights[tail[2]])
            if not rows:
                return np.empty(0, np.int64)
            r, c = np.concatenate(rows), np.concatenate(contrib)
            if n_rows < covered:  # the copy holds rows past the ones asked for
                keep = r < n_rows
                r, c = r[keep], c[keep]
            cand, inv = np.unique(r, return_inverse=True)
            partial = np.bincount(inv, weights=c, minlength=len(cand))
            keep = partial > 0
            if allow is not None:
                keep &= allow[cand]
            cand, partial = cand[keep], partial[keep]
            if len(cand) >= depth or not truncated:
                break
        if len(cand) > depth:
            cand = np.sort(cand[np.argpartition(-partial, depth - 1)[:depth]])
        return cand

    def dot(self, q: SparseVector, rows: np.ndarray) -> np.ndarray:
        """The sparse dot product of ``q`` with each of ``rows`` (float64, summed in term order, as
        :meth:`scores` sums it: the same numbers)."""
        rows = np.asarray(rows, dtype=np.int64)
        lo, hi = self._indptr[rows], self._indptr[rows + 1]
        lengths = hi - lo
        total = int(lengths.sum())
        if not total or not len(q):
            return np.zeros(len(rows), np.float64)
        pos = np.repeat(lo - (np.cumsum(lengths) - lengths), lengths) + np.arange(total)
        ent = self._indices[pos]
        at = np.minimum(np.searchsorted(q.indices, ent), len(q) - 1)
        weights = q.values.astype(np.float64)
        contrib = np.where(q.indices[at] == ent, weights[at], 0.0) * self._values[pos]
        # bincount adds each row's terms one by one in term order, as scores() does (a reduction such as
        # np.add.reduceat sums pairwise: other last bits)
        return np.bincount(np.repeat(np.arange(len(rows)), lengths), weights=contrib, minlength=len(rows))

    def lengths(self, n_rows: int) -> np.ndarray:
        """Each row's sum of values (float64; a BM25 record's number of terms)."""
        return self._rowsum[:n_rows]

    def memory_bytes(self) -> int:
        inv = 0 if self._inv is None else sum(a.nbytes for a in self._inv)
        return int(self._indptr.nbytes + self._indices.nbytes + self._values.nbytes + inv)


def sparse_to_arrow(vectors: Sequence[SparseVector | None]) -> tuple[pa.Array, pa.Array]:
    """``list<uint32>`` and ``list<float32>`` columns of ``vectors`` (``None``: a null row)."""
    rows = SparseRows()
    rows.append(vectors)
    return rows.to_arrow(0, rows.n)
