"""Backups at a storage location (gpusearch.backup, gpusearch.storage): consistent under a stream of writes,
incremental, checked on restore, and nothing that restores as complete after an interrupted backup.

The S3 cases run against a real S3-protocol server (moto's server mode, a separate process on a free
loopback port) through pyarrow's S3 client: the same code path as AWS or MinIO."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import gpusearch as gs
from gpusearch.backup import PINS_DIR, _manifests
from gpusearch.cli import main as cli_main
from gpusearch.errors import AlreadyExistsError, NotFoundError
from gpusearch.storage import Location

DIM = 8


def _vecs(rng, n):
    return rng.standard_normal((n, DIM)).astype("float32")


def state(col) -> dict:
    """Every record: id -> (vector bytes, metadata, sparse), read through the public API."""
    ids, after = [], None
    while True:
        page, more = col.list_ids(after=after, limit=1000)
        ids += page
        if not more:
            break
        after = page[-1]
    out = {}
    for start in range(0, len(ids), 500):
        f = col.fetch(ids[start:start + 500])
        for i, rid in enumerate(f.ids):
            sp = f.sparse[i] if f.sparse else None
            out[rid] = (f.vectors[i].tobytes(), json.dumps(f.metadata[i], sort_keys=True),
                        None if sp is None else (tuple(sp.indices.tolist()), tuple(sp.values.tolist())))
    return out


def _collection(path, **kw):
    kw = {"dim": DIM, "metric": "ip", "shards": 2, "device": "cpu", "fsync": False, **kw}
    return gs.Collection.create(path, **kw)


def _fill(col, rng, n=300, start=0):
    ids = [f"r{i}" for i in range(start, start + n)]
    meta = [{"n": i, "tag": "even" if i % 2 == 0 else "odd"} for i in range(start, start + n)]
    return col.upsert(ids, _vecs(rng, n), meta)


def test_backup_restores_every_record_snapshot_and_wal_tail(tmp_path):
    rng = np.random.default_rng(0)
    col = _collection(tmp_path / "src")
    _fill(col, rng, 400)
    col.checkpoint()  # segments on disk ...
    _fill(col, rng, 100, start=400)  # ... and a WAL tail after them
    col.delete(["r1", "r2", "r450"])
    col.update("r3", set_metadata={"tag": "changed"})
    col.upsert(["s1"], _vecs(rng, 1), sparse_values=[{"indices": [3, 7], "values": [0.5, 2.0]}])
    info = col.backup(tmp_path / "bk")
    assert info["sequence"] == col.stats()["sequence"] and info["records"] == len(col) == 498
    assert info["uploaded_bytes"] == info["bytes"] > 0
    want = state(col)
    q = _vecs(rng, 5)
    want_hits = col.search(q, k=7)
    col.close()

    out = gs.restore(tmp_path / "bk", tmp_path / "copy")
    assert out["id"] == info["id"] and out["sequence"] == info["sequence"]
    back = gs.Collection.open(tmp_path / "copy", device="cpu")
    assert state(back) == want
    got = back.search(q, k=7)
    assert got.ids == want_hits.ids
    assert back.stats()["sequence"] == info["sequence"]
    # the restored collection is a collection of its own: it takes writes
    assert back.upsert(["new"], _vecs(rng, 1)).sequence == info["sequence"] + 1
    back.close()


def test_backup_of_an_ivf_collection_keeps_its_trained_index(tmp_path):
    rng = np.random.default_rng(1)
    col = _collection(tmp_path / "src", index="IVF4,Flat", shards=1)
    col.train(_vecs(rng, 400))
    _fill(col, rng, 400)
    col.checkpoint()
    col.backup(f"file://{tmp_path}/bk")
    q = _vecs(rng, 4)
    want = col.search(q, k=5, params=gs.IVFParams(nprobe=4))
    col.close()
    gs.restore(f"file://{tmp_path}/bk", tmp_path / "copy")
    back = gs.Collection.open(tmp_path / "copy", device="cpu")
    assert back.stats()["shards"][0]["index_trained"]
    assert back.search(q, k=5, params=gs.IVFParams(nprobe=4)).ids == want.ids
    back.close()


def test_backup_under_a_write_stream_is_the_collection_at_its_sequence(tmp_path):
    """Writes, deletes, checkpoints and a compaction run in another thread during the backups; each
    restore equals the collection replayed up to the backup's sequence number, nothing more or less."""
    rng = np.random.default_rng(2)
    col = _collection(tmp_path / "src", shards=3)
    _fill(col, rng, 200)
    col.checkpoint()
    log: list[tuple[int, str, list, np.ndarray | None]] = []  # (sequence, op, ids, vectors) acknowledged
    stop = threading.Event()
    wrote = threading.Event()
    errors = []

    counts = {"checkpoint": 0, "compact": 0}

    def writer():
        w_rng = np.random.default_rng(3)
        i, step = 1000, 0
        try:
            while not stop.is_set():
                step += 1
                ids = [f"w{i + j}" for j in range(int(w_rng.integers(1, 40)))]
                v = _vecs(w_rng, len(ids))
                log.append((col.upsert(ids, v).sequence, "upsert", ids, v))
                if step % 3 == 0:
                    victims = [f"w{i - 20}", f"r{step % 200}"]
                    log.append((col.delete(victims).sequence, "delete", victims, None))
                if step % 4 == 0:
                    col.checkpoint()
                    counts["checkpoint"] += 1
                if step % 9 == 0:
                    col.compact()
                    counts["compact"] += 1
                i += len(ids)
                wrote.set()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    base = state(col)
    t = threading.Thread(target=writer)
    t.start()
    infos = []
    try:
        for _ in range(3):
            for _ in range(12):  # a dozen writes (and some checkpoints and a compaction) between backups
                wrote.clear()
                assert wrote.wait(60), "the writer made no progress"
            infos.append(col.backup(tmp_path / "bk"))
    finally:
        stop.set()
        t.join(60)
    assert not errors, errors
    assert counts["checkpoint"] >= 3 and counts["compact"] >= 1, counts
    col.close()
    assert [i["sequence"] for i in infos] == sorted(i["sequence"] for i in infos)
    assert len({i["sequence"] for i in infos}) == 3
    for k, info in enumerate(infos):
        expect = dict(base)
        for seq, op, ids, v in log:
            if seq > info["sequence"]:
                break
            for j, rid in enumerate(ids):
                if op == "upsert":
                    expect[rid] = (v[j].tobytes(), "{}", None)
                else:
                    expect.pop(rid, None)
        gs.restore(tmp_path / "bk", tmp_path / f"copy{k}", backup_id=info["id"])
        back = gs.Collection.open(tmp_path / f"copy{k}", device="cpu")
        assert state(back) == expect, f"backup {k} at sequence {info['sequence']}"
        back.close()
    assert not (tmp_path / "src" / PINS_DIR).exists() or not any((tmp_path / "src" / PINS_DIR).iterdir())


def test_second_backup_uploads_only_what_changed(tmp_path, monkeypatch):
    import gpusearch.backup as backup_mod

    rng = np.random.default_rng(4)
    col = _collection(tmp_path / "src", shards=2)
    _fill(col, rng, 2000)
    col.checkpoint()
    first = col.backup(tmp_path / "bk")
    _fill(col, rng, 50, start=2000)
    col.checkpoint()
    hashed = []
    real = backup_mod._sha256_prefix
    monkeypatch.setattr(backup_mod, "_sha256_prefix", lambda p, n: hashed.append(p.name) or real(p, n))
    second = col.backup(tmp_path / "bk")
    monkeypatch.undo()
    # the segments the first backup hashed are not read again: only the new ones and the small files
    assert not any(name in hashed for name in
                   [e["path"].rsplit("/", 1)[-1] for e in _manifests(Location(tmp_path / "bk"))[0]["files"]
                    if "/seg-" in e["path"]]), hashed
    assert second["bytes"] > first["bytes"]
    # the 2,000-row segments are already there: what is new is the 50 rows' segments, bitmaps, manifests
    assert second["uploaded_bytes"] < first["bytes"] / 5
    assert [b["id"] for b in gs.list_backups(tmp_path / "bk")] == [first["id"], second["id"]]
    want = state(col)
    col.close()
    gs.restore(tmp_path / "bk", tmp_path / "copy")  # the newest
    back = gs.Collection.open(tmp_path / "copy", device="cpu")
    assert state(back) == want
    back.close()
    gs.restore(tmp_path / "bk", tmp_path / "old", backup_id=first["id"])
    old = gs.Collection.open(tmp_path / "old", device="cpu")
    assert len(old) == 2000
    old.close()


def test_interrupted_backup_leaves_nothing_that_restores(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    col = _collection(tmp_path / "src")
    _fill(col, rng, 300)
    col.checkpoint()
    good = col.backup(tmp_path / "bk")
    _fill(col, rng, 300, start=300)
    col.checkpoint()

    calls = {"n": 0}
    real = Location.upload

    def failing(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("the bucket went away")
        return real(self, *a, **kw)

    monkeypatch.setattr(Location, "upload", failing)
    with pytest.raises(OSError, match="went away"):
        col.backup(tmp_path / "bk")
    monkeypatch.undo()
    assert calls["n"] == 2
    assert not any((tmp_path / "src" / PINS_DIR).iterdir())  # the pins went with it
    # only the complete backup is listed and restored; the failed one left blobs no manifest names
    assert [b["id"] for b in gs.list_backups(tmp_path / "bk")] == [good["id"]]
    gs.restore(tmp_path / "bk", tmp_path / "copy")
    back = gs.Collection.open(tmp_path / "copy", device="cpu")
    assert len(back) == 300
    back.close()
    # a manifest cut short (a store without atomic writes) is not a backup either
    (tmp_path / "bk" / "backups" / "29991231T000000000000Z-00000000000000000099.json").write_text('{"format_ver')
    assert [b["id"] for b in gs.list_backups(tmp_path / "bk")] == [good["id"]]
    # and the next backup completes, reusing what is already there
    again = col.backup(tmp_path / "bk")
    assert again["records"] == 600
    col.close()


def test_restore_checks_every_byte_and_leaves_no_half_collection(tmp_path):
    rng = np.random.default_rng(6)
    col = _collection(tmp_path / "src")
    _fill(col, rng, 300)
    col.checkpoint()
    info = col.backup(tmp_path / "bk")
    col.close()
    m = _manifests(Location(tmp_path / "bk"))[-1]
    seg = next(e for e in m["files"] if "/seg-" in e["path"])
    blob = tmp_path / "bk" / "blobs" / seg["sha256"][:2] / seg["sha256"]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged"):
        gs.restore(tmp_path / "bk", tmp_path / "copy")
    assert not (tmp_path / "copy").exists()
    assert [p.name for p in tmp_path.iterdir() if "restoring" in p.name] == []
    with pytest.raises(NotFoundError, match="no complete backup 'nope'"):
        gs.restore(tmp_path / "bk", tmp_path / "copy", backup_id="nope")
    with pytest.raises(NotFoundError, match="no complete backup here"):
        gs.restore(tmp_path / "empty", tmp_path / "copy")
    (tmp_path / "taken").mkdir()
    with pytest.raises(AlreadyExistsError, match="already exists"):
        gs.restore(tmp_path / "bk", tmp_path / "taken", backup_id=info["id"])


def test_bad_locations_are_refused_with_what_is_expected(tmp_path):
    col = _collection(tmp_path / "src")
    with pytest.raises(gs.errors.InvalidArgumentError, match="outside the collection"):
        col.backup(tmp_path / "src" / "inside")
    with pytest.raises(gs.errors.InvalidArgumentError, match="expected a local path"):
        col.backup("nosuchscheme://x/y")
    col.close()


def test_stale_pins_of_a_crashed_backup_go_on_open(tmp_path):
    col = _collection(tmp_path / "src")
    col.close()
    stale = tmp_path / "src" / PINS_DIR / "dead" / "shard-000"
    stale.mkdir(parents=True)
    (stale / "seg-x.arrow").write_bytes(b"x")
    gs.Collection.open(tmp_path / "src", device="cpu").close()
    assert not (tmp_path / "src" / PINS_DIR).exists()


def test_cli_backup_backups_and_restore(tmp_path, capsys):
    rng = np.random.default_rng(7)
    col = _collection(tmp_path / "src")
    _fill(col, rng, 100)
    want = state(col)
    col.close()
    assert cli_main(["backup", str(tmp_path / "src"), str(tmp_path / "bk")]) == 0
    out = capsys.readouterr().out
    assert "100 records" in out
    assert cli_main(["backups", str(tmp_path / "bk")]) == 0
    listing = capsys.readouterr().out
    assert "100" in listing and "src" in listing
    assert cli_main(["restore", str(tmp_path / "bk"), str(tmp_path / "copy")]) == 0
    back = gs.Collection.open(tmp_path / "copy", device="cpu")
    assert state(back) == want
    back.close()
    assert cli_main(["restore", str(tmp_path / "bk"), str(tmp_path / "copy")]) == 2
    assert "already exists" in capsys.readouterr().err


# -- S3 ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    pytest.importorskip("moto", reason="moto[server] is in the dev extra")
    from server_proc import start_s3_server

    try:
        proc, url = start_s3_server(tmp_path_factory.mktemp("moto") / "moto.log")
    except RuntimeError as exc:
        pytest.fail(str(exc))
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_EC2_METADATA_DISABLED")}
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_EC2_METADATA_DISABLED="true")
    try:
        yield url
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _s3_uri(server: str, bucket: str, prefix: str) -> str:
    import pyarrow.fs as pafs

    query = f"endpoint_override={server}&region=us-east-1"
    fs, _ = pafs.FileSystem.from_uri(f"s3://{bucket}?{query}&allow_bucket_creation=true")
    fs.create_dir(bucket)
    return f"s3://{bucket}/{prefix}?{query}"


def test_backup_and_restore_through_an_s3_server(tmp_path, s3_server):
    rng = np.random.default_rng(8)
    uri = _s3_uri(s3_server, "gpusearch-test", "backups/docs")
    col = _collection(tmp_path / "src")
    _fill(col, rng, 500)
    col.checkpoint()
    _fill(col, rng, 20, start=500)
    first = col.backup(uri)
    col.delete(["r0"])
    col.checkpoint()
    second = col.backup(uri)
    assert second["uploaded_bytes"] < first["bytes"] / 2  # the big segments are already in the bucket
    want = state(col)
    col.close()
    assert [b["id"] for b in gs.list_backups(uri)] == [first["id"], second["id"]]
    gs.restore(uri, tmp_path / "copy")
    back = gs.Collection.open(tmp_path / "copy", device="cpu")
    assert state(back) == want and len(back) == 519
    back.close()
    gs.restore(uri, tmp_path / "first", backup_id=first["id"])
    old = gs.Collection.open(tmp_path / "first", device="cpu")
    assert len(old) == 520
    old.close()
