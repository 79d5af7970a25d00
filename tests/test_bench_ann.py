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
    # without --hnsw-efc, gpusearch is built as a user who sets no options gets it, and FAISS alike
    from gpusearch.backends import DEFAULT_EF_CONSTRUCTION

    assert res["build"]["hnsw_efc"] == DEFAULT_EF_CONSTRUCTION and not res["build"]["hnsw_efc_given"]
    gs_hnsw = by["gpusearch-hnsw"]["build_params"]
    assert gs_hnsw["given"] is None and gs_hnsw["index_options"]["efConstruction"] == DEFAULT_EF_CONSTRUCTION
    assert by["faiss-hnsw"]["build_params"]["efConstruction"] == DEFAULT_EF_CONSTRUCTION
    assert by["gpusearch-ivf"]["build_params"]["index"] == by["gpusearch-ivf"]["index"]


def test_runner_new_systems_and_hnsw_efc(tmp_path):
    """--hnsw-efc reaches every HNSW (gpusearch through index_options), and the IVF over fast-scan PQ
    with an exact refine runs as the same factory string in FAISS and in gpusearch, over the same
    (nprobe, k_factor) staircase; ScaNN too when it is installed."""
    systems = "faiss-hnsw,gpusearch-hnsw,faiss-ivfpq-refine,gpusearch-ivfpq-refine"
    try:
        import scann  # noqa: F401

        systems += ",scann"
    except ImportError:  # not installed: the rest still runs
        pass
    out = tmp_path / "ann"
    cmd = [sys.executable, str(ROOT / "bench" / "bench_ann.py"), "--dataset", "synthetic:3000", "--nq", "30",
           "--dim", "32", "--systems", systems, "--hnsw-efc", "24", "--repeats", "1", "--single-budget-s", "0.1",
           "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.with_suffix(".json").read_text())
    by = {s["key"]: s for s in res["systems"]}
    assert set(by) == set(systems.split(","))
    for s in res["systems"]:
        assert "error" not in s, s
        assert s["build_s"] > 0 and s["points"] and s["build_params"], s
    assert res["build"]["hnsw_efc"] == 24 and res["build"]["hnsw_efc_given"]
    assert by["faiss-hnsw"]["build_params"]["efConstruction"] == 24
    gs_hnsw = by["gpusearch-hnsw"]["build_params"]
    assert gs_hnsw["given"] == {"efConstruction": 24} and gs_hnsw["index_options"]["efConstruction"] == 24
    assert "efConstruction=24" in by["gpusearch-hnsw"]["index"]
    faiss_pq, gs_pq = by["faiss-ivfpq-refine"], by["gpusearch-ivfpq-refine"]
    assert faiss_pq["index"] == gs_pq["build_params"]["index"] == "IVF55,PQ16x4fs,RFlat"
    assert [p["params"] for p in faiss_pq["points"]] == [
        {"nprobe": p["params"]["nprobe"], "k_factor": p["params"]["kFactor"]} for p in gs_pq["points"]]
    # the same index and settings find the same neighbours
    for a, b in zip(faiss_pq["points"], gs_pq["points"]):
        assert abs(a["recall10"] - b["recall10"]) <= 0.02, (a, b)
    # more lists searched (and more candidates re-ranked) find more of the true neighbours
    for key in ("faiss-ivfpq-refine", "scann"):
        if key in by:
            pts = by[key]["points"]
            assert pts[-1]["recall10"] > pts[0]["recall10"] + 0.2, pts


def test_served_system_refuses_an_efconstruction_it_cannot_build():
    from ann import ours
    from gpusearch.backends import DEFAULT_EF_CONSTRUCTION

    assert f"efConstruction={DEFAULT_EF_CONSTRUCTION}" in ours.GpusearchServed("HNSW32").index
    with pytest.raises(ValueError, match="default efConstruction"):
        ours.GpusearchServed("HNSW32", ef_construction=DEFAULT_EF_CONSTRUCTION + 1)


def test_plot_line_is_the_pareto_front():
    import bench_ann

    pts = [{"recall10": 0.90, "q": 10.0}, {"recall10": 0.95, "q": 12.0}, {"recall10": 0.97, "q": 5.0},
           {"recall10": 0.96, "q": 3.0}]
    assert bench_ann.pareto(pts, "q") == [pts[1], pts[2]]


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
