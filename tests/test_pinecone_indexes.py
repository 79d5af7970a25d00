"""Pinecone's control plane and an index's data plane (``/index/{name}/``), driven with the real
``pinecone`` SDK against the shared served app (conftest ``served``), as a user leaving Pinecone (or
Pinecone Local) would: change only the host."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

from conftest import RO_KEY, RW_KEY

pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")
pinecone = pytest.importorskip("pinecone")


def url(cfg, path=""):
    return f"http://{cfg.host}:{cfg.port}{path}"


@pytest.fixture
def pc(served):
    return pinecone.Pinecone(api_key=RW_KEY, host=url(served))


@contextlib.contextmanager
def an_index(pc, name: str, dimension: int, metric: str):
    """A fresh index for one test, deleted after it."""
    pc.create_index(name=name, dimension=dimension, metric=metric,
                    spec=pinecone.ServerlessSpec(cloud="aws", region="us-east-1"))
    try:
        yield pc.Index(name)
    finally:
        pc.delete_index(name)


def listed(pages) -> list[str]:
    """The ids of ``Index.list``'s pages (pages of ids in SDKs before 10, of items with ``.id`` since)."""
    return [getattr(i, "id", i) for page in pages for i in page]


def collections(served) -> set[str]:
    r = httpx.get(url(served, "/collections"), headers={"Api-Key": RW_KEY}, timeout=30)
    assert r.status_code == 200, r.text
    return set(r.json()["collections"])


def test_index_lifecycle_and_data_plane(served, pc, rng):
    name = "pc-life"
    assert not pc.has_index(name)
    pc.create_index(name=name, dimension=4, metric="euclidean",
                    spec=pinecone.ServerlessSpec(cloud="aws", region="us-east-1"))
    assert pc.has_index(name) and name in pc.list_indexes().names()
    desc = pc.describe_index(name)
    assert (desc.dimension, desc.metric, desc.status.ready) == (4, "euclidean", True)
    assert desc.host == url(served, f"/index/{name}")
    with pytest.raises(pinecone.ApiError) as ei:
        pc.create_index(name=name, dimension=4, metric="cosine", spec=pinecone.ServerlessSpec(cloud="aws",
                                                                                             region="us-east-1"))
    assert ei.value.status_code == 409

    idx = pc.Index(name)  # found by name: the SDK asks describe_index for its host
    X = rng.standard_normal((30, 4)).astype(np.float32)
    assert idx.upsert(vectors=[(f"v{i}", X[i].tolist(), {"n": i}) for i in range(30)], namespace="a").upserted_count == 30
    idx.upsert(vectors=[("d0", X[0].tolist())])  # the default namespace
    q = X[3] + 0.01
    out = idx.query(vector=q.tolist(), top_k=3, namespace="a", include_metadata=True)
    d2 = ((X - q) ** 2).sum(1)
    assert [m.id for m in out.matches] == [f"v{i}" for i in np.argsort(d2)[:3]]
    assert out.matches[0].score == pytest.approx(float(d2[3]), abs=1e-5)  # euclidean: squared distance, smallest first
    assert out.matches[0].metadata == {"n": 3}
    assert idx.query(vector=X[0].tolist(), top_k=1).matches[0].id == "d0"

    # Pinecone's answers where the root plane would say 404: a namespace never written is empty
    assert idx.query(vector=q.tolist(), top_k=3, namespace="never").matches == []
    assert dict(idx.fetch(ids=["v1"], namespace="never").vectors) == {}
    # a filter on a field no record has matches nothing ($ne: everything), in queries and deletes alike
    assert idx.query(vector=q.tolist(), top_k=3, namespace="a", filter={"genre": "x"}).matches == []
    assert len(idx.query(vector=q.tolist(), top_k=3, namespace="a", filter={"genre": {"$ne": "x"}}).matches) == 3
    idx.delete(filter={"genre": "x"}, namespace="a")
    assert set(idx.fetch(ids=["v1", "v2"], namespace="a").vectors) == {"v1", "v2"}
    with pytest.raises(pinecone.ApiError) as ei:
        idx.upsert(vectors=[("bad", [1.0, 2.0, 3.0])], namespace="a")
    assert ei.value.status_code == 400 and "does not match the dimension of the index (4)" in ei.value.message
    with pytest.raises(pinecone.ApiError) as ei:
        idx.query(vector=[1.0] * 5, top_k=1, namespace="a")
    assert ei.value.status_code == 400 and "dimension" in ei.value.message

    stats = idx.describe_index_stats()
    assert stats.dimension == 4 and stats.total_vector_count == 31
    assert {ns: s.vector_count for ns, s in stats.namespaces.items()} == {"a": 30, "__default__": 1}

    # the namespaces are collections {index}.{namespace}; deleting the index takes them all
    assert {f"{name}.a", f"{name}.__default__"} <= collections(served)
    pc.configure_index(name, deletion_protection="enabled")
    with pytest.raises(pinecone.ApiError) as ei:
        pc.delete_index(name)
    assert ei.value.status_code == 403 and "deletion protection" in ei.value.message
    pc.configure_index(name, deletion_protection="disabled")
    pc.delete_index(name)
    assert not pc.has_index(name)
    assert not {c for c in collections(served) if c.startswith(name + ".")}
    with pytest.raises(pinecone.ApiError) as ei:
        idx.query(vector=q.tolist(), top_k=3, namespace="a")
    assert ei.value.status_code == 404 and repr(name) in ei.value.message


def test_list_ids_pages_in_sorted_order(served, pc, rng):
    with an_index(pc, "pc-list", 3, "cosine") as idx:
        ids = [f"doc{i}#chunk{j}" for i in range(25) for j in range(9)] + ["other-1", "other-2"]
        X = rng.standard_normal((len(ids), 3)).astype(np.float32)
        for s in range(0, len(ids), 100):
            idx.upsert(vectors=[(i, v.tolist()) for i, v in zip(ids[s:s + 100], X[s:s + 100])], namespace="n")
        got = listed(idx.list(prefix="doc1", namespace="n", limit=20))
        want = sorted(i for i in ids if i.startswith("doc1"))
        assert got == want and len(got) == 99
        first = idx.list_paginated(prefix="doc", namespace="n", limit=100)
        assert [v.id for v in first.vectors] == sorted(i for i in ids if i.startswith("doc"))[:100]
        second = idx.list_paginated(prefix="doc", namespace="n", limit=100, pagination_token=first.pagination.next)
        assert [v.id for v in second.vectors] == sorted(i for i in ids if i.startswith("doc"))[100:200]
        assert listed(idx.list(namespace="never")) == []
        # an all-zero query on a cosine index is answered, every score 0 (LlamaIndex's get_nodes sends one)
        zero = idx.query(vector=[0.0, 0.0, 0.0], top_k=4, namespace="n")
        assert len(zero.matches) == 4 and all(m.score == 0 for m in zero.matches)
        # LlamaIndex deletes a document's chunks by listing them by prefix
        idx.delete(ids=listed(idx.list(prefix="doc3#", namespace="n")), namespace="n")
        assert idx.describe_index_stats().namespaces["n"].vector_count == len(ids) - 9


def test_root_plane_lists_ids_and_rejects_bad_tokens(served, rng):
    key = {"Api-Key": RW_KEY}
    body = {"namespace": "root-list", "vectors": [{"id": f"r{i:02d}", "values": [1.0, float(i)]} for i in range(12)]}
    assert httpx.post(url(served, "/vectors/upsert"), json=body, headers=key, timeout=30).status_code == 200
    r = httpx.get(url(served, "/vectors/list"), params={"namespace": "root-list", "limit": 5}, headers=key, timeout=30)
    assert r.status_code == 200 and [v["id"] for v in r.json()["vectors"]] == [f"r{i:02d}" for i in range(5)]
    nxt = r.json()["pagination"]["next"]
    r = httpx.get(url(served, "/vectors/list"), params={"namespace": "root-list", "limit": 10, "paginationToken": nxt},
                  headers=key, timeout=30)
    assert [v["id"] for v in r.json()["vectors"]] == [f"r{i:02d}" for i in range(5, 12)] and "pagination" not in r.json()
    for params, needle in (({"paginationToken": "%%%"}, "paginationToken"), ({"paginationToken": ""}, "paginationToken"), ({"limit": 0}, "limit"),
                           ({"limit": 1001}, "limit")):
        r = httpx.get(url(served, "/vectors/list"), params={"namespace": "root-list", **params}, headers=key, timeout=30)
        assert r.status_code == 400 and needle in r.json()["message"], r.text


@pytest.mark.parametrize("body, needle", [
    ({"name": "Bad_Name", "dimension": 3, "metric": "cosine", "spec": {"serverless": {}}}, "index name"),
    ({"name": "ok-name", "dimension": 3, "metric": "manhattan", "spec": {"serverless": {}}}, "metric must be one of"),
    ({"name": "ok-name", "dimension": 0, "metric": "cosine", "spec": {"serverless": {}}}, "dimension must be between"),
    ({"name": "ok-name", "vector_type": "sparse", "dimension": 3, "metric": "dotproduct", "spec": {"serverless": {}}},
     "sparse index has no dimension"),
    ({"name": "ok-name", "vector_type": "sparse", "metric": "cosine", "spec": {"serverless": {}}},
     "sparse index's metric must be dotproduct"),
    ({"name": "ok-name", "schema": {"fields": {"t": {"type": "semantic_text", "model": "m"}}},
      "deployment": {"deployment_type": "managed", "cloud": "aws", "region": "us-east-1"}}, "semantic_text"),
    ({"dimension": 3}, "index name"),
])
def test_create_index_refuses_what_it_cannot_do(served, body, needle):
    r = httpx.post(url(served, "/indexes"), json=body, headers={"Api-Key": RW_KEY}, timeout=30)
    assert r.status_code == 400 and needle in r.json()["message"], r.text
    assert "ok-name" not in httpx.get(url(served, "/indexes"), headers={"Api-Key": RW_KEY}, timeout=30).text


def test_control_plane_needs_a_writing_key_and_unknown_indexes_are_404(served):
    ro = pinecone.Pinecone(api_key=RO_KEY, host=url(served))
    with pytest.raises(pinecone.ApiError) as ei:
        ro.create_index(name="pc-ro", dimension=3, metric="cosine",
                        spec=pinecone.ServerlessSpec(cloud="aws", region="us-east-1"))
    assert ei.value.status_code == 403
    r = httpx.post(url(served, "/index/no-such-index/query"), json={"vector": [1.0], "topK": 1},
                   headers={"Api-Key": RW_KEY}, timeout=30)
    assert r.status_code == 404 and "no-such-index" in r.json()["message"]
    r = httpx.get(url(served, "/index/no-such-index/collections"), headers={"Api-Key": RW_KEY}, timeout=30)
    assert r.status_code == 404  # only the data plane is served under /index/{name}/


def test_a_refused_first_upsert_creates_no_namespace(served):
    key = {"Api-Key": RW_KEY}
    body = {"namespace": "refused-first", "vectors": [{"id": "a", "values": [1.0, 2.0], "metadata": {"k": None}}]}
    r = httpx.post(url(served, "/vectors/upsert"), json=body, headers=key, timeout=30)
    assert r.status_code == 400, r.text
    assert "refused-first" not in collections(served)
    stats = httpx.post(url(served, "/describe_index_stats"), json={}, headers=key, timeout=30).json()
    assert "refused-first" not in stats["namespaces"]


def test_a_namespace_made_again_with_another_dimension_is_served(served):
    """Drop a collection, upsert under its name with another vector length: queries answer (they used to
    answer 400 for good, with the server's data path in the message)."""
    key = {"Api-Key": RW_KEY}

    def call(path, body):
        r = httpx.post(url(served, path), json=body, headers=key, timeout=30)
        assert served.data_dir not in r.text
        return r

    assert call("/vectors/upsert", {"namespace": "reshape", "vectors": [{"id": "a", "values": [1.0, 0.0]}]}).status_code == 200
    assert call("/query", {"namespace": "reshape", "vector": [1.0, 0.0], "topK": 1}).json()["matches"][0]["id"] == "a"
    assert httpx.delete(url(served, "/collections/reshape"), headers=key, timeout=30).status_code == 200
    body = {"namespace": "reshape", "vectors": [{"id": "b", "values": [0.0, 1.0, 0.0]}]}
    assert call("/vectors/upsert", body).status_code == 200
    for _ in range(2):  # both replicas of each shard
        r = call("/query", {"namespace": "reshape", "vector": [0.0, 1.0, 0.0], "topK": 1})
        assert r.status_code == 200 and r.json()["matches"][0]["id"] == "b", r.text


def test_namespaces_fetch_by_metadata_and_update_dry_run(served, pc, rng):
    name = "pc-ns"
    with an_index(pc, name, 2, "dotproduct") as idx:
        for ns, n in (("alpha", 5), ("beta", 3)):
            idx.upsert(vectors=[(f"{ns}{i}", [1.0, float(i)], {"even": i % 2 == 0, "i": i}) for i in range(n)],
                       namespace=ns)
        got = idx.describe_namespace(name="alpha")
        assert (got.name, got.record_count) == ("alpha", 5)
        listed_ns = idx.list_namespaces_paginated()
        assert {(d.name, d.record_count) for d in listed_ns.namespaces} == {("alpha", 5), ("beta", 3)}
        assert listed_ns.total_count == 2
        made = idx.create_namespace(name="gamma", schema={"fields": {"genre": {"filterable": True}}})
        assert made.name == "gamma" and idx.describe_namespace(name="gamma").record_count == 0
        with pytest.raises(pinecone.ApiError) as ei:
            idx.describe_namespace(name="never")
        assert ei.value.status_code == 404

        # query_namespaces merges per-namespace answers and reports each one's read units
        res = idx.query_namespaces(vector=[1.0, 1.0], namespaces=["alpha", "beta"], metric="dotproduct", top_k=3)
        assert [m.id for m in res.matches] == ["alpha4", "alpha3", "alpha2"]
        assert set(res.ns_usage) == {"alpha", "beta"} and res.usage.read_units == 2
        assert idx.fetch(ids=["alpha1", "alpha2"], namespace="alpha").usage.read_units == 1

        page = idx.fetch_by_metadata(filter={"even": True}, namespace="alpha", limit=2)
        assert sorted(page.vectors) == ["alpha0", "alpha2"] and page.vectors["alpha2"].metadata == {"even": True, "i": 2}
        assert page.vectors["alpha2"].values == [1.0, 2.0] and page.pagination is not None
        rest = idx.fetch_by_metadata(filter={"even": True}, namespace="alpha", limit=2,
                                     pagination_token=page.pagination.next)
        assert sorted(rest.vectors) == ["alpha4"] and rest.pagination is None
        assert dict(idx.fetch_by_metadata(filter={"even": True}, namespace="never").vectors) == {}

        r = httpx.post(url(served, f"/index/{name}/vectors/update"), headers={"Api-Key": RW_KEY}, timeout=30,
                       json={"namespace": "alpha", "filter": {"i": {"$gte": 3}}, "setMetadata": {"x": 1},
                             "dryRun": True})
        assert r.status_code == 200 and r.json()["matchedRecords"] == 2, r.text
        assert "x" not in idx.fetch(ids=["alpha3"], namespace="alpha").vectors["alpha3"].metadata  # nothing written

        # any printable ASCII up to 512 characters names a namespace (stored under a hash, never as a path)
        odd = ["tenant:42", "user@example.com", "_private", "../../etc", "x" * 512]
        for i, ns in enumerate(odd):
            idx.upsert(vectors=[(f"o{i}", [1.0, float(i)])], namespace=ns)
            assert idx.query(vector=[1.0, float(i)], top_k=1, namespace=ns).matches[0].id == f"o{i}"
            assert idx.describe_namespace(name=ns).record_count == 1
        assert {d.name for d in idx.list_namespaces_paginated(limit=100).namespaces} == {"alpha", "beta", "gamma", *odd}
        assert idx.describe_index_stats().namespaces["tenant:42"].vector_count == 1
        assert not any(".." in c or "@" in c for c in collections(served))
        idx.delete_namespace(name="user@example.com")
        for bad in ("x" * 513, "caf\u00e9"):
            with pytest.raises(pinecone.ApiError) as ei:
                idx.upsert(vectors=[("z", [1.0, 0.0])], namespace=bad)
            assert ei.value.status_code == 400 and "printable ASCII" in ei.value.message
        idx.delete_namespace(name="beta")
        assert {d.name for d in idx.list_namespaces_paginated().namespaces} == {"alpha", "gamma", *odd} - {
            "user@example.com"}
        assert f"{name}.beta" not in collections(served)


def test_asyncio_client(served, rng):
    """The SDK's asyncio client, the same server: control plane, then an index's data plane."""
    import asyncio

    async def run():
        async with pinecone.PineconeAsyncio(api_key=RW_KEY, host=url(served)) as apc:
            await apc.create_index(name="pc-async", dimension=3, metric="cosine",
                                   spec=pinecone.ServerlessSpec(cloud="aws", region="us-east-1"))
            try:
                desc = await apc.describe_index("pc-async")
                assert desc.host == url(served, "/index/pc-async")
                async with apc.IndexAsyncio(host=desc.host) as idx:
                    X = rng.standard_normal((20, 3)).astype(np.float32)
                    res = await idx.upsert(vectors=[(f"a{i}", X[i].tolist(), {"i": i}) for i in range(20)],
                                           namespace="n")
                    assert res.upserted_count == 20
                    out = await idx.query(vector=X[5].tolist(), top_k=2, namespace="n", filter={"i": {"$gte": 5}})
                    assert out.matches[0].id == "a5"
                    assert (await idx.query(vector=X[5].tolist(), top_k=2, namespace="none")).matches == []
                    got = await idx.fetch(ids=["a1"], namespace="n")
                    assert got.vectors["a1"].metadata == {"i": 1}
                    await idx.delete(ids=["a1"], namespace="n")
                    stats = await idx.describe_index_stats()
                    assert stats.namespaces["n"].vector_count == 19 and stats.dimension == 3
            finally:
                await apc.delete_index("pc-async")
            assert not await apc.has_index("pc-async")

    asyncio.run(run())


def test_top_k_up_to_ten_thousand_and_upserted_values_back(served, pc, rng):
    """top_k above 1,000 is answered (up to 10,000; with values or metadata at most 1,000, refused
    with a 400 that says so), and a cosine index gives back the values that were upserted."""
    with an_index(pc, "pc-topk", 4, "cosine") as idx:
        x = (rng.standard_normal((1500, 4)) * 7).astype(np.float32)
        idx.upsert(vectors=[(f"v{i}", x[i].tolist()) for i in range(len(x))], namespace="n", batch_size=500)
        out = idx.query(vector=[1.0, 0.0, 0.0, 0.0], top_k=1200, namespace="n")
        assert len(out.matches) == 1200
        assert all(a.score >= b.score for a, b in zip(out.matches, out.matches[1:]))
        assert len(idx.query(vector=[1.0, 0.0, 0.0, 0.0], top_k=10_000, namespace="n").matches) == 1500
        with pytest.raises(pinecone.ApiError) as ei:
            idx.query(vector=[1.0, 0.0, 0.0, 0.0], top_k=1001, namespace="n", include_metadata=True)
        assert ei.value.status_code == 400 and "at most 1000" in ei.value.message
        got = idx.fetch(ids=["v3", "v77"], namespace="n").vectors
        np.testing.assert_allclose(got["v3"].values, x[3], rtol=1e-5)
        np.testing.assert_allclose(got["v77"].values, x[77], rtol=1e-5)
        top = idx.query(vector=x[9].tolist(), top_k=1, namespace="n", include_values=True).matches[0]
        assert top.id == "v9"
        np.testing.assert_allclose(top.values, x[9], rtol=1e-5)


def test_one_field_may_hold_ints_strings_and_bools(served, pc):
    """Pinecone lets a metadata field hold an int in one record and a string in another; filters compare a
    value only with operands of its own kind, and every value comes back as it was sent."""
    with an_index(pc, "pc-mixed", 2, "euclidean") as idx:
        idx.upsert(vectors=[(f"n{i}", [1.0, float(i)], {"code": i}) for i in range(4)], namespace="m")
        assert [m.id for m in idx.query(vector=[1.0, 0.0], top_k=5, namespace="m", filter={"code": {"$gte": 2}}).matches] == ["n2", "n3"]
        # the field held ints only so far; now a string, a float, a bool and a list of strings
        idx.upsert(vectors=[("s5", [1.0, 5.0], {"code": "5"}), ("f", [1.0, 6.0], {"code": 2.5}),
                            ("b", [1.0, 7.0], {"code": True}), ("l", [1.0, 8.0], {"code": ["5", "x"]})], namespace="m")
        idx.update(id="n1", set_metadata={"code": "one"}, namespace="m")

        def ids(flt):
            return sorted(m.id for m in idx.query(vector=[1.0, 0.0], top_k=20, namespace="m", filter=flt).matches)

        assert ids({"code": 2}) == ["n2"]
        assert ids({"code": "5"}) == ["l", "s5"]
        assert ids({"code": {"$gt": 1}}) == ["f", "n2", "n3"]
        assert ids({"code": {"$lt": "p"}}) == ["n1", "s5"]
        assert ids({"code": {"$nin": [0, 2, 3]}}) == ["b", "f", "l", "n1", "s5"]
        assert ids({"code": True}) == ["b"]
        got = idx.fetch(ids=["n0", "n1", "s5", "f", "b", "l"], namespace="m").vectors
        assert {i: v.metadata["code"] for i, v in got.items()} == {"n0": 0, "n1": "one", "s5": "5", "f": 2.5, "b": True,
                                                                   "l": ["5", "x"]}
        idx.delete(filter={"code": {"$in": ["5", "one"]}}, namespace="m")
        assert ids({}) == ["b", "f", "n0", "n2", "n3"]
