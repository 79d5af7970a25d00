"""The recall-versus-QPS runner (bench/bench_ann.py) end to end on a small synthetic set: it must
measure every system it is given, write its JSON and table, and its recall numbers must be right."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def test_runner_on_synthetic_data(tmp_path):
    out = tmp_path / "ann"
    cmd = [sys.executable, str(ROOT / "bench" / "bench_ann.py"), "--dataset", "synthetic:3000", "--nq", "50",
           "--systems", "faiss-flat,gpusearch-flat,faiss-hnsw,gpusearch-hnsw,gpusearch-ivf",
           "--repeats", "1", "--single-budget-s", "0.2", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.with_suffix(".json").read_text())
    assert res["dataset"]["n"] == 3000 and res["dataset"]["nq"] == 50
    by = {s["key"]: s for s in res["systems"]}
    assert set(by) == {"faiss-flat", "gpusearch-flat", "faiss-hnsw", "gpusearch-hnsw", "gpusearch-ivf"}
    for s in res["systems"]:
        assert "error" not in s, s
        assert s["build_s"] > 0 and s["points"], s
        for p in s["points"]:
            assert 0 <= p["recall10"] <= 1 and p["qps_single"] > 0 and p["qps_batch"] > 0
            assert p["single_queries_timed"] >= 20
    # exact search is exact (ties in random data are vanishingly rare)
    for key in ("faiss-flat", "gpusearch-flat"):
        (p,) = by[key]["points"]
        assert p["recall10"] == 1.0 and p["recall100"] == 1.0 and p["recall10_single"] == 1.0
    # the HNSW sweep runs cheapest first, and recall does not fall as efSearch grows (same graph)
    pts = by["gpusearch-hnsw"]["points"]
    assert pts[0]["params"] == {"efSearch": 16}
    assert all(b["recall10"] >= a["recall10"] - 1e-9 for a, b in zip(pts, pts[1:]))
    # k=100 with efSearch 16 still looks at 100 candidates: recall@100 is not starved
    assert pts[0]["recall100"] > 0.9
    md = out.with_suffix(".md").read_text()
    assert "| gpusearch HNSW |" in md and "| FAISS flat |" in md


def test_table_says_when_a_target_is_not_reached():
    import bench_ann

    res = {"dataset": {"name": "x", "n": 10, "dim": 4, "nq": 2}, "date": "2026-12-02",
           "machine": {"cpu": "cpu", "cores": 2, "gpu": None},
           "systems": [{"name": "slow", "index": "HNSW", "build_s": 1.0, "memory_mb_in_process": 1.0,
                        "memory_mb_servers": 0.0,
                        "points": [{"params": {"ef": 1}, "recall10": 0.5, "qps_single": 10.0, "qps_batch": 20.0}]},
                       {"name": "broken", "index": "IVF", "error": "RuntimeError('boom')"}]}
    md = bench_ann.table(res, 0.95)
    assert "not reached (best 0.500)" in md and "failed: RuntimeError('boom')" in md


def test_recall_matches_a_brute_force_count():
    from ann import data

    gt = np.array([[1, 2, 3], [4, 5, 6]])
    got = np.array([[3, 9, 1], [-1, -1, -1]])
    assert data.recall(got, gt, 3) == pytest.approx((2 / 3 + 0) / 2)
