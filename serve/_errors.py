"""HTTP errors: each :mod:`gpusearch.errors` class is one status and one Pinecone-style body.

Every refusal is ``{"code", "message", "details"}`` (gRPC codes as Pinecone uses them).
The status comes from the exception's class, never from its message and never from
catching every ``ValueError``:

| class (gpusearch.errors) | status | code | message |
|---|---|---|---|
| ``InvalidArgumentError`` (``InvalidTypeError``, ``LimitExceededError``) | 400 | 3 | the error's |
| ``UnauthenticatedError`` | 401 | 16 | the error's |
| ``PermissionDeniedError`` | 403 | 7 | the error's |
| ``NotFoundError`` (``CollectionNotFoundError``) | 404 | 5 | the error's |
| ``AlreadyExistsError`` | 409 | 6 | the error's |
| ``DiskFullError`` (or any ``OSError`` with ``ENOSPC``/``EDQUOT``) | 507 | 8 | fixed: the write was not applied |
| ``CorruptLogError`` (``WALCorruptError``) | 503 | 14 | fixed: an operator must restore the log |
| ``ClosedError`` | 503 | 14 | fixed (its own names a server path) |
| ``UnavailableError``, a dead or overloaded replica (Ray/Serve) | 503 | 14 | the error's / fixed |
| ``DeadlineExceededError`` | 504 | 4 | the error's |
| anything else | 500 | 13 | ``internal error (<class>); this is a bug`` |

Anything else is a bug: the client sees only the class name, the server log the rest.
Ray hands a deployment's exception to its caller wrapped (``RayTaskError``, whose text
holds a traceback); :func:`unwrap` finds the exception that was raised.

>>> import json
>>> from gpusearch.errors import LimitExceededError
>>> r = error_response(LimitExceededError("k must be between 1 and 10000, got 10001", limit_name="MAX_TOP_K",
...                                       limit=10000, value=10001, field="k"))
>>> r.status_code, json.loads(r.body)["message"]
(400, 'k must be between 1 and 10000, got 10001')
>>> error_response(ValueError("/srv/data: boom")).status_code
500
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi.responses import JSONResponse

from gpusearch.errors import (AlreadyExistsError, ClosedError, CorruptLogError, DeadlineExceededError,
                              InvalidArgumentError, LimitExceededError, NotFoundError, PermissionDeniedError,
                              UnauthenticatedError, UnavailableError)
from gpusearch.fileio import is_disk_full

__all__ = ["error_json", "error_response", "status_of", "unwrap", "HTTP_CODES"]

log = logging.getLogger("gpusearch.serve")

#: gRPC-style code (as Pinecone sends it) of each HTTP status we answer with.
HTTP_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 405: 12, 409: 6, 413: 3, 415: 3, 500: 13, 503: 14, 504: 4, 507: 8}

_DISK_FULL = ("the server's disk is full: this write was not applied (nothing of it was kept) and earlier "
              "acknowledged writes are safe; retry once space is freed")
_CORRUPT = ("this collection cannot be opened: its write-ahead log is damaged in a way that would lose "
            "acknowledged records if cut; an operator must restore it (the server log names the file)")
_CLOSED = "the collection was closed while this request ran (it is being dropped or reopened); retry"
_REPLICA = "a part of the service is unavailable (a replica died or is overloaded); retry"

# Client mistakes and refusals: (class, status), most specific first; the message is the error's own.
_BY_CLASS: tuple[tuple[type, int], ...] = (
    (InvalidArgumentError, 400),
    (UnauthenticatedError, 401),
    (PermissionDeniedError, 403),
    (NotFoundError, 404),
    (AlreadyExistsError, 409),
    (UnavailableError, 503),
    (DeadlineExceededError, 504),
)


def _ray_unavailable() -> tuple[type, ...]:
    """Ray's and Serve's "that replica is gone or full" errors: the service's state, not a bug."""
    names = {"ray.exceptions": ("ActorDiedError", "ActorUnavailableError", "RayActorError",
                                "ActorUnschedulableError"),
             "ray.serve.exceptions": ("BackPressureError", "DeploymentUnavailableError", "ReplicaUnavailableError")}
    found = []
    for module, classes in names.items():
        try:
            mod = __import__(module, fromlist=list(classes))
        except ImportError:  # pragma: no cover - serve always has Ray
            continue
        found += [getattr(mod, c) for c in classes if hasattr(mod, c)]
    return tuple(found)


_UNAVAILABLE = _ray_unavailable()


def unwrap(e: BaseException) -> BaseException:
    """The exception a deployment raised, not Ray's wrapper around it (whose text holds a traceback)."""
    seen = 0
    while getattr(e, "cause", None) is not None and isinstance(e.cause, BaseException) and seen < 5:
        e, seen = e.cause, seen + 1
    return e


def error_json(status: int, message: str, details: list | None = None) -> JSONResponse:
    """Our error body with ``status`` and its gRPC-style code."""
    code = HTTP_CODES.get(status, 3 if status < 500 else 13)
    return JSONResponse(status_code=status, content={"code": code, "message": message, "details": details or []})


def _plain(v: Any):
    return v if v is None or isinstance(v, (bool, int, float, str)) else repr(v)


def _details(e: BaseException) -> list:
    field = getattr(e, "field", None)
    if isinstance(e, LimitExceededError):
        return [{"field": "topK" if field == "k" else field, "limit": e.limit_name, "max": _plain(e.limit),
                 "got": _plain(e.value)}]
    if field is not None:
        return [{"field": "topK" if field == "k" else field}]
    return []


def status_of(e: BaseException, *, quiet: bool = False) -> tuple[int, str, list]:
    """(status, message, details) for the exception ``e`` (unwrapped first); logs what the client is not
    told, unless ``quiet`` (a Python handle's access line: the exception itself goes back to the caller)."""
    e = unwrap(e)

    def note(level: int, msg: str, *args, **kw) -> None:
        if not quiet:
            log.log(level, msg, *args, **kw)

    if is_disk_full(e):
        note(logging.WARNING, "write refused, disk full: %s", e)  # the path is for the operator, not the client
        return 507, _DISK_FULL, []
    if isinstance(e, CorruptLogError):
        note(logging.ERROR, "a collection cannot be opened: %s", e)
        return 503, _CORRUPT, []
    if isinstance(e, ClosedError):
        note(logging.WARNING, "request met a closed collection: %s", e)
        return 503, _CLOSED, []
    for cls, status in _BY_CLASS:
        if isinstance(e, cls):
            return status, str(e), _details(e)
    if isinstance(e, _UNAVAILABLE):
        note(logging.WARNING, "a replica is unavailable: %s", type(e).__name__)
        return 503, _REPLICA, []
    note(logging.ERROR, "internal error", exc_info=(type(e), e, e.__traceback__))
    return 500, f"internal error ({type(e).__name__}); this is a bug, please report it", []


def error_response(e: BaseException) -> JSONResponse:
    """The JSON answer for the exception ``e``, its status chosen by class (see the module's table)."""
    if isinstance(e, asyncio.CancelledError):  # pragma: no cover - the caller re-raises these
        raise e
    status, message, details = status_of(e)
    return error_json(status, message, details)
