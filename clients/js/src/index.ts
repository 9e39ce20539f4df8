/**
 * tvs-client: the TypeScript client of tvs, the multi-tenant vector store.
 *
 * - `TvsAdmin` (the admin key): tenants, keys, limits, signing keys, the pool.
 * - `mintToken` / `tokenSource`: short-lived tenant tokens signed with a signing key (WebCrypto).
 * - `TvsClient` (a tenant key or token): documents, search, stats, embeddings, plugins.
 * - `TvsError`: every failure, with the server's `status`, `code` and `message`.
 *
 * The LangChain.js vector store is in `tvs-client/langchain`.
 */

export { TvsAdmin, type TvsAdminOptions } from "./admin.js";
export { DEFAULT_BATCH_SIZE, TvsClient, type EmbeddingsOptions, type TvsClientOptions, type UpsertOptions } from "./client.js";
export { TvsError } from "./errors.js";
export { type ClientOptions, type Credential, type RequestOptions, parseRetryAfter } from "./http.js";
export {
  MAX_TOKEN_TTL_SECONDS,
  type MintTokenOptions,
  type Scope,
  TENANT_ID,
  type TokenSourceOptions,
  mintToken,
  parseSigningSecret,
  tenantIdFor,
  tokenSource,
} from "./token.js";
export type * from "./types.js";
