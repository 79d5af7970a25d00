"""The CUDA C sources of the kernels, compiled by CuPy (NVRTC) on first use.

Nothing here runs at import time: a module is compiled the first time one of
its kernels is asked for on a device, then cached per (source, device). CuPy
also keeps compiled binaries on disk, keyed by the exact source text; the
shared header is pasted into each source before compiling so that an edit to
it changes that key too.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

__all__ = ["cuda_sources", "kernel", "THREADS", "NULL"]

_DIR = Path(__file__).resolve().parent
_HEADER = "_common.cuh"
_SOURCES = ("topk.cu", "fused_search.cu", "merge.cu")

#: Threads per block for every kernel (the .cu files assume a multiple of 32, at most 1024).
THREADS = 256

#: A null device pointer as a kernel argument (8 zero bytes by value).
NULL = np.uint64(0)


def cuda_sources() -> list[Path]:
    """Paths of the CUDA C translation units, each compilable on its own.

    Examples
    --------
    >>> sorted(p.name for p in cuda_sources())
    ['fused_search.cu', 'merge.cu', 'topk.cu']
    """
    return [_DIR / name for name in _SOURCES]


def source_text(name: str) -> str:
    """The source of ``name`` with the shared header pasted in place of its ``#include``."""
    code = (_DIR / name).read_text()
    include = f'#include "{_HEADER}"'
    if include in code:
        code = code.replace(include, (_DIR / _HEADER).read_text(), 1)
    return code


@functools.lru_cache(maxsize=None)
def _module(name: str, device: int):
    import cupy

    return cupy.RawModule(code=source_text(name), options=("--std=c++17",))


def kernel(source: str, name: str):
    """The kernel ``name`` from ``source`` for the current CuPy device (compiled on first use)."""
    import cupy

    return _module(source, cupy.cuda.Device().id).get_function(name)
