"""Opens a folder `tvs export-langchain` wrote with real LangChain and reports what it holds.

Run by the `langchain` integration tests with their venv:
    python load_export.py FOLDER l2|ip QUERIES_JSON K
prints JSON: the documents in index row order (id, text, metadata, the document's own id
field) and, for each query vector of QUERIES_JSON (a list of vectors),
`similarity_search_with_score_by_vector`'s ids and scores.
"""

import json
import sys

from langchain_community.vectorstores import FAISS
from langchain_community.vectorstores.utils import DistanceStrategy
from langchain_core.embeddings import Embeddings


class NoEmbeddings(Embeddings):
    """The searches here are by vector; embedding text would be a test failure."""

    def embed_documents(self, texts):
        raise AssertionError("no text should be embedded")

    def embed_query(self, text):
        raise AssertionError("no text should be embedded")


def main():
    folder, metric, queries_path, k = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    strategy = {"l2": DistanceStrategy.EUCLIDEAN_DISTANCE, "ip": DistanceStrategy.MAX_INNER_PRODUCT}[metric]
    store = FAISS.load_local(folder, NoEmbeddings(), allow_dangerous_deserialization=True, distance_strategy=strategy)
    documents = []
    for row in range(store.index.ntotal):
        doc_id = store.index_to_docstore_id[row]
        doc = store.docstore.search(doc_id)
        documents.append(
            {"id": doc_id, "doc_id": doc.id, "text": doc.page_content, "metadata": json.loads(json.dumps(doc.metadata))}
        )
    with open(queries_path) as f:
        queries = json.load(f)
    answers = []
    for q in queries:
        hits = store.similarity_search_with_score_by_vector(q, k=k)
        answers.append({"ids": [d.id for d, _ in hits], "scores": [float(s) for _, s in hits]})
    json.dump({"documents": documents, "answers": answers, "dims": store.index.d}, sys.stdout)


if __name__ == "__main__":
    main()
