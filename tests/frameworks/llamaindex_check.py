"""LlamaIndex's PineconeVectorStore (llama-index-vector-stores-pinecone) driven through its documented
set-up against a gpusearch server (PINECONE_API_KEY and PINECONE_CONTROLLER_HOST): index documents,
retrieve with and without filters, delete a document's chunks, get nodes, clear; then sparse-dense
hybrid records (``add_sparse_vector=True`` with a local word-count sparse embedding) in a dotproduct index,
retrieved in HYBRID mode with alpha and in SPARSE mode. Run by tests/test_frameworks.py in its own
environment (.venv-llamaindex)."""
import math
import re
import uuid
import zlib
from collections import Counter

from llama_index.core import Document, Settings, StorageContext, VectorStoreIndex
from llama_index.core.base.embeddings.base_sparse import BaseSparseEmbedding
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.vector_stores import MetadataFilter, MetadataFilters
from llama_index.core.vector_stores.types import VectorStoreQueryMode
from llama_index.vector_stores.pinecone import PineconeVectorStore
from pinecone import Pinecone, ServerlessSpec


class WordCounts(BaseSparseEmbedding):
    """A local sparse embedding: each lower-cased word's CRC-32 (0 .. 2**32 - 1) -> its count."""

    @classmethod
    def class_name(cls) -> str:
        return "WordCounts"

    def _get_query_embedding(self, query):
        return {k: float(c) for k, c in Counter(zlib.crc32(w.encode())
                                                for w in re.findall(r"[a-z0-9]+", query.lower())).items()}

    async def _aget_query_embedding(self, query):
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text):
        return self._get_query_embedding(text)

    async def _aget_text_embedding(self, text):
        return self._get_query_embedding(text)


def close(got, want):
    return len(got) == len(want) and all(g == w and math.isclose(gs, ws, rel_tol=1e-5, abs_tol=1e-5)
                                         for (g, gs), (w, ws) in zip(got, want))


Settings.llm = None
Settings.embed_model = MockEmbedding(embed_dim=32)
name = f"li-{uuid.uuid4().hex[:8]}"
pc = Pinecone()
pc.create_index(name=name, dimension=32, metric="cosine", spec=ServerlessSpec(cloud="aws", region="us-east-1"))
try:
    vs = PineconeVectorStore(index_name=name, namespace="ns1")
    docs = [Document(text=f"text about {t}", metadata={"topic": t}, id_=f"doc-{t}") for t in ["cats", "dogs", "ships"]]
    index = VectorStoreIndex.from_documents(docs, storage_context=StorageContext.from_defaults(vector_store=vs))
    assert len(index.as_retriever(similarity_top_k=2).retrieve("text about cats")) == 2
    only = MetadataFilters(filters=[MetadataFilter(key="topic", value="dogs")])
    got = index.as_retriever(similarity_top_k=2, filters=only).retrieve("anything")
    assert [n.node.metadata["topic"] for n in got] == ["dogs"], got
    index.delete_ref_doc("doc-cats", delete_from_docstore=True)
    stats = pc.Index(name=name).describe_index_stats()
    assert stats.namespaces["ns1"].vector_count == 2, stats
    nodes = vs.get_nodes(filters=MetadataFilters(filters=[MetadataFilter(key="topic", value="ships")]))
    assert [n.metadata["topic"] for n in nodes] == ["ships"], nodes
    vs.clear()
    assert pc.Index(name=name).describe_index_stats().namespaces["ns1"].vector_count == 0
finally:
    pc.delete_index(name)

# hybrid: dense (MockEmbedding: every vector [0.5] * 32, so the dense part alone scores all alike, 8.0) plus
# sparse word counts, in a dotproduct index; the store scales the dense query by alpha, the sparse by 1 - alpha
name = f"lih-{uuid.uuid4().hex[:8]}"
pc.create_index(name=name, dimension=32, metric="dotproduct", spec=ServerlessSpec(cloud="aws", region="us-east-1"))
try:
    vs = PineconeVectorStore(index_name=name, namespace="hy", add_sparse_vector=True,
                             sparse_embedding_model=WordCounts())
    texts = {"cats": "cats purr softly on warm mats", "dogs": "dogs bark loudly at passing cats",
             "ships": "ships sail across the zanzibar sea", "tea": "tea steeps slowly in the pot"}
    # the name stays out of the embedded text, so a record's sparse values are its text's word counts
    docs = [Document(text=t, metadata={"name": k}, id_=f"doc-{k}", excluded_embed_metadata_keys=["name"])
            for k, t in texts.items()]
    index = VectorStoreIndex.from_documents(docs, storage_context=StorageContext.from_defaults(vector_store=vs))
    stats = pc.Index(name=name).describe_index_stats()
    assert stats.namespaces["hy"].vector_count == 4 and stats.dimension == 32, stats

    def retrieve(query, mode, alpha=None, k=4, filters=None):
        r = index.as_retriever(similarity_top_k=k, vector_store_query_mode=mode, alpha=alpha, filters=filters)
        return [(n.node.metadata["name"], n.score) for n in r.retrieve(query)]

    # dense only: "zanzibar" leaves every document at 8.0
    dense = retrieve("zanzibar", VectorStoreQueryMode.DEFAULT)
    assert sorted(n for n, _ in dense) == sorted(texts) and all(math.isclose(s, 8.0, rel_tol=1e-5) for _, s in dense), \
        dense
    # hybrid, alpha 0.5: 0.5 * 8.0 dense + 0.5 * 1 for the one document with "zanzibar"
    got = retrieve("zanzibar", VectorStoreQueryMode.HYBRID, alpha=0.5)
    assert got[0][0] == "ships" and math.isclose(got[0][1], 4.5, rel_tol=1e-5), got
    assert all(math.isclose(s, 4.0, rel_tol=1e-5) for _, s in got[1:]) and len(got) == 4, got
    # hybrid, alpha 0.25: dense 2.0, plus 0.75 a word of "cats purr": both in cats' text, one in dogs'
    got = retrieve("cats purr", VectorStoreQueryMode.HYBRID, alpha=0.25, k=2)
    assert close(got, [("cats", 3.5), ("dogs", 2.75)]), got
    # hybrid, alpha 0: the sparse part alone, with a metadata filter
    got = retrieve("cats purr", VectorStoreQueryMode.HYBRID, alpha=0.0, k=4,
                   filters=MetadataFilters(filters=[MetadataFilter(key="name", value="dogs")]))
    assert close(got, [("dogs", 1.0)]), got
    # sparse mode: no dense query (the store sends zeros of describe_index_stats' dimension), sparse as is
    got = retrieve("the zanzibar sea", VectorStoreQueryMode.SPARSE, k=2)
    assert close(got, [("ships", 3.0), ("tea", 1.0)]), got
    # sparse mode with alpha: the sparse values scaled by 1 - alpha
    got = retrieve("the zanzibar sea", VectorStoreQueryMode.SPARSE, alpha=0.5, k=1)
    assert close(got, [("ships", 1.5)]), got
    # deleting a document takes its dense and sparse values; the rest still score
    index.delete_ref_doc("doc-ships", delete_from_docstore=True)
    got = retrieve("the zanzibar sea", VectorStoreQueryMode.SPARSE, k=1)
    assert close(got, [("tea", 1.0)]), got
    vs.clear()
    assert pc.Index(name=name).describe_index_stats().namespaces["hy"].vector_count == 0
finally:
    pc.delete_index(name)
print("OK llamaindex")
