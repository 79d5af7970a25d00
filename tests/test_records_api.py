"""Pinecone's records API and reranking on the served app, with the real ``pinecone`` SDK: an index with
integrated embedding (the server embeds each record's mapped text field with its own encoder and keeps a
BM25 index of it), ``upsert_records`` and ``search`` (text, vector, id, filter, fields, rerank), and the
standalone ``inference.rerank``. The reranker is a real cross-encoder (tests/cross_encoder_model.py); its
order is checked against the model's own scores computed here."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import RW_KEY

pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")
pinecone = pytest.importorskip("pinecone")

TEXTS = ["Vector databases enable fast similarity search.", "RAG combines retrieval with language model generation.",
         "Embeddings are dense vector representations of data.", "Python is a popular language for AI projects.",
         "Pinecone provides serverless vector database infrastructure.", "The Zanzibar archipelago grows cloves."]


def url(cfg, path=""):
    return f"http://{cfg.host}:{cfg.port}{path}"


@pytest.fixture
def pc(served):
    return pinecone.Pinecone(api_key=RW_KEY, host=url(served))


@pytest.fixture
def integrated(pc):
    name = "records-idx"
    pc.indexes.create_for_model(name=name, cloud="aws", region="us-east-1",
                                embed={"model": "multilingual-e5-large", "field_map": {"text": "chunk_text"}})
    try:
        idx = pc.Index(name)
        idx.upsert_records(namespace="ns", records=[
            {"_id": f"doc-{i}", "chunk_text": t, "n": i, "topic": "db" if "database" in t else "other"}
            for i, t in enumerate(TEXTS)])
        yield pc, idx
    finally:
        pc.delete_index(name)


def minilm(texts):
    from gpusearch.encoders import SentenceEncoder

    return SentenceEncoder(device="cpu").encode(texts).cpu().numpy()


def test_records_round_trip_with_the_servers_encoder(served, integrated):
    pc, idx = integrated
    desc = pc.describe_index("records-idx")
    assert desc.schema.fields["chunk_text"].model == "multilingual-e5-large"
    q = "similarity search with embeddings"
    res = idx.search(namespace="ns", top_k=3, inputs={"text": q})
    # the server embedded the records and the query with its MiniLM: the same order as computing it here
    X, v = minilm(TEXTS), minilm([q])[0]
    want = [f"doc-{i}" for i in np.argsort(-(X @ v), kind="stable")[:3]]
    assert [h.id for h in res.result.hits] == want
    np.testing.assert_allclose([h.score for h in res.result.hits], np.sort(X @ v)[::-1][:3], rtol=1e-4)
    assert res.usage.read_units >= 1 and res.usage.embed_total_tokens > 0
    assert res.result.hits[0].fields["chunk_text"] == TEXTS[int(want[0][4:])]
    # fields, filter, by vector, by id
    only = idx.search(namespace="ns", top_k=2, inputs={"text": q}, fields=["n"])
    assert set(only.result.hits[0].fields) == {"n"}
    flt = idx.search(namespace="ns", top_k=6, inputs={"text": q}, filter={"topic": "db"})
    assert {h.id for h in flt.result.hits} == {"doc-0", "doc-4"}
    by_vec = idx.search(namespace="ns", top_k=3, vector={"values": v.tolist()})
    assert [h.id for h in by_vec.result.hits] == want
    assert idx.search(namespace="ns", top_k=1, id="doc-5").result.hits[0].id == "doc-5"
    # a namespace never written: no hits
    assert idx.search(namespace="never", top_k=3, inputs={"text": q}).result.hits == []


def test_search_with_rerank_orders_by_the_cross_encoders_scores(served, integrated):
    from sentence_transformers import CrossEncoder

    pc, idx = integrated
    q = "vector database similarity search"
    res = idx.search(namespace="ns", top_k=5, inputs={"text": q},
                     rerank={"model": "bge-reranker-v2-m3", "rank_fields": ["chunk_text"], "top_n": 3})
    hits = res.result.hits
    assert len(hits) == 3 and res.usage.rerank_units >= 1
    first = idx.search(namespace="ns", top_k=5, inputs={"text": q})  # the candidates the rerank saw
    cands = [h.fields["chunk_text"] for h in first.result.hits]
    ref = CrossEncoder(served.reranker, device="cpu").predict([(q, t) for t in cands])
    order = sorted(range(len(cands)), key=lambda j: (-ref[j], j))[:3]
    assert [h.id for h in hits] == [first.result.hits[j].id for j in order]
    np.testing.assert_allclose([h.score for h in hits], [ref[j] for j in order], rtol=1e-4, atol=1e-6)
    # the standalone rerank: the same model, the same scores
    out = pc.inference.rerank(model="bge-reranker-v2-m3", query=q, documents=cands, top_n=2)
    assert [d.index for d in out.data] == order[:2]
    np.testing.assert_allclose([d.score for d in out.data], [ref[j] for j in order[:2]], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("body, needle", [
    ({"query": {"top_k": 3, "inputs": {"text": "x"}}, "rerank": {"model": "bge-reranker-v2-m3",
                                                                 "rank_fields": ["nope"]}}, "rerank field 'nope'"),
    ({"query": {"top_k": 3, "inputs": {"text": "x"}}, "rerank": {"model": "some-other-model",
                                                                 "rank_fields": ["chunk_text"]}}, "not served here"),
    ({"query": {"top_k": 3}}, "exactly one of inputs, vector or id"),
    ({"query": {"top_k": 3, "inputs": {"text": "x"}, "match_terms": {"terms": ["a"]}}}, "match_terms"),
    ({"query": {"top_k": 3, "inputs": {"text": "x"}}, "fields": "n"}, "fields must be a list"),
])
def test_bad_searches_are_400_naming_the_problem(served, integrated, body, needle):
    r = httpx.post(url(served, "/index/records-idx/records/namespaces/ns/search"), json=body,
                   headers={"Api-Key": RW_KEY}, timeout=60)
    assert r.status_code == 400 and needle in r.json()["message"], r.text


def test_bad_records_write_nothing(served, integrated):
    pc, idx = integrated
    head = {"Api-Key": RW_KEY, "Content-Type": "application/x-ndjson"}
    path = url(served, "/index/records-idx/records/namespaces/ns/upsert")
    for body, needle in ((b'{"_id": "new-1", "chunk_text": "fine"}\n{"_id": "new-2"}\n', "records[1].chunk_text"),
                         (b'{"_id": "new-1", "chunk_text": "fine"}\n{"_id": "new-2", "chunk_text": "' + b"y" * 100_001
                          + b'"}\n', "at most 100000 characters"),
                         (b'{"_id": "new-1", "chunk_text": "fine"}\nnot json\n', "line 2")):
        r = httpx.post(path, content=body, headers=head, timeout=60)
        assert r.status_code == 400 and needle in r.json()["message"], r.text
    assert idx.fetch(ids=["new-1", "new-2"], namespace="ns").vectors == {}


def test_an_unknown_embedding_model_is_refused(served, pc):
    with pytest.raises(pinecone.ApiError) as ei:
        pc.indexes.create_for_model(name="records-bad", cloud="aws", region="us-east-1",
                                    embed={"model": "text-embedding-3-large", "field_map": {"text": "t"}})
    assert ei.value.status_code == 400 and "not served here" in str(ei.value.body)
    assert not pc.has_index("records-bad")


def test_inference_embed_answers_with_the_servers_encoder(served, pc):
    """Pinecone's ``inference.embed`` (POST /embed) with a model name mapped onto the server's MiniLM: the
    same vectors as the model computed here, one per input in order, and the tokens its tokenizer counts."""
    texts = TEXTS[:3]
    out = pc.inference.embed(model="multilingual-e5-large", inputs=texts, parameters={"input_type": "passage"})
    assert out.vector_type == "dense" and len(out.data) == 3 and out.model == "multilingual-e5-large"
    np.testing.assert_allclose(np.array([e.values for e in out.data]), minilm(texts), rtol=1e-4, atol=1e-5)
    from sentence_transformers import SentenceTransformer
    from gpusearch.encoders import default_model_path

    tok = SentenceTransformer(default_model_path(), device="cpu").tokenizer
    assert out.usage.total_tokens == sum(len(ids) for ids in tok(texts)["input_ids"])
    q = pc.inference.embed(model="multilingual-e5-large", inputs="similarity search", parameters={"input_type": "query"})
    np.testing.assert_allclose(q.data[0].values, minilm(["similarity search"])[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("body, needle", [
    ({"model": "text-embedding-3-large", "inputs": [{"text": "x"}]}, "not served here"),
    ({"model": "multilingual-e5-large", "inputs": []}, "inputs must be a non-empty list"),
    ({"model": "multilingual-e5-large", "inputs": [{"text": "x"}, {"txt": "y"}]}, "inputs[1] must be an object"),
    ({"model": "multilingual-e5-large", "inputs": [{"text": "x"}], "parameters": {"input_type": "doc"}}, "input_type"),
    ({"model": "multilingual-e5-large", "inputs": [{"text": "x"}], "parameters": {"dimension": 1024}},
     "dimension must be the encoder's, 384"),
    ({"model": "multilingual-e5-large", "inputs": [{"text": "word " * 400}], "parameters": {"truncate": "NONE"}},
     "more than the model's"),
    ({"model": "multilingual-e5-large", "inputs": [{"text": "x"}], "extra": 1}, "got 'extra'"),
])
def test_bad_embeds_are_400_naming_the_problem(served, body, needle):
    r = httpx.post(url(served, "/embed"), json=body, headers={"Api-Key": RW_KEY}, timeout=60)
    assert r.status_code == 400 and needle in r.json()["message"], r.text
