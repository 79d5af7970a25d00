"""Storage by URI: where a collection's backups (and, later, its snapshots) live.

A location is a local path (``/backups/docs``, ``./backups``) or a URI that
``pyarrow.fs`` understands: ``file:///backups/docs``, ``s3://bucket/prefix``,
``gs://bucket/prefix``. S3 settings go in the URI's query, as pyarrow reads
them (``s3://bucket/prefix?endpoint_override=http://127.0.0.1:9000&region=us-east-1``
for an S3-compatible server), and credentials come from the usual places (the
``AWS_*`` environment variables, ``~/.aws``, the instance's role).

Nothing here assumes a POSIX rename at the location: objects are written once
under their final key and a reader trusts an object only after checking its size
and SHA-256 against the document that names it (see :mod:`gpusearch.backup`,
whose manifest, written last, is the commit point).

>>> import tempfile
>>> loc = Location(tempfile.mkdtemp())
>>> loc.put_bytes("a/b.json", b"{}")
>>> loc.get_bytes("a/b.json"), loc.size("a/b.json"), loc.size("missing")
(b'{}', 2, None)
>>> within("s3://b/backups/docs?region=x", "s3://b/backups?region=x"), within("s3://b/backupsX", "s3://b/backups")
(True, False)
>>> within("/srv/bk/../etc", "/srv/bk")
False
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import urllib.parse
import uuid
from pathlib import Path
from typing import Callable

from .errors import InvalidArgumentError, NotFoundError

__all__ = ["Location", "CHUNK_BYTES", "read_prefix", "within", "join_uri"]

CHUNK_BYTES = 8 << 20  # streamed in pieces of this size: a file is never all in memory


class Location:
    """A directory at a path or URI: put, get, stream files in and out, list."""

    def __init__(self, uri: str | os.PathLike):
        import pyarrow.fs as pafs

        if not isinstance(uri, (str, os.PathLike)) or not str(uri):
            raise InvalidArgumentError(f"a storage location must be a path or a URI such as s3://bucket/prefix, "
                                       f"got {uri!r}", field="uri")
        text = str(uri)
        self.uri = text
        if "://" not in text:
            self.fs, self.root = pafs.LocalFileSystem(), str(Path(text).expanduser().resolve())
        else:
            try:
                self.fs, root = pafs.FileSystem.from_uri(text)
            except (ValueError, OSError, TypeError) as exc:
                raise InvalidArgumentError(f"cannot use storage URI {text!r}: {exc}; expected a local path, "
                                           f"file:///absolute/path, s3://bucket/prefix or gs://bucket/prefix",
                                           field="uri") from None
            self.root = root.rstrip("/")
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def __repr__(self) -> str:
        return f"Location({self.uri!r})"

    def _key(self, rel: str) -> str:
        rel = rel.strip("/")
        if not rel or any(part in ("", ".", "..") for part in rel.split("/")):
            raise ValueError(f"not a relative key: {rel!r}")
        return f"{self.root}/{rel}" if self.root else rel

    def _parent(self, key: str) -> None:
        if self.local:  # object stores have no directories to make
            self.fs.create_dir(key.rsplit("/", 1)[0], recursive=True)

    def size(self, rel: str) -> int | None:
        """The object's size in bytes, or None when there is none."""
        import pyarrow.fs as pafs

        info = self.fs.get_file_info(self._key(rel))
        return info.size if info.type == pafs.FileType.File else None

    def list(self, rel_dir: str) -> dict[str, int]:
        """Names (relative to ``rel_dir``) and sizes of the objects under ``rel_dir``, recursively."""
        import pyarrow.fs as pafs

        base = self._key(rel_dir)
        infos = self.fs.get_file_info(pafs.FileSelector(base, allow_not_found=True, recursive=True))
        return {i.path[len(base) + 1:]: i.size for i in infos if i.type == pafs.FileType.File}

    def put_bytes(self, rel: str, data: bytes) -> None:
        """Write one object. On a local file system it appears whole or not at all (written aside, then
        renamed); object stores make a single PUT visible whole."""
        key = self._key(rel)
        self._parent(key)
        target = key
        if self.local:
            target = f"{key}.tmp-{uuid.uuid4().hex}"
        try:
            with self.fs.open_output_stream(target) as out:
                out.write(data)
            if self.local:
                with open(target, "rb+") as f:
                    os.fsync(f.fileno())
                self.fs.move(target, key)
        except BaseException:
            if self.local:
                with contextlib.suppress(OSError):
                    self.fs.delete_file(target)
            raise

    def get_bytes(self, rel: str) -> bytes:
        try:
            with self.fs.open_input_stream(self._key(rel)) as f:
                return f.read()
        except FileNotFoundError:
            raise NotFoundError(f"{self.uri}: no object {rel!r}", kind="object", name=rel) from None

    def upload(self, local: str | os.PathLike, rel: str, length: int, *,
               on_bytes: Callable[[int], None] | None = None) -> str:
        """Copy the first ``length`` bytes of the local file to ``rel``; returns their SHA-256 (hex).

        Raises ``OSError`` when the file holds fewer bytes than ``length``."""
        key = self._key(rel)
        self._parent(key)
        with self.fs.open_output_stream(key) as out:
            digest = _copy_hashing(read_prefix(local, length), out.write, on_bytes)
        return digest.hexdigest()

    def download(self, rel: str, local: str | os.PathLike, *, size: int, sha256: str,
                 on_bytes: Callable[[int], None] | None = None, fsync: bool = True) -> None:
        """Copy ``rel`` to the local file, checking its size and SHA-256; on a mismatch the local file is
        removed and ``ValueError`` names the object. ``fsync=False`` for a copy that can be made again
        (a replica's cache), which then may not survive a power loss."""
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.fs.open_input_stream(self._key(rel)) as src, open(local, "wb") as out:
                digest = _copy_hashing(iter(lambda: src.read(CHUNK_BYTES), b""), out.write, on_bytes)
                n = out.tell()
                out.flush()
                if fsync:
                    os.fsync(out.fileno())
            if n != size or digest.hexdigest() != sha256:
                raise ValueError(f"{self.uri}: object {rel!r} holds {n} bytes with SHA-256 {digest.hexdigest()[:12]}…, "
                                 f"expected {size} bytes with {sha256[:12]}…: the copy is damaged")
        except FileNotFoundError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(local)
            raise NotFoundError(f"{self.uri}: object {rel!r} is missing", kind="object", name=rel) from None
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(local)
            raise

    def delete(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self._key(rel))


def _copy_hashing(chunks, write, on_bytes=None):
    """Write every chunk and return their SHA-256; each chunk is hashed in a second thread while it is
    written (both let go of the GIL), so the hash costs little on top of the copy."""
    from concurrent.futures import ThreadPoolExecutor

    digest = hashlib.sha256()
    with ThreadPoolExecutor(1, thread_name_prefix="gpusearch-sha256") as hasher:
        pending = None
        for chunk in chunks:
            if pending is not None:
                pending.result()
            pending = hasher.submit(digest.update, chunk)  # one thread: the chunks are hashed in order
            write(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
        if pending is not None:
            pending.result()
    return digest


def read_prefix(path, length: int):
    """The first ``length`` bytes of the file at ``path``, in pieces of at most ``CHUNK_BYTES``; ``OSError``
    when it holds fewer."""
    left = length
    with open(path, "rb") as f:
        while left > 0:
            chunk = f.read(min(CHUNK_BYTES, left))
            if not chunk:
                raise OSError(f"{path} ended {left} bytes short of the {length} bytes expected")
            left -= len(chunk)
            yield chunk


def _parts(uri) -> tuple[str, str, str, str]:
    text = str(uri)
    if "://" not in text:
        return "local", "", Path(text).expanduser().resolve().as_posix(), ""
    p = urllib.parse.urlsplit(text)
    if p.scheme == "file":
        return "local", "", Path(urllib.parse.unquote(p.path)).resolve().as_posix(), ""
    path = "/" + "/".join(x for x in p.path.split("/") if x not in ("", "."))
    if "/../" in path + "/":
        path = "/\0"  # never within anything
    return p.scheme.lower(), p.netloc.lower(), path, p.query


def join_uri(uri, rel: str) -> str:
    """The location ``rel`` below ``uri``, keeping a URI's query (its settings) at the end.

    >>> join_uri("s3://b/p?region=x", "c/d"), join_uri("/srv/bk/", "c")
    ('s3://b/p/c/d?region=x', '/srv/bk/c')
    """
    text, rel = str(uri), rel.strip("/")
    base, sep, query = text.partition("?") if "://" in text else (text, "", "")
    return f"{base.rstrip('/')}/{rel}{sep}{query}"


def within(uri, prefix) -> bool:
    """Whether the location ``uri`` is ``prefix`` or below it (same scheme, bucket and settings; local
    paths compared once resolved, so ``..`` and symbolic links cannot step out)."""
    a, b = _parts(uri), _parts(prefix)
    if a[:2] != b[:2] or a[3] != b[3]:
        return False
    return a[2] == b[2] or a[2].startswith(b[2].rstrip("/") + "/")
