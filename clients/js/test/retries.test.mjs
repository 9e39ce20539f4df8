// Retries of 429 and 503 honouring Retry-After, bounded; timeouts and aborts through AbortSignal.
// The 429s come from a real tvs serve with a low rate limit; what tvs does not do on demand
// (hang, 503 without Retry-After) comes from a stub server on loopback.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { TvsClient, TvsError, parseRetryAfter } from "../dist/index.js";
import { recordingFetch, startServer, stubServer } from "./helpers.mjs";

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

test("a 429 is retried after Retry-After and then succeeds", async () => {
  const apiKey = await server.tenant("slow", { dims: 4, embeddingModel: "none" });
  await server.admin.setLimits("slow", { requestsPerSecond: 1 });
  const log = [];
  const client = new TvsClient({ baseUrl: server.url, apiKey, fetch: recordingFetch(log) });
  await client.stats(); // takes the bucket's one token
  const started = Date.now();
  const stats = await client.stats(); // refused 429 with Retry-After: 1, retried after a second
  const waited = Date.now() - started;
  assert.equal(stats.count, 0);
  assert.equal(log.length, 3, "one refused attempt, then the retry");
  assert.ok(waited >= 950, `waited ${waited} ms for Retry-After: 1`);
  assert.ok(waited < 5000, `waited ${waited} ms`);
});

test("with maxRetries 0 a 429 is thrown as TvsError", async () => {
  const apiKey = await server.tenant("strict-rate", { dims: 4, embeddingModel: "none" });
  await server.admin.setLimits("strict-rate", { requestsPerSecond: 1 });
  const client = new TvsClient({ baseUrl: server.url, apiKey, maxRetries: 0 });
  await client.stats();
  const error = await client.stats().catch((e) => e);
  assert.ok(error instanceof TvsError);
  assert.equal(error.status, 429);
  assert.equal(error.code, "rate_limited");
  assert.match(error.message, /requests_per_second/);
  assert.equal(error.retryAfterMs, 1000);

  // A Retry-After longer than maxRetryDelayMs is not waited for.
  const impatient = new TvsClient({ baseUrl: server.url, apiKey, maxRetryDelayMs: 100 });
  await new Promise((r) => setTimeout(r, 1100));
  await impatient.stats();
  const started = Date.now();
  await assert.rejects(impatient.stats(), { status: 429, code: "rate_limited" });
  assert.ok(Date.now() - started < 900, "thrown at once");
});

test("503 is retried with the stub's Retry-After, up to maxRetries", async () => {
  const stub = await stubServer((req, res, n) => {
    if (n <= 2) {
      res.writeHead(503, { "content-type": "application/json", "retry-after": "0" });
      res.end(JSON.stringify({ error: { code: "busy", message: "at the limit of requests in flight" } }));
    } else {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ hits: [] }));
    }
  });
  try {
    const client = new TvsClient({ baseUrl: stub.url, apiKey: "k" });
    assert.deepEqual(await client.search({ vector: [1], topK: 1 }), []);
    assert.equal(stub.requests.length, 3);
    assert.deepEqual(stub.requests.map((r) => r.body), Array(3).fill('{"vector":[1],"top_k":1}'), "the same body each time");
    assert.equal(stub.requests[0].headers.authorization, "Bearer k");

    const once = new TvsClient({ baseUrl: stub.url, apiKey: "k", maxRetries: 1 });
    stub.requests.length = 0;
    await assert.rejects(once.stats(), { status: 503, code: "busy" });
    assert.equal(stub.requests.length, 2, "one try and one retry");
  } finally {
    await stub.close();
  }
});

test("without Retry-After the client backs off and a non-JSON error body still gives a TvsError", async () => {
  const stub = await stubServer((req, res, n) => {
    if (n === 1) {
      res.writeHead(503, { "content-type": "text/plain" });
      res.end("upstream unavailable");
    } else {
      res.writeHead(502, { "content-type": "text/html" });
      res.end("<html>bad gateway</html>");
    }
  });
  try {
    const client = new TvsClient({ baseUrl: stub.url, apiKey: "k" });
    const error = await client.stats().catch((e) => e);
    assert.ok(error instanceof TvsError);
    assert.equal(error.status, 502);
    assert.equal(error.code, "http_error");
    assert.match(error.message, /bad gateway/);
    const gap = stub.requests[1].at - stub.requests[0].at;
    assert.ok(gap >= 450, `backed off ${gap} ms`);
  } finally {
    await stub.close();
  }
});

test("a call that takes too long fails with code timeout", async () => {
  const stub = await stubServer(() => {}); // never answers
  try {
    const client = new TvsClient({ baseUrl: stub.url, apiKey: "k", timeoutMs: 200 });
    const started = Date.now();
    const error = await client.stats().catch((e) => e);
    assert.ok(error instanceof TvsError);
    assert.equal(error.status, 0);
    assert.equal(error.code, "timeout");
    assert.ok(Date.now() - started < 2000);
    // A call's own timeout wins over the client's.
    await assert.rejects(new TvsClient({ baseUrl: stub.url, apiKey: "k", timeoutMs: 0 }).stats({ timeoutMs: 100 }), { code: "timeout" });
  } finally {
    await stub.close();
  }
  // Against the real server: embedding 200 texts takes longer than a millisecond.
  const client = await server.client("timeouts");
  const texts = Array.from({ length: 200 }, (_, i) => `sentence number ${i} about nothing in particular`);
  await assert.rejects(client.embeddings(texts, { timeoutMs: 1 }), { name: "TvsError", status: 0, code: "timeout" });
  assert.equal((await client.embeddings(["after a timeout the client works"])).length, 1);
});

test("an AbortSignal aborts a call, and AbortSignal.timeout() reads as a timeout", async () => {
  const stub = await stubServer(() => {});
  try {
    const client = new TvsClient({ baseUrl: stub.url, apiKey: "k" });
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 100);
    await assert.rejects(client.stats({ signal: controller.signal }), { name: "TvsError", status: 0, code: "aborted" });
    await assert.rejects(client.stats({ signal: AbortSignal.timeout(100) }), { code: "timeout" });
    stub.requests.length = 0;
    await assert.rejects(client.stats({ signal: AbortSignal.abort() }), { code: "aborted" });
    assert.equal(stub.requests.length, 0, "an aborted signal sends nothing");
  } finally {
    await stub.close();
  }
  // Against the real server, an abort during the wait before a retry.
  const apiKey = await server.tenant("abort-wait", { dims: 4, embeddingModel: "none" });
  await server.admin.setLimits("abort-wait", { requestsPerSecond: 1 });
  const client = new TvsClient({ baseUrl: server.url, apiKey });
  await client.stats();
  const started = Date.now();
  await assert.rejects(client.stats({ signal: AbortSignal.timeout(200) }), { code: "timeout" });
  assert.ok(Date.now() - started < 900, "the wait for Retry-After was cut short");
});

test("a credential function is asked before every attempt", async () => {
  let calls = 0;
  const stub = await stubServer((req, res, n) => {
    res.writeHead(n === 1 ? 429 : 200, { "content-type": "application/json", "retry-after": "0" });
    res.end(n === 1 ? '{"error":{"code":"rate_limited","message":"slow down"}}' : '{"count":0}');
  });
  try {
    const client = new TvsClient({ baseUrl: stub.url, apiKey: async () => `token-${++calls}` });
    await client.stats();
    assert.deepEqual(stub.requests.map((r) => r.headers.authorization), ["Bearer token-1", "Bearer token-2"]);
  } finally {
    await stub.close();
  }
});

test("Retry-After is read as seconds or as an HTTP date", () => {
  assert.equal(parseRetryAfter("1"), 1000);
  assert.equal(parseRetryAfter(" 2 "), 2000);
  assert.equal(parseRetryAfter("0.5"), 500);
  assert.equal(parseRetryAfter(null), undefined);
  assert.equal(parseRetryAfter("soon"), undefined);
  const inTwo = parseRetryAfter(new Date(Date.now() + 2000).toUTCString());
  assert.ok(inTwo > 500 && inTwo <= 2000, String(inTwo));
  assert.equal(parseRetryAfter(new Date(Date.now() - 60_000).toUTCString()), 0);
});
