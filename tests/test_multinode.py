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


@pytest.fixture
def s3_bucket(tmp_path):
    """A bucket on a real S3 protocol server (moto's server mode, a process on a free loopback port)."""
    pytest.importorskip("moto", reason="moto[server] is in the dev extra")
    import pyarrow.fs as pafs

    sys.path.insert(0, str(ROOT / "bench"))
    from server_proc import S3_TEST_ENV, start_s3_server

    try:
        proc, url = start_s3_server(tmp_path / "moto.log")
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        q = f"endpoint_override={url}&region=us-east-1"
        saved = dict(os.environ)
        os.environ.update(S3_TEST_ENV)
        try:
            fs, _ = pafs.FileSystem.from_uri(f"s3://gsdata?{q}&allow_bucket_creation=true")
            fs.create_dir("gsdata")
        finally:
            os.environ.clear()
            os.environ.update(saved)
        yield f"s3://gsdata/cluster?{q}", {**os.environ, **S3_TEST_ENV}
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_writers_node_lost_mid_stream_loses_no_acknowledged_write(tmp_path, s3_bucket):
    """tests/takeover_check.py: the Writer's log and snapshots in a bucket on a real S3 protocol server; its
    node removed while a stream of upserts runs; a new Writer on the other node takes over with every
    acknowledged write."""
    uri, env = s3_bucket
    env = {k: v for k, v in env.items() if not k.startswith("RAY_ADDRESS")}
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "takeover_check.py"), str(tmp_path / "work"), uri],
                       env=env, capture_output=True, text=True, timeout=900, cwd=str(tmp_path))
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith('{"ok"')]
    assert r.returncode == 0 and lines, (r.stdout[-4000:] + r.stderr[-6000:])
    summary = json.loads(lines[-1])
    assert summary["ok"] and summary["writes_acked_before"] >= 40 and summary["writes_acked_after"] >= 40
    assert summary["terms"][1] > summary["terms"][0]
    assert summary["rebuild"]["collections"]["durable"]["sequence"] >= 2 and summary["storage"] == "s3"
