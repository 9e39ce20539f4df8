"""The official `openai` client and LangChain's `OpenAIEmbeddings`, unchanged and with their
defaults, against a real `tvs serve`: what a new user points at tvs first."""

import base64
import math
from array import array

import httpx
import openai
import pytest
import tiktoken
from langchain_openai import OpenAIEmbeddings

from conftest import ADMIN, create_tenant

MODEL = "all-MiniLM-L6-v2"
TEXTS = ["hello world", "How do I reset my password?"]


def f32(values) -> array:
    """Values rounded to f32, so vectors from JSON floats and from raw bytes compare exactly."""
    return array("f", values)


@pytest.fixture(scope="module")
def client(server, tenant_key):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=tenant_key)


@pytest.fixture(scope="module")
def float_vectors(client):
    response = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    return [f32(item.embedding) for item in response.data]


def test_the_default_call_is_answered_in_base64_and_decoded_by_the_client(client, float_vectors):
    raw = client.embeddings.with_raw_response.create(model=MODEL, input=TEXTS)
    # The client asked for base64 on its own and got strings back...
    assert b'"encoding_format":"base64"' in raw.http_request.content.replace(b" ", b"")
    assert all(isinstance(item["embedding"], str) for item in raw.http_response.json()["data"])
    # ...which it decoded into the same vectors as the float answer, bit for bit.
    response = raw.parse()
    assert response.model == MODEL
    assert [f32(item.embedding) for item in response.data] == float_vectors
    assert [item.index for item in response.data] == [0, 1]
    assert response.usage.prompt_tokens > 0
    for vector in float_vectors:
        assert len(vector) == 384
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, abs_tol=1e-5)


def test_explicit_base64_is_the_little_endian_f32_bytes_of_the_float_answer(client, float_vectors):
    response = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="base64")
    for item, vector in zip(response.data, float_vectors):
        decoded = array("f")
        decoded.frombytes(base64.b64decode(item.embedding))
        assert decoded == vector


def test_a_single_string_input_gives_one_embedding(client, float_vectors):
    response = client.embeddings.create(model=MODEL, input=TEXTS[0])
    assert len(response.data) == 1
    assert f32(response.data[0].embedding) == float_vectors[0]


@pytest.mark.parametrize(
    "spelling",
    ["all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2", "ALL-MINILM-L6-V2"],
)
def test_every_spelling_of_the_model_is_the_same_model(client, float_vectors, spelling):
    response = client.embeddings.create(model=spelling, input=TEXTS[0])
    assert response.model == MODEL
    assert f32(response.data[0].embedding) == float_vectors[0]


def test_dimensions_equal_to_the_models_and_a_user_field_are_accepted(client, float_vectors):
    response = client.embeddings.create(model=MODEL, input=TEXTS[0], dimensions=384, user="end-user-7")
    assert f32(response.data[0].embedding) == float_vectors[0]


def test_token_ids_are_read_as_cl100k_base_like_openai_does(client, float_vectors):
    encoding = tiktoken.get_encoding("cl100k_base")
    lists = client.embeddings.create(model=MODEL, input=[encoding.encode(text) for text in TEXTS])
    assert [f32(item.embedding) for item in lists.data] == float_vectors
    one = client.embeddings.create(model=MODEL, input=encoding.encode(TEXTS[1]))
    assert [f32(item.embedding) for item in one.data] == float_vectors[1:]


def assert_refused(call, *needles):
    with pytest.raises(openai.BadRequestError) as refused:
        call()
    assert refused.value.status_code == 400
    message = refused.value.body["message"]
    for needle in needles:
        assert needle in message, message


def test_what_tvs_cannot_serve_is_refused_with_a_message_that_says_why(client):
    assert_refused(
        lambda: client.embeddings.create(model="text-embedding-3-small", input="hi"),
        "embeds with all-MiniLM-L6-v2",
        "text-embedding-3-small",
    )
    assert_refused(
        lambda: client.embeddings.create(model=MODEL, input="hi", dimensions=256),
        "cannot shorten",
        "384",
    )
    assert_refused(
        lambda: client.embeddings.create(model=MODEL, input="hi", extra_body={"encoding_format": "int8"}),
        '"float" or "base64"',
    )
    assert_refused(lambda: client.embeddings.create(model=MODEL, input=[[100_000_000]]), "not a cl100k_base token id")
    assert_refused(lambda: client.embeddings.create(model=MODEL, input=[]), "input is empty")


def test_a_tenant_of_client_vectors_refuses_to_embed(server):
    key = create_tenant(server, "vectors-only", dims=8, embedding_model="none")
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=key)
    assert_refused(lambda: client.embeddings.create(model=MODEL, input="hi"), "no embedding model")


def test_tenants_store_one_name_for_every_spelling_and_refuse_unknown_models(server):
    key = create_tenant(server, "spelled", embedding_model="Sentence-Transformers/all-minilm-l6-v2")
    stats = httpx.get(f"{server}/v1/stats", headers={"Authorization": f"Bearer {key}"}).json()
    assert stats["embedding_model"] == MODEL
    unknown = httpx.post(
        f"{server}/v1/tenants",
        json={"id": "mpnet", "embedding_model": "all-mpnet-base-v2"},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert unknown.status_code == 400, unknown.text
    assert "unknown embedding model" in unknown.json()["error"]["message"]


def assert_close(vector, reference):
    assert len(vector) == len(reference)
    assert max(abs(a - b) for a, b in zip(vector, reference)) < 1e-6


def test_langchain_openai_embeddings_work_with_their_defaults(server, tenant_key, float_vectors):
    # Defaults: base64 from the openai client, and token ids (cl100k_base, in chunks of at most
    # 8191 tokens) because check_embedding_ctx_length is on; LangChain re-normalises the result.
    embeddings = OpenAIEmbeddings(model=MODEL, base_url=f"{server}/v1", api_key=tenant_key)
    for vector, reference in zip(embeddings.embed_documents(TEXTS), float_vectors):
        assert_close(vector, reference)
    assert_close(embeddings.embed_query(TEXTS[0]), float_vectors[0])


def test_langchain_openai_embeddings_without_the_context_length_check_send_texts(server, tenant_key, float_vectors):
    embeddings = OpenAIEmbeddings(
        model="all-minilm-l6-v2",
        base_url=f"{server}/v1",
        api_key=tenant_key,
        check_embedding_ctx_length=False,
    )
    assert [f32(v) for v in embeddings.embed_documents(TEXTS)] == float_vectors
    assert f32(embeddings.embed_query(TEXTS[1])) == float_vectors[1]
