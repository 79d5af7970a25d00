"""bench/bench_join_sparse.py on a small set: it must time the dense join, the hybrid join and an in-process
brute force on the same tables, find the brute force's answers with the hybrid join, and write what it
measured."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("scipy")

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "bench_join_sparse.py"


def test_sparse_join_bench_measures_the_hybrid_join_against_dense_and_brute_force(tmp_path):
    out = tmp_path / "join-sparse.json"
    cmd = [sys.executable, str(BENCH), "--right", "1500", "--left", "120", "--dim", "16", "--nnz", "12",
           "--vocab", "500", "--repeats", "1", "--batch-size", "60", "--data-dir", str(tmp_path / "data"),
           "--out", str(out)]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert (res["right_rows"], res["left_rows"], res["nnz"], res["k"]) == (1500, 120, 12, 10)
    assert res["machine"]["cores"] >= 1
    for name in ("dense_join", "hybrid_join", "brute_force"):
        assert res["median_s"][name] > 0 and len(res["runs_s"][name]) == 1
        assert res["left_rows_per_s"][name] == pytest.approx(120 / res["median_s"][name], rel=0.01)
    assert res["hybrid_over_dense_join"] == pytest.approx(res["median_s"]["hybrid_join"] / res["median_s"]["dense_join"],
                                                          rel=0.01)
    assert res["agreement_with_brute_force_ids"] == 1.0  # exact: the same answers (no ties at this scale)
