"""The HTTP routes of the Aggregator: Pinecone's data-plane API (so the ``pinecone`` SDK works), plus ours.

Pinecone routes: ``POST /vectors/upsert``, ``POST /query``, ``GET /vectors/fetch``,
``POST /vectors/update``, ``POST /vectors/delete``, ``POST /describe_index_stats``,
``GET /vectors/list``. At the root a namespace is a collection (``""`` is ``default``); the
first upsert into a new namespace creates it with the dim of its vectors and the server's
metric. Pinecone's control plane (``GET/POST /indexes``, ``GET/PATCH/DELETE /indexes/{name}``)
makes indexes whose data plane is the same routes under ``/index/{name}/``, each namespace
a collection ``{name}.{namespace}`` (:mod:`._indexes`). Pinecone's inference routes
``POST /embed`` and ``POST /rerank`` answer with the server's own encoder and reranker.

Ours: ``text`` in ``/query`` (embedded in the Aggregator's own process), ``queries``
(several vectors in one request), ``params`` (``nprobe``, ``efSearch``),
``GET/POST /collections``, ``DELETE /collections/{name}``, ``PUT/DELETE /aliases/{alias}``,
``GET /healthz``, ``GET /metrics`` (Prometheus) and ``/docs`` (OpenAPI). Every query
answer names the collection it searched (after alias resolution), its sequence
number, index and lineage, and ``partial``.

:class:`HttpRoutes` holds the routes; the Aggregator deployment
(:mod:`gpusearch.serve.deployments`) is that class and the FastAPI ingress at once, so a
query goes proxy -> Aggregator -> shards, and the routes call the Aggregator's own
methods (no hop). A route checks only what is HTTP's own (:mod:`._limits`: body shape
and size, counts against ``max_batch``, id length, metadata and filter JSON size and
depth) and authenticates (:mod:`._auth`); the search request itself is checked once, by
the engine. Errors become ``{"code", "message", "details"}`` with a status chosen by the
exception's class (:mod:`._errors`). Request bodies, query vectors and texts are never
logged.
"""

import asyncio
import base64
import binascii
import logging
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
from fastapi import Body, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from gpusearch.catalog import CollectionNotFound, _JsonFileCache, check_name
from gpusearch.collection import METRICS, sorted_page
from gpusearch.errors import InvalidArgumentError, LimitExceededError, NotFoundError, PermissionDeniedError
from gpusearch.bm25 import MAX_TEXT_CHARS
from gpusearch.sparse import check_sparse

from ._auth import authenticate, check_scope, scoped_listing
from ._errors import error_json, error_response, unwrap
from ._indexes import (INDEXES_FILE, METRICS as PINECONE_METRICS, check_index_name, collection_namespace,
                       parse_create_for_model,
                       index_model, is_hashed, namespace_collection, parse_configure, parse_create)
from ._logs import COLLECTION, access_line
from ._limits import BodyLimit, check_count, check_id, check_lengths, json_limits, json_matrix
from .config import KeyGrant, ServeConfig

__all__ = ["api", "HttpRoutes", "openapi_with_limits", "OPENAPI"]

log = logging.getLogger("gpusearch.serve")

api = FastAPI(
    title="gpusearch",
    description="GPU-accelerated similarity search on Ray Serve; Pinecone-compatible data plane.",
    version="0.1.0",
)
api.add_middleware(BodyLimit)

#: The routes an index's data plane serves under ``/index/{name}/`` (serve/_indexes.py).
INDEX_ROUTES = frozenset({"/vectors/upsert", "/query", "/vectors/fetch", "/vectors/update", "/vectors/delete",
                          "/describe_index_stats", "/vectors/list", "/vectors/fetch_by_metadata", "/namespaces"})


class IndexPrefix:
    """``/index/{name}/query`` is ``/query`` of index ``name``'s data plane: the path is rewritten and the
    index's name left in ``request.state.index`` (ASGI scope ``state``). Other paths pass unchanged."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/index/"):
            name, _, rest = scope["path"][len("/index/"):].partition("/")
            if "/" + rest in INDEX_ROUTES or rest.startswith(("namespaces/", "records/namespaces/")):
                scope = dict(scope, path="/" + rest, raw_path=("/" + rest).encode(),
                             state={**scope.get("state", {}), "index": name})
        await self.app(scope, receive, send)


api.add_middleware(IndexPrefix)


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
    return error_json(status, detail)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError):
    details = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":  # FastAPI puts the character offset where a field goes
            at = err.get("loc", ("body", "?"))[-1]
            return error_json(400, f"the request body is not valid JSON (error at character {at}); "
                                   f"send a JSON object", [{"field": "body", "problem": err.get("msg", "")}])
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        details.append({"field": where, "problem": err.get("msg", "")})
    first = details[0] if details else {"field": "body", "problem": "invalid"}
    return error_json(400, f"{first['field'] or 'body'}: {first['problem']}", details)


# -- request bodies (Pinecone's camelCase names) ------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")


class VectorIn(_Body):
    id: str = Field(min_length=1)  # at most max_id_length characters: checked with the server's config
    values: Optional[list[float]] = None  # required unless the index (or the collection) is sparse
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
    mode: str = Field(default="dense", description="ours: what `text` is searched with: 'dense' (embedded), "
                                                   "'keyword' (BM25, a collection with a bm25Field) or 'hybrid' "
                                                   "(both, fused)")
    fusion: Optional[Any] = Field(default=None, description="ours, with mode 'hybrid': 'rrf' (default), "
                                                             "{'method': 'rrf', 'k': 60} or {'method': 'weighted', "
                                                             "'alpha': 0.5} (alpha: the dense list's weight)")
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


class FetchByMetadataBody(_Body):
    filter: Optional[dict[str, Any]] = None
    namespace: str = ""
    limit: Optional[int] = None
    pagination_token: Optional[str] = Field(default=None, alias="paginationToken")


class StatsBody(_Body):
    filter: Optional[dict[str, Any]] = None


class CreateBody(_Body):
    name: str
    dimension: int
    metric: Optional[str] = None
    index: Optional[str] = None
    lineage: Optional[dict[str, Any]] = None
    index_options: Optional[dict[str, int]] = Field(
        default=None, alias="indexOptions",
        description="ours: the index's build and default-search settings, e.g. {'efConstruction': 200} (HNSW), "
                    "{'nprobe': 16} (IVF), {'kFactor': 8} (a ',RFlat' refine stage)")
    bm25_field: Optional[str] = Field(
        default=None, alias="bm25Field",
        description="ours: the metadata field whose text the collection keeps a BM25 keyword index of "
                    "(query with text and mode 'keyword' or 'hybrid')")


class AliasBody(_Body):
    collection: str


class BackupBody(_Body):
    uri: Optional[str] = Field(default=None, max_length=2048, description=(
        "where the backup goes: the server's backup location (setting backup_uri) when left out, or a path "
        "or URI below one of its backup_locations"))
    note: Optional[str] = Field(default=None, max_length=1024, description="kept in the backup's manifest")


class RestoreBody(_Body):
    uri: Optional[str] = Field(default=None, max_length=2048, description=(
        "where the backup is: the server's backup location when left out (as for backup)"))
    backup: Optional[str] = Field(default=None, max_length=200, description=(
        "the backup's id (GET /backups lists them); the newest complete one when left out"))


# -- the OpenAPI document, with this server's limits ----------------------------
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
           "404": "No such collection, alias, record or route", "409": "A collection or alias of that name exists",
           "413": "The request body is over max_body_bytes"}


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
    # Accepted (the Pinecone SDK may send it) but not part of the API as documented here.
    comps["UpdateBody"]["properties"].pop("dryRun", None)
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


# Serve pickles ``api`` into each Aggregator replica by value, so the replica's copy is not this
# module's ``api``; its ``openapi`` is this module-level function (pickled by reference), which reads
# the config the replica's Aggregator put here.
OPENAPI: dict = {}


def _served_openapi() -> dict:
    if "schema" not in OPENAPI:
        OPENAPI["schema"] = openapi_with_limits(OPENAPI.get("cfg") or ServeConfig())
    return OPENAPI["schema"]


api.openapi = _served_openapi


def _matches(r, q: int, values: bool, metadata: bool) -> list[dict]:
    """Query ``q``'s matches of the SearchResult ``r`` as Pinecone writes them."""
    ids, scores = r.ids[q], r.scores[q].tolist()
    if not values and not metadata:
        return [{"id": i, "score": s} for i, s in zip(ids, scores)]
    out = []
    for j, (i, s) in enumerate(zip(ids, scores)):
        m = {"id": i, "score": s}
        if values:
            m["values"] = r.vectors[q][j].tolist()
            sv = None if r.sparse is None else r.sparse[q][j]
            if sv is not None:
                m["sparseValues"] = sv.as_dict()
        if metadata:
            m["metadata"] = r.metadata[q][j]
        out.append(m)
    return out


def parse_records(raw: bytes) -> list[dict]:
    """The records of a records upsert: NDJSON (one JSON object a line, what the SDKs send) or a JSON list.

    >>> parse_records(b'{"_id": "a", "text": "x"}\\n{"_id": "b", "text": "y"}\\n')[1]["_id"]
    'b'
    """
    import json

    try:
        text = raw.decode("utf-8", errors="strict") if raw else ""
    except UnicodeDecodeError as e:
        raise InvalidArgumentError(f"the body is not UTF-8 text (byte {e.start}): send NDJSON") from None
    stripped = text.strip()
    if not stripped:
        raise InvalidArgumentError("the body holds no records: send NDJSON, one JSON object a line")
    if stripped.startswith("["):
        try:
            records = json.loads(stripped)
        except ValueError as e:
            raise InvalidArgumentError(f"the body is not valid JSON: {e}") from None
    else:
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError as e:
                raise InvalidArgumentError(f"line {n} of the body is not a JSON object: {e}") from None
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise InvalidArgumentError(f"records[{i}] must be a JSON object, got {type(r).__name__}")
    return records


def rerank_units(documents: int) -> int:
    """Rerank units of a request: 1 per 100 documents, at least 1 (Pinecone's published rule)."""
    return max(1, -(-documents // 100))


def read_units(op: str, *, queries: int = 1, records: int = 0, dim: int = 0, fetched: int = 0) -> dict:
    """``usage`` as Pinecone reports it, by its published serverless rules (pinecone.io/learn/read-units):
    a query costs in proportion to its namespace's size, here 1 per GiB of stored vectors (records x dim x 4
    bytes; metadata not counted), at least 1, per query vector; a fetch 1 per 10 records, at least 1; a
    list page 1.

    >>> read_units("query", queries=2, records=1_000_000, dim=384)
    {'readUnits': 4}
    >>> read_units("fetch", fetched=25), read_units("list")
    ({'readUnits': 3}, {'readUnits': 1})
    """
    if op == "query":
        per = max(1, -(-records * dim * 4 // (1 << 30)))
        return {"readUnits": per * max(1, queries)}
    if op == "fetch":
        return {"readUnits": max(1, -(-fetched // 10))}
    return {"readUnits": 1}


#: The largest page ``GET /vectors/list`` and ``GET /namespaces`` return.
LIST_LIMIT = 1000
#: ... and ``POST /vectors/fetch_by_metadata`` (Pinecone's own ceiling).
FETCH_BY_METADATA_LIMIT = 10_000


def _id_token(last_id: str) -> str:
    """The pagination token after ``last_id``: opaque to clients (base64url of the id)."""
    return base64.urlsafe_b64encode(last_id.encode()).decode()


def _token_id(token: str) -> str:
    try:
        last = base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode()
        if last:
            return last
    except (binascii.Error, UnicodeError, ValueError):
        pass
    raise InvalidArgumentError("paginationToken is not one this server gave; send the `next` token of the "
                               "previous page", field="paginationToken")


class HttpRoutes:
    """The routes, as methods of the Aggregator (its class derives from this one).

    Needs of the class: ``cfg`` (ServeConfig), ``grants`` (key -> KeyGrant), ``metrics``
    (:class:`~gpusearch.serve._metrics.Metrics`), ``writer`` (the Writer's handle),
    ``reader`` (:class:`gpusearch.catalog.CatalogReader`), ``draining`` and ``in_flight`` (see
    :meth:`~gpusearch.serve.deployments.AggregatorServer.drain`) and the coroutines ``_search``,
    ``_fetch_records`` and ``stats``.
    """

    # -- plumbing --------------------------------------------------------------
    async def _guard(self, request: Request, route: str, write: bool, fn, admin: bool = False):
        """Authenticate, run ``fn(grant)``, and answer: its result as JSON, or its error by class."""
        t0 = time.perf_counter()
        if self.draining:  # stopping: refused before any work, retryable
            response = error_json(503, "the server is stopping; retry in a moment (or against another server)")
            response.headers["Retry-After"] = "1"
            return self._answered(request, route, response, t0)
        self.in_flight += 1
        COLLECTION.set(None)
        try:
            grant = authenticate(self.grants, request.headers.get("api-key"), write=write, admin=admin)
            result = await fn(grant)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - every error becomes a JSON answer, its status by class
            response = error_response(e)
        else:
            try:
                response = result if isinstance(result, Response) else JSONResponse(result)
            except Exception as e:  # noqa: BLE001 - an answer we cannot encode (NaN, inf) is our bug, not the client's
                log.exception("could not encode the answer", exc_info=e)
                response = error_json(500, f"internal error: the answer could not be encoded as JSON "
                                           f"({type(e).__name__}); this is a bug, please report it")
        finally:
            self.in_flight -= 1
        return self._answered(request, route, response, t0)

    def _answered(self, request: Request, route: str, response, t0: float):
        """Count the answer, write its one log line (no query string, no body), and return it."""
        seconds = time.perf_counter() - t0
        self.metrics.requests.labels(route, str(response.status_code)).inc()
        self.metrics.latency.labels(route).observe(seconds)
        access_line(request.method, request.url.path, response.status_code, seconds)
        return response

    def _index_records(self) -> dict:
        cache = getattr(self, "_indexes_cache", None)
        if cache is None:
            cache = self._indexes_cache = _JsonFileCache(Path(self.reader.data_dir) / INDEXES_FILE, {})
        return cache.get()

    def _index(self, request: Optional[Request]) -> Optional[dict]:
        """The Pinecone index a request was sent to (``/index/{name}/...``), or None for the root data plane
        (looked up once per request)."""
        name = getattr(request.state, "index", None) if request is not None else None
        if name is None:
            return None
        record = getattr(request.state, "index_record", None)
        if record is None:
            record = self._index_records().get(name)
            if record is None:
                raise NotFoundError(f"index {name!r} not found", kind="index", name=name)
            request.state.index_record = record
        return record

    def _never_written(self, request: Request, error: BaseException) -> bool:
        """Whether ``error`` says an index's namespace was never written, which Pinecone answers as empty
        (the root data plane answers 404: there a namespace names a collection)."""
        return self._index(request) is not None and isinstance(unwrap(error), CollectionNotFound)

    def _collection(self, grant: Optional[KeyGrant], namespace: str, request: Optional[Request] = None) -> str:
        """The collection a request's namespace means, if ``grant`` may use it: at the root, the collection
        of that name (an alias resolved once, here); under ``/index/{name}/``, that index's namespace."""
        index = self._index(request)
        if index is None:
            name = check_scope(grant, check_name(namespace, "namespace"), self.reader.resolve)
        else:
            name = check_scope(grant, namespace_collection(index["name"], namespace), lambda n: n)
        COLLECTION.set(name)
        return name

    async def _name_namespace(self, index: Optional[dict], collection: str, namespace: str) -> None:
        """Before a write that may create a hashed namespace's collection, have its name recorded (listings
        show it); once per namespace."""
        if index is None:
            return
        suffix = collection[len(index["name"]) + 1:]
        if is_hashed(suffix) and suffix not in (index.get("namespaces") or {}):
            await self.writer.name_namespace.remote(index["name"], suffix, namespace)

    @staticmethod
    def _check_index_dim(index: Optional[dict], m: Optional[np.ndarray]) -> None:
        if index is not None and m is not None and index.get("vector_type") == "sparse":
            raise InvalidArgumentError(f"index {index['name']!r} is sparse: send sparse values (sparseValues, "
                                       f"sparseVector), not dense values")
        if index is not None and m is not None and m.shape[1] != index["dimension"]:
            raise InvalidArgumentError(f"vector dimension {m.shape[1]} does not match the dimension of the index "
                                       f"({index['dimension']})")

    def _filter(self, flt, what: str = "filter"):
        if flt is not None:
            json_limits(flt, what, self.cfg.max_filter_bytes, self.cfg.max_filter_depth, "max_filter_bytes")
        return flt

    def _metadata(self, meta, what: str):
        if meta is not None:
            json_limits(meta, what, self.cfg.max_metadata_bytes, self.cfg.max_filter_depth, "max_metadata_bytes")
        return meta

    def _id(self, value: str, what: str) -> str:
        return check_id(value, what, self.cfg.max_id_length)

    def _vectors(self, rows: list, what: str) -> np.ndarray:
        """Vectors to be written: decoded, and each row's length checked to name the request's field."""
        m = json_matrix(rows, what, max_dim=self.cfg.max_dim)
        check_lengths(m, what)
        return m

    # -- Pinecone data plane ---------------------------------------------------
    @api.post("/vectors/upsert")
    async def http_upsert(self, body: UpsertBody, request: Request):
        async def run(grant):
            check_count(len(body.vectors), "vectors in one upsert", self.cfg.max_batch)
            name = self._collection(grant, body.namespace, request)
            index = self._index(request)
            for i, v in enumerate(body.vectors):
                self._id(v.id, f"vectors[{i}].id")
                self._metadata(v.metadata, f"vectors[{i}].metadata")
            sparse = [None if v.sparse_values is None else check_sparse(v.sparse_values, f"vectors[{i}].sparseValues")
                      for i, v in enumerate(body.vectors)]
            has_values = [bool(v.values) for v in body.vectors]
            sparse_only = (index.get("vector_type") == "sparse" if index is not None
                           else not any(has_values) and all(sv is not None for sv in sparse))
            if sparse_only:
                vecs = None
                if any(has_values):
                    i = has_values.index(True)
                    raise InvalidArgumentError(f"vectors[{i}].values: this index is sparse; send sparseValues only",
                                               field="values")
            else:
                missing = [i for i, v in enumerate(body.vectors) if v.values is None]
                if missing:
                    raise InvalidArgumentError(f"vectors[{missing[0]}].values is required (a list of numbers)",
                                               field="values")
                vecs = self._vectors([v.values for v in body.vectors], "vectors")
                self._check_index_dim(index, vecs)
            await self._name_namespace(index, name, body.namespace)
            r = await self.writer.upsert.remote(name, [v.id for v in body.vectors], vecs,
                                                [v.metadata for v in body.vectors],
                                                metric=None if index is None else PINECONE_METRICS[index["metric"]],
                                                sparse_values=sparse if any(sv is not None for sv in sparse) else None,
                                                vector_type=None if index is None else index.get("vector_type", "dense"))
            return {"upsertedCount": r["count"], "sequence": r["sequence"]}
        return await self._guard(request, "upsert", True, run)

    @api.post("/query")
    async def http_query(self, body: QueryBody, request: Request):
        async def run(grant):
            sparse = None if body.sparse_vector is None else check_sparse(body.sparse_vector, "sparseVector")
            given = [x for x in ("vector", "id", "text", "queries") if getattr(body, x) is not None]
            if len(given) > 1 or not given and sparse is None:
                raise InvalidArgumentError(f"query takes exactly one of vector, id, text or queries (and a "
                                           f"sparseVector beside it, or alone on a sparse index); got "
                                           f"{given or 'none'}")
            if body.queries is not None:
                check_count(len(body.queries), "queries in one request", self.cfg.max_batch)
            name = self._collection(grant, body.namespace, request)
            index = self._index(request)
            queries = None
            if body.id is not None:
                self._id(body.id, "id")
            elif body.queries is not None:
                queries = json_matrix(body.queries, "queries", max_dim=self.cfg.max_dim)
            elif body.vector is not None:
                queries = json_matrix([body.vector], "vector", max_dim=self.cfg.max_dim)
            self._check_index_dim(index, queries)
            try:
                r = await self._search(name, queries, body.top_k, id=body.id,
                                       texts=None if body.text is None else [body.text],
                                       filter=self._filter(body.filter), include_metadata=body.include_metadata,
                                       include_vectors=body.include_values, params=body.params,
                                       sparse_vector=sparse, mode=body.mode, fusion=body.fusion)
            except Exception as e:  # an index's namespace never written: Pinecone answers with no matches
                if not self._never_written(request, e):
                    raise
                usage = read_units("query", queries=len(body.queries or [None]))
                if body.queries is not None:
                    return {"results": [{"matches": []} for _ in body.queries], "namespace": body.namespace,
                            "usage": usage}
                return {"matches": [], "namespace": body.namespace, "usage": usage}
            answer = {"namespace": body.namespace, "collection": r.info["collection"],
                      "sequence": r.info["sequence"], "index": r.info["index"], "lineage": r.info["lineage"],
                      "partial": r.info["partial"], "missingShards": r.info["missing_shards"],
                      "usage": read_units("query", queries=len(r), records=r.info["records"], dim=r.info["dim"])}
            if body.queries is not None:
                return {"results": [{"matches": _matches(r, q, body.include_values, body.include_metadata)}
                                    for q in range(len(r))], **answer}
            return {"matches": _matches(r, 0, body.include_values, body.include_metadata), **answer}
        return await self._guard(request, "query", False, run)

    @api.get("/vectors/fetch")
    async def http_fetch(self, request: Request, ids: list[str] = Query(default=[]), namespace: str = ""):
        async def run(grant):
            if not ids:
                raise InvalidArgumentError("fetch needs at least one id (?ids=a&ids=b)", field="ids")
            check_count(len(ids), "ids in one fetch", self.cfg.max_batch)
            for i, rid in enumerate(ids):
                self._id(rid, f"ids[{i}]")
            name = self._collection(grant, namespace, request)
            try:
                records = await self._fetch_records(name, ids)
            except Exception as e:  # an index's namespace never written holds nothing
                if not self._never_written(request, e):
                    raise
                records = {}
            vectors = {i: {"id": i, "values": v.tolist(), "metadata": m,
                           **({} if sv is None else {"sparseValues": sv.as_dict()})}
                       for i, (v, m, sv) in records.items()}
            return {"vectors": vectors, "namespace": namespace, "collection": name,
                    "usage": read_units("fetch", fetched=len(vectors))}
        return await self._guard(request, "fetch", False, run)

    @api.post("/vectors/update")
    async def http_update(self, body: UpdateBody, request: Request):
        async def run(grant):
            sparse = None if body.sparse_values is None else check_sparse(body.sparse_values, "sparseValues")
            name = self._collection(grant, body.namespace, request)
            if body.dry_run:  # how many records the filter would update, nothing written
                if body.filter is None:
                    raise InvalidArgumentError("dryRun counts the records a filter matches; send a filter",
                                               field="dryRun")
                ids, _ = await self.writer.ids_matching.remote(name, self._filter(body.filter))
                return {"matchedRecords": len(ids)}
            if body.id is not None:
                self._id(body.id, "id")
            values = None if body.values is None else self._vectors([body.values], "values")
            self._check_index_dim(self._index(request), values)
            r = await self.writer.update.remote(name, body.id, values,
                                                self._metadata(body.set_metadata, "setMetadata"),
                                                self._filter(body.filter), sparse_values=sparse)
            return {"matchedRecords": r["count"], "sequence": r["sequence"]}
        return await self._guard(request, "update", True, run)

    @api.post("/vectors/delete")
    async def http_delete(self, body: DeleteBody, request: Request):
        async def run(grant):
            if body.ids is not None:
                check_count(len(body.ids), "ids in one delete", self.cfg.max_batch)
            for i, rid in enumerate(body.ids or ()):
                self._id(rid, f"ids[{i}]")
            name = self._collection(grant, body.namespace, request)
            try:
                r = await self.writer.delete.remote(name, body.ids, self._filter(body.filter), body.delete_all)
            except Exception as e:  # deleting from a namespace that does not exist is a no-op in Pinecone
                if isinstance(unwrap(e), CollectionNotFound):
                    return {}
                raise
            return {"deletedCount": r["count"], "sequence": r["sequence"]}
        return await self._guard(request, "delete", True, run)

    async def _listing(self, grant: Optional[KeyGrant]) -> dict:
        return scoped_listing(grant, await self.writer.list.remote())

    @api.post("/describe_index_stats")
    async def http_describe_index_stats(self, request: Request, body: Optional[StatsBody] = None):
        async def run(grant):
            if body is not None and body.filter:
                raise InvalidArgumentError("describe_index_stats does not take a filter", field="filter")
            index = self._index(request)
            if index is not None:  # that index's namespaces, its dimension and metric
                counts = await self._namespaces(grant, request)
                return {"namespaces": {ns: {"vectorCount": n} for ns, n in counts.items()},
                        "dimension": index["dimension"], "indexFullness": 0.0,
                        "totalVectorCount": sum(counts.values()), "metric": index["metric"],
                        "vectorType": index.get("vector_type", "dense")}
            cols = (await self._listing(grant))["collections"]
            namespaces = {("__default__" if n == "default" else n): {"vectorCount": c["records"]}
                          for n, c in cols.items()}
            first = cols.get("default") or next(iter(cols.values()), None)
            return {"namespaces": namespaces, "dimension": first["dim"] if first else None,
                    "indexFullness": 0.0, "totalVectorCount": sum(c["records"] for c in cols.values()),
                    "metric": first["metric"] if first else self.cfg.metric,
                    "vectorType": first.get("vector_type", "dense") if first else "dense"}
        return await self._guard(request, "describe_index_stats", False, run)

    @api.get("/vectors/list")
    async def http_list(self, request: Request, namespace: str = "", prefix: str = "", limit: int = 100,
                        paginationToken: Optional[str] = None):  # noqa: N803 - Pinecone's query parameter
        """Ids in sorted order, ``limit`` a page (at most 1000), and ``pagination.next`` while more follow."""
        async def run(grant):
            if not 1 <= limit <= LIST_LIMIT:
                raise LimitExceededError(f"limit must be between 1 and {LIST_LIMIT}, got {limit}", limit_name="limit",
                                         limit=LIST_LIMIT, value=limit, field="limit")
            after = None if paginationToken is None else _token_id(paginationToken)
            name = self._collection(grant, namespace, request)
            try:
                ids, more = await self.writer.list_ids.remote(name, prefix, after, limit)
            except Exception as e:
                if not self._never_written(request, e):
                    raise
                ids, more = [], False
            out = {"vectors": [{"id": i} for i in ids], "namespace": namespace, "usage": read_units("list")}
            if more:
                out["pagination"] = {"next": _id_token(ids[-1])}
            return out
        return await self._guard(request, "list", False, run)

    @api.post("/vectors/fetch_by_metadata")
    async def http_fetch_by_metadata(self, body: FetchByMetadataBody, request: Request):
        """The records a filter passes, in id order, ``limit`` a page (at most 10,000), with their values
        and metadata, and ``pagination.next`` while more follow."""
        async def run(grant):
            if not body.filter:
                raise InvalidArgumentError("fetch_by_metadata needs a non-empty filter", field="filter")
            limit = 100 if body.limit is None else body.limit
            if not 1 <= limit <= FETCH_BY_METADATA_LIMIT:
                raise LimitExceededError(f"limit must be between 1 and {FETCH_BY_METADATA_LIMIT}, got {limit}",
                                         limit_name="limit", limit=FETCH_BY_METADATA_LIMIT, value=limit, field="limit")
            after = None if body.pagination_token is None else _token_id(body.pagination_token)
            name = self._collection(grant, body.namespace, request)
            try:
                ids, more = await self.writer.ids_matching.remote(name, self._filter(body.filter), after, limit)
                records = await self._fetch_records(name, ids) if ids else {}
            except Exception as e:
                if not self._never_written(request, e):
                    raise
                ids, more, records = [], False, {}
            out = {"vectors": {i: {"id": i, "values": records[i][0].tolist(), "metadata": records[i][1]}
                               for i in ids if i in records}, "namespace": body.namespace,
                   "usage": read_units("fetch", fetched=len(ids))}
            if more:
                out["pagination"] = {"next": _id_token(ids[-1])}
            return out
        return await self._guard(request, "fetch_by_metadata", False, run)

    # -- namespaces: an index's (under /index/{name}/), or at the root the collections ------------
    async def _namespaces(self, grant, request) -> dict[str, int]:
        """{namespace: records} of the index a request addresses, or of the root (every collection)."""
        index = self._index(request)
        cols = (await self._listing(grant))["collections"]
        if index is None:
            return {n: c["records"] for n, c in cols.items()}
        out = {collection_namespace(index["name"], n, index.get("namespaces")): c["records"] for n, c in cols.items()}
        out.pop(None, None)
        return out

    @api.get("/namespaces")
    async def http_list_namespaces(self, request: Request, prefix: str = "", limit: int = 100,
                                   paginationToken: Optional[str] = None):  # noqa: N803 - Pinecone's name
        async def run(grant):
            if not 1 <= limit <= LIST_LIMIT:
                raise LimitExceededError(f"limit must be between 1 and {LIST_LIMIT}, got {limit}", limit_name="limit",
                                         limit=LIST_LIMIT, value=limit, field="limit")
            after = None if paginationToken is None else _token_id(paginationToken)
            counts = await self._namespaces(grant, request)
            names = [n for n in counts if n.startswith(prefix)]
            page, more = sorted_page(names, after, limit)
            out = {"namespaces": [{"name": n, "record_count": counts[n]} for n in page], "total_count": len(names)}
            if more:
                out["pagination"] = {"next": _id_token(page[-1])}
            return out
        return await self._guard(request, "namespaces", False, run)

    @api.get("/namespaces/{namespace:path}")
    async def http_describe_namespace(self, namespace: str, request: Request):
        async def run(grant):
            name = self._collection(grant, namespace, request)
            index = self._index(request)
            shown = name if index is None else collection_namespace(index["name"], name, {
                name[len(index["name"]) + 1:]: namespace})
            counts = await self._namespaces(grant, request)
            if shown not in counts:
                raise NotFoundError(f"namespace {namespace!r} not found", kind="namespace", name=namespace)
            return {"name": shown, "record_count": counts[shown]}
        return await self._guard(request, "namespaces", False, run)

    @api.post("/namespaces")
    async def http_create_namespace(self, request: Request, body: dict[str, Any] = Body(...)):
        """An empty namespace of an index (its dimension and metric); at the root, POST /collections."""
        async def run(grant):
            index = self._index(request)
            if index is None:
                raise InvalidArgumentError("at the root a namespace is a collection: create it with POST /collections "
                                           "(it needs a dimension), or upsert into it")
            ns = body.get("name")
            if not isinstance(ns, str) or ns in ("", "__default__"):
                raise InvalidArgumentError(f"name must be a namespace name, got {ns!r}", field="name")
            schema = body.get("schema")
            fields = schema.get("fields") if isinstance(schema, dict) else None
            if schema is not None and not (isinstance(fields, dict) and all(
                    isinstance(c, dict) and set(c) <= {"filterable"} and isinstance(c.get("filterable", True), bool)
                    for c in fields.values())):
                raise InvalidArgumentError('schema must look like {"fields": {"genre": {"filterable": true}}}',
                                           field="schema")
            name = self._collection(grant, ns, request)
            await self._name_namespace(index, name, ns)
            extra = {}
            if index.get("embed"):  # a namespace of an index with integrated embedding: as a records upsert makes it
                await self._encoder_ready()
                extra = {"lineage": dict(self._encoder_lineage), "bm25_field": index["embed"]["field_map"]["text"]}
            await self.writer.create.remote(name, index["dimension"], PINECONE_METRICS[index["metric"]],
                                            vector_type=index.get("vector_type", "dense"), **extra)
            # every metadata field is filterable here, so a schema (which names the filterable ones) is
            # accepted and echoed, and changes nothing
            return JSONResponse({"name": ns, "record_count": 0, **({"schema": schema} if schema else {})},
                                status_code=201)
        return await self._guard(request, "namespaces", True, run)

    @api.delete("/namespaces/{namespace:path}", status_code=202)
    async def http_delete_namespace(self, namespace: str, request: Request):
        """Drop a namespace and its records: an index's with a writing key; at the root (a collection) with
        an admin key, as DELETE /collections/{name}."""
        async def run(grant):
            index = self._index(request)
            if index is None and grant is not None and grant.scoped:
                raise PermissionDeniedError("at the root a namespace is a collection: dropping it needs an admin key")
            name = self._collection(grant, namespace, request)
            await self.writer.drop.remote(name)
            return Response(status_code=202)
        return await self._guard(request, "namespaces", True, run)

    # -- Pinecone records API (integrated embedding) --------------------------------
    def _embed_config(self, index: Optional[dict]) -> dict:
        if index is None:
            raise InvalidArgumentError("the records API is an index's: create one with integrated embedding "
                                       "(POST /indexes/create-for-model) and use /index/{name}/records/...")
        if not index.get("embed"):
            raise InvalidArgumentError(f"index {index['name']!r} has no integrated embedding: upsert and query "
                                       f"vectors (/vectors/upsert, /query), or create an index with embed")
        return index["embed"]

    @api.post("/records/namespaces/{namespace}/upsert", status_code=201)
    async def http_upsert_records(self, namespace: str, request: Request):
        """Records as NDJSON (or a JSON list): ``_id`` and the index's text field, the other fields kept as
        metadata; the server embeds the text (batched, on its encoder's device) and indexes it for BM25."""
        async def run(grant):
            index = self._index(request)
            embed = self._embed_config(index)
            records = parse_records(await request.body())
            check_count(len(records), "records in one upsert", self.cfg.max_batch)
            field = embed["field_map"]["text"]
            ids, texts, metas = [], [], []
            for i, r in enumerate(records):
                rid = r.get("_id", r.get("id"))
                if not isinstance(rid, str):
                    raise InvalidArgumentError(f"records[{i}] needs an _id (a string), got {rid!r}", field="_id")
                self._id(rid, f"records[{i}]._id")
                text = r.get(field)
                if not isinstance(text, str) or not text.strip():
                    raise InvalidArgumentError(f"records[{i}].{field} must be a non-empty string: the index embeds "
                                               f"that field (its field_map)", field=field)
                if len(text) > MAX_TEXT_CHARS:
                    raise InvalidArgumentError(f"records[{i}].{field} may hold at most {MAX_TEXT_CHARS} characters, "
                                               f"got {len(text)}", field=field)
                meta = {k: v for k, v in r.items() if k not in ("_id", "id")}
                self._metadata(meta, f"records[{i}]")
                ids.append(rid)
                texts.append(text)
                metas.append(meta)
            name = self._collection(grant, namespace, request)
            vecs = await self._embed_records(name, texts)
            await self._name_namespace(index, name, namespace)
            await self.writer.upsert.remote(name, ids, vecs, metas, metric=PINECONE_METRICS[index["metric"]],
                                            vector_type="dense",
                                            create_options={"lineage": dict(self._encoder_lineage), "bm25_field": field})
            return Response(status_code=201)
        return await self._guard(request, "upsert_records", True, run)

    @api.post("/records/namespaces/{namespace}/search")
    async def http_search_records(self, namespace: str, request: Request, body: dict[str, Any] = Body(...)):
        """Pinecone's search: ``query`` with ``inputs.text`` (embedded here), ``vector`` or ``id``, ``top_k``,
        ``filter``; ``fields`` to return; ``rerank`` with this server's cross-encoder."""
        async def run(grant):
            index = self._index(request)
            embed = self._embed_config(index)
            q = body.get("query")
            if not isinstance(q, dict):
                raise InvalidArgumentError("search needs a query object: {\"query\": {\"inputs\": {\"text\": ...}, "
                                           "\"top_k\": 10}}", field="query")
            unknown = sorted(set(q) - {"top_k", "inputs", "vector", "id", "filter", "match_terms"})
            if unknown:
                raise InvalidArgumentError(f"query takes top_k, inputs, vector, id and filter; got {unknown[0]!r}",
                                           field=unknown[0])
            if q.get("match_terms") is not None:
                raise InvalidArgumentError("match_terms is not supported here; search the text with BM25 through "
                                           "/query (text, mode keyword or hybrid)", field="match_terms")
            given = [x for x in ("inputs", "vector", "id") if q.get(x) is not None]
            if len(given) != 1:
                raise InvalidArgumentError(f"query takes exactly one of inputs, vector or id; got {given or 'none'}")
            fields = body.get("fields")
            if fields is not None and (not isinstance(fields, list) or not all(isinstance(f, str) for f in fields)):
                raise InvalidArgumentError("fields must be a list of field names", field="fields")
            rerank = self._rerank_request(body.get("rerank"))
            text = queries = sparse = None
            if q.get("inputs") is not None:
                text = q["inputs"].get("text") if isinstance(q["inputs"], dict) else None
                if not isinstance(text, str) or not text.strip():
                    raise InvalidArgumentError("query.inputs.text must be a non-empty string", field="inputs")
            elif q.get("vector") is not None:
                v = q["vector"]
                if not isinstance(v, dict):
                    raise InvalidArgumentError("query.vector must be {\"values\": [...]}", field="vector")
                if v.get("values") is not None:
                    queries = json_matrix([v["values"]], "vector", max_dim=self.cfg.max_dim)
                    self._check_index_dim(index, queries)
                if v.get("sparse_values") is not None:
                    sparse = check_sparse(v["sparse_values"], "vector.sparse_values")
            else:
                if not isinstance(q["id"], str):
                    raise InvalidArgumentError(f"query.id must be a record id (a string), got {q['id']!r}",
                                               field="id")
                self._id(q["id"], "id")
            top_k = q.get("top_k", 10)
            name = self._collection(grant, namespace, request)
            usage = {"read_units": 1}
            if text is not None:
                await self._encoder_ready()
                usage["embed_total_tokens"] = await self._count_tokens([text])
            try:
                r = await self._search(name, queries, top_k, id=q.get("id"), texts=None if text is None else [text],
                                       filter=self._filter(q.get("filter")), include_metadata=True,
                                       sparse_vector=sparse)
            except Exception as e:  # a namespace never written holds nothing
                if not self._never_written(request, e):
                    raise
                return {"result": {"hits": []}, "usage": usage}
            usage["read_units"] = read_units("query", records=r.info["records"], dim=r.info["dim"])["readUnits"]
            hits = [{"_id": i, "_score": float(s), "fields": m} for i, s, m in zip(r.ids[0], r.scores[0].tolist(),
                                                                                  r.metadata[0])]
            if rerank is not None:
                hits, units = await self._rerank_hits(rerank, rerank.get("query") or text, hits)
                usage["rerank_units"] = units
            for h in hits:
                h["fields"] = h["fields"] if fields is None or "*" in fields else \
                    {f: h["fields"][f] for f in fields if f in h["fields"]}
            return {"result": {"hits": hits}, "usage": usage}
        return await self._guard(request, "search_records", False, run)

    def _rerank_request(self, rerank) -> Optional[dict]:
        """A search's ``rerank`` checked: ``model`` (this server's reranker or an alias), one of
        ``rank_fields``, ``top_n``, optional ``query``."""
        if rerank is None:
            return None
        if not isinstance(rerank, dict):
            raise InvalidArgumentError("rerank must be an object with model and rank_fields", field="rerank")
        unknown = sorted(set(rerank) - {"model", "rank_fields", "top_n", "parameters", "query"})
        if unknown:
            raise InvalidArgumentError(f"rerank takes model, rank_fields, top_n, parameters and query; got "
                                       f"{unknown[0]!r}", field="rerank")
        fields = rerank.get("rank_fields")
        if not isinstance(fields, list) or len(fields) != 1 or not isinstance(fields[0], str):
            raise InvalidArgumentError(f"rerank.rank_fields must name one field (the text to rank by), got "
                                       f"{fields!r}", field="rank_fields")
        top_n = rerank.get("top_n")
        if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
            raise InvalidArgumentError(f"rerank.top_n must be a positive int, got {top_n!r}", field="top_n")
        if rerank.get("query") is not None and not isinstance(rerank["query"], str):
            raise InvalidArgumentError("rerank.query must be a string", field="rerank")
        return {"model": rerank.get("model"), "field": fields[0], "top_n": top_n, "query": rerank.get("query")}

    async def _rerank_hits(self, rerank: dict, query: Optional[str], hits: list[dict]) -> tuple[list[dict], int]:
        """``hits`` ordered by this server's reranker on their ``rerank["field"]`` text, cut to ``top_n``;
        their ``_score`` is the reranker's."""
        reranker = await self._reranker_ready()
        self._check_model(rerank["model"], "reranker", reranker.lineage["model"])
        if not isinstance(query, str) or not query.strip():
            raise InvalidArgumentError("rerank needs a query text: search with inputs.text, or give rerank.query",
                                       field="rerank")
        field = rerank["field"]
        docs = []
        for h in hits:
            text = h["fields"].get(field)
            if not isinstance(text, str):
                raise InvalidArgumentError(f"rerank field {field!r}: record {h['_id']!r} has no text there "
                                           f"(rank_fields must name a string field of the records)",
                                           field="rank_fields")
            docs.append(text)
        scores = await self.rerank_scores(query, docs)
        order = sorted(range(len(hits)), key=lambda j: (-float(scores[j]), j))[: rerank["top_n"] or len(hits)]
        return [{**hits[j], "_score": float(scores[j])} for j in order], rerank_units(len(docs))

    @api.post("/rerank")
    async def http_rerank(self, request: Request, body: dict[str, Any] = Body(...)):
        """Pinecone's standalone rerank (no index): ``model``, ``query``, ``documents`` (strings or objects),
        ``rank_fields`` (default ``["text"]``), ``top_n``, ``return_documents``."""
        async def run(grant):
            unknown = sorted(set(body) - {"model", "query", "documents", "rank_fields", "top_n", "return_documents",
                                          "parameters"})
            if unknown:
                raise InvalidArgumentError(f"rerank takes model, query, documents, rank_fields, top_n and "
                                           f"return_documents; got {unknown[0]!r}", field=unknown[0])
            documents = body.get("documents")
            if not isinstance(documents, list):
                raise InvalidArgumentError("documents must be a list of strings or objects", field="documents")
            check_count(len(documents), "documents in one rerank", self.cfg.max_batch)
            spec = self._rerank_request({"model": body.get("model"), "rank_fields": body.get("rank_fields") or ["text"],
                                         "top_n": body.get("top_n"), "query": body.get("query")})
            docs = [d if isinstance(d, dict) else {"text": d} if isinstance(d, str) else None for d in documents]
            bad = next((i for i, d in enumerate(docs) if d is None), None)
            if bad is not None:
                raise InvalidArgumentError(f"documents[{bad}] must be a string or an object", field="documents")
            hits = [{"_id": str(i), "_score": 0.0, "fields": d} for i, d in enumerate(docs)]
            ranked, units = await self._rerank_hits(spec, body.get("query"), hits)
            keep = body.get("return_documents", True)
            return {"model": self.reranker.lineage["model"], "data": [
                {"index": int(h["_id"]), "score": h["_score"], **({"document": h["fields"]} if keep else {})}
                for h in ranked], "usage": {"rerank_units": units}}
        return await self._guard(request, "rerank", False, run)

    @api.post("/embed")
    async def http_embed(self, request: Request, body: dict[str, Any] = Body(...)):
        """Pinecone's inference embed: ``model`` (this server's encoder or a name ``model_aliases`` maps onto
        it), ``inputs`` (objects with ``text``), ``parameters`` (``input_type`` ``passage`` or ``query``,
        ``truncate`` ``END`` or ``NONE``, ``dimension``: the encoder's); one dense, unit-length embedding per
        input, in order, and the tokens counted."""
        async def run(grant):
            unknown = sorted(set(body) - {"model", "inputs", "parameters"})
            if unknown:
                raise InvalidArgumentError(f"embed takes model, inputs and parameters; got {unknown[0]!r}",
                                           field=unknown[0])
            if self.encoder is None and self._encoder_loader is None:
                raise InvalidArgumentError("embedding needs the server's encoder; start it with encoder_enabled: "
                                           "true", field="model")
            await self._encoder_ready()
            self._check_model(body.get("model"), "encoder", self._encoder_lineage["model"])
            inputs = body.get("inputs")
            if not isinstance(inputs, list) or not inputs:
                raise InvalidArgumentError("inputs must be a non-empty list of objects with text", field="inputs")
            check_count(len(inputs), "inputs in one embed", self.cfg.max_batch)
            texts = []
            for i, item in enumerate(inputs):
                text = item.get("text") if isinstance(item, dict) else None
                if not isinstance(text, str) or not text.strip():
                    raise InvalidArgumentError(f"inputs[{i}] must be an object with a non-empty text",
                                               field="inputs")
                if len(text) > MAX_TEXT_CHARS:
                    raise InvalidArgumentError(f"inputs[{i}].text may hold at most {MAX_TEXT_CHARS} characters, "
                                               f"got {len(text)}", field="inputs")
                texts.append(text)
            truncate = self._embed_parameters(body.get("parameters"))
            counts = await self._token_counts(texts)
            if truncate == "NONE":
                limit = self._max_tokens()
                over = next((i for i, n in enumerate(counts) if limit is not None and n > limit), None)
                if over is not None:
                    raise InvalidArgumentError(f"inputs[{over}] has {counts[over]} tokens, more than the model's "
                                               f"{limit}; send a shorter text or truncate END", field="inputs")
            vectors = await self.texts.submit(texts)
            return {"model": body["model"], "vector_type": "dense",
                    "data": [{"values": v.tolist(), "vector_type": "dense"} for v in vectors],
                    "usage": {"total_tokens": int(sum(counts))}}
        return await self._guard(request, "embed", False, run)

    def _embed_parameters(self, params) -> str:
        """An embed's ``parameters`` checked; returns ``truncate``. The encoder is symmetric, so
        ``input_type`` is checked and changes nothing."""
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise InvalidArgumentError("parameters must be an object", field="parameters")
        unknown = sorted(set(params) - {"input_type", "truncate", "dimension"})
        if unknown:
            raise InvalidArgumentError(f"parameters take input_type, truncate and dimension; got {unknown[0]!r}",
                                       field="parameters")
        if params.get("input_type", "passage") not in ("passage", "query"):
            raise InvalidArgumentError(f"input_type must be 'passage' or 'query', got {params['input_type']!r}",
                                       field="parameters")
        truncate = params.get("truncate", "END")
        if truncate not in ("END", "NONE"):
            raise InvalidArgumentError(f"truncate must be 'END' or 'NONE', got {truncate!r}", field="parameters")
        dim = params.get("dimension", self.encoder.dim)
        if dim != self.encoder.dim or isinstance(dim, bool):
            raise InvalidArgumentError(f"dimension must be the encoder's, {self.encoder.dim}; got {dim!r}",
                                       field="parameters")
        return truncate

    # -- Pinecone control plane (serve/_indexes.py) -----------------------------
    @api.get("/indexes")
    async def http_list_indexes(self, request: Request):
        async def run(grant):
            records = self._index_records()
            return {"indexes": [index_model(records[n], str(request.base_url)) for n in sorted(records)]}
        return await self._guard(request, "indexes", False, run)

    @api.post("/indexes/create-for-model", status_code=201)
    async def http_create_index_for_model(self, request: Request, body: dict[str, Any] = Body(...)):
        """An index with integrated embedding: the server embeds each record's mapped text field with its
        encoder (the records API); ``embed.model`` must name that encoder or an alias of it."""
        async def run(grant):
            record = await self._integrated_record(body)
            record = await self.writer.create_index.remote(record)
            return JSONResponse(index_model(record, str(request.base_url)), status_code=201)
        return await self._guard(request, "indexes", True, run, admin=True)

    async def _integrated_record(self, body) -> dict:
        if self.encoder is None and self._encoder_loader is None:
            raise InvalidArgumentError("integrated embedding needs the server's encoder; start it with "
                                       "encoder_enabled: true", field="embed")
        await self._encoder_ready()
        embed = body.get("embed") if isinstance(body, dict) else None
        self._check_model(embed.get("model") if isinstance(embed, dict) else None, "encoder",
                          self._encoder_lineage["model"])
        return parse_create_for_model(body, dimension=self.encoder.dim, served_by=self._encoder_lineage["model"])

    @api.post("/indexes", status_code=201)
    async def http_create_index(self, request: Request, body: dict[str, Any] = Body(...)):
        async def run(grant):
            if isinstance(body, dict) and body.get("embed") is not None:  # the older SDKs' integrated create
                record = await self.writer.create_index.remote(await self._integrated_record(body))
                return JSONResponse(index_model(record, str(request.base_url)), status_code=201)
            record = parse_create(body, max_dim=self.cfg.max_dim)
            record = await self.writer.create_index.remote(record)
            return JSONResponse(index_model(record, str(request.base_url)), status_code=201)
        return await self._guard(request, "indexes", True, run, admin=True)

    @api.get("/indexes/{name}")
    async def http_describe_index(self, name: str, request: Request):
        async def run(grant):
            record = self._index_records().get(check_index_name(name))
            if record is None:
                raise NotFoundError(f"index {name!r} not found", kind="index", name=name)
            return index_model(record, str(request.base_url))
        return await self._guard(request, "indexes", False, run)

    @api.patch("/indexes/{name}")
    async def http_configure_index(self, name: str, request: Request, body: dict[str, Any] = Body(...)):
        async def run(grant):
            unknown = sorted(set(body) - {"deletion_protection", "tags"})
            if unknown:
                raise InvalidArgumentError(f"configure_index takes deletion_protection and tags here; "
                                           f"{', '.join(unknown)} cannot be changed", field=unknown[0])
            record = await self.writer.configure_index.remote(check_index_name(name), parse_configure(body))
            return JSONResponse(index_model(record, str(request.base_url)), status_code=202)
        return await self._guard(request, "indexes", True, run, admin=True)

    @api.delete("/indexes/{name}", status_code=202)
    async def http_delete_index(self, name: str, request: Request):
        async def run(grant):
            await self.writer.drop_index.remote(check_index_name(name))
            return Response(status_code=202)
        return await self._guard(request, "indexes", True, run, admin=True)

    # -- ours -------------------------------------------------------------------
    @api.get("/collections")
    async def http_list_collections(self, request: Request):
        return await self._guard(request, "collections", False, self._listing)

    @api.post("/collections")
    async def http_create_collection(self, body: CreateBody, request: Request):
        async def run(grant):
            if not 1 <= body.dimension <= self.cfg.max_dim:
                raise LimitExceededError(f"dimension must be between 1 and {self.cfg.max_dim}, got {body.dimension}",
                                         limit_name="max_dim", limit=self.cfg.max_dim, value=body.dimension,
                                         field="dimension")
            if body.lineage is not None:
                json_limits(body.lineage, "lineage", self.cfg.max_metadata_bytes, self.cfg.max_filter_depth,
                            "max_metadata_bytes")
            COLLECTION.set(check_name(body.name))
            return await self.writer.create.remote(check_name(body.name), body.dimension, body.metric, body.index,
                                                   body.lineage, body.index_options, bm25_field=body.bm25_field)
        return await self._guard(request, "collections", True, run, admin=True)

    @api.delete("/collections/{name}")
    async def http_drop_collection(self, name: str, request: Request):
        async def run(grant):
            await self.writer.drop.remote(check_name(name))
            return {}
        return await self._guard(request, "collections", True, run, admin=True)

    @api.post("/collections/{name}/backup")
    async def http_backup_collection(self, name: str, body: BackupBody, request: Request):
        """Ours: a consistent point-in-time copy of the collection, taken while writes go on (see
        gpusearch.backup); incremental when the location holds an older backup of it."""
        async def run(grant):
            COLLECTION.set(check_name(name))
            return await self.writer.backup.remote(check_name(name), body.uri, body.note)
        return await self._guard(request, "backup", True, run, admin=True)

    @api.post("/collections/{name}/restore", status_code=201)
    async def http_restore_collection(self, name: str, body: RestoreBody, request: Request):
        """Ours: a new collection ``name`` made from a backup (every byte checked against the backup's hashes)."""
        async def run(grant):
            COLLECTION.set(check_name(name))
            info = await self.writer.restore.remote(check_name(name), body.uri, body.backup)
            info.pop("path", None)  # the server's own file system is not the caller's business
            return JSONResponse(info, status_code=201)
        return await self._guard(request, "restore", True, run, admin=True)

    @api.get("/backups")
    async def http_list_backups(self, request: Request, uri: Optional[str] = None):
        """Ours: the complete backups at the server's backup location (or at ``uri``, one of its
        backup_locations), oldest first."""
        async def run(grant):
            return await self.writer.backups.remote(uri)
        return await self._guard(request, "backups", True, run, admin=True)

    @api.put("/aliases/{alias}")
    async def http_set_alias(self, alias: str, body: AliasBody, request: Request):
        async def run(grant):
            await self.writer.set_alias.remote(check_name(alias, "alias"), check_name(body.collection))
            return {"alias": alias, "collection": body.collection}
        return await self._guard(request, "aliases", True, run, admin=True)

    @api.delete("/aliases/{alias}")
    async def http_drop_alias(self, alias: str, request: Request):
        async def run(grant):
            await self.writer.drop_alias.remote(check_name(alias, "alias"))
            return {}
        return await self._guard(request, "aliases", True, run, admin=True)

    @api.get("/healthz")
    async def http_healthz(self):
        """``{"status": "ok"}``; 503 ``{"status": "draining"}`` once the server is stopping (load
        balancers take it out of rotation)."""
        if self.draining:
            return JSONResponse({"status": "draining"}, status_code=503, headers={"Retry-After": "1"})
        return {"status": "ok"}

    @api.get("/metrics")
    async def http_metrics(self, request: Request):
        """Prometheus text. Its labels name every collection, so with API keys configured it needs an
        unscoped key (either role); a key limited to some collections gets 403."""
        async def run(grant):
            if grant is not None and grant.scoped:
                raise PermissionDeniedError("/metrics names every collection; it needs an API key that is not "
                                            "limited to some collections")
            try:
                stats = await asyncio.wait_for(self.stats(), timeout=self.cfg.shard_timeout_s)
                for name, shards in stats.items():
                    for s, st in shards.items():
                        self.metrics.vectors.labels(name, str(s)).set(st["records"])
                        self.metrics.unindexed.labels(name, str(s)).set(st["rows"] - st["indexed_rows"])
            except Exception:  # noqa: BLE001 - the counters are still worth serving
                log.warning("metrics: shard stats unavailable")
            return PlainTextResponse(self.metrics.text(), media_type="text/plain; version=0.0.4")
        return await self._guard(request, "metrics", False, run)
