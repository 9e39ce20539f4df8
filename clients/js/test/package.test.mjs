// The package as a user gets it: `npm pack` of a clean copy of the sources (so prepack must
// build dist/, and the other test files' dist/ is left alone), the tarball installed into an
// empty project (offline: it has no dependencies), imported by name from an .mjs file that
// makes real calls, and type-checked from a .ts file.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { promisify } from "node:util";

import { ADMIN, PACKAGE_DIR, startServer } from "./helpers.mjs";

const run = promisify(execFile);
const npm = process.platform === "win32" ? "npm.cmd" : "npm";

let server;
let work;
before(async () => {
  server = await startServer();
  work = mkdtempSync(join(tmpdir(), "tvs-client-pack-"));
});
after(async () => {
  await server?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
});

const CONSUMER = `
import { TvsAdmin, TvsClient, TvsError, mintToken } from "tvs-client";

const [baseUrl, adminKey] = process.argv.slice(2);
const admin = new TvsAdmin({ baseUrl, adminKey });
const { apiKey } = await admin.createTenant({ id: "packaged", dims: 3, embeddingModel: "none" });
const client = new TvsClient({ baseUrl, apiKey });
await client.upsert([{ id: "p", text: "from the tarball", vector: [1, 0, 0] }]);
const hits = await client.search({ vector: [1, 0, 0], topK: 1 });
const { secret } = await admin.createSigningKey();
const reader = new TvsClient({ baseUrl, apiKey: await mintToken({ signingKey: secret, tenant: "packaged", scope: "read" }) });
let refused = null;
try {
  await reader.delete(["p"]);
} catch (error) {
  refused = error instanceof TvsError ? error.code : String(error);
}
let langchain;
try {
  await import("tvs-client/langchain");
  langchain = "loaded";
} catch (error) {
  langchain = error.code;
}
console.log(JSON.stringify({ hit: hits[0].id, text: hits[0].text, count: (await reader.stats()).count, refused, langchain }));
`;

test("npm pack, install the tarball into an empty project, import it by name and call tvs", async () => {
  const source = join(work, "source");
  mkdirSync(source);
  for (const entry of ["package.json", "package-lock.json", "README.md", "tsconfig.json", "src"]) {
    cpSync(join(PACKAGE_DIR, entry), join(source, entry), { recursive: true });
  }
  symlinkSync(join(PACKAGE_DIR, "node_modules"), join(source, "node_modules"), "dir");
  const packed = await run(npm, ["pack", "--json", "--pack-destination", work], { cwd: source, maxBuffer: 16 << 20 });
  assert.ok(existsSync(join(source, "dist/index.js")), "prepack built dist/");
  const [info] = JSON.parse(packed.stdout.slice(packed.stdout.indexOf("[")));
  const files = info.files.map((f) => f.path);
  for (const needed of ["package.json", "README.md", "dist/index.js", "dist/index.d.ts", "dist/langchain.js", "dist/langchain.d.ts"]) {
    assert.ok(files.includes(needed), `${needed} is in the tarball: ${files.join(", ")}`);
  }
  assert.ok(!files.some((f) => f.startsWith("test/") || f.startsWith("node_modules/")), files.join(", "));

  const project = join(work, "consumer");
  mkdirSync(project);
  writeFileSync(join(project, "package.json"), JSON.stringify({ name: "consumer", private: true, type: "module" }));
  await run(npm, ["install", "--offline", "--no-audit", "--no-fund", join(work, info.filename)], { cwd: project });
  const installed = JSON.parse(readFileSync(join(project, "node_modules/tvs-client/package.json"), "utf8"));
  assert.equal(installed.name, "tvs-client");
  assert.deepEqual(installed.dependencies ?? {}, {}, "no runtime dependency");

  writeFileSync(join(project, "consumer.mjs"), CONSUMER);
  const { stdout } = await run(process.execPath, ["consumer.mjs", server.url, ADMIN], { cwd: project });
  assert.deepEqual(JSON.parse(stdout), {
    hit: "p",
    text: "from the tarball",
    count: 1,
    refused: "insufficient_scope",
    // @langchain/core is an optional peer dependency: without it only tvs-client/langchain fails.
    langchain: "ERR_MODULE_NOT_FOUND",
  });

  // A TypeScript user: the declarations resolve through "exports" and type-check strictly
  // (skipLibCheck off), with nothing but the platform's types.
  writeFileSync(join(project, "consumer.ts"), TYPED_CONSUMER);
  writeFileSync(
    join(project, "tsconfig.json"),
    JSON.stringify({
      compilerOptions: { target: "ES2022", module: "NodeNext", moduleResolution: "NodeNext", lib: ["ES2022", "DOM"], types: [], strict: true, noEmit: true, skipLibCheck: false },
      files: ["consumer.ts"],
    }),
  );
  const tsc = join(PACKAGE_DIR, "node_modules/.bin/tsc");
  const checked = await run(tsc, ["-p", join(project, "tsconfig.json")], { cwd: project }).catch((e) => e);
  assert.equal(checked.code ?? 0, 0, `${checked.stdout}${checked.stderr}`);
});

const TYPED_CONSUMER = `
import { TvsAdmin, TvsClient, TvsError, mintToken, type SearchHit, type TenantInfo } from "tvs-client";

export async function main(baseUrl: string, adminKey: string): Promise<SearchHit[]> {
  const admin = new TvsAdmin({ baseUrl, adminKey, maxRetries: 1, timeoutMs: 5000 });
  const created = await admin.createTenant({ id: "typed", dims: 3, metric: "cos", embeddingModel: "none" });
  const again: { id: string; apiKey: string } | null = await admin.createTenant({ id: "typed" }, { existOk: true });
  const info: TenantInfo = await admin.setLimits(created.id, { requestsPerSecond: null, maxDocuments: 10 });
  const client = new TvsClient({ baseUrl, apiKey: created.apiKey });
  const { ids }: { ids: string[] } = await client.upsert([{ id: "a", vector: [1, 0, 0], metadata: { n: info.usage.documents, again: again === null } }]);
  const token: string = await mintToken({ signingKey: "tvs_sk.k.a2V5", tenant: "typed", scope: ["read"], ttlSeconds: 60 });
  try {
    await new TvsClient({ baseUrl, apiKey: () => token }).delete(ids, { signal: AbortSignal.timeout(1000) });
  } catch (error) {
    if (error instanceof TvsError && error.code === "insufficient_scope") console.log(error.status);
  }
  return client.search({ vector: [1, 0, 0], topK: 1, filter: { n: { $gte: 0 } }, mmr: { fetchK: 5, lambdaMult: 0.5 } });
}
`;
