// A tenant's plugins through TvsClient against a real tvs serve. The rounds with real components
// use those the Rust build makes (host/runtime/build.rs: the probe function, the redact ingest
// transform, the recency re-ranker example); each such test is skipped, saying why, when its
// component is not there. The 404s of unknown plugins are checked regardless.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, test } from "node:test";

import { TvsClient, TvsError, mintToken } from "../dist/index.js";
import { builtPlugin, startServer } from "./helpers.mjs";

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

test("an unknown plugin is a 404 TvsError", async () => {
  const client = await server.client("no-plugins", { dims: 4, embeddingModel: "none" });
  assert.deepEqual(await client.listPlugins(), []);
  for (const call of [
    () => client.getPlugin("ghost"),
    () => client.testPlugin("ghost", { op: "count" }),
    () => client.callFunction("ghost", { op: "count" }),
    () => client.activatePlugin("ghost", 1),
    () => client.enablePlugin("ghost"),
    () => client.deletePlugin("ghost"),
  ]) {
    const error = await call().catch((e) => e);
    assert.ok(error instanceof TvsError, String(error));
    assert.equal(error.status, 404);
    assert.equal(error.code, "not_found");
    assert.match(error.message, /ghost/);
  }
  await assert.rejects(client.search({ vector: [1, 0, 0, 0], rerank: "ghost" }), { status: 404, code: "not_found" });
});

test("bytes that are not a component are refused as invalid_plugin", async () => {
  const client = await server.client("bad-plugin", { dims: 4, embeddingModel: "none" });
  await assert.rejects(client.uploadPlugin("junk", new TextEncoder().encode("not wasm")), { status: 400, code: "invalid_plugin" });
  assert.deepEqual(await client.listPlugins(), []);
});

const missing = (stem, env) =>
  `no ${stem}.wasm: set ${env} or build it (cargo build makes target/debug/build/tvs-runtime-*/out/guest-target/wasm32-wasip2/release/${stem}.wasm)`;
const probe = builtPlugin("tvs_test_plugin_probe", "TVS_PROBE_PLUGIN");
const redact = builtPlugin("tvs_test_plugin_redact", "TVS_REDACT_PLUGIN");
const recency = builtPlugin("recency_rerank", "TVS_RECENCY_PLUGIN");

test(
  "a tenant uploads, calls, tests, rolls back and deletes a function plugin",
  { skip: probe ? false : missing("tvs_test_plugin_probe", "TVS_PROBE_PLUGIN") },
  async () => {
    const wasm = readFileSync(probe);
    const client = await server.client("plugin-owner", { dims: 4, embeddingModel: "none" });
    await client.upsert([{ id: "a", text: "a", vector: [1, 0, 0, 0] }]);

    const first = await client.uploadPlugin("probe", new Uint8Array(wasm));
    assert.equal(first.name, "probe");
    assert.equal(first.version, 1);
    assert.equal(first.kind, "function");
    assert.match(first.sha256, /^[0-9a-f]{64}$/);
    assert.equal(first.bytes, wasm.length);

    assert.deepEqual(await client.callFunction("probe", { op: "count" }), { count: 1 });
    assert.deepEqual(await client.callFunction("probe", { op: "echo", value: { nested: [1, "two"] } }), { nested: [1, "two"] });
    await assert.rejects(client.callFunction("probe", { op: "fail" }), (e) => {
      assert.ok(e instanceof TvsError);
      assert.deepEqual([e.status, e.code], [422, "plugin_error"]);
      assert.match(e.message, /the probe refuses this request/);
      return true;
    });

    const run = await client.testPlugin("probe", { op: "log" });
    assert.equal(run.ok, true);
    assert.equal(run.output, "{}");
    assert.ok(run.log.some((line) => line.message === "hello from the probe"), JSON.stringify(run.log));
    assert.equal(typeof run.elapsedMs, "number");
    assert.equal(typeof run.peakMemoryBytes, "number");
    assert.equal(run.version, 1);
    const failed = await client.testPlugin("probe", { op: "fail" });
    assert.equal(failed.ok, false);
    assert.equal(failed.error.code, "plugin_error");

    const second = await client.uploadPlugin("probe", wasm.buffer.slice(wasm.byteOffset, wasm.byteOffset + wasm.byteLength));
    assert.equal(second.version, 2);
    const info = await client.getPlugin("probe");
    assert.equal(info.active, 2);
    assert.deepEqual(info.versions.map((v) => v.version), [1, 2]);
    assert.equal(typeof info.versions[0].uploadedAt, "number");
    assert.ok(info.calls >= 3);
    assert.equal(typeof info.failures, "number");
    assert.equal(info.enabled, false);
    assert.equal((await client.activatePlugin("probe", 1)).active, 1);
    await assert.rejects(client.activatePlugin("probe", 9), (e) => e instanceof TvsError && e.status >= 400);
    assert.deepEqual((await client.listPlugins()).map((p) => [p.name, p.kind, p.active]), [["probe", "function", 1]]);

    // Only an ingest transform can be enabled; the probe is a function (disabling one is allowed).
    await assert.rejects(client.enablePlugin("probe"), { status: 400, code: "wrong_plugin_kind" });
    assert.equal((await client.disablePlugin("probe")).enabled, false, "disabling what is not enabled changes nothing");
    // A re-ranker is named in a search; a function is not one.
    await assert.rejects(client.search({ vector: [1, 0, 0, 0], rerank: "probe" }), { status: 400, code: "wrong_plugin_kind" });

    // Calling a function needs the write scope; managing plugins the plugins scope.
    const secret = (await server.admin.createSigningKey()).secret;
    const writer = new TvsClient({ baseUrl: server.url, apiKey: await mintToken({ signingKey: secret, tenant: "plugin-owner", scope: "read write" }) });
    assert.deepEqual(await writer.callFunction("probe", { op: "count" }), { count: 1 });
    await assert.rejects(writer.deletePlugin("probe"), { status: 403, code: "insufficient_scope" });
    const manager = new TvsClient({ baseUrl: server.url, apiKey: await mintToken({ signingKey: secret, tenant: "plugin-owner", scope: "read plugins" }) });
    assert.equal((await manager.getPlugin("probe")).name, "probe");

    await manager.deletePlugin("probe");
    await assert.rejects(client.getPlugin("probe"), { status: 404, code: "not_found" });
    assert.deepEqual(await client.listPlugins(), []);
  },
);

test(
  "an enabled ingest transform rewrites every upsert until it is disabled",
  { skip: redact ? false : missing("tvs_test_plugin_redact", "TVS_REDACT_PLUGIN") },
  async () => {
    const client = await server.client("transformed", { dims: 4, embeddingModel: "none" });
    const uploaded = await client.uploadPlugin("redact", readFileSync(redact));
    assert.equal(uploaded.kind, "ingest-transform");
    const run = await client.testPlugin("redact", { documents: [{ id: "x", text: "mail a@b.co" }] });
    assert.equal(run.ok, true);
    assert.equal(run.output[0].text, "mail [email]", JSON.stringify(run));
    assert.equal((await client.enablePlugin("redact")).enabled, true);
    await client.upsert([{ id: "a", text: "write to bob@example.com", vector: [1, 0, 0, 0] }]);
    assert.equal((await client.get("a")).text, "write to [email]");
    await assert.rejects(client.upsert([{ id: "r", text: "REFUSE me", vector: [1, 0, 0, 0] }]), (e) => e instanceof TvsError && e.code === "plugin_error");
    assert.equal((await client.disablePlugin("redact")).enabled, false);
    await client.upsert([{ id: "b", text: "write to bob@example.com", vector: [1, 0, 0, 0] }]);
    assert.equal((await client.get("b")).text, "write to bob@example.com");
  },
);

test(
  "a search names a re-ranker plugin",
  { skip: recency ? false : missing("recency_rerank", "TVS_RECENCY_PLUGIN") },
  async () => {
    const client = await server.client("reranked", { dims: 4, embeddingModel: "none" });
    assert.equal((await client.uploadPlugin("recency", readFileSync(recency))).kind, "reranker");
    await client.upsert([
      { id: "old", text: "old", metadata: { year: 1990 }, vector: [1, 0.8, 0, 0] },
      { id: "new", text: "new", metadata: { year: 2024 }, vector: [1, 0.25, 0, 0] },
    ]);
    // Distances 0.0222 (old) and 0.0238 (new); the newest sheds half of its distance.
    const query = [1, 0.5, 0, 0];
    assert.deepEqual((await client.search({ vector: query, topK: 2 })).map((h) => h.id), ["old", "new"]);
    const reranked = await client.search({ vector: query, topK: 2, rerank: "recency" });
    assert.deepEqual(reranked.map((h) => h.id), ["new", "old"]);
  },
);
