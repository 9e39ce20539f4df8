"""TvsVectorStore against a real tvs server: LangChain's VectorStore contract, server-side and
client-side embeddings, filters, MMR, relevance scores, async twins and a retriever in a chain."""

import asyncio
import itertools

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough

from langchain_tvs import TvsError, TvsVectorStore

FAQ = [
    ("password", "What are the steps to recover my account if I forgot my login credentials?", {"topic": "account", "page": 1}),
    ("oven", "I reset the oven timer and taped the wifi password to the fridge.", {"topic": "home", "page": 2}),
    ("rates", "The central bank increased the cost of borrowing.", {"topic": "finance", "page": 3}),
    ("river", "We sat on the river bank at a high rate of speed.", {"topic": "nature", "page": 4}),
    ("refund", "Refunds for cancelled orders arrive within five working days.", {"topic": "account", "page": 5}),
]

_names = itertools.count()


def fresh(server, **shape):
    """A store on a new tenant."""
    key = server.tenant(f"t{next(_names)}", **shape)
    return TvsVectorStore(url=server.url, api_key=key)


def test_server_side_embeddings_find_the_paraphrase_and_honour_filters(server):
    store = fresh(server)
    ids = store.add_texts([t for _, t, _ in FAQ], [m for _, _, m in FAQ], ids=[i for i, _, _ in FAQ])
    assert ids == [i for i, _, _ in FAQ]
    assert store.similarity_search("How do I reset my password?", k=1)[0].id == "password"
    hits = store.similarity_search_with_score("The bank raised interest rates", k=2)
    assert hits[0][0].id == "rates"
    assert hits[0][1] > hits[1][1], "cosine similarity: higher is closer"
    filtered = store.similarity_search("How do I reset my password?", k=5, filter={"topic": "account", "page": {"$gt": 1}})
    assert [d.id for d in filtered] == ["refund"]
    assert filtered[0].metadata == {"topic": "account", "page": 5}


def test_documents_round_trip_by_id_and_delete_by_id_or_filter(server):
    store = fresh(server)
    store.add_documents([Document(id=i, page_content=t, metadata=m) for i, t, m in FAQ])
    got = store.get_by_ids(["oven", "missing", "rates"])
    assert [(d.id, d.page_content) for d in got] == [("oven", FAQ[1][1]), ("rates", FAQ[2][1])]
    assert store.delete(["oven"]) is True
    assert store.get_by_ids(["oven"]) == []
    store.delete(filter={"topic": "account"})
    left = store.similarity_search("anything", k=10)
    assert sorted(d.id for d in left) == ["rates", "river"]
    with pytest.raises(ValueError):
        store.delete()


def test_client_side_embeddings_search_by_vector_and_mmr(server):
    embedding = DeterministicFakeEmbedding(size=16)
    key = server.tenant(f"t{next(_names)}", dims=16, metric="l2", embedding_model="none")
    store = TvsVectorStore.from_texts(
        [t for _, t, _ in FAQ], embedding, [m for _, _, m in FAQ], ids=[i for i, _, _ in FAQ], url=server.url, api_key=key
    )
    # The fake embedding is a hash: the exact text is its own nearest neighbour at distance 0.
    doc, score = store.similarity_search_with_score(FAQ[2][1], k=1)[0]
    assert doc.id == "rates" and score == pytest.approx(0.0, abs=1e-4)
    by_vector = store.similarity_search_by_vector(embedding.embed_query(FAQ[3][1]), k=1)
    assert by_vector[0].id == "river"
    diverse = store.max_marginal_relevance_search(FAQ[0][1], k=3, fetch_k=5, lambda_mult=0.1)
    assert len(diverse) == 3 and diverse[0].id == "password"
    assert len({d.id for d in diverse}) == 3


def test_relevance_scores_and_the_three_retriever_kinds(server):
    store = fresh(server)
    store.add_texts([t for _, t, _ in FAQ], [m for _, _, m in FAQ], ids=[i for i, _, _ in FAQ])
    scored = store.similarity_search_with_relevance_scores("How do I reset my password?", k=5)
    assert scored[0][0].id == "password"
    assert all(0.0 <= s <= 1.0 for _, s in scored)
    assert [s for _, s in scored] == sorted((s for _, s in scored), reverse=True)

    question = "How do I reset my password?"
    assert store.as_retriever(search_kwargs={"k": 1}).invoke(question)[0].id == "password"
    mmr = store.as_retriever(search_type="mmr", search_kwargs={"k": 2, "fetch_k": 5}).invoke(question)
    assert mmr[0].id == "password" and len(mmr) == 2
    threshold = scored[1][1] + 1e-6
    strict = store.as_retriever(
        search_type="similarity_score_threshold", search_kwargs={"k": 5, "score_threshold": threshold}
    ).invoke(question)
    assert [d.id for d in strict] == ["password"]


def test_a_retriever_feeds_a_small_chain(server):
    store = fresh(server)
    store.add_texts([t for _, t, _ in FAQ], [m for _, _, m in FAQ], ids=[i for i, _, _ in FAQ])
    prompt = ChatPromptTemplate.from_template("Answer from the context.\nContext: {context}\nQuestion: {question}")
    chain = (
        {"context": store.as_retriever(search_kwargs={"k": 1}) | RunnableLambda(lambda docs: docs[0].page_content),
         "question": RunnablePassthrough()}
        | prompt
        | RunnableLambda(lambda value: value.to_string())
    )
    text = chain.invoke("Where is my money after I cancel an order?")
    assert "Refunds for cancelled orders" in text


def test_async_twins_talk_to_the_server(server):
    async def scenario():
        key = server.tenant(f"t{next(_names)}")
        store = await TvsVectorStore.afrom_texts(
            [t for _, t, _ in FAQ], None, [m for _, _, m in FAQ], ids=[i for i, _, _ in FAQ], url=server.url, api_key=key
        )
        assert (await store.asimilarity_search("How do I reset my password?", k=1))[0].id == "password"
        assert (await store.asimilarity_search_with_score("bank interest", k=1))[0][0].id == "rates"
        mmr = await store.amax_marginal_relevance_search("account help", k=2, fetch_k=5)
        assert len(mmr) == 2
        relevance = await store.asimilarity_search_with_relevance_scores("How do I reset my password?", k=1)
        assert relevance[0][0].id == "password"
        await store.adelete(["password"])
        assert await store.aget_by_ids(["password", "rates"]) == [Document(id="rates", page_content=FAQ[2][1], metadata=FAQ[2][2])]
        vec = (await store.aget_by_ids(["river"]))[0]
        assert vec.metadata == {"topic": "nature", "page": 4}

    asyncio.run(scenario())


def test_errors_from_the_server_are_raised_with_their_reason(server):
    key = server.tenant(f"t{next(_names)}", dims=4, embedding_model="none")
    store = TvsVectorStore(url=server.url, api_key=key)
    with pytest.raises(TvsError) as text_without_model:
        store.add_texts(["no vector and no model"])
    assert text_without_model.value.status == 400
    with pytest.raises(TvsError) as wrong_dims:
        store.similarity_search_by_vector([1.0, 2.0], k=1)
    assert "dimension" in wrong_dims.value.message
    with pytest.raises(TvsError) as bad_key:
        TvsVectorStore(url=server.url, api_key="tvs.nobody.secret").similarity_search("x")
    assert bad_key.value.status == 401
