"""LangChain's PineconeVectorStore (langchain-pinecone, which pins pinecone < 8) driven through its
documented set-up against a gpusearch server: PINECONE_API_KEY and PINECONE_CONTROLLER_HOST point the
SDK at it, nothing else changes. Run by tests/test_frameworks.py in its own environment (.venv-langchain,
made by the Makefile); exits non-zero on the first wrong answer."""
import uuid

from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_pinecone import PineconeVectorStore
from pinecone import Pinecone, ServerlessSpec


class Embedding(DeterministicFakeEmbedding):
    """A deterministic embedding (the same text, the same vector) as plain floats (SDK 7 refuses NumPy's)."""

    def embed_documents(self, texts):
        return [[float(x) for x in v] for v in super().embed_documents(texts)]

    def embed_query(self, text):
        return [float(x) for x in super().embed_query(text)]


name = f"lc-{uuid.uuid4().hex[:8]}"
pc = Pinecone()
pc.create_index(name=name, dimension=64, metric="cosine", spec=ServerlessSpec(cloud="aws", region="us-east-1"))
try:
    emb = Embedding(size=64)
    topics = ["cats", "dogs", "ships", "tea", "cats"]
    docs = [Document(page_content=f"doc about {t}", metadata={"topic": t, "n": i}) for i, t in enumerate(topics)]
    store = PineconeVectorStore.from_documents(docs, emb, index_name=name, namespace="tenant:42",
                                               ids=[f"d{i}" for i in range(5)])
    hits = store.similarity_search("doc about cats", k=2)
    assert sorted(d.metadata["n"] for d in hits) == [0, 4], hits
    hits = store.similarity_search("doc about cats", k=3, filter={"topic": "dogs"})
    assert [d.metadata["topic"] for d in hits] == ["dogs"], hits
    scored = store.similarity_search_with_score("doc about tea", k=2)
    assert scored[0][0].metadata["topic"] == "tea" and abs(scored[0][1] - 1.0) < 1e-4, scored
    mmr = store.max_marginal_relevance_search("doc about cats", k=2, fetch_k=5)
    assert len(mmr) == 2 and mmr[0].metadata["topic"] == "cats", mmr
    again = PineconeVectorStore(index_name=name, embedding=emb, namespace="tenant:42")  # by name
    assert [d.page_content for d in again.as_retriever(search_kwargs={"k": 1}).invoke("doc about ships")] == \
        ["doc about ships"]
    index = pc.Index(name)
    again.delete(ids=["d0"])
    again.delete(filter={"topic": "tea"})
    assert index.describe_index_stats().namespaces["tenant:42"].vector_count == 3
    again.delete(delete_all=True)
    assert index.describe_index_stats().namespaces["tenant:42"].vector_count == 0
finally:
    pc.delete_index(name)
print("OK langchain")
