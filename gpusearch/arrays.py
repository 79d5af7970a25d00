"""Checking and converting what users hand us: vectors, queries, ids and ``k``.

Everything here runs before any write or kernel call, so a bad request is
refused whole with a message that says what was expected and what came.
Vectors may be NumPy arrays, torch tensors (CPU or CUDA), CuPy arrays,
anything with ``__cuda_array_interface__`` or DLPack, or (nested) lists.
"""
from __future__ import annotations

from typing import Any, Sequence

import math

import numpy as np

from .errors import InvalidArgumentError, InvalidTypeError
__all__ = ["as_matrix", "as_ids", "to_host", "prepare_vectors", "MAX_ID_LENGTH", "MAX_SQUARED_NORM"]

MAX_ID_LENGTH = 512
_FLOAT_KINDS = ("float16", "float32", "float64", "bfloat16")


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "dtype") and hasattr(x, "device")


def _dtype_name(x: Any) -> str:
    return str(x.dtype).replace("torch.", "")


def as_matrix(x: Any, *, name: str, dim: int | None = None, device: str = "cpu"):
    """Validate ``x`` as an ``(n, dim)`` float matrix and put it on ``device``.

    Returns a float32 NumPy array when ``device`` is ``"cpu"`` and a float32
    torch tensor on that device otherwise. A 1-D input is one row.

    >>> as_matrix([[1, 0], [0, 1]], name="vectors", dim=2).shape
    (2, 2)
    >>> as_matrix([[1, 0, 0]], name="vectors", dim=2)
    Traceback (most recent call last):
    ...
    gpusearch.errors.InvalidArgumentError: vectors must have 2 columns (the collection's dim), got 3
    """
    if _is_torch(x):
        return _torch_matrix(x, name=name, dim=dim, device=device)
    if hasattr(x, "__cuda_array_interface__") or (hasattr(x, "__dlpack__") and not isinstance(x, np.ndarray)):
        import torch

        try:
            t = torch.from_dlpack(x)
        except Exception as e:  # e.g. a CuPy array on a machine whose torch lacks CUDA
            raise InvalidTypeError(f"{name} could not be read through DLPack ({e}); pass a NumPy array instead") from None
        return _torch_matrix(t, name=name, dim=dim, device=device)
    if isinstance(x, np.ndarray):
        arr = x
    else:
        if isinstance(x, (str, bytes)) or not isinstance(x, (Sequence, np.generic)) and not hasattr(x, "__array__"):
            raise InvalidTypeError(
                f"{name} must be a 2-D array of floats (NumPy, torch, CuPy or a list of lists), got {type(x).__name__}"
            )
        try:
            arr = np.asarray(x)
        except ValueError as e:
            raise InvalidArgumentError(f"{name} must be a rectangular 2-D array of floats; {e}") from None
        if arr.dtype.kind in "iu" or arr.dtype == object and arr.size == 0:
            arr = arr.astype(np.float64)  # JSON-style lists of numbers
    if arr.dtype.kind not in "f":
        raise InvalidTypeError(f"{name} must hold floating-point numbers (float16, float32 or float64), got {arr.dtype}")
    arr = _check_shape(arr, arr.shape, name=name, dim=dim)
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        raise InvalidArgumentError(f"{name} must be finite; row {bad} holds NaN or Inf")
    if device != "cpu":
        import torch

        return torch.from_numpy(arr).to(device)
    return arr


def _check_shape(x, shape, *, name: str, dim: int | None):
    if len(shape) == 1:
        x = x.reshape(1, -1)
        shape = tuple(x.shape)
    if len(shape) != 2:
        raise InvalidArgumentError(f"{name} must be a 2-D array (n, dim) or a single 1-D vector, got {len(shape)} dimensions {tuple(shape)}")
    if shape[0] == 0:
        raise InvalidArgumentError(f"{name} is an empty batch (0 rows); send at least one vector")
    if dim is not None and shape[1] != dim:
        raise InvalidArgumentError(f"{name} must have {dim} columns (the collection's dim), got {shape[1]}")
    return x


def _torch_matrix(t, *, name: str, dim: int | None, device: str):
    import torch

    if _dtype_name(t) not in _FLOAT_KINDS:
        raise InvalidTypeError(f"{name} must hold floating-point numbers (float16, float32 or float64), got {_dtype_name(t)}")
    t = _check_shape(t, tuple(t.shape), name=name, dim=dim)
    t = t.detach().to(device=device, dtype=torch.float32).contiguous()
    finite = torch.isfinite(t).all(dim=1)
    if not bool(finite.all()):
        bad = int(torch.nonzero(~finite)[0, 0])
        raise InvalidArgumentError(f"{name} must be finite; row {bad} holds NaN or Inf")
    if device == "cpu":
        return t.numpy()
    return t


def to_host(x) -> np.ndarray:
    """A float32 NumPy copy (or view) of a matrix from :func:`as_matrix`."""
    if isinstance(x, np.ndarray):
        return x
    return x.detach().cpu().numpy()


def as_ids(ids: Any, *, name: str = "ids") -> list[str]:
    """Validate record ids: strings, or ints (stored as their decimal string).

    >>> as_ids([1, "a"])
    ['1', 'a']
    """
    if isinstance(ids, (str, bytes, int)) or ids is None:
        raise InvalidTypeError(f"{name} must be a list of str or int, got a single {type(ids).__name__}; wrap it in a list")
    if isinstance(ids, np.ndarray):
        if ids.dtype.kind in "iu":
            return [str(int(i)) for i in ids.tolist()]
        ids = ids.tolist()
    elif _is_torch(ids):
        ids = ids.tolist()
    try:
        items = list(ids)
    except TypeError:
        raise InvalidTypeError(f"{name} must be a list of str or int, got {type(ids).__name__}") from None
    if not items:
        raise InvalidArgumentError(f"{name} is empty; send at least one id")
    out = []
    for i, v in enumerate(items):
        if isinstance(v, bool) or not isinstance(v, (str, int, np.integer)):
            raise InvalidTypeError(f"{name}[{i}] must be str or int, got {type(v).__name__} ({v!r})")
        s = v if isinstance(v, str) else str(int(v))
        if not s:
            raise InvalidArgumentError(f"{name}[{i}] is an empty string; ids must be non-empty")
        if len(s) > MAX_ID_LENGTH:
            raise InvalidArgumentError(f"{name}[{i}] is {len(s)} characters long; at most {MAX_ID_LENGTH} are allowed")
        out.append(s)
    return out


# A row's squared length may be at most a quarter of float32's range: then every score any
# metric computes between two such rows (a squared L2 distance is at most (|a| + |b|)^2) stays
# finite. Beyond it a cosine row would normalise to zeros and an L2 row would drop out of results.
MAX_SQUARED_NORM = float(np.finfo(np.float32).max) / 4


def first_overlong_row(m) -> tuple[int, float] | None:
    """(row, squared length) of the first row of the (n, dim) matrix ``m`` (NumPy or torch) whose
    squared length is beyond :data:`MAX_SQUARED_NORM`, or None when every row is within it."""
    if isinstance(m, np.ndarray):
        sq = np.einsum("ij,ij->i", m, m, dtype=np.float64)
    else:
        sq = to_host((m.double() ** 2).sum(dim=1))
    big = np.flatnonzero(~(sq <= MAX_SQUARED_NORM))
    return (int(big[0]), float(sq[big[0]])) if len(big) else None


def _check_squared_norms(m, name: str) -> None:
    bad = first_overlong_row(m)
    if bad is not None:
        raise InvalidArgumentError(f"{name} row {bad[0]} has squared length {bad[1]:.3g}, beyond the limit "
                         f"{MAX_SQUARED_NORM:.3g} (a quarter of float32's range, so scores stay finite); "
                         f"scale the vector down")


def prepare_vectors(x, *, name: str, dim: int, metric: str, device: str = "cpu", zero_rows: bool = False,
                    with_norms: bool = False):
    """An (n, dim) float32 matrix on ``device``, unit length for ``metric="cosine"``. All-zero rows are
    refused there, unless ``zero_rows`` (queries: a zero query scores 0 against every record, and is
    answered, as Pinecone answers it; LlamaIndex sends one to list nodes).

    ``with_norms`` (records to store): return ``(matrix, norms)``, ``norms`` the rows' lengths as
    sent, float32 on the host, for cosine (so that what was sent can be given back), else ``None``."""
    m = _prepare(x, name, dim, metric, device, zero_rows, with_norms)
    return m if with_norms else m[0]


def _prepare(x, name, dim, metric, device, zero_rows, with_norms):
    if (type(x) is np.ndarray and x.dtype == np.float32 and device == "cpu" and 1 <= x.ndim <= 2
            and x.shape[-1] == dim and x.size and x.flags.c_contiguous):
        # Fast path for the common case (a float32 NumPy query or batch, as a search sends one at a
        # time): one pass gives the squared norms, and a finite sum of squares means every value is
        # finite. Anything else (NaN, Inf, overflow, zero rows) goes the general way for its error.
        m = x.reshape(1, -1) if x.ndim == 1 else x
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow goes the general way, for its error
            sq = np.add.reduce(m * m, axis=1, keepdims=True)  # as np.linalg.norm computes it: the same bits
        if m.shape[0] == 1:  # one row: scalar checks beat two more NumPy reductions
            s0 = float(sq[0, 0])
            ok = s0 <= MAX_SQUARED_NORM and (metric != "cosine" or s0 > 0)
        else:
            ok = bool((sq <= MAX_SQUARED_NORM).all()) and (metric != "cosine" or sq.all())
        if ok:
            if metric != "cosine":
                return m, None
            norms = np.sqrt(sq)
            return m / norms, (norms[:, 0] if with_norms else None)
    m = as_matrix(x, name=name, dim=dim, device=device)
    _check_squared_norms(m, name)
    if metric == "cosine":
        if isinstance(m, np.ndarray):
            norms = np.linalg.norm(m, axis=1, keepdims=True)
            zero = np.flatnonzero(norms[:, 0] == 0)
        else:
            norms = m.norm(dim=1, keepdim=True)
            zero = np.flatnonzero(to_host(norms)[:, 0] == 0)
        if len(zero) and not zero_rows:
            raise InvalidArgumentError(f"{name} row {int(zero[0])} is all zeros; cosine similarity needs non-zero vectors")
        if len(zero):
            norms[zero] = 1  # stays all zeros
        m = m / norms
        return m, (np.asarray(to_host(norms), dtype=np.float32)[:, 0] if with_norms else None)
    return m, None
