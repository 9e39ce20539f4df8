/**
 * `tvs-client/langchain`: a tvs tenant as a LangChain.js `VectorStore`, and the tenant's own
 * model as LangChain `Embeddings`. Needs `@langchain/core` (a peer dependency).
 *
 * One store is one tenant: the tenant comes from the client's key or token. With `embeddings`
 * set to `null`, the tenant's own model embeds: texts and query texts are sent, vectors are
 * not. With an `Embeddings` object, vectors are computed here and sent with the texts (the
 * tenant must then have been created with `embeddingModel: "none"` and their dimensions).
 *
 * Scores are tvs's `score`, as the Python client gives them to LangChain: LangChain FAISS's
 * scores, i.e. cosine similarity for `cos` tenants and inner product for `ip` (higher is
 * closer), squared L2 distance for `l2` (lower is closer).
 */

import { Document, type DocumentInterface } from "@langchain/core/documents";
import { Embeddings, type EmbeddingsInterface, type EmbeddingsParams } from "@langchain/core/embeddings";
import { type MaxMarginalRelevanceSearchOptions, VectorStore } from "@langchain/core/vectorstores";

import type { TvsClient } from "./client.js";
import type { Filter, SearchHit, SearchInput } from "./types.js";

/** What `TvsVectorStore` takes beside its embeddings. */
export interface TvsVectorStoreArgs {
  /** A `TvsClient` of the tenant (its key, a token, or a `tokenSource`). */
  client: TvsClient;
}

/** Options of `addDocuments` / `addVectors`. */
export interface TvsAddOptions {
  /** One id per document (upsert); else each document's own `id`, else the server makes one. */
  ids?: string[];
}

/** Parameters of `delete`: ids, or a metadata filter. */
export interface TvsDeleteParams {
  ids?: string[];
  filter?: Filter;
}

/** `TvsVectorStore.fromTexts` / `fromDocuments` configuration. */
export interface TvsFromArgs extends TvsVectorStoreArgs {
  ids?: string[];
}

/** MMR defaults, as LangChain's. */
const DEFAULT_FETCH_K = 20;
const DEFAULT_LAMBDA = 0.5;
/** OpenAI's (and tvs's) most inputs in one embeddings request. */
const EMBEDDINGS_BATCH = 2048;

/**
 * The tenant's own model as LangChain `Embeddings`, through `POST /v1/embeddings`. What a
 * `TvsVectorStore` made with `embeddings: null` has as its `embeddings`.
 */
export class TvsEmbeddings extends Embeddings {
  readonly client: TvsClient;

  constructor(fields: { client: TvsClient } & EmbeddingsParams) {
    const { client, ...params } = fields;
    super(params);
    this.client = client;
  }

  async embedDocuments(documents: string[]): Promise<number[][]> {
    const vectors: number[][] = [];
    for (let start = 0; start < documents.length; start += EMBEDDINGS_BATCH) {
      vectors.push(...(await this.client.embeddings(documents.slice(start, start + EMBEDDINGS_BATCH))));
    }
    return vectors;
  }

  async embedQuery(document: string): Promise<number[]> {
    const [vector] = await this.client.embeddings([document]);
    if (vector === undefined) throw new Error("tvs returned no embedding");
    return vector;
  }
}

export class TvsVectorStore extends VectorStore {
  declare FilterType: Filter;

  /** The tenant's client. */
  readonly client: TvsClient;
  /** True when the tenant's own model embeds on the server (the store was made with `embeddings: null`). */
  readonly serverEmbeds: boolean;

  _vectorstoreType(): string {
    return "tvs";
  }

  /**
   * @param embeddings - LangChain embeddings to embed here, or `null` to let the tenant's own
   *   model embed on the server.
   * @param args - `{ client }`: the tenant's `TvsClient`.
   */
  constructor(embeddings: EmbeddingsInterface | null, args: TvsVectorStoreArgs) {
    if (!args?.client) throw new TypeError("TvsVectorStore needs { client }: a TvsClient of the tenant");
    // The client (and its key) is not given to LangChain's serialisable config.
    super(embeddings ?? new TvsEmbeddings({ client: args.client }), {});
    this.client = args.client;
    this.serverEmbeds = embeddings === null || embeddings === undefined;
  }

  // --- writes --------------------------------------------------------------------------------

  /** Adds documents with vectors computed by the caller. Returns the ids stored. */
  async addVectors(vectors: number[][], documents: DocumentInterface[], options: TvsAddOptions = {}): Promise<string[]> {
    if (vectors.length !== documents.length) {
      throw new TypeError(`${vectors.length} vectors for ${documents.length} documents`);
    }
    return this.upsert(documents, vectors, options.ids);
  }

  /** Adds documents: embedded by the tenant's model (`embeddings: null`) or by the store's embeddings. Returns the ids stored. */
  async addDocuments(documents: DocumentInterface[], options: TvsAddOptions = {}): Promise<string[]> {
    if (this.serverEmbeds) return this.upsert(documents, undefined, options.ids);
    const vectors = await this.embeddings.embedDocuments(documents.map((doc) => doc.pageContent));
    return this.addVectors(vectors, documents, options);
  }

  /** Deletes by `ids`, or by `filter` (a metadata filter). */
  override async delete(params: TvsDeleteParams = {}): Promise<void> {
    const { ids, filter } = params;
    if (ids === undefined && filter === undefined) throw new TypeError("give ids or filter to delete");
    if (ids !== undefined) await this.client.delete(ids);
    if (filter !== undefined) await this.client.deleteWhere(filter);
  }

  private async upsert(documents: DocumentInterface[], vectors: number[][] | undefined, ids: string[] | undefined): Promise<string[]> {
    if (ids !== undefined && ids.length !== documents.length) {
      throw new TypeError(`${ids.length} ids for ${documents.length} documents`);
    }
    const result = await this.client.upsert(
      documents.map((doc, i) => {
        const id = ids?.[i] ?? doc.id;
        return {
          ...(id !== undefined && id !== null && id !== "" ? { id } : {}),
          text: doc.pageContent,
          metadata: doc.metadata ?? {},
          ...(vectors !== undefined ? { vector: vectors[i] } : {}),
        };
      }),
    );
    return result.ids;
  }

  // --- reads ---------------------------------------------------------------------------------

  /** The `k` nearest documents to a vector, with tvs's scores. */
  async similaritySearchVectorWithScore(query: number[], k: number, filter?: this["FilterType"]): Promise<[DocumentInterface, number][]> {
    return this.hits({ vector: query, topK: k, ...(filter ? { filter } : {}) });
  }

  /** The `k` nearest documents to a query text (embedded by the tenant's model, or here), with tvs's scores. */
  override async similaritySearchWithScore(query: string, k = 4, filter?: this["FilterType"]): Promise<[DocumentInterface, number][]> {
    return this.hits({ ...(await this.queryOf(query)), topK: k, ...(filter ? { filter } : {}) });
  }

  /** The `k` nearest documents to a query text. */
  override async similaritySearch(query: string, k = 4, filter?: this["FilterType"]): Promise<DocumentInterface[]> {
    return (await this.similaritySearchWithScore(query, k, filter)).map(([doc]) => doc);
  }

  /** Maximal marginal relevance, computed by tvs (`mmr` of `POST /v1/search`). */
  override async maxMarginalRelevanceSearch(
    query: string,
    options: MaxMarginalRelevanceSearchOptions<this["FilterType"]>,
  ): Promise<DocumentInterface[]> {
    const hits = await this.hits({
      ...(await this.queryOf(query)),
      topK: options.k ?? 4,
      ...(options.filter ? { filter: options.filter } : {}),
      mmr: { fetchK: options.fetchK ?? DEFAULT_FETCH_K, lambdaMult: options.lambda ?? DEFAULT_LAMBDA },
    });
    return hits.map(([doc]) => doc);
  }

  private async queryOf(query: string): Promise<Pick<SearchInput, "query" | "vector">> {
    return this.serverEmbeds ? { query } : { vector: await this.embeddings.embedQuery(query) };
  }

  private async hits(input: SearchInput): Promise<[DocumentInterface, number][]> {
    const hits = await this.client.search(input);
    return hits.map((hit) => [documentOf(hit), hit.score]);
  }

  // --- construction --------------------------------------------------------------------------

  /**
   * Adds `texts` to the tenant of `dbConfig.client` and returns its store. `metadatas` is one
   * object per text, or one for all; `embeddings` `null` lets the tenant's model embed.
   */
  static override async fromTexts(
    texts: string[],
    metadatas: object[] | object,
    embeddings: EmbeddingsInterface | null,
    dbConfig: TvsFromArgs,
  ): Promise<TvsVectorStore> {
    const documents = texts.map(
      (text, i) =>
        new Document({
          pageContent: text,
          metadata: (Array.isArray(metadatas) ? (metadatas[i] ?? {}) : (metadatas ?? {})) as Record<string, unknown>,
        }),
    );
    return TvsVectorStore.fromDocuments(documents, embeddings, dbConfig);
  }

  /** Adds `docs` to the tenant of `dbConfig.client` and returns its store. */
  static override async fromDocuments(
    docs: DocumentInterface[],
    embeddings: EmbeddingsInterface | null,
    dbConfig: TvsFromArgs,
  ): Promise<TvsVectorStore> {
    const store = new TvsVectorStore(embeddings, dbConfig);
    await store.addDocuments(docs, dbConfig.ids === undefined ? {} : { ids: dbConfig.ids });
    return store;
  }
}

function documentOf(hit: SearchHit): Document {
  return new Document({ id: hit.id, pageContent: hit.text ?? "", metadata: hit.metadata ?? {} });
}
