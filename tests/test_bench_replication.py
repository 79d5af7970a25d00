"""bench/bench_replication.py on a small collection: both modes measured in one run (ingest, query, read-your-
writes, catch-up), with what it measured written out. (Its --rehydrate-n run, four more deployments, is
left to the benchmark itself: bench/results/replication-rehydrate-cpu2.json.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parents[1]


def test_replication_bench_measures_both_modes(tmp_path):
    out = tmp_path / "replication.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_replication.py"), "--n", "1000", "--dim", "8",
                        "--repeats", "1", "--modes", "shared,ray", "--rehydrate-n", "3000",
                        "--rehydrate-modes", "storage", "--out", str(out)], env=env,
                       capture_output=True, text=True, timeout=900, cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["benchmark"] == "replication" and res["n"] == 1000
    for mode in ("shared", "ray"):
        m = res["median"][mode]
        assert m["ingest_records_s"] > 0 and m["query_p50_ms"] > 0 and m["ryw_query_p50_ms"] > 0
        assert m["catch_up_10k_ms"] > 0
    assert set(res["ray_over_shared"]) == set(res["median"]["ray"])
    assert res["storage_over_ray"] is None  # mode storage not asked for here (the rehydration below serves it)
    # a replica added to the served shard copied its files from the snapshot at the storage URI
    reh = res["rehydration"]
    assert reh["n"] == 3000 and reh["median"]["storage"]["added_replica_s"] > 0
    replicas = reh["runs"]["storage"][0]["replicas"]
    assert len(replicas) == 2 and all(r["seeded_bytes_used"] > 0 for r in replicas), replicas
    # and so did the replacement of a killed replica
    replaced = reh["runs"]["storage"][0]["replaced_replica"]
    assert replaced["seconds"] > 0 and replaced["seeded_bytes_used"] > 0 and replaced["load_s"] >= 0, replaced
