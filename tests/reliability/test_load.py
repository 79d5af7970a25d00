"""The short version of the soak (bench/bench_load.py): the shared served app (2 shards x 2
replicas) under a fixed-rate mix of queries, upserts, fetches and deletes for ~20 s, every
answer checked (fetch must return exactly the last acknowledged version of each id, or nothing
after an acknowledged delete). Zero errors; latency is recorded, not asserted (no timed tests)."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from conftest import RW_KEY

pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")

from loadgen import LoadSpec, _check_fetch, _State, record_vector, run_load  # noqa: E402  (bench/, on sys.path by conftest)


def test_mixed_load_has_no_errors_and_reads_its_writes(served):
    spec = LoadSpec(rate=8, duration_s=20, namespace="loadtest", dim=16, pool=400, batch=5, seed=3,
                    max_in_flight=16, window_s=5)
    res = asyncio.run(run_load(f"http://{served.host}:{served.port}", spec, api_key=RW_KEY))
    s = res.summary()
    print({k: s[k] for k in ("sent", "errors", "achieved_rate", "max_lag_s", "latency_s")})
    assert res.errors == 0, res.error_samples
    assert res.sent + res.skipped == spec.rate * spec.duration_s and res.skipped <= 2
    assert all(d["n"] > 0 for d in res.by_op.values()), {op: d["n"] for op, d in res.by_op.items()}
    assert s["latency_s"]["p99"] is not None and s["timeline"]


def test_fetch_check_catches_a_wrong_answer():
    """The checker is not vacuous: a stale version, a changed vector, a resurrected delete and a
    lost record are each reported."""
    spec = LoadSpec(dim=8, pool=40, batch=2)
    st = _State(spec)
    st.version.update({"load-1": 3, "load-2": None})

    class R:
        status_code = 200

        def __init__(self, vectors):
            self._v = vectors

        def json(self):
            return {"vectors": self._v}

    def rec(rid, v, vec=None):
        vec = record_vector(rid, v, 8) if vec is None else vec
        return {"id": rid, "values": vec.tolist(), "metadata": {"v": v}}

    assert _check_fetch(R({"load-1": rec("load-1", 3)}), ["load-1", "load-2"], st, 8) is None
    assert "version 2" in _check_fetch(R({"load-1": rec("load-1", 2)}), ["load-1"], st, 8)
    bent = record_vector("load-1", 3, 8) + np.float32(1e-4)
    assert "differs" in _check_fetch(R({"load-1": rec("load-1", 3, bent)}), ["load-1"], st, 8)
    assert "deleted" in _check_fetch(R({"load-1": rec("load-1", 3), "load-2": rec("load-2", 1)}),
                                     ["load-1", "load-2"], st, 8)
    assert "did not return" in _check_fetch(R({}), ["load-1"], st, 8)
