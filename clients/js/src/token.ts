/**
 * Tenant tokens, minted in the app with WebCrypto: the same HS256 JWTs as the Python client's
 * `mint_token` (clients/python/langchain_tvs/admin.py) and the rules tvs checks
 * (guest/core/src/token.rs): header `{"alg": "HS256", "typ": "JWT", "kid"}`, claims
 * `{"tenant", "scope", "iat", "exp"}`, a lifetime of at most 7 days, sent as
 * `tvs.{tenant}.{jwt}` so a proxy routing by tenant routes it like a key.
 *
 * A signing secret is what `TvsAdmin.createSigningKey()` returns once: `tvs_sk.{kid}.{key}`, the
 * key being base64url without padding.
 */

/** Tenant ids tvs accepts. */
export const TENANT_ID = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;
/** The longest lifetime tvs accepts for a token, in seconds (7 days). */
export const MAX_TOKEN_TTL_SECONDS = 7 * 24 * 3600;
/** The scopes a token can carry. */
export type Scope = "read" | "write" | "plugins";

const SCOPES: readonly string[] = ["read", "write", "plugins"];

export interface MintTokenOptions {
  /** The signing secret, `tvs_sk.{kid}.{key}` (from `TvsAdmin.createSigningKey()`). */
  signingKey: string;
  /** The tenant the token is for. */
  tenant: string;
  /** Space-separated `read`, `write`, `plugins`, or a list of them. Default `"read write"`. */
  scope?: string | Scope[];
  /** Seconds the token is valid, at most 7 days. Default 900. */
  ttlSeconds?: number;
  /** Prefix the JWT with `tvs.{tenant}.` (what the Python client sends). Default true. */
  routingPrefix?: boolean;
  /** The issue time in seconds since the epoch (default now): for clocks that are known to be off, and tests. */
  issuedAt?: number;
}

/**
 * A token for `tenant`, valid `ttlSeconds`, signed with a signing secret: what
 * `Authorization: Bearer` takes, routing prefix included. Async because WebCrypto is.
 */
export async function mintToken(options: MintTokenOptions): Promise<string> {
  const { signingKey, tenant } = options;
  if (typeof tenant !== "string" || !TENANT_ID.test(tenant)) {
    throw new TypeError(`${JSON.stringify(tenant)} is not a tenant id (see tenantIdFor)`);
  }
  const ttl = options.ttlSeconds ?? 900;
  if (typeof ttl !== "number" || !Number.isFinite(ttl) || ttl <= 0) {
    throw new RangeError("ttlSeconds must be positive");
  }
  if (Math.trunc(ttl) > MAX_TOKEN_TTL_SECONDS) {
    throw new RangeError(`ttlSeconds must be at most ${MAX_TOKEN_TTL_SECONDS} (7 days): tvs refuses longer-lived tokens`);
  }
  const scope = scopeClaim(options.scope ?? "read write");
  const { kid, key } = parseSigningSecret(signingKey);
  const now = Math.floor(options.issuedAt ?? Date.now() / 1000);
  // Key order and compact separators as the Python client's json.dumps(..., separators=(",", ":")).
  const header = { alg: "HS256", typ: "JWT", kid };
  const claims = { tenant, scope, iat: now, exp: now + Math.trunc(ttl) };
  const signingInput = `${base64url(utf8(JSON.stringify(header)))}.${base64url(utf8(JSON.stringify(claims)))}`;
  const hmacKey = await subtle().importKey("raw", key as BufferSource, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const signature = new Uint8Array(await subtle().sign("HMAC", hmacKey, utf8(signingInput)));
  const jwt = `${signingInput}.${base64url(signature)}`;
  return options.routingPrefix === false ? jwt : `tvs.${tenant}.${jwt}`;
}

/** The key id and HMAC key of a signing secret `tvs_sk.{kid}.{key}`. */
export function parseSigningSecret(secret: string): { kid: string; key: Uint8Array } {
  const parts = typeof secret === "string" ? secret.trim().split(".") : [];
  if (parts.length !== 3 || parts[0] !== "tvs_sk" || !parts[1] || !parts[2]) {
    throw new TypeError("a signing secret looks like tvs_sk.{kid}.{key} (from TvsAdmin.createSigningKey)");
  }
  return { kid: parts[1], key: fromBase64url(parts[2]) };
}

/**
 * The tenant of an app user: the id itself when tvs accepts it, else `u-` and 40 hex digits of
 * its SHA-256 (an email or a path-like id maps to the same tenant every time), as the Python
 * client's `tenant_id_for`.
 */
export async function tenantIdFor(userId: string): Promise<string> {
  if (typeof userId !== "string" || userId === "") throw new TypeError("a user id is required");
  if (TENANT_ID.test(userId)) return userId;
  const digest = new Uint8Array(await subtle().digest("SHA-256", utf8(userId)));
  const hex = Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
  return `u-${hex.slice(0, 40)}`;
}

/** Options of `tokenSource`: those of `mintToken` but the issue time. */
export type TokenSourceOptions = Omit<MintTokenOptions, "issuedAt">;

/**
 * A credential function for `TvsClient` (`apiKey: tokenSource({...})`) that mints a token and
 * mints the next one shortly before it expires (60 s before, or half its lifetime if shorter),
 * like the Python client's `TokenAuth`.
 */
export function tokenSource(options: TokenSourceOptions): () => Promise<string> {
  parseSigningSecret(options.signingKey);
  const ttl = options.ttlSeconds ?? 900;
  const margin = Math.min(60, ttl / 2);
  let current: Promise<string> | undefined;
  let expires = 0;
  return () => {
    const now = Date.now() / 1000;
    if (current === undefined || now >= expires - margin) {
      expires = now + ttl;
      current = mintToken(options);
      current.catch(() => {
        current = undefined;
      });
    }
    return current;
  };
}

function scopeClaim(scope: string | Scope[]): string {
  const words = Array.isArray(scope) ? scope : typeof scope === "string" ? scope.split(/\s+/).filter(Boolean) : [];
  if (words.length === 0) throw new TypeError("scope names no scope: use read, write and/or plugins");
  for (const word of words) {
    if (!SCOPES.includes(word)) throw new TypeError(`unknown scope ${JSON.stringify(word)}: use read, write and/or plugins`);
  }
  return words.join(" ");
}

function subtle(): SubtleCrypto {
  const crypto = globalThis.crypto;
  if (!crypto?.subtle) throw new Error("this runtime has no WebCrypto (globalThis.crypto.subtle)");
  return crypto.subtle;
}

function utf8(text: string): Uint8Array<ArrayBuffer> {
  return new TextEncoder().encode(text);
}

/** @internal base64url without padding. */
export function base64url(bytes: Uint8Array): string {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** @internal base64url (or base64), with or without padding. */
export function fromBase64url(text: string): Uint8Array {
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
  const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4);
  let binary: string;
  try {
    binary = atob(padded);
  } catch {
    throw new TypeError("the signing secret's key is not base64url");
  }
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}
