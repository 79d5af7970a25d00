"""bench/bench_durable.py on a small collection: it must time writes with and without a storage URI
(file:// and an S3 server), log shipping, and a takeover, and write what it measured."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "bench_durable.py"


def test_durable_bench_measures_what_it_says(tmp_path):
    out = tmp_path / "durable.json"
    cmd = [sys.executable, str(BENCH), "--n", "3000", "--dim", "16", "--writes", "20", "--batches", "2",
           "--repeats", "1", "--s3", "--dir", str(tmp_path / "work"), "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["benchmark"] == "durable" and res["machine"]["cores"] >= 1
    w = res["write_latency"]
    for m in ("none", "file", "s3"):
        assert w[m]["p50_ms"] > 0 and w[m]["writes"] == 20
        assert res["shipping"][m]["records_per_s"] > 0
    assert "added_p50_ms" in w["file"] and res["shipping"]["s3"]["shipped_mb_s"] > 0
    t = res["takeover"]
    assert t["n"] == 3000 and t["takeover_s"] > 0 and t["log_writes_replayed"] >= 1
    assert "takeover of" in r.stdout and "wrote" in r.stdout
