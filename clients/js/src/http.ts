/**
 * The transport shared by `TvsAdmin` and `TvsClient`: the platform's `fetch` (or one passed in),
 * a bearer credential, a timeout per attempt, the caller's `AbortSignal`, and bounded retries of
 * 429 and 503 that honour `Retry-After`. tvs does nothing for a request it answers 429 or 503
 * (docs/api.md), so retrying any method, writes included, is safe.
 *
 * Only web-platform APIs are used (fetch, AbortController, setTimeout), so this runs unchanged
 * on Node >= 20, Deno, Bun and edge workers.
 */

import { TvsError } from "./errors.js";

/** A credential: a string, or a function returning one (called before every attempt, so it can hand out fresh tokens). */
export type Credential = string | (() => string | Promise<string>);

/** Options every client takes. */
export interface ClientOptions {
  /** tvs's base URL, e.g. `http://127.0.0.1:8080` (a path prefix is kept: `https://host/tvs`). */
  baseUrl: string;
  /** A `fetch` to use instead of `globalThis.fetch` (a proxy-aware one, a mock, a worker's binding). */
  fetch?: typeof globalThis.fetch;
  /** Milliseconds one attempt may take, body included, before it fails with code `timeout`; 0 for none. Default 60000. */
  timeoutMs?: number;
  /** How many times a 429 or 503 is retried. Default 3; 0 turns retries off. */
  maxRetries?: number;
  /** The longest wait before a retry, in milliseconds: a `Retry-After` asking for more is not waited for, the error is thrown at once. Default 10000. */
  maxRetryDelayMs?: number;
  /** Headers sent with every request (beside `Authorization`). */
  headers?: Record<string, string>;
}

/** Options of a single call. */
export interface RequestOptions {
  /** Aborts the call (and any wait before a retry); it then throws `TvsError` with code `aborted` (or `timeout` for `AbortSignal.timeout()`). */
  signal?: AbortSignal;
  /** This call's timeout per attempt, instead of the client's `timeoutMs`. */
  timeoutMs?: number;
}

/** @internal What one request sends. */
export interface Call extends RequestOptions {
  method: "GET" | "POST" | "PUT" | "PATCH" | "DELETE";
  path: string;
  query?: Record<string, string | number | undefined>;
  /** A JSON body (serialised here). */
  json?: unknown;
  /** A raw body, with its content type. */
  body?: Uint8Array | ArrayBuffer | Blob | string;
  contentType?: string;
}

/** @internal An answer: its status and its body, parsed as JSON when it is JSON. */
export interface Answer {
  status: number;
  data: unknown;
  headers: Headers;
}

const DEFAULT_TIMEOUT_MS = 60_000;
const DEFAULT_MAX_RETRIES = 3;
const DEFAULT_MAX_RETRY_DELAY_MS = 10_000;
/** The first wait when a 429/503 has no `Retry-After` (doubled at each retry). */
const BACKOFF_BASE_MS = 500;

/** @internal The HTTP layer of a client. */
export class Transport {
  readonly baseUrl: string;
  private readonly fetchImpl: typeof globalThis.fetch;
  private readonly credential: Credential;
  private readonly timeoutMs: number;
  private readonly maxRetries: number;
  private readonly maxRetryDelayMs: number;
  private readonly headers: Record<string, string>;

  constructor(options: ClientOptions, credential: Credential) {
    if (!options || typeof options.baseUrl !== "string" || options.baseUrl === "") {
      throw new TypeError("baseUrl is required, e.g. http://127.0.0.1:8080");
    }
    if (credential === undefined || credential === null || credential === "") {
      throw new TypeError("a credential is required (the admin key, a tenant key or a tenant token)");
    }
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    if (options.fetch === undefined && typeof globalThis.fetch !== "function") {
      throw new TypeError("no fetch: this runtime has no globalThis.fetch; pass options.fetch");
    }
    // Called unbound, a platform fetch may refuse its `this` (browsers, some workers).
    this.fetchImpl = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
    this.credential = credential;
    this.timeoutMs = nonNegative(options.timeoutMs, DEFAULT_TIMEOUT_MS, "timeoutMs");
    this.maxRetries = Math.floor(nonNegative(options.maxRetries, DEFAULT_MAX_RETRIES, "maxRetries"));
    this.maxRetryDelayMs = nonNegative(options.maxRetryDelayMs, DEFAULT_MAX_RETRY_DELAY_MS, "maxRetryDelayMs");
    this.headers = { ...(options.headers ?? {}) };
  }

  /** Sends `call`, retrying 429 and 503 as configured; throws `TvsError` unless the answer is 2xx. */
  async request(call: Call): Promise<Answer> {
    const url = this.url(call.path, call.query);
    const timeoutMs = nonNegative(call.timeoutMs, this.timeoutMs, "timeoutMs");
    let body: BodyInit | undefined;
    let contentType = call.contentType;
    if (call.json !== undefined) {
      body = JSON.stringify(call.json);
      contentType ??= "application/json";
    } else if (call.body !== undefined) {
      body = call.body as BodyInit;
    }
    for (let attempt = 0; ; attempt++) {
      throwIfAborted(call.signal);
      const headers: Record<string, string> = {
        accept: "application/json",
        ...this.headers,
        authorization: `Bearer ${await this.bearer()}`,
      };
      if (contentType !== undefined) headers["content-type"] = contentType;
      const { response, text } = await this.attempt(url, { method: call.method, headers, body }, timeoutMs, call.signal);
      if (response.ok) {
        return { status: response.status, data: parseBody(text), headers: response.headers };
      }
      const retryable = response.status === 429 || response.status === 503;
      const retryAfterMs = retryable ? parseRetryAfter(response.headers.get("retry-after")) : undefined;
      const error = errorFrom(response, text, retryAfterMs);
      if (!retryable || attempt >= this.maxRetries) throw error;
      const wait = retryAfterMs ?? BACKOFF_BASE_MS * 2 ** attempt;
      if (wait > this.maxRetryDelayMs) throw error;
      await sleep(wait, call.signal);
    }
  }

  private async bearer(): Promise<string> {
    const credential = typeof this.credential === "function" ? await this.credential() : this.credential;
    if (typeof credential !== "string" || credential === "") {
      throw new TypeError("the credential function returned no key or token");
    }
    return credential;
  }

  private url(path: string, query?: Record<string, string | number | undefined>): string {
    let url = this.baseUrl + path;
    if (query) {
      const params = new URLSearchParams();
      for (const [key, value] of Object.entries(query)) {
        if (value !== undefined) params.set(key, String(value));
      }
      const text = params.toString();
      if (text) url += `?${text}`;
    }
    return url;
  }

  /** One fetch, body read included, under the timeout and the caller's signal. */
  private async attempt(
    url: string,
    init: RequestInit,
    timeoutMs: number,
    signal: AbortSignal | undefined,
  ): Promise<{ response: Response; text: string }> {
    const controller = new AbortController();
    let timedOut = false;
    const onAbort = () => controller.abort(signal?.reason);
    signal?.addEventListener("abort", onAbort, { once: true });
    const timer =
      timeoutMs > 0
        ? setTimeout(() => {
            timedOut = true;
            controller.abort();
          }, timeoutMs)
        : undefined;
    try {
      const response = await this.fetchImpl(url, { ...init, signal: controller.signal });
      const text = await response.text();
      return { response, text };
    } catch (cause) {
      if (timedOut) {
        throw new TvsError(0, "timeout", `tvs did not answer ${init.method} ${url} within ${timeoutMs} ms`, { cause });
      }
      if (signal?.aborted) throw abortError(signal, cause);
      throw new TvsError(0, "network_error", `cannot reach tvs (${init.method} ${url}): ${describe(cause)}`, { cause });
    } finally {
      if (timer !== undefined) clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
    }
  }
}

function nonNegative(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined || value === null) return fallback;
  if (typeof value !== "number" || Number.isNaN(value) || value < 0) {
    throw new TypeError(`${name} must be a number >= 0, got ${String(value)}`);
  }
  return value;
}

function parseBody(text: string): unknown {
  if (text === "") return undefined;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** The `TvsError` of a non-2xx answer: the server's code and message when its body has them. */
function errorFrom(response: Response, text: string, retryAfterMs: number | undefined): TvsError {
  const body = parseBody(text);
  const error = isObject(body) && isObject(body.error) ? body.error : undefined;
  const code = typeof error?.code === "string" ? error.code : "http_error";
  const message =
    typeof error?.message === "string"
      ? error.message
      : `tvs answered ${response.status} ${response.statusText}${text ? `: ${text.slice(0, 500)}` : ""}`;
  return new TvsError(response.status, code, message, retryAfterMs === undefined ? {} : { retryAfterMs });
}

/** `Retry-After` in milliseconds: seconds (tvs sends whole seconds) or an HTTP date. */
export function parseRetryAfter(header: string | null): number | undefined {
  if (header === null) return undefined;
  const text = header.trim();
  if (/^\d+(\.\d+)?$/.test(text)) return Math.round(Number(text) * 1000);
  const date = Date.parse(text);
  if (Number.isNaN(date)) return undefined;
  return Math.max(0, date - Date.now());
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function describe(cause: unknown): string {
  if (cause instanceof Error) {
    const inner = (cause as { cause?: unknown }).cause;
    const code = isObject(inner) && typeof inner.code === "string" ? ` (${inner.code})` : "";
    return `${cause.message}${code}`;
  }
  return String(cause);
}

function abortError(signal: AbortSignal, cause?: unknown): TvsError {
  const reason: unknown = signal.reason;
  const isTimeout = isObject(reason) && (reason as { name?: unknown }).name === "TimeoutError";
  return isTimeout
    ? new TvsError(0, "timeout", "the call's signal timed out", { cause: cause ?? reason })
    : new TvsError(0, "aborted", "the call was aborted by its signal", { cause: cause ?? reason });
}

function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw abortError(signal);
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(abortError(signal));
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(abortError(signal as AbortSignal));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** @internal Keys `snake_case` → `camelCase`, deeply, for the server's own shapes (never for user data such as metadata). */
export function camelize<T>(value: unknown): T {
  if (Array.isArray(value)) return value.map((item) => camelize(item)) as T;
  if (!isObject(value)) return value as T;
  const out: Record<string, unknown> = {};
  for (const [key, item] of Object.entries(value)) {
    out[key.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase())] = camelize(item);
  }
  return out as T;
}

/** @internal A path segment, escaped. */
export function segment(value: string): string {
  if (typeof value !== "string" || value === "") throw new TypeError("an id or name is required");
  return encodeURIComponent(value);
}
