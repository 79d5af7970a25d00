"""bench/bench_backup.py on a small collection: it must time full backups and restores (file:// and an S3
server), an incremental backup, and writes during a backup, and write what it measured."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "bench_backup.py"


def test_backup_bench_measures_what_it_says(tmp_path):
    out = tmp_path / "backup.json"
    cmd = [sys.executable, str(BENCH), "--n", "3000", "--dim", "16", "--repeats", "1", "--s3-n", "1000",
           "--dir", str(tmp_path / "work"), "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["benchmark"] == "backup" and res["n"] == 3000 and res["machine"]["cores"] >= 1
    for where in ("file", "s3"):
        f = res[where]
        assert f["bytes"] > 0 and f["backup_s"] > 0 and f["restore_s"] > 0 and f["open_s"] > 0
        assert f["rehydrate_s"] >= f["restore_s"] and f["backup_mb_s"] > 0 and f["restore_mb_s"] > 0
    assert res["s3"]["n"] == 1000
    inc = res["incremental"]
    assert inc["new_rows"] == 30 and 0 < inc["uploaded_bytes"] < res["file"]["bytes"]
    w = res["writes"]
    assert w["writes_without_backup"] > 0 and w["records_in_backup"] >= 3000 and w["writes_paused_s"] >= 0
    assert "rehydrate" in r.stdout and "wrote" in r.stdout
