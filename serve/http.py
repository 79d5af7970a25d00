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

Auth: the ``Api-Key`` header; a read-only key may not write, and a key limited to some
collections may use only those names (an alias needs its target in scope too), sees only them
in listings, and may not create, drop or alias collections. Limits (``max_body_bytes``, also
for a chunked body; ``max_batch``, ``max_top_k``, ``max_dim``, ``max_id_length``,
``max_metadata_bytes``, ``max_filter_bytes``/``max_filter_depth``) are stated in
``/openapi.json``, and each refusal names the limit.

Errors are ``{"code", "message", "details"}`` with a 4xx status (gRPC-style codes
as Pinecone uses: 3 invalid argument, 5 not found, 7 permission denied, 16
unauthenticated). Request bodies, query vectors and texts are never logged.
"""

import asyncio
import hmac
import json
import logging
import time
from typing import Any, Optional

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from gpusearch.arrays import MAX_SQUARED_NORM, first_overlong_row
from gpusearch.catalog import CollectionNotFound, check_name, resolve_alias
from gpusearch.fileio import is_disk_full
from gpusearch.wal import WALCorruptError
from gpusearch.collection import METRICS

from .config import KeyGrant, ServeConfig, parse_key_grant

__all__ = ["Ingress", "api", "ApiError", "BodyLimit", "key_grant", "key_role", "openapi_with_limits"]

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
    if is_disk_full(e):
        # The server's side, not the client's: say so without the server's paths, keep those in the log.
        log.warning("write refused, disk full: %s", e)
        return _error_json(507, 8, "the server's disk is full: this write was not applied (nothing of it was "
                                   "kept) and earlier acknowledged writes are safe; retry once space is freed")
    if isinstance(e, WALCorruptError):
        log.error("a collection cannot be opened: %s", e)
        return _error_json(503, 14, "this collection cannot be opened: its write-ahead log is damaged in a way "
                                    "that would lose acknowledged records if cut; an operator must restore it "
                                    "(the server log names the file)")
    if isinstance(e, (ValueError, TypeError)):
        return _error_json(400, 3, str(e))
    if isinstance(e, (TimeoutError, asyncio.TimeoutError)):
        return _error_json(504, 4, str(e) or "a shard did not answer in time")
    log.exception("internal error", exc_info=e)
    return _error_json(500, 13, f"internal error ({type(e).__name__}); this is a bug, please report it")


# Set by the Ingress replica from its config; the middleware runs before FastAPI reads a body.
_body_limit = {"bytes": 64 << 20}


class _BodyTooLarge(Exception):
    pass


def _too_large(limit: int, size: str) -> JSONResponse:
    return _error_json(413, 3, f"request body is {size}; the limit is {limit} bytes (max_body_bytes)")


class BodyLimit:
    """Refuses a request body over ``_body_limit["bytes"]`` with 413: at once when ``Content-Length``
    says so, and while it streams otherwise (a chunked body has no Content-Length): the bytes are
    counted as they arrive and reading stops at the first chunk past the limit."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = _body_limit["bytes"]
        declared = [v for k, v in scope.get("headers", ()) if k.lower() == b"content-length"]
        if declared:
            text = declared[0].decode("latin-1").strip()
            if len(declared) > 1 or not text.isdigit():
                return await _error_json(400, 3, "Content-Length must be one non-negative integer")(scope, receive, send)
            if int(text) > limit:
                return await _too_large(limit, f"{int(text)} bytes")(scope, receive, send)
        seen, over, started = 0, False, False

        async def counted_receive():
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    over = True
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message):
            nonlocal started
            if over:  # the app's answer to a body it could not read; ours goes out instead
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not over:
                raise
        if over and not started:
            await _too_large(limit, f"over {limit} bytes (streamed)")(scope, receive, send)


api.add_middleware(BodyLimit)


_HTTP_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 405: 12, 413: 3, 415: 3}


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException):
    """Starlette's and FastAPI's own refusals (unknown route, wrong method, a body that is not JSON)
    in our error shape."""
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 400 and "parsing the body" in detail:
        detail = "the request body is not valid JSON; send a JSON object"
    elif exc.status_code == 404:
        detail = f"no route {request.url.path}; see /docs for the API"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}; see /docs for the API"
    status = exc.status_code if 400 <= exc.status_code < 600 else 500
    return _error_json(status, _HTTP_CODES.get(status, 3 if status < 500 else 13), detail)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError):
    details = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":  # FastAPI puts the character offset where a field goes
            at = err.get("loc", ("body", "?"))[-1]
            return _error_json(400, 3, f"the request body is not valid JSON (error at character {at}); "
                                       f"send a JSON object", [{"field": "body", "problem": err.get("msg", "")}])
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
    id: str = Field(min_length=1)  # at most max_id_length characters: checked with the server's config
    values: list[float]
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



def key_grant(grants: dict, key: str):
    """The :class:`KeyGrant` of ``key`` in ``grants`` (key -> KeyGrant), or None; every configured key
    is compared in constant time.

    No early exit and no dict lookup (whose timing depends on the key), so the
    time taken says nothing about how much of a guess was right.
    """
    given = key.encode("utf-8", "surrogatepass")
    found = None
    for candidate, grant in grants.items():
        if hmac.compare_digest(given, candidate.encode("utf-8", "surrogatepass")):
            found = grant
    return found


def key_role(api_keys: dict, key: str):
    """The role ("rw"/"ro") of ``key`` in a config's ``api_keys``, or None (constant time, as key_grant)."""
    grant = key_grant({k: parse_key_grant(v, k) for k, v in api_keys.items()}, key)
    return None if grant is None else grant.role


def json_limits(value: Any, what: str, max_bytes: int, max_depth: int, setting: str) -> None:
    """Refuse ``value`` (parsed JSON) nesting deeper than ``max_depth`` or over ``max_bytes`` as compact JSON."""
    stack, depth = [(value, 1)], 0
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            items = v.values()
        elif isinstance(v, list):
            items = v
        else:
            continue
        depth = max(depth, d)
        if depth > max_depth:
            raise ApiError(400, 3, f"{what} nests deeper than {max_depth} levels of objects and lists "
                                   f"(the limit)")
        stack.extend((x, d + 1) for x in items)
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8", "replace"))
    if size > max_bytes:
        raise ApiError(400, 3, f"{what} is {size} bytes as JSON; the limit is {max_bytes} bytes ({setting})")


def _non_null(schema: dict) -> dict:
    """The part of a property schema that is not ``null`` (pydantic writes Optional as anyOf)."""
    for branch in schema.get("anyOf", ()):
        if branch.get("type") != "null":
            return branch
    return schema


_F32_MAX = float(np.finfo(np.float32).max)
_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
_NAMESPACE_PATTERN = r"^$|^__default__$|^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
_ERRORS = {"400": "Invalid argument: the message says what was expected",
           "401": "No Api-Key header, or an unknown key", "403": "The key may not do this",
           "404": "No such collection, alias or route", "413": "The request body is over max_body_bytes"}


def openapi_with_limits(cfg: ServeConfig) -> dict:
    """The app's OpenAPI document stating this server's limits (topK, batch, dim, id length, names)
    and its real error answers ({code, message, details} with a 4xx, never FastAPI's 422)."""
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title=api.title, version=api.version, description=api.description, routes=api.routes)
    comps = schema.setdefault("components", {}).setdefault("schemas", {})

    def prop(model: str, name: str) -> dict:
        return _non_null(comps[model]["properties"][name])

    prop("QueryBody", "topK").update(minimum=1, maximum=cfg.max_top_k)
    prop("UpsertBody", "vectors").update(minItems=1, maxItems=cfg.max_batch)
    prop("VectorIn", "values").update(minItems=1, maxItems=cfg.max_dim)
    prop("VectorIn", "id").update(maxLength=cfg.max_id_length)
    prop("QueryBody", "vector").update(minItems=1, maxItems=cfg.max_dim)
    prop("QueryBody", "queries").update(minItems=1, maxItems=cfg.max_batch)
    prop("QueryBody", "queries")["items"].update(minItems=1, maxItems=cfg.max_dim)
    prop("QueryBody", "id").update(minLength=1, maxLength=cfg.max_id_length)
    prop("UpdateBody", "id").update(minLength=1, maxLength=cfg.max_id_length)
    prop("UpdateBody", "values").update(minItems=1, maxItems=cfg.max_dim)
    prop("DeleteBody", "ids").update(maxItems=cfg.max_batch)
    prop("DeleteBody", "ids")["items"].update(minLength=1, maxLength=cfg.max_id_length)
    prop("CreateBody", "dimension").update(minimum=1, maximum=cfg.max_dim)
    prop("CreateBody", "name").update(pattern=_NAME_PATTERN)
    prop("CreateBody", "metric").update(enum=list(METRICS))
    # float32 is what a vector is stored as: a larger number would be infinity
    for model, name in (("VectorIn", "values"), ("QueryBody", "vector"), ("UpdateBody", "values")):
        prop(model, name)["items"].update(minimum=-_F32_MAX, maximum=_F32_MAX)
    prop("QueryBody", "queries")["items"]["items"].update(minimum=-_F32_MAX, maximum=_F32_MAX)
    prop("AliasBody", "collection").update(pattern=_NAME_PATTERN)
    for model in ("UpsertBody", "QueryBody", "UpdateBody", "DeleteBody"):
        prop(model, "namespace").update(pattern=_NAMESPACE_PATTERN)
    # Accepted (the Pinecone SDK may send them) but refused with a message: not part of the API.
    for model, name in (("VectorIn", "sparseValues"), ("QueryBody", "sparseVector"), ("UpdateBody", "sparseValues"),
                        ("UpdateBody", "dryRun")):
        comps[model]["properties"].pop(name, None)
    comps["Error"] = {"type": "object", "required": ["code", "message", "details"], "properties": {
        "code": {"type": "integer"}, "message": {"type": "string"}, "details": {"type": "array"}}}
    comps.pop("HTTPValidationError", None)
    comps.pop("ValidationError", None)
    schema.setdefault("components", {})["securitySchemes"] = {
        "ApiKey": {"type": "apiKey", "in": "header", "name": "Api-Key"}}
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            for p in op.get("parameters", ()):
                if p["name"] == "ids":
                    _non_null(p["schema"]).update(minItems=1, maxItems=cfg.max_batch)
                    _non_null(p["schema"])["items"].update(minLength=1, maxLength=cfg.max_id_length)
                elif p["name"] == "namespace":
                    _non_null(p["schema"]).update(pattern=_NAMESPACE_PATTERN)
                elif p["name"] in ("name", "alias"):
                    _non_null(p["schema"]).update(pattern=_NAME_PATTERN)
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            if path != "/healthz":
                for status, text in _ERRORS.items():
                    if path == "/metrics" and status not in ("401", "403"):
                        continue
                    responses[status] = {"description": text, "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
                if cfg.api_keys:
                    op["security"] = [{"ApiKey": []}]
    return schema


# Serve pickles ``api`` into each Ingress replica by value, so the replica's copy is not this module's
# ``api``; its ``openapi`` is this module-level function (pickled by reference), which reads the
# config the replica's Ingress put here.
_openapi_doc: dict = {}


def _served_openapi() -> dict:
    if "schema" not in _openapi_doc:
        _openapi_doc["schema"] = openapi_with_limits(_openapi_doc.get("cfg") or ServeConfig())
    return _openapi_doc["schema"]


api.openapi = _served_openapi


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    def __init__(self, cfg: dict, aggregator, writer, encoder=None):
        self.cfg = ServeConfig(**cfg)
        self.aggregator, self.writer, self.encoder = aggregator, writer, encoder
        self.metrics = _metrics()
        self._encoder_lineage = None  # asked of the Encoder once, on the first text query
        _body_limit["bytes"] = self.cfg.max_body_bytes
        self.grants = self.cfg.key_grants()
        _openapi_doc.clear()
        _openapi_doc["cfg"] = self.cfg  # /openapi.json and /docs state this server's limits

    # -- plumbing --------------------------------------------------------------
    def _auth(self, request: Request, write: bool, admin: bool = False) -> Optional[KeyGrant]:
        """The caller's grant (None when the server has no keys); 401 without a known key, 403 for a
        write with a read-only key or collection management with a scoped key."""
        if not self.grants:
            return None
        key = request.headers.get("api-key")
        if not key:
            raise ApiError(401, 16, "missing Api-Key header")
        grant = key_grant(self.grants, key)
        if grant is None:
            raise ApiError(401, 16, "invalid API key")
        if write and grant.role != "rw":
            raise ApiError(403, 7, "this API key is read-only; writes need a read-write key")
        if admin and grant.scoped:
            raise ApiError(403, 7, "this API key is limited to some collections; creating, dropping and "
                                   "aliasing collections need an unscoped read-write key")
        return grant

    def _allowed(self, grant: Optional[KeyGrant], name: str) -> bool:
        """Whether ``grant`` may use ``name``: the name asked for and, for an alias, the collection it
        points at must both be in a scoped key's collections."""
        if grant is None or not grant.scoped:
            return True
        return name in grant.collections and resolve_alias(self.cfg.data_dir, name) in grant.collections

    def _scope(self, grant: Optional[KeyGrant], name: str, resolved: Optional[str] = None) -> str:
        """``name`` when ``grant`` may use it (and ``resolved``, the collection an answer came from); else 403."""
        if grant is None or not grant.scoped:
            return name
        if name not in grant.collections:
            raise ApiError(403, 7, f"this API key may not use collection {name!r}; it is limited to other "
                                   f"collections")
        target = resolved if resolved is not None else resolve_alias(self.cfg.data_dir, name)
        if target not in grant.collections:
            raise ApiError(403, 7, f"{name!r} is an alias of a collection this API key may not use")
        return name

    async def _guard(self, request: Request, route: str, write: bool, fn, admin: bool = False):
        t0 = time.perf_counter()
        try:
            grant = self._auth(request, write, admin)
            result = await fn(grant)
        except BaseException as e:  # noqa: BLE001 - every error becomes a JSON answer
            if isinstance(e, asyncio.CancelledError):
                raise
            response = error_response(e)
        else:
            try:
                response = result if isinstance(result, (JSONResponse, PlainTextResponse)) else JSONResponse(result)
            except Exception as e:  # noqa: BLE001 - an answer we cannot encode (NaN, inf) is our bug, not the client's
                log.exception("could not encode the answer", exc_info=e)
                response = _error_json(500, 13, f"internal error: the answer could not be encoded as JSON "
                                                f"({type(e).__name__}); this is a bug, please report it")
        status = response.status_code
        self.metrics["requests"].labels(route, str(status)).inc()
        self.metrics["latency"].labels(route).observe(time.perf_counter() - t0)
        return response

    def _namespace(self, ns: str) -> str:
        return check_name(ns, "namespace")

    def _id(self, value: str, what: str) -> str:
        if not value:
            raise ApiError(400, 3, f"{what} is empty; expected a record id of 1 to {self.cfg.max_id_length} characters")
        if len(value) > self.cfg.max_id_length:
            raise ApiError(400, 3, f"{what} has {len(value)} characters; the limit is {self.cfg.max_id_length} "
                                   f"(max_id_length)")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(400, 3, f"{what} is not valid UTF-8 text (it holds a lone surrogate)") from None
        return value

    def _filter(self, flt, what: str = "filter"):
        if flt is not None:
            json_limits(flt, what, self.cfg.max_filter_bytes, self.cfg.max_filter_depth, "max_filter_bytes")
        return flt

    def _metadata(self, meta, what: str):
        if meta is not None:
            json_limits(meta, what, self.cfg.max_metadata_bytes, self.cfg.max_filter_depth, "max_metadata_bytes")
        return meta

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
            raise ApiError(400, 3, f"{what} holds NaN or infinity (or a number beyond float32); expected finite numbers")
        # The engine's rule (gpusearch.arrays), refused here to name the request's field.
        bad = first_overlong_row(m)
        if bad is not None:
            i, sq = bad
            raise ApiError(400, 3, f"{what}[{i}] is too long: its squared length {sq:.3g} is over "
                                   f"{MAX_SQUARED_NORM:.3g}, where float32 scores overflow; scale it down")
        return m

    # -- Pinecone data plane ---------------------------------------------------
    @api.post("/vectors/upsert")
    async def upsert(self, body: UpsertBody, request: Request):
        async def run(grant):
            if len(body.vectors) > self.cfg.max_batch:
                raise ApiError(400, 3, f"{len(body.vectors)} vectors in one upsert; the limit is {self.cfg.max_batch}")
            if any(v.sparse_values for v in body.vectors):
                raise ApiError(400, 3, "sparse values are not supported; send dense values only")
            name = self._scope(grant, self._namespace(body.namespace))
            for i, v in enumerate(body.vectors):
                self._id(v.id, f"vectors[{i}].id")
                self._metadata(v.metadata, f"vectors[{i}].metadata")
            vecs = self._matrix([v.values for v in body.vectors], "vectors")
            r = await self.writer.upsert.remote(name, [v.id for v in body.vectors], vecs,
                                                [v.metadata for v in body.vectors])
            return {"upsertedCount": r["count"], "sequence": r["sequence"]}
        return await self._guard(request, "upsert", True, run)

    @api.post("/query")
    async def query(self, body: QueryBody, request: Request):
        async def run(grant):
            if not 1 <= body.top_k <= self.cfg.max_top_k:
                raise ApiError(400, 3, f"topK must be between 1 and {self.cfg.max_top_k}, got {body.top_k}")
            if body.sparse_vector:
                raise ApiError(400, 3, "sparse vectors are not supported; query with vector, id or text")
            given = [x for x in ("vector", "id", "text", "queries") if getattr(body, x) is not None]
            if len(given) != 1:
                raise ApiError(400, 3, f"query takes exactly one of vector, id, text or queries; got {given or 'none'}")
            if body.queries is not None and len(body.queries) > self.cfg.max_batch:
                raise ApiError(400, 3, f"{len(body.queries)} queries in one request; the limit is {self.cfg.max_batch}")
            name = self._scope(grant, self._namespace(body.namespace))
            if body.id is not None:
                self._id(body.id, "id")
            kw = dict(filter=self._filter(body.filter), include_metadata=body.include_metadata,
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
            self._scope(grant, name, r["collection"])  # the alias may have moved since the check above
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
        async def run(grant):
            if not ids:
                raise ApiError(400, 3, "fetch needs at least one id (?ids=a&ids=b)")
            if len(ids) > self.cfg.max_batch:
                raise ApiError(400, 3, f"{len(ids)} ids in one fetch; the limit is {self.cfg.max_batch}")
            for i, rid in enumerate(ids):
                self._id(rid, f"ids[{i}]")
            name = self._scope(grant, self._namespace(namespace))
            r = await self.aggregator.fetch.remote(name, ids)
            self._scope(grant, name, r["collection"])
            vectors = {i: {"id": i, "values": v.tolist(), "metadata": m} for i, (v, m) in r["records"].items()}
            return {"vectors": vectors, "namespace": namespace, "collection": r["collection"]}
        return await self._guard(request, "fetch", False, run)

    @api.post("/vectors/update")
    async def update(self, body: UpdateBody, request: Request):
        async def run(grant):
            if body.sparse_values:
                raise ApiError(400, 3, "sparse values are not supported")
            if body.dry_run:
                raise ApiError(400, 3, "dryRun is not supported")
            name = self._scope(grant, self._namespace(body.namespace))
            if body.id is not None:
                self._id(body.id, "id")
            values = None if body.values is None else self._matrix([body.values], "values")
            r = await self.writer.update.remote(name, body.id, values,
                                                self._metadata(body.set_metadata, "setMetadata"),
                                                self._filter(body.filter))
            return {"matchedRecords": r["count"], "sequence": r["sequence"]}
        return await self._guard(request, "update", True, run)

    @api.post("/vectors/delete")
    async def delete(self, body: DeleteBody, request: Request):
        async def run(grant):
            if body.ids is not None and len(body.ids) > self.cfg.max_batch:
                raise ApiError(400, 3, f"{len(body.ids)} ids in one delete; the limit is {self.cfg.max_batch}")
            for i, rid in enumerate(body.ids or ()):
                self._id(rid, f"ids[{i}]")
            name = self._scope(grant, self._namespace(body.namespace))
            try:
                r = await self.writer.delete.remote(name, body.ids, self._filter(body.filter), body.delete_all)
            except BaseException as e:  # deleting from a namespace that does not exist is a no-op in Pinecone
                if isinstance(_unwrap(e), CollectionNotFound):
                    return {}
                raise
            return {"deletedCount": r["count"], "sequence": r["sequence"]}
        return await self._guard(request, "delete", True, run)

    async def _listing(self, grant: Optional[KeyGrant]) -> dict:
        """Collections and aliases, only those a scoped key may use (it learns no other name)."""
        listing = await self.writer.list.remote()
        if grant is None or not grant.scoped:
            return listing
        scope = grant.collections
        aliases = {a: t for a, t in listing.get("aliases", {}).items() if a in scope and t in scope}
        return {**listing, "collections": {n: c for n, c in listing["collections"].items() if n in scope},
                "aliases": aliases}

    @api.post("/describe_index_stats")
    async def describe_index_stats(self, request: Request, body: Optional[StatsBody] = None):
        async def run(grant):
            if body is not None and body.filter:
                raise ApiError(400, 3, "describe_index_stats does not take a filter")
            cols = (await self._listing(grant))["collections"]
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
        return await self._guard(request, "collections", False, self._listing)

    @api.post("/collections")
    async def create_collection(self, body: CreateBody, request: Request):
        async def run(grant):
            if not 1 <= body.dimension <= self.cfg.max_dim:
                raise ApiError(400, 3, f"dimension must be between 1 and {self.cfg.max_dim}, got {body.dimension}")
            if body.lineage is not None:
                json_limits(body.lineage, "lineage", self.cfg.max_metadata_bytes, self.cfg.max_filter_depth,
                            "max_metadata_bytes")
            return await self.writer.create.remote(check_name(body.name), body.dimension, body.metric, body.index,
                                                   body.lineage)
        return await self._guard(request, "collections", True, run, admin=True)

    @api.delete("/collections/{name}")
    async def drop_collection(self, name: str, request: Request):
        async def run(grant):
            await self.writer.drop.remote(check_name(name))
            return {}
        return await self._guard(request, "collections", True, run, admin=True)

    @api.put("/aliases/{alias}")
    async def set_alias(self, alias: str, body: AliasBody, request: Request):
        async def run(grant):
            await self.writer.set_alias.remote(check_name(alias, "alias"), check_name(body.collection))
            return {"alias": alias, "collection": body.collection}
        return await self._guard(request, "aliases", True, run, admin=True)

    @api.delete("/aliases/{alias}")
    async def drop_alias(self, alias: str, request: Request):
        async def run(grant):
            await self.writer.drop_alias.remote(check_name(alias, "alias"))
            return {}
        return await self._guard(request, "aliases", True, run, admin=True)

    @api.get("/healthz")
    async def healthz(self):
        return {"status": "ok"}

    @api.get("/metrics")
    async def metrics(self, request: Request):
        """Prometheus text. Its labels name every collection, so with API keys configured it needs an
        unscoped key (either role); a key limited to some collections gets 403."""
        async def run(grant):
            from prometheus_client import generate_latest

            if grant is not None and grant.scoped:
                raise ApiError(403, 7, "/metrics names every collection; it needs an API key that is not "
                                       "limited to some collections")
            try:
                stats = await asyncio.wait_for(self.aggregator.stats.remote(), timeout=self.cfg.shard_timeout_s)
                for name, shards in stats.items():
                    for s, st in shards.items():
                        self.metrics["vectors"].labels(name, str(s)).set(st["records"])
            except Exception:  # noqa: BLE001 - the counters are still worth serving
                log.warning("metrics: shard stats unavailable")
            return PlainTextResponse(generate_latest(self.metrics["registry"]).decode(),
                                     media_type="text/plain; version=0.0.4")
        return await self._guard(request, "metrics", False, run)
