"""bench/bench_sparse.py on a small set: it must time dense, hybrid and sparse-only search one query at a time
on the same data, check the exact answers against NumPy, measure the hybrid recall of an approximate index
against the exact Flat answer, and write what it measured."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "bench_sparse.py"


def test_sparse_bench_measures_hybrid_against_dense(tmp_path):
    out = tmp_path / "sparse.json"
    cmd = [sys.executable, str(BENCH), "--n", "3000,4000", "--dim", "32", "--nnz", "20", "--vocab", "2000",
           "--nq", "30", "--check-q", "10", "--ann-n", "3000", "--ann-nq", "30", "--repeats", "1",
           "--single-budget-s", "0.05", "--batch-size", "1000", "--chunk", "1500", "--workdir", str(tmp_path),
           "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["benchmark"] == "sparse" and res["n"] == [3000, 4000] and res["nnz"] == 20 and res["k"] == 10
    assert res["machine"]["cores"] >= 1 and "goal" in res
    assert [row["n"] for row in res["rows"]] == [3000, 4000]
    for row in res["rows"]:
        for name in ("dense", "hybrid", "sparse"):
            assert row[f"{name}_qps"] > 0
            lo, hi = row[f"{name}_qps_min_max"]
            assert lo <= row[f"{name}_qps"] <= hi
            assert row[f"{name}_ms"] == pytest.approx(1000 / row[f"{name}_qps"])
        assert row["hybrid_over_dense"] > 0 and row["sparse_over_dense"] > 0 and row["hybrid_over_dense_paired"] > 0
        assert len(row["loadavg_1min_before_after"]) == 2
        assert row["hybrid_over_dense"] == pytest.approx(row["dense_qps"] / row["hybrid_qps"])
        assert row["goal_met"] == (row["hybrid_over_dense"] <= 1.5)
        assert row["queries_timed"] >= 20 and row["build_s_hybrid"] > 0 and row["build_s_sparse"] > 0
        # exact search is exact: the collections agree with NumPy brute force
        assert row["recall10_hybrid_vs_numpy"] >= 0.99 and row["recall10_sparse_vs_numpy"] >= 0.99, row
        assert row["sparse_matches_mean"] > 0
    ann = {row["index"]: row for row in res["ann"]}
    assert set(ann) == {"Flat", "HNSW32"} and res["ann_queries"] == 30
    assert ann["Flat"]["hybrid_recall10"] == 1.0 and ann["Flat"]["dense_recall10"] == 1.0
    assert res["ann_reference_recall10_vs_numpy"] >= 0.99
    hnsw = ann["HNSW32"]
    assert 0.5 <= hnsw["hybrid_recall10"] <= 1.0 and 0.5 <= hnsw["dense_recall10"] <= 1.0
    assert set(hnsw["params"]) == {"efConstruction", "efSearch"}
    for row in ann.values():
        assert row["n"] == 3000 and row["hybrid_qps"] > 0 and row["dense_qps"] > 0 and row["hybrid_over_dense"] > 0
        assert row["hybrid_over_dense_paired"] > 0
    assert "hybrid/dense" in r.stdout and "upserted" in r.stdout


def test_sparse_bench_refuses_more_terms_than_the_vocabulary():
    r = subprocess.run([sys.executable, str(BENCH), "--nnz", "60", "--vocab", "50"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--vocab" in r.stderr
