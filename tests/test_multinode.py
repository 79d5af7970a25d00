"""Shard replicas on other Ray nodes with no shared directory (replication "ray"): a real multi-node Ray
cluster on this machine (``ray.cluster_utils.Cluster``: a head and three worker nodes, each its own raylet),
started in a process of its own by tests/cluster_check.py, which says what it checks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("httpx")

ROOT = Path(__file__).resolve().parents[1]


def test_replicas_on_other_nodes_share_nothing_answer_exactly_and_survive_a_lost_node(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "cluster_check.py"), str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=900, cwd=str(tmp_path))
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith('{"ok"')]
    assert r.returncode == 0 and lines, (r.stdout[-4000:] + r.stderr[-6000:])
    summary = json.loads(lines[-1])
    assert summary["ok"] and summary["nodes"] == 4
    assert len({p["node"] for p in summary["placement"].values()}) == 2
    assert summary["records"] == 1500 + 25 + 10
    # nothing of the replicas' copies is under the Writer's data directory, and each copy is its own
    writer_files = {p.name for p in (tmp_path / "writer-data").rglob("*")}
    assert writer_files, "the Writer wrote nothing"
    assert not (tmp_path / "writer-data" / "replicas").exists()
