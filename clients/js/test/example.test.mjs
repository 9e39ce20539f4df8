// examples/serverless-rag runs against a real tvs serve: its files copied into a temp project
// that links this package as `tvs-client`, started as its README says, one request per route.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { ADMIN, PACKAGE_DIR, REPO, startServer } from "./helpers.mjs";

let server;
let app;
let work;
before(async () => {
  server = await startServer();
  work = mkdtempSync(join(tmpdir(), "tvs-rag-example-"));
  for (const file of ["handler.mjs", "server.mjs", "package.json"]) {
    copyFileSync(join(REPO, "examples/serverless-rag", file), join(work, file));
  }
  mkdirSync(join(work, "node_modules"));
  symlinkSync(PACKAGE_DIR, join(work, "node_modules/tvs-client"), "dir");
  app = spawn(process.execPath, ["server.mjs"], {
    cwd: work,
    // No TVS_SIGNING_SECRET: the app makes a signing key (and prints its secret, not read here).
    env: { ...process.env, TVS_URL: server.url, TVS_ADMIN_KEY: ADMIN, PORT: "0", TVS_SIGNING_SECRET: "" },
    stdio: ["ignore", "pipe", "ignore"],
  });
  app.url = await new Promise((resolve, reject) => {
    let out = "";
    app.stdout.setEncoding("utf8");
    app.stdout.on("data", (chunk) => {
      out += chunk;
      const match = out.match(/listening on (http:\/\/\S+)/);
      if (match) resolve(match[1]);
    });
    app.once("exit", (code) => reject(new Error(`the example exited (${code}): ${out}`)));
  });
});
after(async () => {
  if (app && app.exitCode === null) {
    const exited = new Promise((done) => app.once("exit", done));
    app.kill("SIGTERM");
    await exited;
  }
  await server?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
});

async function post(path, user, body) {
  const headers = { "content-type": "application/json" };
  if (user) headers["x-user-id"] = user;
  const response = await fetch(`${app.url}${path}`, { method: "POST", headers, body: JSON.stringify(body) });
  return { status: response.status, body: await response.json() };
}

test("the serverless-rag example keeps each user's notes in a tenant of their own", async () => {
  const alice = "alice@example.com";
  const stored = await post("/notes", alice, {
    notes: ["The wifi password at the cabin is pinecone42.", "Dentist appointment on Friday at 10am.", "My passport expires in March 2027."],
  });
  assert.equal(stored.status, 200, JSON.stringify(stored.body));
  assert.equal(stored.body.stored, 3);
  assert.equal((await post("/notes", "bob", { notes: "Bob keeps his spare key under the blue flowerpot." })).body.stored, 1);

  const answer = await post("/ask", alice, { question: "what is the cabin wifi password?", k: 2 });
  assert.equal(answer.status, 200, JSON.stringify(answer.body));
  assert.equal(answer.body.notes.length, 2);
  assert.equal(answer.body.notes[0].text, "The wifi password at the cabin is pinecone42.");
  assert.match(answer.body.prompt, /pinecone42/);

  const bobs = await post("/ask", "bob", { question: "what is the cabin wifi password?", k: 10 });
  assert.deepEqual(bobs.body.notes.map((n) => n.text), ["Bob keeps his spare key under the blue flowerpot."], "bob sees only his own");

  // One tenant per user, made on first use; an e-mail maps to u-<sha256>.
  const tenants = await server.admin.listAllTenants();
  assert.equal(tenants.length, 2);
  assert.ok(tenants.includes("bob"));
  assert.ok(tenants.some((t) => /^u-[0-9a-f]{40}$/.test(t)));
  assert.equal((await server.admin.listSigningKeys()).length, 1, "one signing key, made once");

  assert.equal((await post("/ask", null, { question: "x" })).status, 401);
  assert.equal((await post("/ask", "bob", {})).status, 400);
  assert.equal((await post("/nowhere", "bob", {})).status, 404);
});
