"""Backups of a collection at a storage location (a path or URI; see :mod:`gpusearch.storage`).

>>> import numpy as np, tempfile, gpusearch as gs
>>> root = tempfile.mkdtemp()
>>> col = gs.Collection.create(root + "/docs", dim=2, device="cpu", fsync=False)
>>> _ = col.upsert(["a", "b"], np.array([[1, 0], [0, 1]], "float32"))
>>> info = col.backup(root + "/backups")
>>> _ = col.upsert(["c"], np.array([[1, 1]], "float32"))  # after the backup: not in it
>>> restored = restore(root + "/backups", root + "/copy")
>>> back = gs.Collection.open(root + "/copy", device="cpu")
>>> len(back), back.stats()["sequence"] == info["sequence"]
(2, True)
>>> back.close(); col.close()

What a backup is
----------------
A consistent point-in-time copy: the collection exactly as it stood after the
write with sequence number ``sequence`` and before the next one. It is taken
while writes go on: under the collection's write lock (held for as long as it
takes to hard-link a few files, not to copy them) the backup notes the
sequence number, each shard's manifest and the files it names (segments, alive
bitmap, FAISS index), and how many bytes each WAL file and the commit log hold;
it pins them with hard links in ``<collection>/.backup-pins/`` so that a
checkpoint or a compaction running meanwhile cannot delete them. Then, with
writes flowing again, it copies the pinned files (the WAL files only up to the
noted length) to the location and removes the pins. A restore is the
collection's directory as a crash at that instant would have left it with every
write synced: opening it replays the WAL tail after the snapshot.

Layout at the location::

    blobs/<sha256[:2]>/<sha256>    every file's bytes, named by their SHA-256
    backups/<id>.json              one manifest per backup, written last

Files are content-addressed, so a backup to a location that already holds an
older backup of the collection uploads only what changed since (new segments,
the new bitmaps and index, the WAL tail): that is the incremental backup. The
manifest lists each file's path in the collection directory, size and SHA-256;
it is written after every blob it names is in place, so a backup that stops
half-way (a crash, a full bucket, Ctrl-C) leaves blobs that no manifest names
and nothing that restores as if complete. A restore checks every byte against
the manifest's hashes and builds the collection aside, renaming it into place
only when it is whole.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from .fileio import fsync_dir, is_temp_file, read_json
from .progress import progress
from .storage import Location, read_prefix

__all__ = ["BACKUP_FORMAT_VERSION", "PINS_DIR", "backup", "list_backups", "restore"]

log = logging.getLogger(__name__)

BACKUP_FORMAT_VERSION = 1
PINS_DIR = ".backup-pins"
_CONFIG = "collection.json"


def _blob_key(sha: str) -> str:
    return f"blobs/{sha[:2]}/{sha}"


def _pin_file(src: Path, dst: Path, length: int) -> None:
    """Keep ``length`` bytes of ``src`` readable at ``dst`` even if ``src`` is deleted: a hard link
    (the bytes are not copied), or a copy of the prefix where links are not possible."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        with open(dst, "wb") as b:
            for chunk in read_prefix(src, length):
                b.write(chunk)


def _pin(col, pins: Path) -> tuple[int, int, list[tuple[str, Path, int]]]:
    """Under the collection's write lock: the sequence number, the record count and the files of a
    consistent copy, as (path in the collection directory, pinned path, bytes to copy)."""
    files: list[tuple[str, Path, int]] = []

    def pin(rel: str, src: Path, length: int) -> None:
        if length <= 0:
            return
        dst = pins / rel
        _pin_file(src, dst, length)
        files.append((rel, dst, length))

    with col._write_lock:
        col._check_open()
        seq, records = col._seq, len(col)
        for p in sorted(col.path.iterdir()):
            if p.is_file() and not p.name.startswith(".") and not is_temp_file(p):
                dst = pins / p.name  # small files that are replaced, not appended to: a copy
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, dst)
                files.append((p.name, dst, dst.stat().st_size))
        for shard in col._shards:
            d = shard.path
            base = d.name
            mpath = d / "manifest.json"
            if mpath.exists():
                m = read_json(mpath)  # what is on disk: with the WAL below, what a reopen would see
                pin(f"{base}/manifest.json", mpath, mpath.stat().st_size)
                for name in [*m.get("segments", []), m.get("alive"), m.get("index")]:
                    if name:
                        pin(f"{base}/{name}", d / name, (d / name).stat().st_size)
            for path, size in shard.wal.files():
                pin(f"{base}/wal/{path.name}", path, size)
        for path, size in col._commits.files():
            pin(f"commits/{path.name}", path, size)
    return seq, records, files


def backup(col, uri, *, note: str | None = None, extra: dict | None = None) -> dict[str, Any]:
    """Copy ``col`` (an open, writable :class:`gpusearch.Collection`) to the location ``uri``; see the
    module docstring. Writes go on meanwhile. Returns the manifest's summary: ``id``, ``sequence``,
    ``records``, ``bytes`` (the backup's size), ``uploaded_bytes`` (what this backup had to copy: less
    than ``bytes`` when an older backup at ``uri`` holds files it shares), ``seconds``, and
    ``writes_paused_s`` (how long the write lock was held to pin the files).
    ``extra``: more fields for the manifest (:mod:`gpusearch.durable` notes the Writer's term).
    Use :meth:`gpusearch.Collection.backup`."""
    loc = Location(uri)
    if loc.local and _inside(Path(loc.root), col.path):
        raise InvalidArgumentError(f"back up to a location outside the collection's directory {col.path}, got "
                                   f"{uri!r}", field="uri")
    t0 = time.perf_counter()
    pins = col.path / PINS_DIR / uuid.uuid4().hex
    try:
        t_pin = time.perf_counter()
        seq, records, files = _pin(col, pins)
        pin_s = time.perf_counter() - t_pin  # how long writes waited on the backup
        stamp = datetime.now(timezone.utc)
        backup_id = f"{stamp:%Y%m%dT%H%M%S%fZ}-{seq:020d}"
        total = sum(n for _, _, n in files)
        entries, uploaded = [], 0
        with progress(total, f"backing up {col.path.name}", unit="B", min_total=64 << 20) as bar:
            hashes, kept = col._backup_hashes, {}  # immutable file -> SHA-256, from the last backup
            for rel, pinned, length in files:
                st = os.stat(pinned)
                mark = (rel, length, st.st_ino, st.st_mtime_ns)  # a hard link: the original's inode and mtime
                sha = hashes.get(mark) if _immutable(rel) else None
                if sha is None:
                    sha = _sha256_prefix(pinned, length)
                if _immutable(rel):
                    kept[mark] = sha
                key = _blob_key(sha)
                if loc.size(key) != length:  # not there yet (or a copy cut short by an earlier failure)
                    got = loc.upload(pinned, key, length, on_bytes=bar.update)
                    if got != sha:
                        raise OSError(f"{pinned} changed while it was copied (a pinned file must not): retry")
                    uploaded += length
                else:
                    bar.update(length)
                entries.append({"path": rel, "size": length, "sha256": sha})
        manifest = {
            "format_version": BACKUP_FORMAT_VERSION,
            "id": backup_id,
            "created_at": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "sequence": seq,
            "records": records,
            "source": str(col.path),
            "config": col._config,
            "bytes": total,
            "files": entries,
        }
        if note is not None:
            manifest["note"] = str(note)
        if extra:
            manifest["extra"] = dict(extra)
        loc.put_bytes(f"backups/{backup_id}.json", json.dumps(manifest, indent=1).encode())  # the commit point
        col._backup_hashes = kept
    finally:
        shutil.rmtree(pins, ignore_errors=True)
    secs = time.perf_counter() - t0
    log.info("collection %s: backup %s (sequence %d, %d records, %d bytes, %d uploaded) at %s in %.1f s",
             col.path, backup_id, seq, records, total, uploaded, uri, secs)
    return {"id": backup_id, "uri": str(uri), "sequence": seq, "records": records, "bytes": total,
            "uploaded_bytes": uploaded, "files": len(entries), "seconds": round(secs, 3),
            "writes_paused_s": round(pin_s, 4)}


def _immutable(rel: str) -> bool:
    """Segments, bitmaps and indexes: written once under a name no other content ever gets."""
    return rel.rsplit("/", 1)[-1].startswith(("seg-", "alive-", "index-"))


def _inside(root: Path, path: Path) -> bool:
    return root.resolve().is_relative_to(path.resolve())


def _sha256_prefix(path: Path, length: int) -> str:
    import hashlib

    digest = hashlib.sha256()
    for chunk in read_prefix(path, length):
        digest.update(chunk)
    return digest.hexdigest()


def _manifests(loc: Location) -> list[dict]:
    """The complete backups at ``loc``, oldest first. A manifest that does not parse or names no files
    (a write cut short on a store without atomic writes) is skipped with a warning."""
    out = []
    for name in sorted(loc.list("backups")):
        if not name.endswith(".json") or "/" in name:
            continue
        try:
            m = json.loads(loc.get_bytes(f"backups/{name}"))
            if not isinstance(m, dict) or not isinstance(m.get("files"), list) or "sequence" not in m:
                raise ValueError("not a backup manifest")
        except (ValueError, UnicodeDecodeError) as exc:
            log.warning("%s: skipping backups/%s, which is not a complete backup manifest (%s)", loc.uri, name, exc)
            continue
        if not isinstance(m.get("format_version"), int) or m["format_version"] > BACKUP_FORMAT_VERSION:
            log.warning("%s: skipping backup %s, written by a newer gpusearch (format %s)", loc.uri,
                        m.get("id"), m.get("format_version"))
            continue
        out.append(m)
    return out


def list_backups(uri) -> list[dict[str, Any]]:
    """The complete backups at ``uri``, oldest first: ``id``, ``created_at``, ``sequence``, ``records``,
    ``bytes``, ``source``."""
    return [{k: m.get(k) for k in ("id", "created_at", "sequence", "records", "bytes", "source")}
            for m in _manifests(Location(uri))]


def restore(uri, path, *, backup_id: str | None = None, shards: int | None = None,
            work_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Make a new collection at ``path`` from the backup ``backup_id`` at ``uri`` (the newest complete one
    when None). ``path`` must not exist. ``shards``, when given, is the shard count the caller expects
    (a served catalog's): a backup with another count is refused. Returns the backup's summary and
    ``seconds``. Every file is checked against its SHA-256; the collection is assembled in a directory
    beside ``path`` (in ``work_dir`` when given: on the same file system, where nobody lists collections)
    and renamed into place when complete, so an interrupted restore leaves no collection."""
    t0 = time.perf_counter()
    loc = Location(uri)
    path = Path(path)
    found = _manifests(loc)
    if backup_id is None:
        if not found:
            raise NotFoundError(f"{uri}: no complete backup here", kind="backup", name=str(uri))
        m = found[-1]
    else:
        m = next((x for x in found if x.get("id") == backup_id), None)
        if m is None:
            raise NotFoundError(f"{uri}: no complete backup {backup_id!r}; complete ones: "
                                f"{', '.join(x['id'] for x in found) or 'none'}", kind="backup", name=backup_id)
    n_shards = (m.get("config") or {}).get("shards")
    if shards is not None and n_shards != shards:
        raise InvalidArgumentError(f"backup {m['id']} has {n_shards} shards; this server's collections have {shards}",
                                   field="backup")
    if path.exists():
        raise AlreadyExistsError(f"{path} already exists; restore to a new name or path")
    files = m["files"]
    for e in files:
        rel = e.get("path", "")
        if not isinstance(rel, str) or rel.startswith("/") or ".." in rel.split("/"):
            raise ValueError(f"{uri}: backup {m['id']} names a file outside the collection: {rel!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = (Path(work_dir) if work_dir is not None else path.parent) / f".{path.name}.restoring-{uuid.uuid4().hex}"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        with progress(int(m.get("bytes") or 0), f"restoring {path.name}", unit="B", min_total=64 << 20) as bar:
            # collection.json last: a directory without it is not a collection to anyone who lists them
            for e in sorted(files, key=lambda e: e["path"] == _CONFIG):
                loc.download(_blob_key(e["sha256"]), tmp / e["path"], size=e["size"], sha256=e["sha256"],
                             on_bytes=bar.update)
        for d in [tmp, *sorted({(tmp / e["path"]).parent for e in files})]:
            fsync_dir(d)
        if path.exists():
            raise AlreadyExistsError(f"{path} appeared while restoring; restore to a new name or path")
        os.rename(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    secs = time.perf_counter() - t0
    log.info("restored backup %s (sequence %d, %d records) from %s to %s in %.1f s", m["id"], m["sequence"],
             m.get("records", 0), uri, path, secs)
    return {"id": m["id"], "uri": str(uri), "path": str(path), "sequence": m["sequence"],
            "records": m.get("records"), "bytes": m.get("bytes"), "seconds": round(secs, 3)}


def remove_stale_pins(collection_path: Path) -> None:
    """Pins of a backup that a crash interrupted (called by the collection's writer on open, which holds
    its locks, so no backup of this collection is under way)."""
    pins = Path(collection_path) / PINS_DIR
    if pins.exists():
        with contextlib.suppress(OSError):
            shutil.rmtree(pins)
            log.info("collection %s: removed the pins of an interrupted backup", collection_path)
