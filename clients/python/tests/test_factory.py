"""The old app's factory against a real tvs server: `create_vector_store(user_id)` with only the
admin key and one signing secret, tokens scoped and renewed, many workers creating one tenant
at once, the admin client, and the async twins."""

import asyncio
import threading
import time

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding

from langchain_tvs import (
    AsyncTvsAdmin,
    TvsAdmin,
    TvsError,
    TvsVectorStore,
    acreate_vector_store,
    create_vector_store,
    mint_token,
    tenant_id_for,
)
from conftest import ADMIN

SHAPE = {"dims": 16, "metric": "l2", "embedding_model": "none"}
EMBED = DeterministicFakeEmbedding(size=16)


@pytest.fixture(scope="module")
def secret(server):
    return TvsAdmin(server.url, ADMIN).create_signing_key()["secret"]


def store_for(server, secret, user, **kwargs):
    return create_vector_store(
        user, url=server.url, admin_key=ADMIN, signing_secret=secret, embedding=EMBED, **SHAPE, **kwargs
    )


def test_each_user_gets_a_store_of_their_own_from_two_secrets(server, secret):
    alice = store_for(server, secret, "alice@example.com")
    bob = store_for(server, secret, "bob")
    alice.add_texts(["alice's note on refunds"], ids=["a1"])
    bob.add_texts(["bob's note on refunds"], ids=["b1"])
    assert [d.id for d in alice.similarity_search("refunds", k=5)] == ["a1"]
    assert [d.id for d in bob.similarity_search("refunds", k=5)] == ["b1"]
    # The same user later (another request, another worker): the same tenant, the same data.
    again = store_for(server, secret, "alice@example.com")
    assert [d.id for d in again.get_by_ids(["a1"])] == ["a1"]
    tenants = TvsAdmin(server.url, ADMIN).list_tenants()
    assert tenant_id_for("alice@example.com") in tenants and "bob" in tenants
    assert tenant_id_for("alice@example.com").startswith("u-"), "an email is not a tenant id as it is"


def test_many_workers_creating_one_users_store_at_once_all_succeed(server, secret):
    stores, errors = [], []

    def worker():
        try:
            stores.append(store_for(server, secret, "carol"))
        except Exception as e:  # noqa: BLE001 - collected for the assertion below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(stores) == 8
    for i, store in enumerate(stores):
        store.add_texts([f"note {i}"], ids=[f"n{i}"])
    assert len(stores[0].get_by_ids([f"n{i}" for i in range(8)])) == 8, "one tenant behind all of them"


def test_a_read_token_cannot_write_and_tokens_renew_before_they_expire(server, secret):
    writer = store_for(server, secret, "dave")
    writer.add_texts(["kept"], ids=["k"])
    reader = store_for(server, secret, "dave", scope="read")
    assert [d.id for d in reader.similarity_search("kept", k=1)] == ["k"]
    with pytest.raises(TvsError) as refused:
        reader.add_texts(["not kept"], ids=["x"])
    assert (refused.value.status, refused.value.code) == (403, "insufficient_scope")
    assert writer.get_by_ids(["x"]) == []
    # A 2-second token: the store mints the next one itself.
    short = store_for(server, secret, "dave", ttl=2)
    first = short._auth.token()
    time.sleep(2.5)
    assert [d.id for d in short.similarity_search("kept", k=1)] == ["k"]
    assert short._auth.token() != first


def test_tokens_minted_by_hand_and_revoked_signing_keys(server):
    admin = TvsAdmin(server.url, ADMIN)
    created = admin.create_signing_key()
    admin.create_tenant("erin", **SHAPE)
    token = mint_token(created["secret"], "erin", "read write", ttl=60)
    assert token.startswith("tvs.erin.")
    store = TvsVectorStore(url=server.url, api_key=token, embedding=EMBED)
    store.add_texts(["hello"], ids=["h"])
    assert [k["id"] for k in admin.list_signing_keys()].count(created["id"]) == 1
    admin.revoke_signing_key(created["id"])
    with pytest.raises(TvsError) as refused:
        store.similarity_search("hello", k=1)
    assert refused.value.status == 401 and "revoked" in refused.value.message
    with pytest.raises(ValueError):
        mint_token("not-a-secret", "erin")
    assert admin.issue_key("erin").startswith("tvs.erin.")
    stats = admin.pool_stats()
    assert stats["size"] >= 1 and stats["loads"] >= 1, stats
    admin.delete_tenant("erin")
    assert "erin" not in admin.list_tenants()


def test_the_admin_sets_quotas_and_the_app_sees_them_refuse_with_nothing_written(server, secret):
    store = store_for(server, secret, "quota-user")
    store.add_texts(["one", "two"], ids=["q1", "q2"])
    admin = TvsAdmin(server.url, ADMIN)
    tenant = tenant_id_for("quota-user")
    used = admin.tenant(tenant)["usage"]["stored_bytes"]
    view = admin.set_limits(tenant, max_documents=3, max_bytes=used)
    assert (view["max_documents"], view["max_bytes"]) == (3, used)
    with pytest.raises(TvsError) as refused:
        store.add_texts(["three"], ids=["q3"])
    assert refused.value.status == 413 and "stored bytes" in str(refused.value)
    assert store.get_by_ids(["q3"]) == []
    view = admin.set_limits(tenant, max_bytes=None)
    assert view["max_bytes"] is None
    store.add_texts(["three"], ids=["q3"])
    with pytest.raises(TvsError) as refused:
        store.add_texts(["four"], ids=["q4"])
    assert refused.value.status == 413 and "3 documents" in str(refused.value)
    assert admin.tenant(tenant)["usage"]["documents"] == 3


def test_the_async_factory(server, secret):
    async def main():
        store = await acreate_vector_store(
            "frank", url=server.url, admin_key=ADMIN, signing_secret=secret, embedding=EMBED, **SHAPE
        )
        await store.aadd_texts(["async note"], ids=["an"])
        admin = AsyncTvsAdmin(server.url, ADMIN)
        assert "frank" in await admin.list_tenants()
        await admin.set_limits("frank", max_documents=1)
        assert (await admin.tenant("frank"))["max_documents"] == 1
        return [d.id for d in await store.asimilarity_search("async note", k=1)]

    assert asyncio.run(main()) == ["an"]


def test_the_example_app_runs_with_only_an_admin_key(server, monkeypatch):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[3] / "examples" / "multi_user_rag" / "app.py"
    spec = importlib.util.spec_from_file_location("multi_user_rag", path)
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    monkeypatch.setenv("TVS_URL", server.url)
    monkeypatch.setenv("TVS_ADMIN_KEY", ADMIN)
    monkeypatch.delenv("TVS_SIGNING_SECRET", raising=False)
    answers = app.main()
    assert answers["ana@example.com"][0] == "My dentist appointment is on Tuesday at 9."
    assert answers["ben@example.com"][0] == "Ben's flight to Lisbon leaves on Friday."
    assert not set(answers["ana@example.com"]) & set(answers["ben@example.com"]), "each user sees their own notes"
