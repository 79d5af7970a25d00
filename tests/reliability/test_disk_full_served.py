"""A full disk under the served app: the client gets a clear 507, acknowledged records stay,
the collection keeps answering, and writes work again once space is freed.

The shared ``served`` app keeps every collection in a directory under its data dir
(``collections/<name>``); this test
mounts a small tmpfs (root or CAP_SYS_ADMIN; otherwise it skips, saying why) exactly where
the collection ``diskfull`` will live, creates it over HTTP, and fills the disk with a ballast
file the test can delete. The Writer and both shards' replicas hold that collection's files, so
the mount is detached lazily after the collection is dropped.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import RO_KEY, RW_KEY
from tmpfs import mounted_tmpfs  # tests/reliability is on sys.path under pytest

pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")

NAME, DIM = "diskfull", 16


def _post(base, path, body, key=RW_KEY):
    return httpx.post(base + path, json=body, headers={"Api-Key": key}, timeout=60)


@pytest.fixture
def small_disk_under_served(served):
    from pathlib import Path

    from gpusearch.catalog import _collection_dir

    path = _collection_dir(Path(served.data_dir), NAME)
    path.mkdir(parents=True)
    try:
        with mounted_tmpfs(path, "2m"):
            try:
                yield str(path)
            finally:
                httpx.delete(f"http://{served.host}:{served.port}/collections/{NAME}",
                             headers={"Api-Key": RW_KEY}, timeout=60)
    finally:
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def test_disk_full_is_a_507_and_loses_nothing(served, small_disk_under_served, rng):
    base = f"http://{served.host}:{served.port}"
    r = _post(base, "/collections", {"name": NAME, "dimension": DIM, "metric": "l2"})
    assert r.status_code == 200, r.text
    ballast = os.path.join(small_disk_under_served, "ballast")
    with open(ballast, "wb") as f:  # fill the disk but about 96 KiB
        st = os.statvfs(small_disk_under_served)
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - (96 << 10)))
    acked: dict[str, np.ndarray] = {}
    refused, n = None, 0
    for batch in range(400):
        ids = [f"d{batch}-{j}" for j in range(50)]
        X = rng.standard_normal((50, DIM)).astype(np.float32)
        r = _post(base, "/vectors/upsert", {"namespace": NAME, "vectors": [
            {"id": i, "values": v.tolist(), "metadata": {"b": batch}} for i, v in zip(ids, X)]})
        if r.status_code == 200:
            acked.update(zip(ids, X))
            continue
        refused, n = (r, ids), batch
        break
    assert refused is not None, "the disk never filled up"
    r, refused_ids = refused
    assert acked, "the disk was full before the first write"
    assert r.status_code == 507, r.text
    err = r.json()
    assert err["code"] == 8 and "disk is full" in err["message"] and "not applied" in err["message"]
    assert served.data_dir not in err["message"]  # the server's paths stay in its log

    def fetch(ids):
        got = {}
        for lo in range(0, len(ids), 200):
            r = httpx.get(base + "/vectors/fetch", params={"ids": ids[lo:lo + 200], "namespace": NAME},
                          headers={"Api-Key": RO_KEY}, timeout=60)
            assert r.status_code == 200, r.text
            got.update(r.json()["vectors"])
        return got

    got = fetch(list(acked))
    assert set(got) == set(acked)
    for i, v in acked.items():
        assert np.array_equal(np.asarray(got[i]["values"], np.float32), v), i
    assert fetch(refused_ids) == {}  # nothing of the refused batch
    q = next(iter(acked.values()))
    r = _post(base, "/query", {"namespace": NAME, "vector": q.tolist(), "topK": 3}, key=RO_KEY)
    assert r.status_code == 200 and r.json()["partial"] is False, r.text
    assert r.json()["matches"][0]["score"] == pytest.approx(0.0, abs=1e-5)
    r = _post(base, "/describe_index_stats", {})
    assert r.json()["namespaces"][NAME]["vectorCount"] == len(acked)

    os.remove(ballast)  # space again: the same batch now goes in, with no restart
    X = rng.standard_normal((50, DIM)).astype(np.float32)
    r = _post(base, "/vectors/upsert", {"namespace": NAME, "vectors": [
        {"id": i, "values": v.tolist()} for i, v in zip(refused_ids, X)]})
    assert r.status_code == 200, r.text
    got = fetch(refused_ids)
    assert all(np.array_equal(np.asarray(got[i]["values"], np.float32), v) for i, v in zip(refused_ids, X))
    assert len(fetch(list(acked))) == len(acked)
