"""API keys: who may call, write, manage collections, and which collections they may use.

A request's ``Api-Key`` header is compared with every configured key in constant time
(:func:`key_grant`). A read-only key may not write; a key limited to some collections may
use only those names (an alias needs its target in scope too), sees only them in
listings, and may not create, drop or alias collections. Refusals raise
:class:`~gpusearch.errors.UnauthenticatedError` (401) or
:class:`~gpusearch.errors.PermissionDeniedError` (403).

>>> from gpusearch.serve.config import KeyGrant
>>> grants = {"s3cret": KeyGrant("rw"), "viewer": KeyGrant("ro", frozenset({"docs"}))}
>>> authenticate(grants, "viewer", write=False)
KeyGrant(role='ro', collections=frozenset({'docs'}))
>>> authenticate(grants, "viewer", write=True)
Traceback (most recent call last):
...
gpusearch.errors.PermissionDeniedError: this API key is read-only; writes need a read-write key
"""
from __future__ import annotations

import hmac
from typing import Callable, Optional

from gpusearch.errors import PermissionDeniedError, UnauthenticatedError

from .config import KeyGrant, parse_key_grant

__all__ = ["key_grant", "key_role", "authenticate", "check_scope", "scoped_listing"]


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


def authenticate(grants: dict, key: Optional[str], *, write: bool, admin: bool = False) -> Optional[KeyGrant]:
    """The caller's grant (None when the server has no keys): 401 without a known key, 403 for a
    write with a read-only key or collection management with a scoped key."""
    if not grants:
        return None
    if not key:
        raise UnauthenticatedError("missing Api-Key header")
    grant = key_grant(grants, key)
    if grant is None:
        raise UnauthenticatedError("invalid API key")
    if write and grant.role != "rw":
        raise PermissionDeniedError("this API key is read-only; writes need a read-write key")
    if admin and grant.scoped:
        raise PermissionDeniedError("this API key is limited to some collections; creating, dropping and "
                                    "aliasing collections need an unscoped read-write key")
    return grant


def check_scope(grant: Optional[KeyGrant], name: str, resolve: Callable[[str], str]) -> str:
    """The collection ``name`` means (``resolve(name)``: an alias's target) when ``grant`` may use both
    the name and that collection; else :class:`PermissionDeniedError`. Resolved once, here, and the
    caller uses the returned collection, so an alias switched meanwhile cannot slip past the check."""
    target = resolve(name)
    if grant is None or not grant.scoped:
        return target
    if name not in grant.collections:
        raise PermissionDeniedError(f"this API key may not use collection {name!r}; it is limited to other "
                                    f"collections")
    if target not in grant.collections:
        raise PermissionDeniedError(f"{name!r} is an alias of a collection this API key may not use")
    return target


def scoped_listing(grant: Optional[KeyGrant], listing: dict) -> dict:
    """Collections and aliases, only those a scoped key may use (it learns no other name)."""
    if grant is None or not grant.scoped:
        return listing
    scope = grant.collections
    aliases = {a: t for a, t in listing.get("aliases", {}).items() if a in scope and t in scope}
    return {**listing, "collections": {n: c for n, c in listing["collections"].items() if n in scope},
            "aliases": aliases}
