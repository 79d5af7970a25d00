"""Every error gpusearch raises on purpose, in one module, each class carrying its fields.

The classes say what kind of failure it is; the HTTP layer maps them to a status by
class (``gpusearch.serve._errors``), never by message and never by catching every
``ValueError``. Each also derives from the built-in exception a Python caller would
expect (``ValueError``, ``TypeError``, ``LookupError``, ``OSError``, ``TimeoutError``),
so ``except ValueError`` keeps working.

| class | built-in base | HTTP | what |
|---|---|---|---|
| :class:`InvalidArgumentError` | ``ValueError`` | 400 | bad input: says what was expected and what came |
| :class:`InvalidTypeError` | ``TypeError`` (and the above) | 400 | an argument of the wrong type |
| :class:`LimitExceededError` | ``ValueError`` | 400 | a size or count over a limit (``limit_name``, ``limit``, ``value``) |
| :class:`NotFoundError` | ``LookupError`` | 404 | no such collection, alias or record |
| :class:`AlreadyExistsError` | ``ValueError`` | 409 | a name that is taken |
| :class:`PermissionDeniedError` | | 403 | the caller may not do this |
| :class:`UnauthenticatedError` | | 401 | no valid credentials |
| :class:`DiskFullError` | ``OSError`` | 507 | the write was not applied: the file system is full |
| :class:`CorruptLogError` | ``ValueError`` | 503 | a log is damaged in a way cutting it would lose acknowledged writes |
| :class:`ClosedError` | ``ValueError`` | 503 | the object was closed (its message may name a server path) |
| :class:`UnavailableError` | | 503 | no part of the service could answer |
| :class:`DeadlineExceededError` | ``TimeoutError`` | 504 | it did not finish in time |

Anything else that escapes is a bug (HTTP 500, and the client sees no internal text).

>>> e = LimitExceededError("k must be between 1 and 10000, got 15000", limit_name="MAX_TOP_K", limit=10000, value=15000)
>>> isinstance(e, ValueError), e.limit, e.field
(True, 10000, None)
>>> import pickle; pickle.loads(pickle.dumps(e)).limit_name
'MAX_TOP_K'
"""
from __future__ import annotations

from pathlib import Path

__all__ = [
    "GpusearchError",
    "InvalidArgumentError",
    "InvalidTypeError",
    "LimitExceededError",
    "NotFoundError",
    "CollectionNotFoundError",
    "CollectionReplacedError",
    "AlreadyExistsError",
    "PermissionDeniedError",
    "UnauthenticatedError",
    "DiskFullError",
    "CorruptLogError",
    "ClosedError",
    "UnavailableError",
    "DeadlineExceededError",
]


def _rebuild(cls, args, fields):
    e = cls.__new__(cls, *args)
    BaseException.__init__(e, *args)
    e.__dict__.update(fields)
    return e


class GpusearchError(Exception):
    """Base of every gpusearch error. Pickles whole, fields included (Ray sends a deployment's
    exceptions to the caller by pickling them)."""

    def __reduce__(self):
        return _rebuild, (type(self), self.args, dict(self.__dict__))


class InvalidArgumentError(GpusearchError, ValueError):
    """Bad input; the message says what was expected and what came. ``field`` names the argument
    (or request field) when one is to blame."""

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field


class InvalidTypeError(InvalidArgumentError, TypeError):
    """An argument of the wrong type (a ``TypeError`` too)."""


class LimitExceededError(InvalidArgumentError):
    """A value over one of the engine's or the server's limits, named by ``limit_name``."""

    def __init__(self, message: str, *, limit_name: str, limit, value, field: str | None = None):
        super().__init__(message, field=field)
        self.limit_name, self.limit, self.value = limit_name, limit, value


class NotFoundError(GpusearchError, LookupError):
    """No such thing: ``kind`` ("collection", "alias", "record") named ``name``."""

    def __init__(self, message: str, *, kind: str = "", name: str | None = None):
        super().__init__(message)
        self.kind, self.name = kind, name

    def __str__(self) -> str:  # LookupError's str would quote the message like a key
        return str(self.args[0]) if self.args else ""


class CollectionNotFoundError(NotFoundError):
    """No collection or alias of that name."""

    def __init__(self, message: str, *, name: str | None = None):
        super().__init__(message, kind="collection", name=name)


class AlreadyExistsError(GpusearchError, ValueError):
    """A collection or alias name that is already taken."""


class PermissionDeniedError(GpusearchError):
    """The caller's credentials do not allow this (a read-only key writing, a key out of scope)."""


class UnauthenticatedError(GpusearchError):
    """No credentials, or unknown ones."""


class DiskFullError(GpusearchError, OSError):
    """A write failed because the file system is full (``ENOSPC``) or over quota (``EDQUOT``).

    An ``OSError`` whose ``errno`` is the original one and whose ``filename`` is
    the file being written; the message says the disk is full and what became
    of the write (nothing of it is kept). Free space and retry.

    Examples
    --------
    >>> import errno
    >>> e = DiskFullError(errno.ENOSPC, "no space left on device: writing failed", "/data/x")
    >>> isinstance(e, OSError), e.errno == errno.ENOSPC, str(e)
    (True, True, "[Errno 28] no space left on device: writing failed: '/data/x'")
    """

    def __reduce__(self):  # OSError's own: errno, strerror and filename go through its constructor
        return OSError.__reduce__(self)


class CorruptLogError(GpusearchError, ValueError):
    """A log holds damage that is not a torn tail, so cutting it would lose acknowledged records.

    ``path`` is the damaged (or missing) file, ``offset`` the byte offset of the first
    invalid record when there is one.
    """

    def __init__(self, message: str, path, offset: int | None = None):
        super().__init__(message)
        self.path = Path(path)
        self.offset = offset

    def __reduce__(self):
        return type(self), (self.args[0], self.path, self.offset)


class ClosedError(GpusearchError, ValueError):
    """The collection, follower or log was closed; open it again."""


class UnavailableError(GpusearchError):
    """Nothing could answer: every shard of a collection is down or still starting."""


class DeadlineExceededError(GpusearchError, TimeoutError):
    """The work did not finish within its deadline."""


class CollectionReplacedError(ValueError):
    """The collection at a follower's path was dropped and created again with another shape (dim, metric,
    index, dtype or shards): a follower cannot turn into one of it; open a new one
    (:class:`gpusearch.catalog.ShardCatalog` does)."""
