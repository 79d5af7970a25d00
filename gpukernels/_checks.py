"""Argument checks shared by the kernel wrappers and their references.

Each check raises ``TypeError`` for a wrong type or dtype and ``ValueError``
for a wrong shape, range or value, and says what was expected and what came.
The checks only read ``shape``, ``ndim`` and ``dtype``, so they work on NumPy
and CuPy arrays alike.
"""
from __future__ import annotations

import numbers

import numpy as np

__all__ = [
    "MAX_K",
    "KERNEL_K",
    "METRICS",
    "check_k",
    "check_lists",
    "check_list_arrays",
    "check_metric",
    "check_matrix",
    "check_vector",
    "sentinel",
]

#: Largest ``k`` any kernel wrapper accepts: above the engine's MAX_TOP_K (10,000), whose exact
#: search asks a shard for k + 1 rows.
MAX_K = 16384
#: Largest ``k`` of the one-block CUDA kernels (``topk.cu``, ``fused_search.cu``, ``merge.cu``: they
#: keep k keys in shared memory). A larger ``k`` on a CUDA device takes a stable sort instead
#: (:func:`gpukernels._select.sort_select`): exact, with the same tie rule, and slower.
KERNEL_K = 1024

#: Metrics of :func:`gpusearch.kernels.fused_search`, with whether larger is better.
METRICS = {"ip": True, "l2": False}

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def _dtype_names(dtypes) -> str:
    names = [np.dtype(dt).name for dt in dtypes]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def check_k(k) -> int:
    """Return ``k`` as an int after checking that it lies in ``1..MAX_K``.

    Examples
    --------
    >>> check_k(10)
    10
    >>> check_k(0)
    Traceback (most recent call last):
    ...
    ValueError: k must be in [1, 16384], got 0
    """
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an int in [1, {MAX_K}], got {type(k).__name__} {k!r}")
    k = int(k)
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k must be in [1, {MAX_K}], got {k}")
    return k


def check_metric(metric) -> str:
    """Return ``metric`` after checking it is one the kernels know.

    Examples
    --------
    >>> check_metric("l2")
    'l2'
    """
    if not isinstance(metric, str) or metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    return metric


def check_matrix(a, name: str, dtypes=FLOAT_DTYPES, *, where: str = "") -> None:
    """Check that ``a`` is 2-D with one of ``dtypes``.

    Examples
    --------
    >>> check_matrix(np.zeros(3, np.float32), "scores")
    Traceback (most recent call last):
    ...
    ValueError: scores must be 2-D (rows, columns), got shape (3,)
    """
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, columns), got shape {tuple(a.shape)}")
    if a.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype {_dtype_names(dtypes)}{where}, got {a.dtype}")


def check_vector(a, name: str, length: int, dtypes) -> None:
    """Check that ``a`` has shape ``(length,)`` and one of ``dtypes``.

    Examples
    --------
    >>> check_vector(np.ones(4, bool), "mask", 5, [bool])
    Traceback (most recent call last):
    ...
    ValueError: mask must have shape (5,) (one entry per base row), got (4,)
    """
    if tuple(a.shape) != (length,):
        raise ValueError(f"{name} must have shape ({length},) (one entry per base row), got {tuple(a.shape)}")
    if a.dtype not in [np.dtype(dt) for dt in dtypes]:
        raise TypeError(f"{name} must have dtype {_dtype_names(dtypes)}, got {a.dtype}")


def sentinel(largest: bool) -> float:
    """The worst possible score: ``-inf`` when larger is better, ``+inf`` otherwise.

    Examples
    --------
    >>> sentinel(True), sentinel(False)
    (-inf, inf)
    """
    return -np.inf if largest else np.inf


def check_lists(scores_list, ids_list) -> tuple[list, list]:
    """Check the two sequences of :func:`merge_topk` pair up; return them as lists.

    Examples
    --------
    >>> check_lists([np.zeros((1, 2))], [])
    Traceback (most recent call last):
    ...
    ValueError: scores_list and ids_list must have the same length, got 1 and 0
    """
    for name, seq in (("scores_list", scores_list), ("ids_list", ids_list)):
        if not isinstance(seq, (list, tuple)):
            raise TypeError(f"{name} must be a list or tuple of 2-D arrays, got {type(seq).__name__}")
    if len(scores_list) != len(ids_list):
        raise ValueError(
            f"scores_list and ids_list must have the same length, got {len(scores_list)} and {len(ids_list)}"
        )
    if not scores_list:
        raise ValueError("scores_list must hold at least one (nq, m) array, got an empty sequence")
    return list(scores_list), list(ids_list)


def check_list_arrays(scores_list: list, ids_list: list, score_dtypes=FLOAT_DTYPES, *, where: str = "") -> None:
    """Check each ``(scores, ids)`` pair: 2-D, same shape, same row count for every pair.

    Examples
    --------
    >>> check_list_arrays([np.zeros((2, 3), np.float32)], [np.zeros((2, 3), np.float32)])
    Traceback (most recent call last):
    ...
    TypeError: ids_list[0] must have an integer dtype (int64), got float32
    """
    nq = scores_list[0].shape[0] if scores_list[0].ndim == 2 else None
    for i, (S, I) in enumerate(zip(scores_list, ids_list)):
        check_matrix(S, f"scores_list[{i}]", score_dtypes, where=where)
        if I.ndim != 2:
            raise ValueError(f"ids_list[{i}] must be 2-D (rows, columns), got shape {tuple(I.shape)}")
        if I.dtype.kind not in "iu":
            raise TypeError(f"ids_list[{i}] must have an integer dtype (int64), got {I.dtype}")
        if tuple(I.shape) != tuple(S.shape):
            raise ValueError(f"ids_list[{i}] must have the shape of scores_list[{i}], {tuple(S.shape)}, got {tuple(I.shape)}")
        if S.shape[0] != nq:
            raise ValueError(f"scores_list[{i}] must have {nq} rows like scores_list[0], got {S.shape[0]}")
