/**
 * The one error type of the client: every failed call throws a `TvsError`.
 *
 * When tvs answered, `status`, `code` and `message` are those of its error body
 * (`{"error": {"code", "message"}}`, see docs/api.md). When it did not, `status` is 0 and `code`
 * says why: `network_error` (no connection, DNS, reset), `timeout` (the client's `timeoutMs`
 * or an `AbortSignal.timeout()` fired) or `aborted` (the caller's signal was aborted).
 */
export class TvsError extends Error {
  /** The HTTP status, or 0 when no answer came. */
  readonly status: number;
  /** The server's error code (`invalid_request`, `unauthorized`, `insufficient_scope`, `rate_limited`, …), or the client's (`network_error`, `timeout`, `aborted`, `invalid_response`). */
  readonly code: string;
  /** For 429 and 503: how long the server asked to wait (its `Retry-After`), in milliseconds. */
  readonly retryAfterMs?: number;

  constructor(
    status: number,
    code: string,
    message: string,
    options: { cause?: unknown; retryAfterMs?: number } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "TvsError";
    this.status = status;
    this.code = code;
    if (options.retryAfterMs !== undefined) this.retryAfterMs = options.retryAfterMs;
  }

  /** `TvsError 403 insufficient_scope: this route needs a token with the write scope`. */
  override toString(): string {
    return `${this.name} ${this.status} ${this.code}: ${this.message}`;
  }
}
