"""Long work shows a progress bar to a person and stays quiet in logs."""
from __future__ import annotations

import numpy as np

import gpusearch as gs


def test_bulk_upsert_and_training_show_progress(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GPUSEARCH_PROGRESS", "1")
    x = np.random.default_rng(0).standard_normal((120_000, 4)).astype(np.float32)
    col = gs.Collection.create(tmp_path / "c", dim=4, metric="l2", index="IVF16,Flat", device="cpu", fsync=False)
    col.upsert(np.arange(120_000), x, batch_size=50_000)
    err = capsys.readouterr().err
    assert "upsert" in err and "120k" in err.replace("120000", "120k")
    assert "training IVF16,Flat" in err
    col.compact()
    assert "rebuilding shard 0 index" in capsys.readouterr().err
    col.close()


def test_no_progress_bars_when_nobody_watches(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GPUSEARCH_PROGRESS", "0")
    x = np.random.default_rng(0).standard_normal((120_000, 4)).astype(np.float32)
    col = gs.Collection.create(tmp_path / "c", dim=4, metric="l2", device="cpu", fsync=False)
    col.upsert(np.arange(120_000), x, batch_size=50_000)
    assert capsys.readouterr().err == ""
    col.close()
