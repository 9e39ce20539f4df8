// tvs-client/langchain: the LangChain.js VectorStore over a real tvs serve, with embeddings made
// here (a deterministic fake, on a client-vector tenant) and with the tenant's own model
// (`embeddings: null`, on a tenant of the default all-MiniLM-L6-v2).

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Document } from "@langchain/core/documents";
import { Embeddings } from "@langchain/core/embeddings";
import { VectorStore } from "@langchain/core/vectorstores";

import { TvsClient } from "../dist/index.js";
import { TvsEmbeddings, TvsVectorStore } from "../dist/langchain.js";
import { recordingFetch, startServer } from "./helpers.mjs";

const DIMS = 16;

/** Deterministic embeddings: a bag of hashed words, normalised (no model, no network). */
class HashEmbeddings extends Embeddings {
  constructor() {
    super({});
  }
  vector(text) {
    const v = new Array(DIMS).fill(0);
    for (const word of text.toLowerCase().match(/[a-z]+/g) ?? []) {
      let h = 2166136261;
      for (const c of word) h = Math.imul(h ^ c.charCodeAt(0), 16777619) >>> 0;
      v[h % DIMS] += 1;
    }
    const norm = Math.hypot(...v) || 1;
    return v.map((x) => x / norm);
  }
  async embedDocuments(texts) {
    return texts.map((t) => this.vector(t));
  }
  async embedQuery(text) {
    return this.vector(text);
  }
}

const cosine = (a, b) => a.reduce((sum, x, i) => sum + x * b[i], 0) / (Math.hypot(...a) * Math.hypot(...b));

const notes = [
  new Document({ pageContent: "cats purr and chase mice", metadata: { topic: "pets", n: 1 } }),
  new Document({ pageContent: "cats purr and chase mice at night", metadata: { topic: "pets", n: 2 } }),
  new Document({ pageContent: "dogs bark at the mail carrier", metadata: { topic: "pets", n: 3 } }),
  new Document({ pageContent: "boil pasta in salted water", metadata: { topic: "food", n: 4 } }),
  new Document({ pageContent: "bake bread with sourdough starter", metadata: { topic: "food", n: 5 } }),
];

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

async function vectorStore(tenant, log = []) {
  const client = await server.client(tenant, { dims: DIMS, embeddingModel: "none" }, { fetch: recordingFetch(log) });
  return new TvsVectorStore(new HashEmbeddings(), { client });
}

test("the store is a LangChain VectorStore of type tvs", async () => {
  const store = await vectorStore("lc-type");
  assert.ok(store instanceof VectorStore);
  assert.equal(store._vectorstoreType(), "tvs");
  assert.equal(store.serverEmbeds, false);
  assert.deepEqual(store.lc_namespace, ["langchain", "vectorstores", "tvs"]);
  assert.ok(!JSON.stringify(store.toJSON()).includes("tvs.lc-type."), "the tenant key is not serialised");
  assert.throws(() => new TvsVectorStore(new HashEmbeddings(), {}), TypeError);
});

test("documents embedded here are added, searched with scores and filters, and deleted", async () => {
  const log = [];
  const store = await vectorStore("lc-vectors", log);
  const ids = await store.addDocuments(notes, { ids: notes.map((_, i) => `note-${i}`) });
  assert.deepEqual(ids, ["note-0", "note-1", "note-2", "note-3", "note-4"]);
  const upsert = log.find((r) => r.url.endsWith("/v1/documents"));
  assert.equal(upsert.body.documents[0].vector.length, DIMS, "vectors computed here are sent");
  assert.deepEqual(upsert.body.documents[0].metadata, { topic: "pets", n: 1 });

  const [top] = await store.similaritySearch("do cats chase mice", 1);
  assert.ok(top instanceof Document);
  assert.equal(top.id, "note-0");
  assert.equal(top.pageContent, "cats purr and chase mice");
  assert.deepEqual(top.metadata, { topic: "pets", n: 1 });

  const embeddings = new HashEmbeddings();
  const query = "bread and pasta";
  const scored = await store.similaritySearchWithScore(query, 3);
  assert.equal(scored.length, 3);
  for (const [doc, score] of scored) {
    const expected = cosine(embeddings.vector(query), embeddings.vector(doc.pageContent));
    assert.ok(Math.abs(score - expected) < 1e-3, `${doc.id}: score ${score} is the cosine similarity ${expected}`);
  }
  assert.ok(scored[0][1] >= scored[1][1] && scored[1][1] >= scored[2][1], "higher is closer for a cos tenant");

  const food = await store.similaritySearch("cats purr", 5, { topic: "food" });
  assert.deepEqual(food.map((d) => d.metadata.topic), ["food", "food"]);
  const byVector = await store.similaritySearchVectorWithScore(embeddings.vector("dogs bark"), 2, { n: { $gte: 3 } });
  assert.equal(byVector[0][0].id, "note-2");
  assert.ok(byVector.every(([d]) => d.metadata.n >= 3));

  await store.delete({ ids: ["note-0"] });
  assert.equal(await store.client.get("note-0"), null);
  await store.delete({ filter: { topic: "food" } });
  assert.equal((await store.client.stats()).count, 2);
  await assert.rejects(store.delete({}), TypeError);
});

test("MMR search is the server's, with LangChain's options", async () => {
  const log = [];
  const store = await vectorStore("lc-mmr", log);
  await store.addDocuments(notes.map((doc, i) => new Document({ ...doc, id: `d${i}` })));
  const relevant = await store.maxMarginalRelevanceSearch("cats purr chase mice", { k: 2, fetchK: 5, lambda: 1 });
  assert.deepEqual(relevant.map((d) => d.id).sort(), ["d0", "d1"], "lambda 1: the two near-duplicates");
  const diverse = await store.maxMarginalRelevanceSearch("cats purr chase mice", { k: 2, fetchK: 5, lambda: 0 });
  assert.equal(diverse.length, 2);
  assert.ok(!(diverse.map((d) => d.id).includes("d0") && diverse.map((d) => d.id).includes("d1")), "lambda 0: not both near-duplicates");
  const search = log.filter((r) => r.url.endsWith("/v1/search")).at(-1);
  assert.deepEqual(search.body.mmr, { fetch_k: 5, lambda_mult: 0 });
  assert.equal(search.body.top_k, 2);
  await store.maxMarginalRelevanceSearch("cats", { k: 3, filter: { topic: "food" } });
  const defaults = log.filter((r) => r.url.endsWith("/v1/search")).at(-1);
  assert.deepEqual(defaults.body.mmr, { fetch_k: 20, lambda_mult: 0.5 }, "LangChain's defaults");
  assert.deepEqual(defaults.body.filter, { topic: "food" });
});

test("addVectors takes vectors made elsewhere; document ids are kept", async () => {
  const store = await vectorStore("lc-add-vectors");
  const embeddings = new HashEmbeddings();
  const docs = [new Document({ pageContent: "alpha", metadata: {}, id: "own-id" }), new Document({ pageContent: "beta", metadata: { b: true } })];
  const ids = await store.addVectors(await embeddings.embedDocuments(["alpha", "beta"]), docs);
  assert.equal(ids[0], "own-id");
  assert.match(ids[1], /^[0-9a-f-]{36}$/, "the server makes an id for a document without one");
  await assert.rejects(store.addVectors([[1]], docs), TypeError);
  await assert.rejects(store.addDocuments(docs, { ids: ["only-one"] }), TypeError);
});

test("fromTexts, fromDocuments and asRetriever", async () => {
  const client = await server.client("lc-from", { dims: DIMS, embeddingModel: "none" });
  const store = await TvsVectorStore.fromTexts(
    ["the moon orbits the earth", "the earth orbits the sun", "pasta needs salted water"],
    [{ sky: true }, { sky: true }, { sky: false }],
    new HashEmbeddings(),
    { client, ids: ["moon", "earth", "pasta"] },
  );
  assert.ok(store instanceof TvsVectorStore);
  assert.deepEqual(await client.get("moon"), { id: "moon", text: "the moon orbits the earth", metadata: { sky: true } });

  const shared = await TvsVectorStore.fromTexts(["one text", "another text"], { source: "shared" }, new HashEmbeddings(), { client });
  const [hit] = await shared.similaritySearch("another text", 1, { source: "shared" });
  assert.deepEqual(hit.metadata, { source: "shared" }, "one metadata object applies to every text");

  const fromDocs = await TvsVectorStore.fromDocuments([new Document({ pageContent: "docs too", metadata: { d: 1 } })], new HashEmbeddings(), { client, ids: ["doc-1"] });
  assert.equal((await fromDocs.client.get("doc-1")).text, "docs too");

  const retriever = store.asRetriever(1);
  const found = await retriever.invoke("what orbits the sun");
  assert.equal(found.length, 1);
  assert.equal(found[0].id, "earth");
  const filtered = store.asRetriever({ k: 5, filter: { sky: false } });
  assert.deepEqual((await filtered.invoke("orbits")).map((d) => d.id), ["pasta"]);
  const mmr = store.asRetriever({ k: 2, searchType: "mmr", searchKwargs: { fetchK: 10, lambda: 0.5 } });
  assert.equal((await mmr.invoke("the earth")).length, 2);
});

test("with embeddings null the tenant's own model embeds texts and queries", async () => {
  const log = [];
  const client = new TvsClient({ baseUrl: server.url, apiKey: await server.tenant("lc-minilm"), fetch: recordingFetch(log) });
  const store = new TvsVectorStore(null, { client });
  assert.equal(store.serverEmbeds, true);
  assert.ok(store.embeddings instanceof TvsEmbeddings, "the tenant's model as LangChain Embeddings");

  const ids = await store.addDocuments([
    new Document({ pageContent: "Cats purr and chase mice.", metadata: { topic: "pets" } }),
    new Document({ pageContent: "The stock market fell sharply on Tuesday.", metadata: { topic: "finance" } }),
    new Document({ pageContent: "Boil the pasta in salted water for nine minutes.", metadata: { topic: "food" } }),
  ], { ids: ["cats", "stocks", "pasta"] });
  assert.deepEqual(ids, ["cats", "stocks", "pasta"]);
  const upsert = log.find((r) => r.url.endsWith("/v1/documents"));
  assert.ok(upsert.body.documents.every((d) => d.text && !("vector" in d)), "texts sent, vectors not");

  const [top] = await store.similaritySearch("my kitten hunts mice", 1);
  assert.equal(top.id, "cats");
  const search = log.filter((r) => r.url.endsWith("/v1/search")).at(-1);
  assert.deepEqual(search.body, { query: "my kitten hunts mice", top_k: 1 }, "the query text is sent, no vector");

  const scored = await store.similaritySearchWithScore("how long to cook spaghetti", 3);
  assert.equal(scored[0][0].id, "pasta");
  assert.ok(scored.every(([, s]) => s >= -1 && s <= 1), "cosine similarities");
  assert.deepEqual((await store.similaritySearch("kitten", 3, { topic: "finance" })).map((d) => d.id), ["stocks"]);
  const mmr = await store.maxMarginalRelevanceSearch("animals", { k: 2, fetchK: 3, lambda: 0.5 });
  assert.equal(mmr.length, 2);
  assert.equal(log.filter((r) => r.url.endsWith("/v1/embeddings")).length, 0, "nothing embedded on the client");

  const retrieved = await store.asRetriever({ k: 1 }).invoke("stock prices dropped");
  assert.equal(retrieved[0].id, "stocks");

  const fromTexts = await TvsVectorStore.fromTexts(["Tea is brewed from leaves."], {}, null, { client, ids: ["tea"] });
  assert.equal((await fromTexts.similaritySearch("a hot drink made from leaves", 1))[0].id, "tea");

  const vector = await store.embeddings.embedQuery("hello world");
  assert.equal(vector.length, 384);
  const vectors = await store.embeddings.embedDocuments(["a", "b", "c"]);
  assert.deepEqual(vectors.map((v) => v.length), [384, 384, 384]);
  // A vector from the tenant's model, searched by vector, finds the document it came from.
  const [pastaVector] = await store.embeddings.embedDocuments(["Boil the pasta in salted water for nine minutes."]);
  assert.equal((await store.similaritySearchVectorWithScore(pastaVector, 1))[0][0].id, "pasta");

  await store.delete({ ids: ["tea"] });
  assert.equal(await client.get("tea"), null);
});
