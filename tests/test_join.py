"""Batch joins on Ray Data (gpusearch.join) against NumPy brute force, on a real local Ray:
2 partitions and 2 join workers, small data."""
from __future__ import annotations

import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from gpusearch import join  # noqa: E402

D = 16


@pytest.fixture(scope="module", autouse=True)
def ray_local(ray_cluster):
    """The session's shared Ray (tests/conftest.py), with Ray Data set up for these tests."""
    ctx = ray.data.DataContext.get_current()
    before = ctx.enable_progress_bars, ctx.use_datasource_v2
    ctx.enable_progress_bars = False
    # The tests' own read_parquet calls: Ray 2.60's second datasource costs 6-10 s per read here.
    ctx.use_datasource_v2 = False
    yield
    ctx.enable_progress_bars, ctx.use_datasource_v2 = before


def _vec_col(m: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(m.astype(np.float32).ravel()), m.shape[1])


def _write(path, ids, vecs, files: int = 1, **cols):
    """Write a table as ``files`` Parquet files under ``path`` (a directory)."""
    os.makedirs(path, exist_ok=True)
    n = len(ids)
    bounds = np.linspace(0, n, files + 1).astype(int)
    for f in range(files):
        a, b = bounds[f], bounds[f + 1]
        data = {"id": pa.array(ids[a:b]), "vector": _vec_col(vecs[a:b])}
        for name, values in cols.items():
            data[name] = pa.array(values[a:b])
        pq.write_table(pa.table(data), os.path.join(path, f"part-{f:03d}.parquet"))
    return str(path)


def _brute(L, R, k, metric, mask=None, exclude=None):
    L64, R64 = L.astype(np.float64), R.astype(np.float64)
    if metric == "cosine":
        L64 = L64 / np.linalg.norm(L64, axis=1, keepdims=True)
        R64 = R64 / np.linalg.norm(R64, axis=1, keepdims=True)
    if metric == "l2":
        S = ((L64[:, None, :] - R64[None, :, :]) ** 2).sum(-1)
        S_cost = S
    else:
        S = L64 @ R64.T
        S_cost = -S
    S_cost = S_cost.copy()
    if mask is not None:
        S_cost[:, ~mask] = np.inf
    if exclude is not None:
        S_cost[exclude] = np.inf
    order = np.argsort(S_cost, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(S, order, 1), np.take_along_axis(S_cost, order, 1)


def _rows(ds):
    t = ds.to_pandas() if hasattr(ds, "to_pandas") else ds
    return t.sort_values(["left_id", "rank"]).reset_index(drop=True)


def _check_knn(res, L, R, lids, rids, k, metric, mask=None, exclude=None):
    order, S, cost = _brute(L, R, k, metric, mask, exclude)
    got = {}
    for r in res.itertuples():
        got[(r.left_id, int(r.rank))] = (r.right_id, r.score)
    n_expected = 0
    for i in range(len(L)):
        for j in range(k):
            if not np.isfinite(cost[i, j]):
                continue
            n_expected += 1
            rid, score = got[(lids[i], j)]
            assert rid == rids[order[i, j]], (i, j)
            assert score == pytest.approx(S[i, j], abs=2e-4)
    assert len(res) == n_expected


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("joindata")
    L = rng.standard_normal((300, D)).astype(np.float32)
    R = rng.standard_normal((500, D)).astype(np.float32)
    lids = [f"l{i:04d}" for i in range(len(L))]
    rids = [f"r{i:04d}" for i in range(len(R))]
    years = rng.integers(2000, 2020, len(R))
    langs = rng.choice(["en", "de", "fr"], len(R))
    left = _write(root / "left", lids, L, files=3)
    right = _write(root / "right", rids, R, files=2, year=years, lang=langs)
    return dict(L=L, R=R, lids=lids, rids=rids, years=years, langs=langs, left=left, right=right, root=root)


def test_knn_join_cosine_matches_brute_force(data):
    res = _rows(join.knn_join(data["left"], data["right"], k=7, workers=2, partitions=2, batch_size=64))
    assert list(res.columns) == list(join.JOIN_COLUMNS)
    _check_knn(res, data["L"], data["R"], data["lids"], data["rids"], 7, "cosine")


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_knn_join_with_filter_and_int_ids_on_datasets(data, metric):
    L, R = data["L"][:120], data["R"]
    left = ray.data.from_items([{"id": i, "vector": v} for i, v in enumerate(L)])
    right = ray.data.from_items([{"id": 1000 + i, "vector": v, "year": int(y), "lang": str(g)}
                                 for i, (v, y, g) in enumerate(zip(R, data["years"], data["langs"]))])
    flt = {"year": {"$gte": 2010}, "lang": {"$in": ["en", "fr"]}}
    res = _rows(join.knn_join(left, right, k=5, metric=metric, filter=flt, workers=2, partitions=2, batch_size=50))
    mask = (data["years"] >= 2010) & np.isin(data["langs"], ["en", "fr"])
    _check_knn(res, L, R, list(range(len(L))), [1000 + i for i in range(len(R))], 5, metric, mask=mask)


def test_self_knn_join_excludes_self(data):
    res = _rows(join.knn_join(data["right"], data["right"], k=4, exclude_self=True, workers=2, partitions=2))
    R = data["R"]
    _check_knn(res, R, R, data["rids"], data["rids"], 4, "cosine", exclude=np.eye(len(R), dtype=bool))
    assert not (res.left_id == res.right_id).any()


def _pairs_brute(L, R, threshold, metric, exclude=None):
    L64, R64 = L.astype(np.float64), R.astype(np.float64)
    if metric == "cosine":
        L64 = L64 / np.linalg.norm(L64, axis=1, keepdims=True)
        R64 = R64 / np.linalg.norm(R64, axis=1, keepdims=True)
        S = L64 @ R64.T
        hit = S >= threshold
    else:
        S = ((L64[:, None, :] - R64[None, :, :]) ** 2).sum(-1)
        hit = S <= threshold
    near = np.abs(S - threshold) < 1e-4 * max(1.0, abs(threshold))  # float32 may round either way here
    if exclude is not None:
        hit &= ~exclude
        near &= ~exclude
    return S, hit, near


@pytest.mark.parametrize("metric,threshold", [("cosine", 0.55), ("l2", 12.0)])
def test_range_join_matches_brute_force(data, metric, threshold):
    L, R = data["L"], data["R"]
    res = join.range_join(data["left"], data["right"], threshold=threshold, metric=metric, workers=2,
                          partitions=2, batch_size=64).to_pandas()
    S, hit, near = _pairs_brute(L, R, threshold, metric)
    li = {x: i for i, x in enumerate(data["lids"])}
    ri = {x: i for i, x in enumerate(data["rids"])}
    got = np.zeros_like(hit)
    for r in res.itertuples():
        i, j = li[r.left_id], ri[r.right_id]
        assert not got[i, j], "a pair appears twice"
        got[i, j] = True
        assert r.score == pytest.approx(S[i, j], abs=2e-4 * max(1.0, abs(threshold)))
    assert hit.sum() > 50  # the data makes a real test
    assert np.array_equal(got & ~near, hit & ~near)
    # ranks number each left row's pairs best first
    for lid, grp in res.groupby("left_id"):
        g = grp.sort_values("rank")
        assert list(g["rank"]) == list(range(len(g)))
        sc = g["score"].to_numpy()
        assert np.all(np.diff(sc) <= 1e-7) if metric == "cosine" else np.all(np.diff(sc) >= -1e-7)


def test_range_join_max_per_row_keeps_the_best(data):
    full = join.range_join(data["left"], data["right"], threshold=0.45, workers=2, partitions=2).to_pandas()
    capped = join.range_join(data["left"], data["right"], threshold=0.45, max_per_row=2, workers=2,
                             partitions=2).to_pandas()
    expect = full[full["rank"] < 2].sort_values(["left_id", "rank"]).reset_index(drop=True)
    got = capped.sort_values(["left_id", "rank"]).reset_index(drop=True)
    assert len(got) > 0 and got[["left_id", "right_id", "rank"]].equals(expect[["left_id", "right_id", "rank"]])


def test_dedup_finds_planted_near_duplicates(tmp_path):
    rng = np.random.default_rng(3)
    base = rng.standard_normal((40, D)).astype(np.float32)
    vecs, ids, truth = [], [], {}
    for g, v in enumerate(base):
        copies = g % 4  # 0..3 near-duplicates of each base vector
        for c in range(copies + 1):
            rid = f"g{g:02d}-c{c}"
            noise = (0.01 * rng.standard_normal(D)).astype(np.float32) if c else np.zeros(D, np.float32)
            vecs.append(v + noise)
            ids.append(rid)
            truth[rid] = g
    order = rng.permutation(len(ids))
    ids = [ids[i] for i in order]
    vecs = np.stack(vecs)[order]
    path = _write(tmp_path / "table", ids, vecs, files=2)
    out = join.dedup(path, threshold=0.98, workers=2, partitions=2, output=str(tmp_path / "dedup"))
    res = out.to_pandas()
    assert len(res) == len(ids)
    clusters = {}
    for r in res.itertuples():
        clusters.setdefault(r.cluster, set()).add(r.id)
        assert r.cluster == min(x for x in ids if truth[x] == truth[r.id])
    assert sorted(map(frozenset, clusters.values()), key=sorted) == sorted(
        (frozenset(x for x in ids if truth[x] == g) for g in range(len(base))), key=sorted)
    assert {r.id: r.cluster_size for r in res.itertuples()} == {
        x: sum(1 for y in ids if truth[y] == truth[x]) for x in ids}


def test_text_join_with_minilm(tmp_path):
    pytest.importorskip("sentence_transformers")
    from gpusearch.encoders import SentenceEncoder

    docs = ["How do I reset my password?", "The cat sat on the mat.", "Stock markets fell sharply today.",
            "A recipe for chocolate chip cookies.", "Python lists can be sorted in place.",
            "The weather tomorrow will be sunny and warm.", "Train tickets are cheaper when booked early."]
    queries = ["I forgot my password, how can I change it?", "baking cookies with chocolate",
               "how to sort a list in python", "will it rain tomorrow?"]
    expected_top = [0, 3, 4, 5]
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(len(docs))], "text": docs}), tmp_path / "docs.parquet")
    pq.write_table(pa.table({"id": [f"q{i}" for i in range(len(queries))], "text": queries}),
                   tmp_path / "queries.parquet")
    res = _rows(join.knn_join(str(tmp_path / "queries.parquet"), str(tmp_path / "docs.parquet"), k=3, text="text",
                              workers=2, partitions=2))
    enc = SentenceEncoder(device="cpu")
    Q = np.asarray(enc.encode(queries).cpu(), np.float32)
    Dm = np.asarray(enc.encode(docs).cpu(), np.float32)
    _check_knn(res, Q, Dm, [f"q{i}" for i in range(len(queries))], [f"d{i}" for i in range(len(docs))], 3, "cosine")
    top = res[res["rank"] == 0].sort_values("left_id")
    assert list(top.right_id) == [f"d{i}" for i in expected_top]


def test_collection_as_right_side(tmp_path, data):
    import gpusearch as gs

    R, rids = data["R"], data["rids"]
    col = gs.Collection.create(tmp_path / "col", dim=D, metric="cosine", shards=3, device="cpu")
    col.upsert(rids, R, metadata=[{"year": int(y)} for y in data["years"]])
    gone = rids[::5]
    col.delete(gone)
    col.close()
    live = np.array([i for i in range(len(rids)) if i % 5])
    mask = np.zeros(len(rids), bool)
    mask[live] = True
    res = _rows(join.knn_join(data["left"], str(tmp_path / "col"), k=6, workers=2, partitions=2))
    _check_knn(res, data["L"], R, data["lids"], rids, 6, "cosine", mask=mask)
    res = _rows(join.knn_join(data["left"], str(tmp_path / "col"), k=3, filter={"year": {"$lt": 2005}},
                              workers=2, partitions=2))
    _check_knn(res, data["L"], R, data["lids"], rids, 3, "cosine", mask=mask & (data["years"] < 2005))
    with pytest.raises(ValueError, match="metric 'cosine'.*pass metric='cosine'"):
        join.knn_join(data["left"], str(tmp_path / "col"), k=3, metric="l2")


def test_k_limit_is_the_engines_one_limit_and_message(data, tmp_path):
    """k=10001: the join refuses it with the Python Collection's error, class and message alike
    (gpusearch.request.check_top_k), before any output."""
    import gpusearch as gs

    col = gs.Collection.create(tmp_path / "c", dim=D, device="cpu")
    col.upsert(["a"], data["R"][:1])
    with pytest.raises(ValueError) as engine:
        col.search(data["R"][0], k=10001)
    col.close()
    out = tmp_path / "never"
    with pytest.raises(ValueError) as joined:
        join.knn_join(data["left"], data["right"], k=10001, output=str(out))
    assert str(joined.value) == str(engine.value) == "k must be between 1 and 10000, got 10001"
    assert type(joined.value) is type(engine.value)
    assert not out.exists()


def test_collection_filter_is_checked_against_the_shards_fields(tmp_path, data):
    """A collection's filter fields are its shards' (read through the engine's follower, not its
    files): a field typed int on one shard and float on another is one float field, a row without
    it fails the filter, and an unknown field or a wrongly typed operand fails before any output."""
    import gpusearch as gs

    R, rids = data["R"], data["rids"]
    col = gs.Collection.create(tmp_path / "col", dim=D, metric="l2", shards=2, device="cpu")
    shard = np.array([gs.shard_of(r, 2) for r in rids])
    year = np.where(shard == 0, data["years"], data["years"] + 0.5)
    meta = [{} if i % 7 == 0 else {"year": int(y) if s == 0 else float(y)}
            for i, (y, s) in enumerate(zip(year, shard))]
    col.upsert(rids, R, metadata=meta)
    col.close()
    has = np.array([i % 7 != 0 for i in range(len(rids))])
    res = _rows(join.knn_join(data["left"], str(tmp_path / "col"), k=4, metric="l2",
                              filter={"year": {"$gte": 2010}}, workers=2, partitions=2))
    _check_knn(res, data["L"], R, data["lids"], rids, 4, "l2", mask=has & (year >= 2010))
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="color"):
        join.knn_join(data["left"], str(tmp_path / "col"), k=3, metric="l2", filter={"color": "red"},
                      output=str(out))
    with pytest.raises(TypeError, match="year"):
        join.knn_join(data["left"], str(tmp_path / "col"), k=3, metric="l2", filter={"year": {"$gt": "x"}},
                      output=str(out))
    assert not out.exists()


_CRASHING_JOIN = """
import os, sys, tempfile, time
os.environ["RAY_AUTH_MODE"] = "disabled"
import ray
from gpusearch._ray import local_ray_kwargs
ray.init(include_dashboard=False, num_cpus=4, log_to_driver=False, _temp_dir=tempfile.mkdtemp(prefix="gsray-crash-"),
         **local_ray_kwargs())
ray.data.DataContext.get_current().enable_progress_bars = False
from gpusearch import join

def slow(batch):
    time.sleep(0.3)  # slow enough that the parent can kill this run half way
    return batch

left = ray.data.read_parquet(sys.argv[1]).map_batches(slow, batch_format="pyarrow", batch_size=8)
join.knn_join(left, sys.argv[2], k=5, workers=2, partitions=2, batch_size=8, output=sys.argv[3])
print("finished")
"""


def test_join_killed_half_way_resumes_without_duplicates(tmp_path, data):
    """kill -9 of a running join (driver and its Ray), then a rerun into the same output."""
    import signal
    import subprocess
    import sys

    out = tmp_path / "out"
    script = tmp_path / "crash.py"
    script.write_text(_CRASHING_JOIN)
    env = dict(os.environ, RAY_AUTH_MODE="disabled", GPUSEARCH_PROGRESS="0")
    proc = subprocess.Popen([sys.executable, str(script), data["left"], data["right"], str(out)], env=env,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            parts = [n for n in os.listdir(out) if n.startswith("part-")] if out.is_dir() else []
            if len(parts) >= 3:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # Ray's worker processes are not all in the driver's process group: one may still land the part it
    # was writing. Count what is done once the output has stopped changing.
    seen, still = None, 0
    while still < 30:
        now = sorted(os.listdir(out)) + sorted(os.listdir(out / join.DONE_DIR))
        still = still + 1 if now == seen else 0
        seen = now
        time.sleep(0.1)
    done_before = pq.read_table(str(out / join.DONE_DIR)).num_rows
    assert 0 < done_before < len(data["lids"])
    # Leftovers of a crash: a hidden temporary and an id file whose part never landed; both are dropped.
    (out / ".part-dead.parquet.tmp").write_bytes(b"torn")
    pq.write_table(pa.table({"left_id": data["lids"][:10]}), out / join.DONE_DIR / "part-orphan.parquet")
    left = ray.data.read_parquet(data["left"])
    res = _rows(join.knn_join(left, data["right"], k=5, workers=2, partitions=2, batch_size=32, output=str(out)))
    assert join.read_stats(out)["resumed_rows"] == done_before
    assert not res.duplicated(["left_id", "rank"]).any()
    _check_knn(res, data["L"], data["R"], data["lids"], data["rids"], 5, "cosine")
    assert not (out / ".part-dead.parquet.tmp").exists()
    assert not (out / join.DONE_DIR / "part-orphan.parquet").exists()
    # A third run finds nothing left to do and returns the same rows.
    again = _rows(join.knn_join(left, data["right"], k=5, workers=2, partitions=2, output=str(out)))
    assert again.equals(res) and join.read_stats(out)["rows_this_run"] == 0
    with pytest.raises(ValueError, match=r"different join \(it differs in spec\.k\)"):
        join.knn_join(left, data["right"], k=6, workers=2, partitions=2, output=str(out))


def test_gpusearch_join_stops_on_sigterm_and_the_same_command_resumes(tmp_path, data):
    """SIGTERM to ``gpusearch join`` once some parts are written and the rest cannot be (each worker
    is held after its part by GPUSEARCH_FAULT_HOLD_JOIN_PART): one line, status 128 + 15, no native
    stack dump; the same command run again does the rest, no row twice, exact."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    hold = tmp_path / "hold"
    hold.touch()
    out = tmp_path / "out"
    exe = Path(sys.executable).with_name("gpusearch")
    env = dict(os.environ, RAY_AUTH_MODE="disabled", GPUSEARCH_PROGRESS="0", HF_HUB_OFFLINE="1",
               GPUSEARCH_FAULT_HOLD_JOIN_PART=str(hold))
    cmd = [str(exe), "join", "knn", data["left"], data["right"], "--output", str(out), "--k", "5",
           "--workers", "2", "--partitions", "2", "--batch-size", "32"]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if out.is_dir() and any(n.startswith("part-") for n in os.listdir(out)):
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=300)
        text = proc.stdout.read().decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert rc == 128 + signal.SIGTERM, text[-3000:]
    assert "SIGTERM: join stopped" in text and "same command resumes" in text, text[-3000:]
    assert "*** SIGTERM received" not in text and "Traceback" not in text, text[-3000:]
    done = pq.read_table(str(out / join.DONE_DIR)).num_rows
    assert 0 < done < len(data["lids"])
    hold.unlink()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert join.read_stats(out)["resumed_rows"] == done
    res = _rows(pq.read_table([str(p) for p in out.glob("part-*.parquet")]).to_pandas())
    assert not res.duplicated(["left_id", "rank"]).any()
    _check_knn(res, data["L"], data["R"], data["lids"], data["rids"], 5, "cosine")


# -- bad input: refused before any work starts, nothing written ------------------------------------


def _bad_table(tmp_path, name, vecs, ids=None):
    ids = ids or [f"x{i}" for i in range(len(vecs))]
    return _write(tmp_path / name, ids, np.asarray(vecs, np.float32))


@pytest.mark.parametrize("kwargs,exc,msg", [
    ({"k": 0}, ValueError, "k must be between 1 and 10000"),
    ({"k": 10001}, ValueError, "k must be between 1 and 10000"),
    ({"k": 2.5}, TypeError, "k must be an int"),
    ({"k": 3, "metric": "hamming"}, ValueError, "metric must be one of"),
    ({"k": 3, "vector": "emb"}, ValueError, "left has no column 'emb'"),
    ({"k": 3, "left_id": "key"}, ValueError, "left has no column 'key'"),
    ({"k": 3, "filter": {"year": {"$near": 3}}}, ValueError, r"\$near"),
    ({"k": 3, "filter": {"color": "red"}}, ValueError, "color"),
    ({"k": 3, "filter": "year > 3"}, TypeError, "filter must be a dict"),
])
def test_knn_join_bad_arguments(data, tmp_path, kwargs, exc, msg):
    out = tmp_path / "never"
    with pytest.raises(exc, match=msg):
        join.knn_join(data["left"], data["right"], output=str(out), **kwargs)
    assert not out.exists()


@pytest.mark.parametrize("metric,threshold,msg", [
    ("cosine", 1.5, r"similarity in \[-1, 1\]"),
    ("l2", -0.1, "at least 0"),
    ("ip", float("nan"), "finite"),
])
def test_range_join_threshold_out_of_range(data, metric, threshold, msg):
    with pytest.raises(ValueError, match=msg):
        join.range_join(data["left"], data["right"], threshold=threshold, metric=metric)


def test_bad_values_fail_before_any_output(data, tmp_path):
    rng = np.random.default_rng(1)
    v = rng.standard_normal((20, D)).astype(np.float32)
    nan = v.copy()
    nan[13, 2] = np.nan
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"left: the row with id 'x13' has NaN or infinity in 'vector'"):
        join.knn_join(_bad_table(tmp_path, "nanleft", nan), data["right"], k=3, output=str(out))
    with pytest.raises(ValueError, match=r"right partition \d: the row with id 'x13' has NaN or infinity"):
        join.knn_join(data["left"], _bad_table(tmp_path, "nanright", nan), k=3, output=str(out))
    with pytest.raises(ValueError, match="left vectors have 8 dims but right vectors have 16"):
        join.knn_join(_bad_table(tmp_path, "dim8", v[:, :8]), data["right"], k=3, output=str(out))
    zero = v.copy()
    zero[4] = 0
    with pytest.raises(ValueError, match="the row with id 'x4' is all zeros; cosine"):
        join.knn_join(_bad_table(tmp_path, "zero", zero), data["right"], k=3, output=str(out))
    long = v.copy()
    long[6] = 1e19  # finite, but its squared length would overflow a float32 score
    with pytest.raises(ValueError, match="left: the row with id 'x6' has squared length .* beyond the limit"):
        join.knn_join(_bad_table(tmp_path, "long", long), data["right"], k=3, metric="l2", output=str(out))
    with pytest.raises(ValueError, match=r"right partition \d: the row with id 'x6' has squared length"):
        join.knn_join(data["left"], _bad_table(tmp_path, "longright", long), k=3, output=str(out))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        join.knn_join(str(tmp_path / "missing"), data["right"], k=3)
    with pytest.raises(TypeError, match="left must be a ray.data.Dataset, a Parquet path"):
        join.knn_join(42, data["right"], k=3)
    assert not out.exists()
    afile = tmp_path / "a-file"
    afile.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        join.knn_join(data["left"], data["right"], k=3, output=str(afile))


def test_left_collection_is_refused(tmp_path, data):
    import gpusearch as gs

    gs.Collection.create(tmp_path / "c", dim=D, device="cpu").close()
    with pytest.raises(ValueError, match="only the right side may be a collection"):
        join.knn_join(str(tmp_path / "c"), data["right"], k=2)


def test_cli_join_knn_writes_parquet(data, tmp_path, capsys):
    from gpusearch import cli

    out = tmp_path / "cli-out"
    # file:// URIs go through pyarrow's filesystem layer, as s3:// or gs:// would
    assert cli.main(["join", "knn", "file://" + data["left"], data["right"], "--k", "3", "--output", f"file://{out}",
                     "--workers", "2", "--filter", '{"lang": "en"}']) == 0
    said = capsys.readouterr().out
    assert "900 pairs" in said and str(out) in said
    res = _rows(ray.data.read_parquet(str(out)))
    mask = data["langs"] == "en"
    _check_knn(res, data["L"], data["R"], data["lids"], data["rids"], 3, "cosine", mask=mask)


# -- pieces without Ray -------------------------------------------------------------------------


def test_core_imports_without_ray_and_the_join_installs_from_its_folder(tmp_path):
    """`import gpusearch` and every module of the core folder import neither Ray nor the join
    (nor the serve layer); gpusearch.join is the top-level join/ folder."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    probe = (
        "import importlib, pkgutil, sys, gpusearch\n"
        "for m in pkgutil.walk_packages(gpusearch.__path__, 'gpusearch.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules if n == 'ray' or n.startswith(('ray.', 'gpusearch.join', 'gpusearch.serve')))\n"
        "assert not bad, bad\n"
        "import gpusearch.join\n"
        "assert 'ray' not in sys.modules, 'importing gpusearch.join imported ray'\n"
        "print(gpusearch.__file__)\n"
        "print(gpusearch.join.__file__)\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    core, joined = run.stdout.split()
    assert not (root / "gpusearch" / "join.py").exists()
    if Path(core).resolve() == (root / "gpusearch" / "__init__.py").resolve():  # the editable install
        assert Path(joined).resolve() == (root / "join" / "__init__.py").resolve()


def _partition(number, spec, ids, vecs):
    p = join.Partition(number, spec, device="cpu")
    p.add_batch(pa.table({"id": ids, "vector": _vec_col(np.asarray(vecs, np.float32))}))
    p.finish()
    p.set_filter(None, {})
    return p


def test_partitions_and_the_engines_merge_break_ties_by_the_smaller_id():
    """Scores tied within and across partitions and across the k-th place: the smaller right id
    first, as the engine's exact search orders them; exclude_self drops the left row's own id."""
    from gpusearch.join._spec import Spec
    from gpusearch.merge import merge

    spec = Spec(mode="knn", metric="ip", dim=2, left_id="id", right_id="id", vector="vector", text=None, k=3)
    a = _partition(0, spec, ["d", "b", "e"], [[1, 0], [1, 0], [0.5, 0]])
    b = _partition(1, spec, ["c", "a"], [[1, 0], [1, 0]])
    q = np.array([[1, 0], [0.5, 0]], np.float32)
    answers = [p.knn(q, 3) for p in (a, b)]
    assert answers[0].keys.tolist() == [[0, 1, 2], [0, 1, 2]]  # rows in id order: b, d, e
    hits, _ = merge(answers, 3, largest=True)
    assert hits.ids.tolist() == [["a", "b", "c"]] * 2
    assert hits.scores[0].tolist() == [1.0, 1.0, 1.0]
    hits, _ = merge([p.knn(q, 3, exclude=np.array(["a", "b"], object)) for p in (a, b)], 3, largest=True)
    assert hits.ids.tolist() == [["b", "c", "d"], ["a", "c", "d"]]
    ints = Spec(mode="knn", metric="l2", dim=2, left_id="id", right_id="id", vector="vector", text=None, k=2,
                right_id_type="int64")
    p = _partition(0, ints, [30, 4, 200], [[1, 1], [1, 1], [0, 0]])
    h = p.knn(np.array([[1, 1]], np.float32), 2, exclude=np.array([4]))
    assert h.ids.tolist() == [[30, 200]] and h.keys.tolist() == [[1, 2]]  # 4 < 30 < 200 as numbers


def test_connected_components_chain_and_singletons():
    labels = join.connected_components(7, np.array([5, 4, 3, 1]), np.array([6, 5, 4, 2]))
    assert labels.tolist() == [0, 1, 1, 3, 3, 3, 3]


def test_join_docstring_examples():
    """The join's `>>>` examples run (tests/test_doctests.py walks the core folder, where the join is not)."""
    import doctest
    import importlib
    import pkgutil

    names = ["gpusearch.join"] + [m.name for m in pkgutil.iter_modules(join.__path__, "gpusearch.join.")]
    finder = doctest.DocTestFinder()
    tests = [t for n in names for t in finder.find(importlib.import_module(n)) if t.examples]
    assert tests
    for t in tests:
        report: list[str] = []
        result = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS).run(t, out=report.append)
        assert result.failed == 0, "".join(report)


# -- sparse vectors (hybrid and sparse alone) ------------------------------------------------------

VOCAB = 40


def _sparse_rows(rng, n, nnz=4, empty_every=7):
    """n sparse vectors as Pinecone's {indices, values} (None for every ``empty_every``-th row) and as a dense
    (n, VOCAB) matrix for brute force; small integer values so that scores tie now and then."""
    rows, dense = [], np.zeros((n, VOCAB))
    for i in range(n):
        if i % empty_every == 3:
            rows.append(None)
            continue
        idx = rng.choice(VOCAB, nnz, replace=False)
        val = rng.integers(1, 4, nnz).astype(np.float32)
        rows.append({"indices": [int(x) for x in idx], "values": [float(x) for x in val]})
        dense[i, idx] = val
    return rows, dense


def _sparse_col(rows):
    t = pa.struct([("indices", pa.list_(pa.uint32())), ("values", pa.list_(pa.float32()))])
    return pa.array(rows, type=t)


@pytest.fixture(scope="module")
def sparse_data(tmp_path_factory):
    rng = np.random.default_rng(11)
    nl, nr = 25, 90
    L = rng.integers(-2, 3, (nl, D)).astype(np.float32)  # small integers: exact sums, real ties
    R = rng.integers(-2, 3, (nr, D)).astype(np.float32)
    ls, Ls = _sparse_rows(rng, nl)
    rs, Rs = _sparse_rows(rng, nr)
    lids = [f"q{i:02d}" for i in range(nl)]
    rids = [f"r{i:03d}" for i in range(nr)]
    root = tmp_path_factory.mktemp("sparsejoin")
    for name, ids, vecs, sp in (("left", lids, L, ls), ("right", rids, R, rs)):
        os.makedirs(root / name)
        pq.write_table(pa.table({"id": pa.array(ids), "vector": _vec_col(vecs), "sparse": _sparse_col(sp)}),
                       root / name / "part-000.parquet")
    return {"left": str(root / "left"), "right": str(root / "right"), "L": L, "R": R, "Ls": Ls, "Rs": Rs,
            "ls": ls, "rs": rs, "lids": lids, "rids": rids, "root": root}


def _hybrid_brute(S, k, candidates=None):
    """Per left row: the k best right rows by score, ties to the smaller row (ids sort like rows here)."""
    out = []
    for i in range(S.shape[0]):
        rows = np.arange(S.shape[1]) if candidates is None else np.flatnonzero(candidates[i])
        order = sorted(rows.tolist(), key=lambda j: (-S[i, j], j))[:k]
        out.append([(j, S[i, j]) for j in order])
    return out


def _check_pairs(res, want, lids, rids):
    got = {}
    for r in res.itertuples():
        got.setdefault(r.left_id, []).append((int(r.rank), r.right_id, r.score))
    for i, expect in enumerate(want):
        rows = sorted(got.get(lids[i], []))
        assert [r[1] for r in rows] == [rids[j] for j, _ in expect], lids[i]
        np.testing.assert_allclose([r[2] for r in rows], [s for _, s in expect], rtol=1e-6, atol=1e-5)


def test_hybrid_knn_join_scores_dense_plus_sparse_exactly(sparse_data):
    d = sparse_data
    S = d["L"].astype(np.float64) @ d["R"].T + d["Ls"] @ d["Rs"].T
    res = _rows(join.knn_join(d["left"], d["right"], k=5, metric="ip", sparse="sparse", partitions=2, workers=2))
    _check_pairs(res, _hybrid_brute(S, 5), d["lids"], d["rids"])


def test_sparse_only_knn_and_range_joins_pair_rows_that_share_a_term(sparse_data):
    d = sparse_data
    S = d["Ls"] @ d["Rs"].T
    shares = (d["Ls"] != 0).astype(int) @ (d["Rs"] != 0).astype(int).T > 0
    res = _rows(join.knn_join(d["left"], d["right"], k=4, metric="ip", vector=None, sparse="sparse",
                              partitions=2, workers=2))
    _check_pairs(res, _hybrid_brute(S, 4, shares), d["lids"], d["rids"])
    assert not set(res[res.left_id == "q03"].right_id)  # a row without a sparse vector pairs with nothing
    pairs = join.range_join(d["left"], d["right"], threshold=6.0, metric="ip", vector=None, sparse="sparse",
                            partitions=2, workers=2).to_pandas()
    want = {(d["lids"][i], d["rids"][j]) for i, j in zip(*np.nonzero((S >= 6.0) & shares))}
    assert set(zip(pairs.left_id, pairs.right_id)) == want and len(pairs) == len(want)


def test_self_hybrid_and_sparse_only_joins_exclude_each_row_itself(sparse_data):
    """exclude_self on the hybrid path: a row's own pair (its best score, dense and sparse alike) is
    dropped and the k best of the others come back, as brute force with the diagonal removed."""
    d = sparse_data
    others = ~np.eye(len(d["rids"]), dtype=bool)
    S = d["R"].astype(np.float64) @ d["R"].T + d["Rs"] @ d["Rs"].T
    res = _rows(join.knn_join(d["right"], d["right"], k=4, metric="ip", sparse="sparse", exclude_self=True,
                              partitions=2, workers=2))
    _check_pairs(res, _hybrid_brute(S, 4, others), d["rids"], d["rids"])
    assert not (res.left_id == res.right_id).any()
    S = d["Rs"] @ d["Rs"].T
    shares = ((d["Rs"] != 0).astype(int) @ (d["Rs"] != 0).astype(int).T > 0) & others
    res = _rows(join.knn_join(d["right"], d["right"], k=3, metric="ip", vector=None, sparse="sparse",
                              exclude_self=True, partitions=2, workers=2))
    _check_pairs(res, _hybrid_brute(S, 3, shares), d["rids"], d["rids"])
    assert not (res.left_id == res.right_id).any()


def test_hybrid_join_against_a_collection_uses_its_sparse_values(tmp_path, sparse_data):
    import gpusearch as gs

    d = sparse_data
    col = gs.Collection.create(tmp_path / "c", dim=D, metric="ip", shards=3, device="cpu", fsync=False)
    col.upsert(d["rids"], d["R"], metadata=[{"even": i % 2 == 0} for i in range(len(d["rids"]))],
               sparse_values=d["rs"])
    col.close()
    S = d["L"].astype(np.float64) @ d["R"].T + d["Ls"] @ d["Rs"].T
    even = np.arange(len(d["rids"])) % 2 == 0
    res = _rows(join.knn_join(d["left"], str(tmp_path / "c"), k=3, metric="ip", sparse="sparse",
                              filter={"even": True}, partitions=2, workers=2))
    _check_pairs(res, _hybrid_brute(S, 3, np.broadcast_to(even, S.shape)), d["lids"], d["rids"])


@pytest.mark.parametrize("kwargs, exc, msg", [
    ({"metric": "cosine", "sparse": "sparse"}, ValueError, "pass metric='ip'"),
    ({"metric": "ip", "sparse": "vector"}, TypeError, "expected sparse vectors as a struct"),
    ({"metric": "ip", "sparse": "nope"}, ValueError, "left has no column 'nope'"),
])
def test_sparse_join_bad_arguments(sparse_data, kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        join.knn_join(sparse_data["left"], sparse_data["right"], k=3, **kwargs)


def test_a_bad_sparse_value_fails_naming_the_row_before_any_output(sparse_data, tmp_path):
    d = sparse_data
    rows = list(d["ls"])
    rows[5] = {"indices": [3, 3], "values": [1.0, 2.0]}
    os.makedirs(tmp_path / "bad")
    pq.write_table(pa.table({"id": pa.array(d["lids"]), "vector": _vec_col(d["L"]), "sparse": _sparse_col(rows)}),
                   tmp_path / "bad" / "part-000.parquet")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"left: the row with id 'q05': sparse.indices must not repeat"):
        join.knn_join(str(tmp_path / "bad"), d["right"], k=3, metric="ip", sparse="sparse", output=str(out))
    assert not out.exists() or not any(out.rglob("*.parquet"))


def test_sparse_only_join_against_a_sparse_collection(tmp_path, sparse_data):
    import gpusearch as gs

    d = sparse_data
    col = gs.Collection.create(tmp_path / "s", metric="ip", shards=2, device="cpu", fsync=False, vector_type="sparse")
    keep = [j for j, v in enumerate(d["rs"]) if v is not None]  # a sparse collection's records all have one
    col.upsert([d["rids"][j] for j in keep], None, sparse_values=[d["rs"][j] for j in keep])
    col.close()
    with pytest.raises(ValueError, match="pass vector=None"):
        join.knn_join(d["left"], str(tmp_path / "s"), k=3, metric="ip", sparse="sparse")
    S = d["Ls"] @ d["Rs"].T
    shares = ((d["Ls"] != 0).astype(int) @ (d["Rs"] != 0).astype(int).T > 0)
    res = _rows(join.knn_join(d["left"], str(tmp_path / "s"), k=3, metric="ip", vector=None, sparse="sparse",
                              partitions=2, workers=2))
    _check_pairs(res, _hybrid_brute(S, 3, shares), d["lids"], d["rids"])


def test_cli_dedup_on_sparse_vectors_alone(sparse_data, tmp_path, capsys):
    """`gpusearch join dedup --sparse` clusters the rows linked by sparse similarity (pairs sharing a term
    with a dot product >= the threshold), as connected components of the brute-force pairs."""
    from gpusearch import cli

    d = sparse_data
    out = tmp_path / "cli-sparse"
    assert cli.main(["join", "dedup", d["right"], "--threshold", "9", "--metric", "ip", "--sparse", "sparse",
                     "--sparse-only", "--output", str(out), "--workers", "2"]) == 0
    S = d["Rs"] @ d["Rs"].T
    shares = ((d["Rs"] != 0).astype(int) @ (d["Rs"] != 0).astype(int).T > 0)
    a, b = np.nonzero((S >= 9) & shares & ~np.eye(len(S), dtype=bool))
    labels = join.connected_components(len(S), a, b)
    want = {d["rids"][i]: d["rids"][labels[i]] for i in range(len(S))}  # ids sort like rows here
    got = pq.read_table(out / "clusters").to_pandas()
    assert dict(zip(got.id, got.cluster)) == want
    assert f"{len(set(want.values()))} clusters" in capsys.readouterr().out
    assert cli.main(["join", "knn", d["left"], d["right"], "--k", "2", "--sparse-only", "--output", str(out)]) == 2
    assert "--sparse-only needs --sparse COLUMN" in capsys.readouterr().err
