// OpenAI's own JS client (`openai` from npm) against tvs's /v1/embeddings, with its defaults:
// baseURL `${url}/v1`, the tenant's key as apiKey, base64 vectors (what it asks for unless told
// otherwise) decoded by the client itself.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import OpenAI from "openai";

import { TvsClient } from "../dist/index.js";
import { recordingFetch, startServer } from "./helpers.mjs";

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

test("the openai client gets 384-d vectors of the tenant's model", async () => {
  const apiKey = await server.tenant("openai-user");
  const log = [];
  const openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey, fetch: recordingFetch(log), maxRetries: 0 });
  const texts = ["hello world", "tvs keeps each tenant's vectors apart"];
  const response = await openai.embeddings.create({ model: "all-MiniLM-L6-v2", input: texts });
  assert.equal(log[0].body.encoding_format, "base64", "the openai client asks for base64 by default");
  assert.equal(response.object, "list");
  assert.equal(response.model, "all-MiniLM-L6-v2");
  assert.equal(response.data.length, 2);
  assert.deepEqual(response.data.map((d) => d.index), [0, 1]);
  for (const item of response.data) {
    assert.ok(Array.isArray(item.embedding), "decoded by the openai client");
    assert.equal(item.embedding.length, 384);
  }
  assert.ok(response.usage.prompt_tokens > 0);

  // The same vectors as tvs-client's embeddings(), which asks for floats.
  const floats = await new TvsClient({ baseUrl: server.url, apiKey }).embeddings(texts);
  for (let i = 0; i < texts.length; i++) {
    const gap = Math.max(...floats[i].map((x, j) => Math.abs(x - response.data[i].embedding[j])));
    assert.ok(gap < 1e-6, `vector ${i} differs by ${gap}`);
  }

  const single = await openai.embeddings.create({ model: "sentence-transformers/all-MiniLM-L6-v2", input: "one text", encoding_format: "float" });
  assert.equal(single.data[0].embedding.length, 384);

  await assert.rejects(openai.embeddings.create({ model: "text-embedding-3-small", input: "x" }), (e) => {
    assert.equal(e.status, 400);
    assert.match(e.message, /vectors of two models do not mix/);
    return true;
  });
  const stranger = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "not-a-key", maxRetries: 0 });
  await assert.rejects(stranger.embeddings.create({ model: "all-MiniLM-L6-v2", input: "x" }), (e) => e.status === 401);
});
