"""API keys (read-only, read-write, limited to some collections), request-size limits and bad input
on the shared served app (conftest ``served``): each refusal is a 4xx ``{code, message, details}``
whose message names what was expected or the limit, and nothing of a refused write is stored.

Collections named ``sec-*`` belong to this file; the scoped keys in conftest are limited to
``sec-a`` and ``sec-live`` (read-write) and ``sec-a`` (read-only).
"""
from __future__ import annotations

import json

import pytest

from conftest import RO_KEY, RW_KEY, SCOPED_RO_KEY, SCOPED_RW_KEY

pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")

DIM = 8


def url(cfg, path=""):
    return f"http://{cfg.host}:{cfg.port}{path}"


def call(cfg, method, path, body=None, key=RW_KEY, **kw):
    headers = {"Api-Key": key} if key else {}
    return httpx.request(method, url(cfg, path), json=body, headers=headers, timeout=60, **kw)


def is_error(r, status, needle):
    """``r`` is our error with ``status`` and ``needle`` in its message."""
    assert r.status_code == status, (r.status_code, r.text[:500])
    err = r.json()
    assert set(err) == {"code", "message", "details"}, err
    assert needle in err["message"], err
    return err


def vectors(n, start=0, dim=DIM):
    return [{"id": f"v{start + i}", "values": [1.0 + (start + i) % 7] + [0.5] * (dim - 1)} for i in range(n)]


@pytest.fixture(scope="module")
def sec(served):
    """Collections sec-a, sec-b (one record each) and alias sec-live -> sec-a, made with the unscoped key."""
    for name in ("sec-a", "sec-b"):
        assert call(served, "POST", "/collections", {"name": name, "dimension": DIM}).status_code in (200, 409)
        r = call(served, "POST", "/vectors/upsert", {"namespace": name, "vectors": vectors(1)})
        assert r.status_code == 200, r.text
    assert call(served, "PUT", "/aliases/sec-live", {"collection": "sec-a"}).status_code == 200
    return served


def records(cfg, name):
    return call(cfg, "GET", "/collections").json()["collections"][name]["records"]


# -- who may do what ---------------------------------------------------------------------------
def test_keys_401_and_403(sec):
    before = records(sec, "sec-a")
    body = {"namespace": "sec-a", "vectors": vectors(1, 100)}
    err = is_error(call(sec, "POST", "/vectors/upsert", body, key=None), 401, "missing Api-Key")
    assert err["code"] == 16
    is_error(call(sec, "POST", "/vectors/upsert", body, key="not-a-key"), 401, "invalid API key")
    is_error(call(sec, "POST", "/vectors/upsert", body, key=RW_KEY + "x"), 401, "invalid API key")
    for method, path, b in [("GET", "/collections", None), ("POST", "/describe_index_stats", {}),
                            ("POST", "/query", {"namespace": "sec-a", "vector": [1.0] * DIM, "topK": 1}),
                            ("DELETE", "/collections/sec-b", None)]:
        is_error(call(sec, method, path, b, key=None), 401, "missing Api-Key")
    err = is_error(call(sec, "POST", "/vectors/upsert", body, key=RO_KEY), 403, "read-only")
    assert err["code"] == 7
    for method, path, b in [("POST", "/collections", {"name": "sec-ro", "dimension": 4}),
                            ("DELETE", "/collections/sec-b", None),
                            ("PUT", "/aliases/sec-x", {"collection": "sec-b"}),
                            ("DELETE", "/aliases/sec-live", None),
                            ("POST", "/vectors/delete", {"namespace": "sec-a", "deleteAll": True}),
                            ("POST", "/vectors/update", {"namespace": "sec-a", "id": "v0", "setMetadata": {"a": 1}})]:
        is_error(call(sec, method, path, b, key=RO_KEY), 403, "read-only")
    assert records(sec, "sec-a") == before and "sec-b" in call(sec, "GET", "/collections").json()["collections"]
    q = {"namespace": "sec-a", "vector": [1.0] * DIM, "topK": 1}
    assert call(sec, "POST", "/query", q, key=RO_KEY).status_code == 200


def test_scoped_key_works_in_scope_and_nowhere_else(sec):
    in_scope = {"namespace": "sec-a", "vectors": vectors(3, 10)}
    assert call(sec, "POST", "/vectors/upsert", in_scope, key=SCOPED_RW_KEY).status_code == 200
    q = {"namespace": "sec-a", "vector": vectors(1, 10)[0]["values"], "topK": 1}
    r = call(sec, "POST", "/query", q, key=SCOPED_RW_KEY)
    assert r.status_code == 200 and r.json()["matches"][0]["id"] == "v10", r.text
    r = call(sec, "GET", "/vectors/fetch", key=SCOPED_RO_KEY, params={"ids": ["v10"], "namespace": "sec-a"})
    assert r.status_code == 200 and set(r.json()["vectors"]) == {"v10"}
    assert call(sec, "POST", "/vectors/delete", {"namespace": "sec-a", "ids": ["v11"]},
                key=SCOPED_RW_KEY).status_code == 200
    before = records(sec, "sec-b")
    # another collection: refused, by name, for every route, with nothing written
    for method, path, body, params in [
            ("POST", "/vectors/upsert", {"namespace": "sec-b", "vectors": vectors(1, 20)}, None),
            ("POST", "/query", {**q, "namespace": "sec-b"}, None),
            ("GET", "/vectors/fetch", None, {"ids": ["v0"], "namespace": "sec-b"}),
            ("POST", "/vectors/update", {"namespace": "sec-b", "id": "v0", "setMetadata": {"x": 1}}, None),
            ("POST", "/vectors/delete", {"namespace": "sec-b", "deleteAll": True}, None),
            ("POST", "/query", {**q, "namespace": ""}, None)]:
        name = (body or params)["namespace"] or "default"
        err = is_error(call(sec, method, path, body, key=SCOPED_RW_KEY, params=params), 403, repr(name))
        assert err["code"] == 7
    assert records(sec, "sec-b") == before
    # a read-only scoped key: reads in scope only, no writes even there
    is_error(call(sec, "POST", "/vectors/upsert", in_scope, key=SCOPED_RO_KEY), 403, "read-only")
    is_error(call(sec, "POST", "/query", {**q, "namespace": "sec-live"}, key=SCOPED_RO_KEY), 403, "'sec-live'")
    # collection and alias management needs an unscoped read-write key
    for method, path, body in [("POST", "/collections", {"name": "sec-a2", "dimension": 4}),
                               ("DELETE", "/collections/sec-a", None),
                               ("PUT", "/aliases/sec-live", {"collection": "sec-b"}),
                               ("DELETE", "/aliases/sec-live", None)]:
        is_error(call(sec, method, path, body, key=SCOPED_RW_KEY), 403, "unscoped read-write key")
    listing = call(sec, "GET", "/collections").json()
    assert "sec-a2" not in listing["collections"] and listing["aliases"]["sec-live"] == "sec-a"


def test_scoped_key_through_an_alias_needs_its_target_in_scope_too(sec):
    """The scope checks the name asked for and the collection an alias points at: re-pointing an
    alias in scope at a collection out of scope does not widen the key."""
    q = {"namespace": "sec-live", "vector": [1.0] * DIM, "topK": 1}
    r = call(sec, "POST", "/query", q, key=SCOPED_RW_KEY)
    assert r.status_code == 200 and r.json()["collection"] == "sec-a", r.text
    try:
        assert call(sec, "PUT", "/aliases/sec-live", {"collection": "sec-b"}).status_code == 200
        is_error(call(sec, "POST", "/query", q, key=SCOPED_RW_KEY), 403, "alias of a collection")
        before = records(sec, "sec-b")
        is_error(call(sec, "POST", "/vectors/upsert", {"namespace": "sec-live", "vectors": vectors(1, 30)},
                      key=SCOPED_RW_KEY), 403, "alias of a collection")
        assert records(sec, "sec-b") == before
        assert call(sec, "POST", "/query", q).status_code == 200  # the unscoped key follows the alias
    finally:
        assert call(sec, "PUT", "/aliases/sec-live", {"collection": "sec-a"}).status_code == 200


def test_scoped_key_listings_hold_only_its_collections(sec):
    full = call(sec, "GET", "/collections").json()
    assert {"sec-a", "sec-b"} <= set(full["collections"])
    scoped = call(sec, "GET", "/collections", key=SCOPED_RW_KEY).json()
    assert set(scoped["collections"]) == {"sec-a"} and scoped["aliases"] == {"sec-live": "sec-a"}
    stats = call(sec, "POST", "/describe_index_stats", {}, key=SCOPED_RO_KEY).json()
    assert set(stats["namespaces"]) == {"sec-a"}, stats["namespaces"]
    assert stats["totalVectorCount"] == full["collections"]["sec-a"]["records"]
    unscoped = call(sec, "POST", "/describe_index_stats", {}, key=RO_KEY).json()
    assert set(unscoped["namespaces"]) >= {"sec-a", "sec-b"}


# -- size limits and bad input ------------------------------------------------------------------
def test_body_over_the_limit_is_413_declared_or_streamed(served):
    """A body over max_body_bytes is refused with 413 naming the limit whether Content-Length says so
    or it streams chunked (no Content-Length), and the server keeps answering."""
    limit = served.max_body_bytes
    headers = {"Api-Key": RW_KEY, "Content-Type": "application/json"}
    r = httpx.post(url(served, "/vectors/upsert"), content=b" " * (limit + 1), headers=headers, timeout=120)
    is_error(r, 413, f"the limit is {limit} bytes")
    chunk = b" " * (1 << 20)

    def chunked():  # no Content-Length: httpx sends Transfer-Encoding: chunked
        for _ in range(limit // len(chunk) + 2):
            yield chunk

    try:
        r = httpx.post(url(served, "/vectors/upsert"), content=chunked(), headers=headers, timeout=120)
    except httpx.TransportError as e:  # the server may close before the client wrote everything
        pytest.fail(f"no 413 answer to a streamed oversized body: {e!r}")
    assert "content-length" not in {k.lower() for k in r.request.headers}
    err = is_error(r, 413, f"the limit is {limit} bytes")
    assert "(streamed)" in err["message"], err  # counted as it arrived, not read from a header
    # a chunked body under the limit goes through
    small = json.dumps({"namespace": "sec-a", "vectors": vectors(1, 40)}).encode()
    r = httpx.post(url(served, "/vectors/upsert"), content=iter([small[:10], small[10:]]), headers=headers,
                   timeout=60)
    assert r.status_code == 200, r.text
    # a Content-Length that is not a number (httpx will not send one, so a raw request)
    import socket

    with socket.create_connection((served.host, served.port), timeout=30) as s:
        s.sendall(b"POST /query HTTP/1.1\r\nHost: x\r\nApi-Key: " + RW_KEY.encode()
                  + b"\r\nContent-Type: application/json\r\nContent-Length: ten\r\nConnection: close\r\n\r\n{}")
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.split(b"\r\n", 1)[0].split()[1] == b"400", answer[:300]


def _nested(depth):
    flt = {"n": {"$eq": 1}}
    for _ in range(depth):
        flt = {"$and": [flt]}
    return flt


LONG_ID = "i" * 513
BAD_INPUT = [
    # (method, path, JSON body or raw bytes, query params, status, needle)
    ("POST", "/query", {"namespace": "sec-a", "vector": [1.0] * DIM, "topK": 10001}, None, 400,
     "k must be between 1 and 10000, got 10001"),
    ("POST", "/query", {"namespace": "sec-a", "vector": [1.0] * 4097, "topK": 1}, None, 400, "limit is dim 4096"),
    ("POST", "/query", {"namespace": "sec-a", "vector": [1.0] * (DIM + 1), "topK": 1}, None, 400, str(DIM)),
    ("POST", "/query", {"namespace": "sec-a", "queries": [[1.0] * DIM] * 501, "topK": 1}, None, 400, "limit is 500"),
    ("POST", "/query", {"namespace": "sec-a", "id": LONG_ID, "topK": 1}, None, 400, "max_id_length"),
    ("POST", "/query", b'{"namespace": "sec-a", "vector": [NaN, 1, 1, 1, 1, 1, 1, 1], "topK": 1}', None, 400,
     "NaN or infinity"),
    ("POST", "/query", b'{"namespace": "sec-a", "vector": [Infinity, 1, 1, 1, 1, 1, 1, 1], "topK": 1}', None,
     400, "NaN or infinity"),
    ("POST", "/query", {"namespace": "sec-a", "vector": [1e39] * DIM, "topK": 1}, None, 400, "NaN or infinity"),
    ("POST", "/query", {"namespace": "sec-a", "vector": [3e38] * DIM, "topK": 1}, None, 400,
     "queries row 0 has squared length"),
    ("POST", "/vectors/upsert", {"namespace": "sec-a", "vectors": [{"id": "h", "values": [1e19] * DIM}]}, None,
     400, "vectors[0] is too long"),
    ("POST", "/vectors/delete", b'{"namespace": "sec-a", "ids": ["\\ud800"]}', None, 400, "not valid UTF-8"),
    ("POST", "/query", {"namespace": "sec-nope", "vector": [1.0] * DIM, "topK": 1}, None, 404, "sec-nope"),
    ("POST", "/query", {"namespace": "sec-a", "vector": [1.0] * DIM, "topK": 1, "filter": {"n": {"$regex": 1}}},
     None, 400, "$regex"),
    ("POST", "/query", {"namespace": "sec-a", "vector": [1.0] * DIM, "topK": 1, "filter": {"$or": 3}},
     None, 400, "$or"),
    ("POST", "/query", {"namespace": "sec-a", "vector": [1.0] * DIM, "topK": 1, "filter": _nested(20)}, None,
     400, "deeper than 16"),
    ("POST", "/query", {"namespace": "sec-a", "vector": [1.0] * DIM, "topK": 1,
                        "filter": {"n": {"$in": list(range(20000))}}}, None, 400, "max_filter_bytes"),
    ("POST", "/query", b'{"namespace": "sec-a", "vector": [1, 1', None, 400, "not valid JSON"),
    ("POST", "/query", b"[" * 100000 + b"]" * 100000, None, 400, "not valid JSON"),
    ("POST", "/vectors/upsert", {"namespace": "sec-a", "vectors": [{"id": "m", "values": [1.0] * DIM,
                                                                   "metadata": {"t": "x" * 41000}}]},
     None, 400, "max_metadata_bytes"),
    ("POST", "/vectors/upsert", {"namespace": "sec-a", "vectors": [{"id": LONG_ID, "values": [1.0] * DIM}]},
     None, 400, "512"),
    ("POST", "/vectors/upsert", b'{"namespace": "sec-a", "vectors": [{"id": "n", "values": [1, 1, 1, 1, 1, 1, 1, 1],'
                                b' "metadata": {"x": NaN}}]}', None, 400, "finite"),
    ("POST", "/vectors/upsert", {"namespace": "sec-a", "vectors": vectors(1, dim=DIM + 2)}, None, 400, str(DIM)),
    ("POST", "/vectors/upsert", {"namespace": "sec-a", "vectors": vectors(501)}, None, 400, "limit is 500"),
    ("POST", "/vectors/update", {"namespace": "sec-a", "id": "v0", "setMetadata": {"t": "x" * 41000}}, None, 400,
     "max_metadata_bytes"),
    ("POST", "/vectors/update", {"namespace": "sec-a", "id": "v0", "values": [1.0] * (DIM - 1)}, None, 400,
     str(DIM)),
    ("POST", "/vectors/delete", {"namespace": "sec-a", "ids": [f"x{i}" for i in range(501)]}, None, 400,
     "limit is 500"),
    ("POST", "/vectors/delete", {"namespace": "sec-a", "ids": [LONG_ID]}, None, 400, "max_id_length"),
    ("POST", "/vectors/delete", {"namespace": "sec-a", "filter": _nested(20)}, None, 400, "deeper than 16"),
    ("GET", "/vectors/fetch", None, {"namespace": "sec-a", "ids": [f"x{i}" for i in range(501)]}, 400,
     "limit is 500"),
    ("GET", "/vectors/fetch", None, {"namespace": "sec-a", "ids": [LONG_ID]}, 400, "max_id_length"),
    ("POST", "/collections", {"name": "sec-big", "dimension": 4097}, None, 400, "4096"),
    ("POST", "/collections", {"name": "sec bad", "dimension": 4}, None, 400, "collection name"),
    ("GET", "/no/such/route", None, None, 404, "no route"),
    ("PATCH", "/query", None, None, 405, "not allowed"),
]


@pytest.mark.parametrize("method,path,body,params,status,needle", BAD_INPUT,
                         ids=[f"{m} {p} {n}" for m, p, _, _, _, n in BAD_INPUT])
def test_bad_input_is_a_4xx_naming_the_problem(sec, method, path, body, params, status, needle):
    before = records(sec, "sec-a")
    headers = {"Api-Key": RW_KEY}
    if isinstance(body, bytes):
        r = httpx.request(method, url(sec, path), content=body, params=params, timeout=60,
                          headers={**headers, "Content-Type": "application/json"})
    else:
        r = httpx.request(method, url(sec, path), json=body, params=params, headers=headers, timeout=60)
    is_error(r, status, needle)
    assert records(sec, "sec-a") == before  # nothing half-written
