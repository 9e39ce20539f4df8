"""Builds real LangChain FAISS stores with save_local, and LangChain's own answers to queries.

Run by the `langchain` integration tests with the venv they create (requirements.txt here):
    python make_faiss_stores.py OUT_DIR
writes OUT_DIR/{l2,ip,l2_deleted,pydantic_v1}/ (index.faiss + index.pkl),
OUT_DIR/user_data/{alice,bob}/vector_store/faiss_index/ (the seed's layout), and
OUT_DIR/expected.json: per store, its documents and LangChain's top-k ids and scores for
fixed query vectors.
"""

import json
import pickle
import sys
import types
from pathlib import Path

import faiss
import langchain_community
import langchain_core
import numpy as np
from langchain_community.vectorstores import FAISS
from langchain_community.vectorstores.utils import DistanceStrategy
from langchain_core.embeddings import Embeddings

DIMS = 16
K = 5


class TableEmbeddings(Embeddings):
    """Vectors looked up by text: the stores hold exactly the vectors the test chose."""

    def __init__(self, table):
        self.table = table

    def embed_documents(self, texts):
        return [self.table[t] for t in texts]

    def embed_query(self, text):
        return self.table[text]


def metadata_for(i):
    kinds = [
        {"page": i, "source": f"doc-{i}.pdf"},
        {"nested": {"tags": ["a", "b", i], "score": i / 7, "ok": i % 2 == 0, "none": None}},
        {"unicode": "Grüße, 世界 🚀", "big": 2**40 + i, "neg": -i, "float": -0.5 * i},
        {},
        {"tuple": (1, "two", 3.0), "list_of_dicts": [{"x": i}, {"y": [None, True]}]},
    ]
    return kinds[i % len(kinds)]


def build(out, name, n, strategy, rng, ids=True):
    texts = [f"text {name} {i}" for i in range(n)]
    vectors = rng.normal(size=(n, DIMS)).astype(np.float32)
    if strategy == DistanceStrategy.MAX_INNER_PRODUCT:
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    table = {t: v.tolist() for t, v in zip(texts, vectors)}
    store = FAISS.from_texts(
        texts,
        TableEmbeddings(table),
        metadatas=[metadata_for(i) for i in range(n)],
        ids=[f"{name}-{i}" for i in range(n)] if ids else None,
        distance_strategy=strategy,
    )
    return store


def answers(store, rng, queries=8):
    out = []
    for _ in range(queries):
        q = rng.normal(size=DIMS).astype(np.float32).tolist()
        hits = store.similarity_search_with_score_by_vector(q, k=K)
        out.append({"vector": q, "ids": [d.id for d, _ in hits], "scores": [float(s) for _, s in hits]})
    return out


def documents(store):
    docs = []
    for row in range(store.index.ntotal):
        doc_id = store.index_to_docstore_id[row]
        doc = store.docstore.search(doc_id)
        docs.append({"id": doc_id, "text": doc.page_content, "metadata": json.loads(json.dumps(doc.metadata))})
    return docs


def save_pydantic_v1_style(out, name, rng):
    """The state older LangChain (pydantic v1) pickled: __dict__ without id, __fields_set__."""
    module = types.ModuleType("langchain.schema.document")
    sys.modules.setdefault("langchain", types.ModuleType("langchain"))
    sys.modules.setdefault("langchain.schema", types.ModuleType("langchain.schema"))
    sys.modules["langchain.schema.document"] = module

    class Document:
        def __init__(self, page_content, metadata):
            self.page_content = page_content
            self.metadata = metadata

        def __getstate__(self):
            # pydantic v1's BaseModel.__getstate__; protocol 2 pickles it with NEWOBJ + BUILD.
            return {"__dict__": {"page_content": self.page_content, "metadata": self.metadata},
                    "__fields_set__": {"page_content", "metadata"}}

        def __setstate__(self, state):
            self.__dict__.update(state["__dict__"])

    Document.__module__ = "langchain.schema.document"
    Document.__qualname__ = "Document"
    module.Document = Document
    store = build(out, name, 40, DistanceStrategy.EUCLIDEAN_DISTANCE, rng)
    queries = answers(store, rng)
    docstore = store.docstore
    for doc_id in list(docstore._dict):
        old = docstore._dict[doc_id]
        docstore._dict[doc_id] = Document(old.page_content, old.metadata)
    folder = out / name
    folder.mkdir(parents=True)
    faiss.write_index(store.index, str(folder / "index.faiss"))
    with open(folder / "index.pkl", "wb") as f:
        pickle.dump((docstore, store.index_to_docstore_id), f, protocol=2)
    # The documents as LangChain's current classes would show them.
    docs = [{"id": i, "text": d.page_content, "metadata": json.loads(json.dumps(d.metadata))}
            for i, d in ((store.index_to_docstore_id[r], docstore._dict[store.index_to_docstore_id[r]])
                         for r in range(store.index.ntotal))]
    return queries, docs


def main():
    out = Path(sys.argv[1])
    rng = np.random.default_rng(20261129)
    expected = {
        "versions": {
            "langchain_community": langchain_community.__version__,
            "langchain_core": langchain_core.__version__,
            "faiss": faiss.__version__,
        },
        "stores": {},
    }
    l2 = build(out, "l2", 300, DistanceStrategy.EUCLIDEAN_DISTANCE, rng)
    ip = build(out, "ip", 300, DistanceStrategy.MAX_INNER_PRODUCT, rng, ids=False)
    deleted = build(out, "l2_deleted", 120, DistanceStrategy.EUCLIDEAN_DISTANCE, rng)
    deleted.delete([f"l2_deleted-{i}" for i in range(0, 120, 3)])
    for name, store, metric in [("l2", l2, "l2"), ("ip", ip, "ip"), ("l2_deleted", deleted, "l2")]:
        store.save_local(str(out / name))
        expected["stores"][name] = {"metric": metric, "documents": documents(store), "queries": answers(store, rng)}
    v1_queries, v1_docs = save_pydantic_v1_style(out, "pydantic_v1", rng)
    expected["stores"]["pydantic_v1"] = {"metric": "l2", "documents": v1_docs, "queries": v1_queries}

    # The seed's layout: user_data/{user}/vector_store/faiss_index/, plus a docs.jsonl.
    for user, store in [("alice", l2), ("bob", deleted)]:
        folder = out / "user_data" / user
        store.save_local(str(folder / "vector_store" / "faiss_index"))
        (folder / "docs.jsonl").write_text('{"note": "raw uploads of the old app"}\n')
    (out / "user_data" / "carol").mkdir(parents=True)  # a user who never stored anything
    (out / "expected.json").write_text(json.dumps(expected))


if __name__ == "__main__":
    main()
