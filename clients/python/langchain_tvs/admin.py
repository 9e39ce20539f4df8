"""The old app's factory in a few lines: an admin client, tenant tokens, `create_vector_store`.

The design tvs replaces gave an app `create_vector_store(tenant_manager=TenantManager(user))`:
the store came from the signed-in user's id. Here the app keeps two secrets, the admin key and
one signing secret (`TvsAdmin.create_signing_key()`), and `create_vector_store(user_id)`
creates the user's tenant on first use and returns a store that authenticates with short-lived
tenant tokens minted here, never with a per-user key the app would have to keep.

Tokens are HS256 JWTs (standard library only: hmac, hashlib) with the claims tvs reads:
`tenant`, `scope` (`read`, `write`, `plugins`, space-separated), `iat`, `exp`; the header's
`kid` names the signing key. They are sent as `tvs.{tenant}.{jwt}` so a proxy routing by tenant
(deploy/haproxy.cfg) routes them like keys.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import threading
import time
from typing import Any

import httpx
from langchain_core.embeddings import Embeddings

from langchain_tvs.vectorstores import TvsError, TvsVectorStore, _admin_key, _base_url, _raise_for

#: Tenant ids tvs accepts.
TENANT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
#: Seconds before expiry at which a store mints its next token.
REFRESH_MARGIN = 60


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _parse_secret(secret: str) -> tuple[str, bytes]:
    parts = secret.strip().split(".")
    if len(parts) != 3 or parts[0] != "tvs_sk":
        raise ValueError("a signing secret looks like tvs_sk.{kid}.{key} (from TvsAdmin.create_signing_key)")
    kid, key = parts[1], parts[2]
    return kid, base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))


def mint_token(secret: str, tenant: str, scope: str = "read write", ttl: int = 900) -> str:
    """A tenant token for `tenant`, valid `ttl` seconds, signed with a signing secret.

    `scope` is space-separated `read`, `write` and/or `plugins`. The result is what
    `Authorization: Bearer` takes, routing prefix included.
    """
    if not TENANT_ID.match(tenant):
        raise ValueError(f"{tenant!r} is not a tenant id (see tenant_id_for)")
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    kid, key = _parse_secret(secret)
    now = int(time.time())
    header = {"alg": "HS256", "typ": "JWT", "kid": kid}
    claims = {"tenant": tenant, "scope": scope, "iat": now, "exp": now + int(ttl)}
    signing_input = ".".join(
        _b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
    )
    signature = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"tvs.{tenant}.{signing_input}.{_b64url(signature)}"


def tenant_id_for(user_id: str) -> str:
    """The tenant of a user: the id itself when tvs accepts it, else `u-` and 40 hex digits of
    its SHA-256 (an email or a path-like id maps to the same tenant every time)."""
    if TENANT_ID.match(user_id):
        return user_id
    return "u-" + hashlib.sha256(user_id.encode()).hexdigest()[:40]


class TokenAuth(httpx.Auth):
    """Sets a fresh tenant token on each request, minting the next one shortly before expiry."""

    def __init__(self, secret: str, tenant: str, scope: str = "read write", ttl: int = 900) -> None:
        _parse_secret(secret)
        self._secret, self.tenant, self._scope, self._ttl = secret, tenant, scope, ttl
        self._lock = threading.Lock()
        self._token = ""
        self._expires = 0.0

    def token(self) -> str:
        with self._lock:
            if time.time() >= self._expires - min(REFRESH_MARGIN, self._ttl / 2):
                self._token = mint_token(self._secret, self.tenant, self._scope, self._ttl)
                self._expires = time.time() + self._ttl
            return self._token

    def auth_flow(self, request: httpx.Request):
        request.headers["Authorization"] = f"Bearer {self.token()}"
        yield request


class TvsAdmin:
    """tvs's admin API: tenants, their keys, signing keys, the pool.

    Args:
        url: tvs's base URL (default `TVS_URL`, else http://127.0.0.1:8080).
        admin_key: the admin key (default `TVS_ADMIN_KEY`).
    """

    def __init__(self, url: str | None = None, admin_key: str | None = None, *, timeout: float = 60.0) -> None:
        self.url = _base_url(url)
        key = _admin_key(admin_key)
        self._client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout)

    def create_tenant(self, tenant_id: str, *, exist_ok: bool = False, **shape: Any) -> str | None:
        """Creates a tenant (`dims`, `metric`, `embedding_model`, `scalar`, `max_documents` as
        the API takes them); returns its key, or None when it existed and `exist_ok`."""
        response = self._client.post("/v1/tenants", json={"id": tenant_id, **shape})
        if response.status_code == 409 and exist_ok:
            return None
        return _raise_for(response)["api_key"]

    def list_tenants(self) -> list[str]:
        """Every tenant id, following the server's pages."""
        ids: list[str] = []
        after: str | None = None
        while True:
            params = {"after": after} if after else {}
            page = _raise_for(self._client.get("/v1/tenants", params=params))
            ids.extend(t["id"] if isinstance(t, dict) else t for t in page["tenants"])
            after = page.get("next_after")
            if not after:
                return ids

    def delete_tenant(self, tenant_id: str) -> None:
        _raise_for(self._client.delete(f"/v1/tenants/{tenant_id}"))

    def tenant(self, tenant_id: str) -> dict[str, Any]:
        """The tenant's limits and its usage against them (`usage`: documents, stored_bytes, …)."""
        return _raise_for(self._client.get(f"/v1/tenants/{tenant_id}"))

    def set_limits(self, tenant_id: str, **limits: Any) -> dict[str, Any]:
        """Changes limits (`requests_per_second`, `ingest_bytes_per_second`, `max_documents`,
        `max_bytes`; None removes one); returns the tenant as `tenant` shows it."""
        return _raise_for(self._client.patch(f"/v1/tenants/{tenant_id}", json=limits))

    def issue_key(self, tenant_id: str) -> str:
        """A new key for the tenant; its previous key stops working."""
        return _raise_for(self._client.post(f"/v1/tenants/{tenant_id}/keys"))["api_key"]

    def pool_stats(self) -> dict[str, Any]:
        return _raise_for(self._client.get("/v1/admin/pool"))

    def create_signing_key(self) -> dict[str, Any]:
        """A new signing key: `{"id", "created_at", "secret"}`; the secret is shown only here."""
        return _raise_for(self._client.post("/v1/admin/signing-keys"))

    def list_signing_keys(self) -> list[dict[str, Any]]:
        return _raise_for(self._client.get("/v1/admin/signing-keys"))["signing_keys"]

    def revoke_signing_key(self, key_id: str) -> dict[str, Any]:
        """Tokens signed with the key are refused from now on."""
        return _raise_for(self._client.delete(f"/v1/admin/signing-keys/{key_id}"))


class AsyncTvsAdmin:
    """`TvsAdmin` for asyncio; a client per call (an AsyncClient is bound to its event loop)."""

    def __init__(self, url: str | None = None, admin_key: str | None = None, *, timeout: float = 60.0) -> None:
        self.url = _base_url(url)
        key = _admin_key(admin_key)
        self._headers = {"Authorization": f"Bearer {key}"}
        self._timeout = timeout

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.url, headers=self._headers, timeout=self._timeout) as client:
            return await client.request(method, path, **kwargs)

    async def create_tenant(self, tenant_id: str, *, exist_ok: bool = False, **shape: Any) -> str | None:
        response = await self._call("POST", "/v1/tenants", json={"id": tenant_id, **shape})
        if response.status_code == 409 and exist_ok:
            return None
        return _raise_for(response)["api_key"]

    async def list_tenants(self) -> list[str]:
        ids: list[str] = []
        after: str | None = None
        while True:
            params = {"after": after} if after else {}
            page = _raise_for(await self._call("GET", "/v1/tenants", params=params))
            ids.extend(t["id"] if isinstance(t, dict) else t for t in page["tenants"])
            after = page.get("next_after")
            if not after:
                return ids

    async def delete_tenant(self, tenant_id: str) -> None:
        _raise_for(await self._call("DELETE", f"/v1/tenants/{tenant_id}"))

    async def tenant(self, tenant_id: str) -> dict[str, Any]:
        return _raise_for(await self._call("GET", f"/v1/tenants/{tenant_id}"))

    async def set_limits(self, tenant_id: str, **limits: Any) -> dict[str, Any]:
        return _raise_for(await self._call("PATCH", f"/v1/tenants/{tenant_id}", json=limits))

    async def issue_key(self, tenant_id: str) -> str:
        return _raise_for(await self._call("POST", f"/v1/tenants/{tenant_id}/keys"))["api_key"]

    async def pool_stats(self) -> dict[str, Any]:
        return _raise_for(await self._call("GET", "/v1/admin/pool"))

    async def create_signing_key(self) -> dict[str, Any]:
        return _raise_for(await self._call("POST", "/v1/admin/signing-keys"))

    async def list_signing_keys(self) -> list[dict[str, Any]]:
        return _raise_for(await self._call("GET", "/v1/admin/signing-keys"))["signing_keys"]

    async def revoke_signing_key(self, key_id: str) -> dict[str, Any]:
        return _raise_for(await self._call("DELETE", f"/v1/admin/signing-keys/{key_id}"))


def _settings(url: str | None, admin_key: str | None, signing_secret: str | None) -> tuple[str, str, str]:
    secret = signing_secret or os.environ.get("TVS_SIGNING_SECRET")
    if not secret:
        raise ValueError("create_vector_store needs a signing secret: pass signing_secret= or set TVS_SIGNING_SECRET")
    return _base_url(url), _admin_key(admin_key), secret


def create_vector_store(
    user_id: str,
    *,
    url: str | None = None,
    admin_key: str | None = None,
    signing_secret: str | None = None,
    embedding: Embeddings | None = None,
    scope: str = "read write",
    ttl: int = 900,
    **shape: Any,
) -> TvsVectorStore:
    """The store of `user_id`, as the old app's `create_vector_store(TenantManager(user))`.

    Creates the user's tenant on first use (`shape`: `dims`, `metric`, `embedding_model`, … as
    `TvsAdmin.create_tenant` takes them; ignored once it exists). Safe to call from many workers
    at once: the server creates a tenant once and answers 409 to the others, which is success
    here. The store authenticates with tokens for that tenant only, minted from
    `signing_secret` and renewed before they expire.
    """
    url, admin_key, secret = _settings(url, admin_key, signing_secret)
    tenant = tenant_id_for(user_id)
    TvsAdmin(url, admin_key).create_tenant(tenant, exist_ok=True, **shape)
    return TvsVectorStore(url=url, embedding=embedding, auth=TokenAuth(secret, tenant, scope, ttl))


async def acreate_vector_store(
    user_id: str,
    *,
    url: str | None = None,
    admin_key: str | None = None,
    signing_secret: str | None = None,
    embedding: Embeddings | None = None,
    scope: str = "read write",
    ttl: int = 900,
    **shape: Any,
) -> TvsVectorStore:
    """`create_vector_store` for asyncio."""
    url, admin_key, secret = _settings(url, admin_key, signing_secret)
    tenant = tenant_id_for(user_id)
    await AsyncTvsAdmin(url, admin_key).create_tenant(tenant, exist_ok=True, **shape)
    return TvsVectorStore(url=url, embedding=embedding, auth=TokenAuth(secret, tenant, scope, ttl))


__all__ = [
    "AsyncTvsAdmin",
    "TokenAuth",
    "TvsAdmin",
    "TvsError",
    "acreate_vector_store",
    "create_vector_store",
    "mint_token",
    "tenant_id_for",
]
