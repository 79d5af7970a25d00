"""Backups over HTTP on the served app: POST /collections/{name}/backup and /restore, GET /backups."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import RO_KEY, RW_KEY, SCOPED_RO_KEY

pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")

from test_serve import post, upsert, url  # noqa: E402

DIM = 16


def test_backup_and_restore_over_http(served, rng):
    X = rng.standard_normal((60, DIM)).astype(np.float32)
    ids = [f"b{i}" for i in range(60)]
    upsert(served, "bk-src", ids[:40], X[:40], [{"n": i} for i in range(40)])
    r = post(served, "/collections/bk-src/backup", {"note": "before the second batch"})
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["records"] == 40 and info["sequence"] >= 1 and info["uploaded_bytes"] > 0
    upsert(served, "bk-src", ids[40:], X[40:])  # after the backup: not in the copy

    listing = httpx.get(url(served, "/backups"), headers={"Api-Key": RW_KEY}, timeout=60)
    assert listing.status_code == 200, listing.text
    assert info["id"] in [b["id"] for b in listing.json()["backups"]]

    r = post(served, "/collections/bk-copy/restore", {"backup": info["id"]})
    assert r.status_code == 201, r.text
    assert r.json()["collection"]["records"] == 40 and "path" not in r.json()
    # the copy answers queries (its shards are served like any collection) and holds the first batch only
    r = post(served, "/query", {"namespace": "bk-copy", "vector": X[5].tolist(), "topK": 1, "includeMetadata": True})
    assert r.status_code == 200, r.text
    assert [(m["id"], m["metadata"]) for m in r.json()["matches"]] == [("b5", {"n": 5})]
    r = httpx.get(url(served, "/vectors/fetch"), params={"ids": ["b1", "b50"], "namespace": "bk-copy"},
                  headers={"Api-Key": RW_KEY}, timeout=60)
    assert set(r.json()["vectors"]) == {"b1"}
    # and takes writes of its own
    upsert(served, "bk-copy", ["extra"], X[:1])
    r = post(served, "/query", {"namespace": "bk-src", "vector": X[50].tolist(), "topK": 1})
    assert r.json()["matches"][0]["id"] == "b50"


def test_backup_requests_that_are_refused(served, rng):
    upsert(served, "bk-ref", ["a"], rng.standard_normal((1, DIM)).astype(np.float32))
    # only where the operator allows: not an arbitrary path or bucket
    for uri in ["/etc", "s3://someone-elses-bucket/x", served.data_dir, served.backup_uri + "/../elsewhere"]:
        r = post(served, "/collections/bk-ref/backup", {"uri": uri})
        assert r.status_code == 400 and "backup_locations" in r.json()["message"], (uri, r.text)
    # only an unscoped read-write key
    for key in (RO_KEY, SCOPED_RO_KEY):
        r = post(served, "/collections/bk-ref/backup", {}, key=key)
        assert r.status_code == 403, r.text
        assert httpx.get(url(served, "/backups"), headers={"Api-Key": key}, timeout=60).status_code == 403
    r = post(served, "/collections/no-such-collection/backup", {})
    assert r.status_code == 404, r.text
    r = post(served, "/collections/bk-ref/backup", {})
    assert r.status_code == 200, r.text
    r = post(served, "/collections/bk-ref/restore", {})  # the name is taken
    assert r.status_code == 409 and "already exists" in r.json()["message"], r.text
    r = post(served, "/collections/bk-ref2/restore", {"backup": "20990101T000000000000Z-00000000000000000001"})
    assert r.status_code == 404 and "no complete backup" in r.json()["message"], r.text
    r = post(served, "/collections/bk-ref2/restore", {"uri": served.backup_uri + "/empty"})
    assert r.status_code == 404 and "no complete backup" in r.json()["message"], r.text
    names = httpx.get(url(served, "/collections"), headers={"Api-Key": RW_KEY}, timeout=60).json()["collections"]
    assert "bk-ref2" not in names
