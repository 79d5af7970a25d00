"""A cosine collection searches unit-length rows but gives back the values that were upserted.

Pinecone's fetch and includeValues return what was sent, for every metric. The
lengths as sent are kept beside the unit rows (WAL records, snapshot segments,
compaction, followers, joins); records written before they were kept come back
unit length, as they did then.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import gpusearch as gs
from gpusearch import ops as ops_mod
from gpusearch.merge import rescore_exact
from gpusearch.hits import Hits
from gpusearch.replica import ShardFollower
from gpusearch.segments import read_segment, write_segment

RTOL = 1e-6  # float32: unit row times its length is the sent value to within an ulp or two


def _rows(rng, n=40, dim=6):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x *= rng.uniform(0.01, 50.0, size=(n, 1)).astype(np.float32)  # lengths far from 1
    return x


def _fetch_all(col, n):
    res = col.fetch([str(i) for i in range(n)])
    assert res.missing == []
    return np.asarray(res.vectors)


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_fetch_and_include_vectors_give_back_what_was_sent(tmp_path, rng, metric):
    x = _rows(rng)
    col = gs.Collection.create(tmp_path / "c", dim=6, metric=metric, shards=2, device="cpu", fsync=False)
    col.upsert(range(len(x)), x)
    np.testing.assert_allclose(_fetch_all(col, len(x)), x, rtol=RTOL)
    res = col.search(x[:3], k=len(x), include_vectors=True)
    for q in range(3):
        for rid, v in zip(res[q].ids, res[q].vectors):
            np.testing.assert_allclose(v, x[int(rid)], rtol=RTOL)
    if metric == "cosine":  # what is searched is still the direction only
        top = col.search(x[5] * 1000, k=1)
        assert top.ids == [["5"]] and abs(top.scores[0][0] - 1.0) < 1e-5


def test_sent_values_survive_reopen_checkpoint_compaction_and_updates(tmp_path, rng):
    x = _rows(rng)
    path = tmp_path / "c"
    col = gs.Collection.create(path, dim=6, metric="cosine", shards=2, device="cpu", fsync=False)
    col.upsert(range(20), x[:20])
    col.checkpoint()  # the first 20 in snapshot segments
    col.upsert(range(20, 40), x[20:])  # the rest only in the WAL
    col.close()
    col = gs.Collection.open(path, device="cpu")
    np.testing.assert_allclose(_fetch_all(col, 40), x, rtol=RTOL)

    col.update("3", set_metadata={"tag": "kept"})  # metadata only: the values (and length) stay
    y = np.array([0.0, 3.0, 0.0, 4.0, 0.0, 0.0], np.float32)
    col.update("4", values=y)
    x[4] = y
    col.delete(["7", "8"])
    col.compact()
    keep = [i for i in range(40) if i not in (7, 8)]
    res = col.fetch([str(i) for i in keep])
    np.testing.assert_allclose(np.asarray(res.vectors), x[keep], rtol=RTOL)
    assert res.metadata[keep.index(3)] == {"tag": "kept"}
    col.close()
    col = gs.Collection.open(path, device="cpu")
    np.testing.assert_allclose(np.asarray(col.fetch([str(i) for i in keep]).vectors), x[keep], rtol=RTOL)
    for s in range(2):
        with ShardFollower.open(path, s, device="cpu") as f:
            for rid, v, _, _ in f.fetch([str(i) for i in keep]):
                np.testing.assert_allclose(v, x[int(rid)], rtol=RTOL)
    col.close()


def test_segments_and_ops_carry_norms_and_read_files_without_them(tmp_path, rng):
    v = rng.standard_normal((3, 4)).astype(np.float32)
    norms = np.array([1.5, 2.0, 0.25], np.float32)
    write_segment(tmp_path / "new.arrow", ["a", "b", "c"], v, pa.table({"t": [1, 2, 3]}), norms=norms)
    seg = read_segment(tmp_path / "new.arrow")
    np.testing.assert_array_equal(seg.norms, norms)
    assert seg.metadata.column_names == ["t"]
    write_segment(tmp_path / "old.arrow", ["a"], v[:1])
    assert read_segment(tmp_path / "old.arrow").norms is None
    with pytest.raises(ValueError, match="one value per vector"):
        write_segment(tmp_path / "bad.arrow", ["a"], v[:1], norms=norms)

    op = ops_mod.decode(ops_mod.encode_upsert(["a", "b"], v[:2], pa.table({}), 1, norms[:2]))
    np.testing.assert_array_equal(op.norms, norms[:2])
    assert ops_mod.decode(ops_mod.encode_upsert(["a"], v[:1], pa.table({}), 1)).norms is None


def test_records_logged_without_norms_come_back_unit_length(tmp_path, rng):
    """A WAL record of an older release (format 1, no lengths) replays; its rows read back unit length."""
    path = tmp_path / "c"
    col = gs.Collection.create(path, dim=4, metric="cosine", shards=1, device="cpu", fsync=False)
    col.upsert(["new"], [[0.0, 0.0, 0.0, 2.0]])
    unit = np.array([[0.6, 0.8, 0.0, 0.0]], np.float32)
    shard = col._shards[0]
    seq = col._next_seq()
    shard.log(seq, ops_mod.encode_upsert(["old"], unit, pa.table({}), 1))  # one shard: no commit record
    col.close()
    col = gs.Collection.open(path, device="cpu")
    res = col.fetch(["old", "new"])
    assert res.ids == ["old", "new"]
    np.testing.assert_allclose(res.vectors, [[0.6, 0.8, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]], rtol=RTOL)


def test_rescore_scales_sent_values_for_cosine():
    q = np.array([[1.0, 0.0]], np.float32)
    h = Hits(np.array([[0.0, 0.0]], np.float32), np.array([[0, 1]], np.int64), np.array([["a", "b"]], object))
    h.vectors = np.array([[[10.0, 10.0], [0.5, 0.0]]], np.float32)  # b points along q, a is long but at 45°
    out = rescore_exact(q, h, 2, metric="cosine")
    assert out.ids[0].tolist() == ["b", "a"]
    np.testing.assert_allclose(out.scores[0], [1.0, np.sqrt(0.5)], rtol=1e-6)
    np.testing.assert_allclose(out.vectors[0], [[0.5, 0.0], [10.0, 10.0]])
