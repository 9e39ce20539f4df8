// A real `tvs serve` on loopback for one test file, as clients/python/tests/conftest.py starts
// one: the binary from TVS_BIN (cargo test sets it) or the repo's target/debug/tvs, its data in
// a temp dir, an admin key set; stopped (SIGTERM) and its data removed when the file is done.

import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { TvsAdmin, TvsClient } from "../dist/index.js";

export const ADMIN = "js-client-admin-key";
export const HERE = dirname(fileURLToPath(import.meta.url));
export const PACKAGE_DIR = resolve(HERE, "..");
export const REPO = resolve(HERE, "../../..");

/** Environment variables of the tester's shell that would change the server under test. */
const SERVER_ENV_DROPPED = [
  "TVS_ADDR",
  "TVS_DATA_DIR",
  "TVS_STORAGE",
  "TVS_NODE_ID",
  "TVS_DEFAULT_REQUESTS_PER_SECOND",
  "TVS_DEFAULT_INGEST_BYTES_PER_SECOND",
  "VECTOR_STORE_FOLDER",
  "VECTOR_STORE_POOL_SIZE",
  "VECTOR_STORE_TTL_SECONDS",
  "DEFAULT_TOP_K",
  "EMBEDDING_MODEL",
];

/** The tvs binary: TVS_BIN, else the repo's debug build. */
export function tvsBinary() {
  const binary = process.env.TVS_BIN || join(REPO, "target/debug/tvs");
  if (!existsSync(binary)) {
    throw new Error(`no tvs binary at ${binary}: set TVS_BIN to one (cargo test sets it) or run cargo build`);
  }
  return binary;
}

/**
 * Starts `tvs serve --addr 127.0.0.1:0`; resolves once it printed its address.
 * Returns { url, admin, tenant(id, shape) -> key, client(key, options), stop() }.
 */
export async function startServer({ args = [], env = {} } = {}) {
  const binary = tvsBinary();
  const data = mkdtempSync(join(tmpdir(), "tvs-js-client-"));
  const childEnv = { ...process.env, TVS_DATA_DIR: data, TVS_ADMIN_KEY: ADMIN, ...env };
  for (const name of SERVER_ENV_DROPPED) if (!(name in env) && name !== "TVS_DATA_DIR") delete childEnv[name];
  const child = spawn(binary, ["serve", "--addr", "127.0.0.1:0", ...args], {
    env: childEnv,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (chunk) => {
    stderr = (stderr + chunk).slice(-20_000);
  });
  const exited = new Promise((resolveExit) => child.once("exit", (code, signal) => resolveExit({ code, signal })));
  const url = await new Promise((resolveUrl, reject) => {
    let out = "";
    let settled = false;
    const timer = setTimeout(() => fail(new Error("tvs serve printed no address within 60 s")), 60_000);
    function fail(error) {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      child.kill("SIGKILL");
      reject(new Error(`${error.message}\nstdout: ${out}\nstderr: ${stderr}`));
    }
    child.stdout.setEncoding("utf8");
    child.stdout.on("data", function onData(chunk) {
      out += chunk;
      const newline = out.indexOf("\n");
      if (newline < 0) return;
      const line = out.slice(0, newline).trim();
      child.stdout.off("data", onData);
      child.stdout.resume(); // keep draining whatever else it prints
      if (settled) return;
      if (!line.startsWith("listening on http://")) fail(new Error(`unexpected first line ${JSON.stringify(line)}`));
      else {
        settled = true;
        clearTimeout(timer);
        resolveUrl(line.slice("listening on ".length));
      }
    });
    child.once("error", fail);
    exited.then(({ code, signal }) => fail(new Error(`tvs serve exited (${code ?? signal}) before listening`)));
  });
  const admin = new TvsAdmin({ baseUrl: url, adminKey: ADMIN });
  let stopped = false;
  return {
    url,
    admin,
    data,
    /** Creates a tenant and returns its API key. */
    async tenant(id, shape = {}) {
      return (await admin.createTenant({ id, ...shape })).apiKey;
    },
    /** A TvsClient of a new tenant `id` (created with `shape`). */
    async client(id, shape = {}, options = {}) {
      const apiKey = await this.tenant(id, shape);
      return new TvsClient({ baseUrl: url, apiKey, ...options });
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM");
        const killer = setTimeout(() => child.kill("SIGKILL"), 30_000);
        await exited;
        clearTimeout(killer);
      }
      rmSync(data, { recursive: true, force: true });
    },
  };
}

/**
 * A loopback HTTP server answering with `handler(req, res)`; for what a real tvs does not do on
 * demand (hang, answer 503 then 200). Returns { url, requests, close() }.
 */
export async function stubServer(handler) {
  const requests = [];
  const sockets = new Set();
  const server = createServer((req, res) => {
    let body = "";
    req.setEncoding("utf8");
    req.on("data", (chunk) => (body += chunk));
    req.on("end", () => {
      requests.push({ method: req.method, url: req.url, headers: req.headers, body, at: Date.now() });
      handler(req, res, requests.length);
    });
  });
  server.on("connection", (socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  await new Promise((ready) => server.listen(0, "127.0.0.1", ready));
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () =>
      new Promise((done) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => done());
      }),
  };
}

/**
 * A plugin component the Rust build makes (host/runtime/build.rs): the path in env `envName`
 * (cargo test sets it), else the newest `{stem}.wasm` under target/; null when there is none.
 * Stems: tvs_test_plugin_probe (a function), tvs_test_plugin_redact (an ingest transform),
 * recency_rerank (a re-ranker, examples/plugins/rust-recency-rerank).
 */
export function builtPlugin(stem, envName) {
  const given = process.env[envName];
  if (given && existsSync(given)) return given;
  const found = [];
  for (const profile of ["debug", "release"]) {
    const build = join(REPO, "target", profile, "build");
    if (!existsSync(build)) continue;
    for (const dir of readdirSync(build)) {
      if (!dir.startsWith("tvs-runtime-")) continue;
      const path = join(build, dir, `out/guest-target/wasm32-wasip2/release/${stem}.wasm`);
      if (existsSync(path)) found.push({ path, mtime: statSync(path).mtimeMs });
    }
  }
  found.sort((a, b) => b.mtime - a.mtime);
  return found[0]?.path ?? null;
}

/** `fetch` that records each request's method, URL and parsed JSON body before sending it. */
export function recordingFetch(log) {
  return async (input, init = {}) => {
    let body;
    try {
      body = typeof init.body === "string" ? JSON.parse(init.body) : init.body;
    } catch {
      body = init.body;
    }
    log.push({ method: init.method ?? "GET", url: String(input), body });
    return fetch(input, init);
  };
}
