"""Crash-safe file writes: temp file, fsync, rename, directory fsync.

A file written here is either entirely the old version or entirely the new one
after a crash at any point, never a mix. The new bytes go to a temporary file in
the same directory (a rename is only atomic within one file system), which is
flushed and fsynced, renamed over the target with :func:`os.replace`, and then
the directory is fsynced so the rename itself survives a power cut.

A crash before the rename leaves the temporary file behind. Its name,
``.<name>.tmp-<pid>-<random hex>``, starts with a dot and carries the
``.tmp-`` marker, so readers recognise it with :func:`is_temp_file`, ignore it,
and may delete it with :func:`remove_stale_temp_files`.

A write that fails because the file system is full (``ENOSPC``, or ``EDQUOT``
over a quota) raises :class:`DiskFullError`, an ``OSError`` with that errno whose
message says so and names the file; the temporary file is removed and the
target is left as it was.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from .errors import DiskFullError

__all__ = [
    "DiskFullError",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "fsync_dir",
    "is_disk_full",
    "is_temp_file",
    "read_json",
    "remove_stale_temp_files",
    "temp_path_for",
]

logger = logging.getLogger(__name__)

_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-(?P<rand>[0-9a-f]+)$")
_FULL_ERRNOS = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if e is not None)


def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` is an ``OSError`` saying the file system is full or over quota.

    Examples
    --------
    >>> import errno
    >>> is_disk_full(OSError(errno.ENOSPC, "No space left on device")), is_disk_full(OSError(errno.EIO, "I/O"))
    (True, False)
    """
    return isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS


def fsync_dir(path: str | os.PathLike) -> None:
    """Fsync a directory so that creations, renames and deletions in it are durable.

    Parameters
    ----------
    path : str or os.PathLike
        The directory.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     fsync_dir(d)
    """
    fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some file systems cannot fsync a directory; their renames are as durable as they get.
        if exc.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


def temp_path_for(path: str | os.PathLike) -> Path:
    """Return a fresh temporary path next to ``path``: ``.<name>.tmp-<pid>-<random hex>``.

    Examples
    --------
    >>> is_temp_file(temp_path_for("/data/manifest.json"))
    True
    """
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(6)}")


def is_temp_file(path: str | os.PathLike) -> bool:
    """True when ``path`` names a temporary file made by :func:`temp_path_for`.

    Examples
    --------
    >>> is_temp_file("manifest.json"), is_temp_file(".manifest.json.tmp-12-ab09")
    (False, True)
    """
    return _TEMP_RE.match(Path(path).name) is not None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Delete temporary files left in ``directory`` by writers that died.

    A temporary file is stale when the process id in its name is no longer alive.
    Files of this process and of live processes are kept, since they may be
    writes in progress (a reused pid only delays the clean-up).

    Parameters
    ----------
    directory : str or os.PathLike
        The directory to clean (not recursive).

    Returns
    -------
    list of Path
        The files removed.
    """
    directory = Path(directory)
    removed = []
    me = os.getpid()
    for entry in os.scandir(directory):
        match = _TEMP_RE.match(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        pid = int(match["pid"])
        if pid == me or _pid_alive(pid):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
            logger.info("removed stale temporary file %s", entry.path)
    if removed:
        fsync_dir(directory)
    return removed


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Context manager that yields a binary file whose contents replace ``path`` atomically.

    On a normal exit the file is flushed, fsynced, renamed over ``path`` and the
    directory is fsynced. If the block raises, the temporary file is removed and
    ``path`` is left untouched.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write. Its directory must exist.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     target = pathlib.Path(d) / "blob.bin"
    ...     with atomic_write(target) as f:
    ...         _ = f.write(b"hello")
    ...     target.read_bytes()
    b'hello'
    """
    path = Path(path)
    tmp = temp_path_for(path)
    f = _open_new(tmp, path)
    try:
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            f.close()  # a close that flushes into a full disk fails again; the file goes anyway
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            raise DiskFullError(exc.errno, "no space left on device: writing the file failed (the disk is full); "
                                "the old version, if any, is untouched and nothing of the new one is kept; "
                                "free space and retry", os.fspath(path)) from exc
        raise
    fsync_dir(path.parent)


def _open_new(tmp: Path, path: Path) -> BinaryIO:
    try:
        return open(tmp, "xb")
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFullError(exc.errno, "no space left on device: cannot create the file (the disk is full); "
                                "free space and retry", os.fspath(path)) from exc
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write. Its directory must exist.
    data : bytes-like
        The new contents.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     atomic_write_bytes(pathlib.Path(d) / "x", b"abc")
    ...     (pathlib.Path(d) / "x").read_bytes()
    b'abc'
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    with atomic_write(path) as f:
        f.write(data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON (sorted keys, indent 2, UTF-8) atomically and durably.

    NaN and infinities are refused with ``ValueError``: they are not JSON.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     atomic_write_json(pathlib.Path(d) / "m.json", {"b": 1, "a": [1, 2]})
    ...     read_json(pathlib.Path(d) / "m.json")
    {'a': [1, 2], 'b': 1}
    """
    text = json.dumps(obj, sort_keys=True, indent=2, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the file is not valid UTF-8 JSON; the message names the path.
    """
    data = Path(path).read_bytes()
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"{os.fspath(path)} is not a valid JSON file: {exc}") from None
