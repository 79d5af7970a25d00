"""What the caller asked for, checked: one picklable spec that partitions and join workers share."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np


__all__ = ["METRICS", "JOIN_COLUMNS", "MAX_POOL", "Spec", "check_metric", "check_count", "check_threshold",
           "check_column_name"]

METRICS = ("cosine", "ip", "l2")
#: Columns of a join's result.
JOIN_COLUMNS = ("left_id", "right_id", "score", "rank")
#: The most partitions, join workers or threads per partition a join accepts.
MAX_POOL = 1000


@dataclass
class Spec:
    """Everything a partition and a join worker need to know, picklable."""

    mode: str  # "knn" or "range"
    metric: str
    dim: int
    left_id: str
    right_id: str
    vector: str | None
    text: str | None
    k: int = 0
    threshold: float = 0.0
    max_per_row: int | None = None
    exclude_self: bool = False
    filter: Mapping | None = None
    #: The right side's fields the filter names (those it has), and their types. For a collection
    #: the types are known only once its shards are loaded (:meth:`Partition.set_filter`).
    filter_fields: list = field(default_factory=list)
    schema: dict = field(default_factory=dict)
    encoder: str | None = None  # a model path, or None for the default MiniLM
    #: The right ids' Arrow type in the result: "string" or "int64".
    right_id_type: str = "string"
    #: The sparse column (both sides; a collection's own sparse vectors on the right): a score is then the
    #: dense inner product plus the sparse dot product (metric "ip"); with no vector or text, sparse alone.
    sparse: str | None = None

    @property
    def largest(self) -> bool:
        return self.metric != "l2"

    def describe(self) -> dict:
        """What must match for a rerun to resume into the same output."""
        d = asdict(self)
        for derived in ("filter_fields", "schema", "right_id_type"):
            d.pop(derived)
        return d


def check_metric(metric: Any) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(repr(m) for m in METRICS)}, got {metric!r}")
    return metric


def check_count(value: Any, name: str, *, limit: int, allow_none: bool = False) -> int | None:
    """A count in ``1..limit`` (``max_per_row`` against ``gpusearch.MAX_TOP_K``, pool sizes against
    :data:`MAX_POOL`); ``k`` itself goes through :func:`gpusearch.request.check_top_k`."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int between 1 and {limit}, got {type(value).__name__} {value!r}")
    if not 1 <= int(value) <= limit:
        raise ValueError(f"{name} must be between 1 and {limit}, got {int(value)}")
    return int(value)


def check_threshold(threshold: Any, metric: str) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)):
        raise TypeError(f"threshold must be a number, got {type(threshold).__name__} {threshold!r}")
    t = float(threshold)
    if not math.isfinite(t):
        raise ValueError(f"threshold must be finite, got {t}")
    if metric == "cosine" and not -1.0 <= t <= 1.0:
        raise ValueError(f"threshold for metric 'cosine' is a similarity in [-1, 1], got {t}")
    if metric == "l2" and t < 0:
        raise ValueError(f"threshold for metric 'l2' is a squared distance, at least 0, got {t}")
    return t


def check_column_name(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a column name (a non-empty string), got {value!r}")
    return value


