"""What the HTTP edge checks itself: the body, before it is a request.

Only what belongs to HTTP lives here: the body's size (:class:`BodyLimit`, also for a
chunked body), counts against ``max_batch`` (:func:`check_count`), id length
(:func:`check_id`), the size and nesting of metadata and filters as JSON
(:func:`json_limits`), and turning JSON number lists into a float32 matrix
(:func:`json_matrix`: rectangular, at most ``max_dim`` wide, every number a finite
float32). Everything a search request means (dim, ``k``, params, the filter, unit
length) is checked once by the engine (:func:`gpusearch.request.build_request`).
Each refusal raises a :mod:`gpusearch.errors` class naming the limit.

>>> json_limits({"a": [1, {"b": 2}]}, "filter", 100, 2, "max_filter_bytes")
Traceback (most recent call last):
...
gpusearch.errors.LimitExceededError: filter nests deeper than 2 levels of objects and lists (the limit)
>>> json_matrix([[1, 2], [3, 4]], "queries", max_dim=8).dtype
dtype('float32')
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from gpusearch.arrays import MAX_SQUARED_NORM, first_overlong_row
from gpusearch.errors import InvalidArgumentError, LimitExceededError

from ._errors import error_json

__all__ = ["BODY_LIMIT", "BodyLimit", "json_limits", "check_count", "check_id", "json_matrix", "check_lengths"]

#: The body limit the middleware enforces, set by the ingress replica from its config (the
#: middleware runs before FastAPI reads a body, and outside the replica's object).
BODY_LIMIT = {"bytes": 64 << 20}


class _BodyTooLarge(Exception):
    pass


def _too_large(limit: int, size: str):
    return error_json(413, f"request body is {size}; the limit is {limit} bytes (max_body_bytes)")


class BodyLimit:
    """Refuses a request body over ``BODY_LIMIT["bytes"]`` with 413: at once when ``Content-Length``
    says so, and while it streams otherwise (a chunked body has no Content-Length): the bytes are
    counted as they arrive and reading stops at the first chunk past the limit."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = BODY_LIMIT["bytes"]
        declared = [v for k, v in scope.get("headers", ()) if k.lower() == b"content-length"]
        if declared:
            text = declared[0].decode("latin-1").strip()
            if len(declared) > 1 or not text.isdigit():
                return await error_json(400, "Content-Length must be one non-negative integer")(scope, receive, send)
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
            raise LimitExceededError(f"{what} nests deeper than {max_depth} levels of objects and lists (the limit)",
                                     limit_name="max_filter_depth", limit=max_depth, value=depth, field=what)
        stack.extend((x, d + 1) for x in items)
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8", "replace"))
    if size > max_bytes:
        raise LimitExceededError(f"{what} is {size} bytes as JSON; the limit is {max_bytes} bytes ({setting})",
                                 limit_name=setting, limit=max_bytes, value=size, field=what)


def check_count(n: int, what: str, limit: int) -> None:
    """At most ``limit`` (``max_batch``) items of ``what`` ("vectors in one upsert") per request."""
    if n > limit:
        raise LimitExceededError(f"{n} {what}; the limit is {limit}", limit_name="max_batch", limit=limit, value=n)


def check_id(value: str, what: str, max_length: int) -> str:
    """A record id from a request: 1 to ``max_length`` characters of valid UTF-8."""
    if not value:
        raise InvalidArgumentError(f"{what} is empty; expected a record id of 1 to {max_length} characters",
                                   field=what)
    if len(value) > max_length:
        raise LimitExceededError(f"{what} has {len(value)} characters; the limit is {max_length} (max_id_length)",
                                 limit_name="max_id_length", limit=max_length, value=len(value), field=what)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgumentError(f"{what} is not valid UTF-8 text (it holds a lone surrogate)", field=what) from None
    return value


def json_matrix(rows: list, what: str, *, max_dim: int) -> np.ndarray:
    """JSON number lists as a float32 ``(n, d)`` matrix: at least one row, every row as long as the
    first and at most ``max_dim`` long, every number a finite float32 (JSON's ``NaN``/``Infinity``
    and numbers beyond float32's range are refused here, where the JSON is decoded)."""
    if not rows:
        raise InvalidArgumentError(f"{what}: expected at least one vector, got none", field=what)
    n = len(rows[0])
    if n == 0:
        raise InvalidArgumentError(f"{what}[0].values is empty; expected a dense vector", field=what)
    if n > max_dim:
        raise LimitExceededError(f"{what}[0].values has {n} numbers; the limit is dim {max_dim}",
                                 limit_name="max_dim", limit=max_dim, value=n, field=what)
    for i, r in enumerate(rows):
        if len(r) != n:
            raise InvalidArgumentError(f"{what}[{i}].values has {len(r)} numbers, expected {n} like {what}[0]",
                                       field=what)
    with np.errstate(over="ignore"):  # a number beyond float32 becomes inf, refused just below
        m = np.asarray(rows, dtype=np.float32)
    if not np.isfinite(m).all():
        raise InvalidArgumentError(f"{what} holds NaN or infinity (or a number beyond float32); expected finite "
                                   f"numbers", field=what)
    return m


def check_lengths(m: np.ndarray, what: str) -> None:
    """Refuse a row to be written whose squared length overflows float32 scores (the engine's rule,
    refused here to name the request's field before the batch travels to the Writer)."""
    bad = first_overlong_row(m)
    if bad is not None:
        i, sq = bad
        raise InvalidArgumentError(f"{what}[{i}] is too long: its squared length {sq:.3g} is over "
                                   f"{MAX_SQUARED_NORM:.3g}, where float32 scores overflow; scale it down",
                                   field=what)
