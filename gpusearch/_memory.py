"""Handing memory freed by a bulk operation back to the operating system.

pyarrow allocates from its own pool (mimalloc or jemalloc), which keeps freed pages for
reuse: after a bulk upsert (its write-ahead-log record is an Arrow IPC stream as large
as its vectors) or a snapshot load, the process would go on holding that much memory
it no longer uses. Large operations call :func:`release_freed` when they are done.
"""
from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["release_freed", "RELEASE_AFTER_BYTES"]

#: Operations that moved at least this many bytes give freed memory back when they finish.
RELEASE_AFTER_BYTES = 1 << 20  # a release costs ~15 us; a bulk write leaves its size behind

_libc = None


def release_freed() -> None:
    """Return freed memory of pyarrow's pool and of the C heap to the operating system."""
    global _libc
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        except OSError:
            _libc = False
    trim = getattr(_libc, "malloc_trim", None) if _libc else None
    if trim is not None:  # glibc only
        trim(0)
