// Tenant tokens: minted here as the Python client mints them, accepted and refused by a real
// tvs serve as docs/api.md says.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { MAX_TOKEN_TTL_SECONDS, TvsClient, TvsError, mintToken, parseSigningSecret, tenantIdFor, tokenSource } from "../dist/index.js";
import { startServer } from "./helpers.mjs";

let server;
let secret;
before(async () => {
  server = await startServer();
  secret = (await server.admin.createSigningKey()).secret;
  await server.tenant("alice", { dims: 4, embeddingModel: "none" });
  await server.tenant("bob", { dims: 4, embeddingModel: "none" });
});
after(async () => {
  await server?.stop();
});

const client = (apiKey, options = {}) => new TvsClient({ baseUrl: server.url, apiKey, ...options });
const doc = (id) => ({ id, text: id, vector: [1, 0, 0, 0] });
const decode = (part) => JSON.parse(Buffer.from(part, "base64url").toString("utf8"));

test("a token is byte for byte what the Python client's mint_token makes", async () => {
  // clients/python: mint_token("tvs_sk.7eb7...", "alice") with time.time() == 1700000000.
  const token = await mintToken({
    signingKey: "tvs_sk.7eb728e255e93b8e.VPS_JtDxHKdvDUf7Ikc-Yhj8S53v83RwaFyRlToAsAs",
    tenant: "alice",
    scope: "read write",
    ttlSeconds: 900,
    issuedAt: 1700000000,
  });
  assert.equal(
    token,
    "tvs.alice.eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6IjdlYjcyOGUyNTVlOTNiOGUifQ" +
      ".eyJ0ZW5hbnQiOiJhbGljZSIsInNjb3BlIjoicmVhZCB3cml0ZSIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjoxNzAwMDAwOTAwfQ" +
      ".ReEOMQsvWcM8XkkHt7FEtBL2DRvH3tGSW3eviHLLUj4",
  );
  const [, tenant, header, claims] = token.split(".");
  assert.equal(tenant, "alice");
  assert.deepEqual(decode(header), { alg: "HS256", typ: "JWT", kid: "7eb728e255e93b8e" });
  assert.deepEqual(decode(claims), { tenant: "alice", scope: "read write", iat: 1700000000, exp: 1700000900 });
});

test("tokens work wherever a key does, prefixed or bare", async () => {
  const token = await mintToken({ signingKey: secret, tenant: "alice", scope: "read write", ttlSeconds: 60 });
  assert.match(token, /^tvs\.alice\.[^.]+\.[^.]+\.[^.]+$/);
  const writer = client(token);
  assert.deepEqual((await writer.upsert([doc("a1")])).ids, ["a1"]);
  assert.equal((await writer.get("a1")).text, "a1");
  const bare = await mintToken({ signingKey: secret, tenant: "alice", scope: ["read"], routingPrefix: false });
  assert.equal(bare.split(".").length, 3);
  assert.equal((await client(bare).stats()).count, 1);
  // Default scope is read write, default lifetime 900 s.
  const defaults = await mintToken({ signingKey: secret, tenant: "alice" });
  const claims = decode(defaults.split(".")[3]);
  assert.equal(claims.scope, "read write");
  assert.equal(claims.exp - claims.iat, 900);
});

test("a read token is refused on writes with 403 insufficient_scope", async () => {
  const reader = client(await mintToken({ signingKey: secret, tenant: "alice", scope: "read" }));
  assert.equal(typeof (await reader.stats()).count, "number");
  await reader.search({ vector: [1, 0, 0, 0], topK: 1 });
  for (const write of [() => reader.upsert([doc("r1")]), () => reader.delete(["a1"]), () => reader.deleteWhere({ x: 1 })]) {
    const error = await write().catch((e) => e);
    assert.ok(error instanceof TvsError, String(error));
    assert.equal(error.status, 403);
    assert.equal(error.code, "insufficient_scope");
    assert.match(error.message, /write scope/);
  }
  // Plugins need the plugins scope; a write token has not.
  const writer = client(await mintToken({ signingKey: secret, tenant: "alice", scope: "read write" }));
  await assert.rejects(writer.uploadPlugin("p", new Uint8Array([0, 97, 115, 109])), { status: 403, code: "insufficient_scope" });
});

test("expired, badly signed, unknown-key and revoked tokens are refused with 401", async () => {
  const expired = await mintToken({ signingKey: secret, tenant: "alice", ttlSeconds: 60, issuedAt: Math.floor(Date.now() / 1000) - 3600 });
  await assert.rejects(client(expired).stats(), (e) => {
    assert.equal(e.status, 401);
    assert.equal(e.code, "unauthorized");
    assert.match(e.message, /expired/);
    return true;
  });

  const { kid } = parseSigningSecret(secret);
  const forged = await mintToken({ signingKey: `tvs_sk.${kid}.${Buffer.alloc(32, 7).toString("base64url")}`, tenant: "alice" });
  await assert.rejects(client(forged).stats(), (e) => e.status === 401 && /signature/.test(e.message));

  const unknown = await mintToken({ signingKey: `tvs_sk.00000000deadbeef.${Buffer.alloc(32, 1).toString("base64url")}`, tenant: "alice" });
  await assert.rejects(client(unknown).stats(), (e) => e.status === 401 && /signing key/.test(e.message));

  const tampered = (await mintToken({ signingKey: secret, tenant: "alice" })).replace("tvs.alice.", "tvs.bob.");
  await assert.rejects(client(tampered).stats(), (e) => e.status === 401 && /prefix/.test(e.message));

  const revocable = await server.admin.createSigningKey();
  const token = await mintToken({ signingKey: revocable.secret, tenant: "alice" });
  assert.equal(typeof (await client(token).stats()).count, "number");
  await server.admin.revokeSigningKey(revocable.id);
  await assert.rejects(client(token).stats(), (e) => e.status === 401 && /revoked/.test(e.message));
});

test("a token reaches only the tenant it names", async () => {
  await client(await mintToken({ signingKey: secret, tenant: "alice" })).upsert([doc("alice-only")]);
  const bobs = client(await mintToken({ signingKey: secret, tenant: "bob" }));
  assert.equal(await bobs.get("alice-only"), null);
  assert.deepEqual(await bobs.search({ vector: [1, 0, 0, 0], topK: 10 }), []);
  // A token for a tenant that does not exist opens nothing (tvs: 404 not_found), and get()
  // does not mistake that for a missing document.
  const nobody = client(await mintToken({ signingKey: secret, tenant: "nobody" }));
  await assert.rejects(nobody.stats(), { name: "TvsError", status: 404, code: "not_found" });
  await assert.rejects(nobody.get("x"), { status: 404, message: /tenant/ });
  await assert.rejects(nobody.upsert([doc("x")]), { status: 404 });
  assert.deepEqual(await server.admin.listAllTenants(), ["alice", "bob"], "nothing was created for it");
});

test("mintToken refuses what tvs would refuse", async () => {
  await assert.rejects(mintToken({ signingKey: secret, tenant: "not valid!" }), TypeError);
  await assert.rejects(mintToken({ signingKey: secret, tenant: "alice", ttlSeconds: 0 }), RangeError);
  await assert.rejects(mintToken({ signingKey: secret, tenant: "alice", ttlSeconds: MAX_TOKEN_TTL_SECONDS + 1 }), RangeError);
  await assert.rejects(mintToken({ signingKey: secret, tenant: "alice", scope: "read admin" }), TypeError);
  await assert.rejects(mintToken({ signingKey: secret, tenant: "alice", scope: "" }), TypeError);
  await assert.rejects(mintToken({ signingKey: "not-a-secret", tenant: "alice" }), TypeError);
  // Seven days exactly is the longest lifetime tvs accepts.
  const week = await mintToken({ signingKey: secret, tenant: "alice", ttlSeconds: MAX_TOKEN_TTL_SECONDS, scope: "read" });
  assert.equal(typeof (await client(week).stats()).count, "number");
});

test("tenantIdFor maps user ids as the Python client's tenant_id_for", async () => {
  assert.equal(await tenantIdFor("alice_1"), "alice_1");
  // hashlib.sha256(b"alice@example.com").hexdigest()[:40]
  assert.equal(await tenantIdFor("alice@example.com"), "u-ff8d9819fc0e12bf0d24892e45987e249a28dce8");
  assert.match(await tenantIdFor("x".repeat(65)), /^u-[0-9a-f]{40}$/);
});

test("tokenSource mints once and again shortly before expiry", async () => {
  const source = tokenSource({ signingKey: secret, tenant: "alice", scope: "read", ttlSeconds: 2 });
  const first = await source();
  assert.equal(await source(), first, "the same token while it is fresh");
  assert.equal((await client(source).stats()).count >= 0, true, "a TvsClient takes the source as its apiKey");
  await new Promise((r) => setTimeout(r, 1100)); // past ttl - min(60, ttl / 2)
  const second = await source();
  assert.notEqual(second, first);
  assert.equal(typeof (await client(second).stats()).count, "number");
});
