"""The GPU check's CPU dry run (issue 17): ``bench/gpu_check.sh`` starts, finds its pieces, says
"no GPU", runs every benchmark section at tiny sizes on the CPU and writes its results, so the
command a GPU session will run cannot rot between GPU runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    from conftest import cuda_available

    if cuda_available():
        pytest.skip("a GPU is visible: run the real check, make gpu-check")
    out = tmp_path_factory.mktemp("gpu-check")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OUT")}
    env.update(GPUSEARCH_PY=sys.executable, GPU_CHECK_BUDGET_S="300")
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    return proc, out


def test_dry_run_says_no_gpu_and_passes(dry_run):
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "no GPU: torch sees no CUDA device" in proc.stdout
    assert "gpusearch GPU check: no GPU (CPU dry run" in proc.stdout  # the table comes last
    assert proc.stdout.rstrip().splitlines()[-1].startswith("[gpu-check")


def test_dry_run_found_its_pieces(dry_run):
    _, out = dry_run
    env = json.loads((out / "gpu-env.json").read_text())
    assert env["gpu"] is None and env["faiss"] and env["torch"] and env["minilm"]
    assert env["gpusearch"].startswith("/tmp/gpusearch-site."), "the check must import the copy it installed"
    log = (out / "gpu-tests.log").read_text()
    assert "skipped" in log and "failed" not in log and "error" not in log.lower()
    assert (out / "gpu-tests.xml").exists()


def test_dry_run_ran_every_section(dry_run):
    _, out = dry_run
    res = json.loads((out / f"gpu-dry-run-cpu{os.cpu_count()}.json").read_text())
    assert res["mode"] == "dry-run" and res["gpu"] is None
    assert res["errors"] == [] and res["skipped"] == []
    assert res["ceilings"]["copy_gbps"] > 0 and res["ceilings"]["gemm_tflops_float32"] > 0
    assert {(r["dtype"], r["nq"]) for r in res["kernels"]} == {(d, n) for d in ("float32", "float16") for n in (1, 16, 64)}
    assert all(r["top1_agrees_with_torch"] == 1.0 for r in res["kernels"] if r["dtype"] == "float32")
    assert all(r["top1_agrees_with_torch"] >= 0.9 for r in res["kernels"])  # float16 scores can tie in torch
    assert res["topk"] and all(r["same_values"] for r in res["topk"])
    assert {(r["stage"], r["filter"]) for r in res["collection"]} == {
        (s, f) for s in ("plain", "deleted 1%") for f in ("no filter", "filter 10%")}
    assert [r["batch"] for r in res["encoder"]] == [1, 4]
    assert res["ivf"] and all(r["device_recall"] == pytest.approx(r["faiss_cpu_recall"], abs=0.02) for r in res["ivf"])
    assert res["goals"] and all(g["met"] is None for g in res["goals"]), "a dry run judges no GPU goal"
