"""Haystack's PineconeDocumentStore (pinecone-haystack) against a gpusearch server (PINECONE_API_KEY and
PINECONE_CONTROLLER_HOST): the store creates its index, writes, counts, retrieves by embedding with
and without filters, filters documents, deletes. Run by tests/test_frameworks.py in its own
environment (.venv-haystack)."""
import random
import uuid

from haystack import Document
from haystack.document_stores.types import DuplicatePolicy
from haystack_integrations.components.retrievers.pinecone import PineconeEmbeddingRetriever
from haystack_integrations.document_stores.pinecone import PineconeDocumentStore
from pinecone import Pinecone


def embedding(seed: int) -> list[float]:
    r = random.Random(seed)
    return [r.uniform(-1, 1) for _ in range(16)]


name = f"hs-{uuid.uuid4().hex[:8]}"
store = PineconeDocumentStore(index=name, namespace="ns", dimension=16, metric="cosine",
                              spec={"serverless": {"cloud": "aws", "region": "us-east-1"}})
try:
    docs = [Document(id=f"h{i}", content=f"about {t}", meta={"topic": t, "n": i}, embedding=embedding(i))
            for i, t in enumerate(["cats", "dogs", "ships"])]
    assert store.write_documents(docs, policy=DuplicatePolicy.OVERWRITE) == 3
    assert store.count_documents() == 3
    retriever = PineconeEmbeddingRetriever(document_store=store, top_k=2)
    got = retriever.run(query_embedding=embedding(1))["documents"]
    assert got[0].id == "h1" and len(got) == 2, got
    got = retriever.run(query_embedding=embedding(1), filters={"field": "meta.topic", "operator": "==", "value": "ships"})
    assert [d.id for d in got["documents"]] == ["h2"], got
    found = store.filter_documents(filters={"field": "meta.n", "operator": ">=", "value": 1})
    assert sorted(d.id for d in found) == ["h1", "h2"], found
    store.delete_documents(["h0"])
    assert store.count_documents() == 2
finally:
    Pinecone().delete_index(name)
print("OK haystack")
