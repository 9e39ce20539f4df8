/**
 * `TvsClient`: one tenant's data API, reached with that tenant's API key or a tenant token
 * (`mintToken`): documents, search, stats, OpenAI-shaped embeddings and plugins. The tenant
 * comes from the credential, never from a parameter, as on the server.
 */

import { TvsError } from "./errors.js";
import { type ClientOptions, type Credential, type RequestOptions, Transport, camelize, segment } from "./http.js";
import { fromBase64url } from "./token.js";
import type {
  Chunking,
  DocumentInput,
  Filter,
  PluginInfo,
  PluginTestRun,
  SearchHit,
  SearchInput,
  Stats,
  StoredDocument,
  UpsertResult,
  UploadedPlugin,
} from "./types.js";

/** Documents per upsert request by default (the server takes up to 10,000 and 16 MiB a request). */
export const DEFAULT_BATCH_SIZE = 1000;

export interface TvsClientOptions extends ClientOptions {
  /** The tenant's API key, a tenant token, or a function returning one (e.g. `tokenSource(...)`), called before each request. */
  apiKey: Credential;
  /** Documents per upsert request (default 1000). */
  batchSize?: number;
}

export interface UpsertOptions extends RequestOptions {
  /** Split texts into chunks of `size` characters (with `overlap`) before they are embedded. */
  chunk?: Chunking;
  /** Documents per request, instead of the client's `batchSize`. */
  batchSize?: number;
}

export interface EmbeddingsOptions extends RequestOptions {
  /** The tenant's model in any spelling; another model is refused. Default: the tenant's. */
  model?: string;
  /** Must equal the tenant's dimensions if given. */
  dimensions?: number;
}

export class TvsClient {
  private readonly http: Transport;
  private readonly batchSize: number;

  constructor(options: TvsClientOptions) {
    this.http = new Transport(options, options?.apiKey);
    this.batchSize = positiveInteger(options.batchSize ?? DEFAULT_BATCH_SIZE, "batchSize");
  }

  /** tvs's base URL, without a trailing slash. */
  get baseUrl(): string {
    return this.http.baseUrl;
  }

  // --- documents ---------------------------------------------------------------------------

  /**
   * Upserts documents by id (`POST /v1/documents`), in requests of at most `batchSize`
   * documents. Each request is all or nothing; when one fails, the batches before it stay
   * stored and the error is thrown.
   */
  async upsert(documents: DocumentInput[], options: UpsertOptions = {}): Promise<UpsertResult> {
    if (!Array.isArray(documents)) throw new TypeError("upsert takes an array of documents");
    const batchSize = positiveInteger(options.batchSize ?? this.batchSize, "batchSize");
    const result: UpsertResult = { ids: [], embedded: 0 };
    for (let start = 0; start < documents.length; start += batchSize) {
      const body: Record<string, unknown> = { documents: documents.slice(start, start + batchSize).map(documentBody) };
      if (options.chunk !== undefined) body.chunk = options.chunk;
      const { data } = await this.http.request({ ...options, method: "POST", path: "/v1/documents", json: body });
      const answer = data as UpsertResult;
      result.ids.push(...answer.ids);
      result.embedded += answer.embedded;
    }
    return result;
  }

  /**
   * One document (`GET /v1/documents/{id}`), or null when there is none with this id. (A
   * tenant that does not exist is also a 404 `not_found` on tvs; that one is thrown.)
   */
  async get(id: string, options: RequestOptions = {}): Promise<StoredDocument | null> {
    try {
      const { data } = await this.http.request({ ...options, method: "GET", path: `/v1/documents/${segment(id)}` });
      return data as StoredDocument;
    } catch (error) {
      // tvs words a missing document `no document "id"` (host/server/src/http/documents_api.rs).
      if (error instanceof TvsError && error.status === 404 && error.message.startsWith("no document")) return null;
      throw error;
    }
  }

  /** Deletes documents by id (`POST /v1/documents/delete`); returns how many there were. */
  async delete(ids: string | string[], options: RequestOptions = {}): Promise<number> {
    const list = typeof ids === "string" ? [ids] : ids;
    if (!Array.isArray(list)) throw new TypeError("delete takes an id or an array of ids");
    const { data } = await this.http.request({ ...options, method: "POST", path: "/v1/documents/delete", json: { ids: list } });
    return (data as { deleted: number }).deleted;
  }

  /** Deletes the documents whose metadata matches `filter`; returns how many. */
  async deleteWhere(filter: Filter, options: RequestOptions = {}): Promise<number> {
    if (filter === null || typeof filter !== "object") throw new TypeError("deleteWhere takes a filter object");
    const { data } = await this.http.request({ ...options, method: "POST", path: "/v1/documents/delete", json: { filter } });
    return (data as { deleted: number }).deleted;
  }

  // --- search and stats ----------------------------------------------------------------------

  /** k-NN search (`POST /v1/search`) by vector or by query text, with a filter, MMR, a re-ranker. */
  async search(input: SearchInput, options: RequestOptions = {}): Promise<SearchHit[]> {
    const body: Record<string, unknown> = {};
    if (input.vector !== undefined) body.vector = Array.from(input.vector);
    if (input.query !== undefined) body.query = input.query;
    if (input.topK !== undefined) body.top_k = input.topK;
    if (input.filter !== undefined) body.filter = input.filter;
    if (input.mmr !== undefined) {
      const mmr: Record<string, unknown> = {};
      if (input.mmr.fetchK !== undefined) mmr.fetch_k = input.mmr.fetchK;
      if (input.mmr.lambdaMult !== undefined) mmr.lambda_mult = input.mmr.lambdaMult;
      body.mmr = mmr;
    }
    // Not a field of today's server (no hybrid search yet): sent only when the caller asks.
    if (input.mode !== undefined) body.mode = input.mode;
    if (input.rerank !== undefined) body.rerank = input.rerank;
    const { data } = await this.http.request({ ...options, method: "POST", path: "/v1/search", json: body });
    return (data as { hits: SearchHit[] }).hits;
  }

  /** The tenant's count, dimensions, metric, bytes and model, and the limits set on it. */
  async stats(options: RequestOptions = {}): Promise<Stats> {
    const { data } = await this.http.request({ ...options, method: "GET", path: "/v1/stats" });
    return camelize<Stats>(data);
  }

  /** Vectors of `texts` by the tenant's own model (`POST /v1/embeddings`, OpenAI's shape, floats). */
  async embeddings(texts: string | string[], options: EmbeddingsOptions = {}): Promise<number[][]> {
    const body: Record<string, unknown> = { input: texts, encoding_format: "float" };
    if (options.model !== undefined) body.model = options.model;
    if (options.dimensions !== undefined) body.dimensions = options.dimensions;
    const { data } = await this.http.request({ ...options, method: "POST", path: "/v1/embeddings", json: body });
    const items = (data as { data: { index: number; embedding: number[] | string }[] }).data;
    return [...items].sort((a, b) => a.index - b.index).map((item) => vectorOf(item.embedding));
  }

  // --- plugins -------------------------------------------------------------------------------

  /** Uploads `wasm` (a binary component) as the next version of plugin `name`, which becomes active. */
  async uploadPlugin(name: string, wasm: Uint8Array | ArrayBuffer | Blob, options: RequestOptions = {}): Promise<UploadedPlugin> {
    const { data } = await this.http.request({
      ...options,
      method: "PUT",
      path: `/v1/plugins/${segment(name)}`,
      body: wasm,
      contentType: "application/wasm",
    });
    return data as UploadedPlugin;
  }

  /** The tenant's plugins. */
  async listPlugins(options: RequestOptions = {}): Promise<PluginInfo[]> {
    const { data } = await this.http.request({ ...options, method: "GET", path: "/v1/plugins" });
    return camelize<{ plugins: PluginInfo[] }>(data).plugins;
  }

  /** One plugin: its versions, the active one, calls, failures, last error (404 `TvsError` when there is none). */
  async getPlugin(name: string, options: RequestOptions = {}): Promise<PluginInfo> {
    const { data } = await this.http.request({ ...options, method: "GET", path: `/v1/plugins/${segment(name)}` });
    return camelize<PluginInfo>(data);
  }

  /** Makes a kept version active: a roll back (or forward). */
  async activatePlugin(name: string, version: number, options: RequestOptions = {}): Promise<PluginInfo> {
    const { data } = await this.http.request({
      ...options,
      method: "POST",
      path: `/v1/plugins/${segment(name)}/active`,
      json: { version },
    });
    return camelize<PluginInfo>(data);
  }

  /**
   * One run of the plugin on `input` (a function's request, `{documents}` for an ingest
   * transform, `{query?, hits}` for a re-ranker), with its output or error, log, time and
   * peak memory. A failing plugin is `ok: false`, not a thrown error.
   */
  async testPlugin(name: string, input: unknown, options: RequestOptions = {}): Promise<PluginTestRun> {
    const { data } = await this.http.request({
      ...options,
      method: "POST",
      path: `/v1/plugins/${segment(name)}/test`,
      json: { input },
    });
    const { output, ...rest } = data as Record<string, unknown>;
    const run = camelize<PluginTestRun>(rest);
    return output === undefined ? run : { ...run, output };
  }

  /**
   * Calls the function plugin `name` with `input` (sent as JSON); returns its answer, parsed as
   * JSON when it is. A plugin's `err` throws `TvsError` 422 `plugin_error`.
   */
  async callFunction(name: string, input: unknown, options: RequestOptions = {}): Promise<unknown> {
    const { data } = await this.http.request({
      ...options,
      method: "POST",
      path: `/v1/fn/${segment(name)}`,
      json: input === undefined ? null : input,
    });
    return data;
  }

  /** Makes every ingest of the tenant go through the ingest transform `name`. */
  async enablePlugin(name: string, options: RequestOptions = {}): Promise<PluginInfo> {
    const { data } = await this.http.request({ ...options, method: "POST", path: `/v1/plugins/${segment(name)}/enable` });
    return camelize<PluginInfo>(data);
  }

  /** Stops sending ingests through the ingest transform `name`. */
  async disablePlugin(name: string, options: RequestOptions = {}): Promise<PluginInfo> {
    const { data } = await this.http.request({ ...options, method: "POST", path: `/v1/plugins/${segment(name)}/disable` });
    return camelize<PluginInfo>(data);
  }

  /** Deletes the plugin, every version. */
  async deletePlugin(name: string, options: RequestOptions = {}): Promise<void> {
    await this.http.request({ ...options, method: "DELETE", path: `/v1/plugins/${segment(name)}` });
  }
}

/** A document as the API takes it: known fields only (the server refuses others). */
function documentBody(doc: DocumentInput): Record<string, unknown> {
  if (doc === null || typeof doc !== "object") throw new TypeError("a document is an object {id?, text?, metadata?, vector?}");
  const body: Record<string, unknown> = {};
  if (doc.id !== undefined && doc.id !== null) body.id = doc.id;
  if (doc.text !== undefined && doc.text !== null) body.text = doc.text;
  if (doc.metadata !== undefined && doc.metadata !== null) body.metadata = doc.metadata;
  if (doc.vector !== undefined && doc.vector !== null) body.vector = Array.from(doc.vector);
  return body;
}

/** A vector from OpenAI's `embedding`: floats, or base64 of little-endian f32 bytes. */
function vectorOf(embedding: number[] | string): number[] {
  if (Array.isArray(embedding)) return embedding;
  const bytes = fromBase64url(embedding);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: number[] = [];
  for (let i = 0; i + 4 <= bytes.byteLength; i += 4) out.push(view.getFloat32(i, true));
  return out;
}

function positiveInteger(value: number, name: string): number {
  if (!Number.isInteger(value) || value < 1) throw new TypeError(`${name} must be a positive integer, got ${String(value)}`);
  return value;
}
