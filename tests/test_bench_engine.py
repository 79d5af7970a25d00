"""bench/bench_engine.py on a small set: it must compare each gpusearch index with the raw FAISS index it
stands for (Flat with IndexFlatIP; IVF and HNSW at the options the collection stored), at 1 query and at
the batch size asked for, at every size asked for, and write what it measured."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_engine_bench_compares_like_with_like(tmp_path):
    from gpusearch.backends.options import DEFAULT_EF_CONSTRUCTION, DEFAULT_EF_SEARCH

    out = tmp_path / "engine.json"
    cmd = [sys.executable, str(ROOT / "bench" / "bench_engine.py"), "--n", "5000,6000", "--dim", "32", "--nq", "40",
           "--batch", "40", "--repeats", "1", "--single-budget-s", "0.05", "--indexes", "Flat,IVF,HNSW,refine",
           "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["n"] == [5000, 6000] and res["batch"] == 40 and res["nq"] == 40
    rows = {(("refine" if row["index"].endswith("RFlat") else row["index"].split(",")[0].rstrip("0123456789")),
             row["n"], row["batch"]): row for row in res["rows"]}
    assert set(rows) == {(i, n, b) for i in ("Flat", "IVF", "HNSW", "refine") for n in (5000, 6000) for b in (1, 40)}
    for row in res["rows"]:
        assert row["gpusearch_qps"] > 0 and row["faiss_qps"] > 0
        assert row["ratio"] == pytest.approx(row["gpusearch_qps"] / row["faiss_qps"])
        assert row["queries_timed"] == (40 if row["batch"] == 40 else row["queries_timed"]) >= 20
        # the same index searched the same way finds the same neighbours
        assert row["recall10_gpusearch"] == pytest.approx(row["recall10_faiss"], abs=0.02), row
    flat = rows[("Flat", 5000, 1)]
    assert flat["faiss_index"] == "IndexFlatIP" and flat["recall10_gpusearch"] == 1.0
    hnsw = rows[("HNSW", 6000, 40)]
    assert hnsw["faiss_index"] == "IndexHNSWFlat"
    assert hnsw["params"] == {"efConstruction": DEFAULT_EF_CONSTRUCTION, "efSearch": DEFAULT_EF_SEARCH}
    assert set(rows[("IVF", 5000, 1)]["params"]) == {"nprobe"}
    refine = rows[("refine", 5000, 40)]
    assert refine["index"] == "IVF70,PQ16x4fs,RFlat" and refine["faiss_index"] == "IndexRefineFlat"
    assert set(refine["params"]) == {"nprobe", "kFactor"}
    assert res["commit"]


def test_engine_bench_refuses_an_unknown_index():
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_engine.py"), "--indexes", "Flat,LSH"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "LSH" in r.stderr
