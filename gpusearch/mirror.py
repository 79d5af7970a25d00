"""Replicas that share no file system with the writer: one shard's files copied over any transport.

A :class:`gpusearch.replica.ShardFollower` follows a writer by reading its files.
On one machine (or with NFS) those are the writer's own files. Without a shared
file system, a :class:`ShardMirror` keeps a local copy of exactly the files one
shard's follower reads (``collection.json``, ``schema.json``, the commit log, and
the shard's manifest, segments, alive bitmap, FAISS index and WAL), and the
follower reads that copy. The copy is made from answers of :func:`sync_answer`,
which runs beside the writer's :class:`gpusearch.Collection`; the transport
between them is the caller's (a Ray actor call in the served app, a plain
function call in tests).

>>> import numpy as np, tempfile, gpusearch as gs
>>> from gpusearch.replica import ShardFollower
>>> col = gs.Collection.create(tempfile.mkdtemp() + "/docs", dim=2, device="cpu", fsync=False)
>>> _ = col.upsert(["a"], np.array([[1, 0]], "float32"))
>>> m = ShardMirror(tempfile.mkdtemp() + "/docs", 0, lambda *a: sync_answer(col, 0, *a))
>>> m.sync()
True
>>> f = ShardFollower.open(m.path, 0, device="cpu")
>>> _ = col.upsert(["b"], np.array([[0, 1]], "float32"))
>>> _ = m.sync(); f.refresh() == col.stats()["sequence"], f.search([0, 1], k=1).ids.tolist()
(True, [['b']])
>>> f.close(); col.close()

Consistency
-----------
The writer's side answers under the collection's write lock, so the file set it
describes is one the writer's directory really held between two writes (no
append, checkpoint or compaction half done); it opens the files it will send
under the lock and reads them after it, so a checkpoint that deletes one meanwhile
does not matter (an open file stays readable). Files are of three kinds:

- replaced whole (``collection.json``, ``schema.json``, ``manifest.json``, WAL seals):
  sent whole, written atomically;
- append-only (WAL and commit-log files): only the bytes past the copy's length;
- immutable (segments, bitmaps, indexes): sent once, in pieces of at most ``budget`` bytes.

A copy changes only once it has every byte of one answer's file set (pieces of a
large file are staged aside across several calls), and then in the order the writer
itself writes: new immutable files, WAL and commit-log bytes, seals, ``schema.json``,
the manifest, and only then deletions. So a follower reading the copy meanwhile
sees what it could have seen on the writer's own disk.

The writer's ``epoch`` changes when it reopens the collection (a restart). Recovery
may then have cut a torn WAL tail and gone on appending at the cut, so a copy
made in another epoch sends no lengths for append-only files and gets them whole.
A collection dropped and created again under the name (another ``collection.json``)
is copied afresh.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any, Callable

from .errors import CollectionNotFoundError
from .fileio import atomic_write_bytes

__all__ = ["ShardMirror", "sync_answer", "unchanged_answer", "BUDGET_BYTES"]

log = logging.getLogger(__name__)

BUDGET_BYTES = 64 << 20  # most bytes of files one answer carries (besides small whole files)
_STAGING = ".mirror-staging"
_APPENDED = re.compile(r"(^|/)wal-\d+\.log$")
_SEAL = ".sealed"


def _kind(rel: str) -> str:
    if _APPENDED.search(rel):
        return "append"
    name = rel.rsplit("/", 1)[-1]
    if name.startswith(("seg-", "alive-", "index-")):
        return "immutable"
    return "whole"


def _token(col, s) -> list:
    return [col._seq, int((s._manifest or {}).get("generation", 0)), [(p.name, n) for p, n in s.wal.files()],
            [(p.name, n) for p, n in col._commits.files()]]


def unchanged_answer(col, shard: int, epoch: str | None, token: list | None) -> dict | None:
    """:func:`sync_answer`'s answer when nothing changed since ``token``, else None. Takes no lock held
    for longer than a WAL append (an event loop may call it)."""
    if not isinstance(shard, int) or not 0 <= shard < len(col._shards):
        raise ValueError(f"shard must be in [0, {len(col._shards)}), got {shard!r}")
    if token is not None and epoch == col.epoch and token == _token(col, col._shards[shard]):
        return {"epoch": col.epoch, "unchanged": True, "token": token}
    return None


def sync_answer(col, shard: int, have: dict[str, int], epoch: str | None, token: list | None = None, *,
                budget: int = BUDGET_BYTES) -> dict[str, Any]:
    """What the mirror of shard ``shard`` of ``col`` needs, given the lengths ``have`` of its files
    (relative paths) made in the writer's ``epoch``. See the module docstring. Returns ``epoch``,
    ``files`` (the full file set: relative path -> length), ``whole`` (relative path -> bytes of the
    small files replaced whole), ``pieces`` ([relative path, offset, bytes] of the others, at most
    about ``budget`` bytes in all), ``complete`` (whether the pieces finish every file) and ``token``.

    ``token`` is what the copy's last complete answer said: when nothing was written, checkpointed or
    compacted since (the same sequence number, manifest generation and log lengths) the answer is just
    ``{"epoch", "unchanged": True, "token"}``, without taking the write lock. That is safe for
    read-your-writes: a write is acknowledged only once its records are complete, under the lock
    that the answer which produced the token was computed under."""
    quick = unchanged_answer(col, shard, epoch, token)
    if quick is not None:
        return quick
    same_epoch = epoch == col.epoch
    have_len = {rel: v for rel, v in have.items() if isinstance(v, int)}
    s = col._shards[shard]
    files: dict[str, int] = {}
    whole: dict[str, bytes] = {}
    opened: dict[str, Any] = {}
    try:
        with col._write_lock:
            col._check_open()
            now = _token(col, s)
            for name in ("collection.json", "schema.json"):
                with contextlib.suppress(FileNotFoundError):
                    whole[name] = (col.path / name).read_bytes()
            base = s.path.name

            def add(rel: str, path: Path, size: int) -> None:
                files[rel] = size
                mine = have.get(rel)
                if isinstance(mine, (list, tuple)):  # a seed: [size, SHA-256], taken only when both match
                    if mine[0] == size and _known_sha256(col, rel, path, size) == mine[1]:
                        return
                    have_len[rel] = 0
                    opened[rel] = open(path, "rb")
                elif mine != size or (_kind(rel) == "append" and not same_epoch):
                    opened[rel] = open(path, "rb")  # readable after the lock even if deleted meanwhile

            mpath = s.path / "manifest.json"
            if mpath.exists():
                data = mpath.read_bytes()
                whole[f"{base}/manifest.json"] = data
                m = json.loads(data)
                for name in [*m.get("segments", []), m.get("alive"), m.get("index")]:
                    if name:
                        add(f"{base}/{name}", s.path / name, (s.path / name).stat().st_size)
            for prefix, wal in ((f"{base}/wal", s.wal), ("commits", col._commits)):
                for path, size in wal.files():
                    add(f"{prefix}/{path.name}", path, size)
                    seal = path.with_name(path.name + _SEAL)
                    with contextlib.suppress(FileNotFoundError):
                        whole[f"{prefix}/{seal.name}"] = seal.read_bytes()
        pieces, left, complete = [], budget, True
        for rel in sorted(opened, key=lambda r: (_kind(r) != "append", r)):  # the log first: it is what is new
            size = files[rel]
            start = have_len.get(rel, 0) if (same_epoch or _kind(rel) != "append") else 0
            if start > size:  # the copy is longer: not this file any more (a new collection, or a cut tail)
                start = 0
            n = min(size - start, max(left, 0))
            if n < size - start:
                complete = False
            if n > 0:
                f = opened[rel]
                f.seek(start)
                pieces.append([rel, start, f.read(n)])
                left -= n
            elif start == 0 and size == 0:
                pieces.append([rel, 0, b""])
    finally:
        for f in opened.values():
            f.close()
    return {"epoch": col.epoch, "files": files, "whole": whole, "pieces": pieces, "complete": complete,
            "token": now if complete else None}


def _known_sha256(col, rel: str, path: Path, size: int) -> str | None:
    """The SHA-256 of an immutable file of ``col`` when a snapshot or rebuild already hashed it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return col._backup_hashes.get((rel, size, st.st_ino, st.st_mtime_ns))


class ShardMirror:
    """A local copy of what one shard's follower reads, at ``path`` (the collection's directory here).

    ``fetch(have, epoch, token)`` returns :func:`sync_answer`'s answer from the writer, wherever it is, or
    raises :class:`~gpusearch.errors.CollectionNotFoundError` when the collection is gone. Thread-safe:
    one sync at a time."""

    def __init__(self, path, shard: int, fetch: Callable[[dict, str | None, list | None], dict]):
        self.path = Path(path)
        self.shard = int(shard)
        self._fetch = fetch
        self._base = f"shard-{self.shard:03d}"
        self.epoch: str | None = None
        self._token: list | None = None  # of the last complete answer applied
        self._staged: dict[str, int] = {}  # relative path -> bytes staged so far (immutable files)
        self._deltas: dict[str, tuple[int, bytearray]] = {}  # append-only: start offset, staged bytes
        # Files fetched from somewhere else than the writer (a snapshot at a storage URI), staged, and
        # used only once the writer says it has a file of that name, size and SHA-256: path -> (size, sha).
        self._seeds: dict[str, tuple[int, str]] = {}
        self._lock = threading.Lock()
        self.syncs = 0
        self.bytes_received = 0
        self.seeded_bytes = 0

    def _local(self) -> dict[str, int]:
        """Lengths of the files of the copy that the writer's answer describes."""
        out = {}
        for d, prefix in ((self.path / self._base, self._base), (self.path / self._base / "wal", f"{self._base}/wal"),
                          (self.path / "commits", "commits")):
            with contextlib.suppress(FileNotFoundError):
                for p in d.iterdir():
                    if p.is_file() and _kind(p.name) != "whole":
                        out[f"{prefix}/{p.name}"] = p.stat().st_size
        return out

    def seed(self, rel: str, size: int, sha256: str) -> Path:
        """Where to put a copy of the writer's immutable file ``rel`` got elsewhere (``size`` bytes with
        ``sha256``, checked by the caller): the next sync offers it, and the writer sends the file only
        when it has none of that name, size and hash."""
        if _kind(rel) != "immutable":
            raise ValueError(f"only segments, bitmaps and indexes can be seeded, got {rel!r}")
        self._seeds[rel] = (int(size), str(sha256))
        return self.path / _STAGING / rel

    def _have(self) -> dict:
        staging = self.path / _STAGING
        have: dict = {rel: [size, sha] for rel, (size, sha) in self._seeds.items()
                      if os.path.isfile(staging / rel) and os.path.getsize(staging / rel) == size}
        have.update(self._local())
        have.update(self._staged)
        for rel, (start, data) in self._deltas.items():
            have[rel] = start + len(data)
        return have

    def sync(self, max_calls: int = 1000) -> bool:
        """Bring the copy up to the writer's files as of one answer; True when something changed.
        Raises ``CollectionNotFoundError`` (and removes the copy) once the writer has no such collection."""
        with self._lock:
            for _ in range(max_calls):
                try:
                    ans = self._fetch(self._have(), self.epoch, self._token)
                except CollectionNotFoundError:
                    self._remove()
                    self._token = None
                    raise
                self.syncs += 1
                if ans.get("unchanged") and ans["epoch"] == self.epoch:
                    return False
                self._token = None
                if ans["epoch"] != self.epoch:
                    self._staged.clear()
                    self._deltas.clear()
                if self._replaced(ans):
                    log.info("%s: the collection was created anew; copying it afresh", self.path)
                    self._remove()
                    self._staged.clear()
                    self._deltas.clear()
                    self._seeds.clear()
                    self.epoch = None
                    continue
                self._take(ans)
                self.epoch = ans["epoch"]
                if ans["complete"]:
                    changed = self._apply(ans)
                    self._token = ans.get("token")
                    return changed
            raise RuntimeError(f"{self.path}: no complete copy of shard {self.shard} after {max_calls} answers")

    def _replaced(self, ans: dict) -> bool:
        try:
            mine = (self.path / "collection.json").read_bytes()
        except FileNotFoundError:
            return False
        return ans["whole"].get("collection.json") not in (None, mine)

    def _take(self, ans: dict) -> None:
        staging = self.path / _STAGING
        for rel, start, data in ans["pieces"]:
            self.bytes_received += len(data)
            self._seeds.pop(rel, None)  # the writer sends it: its own bytes replace the seed
            if _kind(rel) == "append":
                cur = self._deltas.get(rel)
                if cur is None or cur[0] + len(cur[1]) != start:
                    cur = (start, bytearray())
                cur[1].extend(data)
                self._deltas[rel] = cur
            else:
                dst = staging / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                mode = "r+b" if dst.exists() and start > 0 else "wb"
                with open(dst, mode) as f:
                    f.seek(start)
                    f.write(data)
                    f.truncate(start + len(data))
                self._staged[rel] = start + len(data)

    def _apply(self, ans: dict) -> bool:
        files, whole = ans["files"], ans["whole"]
        changed = False
        staging = self.path / _STAGING
        (self.path / self._base / "wal").mkdir(parents=True, exist_ok=True)
        (self.path / "commits").mkdir(parents=True, exist_ok=True)
        # 1. collection.json first of all (a new copy), then new immutable files
        if "collection.json" in whole and not (self.path / "collection.json").exists():
            atomic_write_bytes(self.path / "collection.json", whole["collection.json"])
            changed = True
        for rel in sorted(self._staged):
            if rel in files and self._staged[rel] == files[rel]:
                os.replace(staging / rel, self.path / rel)
                changed = True
        self._staged.clear()
        for rel, (size, _sha) in sorted(self._seeds.items()):  # the writer took them: same name, size, hash
            if files.get(rel) == size and (staging / rel).exists() and not (self.path / rel).exists():
                os.replace(staging / rel, self.path / rel)
                self.seeded_bytes += size
                changed = True
        self._seeds.clear()
        # 2. the logs: shard WAL before the commit log, as the writer appends them
        for rel in sorted(self._deltas, key=lambda r: (r.startswith("commits/"), r)):
            start, data = self._deltas[rel]
            if rel not in files:
                continue
            dst = self.path / rel
            with open(dst, "r+b" if dst.exists() else "wb") as f:
                f.seek(start)
                f.write(data)
                f.truncate(start + len(data))
            changed = changed or bool(data) or start == 0
        self._deltas.clear()
        # 3. files replaced whole: seals, the schema, then the manifest
        rank = lambda r: 2 if r.endswith("manifest.json") else 1 if r == "schema.json" else 0  # noqa: E731
        order = sorted((r for r in whole if r != "collection.json"), key=lambda r: (rank(r), r))
        for rel in order:
            dst = self.path / rel
            try:
                same = dst.read_bytes() == whole[rel]
            except FileNotFoundError:
                same = False
            if not same:
                atomic_write_bytes(dst, whole[rel])
                changed = True
        # 4. deletions last: what the writer no longer has
        keep = set(files) | set(whole)
        for rel in self._local():
            if rel not in keep:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path / rel)
                changed = True
        for prefix in (self._base + "/wal", "commits"):
            d = self.path / prefix
            for p in list(d.glob("*" + _SEAL)):
                if f"{prefix}/{p.name}" not in whole:
                    p.unlink()
        shutil.rmtree(staging, ignore_errors=True)
        return changed

    def _remove(self) -> None:
        if self.path.exists():
            trash = self.path.with_name(f".{self.path.name}.gone-{uuid.uuid4().hex}")
            os.replace(self.path, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def close(self) -> None:
        pass
