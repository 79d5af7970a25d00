"""LlamaIndex's PineconeVectorStore (llama-index-vector-stores-pinecone) driven through its documented
set-up against a gpusearch server (PINECONE_API_KEY and PINECONE_CONTROLLER_HOST): index documents,
retrieve with and without filters, delete a document's chunks, get nodes, clear. Run by
tests/test_frameworks.py in its own environment (.venv-llamaindex)."""
import uuid

from llama_index.core import Document, Settings, StorageContext, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.vector_stores import MetadataFilter, MetadataFilters
from llama_index.vector_stores.pinecone import PineconeVectorStore
from pinecone import Pinecone, ServerlessSpec

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
print("OK llamaindex")
