// @ts-check
/**
 * A serverless-style RAG handler on tvs: each signed-in user gets a knowledge base of their own,
 * a tvs tenant, reached with short-lived tenant tokens. The app keeps two secrets and nothing per
 * user: the admin key (to create a user's tenant on first use) and one signing secret (to mint
 * the user's tokens). A token reaches that user's tenant and no other, so a bug in the app's
 * routing cannot leak one user's notes to another.
 *
 *   POST /notes  {"notes": ["...", ...]}        stores the user's notes (embedded by tvs)
 *   POST /ask    {"question": "...", "k"?: 3}   the user's notes nearest the question, and the
 *                                               prompt for the app's chat model
 *
 * The user id comes from the `x-user-id` header here; in a real app it comes from the session
 * (a verified cookie or JWT), never from what the browser says.
 *
 * `handler(req, res)` is a plain node:http handler, the shape Node serverless platforms call;
 * server.mjs serves it. Nothing is kept between requests but a cache of the tenants known to
 * exist, so a cold start just creates (or finds) the tenant again.
 */

import { TvsAdmin, TvsClient, TvsError, mintToken, tenantIdFor } from "tvs-client";

const TVS_URL = process.env.TVS_URL ?? "http://127.0.0.1:8080";
/** Seconds a user's token lives: one request's worth, with room to spare. */
const TOKEN_TTL_SECONDS = 300;
/** The largest request body the handler reads. */
const MAX_BODY_BYTES = 1 << 20;

const admin = new TvsAdmin({ baseUrl: TVS_URL, adminKey: required("TVS_ADMIN_KEY") });

/** The signing secret: TVS_SIGNING_SECRET, else a new signing key, whose secret is shown once. */
/** @type {Promise<string> | undefined} */
let signingSecret = process.env.TVS_SIGNING_SECRET ? Promise.resolve(process.env.TVS_SIGNING_SECRET) : undefined;
function secret() {
  signingSecret ??= admin.createSigningKey().then(({ secret }) => {
    console.error(`created a signing key; keep it as TVS_SIGNING_SECRET=${secret}`);
    return secret;
  });
  return signingSecret;
}

/** Tenants this instance knows exist (a cache: creating is idempotent with existOk). */
const knownTenants = new Set();

/**
 * The user's TvsClient: their tenant (created on first use, with tvs's default model,
 * all-MiniLM-L6-v2, so tvs embeds notes and questions itself), reached with a token for that
 * tenant only, valid a few minutes.
 * @param {string} userId
 */
async function clientFor(userId) {
  const tenant = await tenantIdFor(userId); // "alice" stays "alice"; "bob@example.com" becomes "u-<sha256>"
  if (!knownTenants.has(tenant)) {
    // Safe from many instances at once: the others get 409, which existOk turns into null.
    await admin.createTenant({ id: tenant }, { existOk: true });
    knownTenants.add(tenant);
  }
  const token = await mintToken({ signingKey: await secret(), tenant, scope: "read write", ttlSeconds: TOKEN_TTL_SECONDS });
  return new TvsClient({ baseUrl: TVS_URL, apiKey: token });
}

/**
 * Stores notes: each is embedded by the tenant's model; long ones are chunked by tvs first.
 * @param {TvsClient} client
 * @param {unknown} body
 */
async function addNotes(client, body) {
  const notes = typeof body === "object" && body !== null && "notes" in body ? body.notes : undefined;
  const list = typeof notes === "string" ? [notes] : notes;
  if (!Array.isArray(list) || list.length === 0 || !list.every((n) => typeof n === "string" && n.trim())) {
    throw new BadRequest('send {"notes": ["a note", ...]}');
  }
  const addedAt = new Date().toISOString();
  const { ids } = await client.upsert(
    list.map((text) => ({ text, metadata: { addedAt } })),
    { chunk: { size: 500, overlap: 50 } },
  );
  return { stored: ids.length, ids };
}

/**
 * The notes nearest the question and a prompt built from them.
 * @param {TvsClient} client
 * @param {unknown} body
 */
async function ask(client, body) {
  const question = typeof body === "object" && body !== null && "question" in body ? body.question : undefined;
  if (typeof question !== "string" || !question.trim()) throw new BadRequest('send {"question": "..."}');
  const k = typeof body === "object" && body !== null && "k" in body && Number.isInteger(body.k) ? Number(body.k) : 3;
  // Vector search with the query text, embedded by the tenant's own model. Hybrid search
  // (keywords and vectors fused) does not exist in tvs yet: when it does, pass `mode` here.
  const hits = await client.search({ query: question, topK: Math.min(Math.max(k, 1), 20) });
  const context = hits.map((hit) => `- ${hit.text}`).join("\n");
  return {
    question,
    notes: hits.map((hit) => ({ id: hit.id, text: hit.text, score: hit.score })),
    // Send this to the app's chat model; that step is the app's own.
    prompt: `Answer from the user's own notes only.\nNotes:\n${context}\n\nQuestion: ${question}`,
  };
}

/**
 * The HTTP handler.
 * @param {import("node:http").IncomingMessage} req
 * @param {import("node:http").ServerResponse} res
 */
export async function handler(req, res) {
  try {
    const route = `${req.method} ${new URL(req.url ?? "/", "http://app").pathname}`;
    if (route !== "POST /notes" && route !== "POST /ask") {
      return send(res, 404, { error: { code: "not_found", message: "POST /notes or POST /ask" } });
    }
    const userId = req.headers["x-user-id"];
    if (typeof userId !== "string" || userId.trim() === "") {
      return send(res, 401, { error: { code: "unauthorized", message: "sign in first (x-user-id)" } });
    }
    const body = await readJson(req);
    const client = await clientFor(userId.trim());
    return send(res, 200, route === "POST /notes" ? await addNotes(client, body) : await ask(client, body));
  } catch (error) {
    if (error instanceof BadRequest) return send(res, 400, { error: { code: "invalid_request", message: error.message } });
    if (error instanceof TvsError) {
      // tvs's own refusals (a quota, a rate: the client already retried 429s) go back as they are.
      const status = error.status >= 400 && error.status < 500 ? error.status : 502;
      return send(res, status, { error: { code: error.code, message: error.message } });
    }
    console.error(error);
    return send(res, 500, { error: { code: "internal", message: "the app failed" } });
  }
}

class BadRequest extends Error {}

/** @param {import("node:http").IncomingMessage} req */
async function readJson(req) {
  let size = 0;
  const chunks = [];
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw new BadRequest("the body is too large");
    chunks.push(chunk);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString("utf8") || "{}");
  } catch {
    throw new BadRequest("the body is not JSON");
  }
}

/**
 * @param {import("node:http").ServerResponse} res
 * @param {number} status
 * @param {unknown} body
 */
function send(res, status, body) {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
}

/** @param {string} name */
function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`set ${name}`);
  return value;
}
