"""`TvsVectorStore`: LangChain's `VectorStore` interface over tvs's HTTP API.

One store object is one tenant: the tenant comes from the API key, never from a parameter, as
on the server. Texts are embedded by the server with the tenant's model unless an `Embeddings`
object is given, in which case vectors are computed here and sent with the texts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any, Callable
from urllib.parse import quote

import httpx
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

#: Documents per upsert request (the server takes up to 10,000; smaller requests keep memory
#: flat and progress visible).
BATCH = 256


def _base_url(url: str | None) -> str:
    """tvs's base URL: `url`, else `TVS_URL`, else http://127.0.0.1:8080."""
    return (url or os.environ.get("TVS_URL") or "http://127.0.0.1:8080").rstrip("/")


def _admin_key(admin_key: str | None) -> str:
    """The admin key: `admin_key`, else `TVS_ADMIN_KEY`."""
    key = admin_key or os.environ.get("TVS_ADMIN_KEY")
    if not key:
        raise ValueError("the admin key is needed: pass admin_key= or set TVS_ADMIN_KEY")
    return key


class TvsError(RuntimeError):
    """An error answer from tvs: HTTP status, error code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"tvs answered {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def _raise_for(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.is_success:
        return body
    error = (body or {}).get("error", {}) if isinstance(body, dict) else {}
    raise TvsError(response.status_code, error.get("code", "error"), error.get("message", response.text))


def _hit_document(hit: dict[str, Any]) -> Document:
    return Document(id=hit["id"], page_content=hit.get("text", ""), metadata=hit.get("metadata") or {})


class TvsVectorStore(VectorStore):
    """A tvs tenant as a LangChain vector store.

    Args:
        url: tvs's base URL (default `TVS_URL`, else http://127.0.0.1:8080).
        api_key: the tenant's key or a tenant token (default `TVS_API_KEY`).
        embedding: embed on the client with this model instead of on the server.
        timeout: seconds per HTTP request.
        auth: an `httpx.Auth` that sets each request's credential instead of `api_key` (what
            `create_vector_store` passes: tokens minted afresh before they expire).
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        embedding: Embeddings | None = None,
        *,
        timeout: float = 60.0,
        auth: httpx.Auth | None = None,
    ) -> None:
        self.url = _base_url(url)
        self._headers: dict[str, str] = {}
        if auth is None:
            key = api_key or os.environ.get("TVS_API_KEY")
            if not key:
                raise ValueError("a tenant API key is needed: pass api_key= or set TVS_API_KEY")
            self._headers = {"Authorization": f"Bearer {key}"}
        self._auth = auth
        self._embedding = embedding
        self._timeout = timeout
        self._client = httpx.Client(base_url=self.url, headers=self._headers, auth=auth, timeout=timeout)
        self._metric: str | None = None

    def _aclient(self) -> httpx.AsyncClient:
        # A client per call: an AsyncClient is bound to the event loop that created it.
        return httpx.AsyncClient(base_url=self.url, headers=self._headers, auth=self._auth, timeout=self._timeout)

    @property
    def embeddings(self) -> Embeddings | None:
        return self._embedding

    # --- request bodies shared by the sync and async paths -------------------------------

    def _upsert_bodies(
        self,
        texts: Sequence[str],
        metadatas: list[dict[str, Any]] | None,
        ids: Sequence[str | None] | None,
        vectors: list[list[float]] | None,
    ) -> list[dict[str, Any]]:
        if metadatas is not None and len(metadatas) != len(texts):
            raise ValueError(f"{len(metadatas)} metadatas for {len(texts)} texts")
        if ids is not None and len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids for {len(texts)} texts")
        documents = []
        for i, text in enumerate(texts):
            doc: dict[str, Any] = {"text": text, "metadata": (metadatas[i] if metadatas else None) or {}}
            if ids is not None and ids[i] is not None:
                doc["id"] = ids[i]
            if vectors is not None:
                doc["vector"] = vectors[i]
            documents.append(doc)
        return [{"documents": documents[i : i + BATCH]} for i in range(0, len(documents), BATCH)]

    def _search_body(
        self,
        k: int,
        query: str | None = None,
        vector: list[float] | None = None,
        filter: dict[str, Any] | None = None,
        mmr: tuple[int, float] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"top_k": k}
        if vector is not None:
            body["vector"] = list(vector)
        else:
            body["query"] = query
        if filter:
            body["filter"] = filter
        if mmr is not None:
            body["mmr"] = {"fetch_k": mmr[0], "lambda_mult": mmr[1]}
        return body

    def _query_vector(self, query: str) -> list[float] | None:
        return self._embedding.embed_query(query) if self._embedding is not None else None

    async def _aquery_vector(self, query: str) -> list[float] | None:
        return await self._embedding.aembed_query(query) if self._embedding is not None else None

    # --- writes ----------------------------------------------------------------------------

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        texts = list(texts)
        vectors = self._embedding.embed_documents(texts) if self._embedding is not None else None
        stored: list[str] = []
        for body in self._upsert_bodies(texts, metadatas, ids, vectors):
            stored.extend(_raise_for(self._client.post("/v1/documents", json=body))["ids"])
        return stored

    async def aadd_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        texts = list(texts)
        vectors = await self._embedding.aembed_documents(texts) if self._embedding is not None else None
        stored: list[str] = []
        async with self._aclient() as client:
            for body in self._upsert_bodies(texts, metadatas, ids, vectors):
                stored.extend(_raise_for(await client.post("/v1/documents", json=body))["ids"])
        return stored

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Deletes by ids, or by `filter=` (a metadata filter). True when the call succeeded."""
        body = self._delete_body(ids, kwargs.get("filter"))
        _raise_for(self._client.post("/v1/documents/delete", json=body))
        return True

    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        body = self._delete_body(ids, kwargs.get("filter"))
        async with self._aclient() as client:
            _raise_for(await client.post("/v1/documents/delete", json=body))
        return True

    @staticmethod
    def _delete_body(ids: list[str] | None, filter: dict[str, Any] | None) -> dict[str, Any]:
        if ids is None and filter is None:
            raise ValueError("give ids or filter= to delete")
        body: dict[str, Any] = {}
        if ids is not None:
            body["ids"] = list(ids)
        if filter is not None:
            body["filter"] = filter
        return body

    # --- reads -----------------------------------------------------------------------------

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        found = []
        for id_ in ids:
            response = self._client.get(f"/v1/documents/{quote(id_, safe='')}")
            if response.status_code == 404:
                continue
            found.append(_hit_document(_raise_for(response)))
        return found

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        found = []
        async with self._aclient() as client:
            for id_ in ids:
                response = await client.get(f"/v1/documents/{quote(id_, safe='')}")
                if response.status_code == 404:
                    continue
                found.append(_hit_document(_raise_for(response)))
        return found

    def _hits(self, body: dict[str, Any]) -> list[tuple[Document, float]]:
        hits = _raise_for(self._client.post("/v1/search", json=body))["hits"]
        return [(_hit_document(h), float(h["score"])) for h in hits]

    async def _ahits(self, body: dict[str, Any]) -> list[tuple[Document, float]]:
        async with self._aclient() as client:
            hits = _raise_for(await client.post("/v1/search", json=body))["hits"]
        return [(_hit_document(h), float(h["score"])) for h in hits]

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        return self._hits(self._search_body(k, query, self._query_vector(query), filter))

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        return await self._ahits(self._search_body(k, query, await self._aquery_vector(query), filter))

    def similarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter)]

    async def asimilarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        return [doc for doc, _ in await self.asimilarity_search_with_score(query, k, filter)]

    def similarity_search_with_score_by_vector(
        self, embedding: list[float], k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        return self._hits(self._search_body(k, vector=embedding, filter=filter))

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score_by_vector(embedding, k, filter)]

    async def asimilarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        return [doc for doc, _ in await self._ahits(self._search_body(k, vector=embedding, filter=filter))]

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        body = self._search_body(k, query, self._query_vector(query), filter, (fetch_k, lambda_mult))
        return [doc for doc, _ in self._hits(body)]

    async def amax_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        body = self._search_body(k, query, await self._aquery_vector(query), filter, (fetch_k, lambda_mult))
        return [doc for doc, _ in await self._ahits(body)]

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        body = self._search_body(k, vector=embedding, filter=filter, mmr=(fetch_k, lambda_mult))
        return [doc for doc, _ in self._hits(body)]

    async def amax_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        body = self._search_body(k, vector=embedding, filter=filter, mmr=(fetch_k, lambda_mult))
        return [doc for doc, _ in await self._ahits(body)]

    # --- relevance scores ----------------------------------------------------------------

    def metric(self) -> str:
        """The tenant's metric (`cos`, `ip` or `l2`), asked once."""
        if self._metric is None:
            self._metric = _raise_for(self._client.get("/v1/stats"))["metric"]
        return self._metric

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        # Scores are LangChain FAISS's, so FAISS's mappings apply to l2 and ip; a cosine
        # similarity in [-1, 1] is mapped linearly onto [0, 1].
        metric = self.metric()
        if metric == "l2":
            return self._euclidean_relevance_score_fn
        if metric == "ip":
            return self._max_inner_product_relevance_score_fn
        return lambda similarity: (1.0 + similarity) / 2.0

    async def _asimilarity_search_with_relevance_scores(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        if self._metric is None:
            async with self._aclient() as client:
                self._metric = _raise_for(await client.get("/v1/stats"))["metric"]
        relevance = self._select_relevance_score_fn()
        hits = await self.asimilarity_search_with_score(query, k, **kwargs)
        return [(doc, relevance(score)) for doc, score in hits]

    # --- construction ----------------------------------------------------------------------

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings | None = None,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        url: str | None = None,
        api_key: str | None = None,
        **kwargs: Any,
    ) -> TvsVectorStore:
        """Adds texts to the tenant of `api_key` and returns its store. Pass `embedding=None`
        to let the server embed."""
        store = cls(url=url, api_key=api_key, embedding=embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    @classmethod
    async def afrom_texts(
        cls,
        texts: list[str],
        embedding: Embeddings | None = None,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        url: str | None = None,
        api_key: str | None = None,
        **kwargs: Any,
    ) -> TvsVectorStore:
        store = cls(url=url, api_key=api_key, embedding=embedding, **kwargs)
        await store.aadd_texts(texts, metadatas, ids=ids)
        return store
