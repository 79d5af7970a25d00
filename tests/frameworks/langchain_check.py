"""LangChain's PineconeVectorStore and PineconeSparseVectorStore (langchain-pinecone, which pins
pinecone < 8) driven through their documented set-up against a gpusearch server: PINECONE_API_KEY and
PINECONE_CONTROLLER_HOST point the SDK at it, nothing else changes. The sparse store runs on a sparse
index (``vector_type="sparse"``) with a local word-count embedding in place of Pinecone's hosted one.
Run by tests/test_frameworks.py in its own environment (.venv-langchain, made by the Makefile); exits
non-zero on the first wrong answer."""
import asyncio
import re
import uuid
import zlib
from collections import Counter

from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_pinecone import PineconeSparseEmbeddings, PineconeSparseVectorStore, PineconeVectorStore
from pinecone import Pinecone, ServerlessSpec, SparseValues


class Embedding(DeterministicFakeEmbedding):
    """A deterministic embedding (the same text, the same vector) as plain floats (SDK 7 refuses NumPy's)."""

    def embed_documents(self, texts):
        return [[float(x) for x in v] for v in super().embed_documents(texts)]

    def embed_query(self, text):
        return [float(x) for x in super().embed_query(text)]


def word_counts(text):
    """Each lower-cased word's CRC-32 (0 .. 2**32 - 1, the whole range Pinecone allows) -> its count."""
    counts = Counter(zlib.crc32(w.encode()) for w in re.findall(r"[a-z0-9]+", text.lower()))
    return SparseValues(indices=list(counts), values=[float(c) for c in counts.values()])


class WordCountSparseEmbedding(PineconeSparseEmbeddings):
    """PineconeSparseVectorStore takes only a PineconeSparseEmbeddings: this one embeds locally (word counts)
    instead of calling Pinecone's inference API, and names its model rather than asking Pinecone's list."""

    model: str = "local-word-counts"

    def list_supported_models(self, vector_type=None):
        return [{"model": self.model}]

    def embed_documents(self, texts):
        return [word_counts(t) for t in texts]

    def embed_query(self, text):
        return word_counts(text)

    async def aembed_documents(self, texts):
        return self.embed_documents(texts)

    async def aembed_query(self, text):
        return self.embed_query(text)


def dot(a, b):
    bv = dict(zip(b.indices, b.values))
    return sum(v * bv.get(i, 0.0) for i, v in zip(a.indices, a.values))


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

# sparse: PineconeSparseVectorStore on a sparse index, the local word-count embedding
name = f"lcs-{uuid.uuid4().hex[:8]}"
pc.create_index(name=name, metric="dotproduct", vector_type="sparse",
                spec=ServerlessSpec(cloud="aws", region="us-east-1"))
try:
    desc = pc.describe_index(name)
    assert desc.vector_type == "sparse" and desc.metric == "dotproduct" and desc.dimension is None, desc
    semb = WordCountSparseEmbedding()
    texts = ["cats purr and cats nap and cats eat",  # cats x3
             "dogs bark at cats",                    # cats x1
             "ships sail the sea",                   # sail, the, sea
             "tea leaves steep in hot water",        # tea
             "cats cats ride ships across the sea"]  # cats x2, the, sea
    topics = ["pets", "pets", "travel", "drink", "travel"]
    docs = [Document(page_content=t, metadata={"topic": topics[i], "n": i}) for i, t in enumerate(texts)]
    sparse = PineconeSparseVectorStore(index_name=name, embedding=semb, namespace="tenant:7")  # by name
    assert sparse.add_documents(docs[:3], ids=["s0", "s1", "s2"]) == ["s0", "s1", "s2"]
    assert sparse.add_texts(texts[3:], metadatas=[dict(d.metadata) for d in docs[3:]], ids=["s3", "s4"]) == \
        ["s3", "s4"]
    index = pc.Index(name)
    assert index.describe_index_stats().namespaces["tenant:7"].vector_count == 5

    # "cats": d0 (3), d4 (2), d1 (1), scores the word-count dot products
    scored = sparse.similarity_search_with_score("Cats!", k=3)
    assert [(d.id, d.metadata["n"], d.page_content, s) for d, s in scored] == \
        [("s0", 0, texts[0], 3.0), ("s4", 4, texts[4], 2.0), ("s1", 1, texts[1], 1.0)], scored
    assert [dot(word_counts("cats"), word_counts(texts[n])) for n in (0, 4, 1)] == [3.0, 2.0, 1.0]
    # "cats sail": d0 (3) first unfiltered; among travel, d4 (2) then d2 (1); $in keeps d1 and d3
    assert sparse.similarity_search("cats sail", k=1)[0].metadata["n"] == 0
    hits = sparse.similarity_search("cats sail", k=2, filter={"topic": "travel"})
    assert [d.metadata["n"] for d in hits] == [4, 2], hits
    hits = sparse.similarity_search_with_score("cats tea tea", k=2, filter={"n": {"$in": [1, 3]}})
    assert [(d.metadata["n"], s) for d, s in hits] == [(3, 2.0), (1, 1.0)], hits
    # MMR reads the matches' sparse values (include_values): cosine to "cats" puts d0 first
    mmr = sparse.max_marginal_relevance_search("cats", k=2, fetch_k=5)
    assert len(mmr) == 2 and mmr[0].page_content == texts[0], mmr
    # the async path (PineconeAsyncio / IndexAsyncio)
    got = asyncio.run(sparse.asimilarity_search_with_score("sail the sea", k=2))
    assert [(d.metadata["n"], s) for d, s in got] == [(2, 3.0), (4, 2.0)], got
    # the documented set-up, an Index object: the store refuses one whose stats' vectorType isn't "sparse"
    assert index.describe_index_stats().vector_type == "sparse", index.describe_index_stats()
    again = PineconeSparseVectorStore(index=pc.Index(name), embedding=semb, namespace="tenant:7")
    assert [d.page_content for d in again.as_retriever(search_kwargs={"k": 1}).invoke("hot tea")] == [texts[3]]
    # re-adding an id replaces its sparse values: d1 no longer matches "dogs bark"
    again.add_texts(["tea tea tea"], metadatas=[{"topic": "pets", "n": 1}], ids=["s1"])
    assert [(d.id, s) for d, s in again.similarity_search_with_score("tea", k=2)] == [("s1", 3.0), ("s3", 1.0)]
    assert all(s == 0 for _, s in again.similarity_search_with_score("dogs bark", k=5))
    assert index.describe_index_stats().namespaces["tenant:7"].vector_count == 5
    again.delete(ids=["s0"])
    again.delete(filter={"topic": "drink"})
    assert index.describe_index_stats().namespaces["tenant:7"].vector_count == 3
    assert [d.id for d in again.similarity_search("cats", k=1)] == ["s4"]
    again.delete(delete_all=True)
    assert index.describe_index_stats().namespaces["tenant:7"].vector_count == 0
finally:
    pc.delete_index(name)
print("OK langchain")
