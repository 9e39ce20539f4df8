// TvsAdmin against a real tvs serve: tenants, their limits and keys, signing keys, the pool.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { TvsAdmin, TvsClient, TvsError } from "../dist/index.js";
import { startServer } from "./helpers.mjs";

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

test("an admin creates, lists, shows, limits and deletes tenants", async () => {
  const { admin } = server;
  const created = await admin.createTenant({ id: "acme", dims: 4, metric: "l2", scalar: "f32", embeddingModel: "none", maxDocuments: 10 });
  assert.equal(created.id, "acme");
  assert.match(created.apiKey, /^tvs\.acme\./);
  await admin.createTenant({ id: "beta", dims: 4, embeddingModel: "none", maxBytes: 1_000_000 });
  await admin.createTenant({ id: "gamma" });

  const page = await admin.listTenants({ limit: 2 });
  assert.deepEqual(page, { tenants: ["acme", "beta"], nextAfter: "beta" });
  assert.deepEqual(await admin.listTenants({ after: "beta" }), { tenants: ["gamma"], nextAfter: null });
  assert.deepEqual(await admin.listAllTenants(), ["acme", "beta", "gamma"]);

  const acme = await admin.getTenant("acme");
  assert.equal(acme.id, "acme");
  assert.equal(acme.maxDocuments, 10);
  assert.equal(acme.maxBytes, null);
  assert.deepEqual(acme.rateLimits, {});
  assert.equal(acme.usage.documents, 0);
  assert.equal(typeof acme.usage.storedBytes, "number");

  const limited = await admin.setLimits("acme", { requestsPerSecond: 50, ingestBytesPerSecond: 1e6, maxBytes: 5e6 });
  assert.deepEqual(limited.rateLimits, { requestsPerSecond: 50, ingestBytesPerSecond: 1e6 });
  assert.equal(limited.maxBytes, 5e6);
  assert.equal(limited.maxDocuments, 10, "a limit left out is kept");
  const cleared = await admin.setLimits("acme", { requestsPerSecond: null, maxDocuments: null });
  assert.deepEqual(cleared.rateLimits, { ingestBytesPerSecond: 1e6 }, "null removes a limit");
  assert.equal(cleared.maxDocuments, null);

  const client = new TvsClient({ baseUrl: server.url, apiKey: created.apiKey });
  const stats = await client.stats();
  assert.equal(stats.metric, "l2");
  assert.equal(stats.maxBytes, 5e6);
  assert.deepEqual(stats.rateLimits, { ingestBytesPerSecond: 1e6 });

  await admin.deleteTenant("gamma");
  assert.deepEqual(await admin.listAllTenants(), ["acme", "beta"]);
  await assert.rejects(admin.getTenant("gamma"), { name: "TvsError", status: 404, code: "not_found" });
  await assert.rejects(admin.deleteTenant("gamma"), { status: 404, code: "not_found" });
});

test("creating a tenant twice is a conflict, unless existOk", async () => {
  const { admin } = server;
  await admin.createTenant({ id: "twice", dims: 4, embeddingModel: "none" });
  const error = await admin.createTenant({ id: "twice" }).catch((e) => e);
  assert.ok(error instanceof TvsError);
  assert.equal(error.status, 409);
  assert.equal(error.code, "conflict");
  assert.equal(await admin.createTenant({ id: "twice" }, { existOk: true }), null);
  const fresh = await admin.createTenant({ id: "once", dims: 4, embeddingModel: "none" }, { existOk: true });
  assert.match(fresh.apiKey, /^tvs\.once\./);
});

test("bad tenant input is a typed 400", async () => {
  const { admin } = server;
  await assert.rejects(admin.createTenant({ id: "not a valid id!" }), { status: 400, code: "invalid_request" });
  await assert.rejects(admin.createTenant({ id: "zero", maxDocuments: 0 }), (e) => {
    assert.equal(e.status, 400);
    assert.match(e.message, /max_documents must be at least 1/);
    return true;
  });
  await assert.rejects(admin.createTenant({ id: "m", embeddingModel: "no-such-model" }), { status: 400 });
  await admin.createTenant({ id: "rated", dims: 4, embeddingModel: "none" });
  await assert.rejects(admin.setLimits("rated", { requestsPerSecond: -1 }), { status: 400, code: "invalid_request" });
  await assert.rejects(admin.setLimits("nobody", { maxDocuments: 5 }), { status: 404 });
});

test("rotating a key revokes the old one", async () => {
  const { admin } = server;
  const { apiKey: old } = await admin.createTenant({ id: "rotor", dims: 4, embeddingModel: "none" });
  const rotated = await admin.rotateKey("rotor");
  assert.equal(rotated.id, "rotor");
  assert.notEqual(rotated.apiKey, old);
  assert.equal((await new TvsClient({ baseUrl: server.url, apiKey: rotated.apiKey }).stats()).count, 0);
  await assert.rejects(new TvsClient({ baseUrl: server.url, apiKey: old }).stats(), { status: 401, code: "unauthorized" });
  await assert.rejects(admin.rotateKey("nobody"), { status: 404 });
});

test("signing keys are created, listed without secrets and revoked", async () => {
  const { admin } = server;
  const key = await admin.createSigningKey();
  assert.match(key.secret, new RegExp(`^tvs_sk\\.${key.id}\\.[A-Za-z0-9_-]+$`));
  assert.equal(typeof key.createdAt, "number");
  const listed = await admin.listSigningKeys();
  const mine = listed.find((k) => k.id === key.id);
  assert.deepEqual(mine, { id: key.id, createdAt: key.createdAt });
  assert.ok(!JSON.stringify(listed).includes(key.secret.split(".")[2]), "the list never shows a secret");
  const revoked = await admin.revokeSigningKey(key.id);
  assert.equal(revoked.id, key.id);
  assert.equal(typeof revoked.revokedAt, "number");
  assert.equal((await admin.listSigningKeys()).find((k) => k.id === key.id).revokedAt, revoked.revokedAt);
  await assert.rejects(admin.revokeSigningKey("0000000000000000"), { status: 404, code: "not_found" });
});

test("the pool's stats and cleanup, and the node", async () => {
  const { admin } = server;
  const stats = await admin.poolStats();
  for (const field of ["hits", "misses", "loads", "evictions", "expirations", "size", "capacity", "bytes", "hitRate"]) {
    assert.equal(typeof stats[field], "number", field);
  }
  const cleaned = await admin.cleanupPool();
  assert.equal(typeof cleaned.expired, "number");
  const node = await admin.nodeInfo();
  assert.equal(node.tenants, null, "no TVS_STORAGE: no tenants held as writer");
  assert.equal(typeof node.storage, "string");
});

test("a wrong admin key is refused", async () => {
  const wrong = new TvsAdmin({ baseUrl: server.url, adminKey: "not-the-admin-key" });
  // tvs answers a wrong admin key 403 forbidden (docs/api.md's errors table says 401 for a wrong key).
  await assert.rejects(wrong.listTenants(), { name: "TvsError", status: 403, code: "forbidden" });
  const tenantKey = await server.tenant("not-admin", { dims: 4, embeddingModel: "none" });
  await assert.rejects(new TvsAdmin({ baseUrl: server.url, adminKey: tenantKey }).poolStats(), { status: 403, code: "forbidden" });
});

test("constructors check their options", () => {
  assert.throws(() => new TvsAdmin({ adminKey: "k" }), TypeError);
  assert.throws(() => new TvsAdmin({ baseUrl: server.url }), TypeError);
  assert.throws(() => new TvsClient({ baseUrl: server.url, apiKey: "k", maxRetries: -1 }), TypeError);
  assert.throws(() => new TvsClient({ baseUrl: server.url, apiKey: "k", batchSize: 0 }), TypeError);
  assert.equal(new TvsAdmin({ baseUrl: `${server.url}///`, adminKey: "k" }).baseUrl, server.url);
});
