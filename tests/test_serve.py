"""The Ray Serve application on a real local Ray: HTTP, the pinecone SDK, Python handles,
aliases, replicas, read-your-writes, auth and bad input. One shared app (conftest ``served``)."""
from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest

from conftest import RO_KEY, RW_KEY, SCOPED_RO_KEY
from knn_check import brute_force

pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")

DIM = 16


def url(cfg, path=""):
    return f"http://{cfg.host}:{cfg.port}{path}"


def post(cfg, path, body, key=RW_KEY, **kw):
    headers = {"Api-Key": key} if key else {}
    return httpx.post(url(cfg, path), json=body, headers=headers, timeout=60, **kw)


def upsert(cfg, ns, ids, vecs, metas=None):
    body = {"namespace": ns, "vectors": [
        {"id": i, "values": v.tolist(), **({"metadata": metas[j]} if metas else {})}
        for j, (i, v) in enumerate(zip(ids, vecs))]}
    r = post(cfg, "/vectors/upsert", body)
    assert r.status_code == 200, r.text
    return r.json()


def test_http_round_trip(served, rng):
    X = rng.standard_normal((200, DIM)).astype(np.float32)
    ids = [f"r{i}" for i in range(200)]
    metas = [{"genre": ["drama", "news"][i % 2], "year": 2000 + i % 25} for i in range(200)]
    assert upsert(served, "http-rt", ids, X, metas)["upsertedCount"] == 200
    q = rng.standard_normal(DIM).astype(np.float32)
    r = post(served, "/query", {"namespace": "http-rt", "vector": q.tolist(), "topK": 10, "includeMetadata": True})
    assert r.status_code == 200, r.text
    body = r.json()
    ref_ids, ref_scores = brute_force(ids, X, q, 10, "cosine")
    assert [m["id"] for m in body["matches"]] == ref_ids[0]
    np.testing.assert_allclose([m["score"] for m in body["matches"]], ref_scores[0], rtol=1e-4, atol=1e-5)
    assert body["collection"] == "http-rt" and body["partial"] is False and body["sequence"] >= 1
    assert body["matches"][0]["metadata"] == metas[ids.index(ref_ids[0][0])]
    # filtered
    r = post(served, "/query", {"namespace": "http-rt", "vector": q.tolist(), "topK": 5,
                                "filter": {"genre": {"$eq": "news"}, "year": {"$gte": 2010}}})
    keep = [j for j in range(200) if metas[j]["genre"] == "news" and metas[j]["year"] >= 2010]
    ref_ids, _ = brute_force([ids[j] for j in keep], X[keep], q, 5, "cosine")
    assert [m["id"] for m in r.json()["matches"]] == ref_ids[0]
    # fetch, update, delete
    r = httpx.get(url(served, "/vectors/fetch"), params={"ids": ["r1", "r2", "nope"], "namespace": "http-rt"},
                  headers={"Api-Key": RO_KEY})
    got = r.json()["vectors"]
    assert set(got) == {"r1", "r2"}
    np.testing.assert_allclose(got["r1"]["values"], X[1], rtol=1e-5)  # what was sent, on a cosine collection too
    r = post(served, "/vectors/update", {"namespace": "http-rt", "id": "r1", "setMetadata": {"genre": "poetry"}})
    assert r.status_code == 200, r.text
    r = httpx.get(url(served, "/vectors/fetch"), params={"ids": ["r1"], "namespace": "http-rt"},
                  headers={"Api-Key": RO_KEY})
    assert r.json()["vectors"]["r1"]["metadata"] == {"genre": "poetry", "year": 2001}
    r = post(served, "/vectors/delete", {"namespace": "http-rt", "ids": ["r1", "r2"]})
    assert r.status_code == 200
    r = post(served, "/vectors/delete", {"namespace": "http-rt", "filter": {"genre": {"$eq": "drama"}}})
    assert r.status_code == 200
    r = post(served, "/query", {"namespace": "http-rt", "vector": q.tolist(), "topK": 200})
    left = {m["id"] for m in r.json()["matches"]}
    assert left == {ids[j] for j in range(3, 200) if metas[j]["genre"] == "news"}


def test_batched_queries_over_http(served, rng):
    """``queries`` (ours): many vectors in one request, each answered as a single-vector query would be."""
    X = rng.standard_normal((300, DIM)).astype(np.float32)
    ids = [f"b{i}" for i in range(300)]
    metas = [{"g": i % 3} for i in range(300)]
    upsert(served, "http-batch", ids, X, metas)
    Q = rng.standard_normal((7, DIM)).astype(np.float32)
    r = post(served, "/query", {"namespace": "http-batch", "queries": Q.tolist(), "topK": 5,
                                "filter": {"g": {"$ne": 1}}, "includeMetadata": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert "matches" not in body and len(body["results"]) == 7 and body["collection"] == "http-batch"
    keep = [j for j in range(300) if metas[j]["g"] != 1]
    ref_ids, ref_scores = brute_force([ids[j] for j in keep], X[keep], Q, 5, "cosine")
    for qi, res in enumerate(body["results"]):
        assert [m["id"] for m in res["matches"]] == ref_ids[qi]
        np.testing.assert_allclose([m["score"] for m in res["matches"]], ref_scores[qi], rtol=1e-4, atol=1e-5)
        assert all(m["metadata"]["g"] != 1 for m in res["matches"])
        one = post(served, "/query", {"namespace": "http-batch", "vector": Q[qi].tolist(), "topK": 5,
                                      "filter": {"g": {"$ne": 1}}}).json()
        assert [m["id"] for m in one["matches"]] == [m["id"] for m in res["matches"]]
    # bad batches: each a 400 that names what was expected
    for bad, needle in [({"queries": []}, "at least one vector"),
                        ({"queries": [[0.1] * DIM, [0.1] * (DIM - 1)]}, "expected 16"),
                        ({"queries": [[0.1] * DIM], "vector": [0.1] * DIM}, "exactly one of"),
                        ({"queries": [[0.1] * DIM] * 501}, "the limit is 500")]:
        r = post(served, "/query", {"namespace": "http-batch", "topK": 3, **bad})
        assert r.status_code == 400 and needle in r.json()["message"], (bad.keys(), r.text[:300])


def test_pinecone_sdk(served, rng):
    pinecone = pytest.importorskip("pinecone")
    pc = pinecone.Pinecone(api_key=RW_KEY)
    idx = pc.Index(host=url(served))
    X = rng.standard_normal((50, DIM)).astype(np.float32)
    ids = [f"p{i}" for i in range(50)]
    res = idx.upsert(vectors=[(i, v.tolist(), {"n": j}) for j, (i, v) in enumerate(zip(ids, X))], namespace="sdk")
    assert res.upserted_count == 50
    q = rng.standard_normal(DIM).astype(np.float32)
    out = idx.query(vector=q.tolist(), top_k=5, namespace="sdk", include_metadata=True, include_values=True)
    ref_ids, _ = brute_force(ids, X, q, 5, "cosine")
    assert [m.id for m in out.matches] == ref_ids[0]
    best = ids.index(ref_ids[0][0])
    assert out.matches[0].metadata == {"n": best}
    np.testing.assert_allclose(out.matches[0].values, X[best], rtol=1e-5)
    by_id = idx.query(id="p7", top_k=3, namespace="sdk")
    assert by_id.matches[0].id == "p7"
    out = idx.query(vector=q.tolist(), top_k=5, namespace="sdk", filter={"n": {"$lt": 10}})
    ref_ids, _ = brute_force(ids[:10], X[:10], q, 5, "cosine")
    assert [m.id for m in out.matches] == ref_ids[0]
    f = idx.fetch(ids=["p1", "p2"], namespace="sdk")
    assert set(f.vectors) == {"p1", "p2"} and f.vectors["p2"].metadata == {"n": 2}
    idx.update(id="p1", set_metadata={"tag": "x"}, namespace="sdk")
    assert idx.fetch(ids=["p1"], namespace="sdk").vectors["p1"].metadata == {"n": 1, "tag": "x"}
    idx.delete(ids=["p1"], namespace="sdk")
    assert "p1" not in idx.fetch(ids=["p1", "p2"], namespace="sdk").vectors
    stats = idx.describe_index_stats()
    assert stats.namespaces["sdk"].vector_count == 49
    # the default namespace ("") is the collection "default"
    idx.upsert(vectors=[("d1", X[0].tolist())])
    assert idx.query(vector=X[0].tolist(), top_k=1).matches[0].id == "d1"
    # errors come back as the SDK's exceptions for their HTTP status (pinecone.ApiError, which the
    # SDK also calls PineconeApiException), carrying our message
    with pytest.raises(pinecone.ApiError) as ei:
        idx.query(vector=[0.1] * (DIM + 1), top_k=3, namespace="sdk")
    assert ei.value.status_code == 400, repr(ei.value)
    assert re.search(rf"must have {DIM} (columns|numbers|values)\b.*\bgot {DIM + 1}\b", ei.value.message), \
        ei.value.message
    ro = pinecone.Pinecone(api_key=RO_KEY).Index(host=url(served))
    with pytest.raises(pinecone.ForbiddenError) as ei:
        ro.upsert(vectors=[("z", X[0].tolist())], namespace="sdk")
    assert ei.value.status_code == 403, repr(ei.value)
    assert re.search(r"\bkey is read-only\b", ei.value.message), ei.value.message  # says why, not just "forbidden"


def test_handle_matches_http(served, rng):
    from gpusearch.serve import connect

    client = connect(served.app_name)
    X = rng.standard_normal((120, DIM)).astype(np.float32)
    ids = [f"h{i}" for i in range(120)]
    w = client.upsert("handles", ids, X, [{"i": i} for i in range(120)])
    assert w.count == 120 and w.sequence >= 1
    Q = rng.standard_normal((3, DIM)).astype(np.float32)
    res = client.query("handles", Q, k=7, include_metadata=True)
    ref_ids, _ = brute_force(ids, X, Q, 7, "cosine")
    assert res.ids == ref_ids
    for qi in range(3):
        r = post(served, "/query", {"namespace": "handles", "vector": Q[qi].tolist(), "topK": 7}, key=RO_KEY)
        assert [m["id"] for m in r.json()["matches"]] == res.ids[qi]
        np.testing.assert_allclose([m["score"] for m in r.json()["matches"]], res.scores[qi], rtol=1e-6)
    f = client.fetch("handles", ["h3", "missing"])
    assert f.ids == ["h3"] and f.missing == ["missing"]
    assert client.delete("handles", ["h3"]).count == 1
    assert "h3" not in client.query("handles", X[3], k=3).ids[0]


def test_text_query(served):
    from gpusearch.serve import connect

    docs = {"cook": "how to bake bread at home with yeast and flour",
            "net": "open a TCP socket and send bytes over the network",
            "math": "compute the square root of a floating point number"}
    client = connect(served.app_name)
    vecs = client.encode(list(docs.values()))  # the Aggregator's encoder, in bulk
    client.create("texts", dim=384, lineage=client.encoder_lineage())
    client.upsert("texts", list(docs), vecs)
    r = post(served, "/query", {"namespace": "texts", "text": "sending data through a network connection",
                                "topK": 1}, key=RO_KEY)
    assert r.status_code == 200, r.text
    assert r.json()["matches"][0]["id"] == "net"
    assert r.json()["lineage"]["model"] == "all-MiniLM-L6-v2"
    assert client.query_text("texts", "making a loaf", k=1).ids == [["cook"]]


def _query_loop(cfg, ns, vec, stop, failures, seen):
    with httpx.Client(timeout=30) as c:
        while not stop.is_set():
            try:
                r = c.post(url(cfg, "/query"), json={"namespace": ns, "vector": vec, "topK": 1},
                           headers={"Api-Key": RO_KEY})
                if r.status_code != 200 or r.json()["partial"]:
                    failures.append(r.text)
                else:
                    seen.append(r.json()["collection"])
            except Exception as e:  # noqa: BLE001 - any failure counts
                failures.append(repr(e))


def test_alias_switch_under_load(served, rng):
    from gpusearch.serve import connect

    client = connect(served.app_name)
    X = rng.standard_normal((40, DIM)).astype(np.float32)
    client.upsert("model-v1", [f"a{i}" for i in range(40)], X)
    client.upsert("model-v2", [f"b{i}" for i in range(40)], X[::-1].copy())
    client.set_alias("live", "model-v1")
    stop, failures, seen = threading.Event(), [], []
    loops = [threading.Thread(target=_query_loop, args=(served, "live", X[0].tolist(), stop, failures, seen))
             for _ in range(2)]
    for t in loops:
        t.start()
    time.sleep(1.0)
    client.set_alias("live", "model-v2")
    time.sleep(1.5)
    stop.set()
    for t in loops:
        t.join()
    assert failures == []
    assert "model-v1" in seen and seen[-1] == "model-v2"
    switched = seen.index("model-v2")
    assert set(seen[switched:]) <= {"model-v1", "model-v2"}
    r = post(served, "/query", {"namespace": "live", "vector": X[0].tolist(), "topK": 1}, key=RO_KEY)
    assert r.json()["matches"][0]["id"] == "b39"


def test_replica_killed_under_load(served, rng):
    import ray

    X = rng.standard_normal((60, DIM)).astype(np.float32)
    upsert(served, "kill", [f"k{i}" for i in range(60)], X)
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith(f"SERVE_REPLICA::{served.app_name}#Shard0#")]
    assert len(replicas) == 2
    stop, failures, seen = threading.Event(), [], []
    loops = [threading.Thread(target=_query_loop, args=(served, "kill", X[5].tolist(), stop, failures, seen))
             for _ in range(2)]
    for t in loops:
        t.start()
    time.sleep(1.0)
    n_before = len(seen)
    ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]), no_restart=True)
    time.sleep(4.0)
    stop.set()
    for t in loops:
        t.join()
    assert failures == []
    assert len(seen) > n_before + 5  # queries kept flowing after the kill
    # Serve brings a replacement up; it catches up before taking queries
    deadline = time.time() + 120
    while time.time() < deadline:
        names = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["name"].startswith(f"SERVE_REPLICA::{served.app_name}#Shard0#")}
        if len(names) == 2 and replicas[0]["name"] not in names:
            break
        time.sleep(1)
    else:
        pytest.fail("the killed Shard0 replica was not replaced within 120 s")


def test_read_your_writes(served, rng):
    X = rng.standard_normal((30, DIM)).astype(np.float32)
    with httpx.Client(timeout=30) as c:
        for i in range(30):
            r = c.post(url(served, "/vectors/upsert"), headers={"Api-Key": RW_KEY},
                       json={"namespace": "ryw", "vectors": [{"id": f"w{i}", "values": X[i].tolist()}]})
            assert r.status_code == 200
            r = c.post(url(served, "/query"), headers={"Api-Key": RO_KEY},
                       json={"namespace": "ryw", "vector": X[i].tolist(), "topK": 1})
            assert r.json()["matches"][0]["id"] == f"w{i}", i
            r = c.post(url(served, "/vectors/delete"), headers={"Api-Key": RW_KEY},
                       json={"namespace": "ryw", "ids": [f"w{i}"]})
            r = c.get(url(served, "/vectors/fetch"), headers={"Api-Key": RO_KEY},
                      params={"ids": [f"w{i}"], "namespace": "ryw"})
            assert r.json()["vectors"] == {}


def test_auth(served):
    body = {"namespace": "auth", "vectors": [{"id": "a", "values": [1.0] * DIM}]}
    assert httpx.post(url(served, "/vectors/upsert"), json=body).status_code == 401
    r = httpx.post(url(served, "/vectors/upsert"), json=body, headers={"Api-Key": "wrong"})
    assert r.status_code == 401 and r.json()["code"] == 16
    r = post(served, "/vectors/upsert", body, key=RO_KEY)
    assert r.status_code == 403 and "read-only" in r.json()["message"]
    assert post(served, "/vectors/upsert", body).status_code == 200
    assert post(served, "/query", {"namespace": "auth", "vector": [1.0] * DIM, "topK": 1}, key=RO_KEY).status_code == 200
    assert httpx.get(url(served, "/healthz")).json() == {"status": "ok"}


@pytest.mark.parametrize("path,body,status,needle", [
    ("/query", {"namespace": "bad", "vector": [1.0] * (DIM + 3), "topK": 3}, 400, "19"),
    ("/query", {"namespace": "bad", "vector": [1.0] * DIM, "topK": 0}, 400, "k must be between 1 and 10000, got 0"),
    ("/query", {"namespace": "bad", "vector": [1.0] * DIM, "topK": 50000}, 400,
     "k must be between 1 and 10000, got 50000"),
    ("/query", {"namespace": "bad", "vector": [1.0] * DIM, "topK": 5000, "includeMetadata": True}, 400,
     "k must be at most 1000 when metadata or vectors are included (includeMetadata, includeValues), got 5000"),
    ("/query", {"namespace": "bad", "topK": 3}, 400, "exactly one of vector, id, text or queries"),
    ("/query", {"namespace": "bad", "vector": [1.0] * DIM, "topK": 3, "filter": {"x": {"$regex": "a"}}}, 400, "$regex"),
    ("/query", {"namespace": "no-such-collection", "vector": [1.0] * DIM, "topK": 3}, 404, "no-such-collection"),
    ("/query", {"namespace": "bad", "vector": ["a"] * DIM, "topK": 3}, 400, "vector"),
    ("/query", {"namespace": "bad!", "vector": [1.0] * DIM, "topK": 3}, 400, "namespace"),
    ("/vectors/upsert", {"namespace": "bad", "vectors": [{"id": "x", "values": [1.0] * 5}]}, 400, "16"),
    ("/vectors/upsert", {"namespace": "bad", "vectors": [{"id": "x", "values": [1.0] * DIM},
                                                         {"id": "y", "values": [1.0] * 3}]}, 400, "vectors[1]"),
    ("/vectors/upsert", {"namespace": "bad", "vectors": [{"id": "x", "values": [0.0] * DIM}]}, 400, "zeros"),
    ("/vectors/upsert", {"namespace": "bad", "vectors": [{"id": f"i{i}", "values": [1.0] * DIM}
                                                         for i in range(501)]}, 400, "limit is 500"),
    ("/vectors/upsert", {"namespace": "bad"}, 400, "vectors"),
    ("/vectors/delete", {"namespace": "bad"}, 400, "exactly one"),
    ("/vectors/delete", {"namespace": "bad", "filter": {}}, 400, "filter"),
])
def test_bad_input_is_4xx_json(served, path, body, status, needle):
    post(served, "/vectors/upsert", {"namespace": "bad", "vectors": [{"id": "seed", "values": [1.0] * DIM}]})
    before = post(served, "/describe_index_stats", {}).json()["namespaces"]["bad"]["vectorCount"]
    r = post(served, path, body)
    assert r.status_code == status, r.text
    err = r.json()
    assert set(err) == {"code", "message", "details"} and needle in err["message"], err
    after = post(served, "/describe_index_stats", {}).json()["namespaces"]["bad"]["vectorCount"]
    assert after == before  # nothing half-written


def test_malformed_and_oversized_bodies(served):
    r = httpx.post(url(served, "/query"), content=b"{not json", headers={"Api-Key": RW_KEY,
                                                                          "Content-Type": "application/json"})
    assert r.status_code == 400 and "code" in r.json()
    big = b"x" * (served.max_body_bytes + 1)
    r = httpx.post(url(served, "/vectors/upsert"), content=big, headers={"Api-Key": RW_KEY,
                                                                         "Content-Type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["message"]


def _unindexed(cfg, name):
    text = httpx.get(url(cfg, "/metrics"), headers={"Api-Key": RO_KEY}, timeout=60).text
    return [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(f'gpusearch_unindexed_rows{{collection="{name}"')]


def test_an_approximate_index_is_built_by_the_writer_and_loaded_by_the_replicas(served, rng):
    """The replicas never add a row to an index: they find every record at once (the rows after the saved
    index are searched exactly) and load the index the Writer builds once writes pause."""
    X = rng.standard_normal((400, DIM)).astype(np.float32)
    r = post(served, "/collections", {"name": "built", "dimension": DIM, "metric": "l2", "index": "HNSW16"})
    assert r.status_code in (200, 201), r.text
    upsert(served, "built", [str(i) for i in range(400)], X)

    def found():
        r = post(served, "/query", {"namespace": "built", "queries": X.tolist(), "topK": 1})
        assert r.status_code == 200, r.text
        return np.mean([res["matches"][0]["id"] == str(i) for i, res in enumerate(r.json()["results"])])

    assert found() == 1.0  # read-your-writes, before any index holds them
    deadline = time.monotonic() + 120
    while True:  # the Writer builds 1 s after the last write; a replica loads it at its next refresh
        waiting = _unindexed(served, "built")
        if len(waiting) == 2 and sum(waiting) == 0:
            break
        assert time.monotonic() < deadline, f"rows still outside a loaded index: {waiting}"
        time.sleep(0.2)
    assert found() >= 0.99  # now through the HNSW graphs
    assert httpx.delete(url(served, "/collections/built"), headers={"Api-Key": RW_KEY}).status_code == 200


def test_collections_and_metrics(served, rng):
    r = post(served, "/collections", {"name": "made", "dimension": 8, "metric": "l2"})
    assert r.status_code == 200, r.text
    r = post(served, "/collections", {"name": "made", "dimension": 8})
    assert r.status_code == 409 and r.json()["code"] == 6 and "already exists" in r.json()["message"], r.text
    listing = httpx.get(url(served, "/collections"), headers={"Api-Key": RO_KEY}).json()
    assert listing["collections"]["made"]["metric"] == "l2"
    X = rng.standard_normal((10, 8)).astype(np.float32)
    upsert(served, "made", [str(i) for i in range(10)], X)
    r = post(served, "/query", {"namespace": "made", "vector": X[3].tolist(), "topK": 2})
    assert r.json()["matches"][0]["id"] == "3" and r.json()["matches"][0]["score"] == pytest.approx(0, abs=1e-5)
    # the labels name every collection: no key is 401, a key limited to some collections is 403
    assert httpx.get(url(served, "/metrics")).status_code == 401
    r = httpx.get(url(served, "/metrics"), headers={"Api-Key": SCOPED_RO_KEY})
    assert r.status_code == 403 and "limited" in r.json()["message"]
    text = httpx.get(url(served, "/metrics"), headers={"Api-Key": RO_KEY}).text
    assert "gpusearch_requests_total" in text and 'gpusearch_vectors{collection="made"' in text
    assert 'gpusearch_unindexed_rows{collection="made",shard="0"} 0.0' in text  # an exact index: none
    assert "gpusearch_shard_search_seconds" in text
    r = httpx.delete(url(served, "/collections/made"), headers={"Api-Key": RW_KEY})
    assert r.status_code == 200
    assert post(served, "/query", {"namespace": "made", "vector": X[3].tolist(), "topK": 2}).status_code == 404


def test_index_options_over_http_and_handles(served, rng):
    """indexOptions (efConstruction, efSearch, nprobe, kFactor) reach the collection, are listed, and
    a wrong one is a 400 naming it, with nothing made."""
    from gpusearch.serve import connect

    r = post(served, "/collections", {"name": "opts-h", "dimension": DIM, "index": "HNSW16",
                                      "indexOptions": {"efConstruction": 60, "efSearch": 30}})
    assert r.status_code == 200, r.text
    listing = httpx.get(url(served, "/collections"), headers={"Api-Key": RO_KEY}).json()["collections"]
    assert listing["opts-h"]["index_options"] == {"efConstruction": 60, "efSearch": 30}
    r = post(served, "/collections", {"name": "opts-bad", "dimension": DIM, "index": "HNSW16",
                                      "indexOptions": {"nprobe": 4}})
    assert r.status_code == 400 and "'nprobe' does not apply to index 'HNSW16'" in r.json()["message"], r.text
    assert "opts-bad" not in httpx.get(url(served, "/collections"), headers={"Api-Key": RO_KEY}).json()["collections"]
    made = connect(served.app_name).create("opts-i", dim=DIM, index="IVF4,Flat", index_options={"nprobe": 2})
    assert made["index_options"] == {"nprobe": 2}
    X = rng.standard_normal((40, DIM)).astype(np.float32)
    upsert(served, "opts-h", [str(i) for i in range(40)], X)
    r = post(served, "/query", {"namespace": "opts-h", "vector": X[5].tolist(), "topK": 1, "params": {"efSearch": 20}})
    assert r.status_code == 200 and r.json()["matches"][0]["id"] == "5", r.text
    for name in ("opts-h", "opts-i"):
        assert httpx.delete(url(served, f"/collections/{name}"), headers={"Api-Key": RW_KEY}).status_code == 200


def test_cors_is_off_by_default(served):
    """No Access-Control-Allow-Origin for any origin: a browser page elsewhere cannot read answers."""
    origin = {"Origin": "http://evil.example"}
    r = httpx.get(url(served, "/healthz"), headers=origin)
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    r = httpx.options(url(served, "/query"), headers={**origin, "Access-Control-Request-Method": "POST",
                                                      "Access-Control-Request-Headers": "api-key,content-type"})
    assert "access-control-allow-origin" not in r.headers
    r = httpx.post(url(served, "/query"), json={"namespace": "auth", "vector": [1.0] * DIM, "topK": 1},
                   headers={**origin, "Api-Key": RO_KEY})
    assert r.status_code in (200, 404) and "access-control-allow-origin" not in r.headers


def test_logs_hold_no_vectors_query_texts_or_keys(served):
    """Run writes, vector and text queries and rejected requests carrying marked values, then scan
    every log file of the Ray session (Serve's access logs, replicas, controller, proxies)."""
    import os

    import ray

    marker_value = 0.7193284651  # unlikely to appear in a log by chance
    marker_text = "periwinkle zeppelin quarantine 48613"
    vec = [marker_value] + [0.5] * (DIM - 1)
    assert post(served, "/vectors/upsert", {"namespace": "logscan", "vectors": [
        {"id": "m1", "values": vec, "metadata": {"note": "fine"}}]}).status_code == 200
    assert post(served, "/query", {"namespace": "logscan", "vector": vec, "topK": 1}).status_code == 200
    r = post(served, "/query", {"namespace": "texts", "text": marker_text, "topK": 1})  # made by test_text_query
    assert r.status_code in (200, 404)
    bad = post(served, "/query", {"namespace": "logscan", "vector": vec + [marker_value], "topK": 1})
    assert bad.status_code == 400
    httpx.post(url(served, "/query"), json={"vector": vec, "topK": 1}, headers={"Api-Key": "wrong-key-31337"})
    time.sleep(3)  # Ray flushes worker logs asynchronously
    logs = ray._private.worker._global_node.get_logs_dir_path()
    needles = [str(marker_value), "0.719328", marker_text, "wrong-key-31337", RW_KEY]
    hits = []
    scanned = 0
    access_logged = False
    for root, _, files in os.walk(logs):
        for name in files:
            try:
                data = open(os.path.join(root, name), "rb").read().decode("utf-8", "replace")
            except OSError:
                continue
            scanned += 1
            access_logged = access_logged or "/query" in data
            hits += [(name, n) for n in needles if n in data]
    assert scanned > 5, f"no logs found under {logs}"
    assert access_logged, "the scan missed the logs where Serve records requests"
    assert not hits, f"logs hold request data: {hits[:5]}"


def test_one_log_line_per_request_and_no_traceback_for_a_client_mistake(served):
    """The Aggregator's log has one line per HTTP request (method, route, status, ms, collection) and
    Serve's per-hop access lines are off; a 4xx raised inside the Writer (a wrong dim) leaves no
    traceback in any replica's log; the lines hold no query string."""
    import glob
    import os
    import re

    import ray

    vec = [0.25] * DIM
    assert post(served, "/vectors/upsert", {"namespace": "logshape", "vectors": [
        {"id": "row-31", "values": vec}]}).status_code == 200
    bad = post(served, "/vectors/upsert", {"namespace": "logshape", "vectors": [{"id": "r2", "values": [0.5] * 37}]})
    assert bad.status_code == 400 and "got 37" in bad.json()["message"], bad.text
    assert post(served, "/query", {"namespace": "logshape-none", "vector": vec, "topK": 1}).status_code == 404
    assert httpx.get(url(served, "/vectors/fetch"), params={"ids": ["row-31"], "namespace": "logshape"},
                     headers={"Api-Key": RW_KEY}).status_code == 200
    serve_logs = os.path.join(ray._private.worker._global_node.get_logs_dir_path(), "serve")
    line = re.compile(r" -- (GET|POST|PUT|DELETE) (/\S*) (\d{3}) (\d+\.\d)ms( collection=\S+)?$")

    def lines(pattern):
        out = []
        for path in glob.glob(os.path.join(serve_logs, pattern)):
            with open(path, errors="replace") as f:
                out += f.read().splitlines()
        return out

    want = [("POST /vectors/upsert 200", "collection=logshape"), ("POST /vectors/upsert 400", "collection=logshape"),
            ("POST /query 404", None), ("GET /vectors/fetch 200", "collection=logshape")]
    ok = False
    for _ in range(100):  # Serve's file handler may not have flushed the last line yet
        agg = [ln for ln in lines("replica_gpusearch_Aggregator_*.log") if line.search(ln)]
        ok = all(any(w in ln and (c is None or ln.endswith(c)) for ln in agg) for w, c in want)
        if ok:
            break
        time.sleep(0.1)
    assert ok, agg[-20:]
    assert not any("row-31" in ln or "?" in line.search(ln).group(2) for ln in agg)
    everything = "\n".join(lines("replica_gpusearch_*.log"))
    assert "got 37" not in everything, "a client's mistake was logged with its traceback"
    assert not any(" -- CALL " in ln for ln in lines("replica_gpusearch_*.log")), "Serve's per-hop access lines"


def test_graph_has_no_encoder_and_no_separate_ingress(served):
    """The served app is the Aggregator (the HTTP ingress itself), the Writer and one deployment per
    shard; no Encoder and no Ingress deployment, no replica of either; text queries still answer."""
    import ray
    from ray import serve

    from gpusearch.serve import connect

    app = serve.status().applications[served.app_name]
    assert set(app.deployments) == {"Aggregator", "Writer"} | {f"Shard{i}" for i in range(served.shards)}
    replicas = {a["name"].split("#")[1] for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith(f"SERVE_REPLICA::{served.app_name}#")}
    assert replicas == set(app.deployments)
    client = connect(served.app_name)
    docs = {"sea": "waves crash on the sandy beach", "code": "a compiler turns source code into machine code"}
    client.create("graph-texts", dim=384, lineage=client.encoder_lineage())
    client.upsert("graph-texts", list(docs), client.encode(list(docs.values())))
    r = post(served, "/query", {"namespace": "graph-texts", "text": "the ocean shore", "topK": 1}, key=RO_KEY)
    assert r.status_code == 200 and r.json()["matches"][0]["id"] == "sea", r.text
    assert client.query_text("graph-texts", ["compiling programs"], k=1).ids == [["code"]]


def test_k_has_one_limit_and_one_message_on_every_edge(served, tmp_path, rng):
    """k = MAX_TOP_K + 1 gets the engine's check_top_k message, word for word, over HTTP, through a
    Python handle, from an in-process Collection and from a batch join."""
    import gpusearch as gs
    from gpusearch.errors import LimitExceededError
    from gpusearch.request import MAX_TOP_K, check_top_k
    from gpusearch.serve import connect

    with pytest.raises(LimitExceededError) as engine:
        check_top_k(MAX_TOP_K + 1)
    message = str(engine.value)
    assert message == "k must be between 1 and 10000, got 10001" and served.max_top_k == MAX_TOP_K
    X = rng.standard_normal((5, DIM)).astype(np.float32)
    upsert(served, "one-k", [f"k{i}" for i in range(5)], X)
    r = post(served, "/query", {"namespace": "one-k", "vector": X[0].tolist(), "topK": MAX_TOP_K + 1}, key=RO_KEY)
    assert r.status_code == 400 and r.json()["message"] == message, r.text
    with pytest.raises(LimitExceededError) as handle:
        connect(served.app_name).query("one-k", X[:1], k=MAX_TOP_K + 1)
    assert str(handle.value) == message
    col = gs.Collection.create(tmp_path / "c", dim=DIM, device="cpu")
    col.upsert(["a"], X[:1])
    with pytest.raises(ValueError) as local:
        col.search(X[0], k=MAX_TOP_K + 1)
    col.close()
    assert str(local.value) == message
    from gpusearch.join import knn_join

    with pytest.raises(ValueError) as join:
        knn_join([str(tmp_path / "left")], [str(tmp_path / "right")], k=MAX_TOP_K + 1)
    assert str(join.value) == message
