"""Pinecone's control plane over collections: indexes, each with its dimension, metric and namespaces.

How they map (README, "Pinecone indexes"):

- An index ``docs`` is one record in ``<data_dir>/indexes.json`` (written by the Writer only, atomically):
  its dimension, Pinecone metric, deployment (echoed back), deletion protection and tags.
- Namespace ``ns`` of that index is the collection ``docs.ns``; Pinecone's default namespace (``""`` or
  ``"__default__"``) is ``docs.__default__``. A namespace comes into being with its first accepted
  upsert, with the index's dimension and metric (``cosine`` -> cosine, ``euclidean`` -> l2, ``dotproduct``
  -> ip). Index names follow Pinecone's rule (lower-case letters, digits and ``-``, at most 45), so they
  hold no ``.`` and the mapping is one to one.
- Its data plane is served under ``/index/docs/`` (the ``host`` that ``describe_index`` answers with,
  built from the address the client used), with the root's routes and Pinecone's answers where the
  root's own differ: a namespace never written reads as empty rather than 404.
- The root data plane (``/vectors/upsert`` ... without ``/index/``) is unchanged: a namespace there is a
  collection of that name, any collection, an index's ones included.

Index models carry both the 2026-07 API's fields (``schema``, ``deployment``; the ``pinecone`` SDK 10)
and the 2025 API's (``dimension``, ``metric``, ``spec``, ``vector_type``; SDKs before 8, which
langchain-pinecone pins), so either generation of client reads them.
"""
from __future__ import annotations

import hashlib
import re
from typing import Any, Mapping

from gpusearch.errors import InvalidArgumentError, InvalidTypeError, LimitExceededError

__all__ = ["INDEXES_FILE", "METRICS", "check_index_name", "namespace_collection", "collection_namespace",
           "parse_create", "parse_configure", "index_model"]

INDEXES_FILE = "indexes.json"

#: Pinecone's metric names and ours.
METRICS = {"cosine": "cosine", "euclidean": "l2", "dotproduct": "ip"}

_INDEX_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,43}[a-z0-9])?$")
_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_NAMESPACE = "__default__"


def check_index_name(name: Any) -> str:
    """Pinecone's rule for index names.

    >>> check_index_name("docs-v2")
    'docs-v2'
    >>> check_index_name("Docs")
    Traceback (most recent call last):
    ...
    gpusearch.errors.InvalidArgumentError: index name must be 1-45 lower-case letters, digits or '-', starting and ending with a letter or digit, got 'Docs'
    """
    if not isinstance(name, str):
        raise InvalidTypeError(f"index name must be a string, got {type(name).__name__}")
    if not _INDEX_RE.match(name):
        raise InvalidArgumentError(f"index name must be 1-45 lower-case letters, digits or '-', starting and ending "
                                   f"with a letter or digit, got {name!r}", field="name")
    return name


#: Pinecone's namespace names: printable ASCII, at most this long.
MAX_NAMESPACE = 512
_PRINTABLE_RE = re.compile(r"^[\x20-\x7e]+$")


def namespace_collection(index: str, namespace: Any) -> str:
    """The collection that holds namespace ``namespace`` of index ``index``: ``{index}.{namespace}`` for a
    name of letters, digits, ``_ . -`` (at most 64, starting with a letter or digit), else
    ``{index}._`` and a SHA-256 of the name (never a path built from it; :func:`is_hashed`; the index
    record keeps the name for listings).

    >>> namespace_collection("docs", ""), namespace_collection("docs", "tenant-7")
    ('docs.__default__', 'docs.tenant-7')
    >>> namespace_collection("docs", "user@example.com")
    'docs._b4c9a289323b21a01c3e940f150eb9b8c542587f1abfd8f0e1cc1ffc5e475514'
    """
    if namespace is None or namespace in ("", DEFAULT_NAMESPACE):
        return f"{index}.{DEFAULT_NAMESPACE}"
    if not isinstance(namespace, str):
        raise InvalidTypeError(f"namespace must be a string, got {type(namespace).__name__}")
    if _NAMESPACE_RE.match(namespace):
        return f"{index}.{namespace}"
    if len(namespace) > MAX_NAMESPACE or not _PRINTABLE_RE.match(namespace):
        raise InvalidArgumentError(f"namespace must be 1-{MAX_NAMESPACE} printable ASCII characters, got "
                                   f"{namespace[:80]!r}{'...' if len(namespace) > 80 else ''}", field="namespace")
    return f"{index}._{hashlib.sha256(namespace.encode()).hexdigest()}"


def is_hashed(suffix: str) -> bool:
    """Whether a collection's part after ``{index}.`` is a hashed namespace (a plain one never starts with
    ``_``, and the default is ``__default__``)."""
    return suffix.startswith("_") and suffix != DEFAULT_NAMESPACE


def collection_namespace(index: str, collection: str, names: Mapping[str, str] | None = None) -> str | None:
    """The namespace of ``index`` that ``collection`` holds, or None when it belongs to no namespace of it;
    ``names`` maps hashed suffixes to the names they stand for (the index record's ``namespaces``).

    >>> collection_namespace("docs", "docs.__default__"), collection_namespace("docs", "docs2.a")
    ('__default__', None)
    """
    head = index + "."
    if not collection.startswith(head):
        return None
    suffix = collection[len(head):]
    return (names or {}).get(suffix, suffix) if is_hashed(suffix) else suffix


def _vector_field(schema: Any) -> tuple[int | None, str, str]:
    """(dimension, metric, vector type) of the one vector field of a 2026-07 ``schema``: a
    ``dense_vector`` (with a dimension) or a ``sparse_vector`` (a sparse index)."""
    fields = schema.get("fields") if isinstance(schema, Mapping) else None
    if not isinstance(fields, Mapping) or not fields:
        raise InvalidArgumentError("schema must hold fields, one of them a dense_vector or sparse_vector",
                                   field="schema")
    kinds = ("dense_vector", "sparse_vector")
    vec = [f for f in fields.values() if isinstance(f, Mapping) and f.get("type") in kinds]
    others = sorted({str(f.get("type")) for f in fields.values() if isinstance(f, Mapping)} - set(kinds))
    if others:
        raise InvalidArgumentError(f"gpusearch indexes hold one dense or one sparse vector field; schema fields of "
                                   f"type {', '.join(others)} are not supported", field="schema")
    if len(vec) != 1:
        raise InvalidArgumentError(f"schema must hold exactly one dense_vector or sparse_vector field, got "
                                   f"{len(vec)}", field="schema")
    if vec[0]["type"] == "sparse_vector":
        return None, vec[0].get("metric", "dotproduct"), "sparse"
    return vec[0].get("dimension"), vec[0].get("metric", "cosine"), "dense"


def parse_create(body: Any, *, max_dim: int) -> dict:
    """The index record a create request asks for, in either API generation's shape:

    - 2026-07: ``{"name", "schema": {"fields": {F: {"type": "dense_vector", "dimension", "metric"}}},
      "deployment": {...}, "deletion_protection", "tags"}``;
    - 2025: ``{"name", "dimension", "metric", "spec": {"serverless": {...}}, "vector_type", ...}``.

    >>> parse_create({"name": "a", "dimension": 3, "metric": "dotproduct", "spec": {"serverless": {}}}, max_dim=8)["metric"]
    'dotproduct'
    """
    if not isinstance(body, Mapping):
        raise InvalidArgumentError("the body must be a JSON object naming the index (name, dimension, metric, spec)")
    name = check_index_name(body.get("name"))
    if body.get("schema") is not None:
        dimension, metric, vector_type = _vector_field(body["schema"])
    else:
        vector_type = body.get("vector_type") or "dense"
        if vector_type not in ("dense", "sparse"):
            raise InvalidArgumentError(f"vector_type must be 'dense' or 'sparse', got {vector_type!r}",
                                       field="vector_type")
        if body.get("embed") is not None:
            raise InvalidArgumentError("integrated embedding (embed) is not supported; create the index with a "
                                       "dimension and send vectors", field="embed")
        dimension = body.get("dimension")
        metric = body.get("metric") or ("dotproduct" if vector_type == "sparse" else "cosine")
    if vector_type == "sparse":
        if dimension is not None:
            raise InvalidArgumentError(f"a sparse index has no dimension; leave it out, got {dimension!r}",
                                       field="dimension")
        if metric != "dotproduct":
            raise InvalidArgumentError(f"a sparse index's metric must be dotproduct, got {metric!r}", field="metric")
    elif isinstance(dimension, bool) or not isinstance(dimension, int):
        raise InvalidArgumentError(f"dimension must be an integer, got {dimension!r}", field="dimension")
    elif not 1 <= dimension <= max_dim:
        raise LimitExceededError(f"dimension must be between 1 and {max_dim}, got {dimension}", limit_name="max_dim",
                                 limit=max_dim, value=dimension, field="dimension")
    if metric not in METRICS:
        raise InvalidArgumentError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}", field="metric")
    deployment = body.get("deployment")
    if deployment is None:
        spec = body.get("spec") or {"serverless": {"cloud": "aws", "region": "us-east-1"}}
        if not isinstance(spec, Mapping):
            raise InvalidArgumentError("spec must be an object such as {\"serverless\": {...}}", field="spec")
        if "serverless" in spec:
            sl = spec["serverless"] or {}
            deployment = {"deployment_type": "managed", "cloud": sl.get("cloud", "aws"),
                          "region": sl.get("region", "us-east-1")}
        elif "pod" in spec:
            pod = spec["pod"] or {}
            deployment = {"deployment_type": "pod", "environment": pod.get("environment", "local"),
                          "pod_type": pod.get("pod_type", "p1.x1"), "replicas": pod.get("replicas", 1),
                          "shards": pod.get("shards", 1)}
        else:
            raise InvalidArgumentError("spec must name serverless or pod", field="spec")
    if not isinstance(deployment, Mapping) or "deployment_type" not in deployment:
        raise InvalidArgumentError("deployment must be an object with a deployment_type", field="deployment")
    record = {"name": name, "dimension": dimension, "metric": metric, "vector_type": vector_type,
              "deployment": dict(deployment),
              "deletion_protection": "disabled", "tags": None}
    record.update(parse_configure(body))
    return record


def parse_create_for_model(body: Any, *, dimension: int, served_by: str) -> dict:
    """The record of an index with integrated embedding (``POST /indexes/create-for-model``, the SDKs'
    ``create_for_model`` and ``IntegratedSpec``): ``{"name", "cloud", "region", "embed": {"model",
    "field_map": {"text": F}, "metric"?, ...}}``. The server embeds field ``F`` of each record with
    its own encoder (``served_by``, whose vectors have ``dimension`` values): ``embed.model`` must be
    that model or an alias the server's configuration gives it (checked by the caller). The record's
    namespaces keep a BM25 index of ``F`` too."""
    if not isinstance(body, Mapping):
        raise InvalidArgumentError("the body must be a JSON object naming the index (name, cloud, region, embed)")
    name = check_index_name(body.get("name"))
    embed = body.get("embed")
    if not isinstance(embed, Mapping) or not isinstance(embed.get("model"), str):
        raise InvalidArgumentError("embed must be an object with a model, e.g. {\"model\": \"all-MiniLM-L6-v2\", "
                                   "\"field_map\": {\"text\": \"chunk_text\"}}", field="embed")
    field_map = embed.get("field_map")
    if not isinstance(field_map, Mapping) or not isinstance(field_map.get("text"), str) or not field_map["text"] \
            or set(field_map) != {"text"}:
        raise InvalidArgumentError("embed.field_map must be {\"text\": <the record field to embed>}", field="embed")
    metric = embed.get("metric") or "cosine"
    if metric not in METRICS:
        raise InvalidArgumentError(f"embed.metric must be one of {', '.join(METRICS)}, got {metric!r}", field="embed")
    if embed.get("dimension") not in (None, dimension):
        raise InvalidArgumentError(f"embed.dimension must be {dimension} (the vectors of {served_by}), got "
                                   f"{embed.get('dimension')!r}", field="embed")
    for key in ("read_parameters", "write_parameters"):
        if embed.get(key) not in (None, {}) and not isinstance(embed.get(key), Mapping):
            raise InvalidArgumentError(f"embed.{key} must be an object", field="embed")
    record = parse_create({"name": name, "dimension": dimension, "metric": metric,
                           "spec": {"serverless": {"cloud": body.get("cloud") or "aws",
                                                   "region": body.get("region") or "us-east-1"}},
                           **{k: body[k] for k in ("deletion_protection", "tags") if body.get(k) is not None}},
                          max_dim=dimension)
    record["embed"] = {"model": embed["model"], "served_by": served_by, "field_map": {"text": field_map["text"]},
                       "metric": metric, "dimension": dimension, "vector_type": "dense",
                       "read_parameters": dict(embed.get("read_parameters") or {}),
                       "write_parameters": dict(embed.get("write_parameters") or {})}
    return record


def parse_configure(body: Any) -> dict:
    """The changes a configure request (``PATCH /indexes/{name}``) asks for: deletion protection and
    tags (a tag set to ``""`` is removed, as Pinecone does). Other settings are refused."""
    if not isinstance(body, Mapping):
        raise InvalidArgumentError("the body must be a JSON object")
    out: dict = {}
    dp = body.get("deletion_protection")
    if dp is not None:
        if dp not in ("enabled", "disabled"):
            raise InvalidArgumentError(f"deletion_protection must be 'enabled' or 'disabled', got {dp!r}",
                                       field="deletion_protection")
        out["deletion_protection"] = dp
    tags = body.get("tags")
    if tags is not None:
        if not isinstance(tags, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
            raise InvalidArgumentError("tags must be an object of strings", field="tags")
        out["tags"] = dict(tags)
    return out


def index_model(record: Mapping, base_url: str) -> dict:
    """What ``describe_index`` answers for ``record``, its host under ``base_url`` (as the client reached us)."""
    dep = record["deployment"]
    sparse = record.get("vector_type") == "sparse"
    embed = record.get("embed")
    semantic = {} if not embed else {embed["field_map"]["text"]: {
        "type": "semantic_text", "model": embed["model"], "metric": embed["metric"],
        "read_parameters": embed["read_parameters"], "write_parameters": embed["write_parameters"]}}
    spec = ({"serverless": {"cloud": dep.get("cloud"), "region": dep.get("region")}}
            if dep.get("deployment_type") == "managed" else
            {"pod": {k: dep.get(k) for k in ("environment", "pod_type", "replicas", "shards")}})
    return {
        "name": record["name"],
        "host": f"{base_url.rstrip('/')}/index/{record['name']}",
        "status": {"ready": True, "state": "Ready"},
        "schema": {"fields": ({"_sparse_values": {"type": "sparse_vector", "metric": record["metric"]}}
                              if sparse else {"_values": {"type": "dense_vector", "dimension": record["dimension"],
                                                          "metric": record["metric"]}, **semantic})},
        "deployment": dep,
        "deletion_protection": record["deletion_protection"],
        "tags": record.get("tags") or None,
        # the 2025 API's fields
        "dimension": record["dimension"], "metric": record["metric"], "vector_type": record.get("vector_type", "dense"),
        "spec": spec,
        **({} if not embed else {"embed": {k: v for k, v in embed.items() if k != "served_by"}}),
    }
