"""The Prometheus metrics one Aggregator replica keeps and ``GET /metrics`` serves."""
from __future__ import annotations

__all__ = ["Metrics"]


class Metrics:
    """Requests and latency by route and status, search time per shard, partial answers, and live
    vectors and rows outside the index per collection and shard (read from the shards when
    ``/metrics`` is asked)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = reg = CollectorRegistry()
        self.requests = Counter("gpusearch_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=reg)
        self.latency = Histogram("gpusearch_request_seconds", "HTTP request latency by route", ["route"],
                                 registry=reg,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.shard = Histogram("gpusearch_shard_search_seconds", "search time inside each shard (per batch)",
                               ["shard"], registry=reg,
                               buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1))
        self.partial = Counter("gpusearch_partial_responses", "query answers that lacked a shard", registry=reg)
        self.vectors = Gauge("gpusearch_vectors", "live vectors per collection and shard", ["collection", "shard"],
                             registry=reg)
        self.unindexed = Gauge("gpusearch_unindexed_rows", "rows a shard replica searches exactly because no saved "
                               "index holds them yet (0 for an exact index)", ["collection", "shard"], registry=reg)

    def answered(self, shard_seconds: dict, partial: bool) -> None:
        """Record one query's answer: each shard's search time, and whether a shard was missing."""
        for s, sec in shard_seconds.items():
            self.shard.labels(str(s)).observe(sec)
        if partial:
            self.partial.inc()

    def text(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()
