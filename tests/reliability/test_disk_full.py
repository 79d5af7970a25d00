"""A full disk during writes, checkpoints and compactions, on a real small file system.

Each test mounts a tmpfs of a few MiB (root or CAP_SYS_ADMIN needed; otherwise the
tests skip, saying why), puts a collection on it with fsync on, and fills the disk
(with a ballast file that can later be shrunk or removed, freeing space). What must
hold, and is checked:

- the failing write raises ``gpusearch.fileio.DiskFullError``: an ``OSError`` with
  ``errno.ENOSPC`` whose message says the disk is full and whose ``filename`` is the
  file that could not be written;
- nothing of the rejected batch is visible, in memory or after reopening;
- every acknowledged write is there after reopening, vectors bit for bit;
- no file is left half written: the WAL cut its partial record back (a reopen finds
  no torn tail to cut), a failed checkpoint or compaction leaves no temporary file
  and no snapshot file that the manifest does not name (except, after a compaction
  whose manifest failed, the one compacted segment the next checkpoint will use), and
  a copy of the directory taken right after any failure (a crash at that moment)
  opens with exactly the acknowledged records;
- the collection opens on the full disk, and once space is freed, writes,
  checkpoints and compactions succeed.

Costs (2 shared cores): about 0.5 s for the upsert test, 1-2 s for each of the
checkpoint/compaction tests (one failed attempt per 16 KiB of free space, each
checked by opening a copy of the directory).
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest

import gpusearch as gs
from gpusearch.fileio import DiskFullError
from tmpfs import mounted_tmpfs  # tests/reliability is on sys.path under pytest

CHUNK = 64 << 10


@pytest.fixture
def small_disk(tmp_path):
    """A fresh tmpfs of 3 MiB, unmounted afterwards whatever happens."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    with mounted_tmpfs(mnt, "3m"):
        yield mnt


def fill(path: Path) -> None:
    """Grow the ballast file at ``path`` until the disk is full (to the last byte)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        for size in (CHUNK, 4096, 1):
            while True:
                try:
                    if os.write(fd, b"\xa5" * size) < size:
                        break
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)


def free(path: Path, nbytes: int) -> None:
    """Shrink the ballast by ``nbytes``."""
    size = path.stat().st_size
    os.truncate(path, max(0, size - nbytes))


def batch(b: int, n: int, dim: int) -> tuple[list[str], np.ndarray]:
    return [f"b{b}-{j}" for j in range(n)], np.random.default_rng(b).standard_normal((n, dim)).astype(np.float32)


def check_full(err: BaseException, disk: Path) -> None:
    assert isinstance(err, DiskFullError) and isinstance(err, OSError), repr(err)
    assert err.errno == errno.ENOSPC
    assert "no space left on device" in str(err) and "disk is full" in str(err)
    assert err.filename and str(err.filename).startswith(str(disk)), err.filename


def check_records(col, expected: dict[str, np.ndarray], absent=()) -> None:
    ids = sorted(expected)
    got = col.fetch(ids + list(absent))
    assert got.ids == ids, "acknowledged records are missing"
    assert got.missing == list(absent)
    np.testing.assert_array_equal(got.vectors, np.stack([expected[i] for i in ids]))
    assert len(col) == len(expected)


def snapshot_files_ok(col_dir: Path) -> None:
    """No temporary files; every file a manifest names exists; at most one unnamed (pending) segment."""
    for p in col_dir.rglob("*"):
        assert ".tmp-" not in p.name, f"temporary file left behind: {p}"
    for shard in sorted(col_dir.glob("shard-*")):
        mpath = shard / "manifest.json"
        m = json.loads(mpath.read_text()) if mpath.exists() else {"segments": []}
        named = set(m["segments"]) | {m.get("alive"), m.get("index")} - {None}
        for name in named:
            assert (shard / name).is_file(), f"{shard}: manifest names missing {name}"
        unnamed = [p.name for p in shard.iterdir()
                   if p.name.startswith(("seg-", "alive-", "index-")) and p.name not in named]
        assert len(unnamed) <= 1 and all(n.startswith("seg-") and "-c" in n for n in unnamed), unnamed


def check_reopened(col_dir: Path, expected: dict[str, np.ndarray]) -> None:
    """Opened again, the collection holds exactly ``expected``."""
    col = gs.Collection.open(col_dir, device="cpu")
    try:
        check_records(col, expected)
    finally:
        col.close()


def crash_copy_opens(col_dir: Path, scratch: Path, expected: dict[str, np.ndarray]) -> None:
    """The directory as a crash at this moment leaves it opens with exactly the acknowledged records."""
    copy = scratch / uuid.uuid4().hex
    shutil.copytree(col_dir, copy, ignore=shutil.ignore_patterns("LOCK"))
    col = gs.Collection.open(copy, device="cpu", fsync=False)
    try:
        check_records(col, expected)
    finally:  # let go without the checkpoint close() would write: the copy is thrown away
        for shard in col._shards:
            shard.close()
        col._commits.close()
        col._pool.shutdown()
    shutil.rmtree(copy)


def test_upsert_on_a_full_disk(small_disk, caplog):
    dim, n = 64, 100
    col_dir = small_disk / "col"
    col = gs.Collection.create(col_dir, dim=dim, metric="l2", shards=2, device="cpu", fsync=True)
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"")
    fill(ballast)
    free(ballast, 600 << 10)  # room for ~20 batches of 100 x 64 float32
    expected, rejected = {}, None
    for b in range(200):
        ids, x = batch(b, n, dim)
        try:
            col.upsert(ids, x)
        except OSError as exc:
            err, rejected = exc, ids
            break
        expected.update(zip(ids, x))
    assert rejected is not None, "the disk never filled up"
    assert len(expected) >= 5 * n  # several batches went in before
    check_full(err, small_disk)
    assert "wal" in str(err.filename) or "commits" in str(err.filename)
    check_records(col, expected, absent=rejected)  # in memory: nothing of the rejected batch
    q = np.stack([expected[f"b0-{j}"] for j in range(3)])
    assert col.search(q, k=1).ids == [["b0-0"], ["b0-1"], ["b0-2"]]  # still answers

    col.close()  # its checkpoint fails on the full disk: a warning, and the files are released
    snapshot_files_ok(col_dir)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gpusearch"):
        col = gs.Collection.open(col_dir, device="cpu")  # opens on the full disk
    assert not [r for r in caplog.records if "cutting" in r.getMessage()], "a partial WAL record was left behind"
    check_records(col, expected, absent=rejected)

    ballast.unlink()  # free space: writes, checkpoints and compactions work again
    col.upsert(rejected, batch(b, n, dim)[1])
    expected.update(zip(rejected, batch(b, n, dim)[1]))
    col.delete(ids=[f"b0-{j}" for j in range(n)])
    for j in range(n):
        expected.pop(f"b0-{j}")
    col.checkpoint()
    col.compact()
    col.close()
    check_reopened(col_dir, expected)
    snapshot_files_ok(col_dir)


@pytest.mark.parametrize("step", ["checkpoint", "compact"])
def test_checkpoint_and_compaction_on_a_full_disk(small_disk, tmp_path, step):
    """Try the step once per 16 KiB freed: every failure leaves a collection that works and reopens whole."""
    dim, n = 16, 200
    col_dir = small_disk / "col"
    col = gs.Collection.create(col_dir, dim=dim, metric="l2", index="IVF4,Flat", shards=2, device="cpu", fsync=True)
    expected = {}
    for b in range(3):
        ids, x = batch(b, n, dim)
        col.upsert(ids, x, metadata=[{"batch": b, "text": "padding " * 4}] * n)
        expected.update(zip(ids, x))
    if step == "compact":
        col.checkpoint()
    doomed = [f"b1-{j}" for j in range(0, n, 2)]
    col.delete(ids=doomed)
    for i in doomed:
        expected.pop(i)
    ids, x = batch(7, 20, dim)
    col.upsert([f"b0-{j}" for j in range(20)], x)  # overwrites
    expected.update(zip([f"b0-{j}" for j in range(20)], x))

    ballast = small_disk / "ballast"
    ballast.write_bytes(b"")
    fill(ballast)
    failures, failed_on = 0, set()
    for _ in range(400):
        try:
            getattr(col, step)()
        except OSError as exc:
            check_full(exc, small_disk)
            failures += 1
            failed_on.add(Path(exc.filename).name.split("-")[0].split(".")[0])
            snapshot_files_ok(col_dir)
            check_records(col, expected)  # memory still right
            crash_copy_opens(col_dir, tmp_path, expected)
            free(ballast, 16 << 10)
            continue
        break
    else:
        pytest.fail(f"{step} never succeeded")
    # It failed writing the segment, and also later, on the alive bitmap, the index or the manifest.
    assert "seg" in failed_on and failed_on & {"alive", "index", "manifest"}, failed_on
    snapshot_files_ok(col_dir)
    check_records(col, expected)
    col.close()
    col = gs.Collection.open(col_dir, device="cpu")
    try:
        check_records(col, expected)
        ballast.unlink()
        ids, x = batch(9, 50, dim)
        col.upsert(ids, x)
        expected.update(zip(ids, x))
    finally:
        col.close()
    check_reopened(col_dir, expected)
