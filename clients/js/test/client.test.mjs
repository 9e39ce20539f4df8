// TvsClient against a real tvs serve: documents, search, stats, embeddings, isolation and
// typed errors for bad input.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { TvsClient, TvsError } from "../dist/index.js";
import { recordingFetch, startServer } from "./helpers.mjs";

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

const vectors = {
  north: [0, 1, 0, 0],
  east: [1, 0, 0, 0],
  northEast: [0.7, 0.7, 0, 0],
  up: [0, 0, 1, 0],
};

test("documents are upserted, read, searched and deleted", async () => {
  const client = await server.client("docs", { dims: 4, embeddingModel: "none" });
  const stored = await client.upsert([
    { id: "n", text: "north", metadata: { dir: "n", rank: 1 }, vector: vectors.north },
    { id: "e", text: "east", metadata: { dir: "e", rank: 2 }, vector: new Float32Array(vectors.east) },
    { id: "ne", text: "north east", metadata: { dir: "ne", rank: 3 }, vector: vectors.northEast },
    { text: "up, with an id made by the server", vector: vectors.up },
  ]);
  assert.equal(stored.ids.length, 4);
  assert.deepEqual(stored.ids.slice(0, 3), ["n", "e", "ne"]);
  assert.match(stored.ids[3], /^[0-9a-f-]{36}$/);
  assert.equal(stored.embedded, 0);

  assert.deepEqual(await client.get("ne"), { id: "ne", text: "north east", metadata: { dir: "ne", rank: 3 } });
  assert.equal(await client.get("missing"), null, "a missing document is null, not an error");

  const hits = await client.search({ vector: vectors.north, topK: 2 });
  assert.deepEqual(hits.map((h) => h.id), ["n", "ne"]);
  assert.deepEqual(Object.keys(hits[0]).sort(), ["distance", "id", "metadata", "score", "text"]);
  assert.ok(Math.abs(hits[0].score - 1) < 1e-5, "cosine similarity 1 for the same direction");
  assert.ok(Math.abs(hits[0].distance) < 1e-5);
  assert.deepEqual(hits[0].metadata, { dir: "n", rank: 1 });

  const filtered = await client.search({ vector: vectors.north, topK: 5, filter: { rank: { $gte: 2 } } });
  assert.deepEqual(filtered.map((h) => h.id), ["ne", "e"]);
  const either = await client.search({ vector: vectors.north, topK: 5, filter: { dir: ["e", "n"] } });
  assert.deepEqual(either.map((h) => h.id).sort(), ["e", "n"]);

  // MMR: after "n", the near-duplicate "ne" loses to the diverse "e" when diversity weighs.
  const diverse = await client.search({ vector: vectors.north, topK: 2, filter: { rank: { $gte: 1 } }, mmr: { fetchK: 10, lambdaMult: 0.1 } });
  assert.deepEqual(diverse.map((h) => h.id), ["n", "e"]);
  const relevant = await client.search({ vector: vectors.north, topK: 2, mmr: { fetchK: 10, lambdaMult: 1 } });
  assert.deepEqual(relevant.map((h) => h.id), ["n", "ne"]);

  const stats = await client.stats();
  assert.deepEqual(
    { count: stats.count, dims: stats.dims, metric: stats.metric, embeddingModel: stats.embeddingModel },
    { count: 4, dims: 4, metric: "cos", embeddingModel: "none" },
  );
  assert.equal(typeof stats.bytes, "number");

  assert.equal(await client.delete(["n", "not-there"]), 1);
  assert.equal(await client.delete("e"), 1);
  assert.equal(await client.deleteWhere({ dir: "ne" }), 1);
  assert.equal(await client.deleteWhere({ dir: "nothing" }), 0);
  assert.equal((await client.stats()).count, 1);
  assert.equal(await client.get("n"), null);
});

test("upserting replaces by id", async () => {
  const client = await server.client("replace", { dims: 4, embeddingModel: "none" });
  await client.upsert([{ id: "a", text: "first", metadata: { v: 1 }, vector: vectors.east }]);
  await client.upsert([{ id: "a", text: "second", metadata: { v: 2 }, vector: vectors.north }]);
  assert.deepEqual(await client.get("a"), { id: "a", text: "second", metadata: { v: 2 } });
  assert.equal((await client.stats()).count, 1);
  assert.deepEqual((await client.search({ vector: vectors.north, topK: 1 }))[0].id, "a");
});

test("big batches are split into requests of at most batchSize documents", async () => {
  const log = [];
  const client = await server.client("batches", { dims: 4, embeddingModel: "none" }, { batchSize: 3, fetch: recordingFetch(log) });
  const documents = Array.from({ length: 8 }, (_, i) => ({ id: `d${i}`, text: `doc ${i}`, metadata: { i }, vector: [1, i, 0, 0] }));
  const stored = await client.upsert(documents);
  assert.deepEqual(stored.ids, documents.map((d) => d.id));
  const upserts = log.filter((r) => r.url.endsWith("/v1/documents"));
  assert.deepEqual(upserts.map((r) => r.body.documents.length), [3, 3, 2]);
  assert.equal((await client.stats()).count, 8);

  log.length = 0;
  await client.upsert(documents, { batchSize: 5 });
  assert.deepEqual(log.map((r) => r.body.documents.length), [5, 3], "a call's batchSize wins");
  log.length = 0;
  assert.deepEqual(await client.upsert([]), { ids: [], embedded: 0 });
  assert.equal(log.length, 0, "nothing to send, no request");

  // The default: 1000 a request.
  const defaultLog = [];
  const plain = new TvsClient({ baseUrl: server.url, apiKey: await server.tenant("default-batch", { dims: 4, embeddingModel: "none" }), fetch: recordingFetch(defaultLog) });
  const many = Array.from({ length: 2500 }, (_, i) => ({ id: `m${i}`, vector: [1, i % 7, i % 3, 1] }));
  assert.equal((await plain.upsert(many)).ids.length, 2500);
  assert.deepEqual(defaultLog.map((r) => r.body.documents.length), [1000, 1000, 500]);
});

test("a tenant with the default model embeds texts, queries and chunks on the server", async () => {
  const client = await server.client("minilm");
  const stats = await client.stats();
  assert.equal(stats.embeddingModel, "all-MiniLM-L6-v2");
  assert.equal(stats.dims, 384);
  const stored = await client.upsert([
    { id: "cats", text: "Cats purr and chase mice.", metadata: { topic: "pets" } },
    { id: "stocks", text: "The stock market fell sharply on Tuesday.", metadata: { topic: "finance" } },
    { id: "pasta", text: "Boil the pasta in salted water for nine minutes.", metadata: { topic: "food" } },
  ]);
  assert.equal(stored.embedded, 3);
  const hits = await client.search({ query: "my kitten likes to hunt mice", topK: 1 });
  assert.equal(hits[0].id, "cats");
  const finance = await client.search({ query: "kitten", topK: 3, filter: { topic: "finance" } });
  assert.deepEqual(finance.map((h) => h.id), ["stocks"]);

  const vectors = await client.embeddings(["hello world", "another text"]);
  assert.equal(vectors.length, 2);
  assert.equal(vectors[0].length, 384);
  assert.ok(vectors.flat().every(Number.isFinite));
  assert.equal((await client.embeddings("just one")).length, 1);
  assert.equal((await client.embeddings(["hello world"], { model: "sentence-transformers/all-MiniLM-L6-v2", dimensions: 384 }))[0].length, 384);
  await assert.rejects(client.embeddings(["x"], { model: "text-embedding-3-small" }), { status: 400, code: "invalid_request" });
  // The same model, by vector: the query's own embedding finds the document it came from.
  const [pastaVector] = await client.embeddings(["Boil the pasta in salted water for nine minutes."]);
  assert.equal((await client.search({ vector: pastaVector, topK: 1 }))[0].id, "pasta");

  const long = "Tea is brewed from leaves. ".repeat(20);
  const chunked = await client.upsert([{ id: "tea", text: long, metadata: { topic: "drinks" } }], { chunk: { size: 100, overlap: 10 } });
  assert.ok(chunked.ids.length > 1, `chunks get ids of their own: ${chunked.ids}`);
  assert.equal(chunked.embedded, chunked.ids.length);
});

test("one tenant's key never sees another tenant's documents", async () => {
  const alice = await server.client("alice", { dims: 4, embeddingModel: "none" });
  const bob = await server.client("bob", { dims: 4, embeddingModel: "none" });
  await alice.upsert([{ id: "secret", text: "alice's secret", vector: vectors.north }]);
  await bob.upsert([{ id: "bobs", text: "bob's note", vector: vectors.north }]);
  assert.equal(await bob.get("secret"), null);
  assert.deepEqual((await bob.search({ vector: vectors.north, topK: 10 })).map((h) => h.id), ["bobs"]);
  assert.equal(await bob.delete(["secret"]), 0, "bob cannot delete alice's document");
  assert.equal(await bob.deleteWhere({}), 1, "an empty filter matches only bob's own");
  assert.equal((await alice.get("secret")).text, "alice's secret");
  assert.equal((await alice.stats()).count, 1);
});

test("bad input is a typed error", async () => {
  const client = await server.client("strict", { dims: 4, embeddingModel: "none" });
  const wrongDims = await client.upsert([{ id: "x", vector: [1, 2, 3] }]).catch((e) => e);
  assert.ok(wrongDims instanceof TvsError);
  assert.ok(wrongDims instanceof Error);
  assert.equal(wrongDims.name, "TvsError");
  assert.equal(wrongDims.status, 400);
  assert.equal(wrongDims.code, "invalid_request");
  assert.match(wrongDims.message, /vector has 3 dimensions, this store has 4/);
  assert.match(String(wrongDims), /^TvsError 400 invalid_request: /);

  await assert.rejects(client.search({ vector: [1, 2, 3], topK: 1 }), { status: 400, code: "invalid_request" });
  await assert.rejects(client.search({ vector: vectors.north, filter: { rank: { $bogus: 1 } } }), (e) => {
    assert.equal(e.status, 400);
    assert.equal(e.code, "invalid_request");
    assert.match(e.message, /invalid filter/);
    return true;
  });
  await assert.rejects(client.deleteWhere({ $and: "not a list" }), { status: 400, code: "invalid_request" });
  await assert.rejects(client.search({ vector: vectors.north, topK: 0 }), { status: 400, code: "invalid_request" });
  await assert.rejects(client.search({ query: "no model here" }), { status: 400, code: "invalid_request" });
  await assert.rejects(client.upsert([{ id: "t", text: "no vector and no model" }]), { status: 400, code: "invalid_request" });
  await assert.rejects(client.embeddings(["no model"]), { status: 400, code: "invalid_request" });
  // `mode` is not a field of today's server (no hybrid search yet): it is sent when given and refused.
  await assert.rejects(client.search({ vector: vectors.north, mode: "hybrid" }), (e) => {
    assert.equal(e.status, 400);
    assert.match(e.message, /unknown field `mode`/);
    return true;
  });
  // An unknown route: a base URL whose path tvs does not serve.
  const lost = new TvsClient({ baseUrl: `${server.url}/not-a-prefix`, apiKey: "whatever" });
  await assert.rejects(lost.stats(), { name: "TvsError", status: 404, code: "not_found", message: "no such route" });
  // No credential that tvs knows.
  await assert.rejects(new TvsClient({ baseUrl: server.url, apiKey: "tvs.strict.0000" }).stats(), { status: 401, code: "unauthorized" });
});

test("a server that is not there is a network_error", async () => {
  const { createServer } = await import("node:net");
  const probe = createServer();
  await new Promise((ready) => probe.listen(0, "127.0.0.1", ready));
  const { port } = probe.address();
  await new Promise((done) => probe.close(done));
  const client = new TvsClient({ baseUrl: `http://127.0.0.1:${port}`, apiKey: "k" });
  await assert.rejects(client.stats(), (e) => {
    assert.ok(e instanceof TvsError);
    assert.equal(e.status, 0);
    assert.equal(e.code, "network_error");
    assert.ok(e.cause, "the fetch error is kept as the cause");
    return true;
  });
});
