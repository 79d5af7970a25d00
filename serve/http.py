"""The HTTP ingress: Pinecone's data-plane API (so the ``pinecone`` SDK works), plus ours.

Pinecone routes: ``POST /vectors/upsert``, ``POST /query``, ``GET /vectors/fetch``,
``POST /vectors/update``, ``POST /vectors/delete``, ``POST /describe_index_stats``.
A namespace is a collection (``""`` is ``default``); the first upsert into a new
namespace creates it with the dim of its vectors and the server's metric.

Ours: ``text`` in ``/query`` (encoded by the Encoder deployment), ``params``
(``nprobe``, ``efSearch``), ``GET/POST /collections``, ``DELETE /collections/{name}``,
``PUT/DELETE /aliases/{alias}``, ``GET /healthz``, ``GET /metrics`` (Prometheus) and
``/docs`` (OpenAPI). Every query answer names the collection it searched (after
alias resolution), its sequence number, index and lineage, and ``partial``.

Errors are ``{"code", "message", "details"}`` with a 4xx status (gRPC-style codes
as Pinecone uses: 3 invalid argument, 5 not found, 7 permission denied, 16
unauthenticated). Request bodies, query vectors and texts are never logged.
"""

import asyncio
import hmac
import logging
import time
from typing import Any, Optional

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from gpusearch.catalog import CollectionNotFound, check_name

from .config import ServeConfig

__all__ = ["Ingress", "api", "ApiError"]

log = logging.getLogger("gpusearch.serve")

api = FastAPI(
    title="gpusearch",
    description="GPU-accelerated similarity search on Ray Serve; Pinecone-compatible data plane.",
    version="0.1.0",
)


class ApiError(Exception):
    def __init__(self, status: int, code: int, message: str, details: list | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details or []


def _error_json(status: int, code: int, message: str, details=None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"code": code, "message": message, "details": details or []})


def _unwrap(e: BaseException) -> BaseException:
    """The exception a deployment raised, not Ray's wrapper around it (its text holds a traceback)."""
    seen = 0
    while getattr(e, "cause", None) is not None and isinstance(e.cause, BaseException) and seen < 5:
        e, seen = e.cause, seen + 1
    return e


def error_response(e: BaseException) -> JSONResponse:
    e = _unwrap(e)
    if isinstance(e, ApiError):
        return _error_json(e.status, e.code, e.message, e.details)
    if isinstance(e, CollectionNotFound):
        return _error_json(404, 5, str(e.args[0] if e.args else e))
    if isinstance(e, (ValueError, TypeError)):
        return _error_json(400, 3, str(e))
    if isinstance(e, (TimeoutError, asyncio.TimeoutError)):
        return _error_json(504, 4, str(e) or "a shard did not answer in time")
    log.exception("internal error", exc_info=e)
    return _error_json(500, 13, f"internal error ({type(e).__name__}); this is a bug, please report it")


# Set by the Ingress replica from its config; the middleware runs before FastAPI parses a body.
_body_limit = {"bytes": 64 << 20}


@api.middleware("http")
async def _limit_body(request: Request, call_next):
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > _body_limit["bytes"]:
        return _error_json(413, 3, f"request body is {int(length)} bytes; the limit is {_body_limit['bytes']}")
    return await call_next(request)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError):
    details = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        details.append({"field": where, "problem": err.get("msg", "")})
    first = details[0] if details else {"field": "body", "problem": "invalid"}
    message = f"{first['field'] or 'body'}: {first['problem']}"
    return _error_json(400, 3, message, details)


@api.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError):
    return _error_json(exc.status, exc.code, exc.message, exc.details)


# -- request bodies (Pinecone's camelCase names) ------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")


class VectorIn(_Body):
    id: str = Field(min_length=1, max_length=512)
    values: list[float] = Field(default_factory=list)
    metadata: Optional[dict[str, Any]] = None
    sparse_values: Optional[dict[str, Any]] = Field(default=None, alias="sparseValues")


class UpsertBody(_Body):
    vectors: list[VectorIn]
    namespace: str = ""


class QueryBody(_Body):
    top_k: int = Field(default=10, alias="topK")
    namespace: str = ""
    vector: Optional[list[float]] = None
    id: Optional[str] = None
    text: Optional[str] = Field(default=None, description="ours: a text, embedded by the server's encoder")
    filter: Optional[dict[str, Any]] = None
    include_values: bool = Field(default=False, alias="includeValues")
    include_metadata: bool = Field(default=False, alias="includeMetadata")
    sparse_vector: Optional[dict[str, Any]] = Field(default=None, alias="sparseVector")
    params: Optional[dict[str, int]] = Field(default=None, description="ours: {'nprobe': 32} or {'efSearch': 128}")
    queries: Optional[list[list[float]]] = Field(
        default=None, description="ours: several query vectors in one request (at most max_batch); the answer "
                                  "then has `results`, one {matches} per query in order, instead of `matches`")


class UpdateBody(_Body):
    id: Optional[str] = None
    values: Optional[list[float]] = None
    set_metadata: Optional[dict[str, Any]] = Field(default=None, alias="setMetadata")
    filter: Optional[dict[str, Any]] = None
    sparse_values: Optional[dict[str, Any]] = Field(default=None, alias="sparseValues")
    namespace: str = ""
    dry_run: bool = Field(default=False, alias="dryRun")


class DeleteBody(_Body):
    ids: Optional[list[str]] = None
    delete_all: bool = Field(default=False, alias="deleteAll")
    filter: Optional[dict[str, Any]] = None
    namespace: str = ""


class StatsBody(_Body):
    filter: Optional[dict[str, Any]] = None


class CreateBody(_Body):
    name: str
    dimension: int
    metric: Optional[str] = None
    index: Optional[str] = None
    lineage: Optional[dict[str, Any]] = None


class AliasBody(_Body):
    collection: str


def _metrics():
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    reg = CollectorRegistry()
    return {
        "registry": reg,
        "requests": Counter("gpusearch_requests", "HTTP requests by route and status", ["route", "status"],
                            registry=reg),
        "latency": Histogram("gpusearch_request_seconds", "HTTP request latency by route", ["route"], registry=reg,
                             buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)),
        "shard": Histogram("gpusearch_shard_search_seconds", "search time inside each shard (per batch)", ["shard"],
                           registry=reg, buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1)),
        "partial": Counter("gpusearch_partial_responses", "query answers that lacked a shard", registry=reg),
        "vectors": Gauge("gpusearch_vectors", "live vectors per collection and shard", ["collection", "shard"],
                         registry=reg),
    }



def key_role(api_keys: dict, key: str):
    """The role ("rw"/"ro") of ``key``, or None; every configured key is compared in constant time.

    No early exit and no dict lookup (whose timing depends on the key), so the
    time taken says nothing about how much of a guess was right.
    """
    given = key.encode("utf-8", "surrogatepass")
    role = None
    for candidate, candidate_role in api_keys.items():
        if hmac.compare_digest(given, candidate.encode("utf-8", "surrogatepass")):
            role = candidate_role
    return role

@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    def __init__(self, cfg: dict, aggregator, writer, encoder=None):
        self.cfg = ServeConfig(**cfg)
        self.aggregator, self.writer, self.encoder = aggregator, writer, encoder
        self.metrics = _metrics()
        self._encoder_lineage = None  # asked of the Encoder once, on the first text query
        _body_limit["bytes"] = self.cfg.max_body_bytes

    # -- plumbing --------------------------------------------------------------
    def _auth(self, request: Request, write: bool) -> None:
        if not self.cfg.api_keys:
            return
        key = request.headers.get("api-key")
        if not key:
            raise ApiError(401, 16, "missing Api-Key header")
        role = key_role(self.cfg.api_keys, key)
        if role is None:
            raise ApiError(401, 16, "invalid API key")
        if write and role != "rw":
            raise ApiError(403, 7, "this API key is read-only; writes need a read-write key")

    async def _guard(self, request: Request, route: str, write: bool, fn):
        t0 = time.perf_counter()
        try:
            self._auth(request, write)
            result = await fn()
            status = 200
            response = JSONResponse(result) if not isinstance(result, (JSONResponse, PlainTextResponse)) else result
        except BaseException as e:  # noqa: BLE001 - every error becomes a JSON answer
            if isinstance(e, asyncio.CancelledError):
                raise
            response = error_response(e)
            status = response.status_code
        self.metrics["requests"].labels(route, str(status)).inc()
        self.metrics["latency"].labels(route).observe(time.perf_counter() - t0)
        return response

    def _namespace(self, ns: str) -> str:
        return check_name(ns, "namespace")

    def _matrix(self, rows: list[list[float]], what: str) -> np.ndarray:
        if not rows:
            raise ApiError(400, 3, f"{what}: expected at least one vector, got none")
        n = len(rows[0])
        if n == 0:
            raise ApiError(400, 3, f"{what}[0].values is empty; expected a dense vector")
        if n > self.cfg.max_dim:
            raise ApiError(400, 3, f"{what}[0].values has {n} numbers; the limit is dim {self.cfg.max_dim}")
        for i, r in enumerate(rows):
            if len(r) != n:
                raise ApiError(400, 3, f"{what}[{i}].values has {len(r)} numbers, expected {n} like {what}[0]")
        m = np.asarray(rows, dtype=np.float32)
        if not np.isfinite(m).all():
            raise ApiError(400, 3, f"{what} holds NaN or infinity; expected finite numbers")
        return m

    # -- Pinecone data plane ---------------------------------------------------
    @api.post("/vectors/upsert")
    async def upsert(self, body: UpsertBody, request: Request):
        async def run():
            if len(body.vectors) > self.cfg.max_batch:
                raise ApiError(400, 3, f"{len(body.vectors)} vectors in one upsert; the limit is {self.cfg.max_batch}")
            if any(v.sparse_values for v in body.vectors):
                raise ApiError(400, 3, "sparse values are not supported; send dense values only")
            name = self._namespace(body.namespace)
            vecs = self._matrix([v.values for v in body.vectors], "vectors")
            r = await self.writer.upsert.remote(name, [v.id for v in body.vectors], vecs,
                                                [v.metadata for v in body.vectors])
            return {"upsertedCount": r["count"], "sequence": r["sequence"]}
        return await self._guard(request, "upsert", True, run)

    @api.post("/query")
    async def query(self, body: QueryBody, request: Request):
        async def run():
            if not 1 <= body.top_k <= self.cfg.max_top_k:
                raise ApiError(400, 3, f"topK must be between 1 and {self.cfg.max_top_k}, got {body.top_k}")
            if body.sparse_vector:
                raise ApiError(400, 3, "sparse vectors are not supported; query with vector, id or text")
            given = [x for x in ("vector", "id", "text", "queries") if getattr(body, x) is not None]
            if len(given) != 1:
                raise ApiError(400, 3, f"query takes exactly one of vector, id, text or queries; got {given or 'none'}")
            if body.queries is not None and len(body.queries) > self.cfg.max_batch:
                raise ApiError(400, 3, f"{len(body.queries)} queries in one request; the limit is {self.cfg.max_batch}")
            name = self._namespace(body.namespace)
            kw = dict(filter=body.filter, include_metadata=body.include_metadata,
                      include_vectors=body.include_values, params=body.params)
            encoder_lineage = None
            if body.text is not None:
                if self.encoder is None:
                    raise ApiError(400, 3, "text queries need the encoder; start the server with encoder_enabled: true")
                if not body.text.strip():
                    raise ApiError(400, 3, "text is empty; send the text to search for")
                vec = await self.encoder.encode.remote(body.text)
                if self._encoder_lineage is None:
                    self._encoder_lineage = await self.encoder.lineage.remote()
                encoder_lineage = self._encoder_lineage
                r = await self.aggregator.query.remote(name, vec[None, :], body.top_k, **kw)
            elif body.id is not None:
                r = await self.aggregator.query.remote(name, None, body.top_k, id=body.id, **kw)
            elif body.queries is not None:
                r = await self.aggregator.query.remote(name, self._matrix(body.queries, "queries"), body.top_k, **kw)
            else:
                r = await self.aggregator.query.remote(name, self._matrix([body.vector], "vector"), body.top_k, **kw)
            model = (r["lineage"] or {}).get("model")
            if encoder_lineage is not None and model and model != encoder_lineage.get("model"):
                raise ApiError(400, 3, f"collection {r['collection']!r} holds vectors of model {model!r}; "
                                       f"the server encodes text with {encoder_lineage.get('model')!r}")
            for s, sec in r["shard_seconds"].items():
                self.metrics["shard"].labels(str(s)).observe(sec)
            if r["partial"]:
                self.metrics["partial"].inc()
            def matches(q: int) -> list[dict]:
                out = []
                for j, rid in enumerate(r["ids"][q]):
                    m = {"id": rid, "score": float(r["scores"][q][j])}
                    if body.include_values:
                        m["values"] = r["vectors"][q][j].tolist()
                    if body.include_metadata:
                        m["metadata"] = r["metadata"][q][j]
                    out.append(m)
                return out

            answer = {"namespace": body.namespace, "collection": r["collection"],
                      "sequence": r["sequence"], "index": r["index"], "lineage": r["lineage"],
                      "partial": r["partial"], "missingShards": r["missing_shards"]}
            if body.queries is not None:
                return {"results": [{"matches": matches(q)} for q in range(len(r["ids"]))], **answer}
            return {"matches": matches(0), **answer}
        return await self._guard(request, "query", False, run)

    @api.get("/vectors/fetch")
    async def fetch(self, request: Request, ids: list[str] = Query(default=[]), namespace: str = ""):
        async def run():
            if not ids:
                raise ApiError(400, 3, "fetch needs at least one id (?ids=a&ids=b)")
            if len(ids) > self.cfg.max_batch:
                raise ApiError(400, 3, f"{len(ids)} ids in one fetch; the limit is {self.cfg.max_batch}")
            r = await self.aggregator.fetch.remote(self._namespace(namespace), ids)
            vectors = {i: {"id": i, "values": v.tolist(), "metadata": m} for i, (v, m) in r["records"].items()}
            return {"vectors": vectors, "namespace": namespace, "collection": r["collection"]}
        return await self._guard(request, "fetch", False, run)

    @api.post("/vectors/update")
    async def update(self, body: UpdateBody, request: Request):
        async def run():
            if body.sparse_values:
                raise ApiError(400, 3, "sparse values are not supported")
            if body.dry_run:
                raise ApiError(400, 3, "dryRun is not supported")
            values = None if body.values is None else self._matrix([body.values], "values")
            r = await self.writer.update.remote(self._namespace(body.namespace), body.id, values,
                                                body.set_metadata, body.filter)
            return {"matchedRecords": r["count"], "sequence": r["sequence"]}
        return await self._guard(request, "update", True, run)

    @api.post("/vectors/delete")
    async def delete(self, body: DeleteBody, request: Request):
        async def run():
            if body.ids is not None and len(body.ids) > self.cfg.max_batch:
                raise ApiError(400, 3, f"{len(body.ids)} ids in one delete; the limit is {self.cfg.max_batch}")
            name = self._namespace(body.namespace)
            try:
                r = await self.writer.delete.remote(name, body.ids, body.filter, body.delete_all)
            except BaseException as e:  # deleting from a namespace that does not exist is a no-op in Pinecone
                if isinstance(_unwrap(e), CollectionNotFound):
                    return {}
                raise
            return {"deletedCount": r["count"], "sequence": r["sequence"]}
        return await self._guard(request, "delete", True, run)

    @api.post("/describe_index_stats")
    async def describe_index_stats(self, request: Request, body: Optional[StatsBody] = None):
        async def run():
            if body is not None and body.filter:
                raise ApiError(400, 3, "describe_index_stats does not take a filter")
            listing = await self.writer.list.remote()
            cols = listing["collections"]
            namespaces = {("__default__" if n == "default" else n): {"vectorCount": c["records"]}
                          for n, c in cols.items()}
            first = cols.get("default") or next(iter(cols.values()), None)
            return {"namespaces": namespaces, "dimension": first["dim"] if first else None,
                    "indexFullness": 0.0, "totalVectorCount": sum(c["records"] for c in cols.values()),
                    "metric": first["metric"] if first else self.cfg.metric, "vectorType": "dense"}
        return await self._guard(request, "describe_index_stats", False, run)

    # -- ours -------------------------------------------------------------------
    @api.get("/collections")
    async def list_collections(self, request: Request):
        return await self._guard(request, "collections", False, lambda: self.writer.list.remote())

    @api.post("/collections")
    async def create_collection(self, body: CreateBody, request: Request):
        async def run():
            if not 1 <= body.dimension <= self.cfg.max_dim:
                raise ApiError(400, 3, f"dimension must be between 1 and {self.cfg.max_dim}, got {body.dimension}")
            return await self.writer.create.remote(check_name(body.name), body.dimension, body.metric, body.index,
                                                   body.lineage)
        return await self._guard(request, "collections", True, run)

    @api.delete("/collections/{name}")
    async def drop_collection(self, name: str, request: Request):
        async def run():
            await self.writer.drop.remote(check_name(name))
            return {}
        return await self._guard(request, "collections", True, run)

    @api.put("/aliases/{alias}")
    async def set_alias(self, alias: str, body: AliasBody, request: Request):
        async def run():
            await self.writer.set_alias.remote(check_name(alias, "alias"), check_name(body.collection))
            return {"alias": alias, "collection": body.collection}
        return await self._guard(request, "aliases", True, run)

    @api.delete("/aliases/{alias}")
    async def drop_alias(self, alias: str, request: Request):
        async def run():
            await self.writer.drop_alias.remote(check_name(alias, "alias"))
            return {}
        return await self._guard(request, "aliases", True, run)

    @api.get("/healthz")
    async def healthz(self):
        return {"status": "ok"}

    @api.get("/metrics")
    async def metrics(self):
        from prometheus_client import generate_latest

        try:
            stats = await asyncio.wait_for(self.aggregator.stats.remote(), timeout=self.cfg.shard_timeout_s)
            for name, shards in stats.items():
                for s, st in shards.items():
                    self.metrics["vectors"].labels(name, str(s)).set(st["records"])
        except Exception:  # noqa: BLE001 - the counters are still worth serving
            log.warning("metrics: shard stats unavailable")
        return PlainTextResponse(generate_latest(self.metrics["registry"]).decode(),
                                 media_type="text/plain; version=0.0.4")
