"""Index options: the build and default-search settings a user tunes, checked per index family.

The FAISS factory string already carries the structure's size: ``M`` in ``"HNSW32"``
(links per node) and ``nlist`` in ``"IVF1024,Flat"`` (lists). The rest are options,
given at creation (``Collection.create(..., index_options={...})``, ``POST /collections``
with ``indexOptions``, or a server's ``index_options``) and stored, defaults filled in,
in the collection's ``collection.json``, so a reopened collection keeps them:

| family | option | default | what |
|---|---|---|---|
| hnsw | ``efConstruction`` | :data:`DEFAULT_EF_CONSTRUCTION` | candidates kept while inserting (graph quality vs build time) |
| hnsw | ``efSearch`` | 64 | candidates kept while searching, when a query sets none |
| ivf | ``nprobe`` | max(8, nlist / 16) | lists probed, when a query sets none |
| any ``+refine`` | ``kFactor`` | :data:`DEFAULT_K_FACTOR` | candidates re-scored exactly per result, when a query sets none |

An index spec ending in ``,RFlat`` (``"IVF1024,PQ192x4fs,RFlat"``) has an exact refine stage: the
compressed index finds ``k * kFactor`` candidates and gpusearch re-scores them with the
stored float32 vectors (the one copy the shard keeps), so its family is e.g. ``"ivf+refine"``.

FAISS's own defaults (efConstruction 40, efSearch 16, nprobe 1) trade away recall;
hnswlib builds with efConstruction 200 and USearch with 128.

>>> check_index_options("HNSW32", 8, "ip", {"efConstruction": 100})
{'efConstruction': 100, 'efSearch': 64}
>>> check_index_options("IVF64,Flat", 8, "ip", None)
{'nprobe': 8}
>>> check_index_options("Flat", 8, "ip", {"nprobe": 4})
Traceback (most recent call last):
...
gpusearch.errors.InvalidArgumentError: index option 'nprobe' does not apply to index 'Flat'; it takes none
"""
from __future__ import annotations

import numbers
import re
from typing import Any, Mapping

from ..errors import InvalidArgumentError, InvalidTypeError

__all__ = ["DEFAULT_EF_CONSTRUCTION", "DEFAULT_EF_SEARCH", "DEFAULT_K_FACTOR", "LEGACY_OPTIONS", "OPTIONS_BY_FAMILY",
           "check_index_options", "default_nprobe"]

#: efConstruction of a new HNSW index when none is given (see bench/README.md for how it was chosen).
DEFAULT_EF_CONSTRUCTION = 128
DEFAULT_EF_SEARCH = 64
DEFAULT_K_FACTOR = 4
#: What collections created before options existed were built with (FAISS's efConstruction).
LEGACY_OPTIONS = {"hnsw": {"efConstruction": 40, "efSearch": DEFAULT_EF_SEARCH}}
OPTIONS_BY_FAMILY = {"flat": (), "hnsw": ("efConstruction", "efSearch"), "ivf": ("nprobe",)}
OPTIONS_BY_FAMILY.update({f"{f}+refine": (*o, "kFactor") for f, o in list(OPTIONS_BY_FAMILY.items())})
_MAX = 1 << 16


def default_nprobe(nlist: int) -> int:
    """Lists an IVF query probes by default: max(8, nlist / 16), at most nlist."""
    return min(nlist, max(8, nlist // 16))


def _nlist(spec: str) -> int:
    m = re.search(r"IVF(\d+)", spec)
    return int(m.group(1)) if m else 1


def check_index_options(spec: str, dim: int, metric: str, options: Mapping[str, Any] | None, *,
                        family: str | None = None) -> dict[str, int]:
    """The options of index ``spec`` with every default filled in; a clear error for one that does
    not apply to its family or is not a positive int."""
    if family is None:
        from . import index_family

        family = index_family(spec, dim, metric)
    if options is not None and not isinstance(options, Mapping):
        raise InvalidTypeError(f"index_options must be a dict such as {{'efConstruction': 200}}, got "
                               f"{type(options).__name__}", field="index_options")
    takes = OPTIONS_BY_FAMILY[family]
    out: dict[str, int] = {}
    for name, value in (options or {}).items():
        if name not in takes:
            hint = ", ".join(takes) if takes else "none"
            raise InvalidArgumentError(f"index option {name!r} does not apply to index {spec!r}; it takes {hint}",
                                       field="index_options")
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value <= _MAX:
            raise InvalidArgumentError(f"index option {name!r} must be an int between 1 and {_MAX}, got {value!r}",
                                       field="index_options")
        out[name] = int(value)
    base = family.split("+")[0]
    if family.endswith("+refine"):
        out.setdefault("kFactor", DEFAULT_K_FACTOR)
    if base == "hnsw":
        out.setdefault("efConstruction", DEFAULT_EF_CONSTRUCTION)
        out.setdefault("efSearch", DEFAULT_EF_SEARCH)
    elif base == "ivf":
        nlist = _nlist(spec)
        out.setdefault("nprobe", default_nprobe(nlist))
        if out["nprobe"] > nlist:
            raise InvalidArgumentError(f"index option 'nprobe' must be at most nlist ({nlist}) for {spec!r}, "
                                       f"got {out['nprobe']}", field="index_options")
    return {name: out[name] for name in takes if name in out}
