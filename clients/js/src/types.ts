/**
 * The shapes of tvs's API as the client takes and returns them: camelCase, as JavaScript reads
 * (`embeddingModel` for the API's `embedding_model`); metadata and plugin payloads are passed
 * through untouched.
 */

/** A metadata object: any JSON object. */
export type Metadata = Record<string, unknown>;

/**
 * A Mongo-style metadata filter: `{field: value}`, `{field: [a, b]}`, `$eq $ne $gt $gte $lt $lte
 * $in $nin $and $or $not` (docs/cli.md says how they are evaluated).
 */
export type Filter = Record<string, unknown>;

/** `cos` (default), `ip` or `l2`. */
export type Metric = "cos" | "ip" | "l2";

/** How the HNSW graph stores vectors: `i8` (default), `f16` or `f32`. */
export type Scalar = "i8" | "f16" | "f32";

// --- admin -------------------------------------------------------------------------------

export interface CreateTenantInput {
  id: string;
  /** Vector dimensions (default 384, the local model's). */
  dims?: number;
  metric?: Metric;
  scalar?: Scalar;
  /** The tenant's model (default the server's, all-MiniLM-L6-v2), or `"none"` for client vectors only. */
  embeddingModel?: string;
  maxDocuments?: number;
  maxBytes?: number;
}

export interface CreatedTenant {
  id: string;
  /** The tenant's API key: shown once (only its hash is stored). */
  apiKey: string;
}

export interface TenantPage {
  tenants: string[];
  /** Pass as `after` for the next page; null on the last page. */
  nextAfter: string | null;
}

export interface RateLimits {
  requestsPerSecond?: number;
  ingestBytesPerSecond?: number;
}

export interface TenantInfo {
  id: string;
  rateLimits: RateLimits;
  maxDocuments: number | null;
  maxBytes: number | null;
  usage: {
    documents: number;
    storedBytes: number;
    vectorBytes: number;
    memoryBytes: number;
  };
}

/** A change of limits: a field set changes that limit, `null` removes it, a field left out is kept. */
export interface LimitsPatch {
  requestsPerSecond?: number | null;
  ingestBytesPerSecond?: number | null;
  maxDocuments?: number | null;
  maxBytes?: number | null;
}

export interface SigningKey {
  id: string;
  /** Seconds since the epoch. */
  createdAt: number;
  /** Seconds since the epoch, when revoked. */
  revokedAt?: number;
}

export interface CreatedSigningKey {
  id: string;
  createdAt: number;
  /** `tvs_sk.{kid}.{key}`: shown once; what `mintToken` takes as `signingKey`. */
  secret: string;
}

export interface PoolStats {
  hits: number;
  misses: number;
  loads: number;
  evictions: number;
  expirations: number;
  size: number;
  capacity: number;
  bytes: number;
  hitRate: number;
}

export interface NodeInfo {
  node: string | null;
  storage: unknown;
  tenants: unknown;
}

// --- documents, search, stats ------------------------------------------------------------

export interface DocumentInput {
  /** Upsert by id; a new id (a UUID) is made when left out. */
  id?: string;
  /** Embedded by the tenant's model when `vector` is left out. */
  text?: string;
  metadata?: Metadata;
  vector?: number[] | Float32Array;
}

export interface Chunking {
  /** Characters per chunk. */
  size: number;
  overlap?: number;
}

export interface UpsertResult {
  /** The ids stored, in order (chunks get ids of their own). */
  ids: string[];
  /** How many texts the server embedded. */
  embedded: number;
}

export interface StoredDocument {
  id: string;
  text: string;
  metadata: Metadata;
}

export interface SearchInput {
  /** A query vector (of the tenant's dimensions). */
  vector?: number[] | Float32Array;
  /** A query text, embedded by the tenant's model. */
  query?: string;
  /** Hits to return (server default 5). */
  topK?: number;
  filter?: Filter;
  /** Maximal marginal relevance: `fetchK` candidates (default 20), `lambdaMult` in [0, 1] (default 0.5; 1 is pure relevance). */
  mmr?: { fetchK?: number; lambdaMult?: number };
  /**
   * A search mode. The server has no such field yet (hybrid search does not exist): it is sent
   * only when given, and today's server answers it with 400 `invalid_request`.
   */
  mode?: string;
  /** The name of one of the tenant's re-ranker plugins. */
  rerank?: string;
}

export interface SearchHit {
  id: string;
  /**
   * LangChain FAISS's score: cosine similarity for `cos` tenants, inner product for `ip`
   * (higher is closer), squared L2 distance for `l2` (lower is closer).
   */
  score: number;
  /** The index's distance (lower is closer). */
  distance: number;
  text: string;
  metadata: Metadata;
}

export interface Stats {
  count: number;
  dims: number;
  metric: Metric;
  bytes: number;
  embeddingModel: string;
  /** Present when set. */
  rateLimits?: RateLimits;
  maxDocuments?: number;
  maxBytes?: number;
  storedBytes?: number;
}

// --- plugins -----------------------------------------------------------------------------

export type PluginKind = "function" | "ingest-transform" | "reranker";

/** One compiled version of a plugin, as the server describes it. */
export interface PluginBuild {
  version: number;
  kind: PluginKind;
  sha256: string;
  bytes: number;
  imports: string[];
  exports: string[];
}

export interface UploadedPlugin extends PluginBuild {
  name: string;
}

export interface PluginVersion extends PluginBuild {
  /** Seconds since the epoch. */
  uploadedAt: number;
  artifact?: { engine: string; sha256: string };
}

export interface PluginInfo {
  name: string;
  kind: PluginKind;
  /** The active version. */
  active: number;
  versions: PluginVersion[];
  calls: number;
  failures: number;
  lastError: string | null;
  /** For an ingest transform: whether every ingest of the tenant goes through it. */
  enabled: boolean;
}

export interface PluginLogLine {
  level: string;
  message: string;
}

/** One test run of a plugin (`POST /v1/plugins/{name}/test`). */
export interface PluginTestRun {
  ok: boolean;
  /** The plugin's output when `ok`: a function's text, a transform's documents, a re-ranker's hits. */
  output?: unknown;
  /** The plugin's failure when not `ok`. */
  error?: { code: string; message: string };
  version?: number;
  log?: PluginLogLine[];
  elapsedMs?: number;
  peakMemoryBytes?: number;
}
