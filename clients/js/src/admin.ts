/**
 * `TvsAdmin`: tvs's admin API with the admin key: tenants, their keys and limits, signing keys
 * for tenant tokens, the pool of open stores.
 */

import { TvsError } from "./errors.js";
import { type ClientOptions, type RequestOptions, Transport, camelize, segment } from "./http.js";
import type {
  CreateTenantInput,
  CreatedSigningKey,
  CreatedTenant,
  LimitsPatch,
  NodeInfo,
  PoolStats,
  SigningKey,
  TenantInfo,
  TenantPage,
} from "./types.js";

export interface TvsAdminOptions extends ClientOptions {
  /** The admin key (`TVS_ADMIN_KEY` of the server, or its `user_data/.admin_key`). */
  adminKey: string;
}

export class TvsAdmin {
  private readonly http: Transport;

  constructor(options: TvsAdminOptions) {
    this.http = new Transport(options, options?.adminKey);
  }

  /** tvs's base URL, without a trailing slash. */
  get baseUrl(): string {
    return this.http.baseUrl;
  }

  /**
   * Creates a tenant and returns its API key (shown once). With `existOk`, a tenant that exists
   * already is not an error: the answer is then `null` (its key is not shown again), which makes
   * "create on first use" safe from many workers at once.
   */
  async createTenant(input: CreateTenantInput, options: RequestOptions & { existOk: true }): Promise<CreatedTenant | null>;
  async createTenant(input: CreateTenantInput, options?: RequestOptions & { existOk?: false }): Promise<CreatedTenant>;
  async createTenant(input: CreateTenantInput, options?: RequestOptions & { existOk?: boolean }): Promise<CreatedTenant | null>;
  async createTenant(
    input: CreateTenantInput,
    options: RequestOptions & { existOk?: boolean } = {},
  ): Promise<CreatedTenant | null> {
    const body: Record<string, unknown> = { id: input.id };
    const fields: [keyof CreateTenantInput, string][] = [
      ["dims", "dims"],
      ["metric", "metric"],
      ["scalar", "scalar"],
      ["embeddingModel", "embedding_model"],
      ["maxDocuments", "max_documents"],
      ["maxBytes", "max_bytes"],
    ];
    for (const [from, to] of fields) {
      if (input[from] !== undefined) body[to] = input[from];
    }
    try {
      const { data } = await this.http.request({ ...options, method: "POST", path: "/v1/tenants", json: body });
      const created = data as { id: string; api_key: string };
      return { id: created.id, apiKey: created.api_key };
    } catch (error) {
      if (options.existOk && error instanceof TvsError && error.status === 409) return null;
      throw error;
    }
  }

  /** One sorted page of tenant ids (`limit` default 100, at most 1000), from after `after`. */
  async listTenants(page: { after?: string; limit?: number } = {}, options: RequestOptions = {}): Promise<TenantPage> {
    const { data } = await this.http.request({
      ...options,
      method: "GET",
      path: "/v1/tenants",
      query: { after: page.after, limit: page.limit },
    });
    return camelize<TenantPage>(data);
  }

  /** Every tenant id, following the pages. */
  async listAllTenants(options: RequestOptions = {}): Promise<string[]> {
    const ids: string[] = [];
    let after: string | undefined;
    for (;;) {
      const page = await this.listTenants(after === undefined ? { limit: 1000 } : { after, limit: 1000 }, options);
      ids.push(...page.tenants);
      if (!page.nextAfter) return ids;
      after = page.nextAfter;
    }
  }

  /** The tenant's limits and its usage against them. */
  async getTenant(id: string, options: RequestOptions = {}): Promise<TenantInfo> {
    const { data } = await this.http.request({ ...options, method: "GET", path: `/v1/tenants/${segment(id)}` });
    return camelize<TenantInfo>(data);
  }

  /** Changes limits: a field given sets it, `null` removes it, one left out is kept. Returns the tenant as `getTenant` shows it. */
  async setLimits(id: string, limits: LimitsPatch, options: RequestOptions = {}): Promise<TenantInfo> {
    const body: Record<string, unknown> = {};
    const fields: [keyof LimitsPatch, string][] = [
      ["requestsPerSecond", "requests_per_second"],
      ["ingestBytesPerSecond", "ingest_bytes_per_second"],
      ["maxDocuments", "max_documents"],
      ["maxBytes", "max_bytes"],
    ];
    for (const [from, to] of fields) {
      if (limits[from] !== undefined) body[to] = limits[from];
    }
    const { data } = await this.http.request({ ...options, method: "PATCH", path: `/v1/tenants/${segment(id)}`, json: body });
    return camelize<TenantInfo>(data);
  }

  /** Deletes the tenant with all its data and plugins. */
  async deleteTenant(id: string, options: RequestOptions = {}): Promise<void> {
    await this.http.request({ ...options, method: "DELETE", path: `/v1/tenants/${segment(id)}` });
  }

  /** A new API key for the tenant; its previous key stops working. */
  async rotateKey(id: string, options: RequestOptions = {}): Promise<CreatedTenant> {
    const { data } = await this.http.request({ ...options, method: "POST", path: `/v1/tenants/${segment(id)}/keys` });
    const created = data as { id: string; api_key: string };
    return { id: created.id, apiKey: created.api_key };
  }

  /** A new signing key for tenant tokens; its `secret` is shown only here. */
  async createSigningKey(options: RequestOptions = {}): Promise<CreatedSigningKey> {
    const { data } = await this.http.request({ ...options, method: "POST", path: "/v1/admin/signing-keys" });
    return camelize<CreatedSigningKey>(data);
  }

  /** Every signing key (never a secret). */
  async listSigningKeys(options: RequestOptions = {}): Promise<SigningKey[]> {
    const { data } = await this.http.request({ ...options, method: "GET", path: "/v1/admin/signing-keys" });
    return camelize<{ signingKeys: SigningKey[] }>(data).signingKeys;
  }

  /** Revokes a signing key: the tokens it signed are refused from now on. */
  async revokeSigningKey(id: string, options: RequestOptions = {}): Promise<SigningKey> {
    const { data } = await this.http.request({ ...options, method: "DELETE", path: `/v1/admin/signing-keys/${segment(id)}` });
    return camelize<SigningKey>(data);
  }

  /** The pool of open tenant stores: hits, misses, evictions, the hit rate. */
  async poolStats(options: RequestOptions = {}): Promise<PoolStats> {
    const { data } = await this.http.request({ ...options, method: "GET", path: "/v1/admin/pool" });
    return camelize<PoolStats>(data);
  }

  /** Drops the expired stores from the pool; returns how many. */
  async cleanupPool(options: RequestOptions = {}): Promise<{ expired: number }> {
    const { data } = await this.http.request({ ...options, method: "POST", path: "/v1/admin/pool/cleanup" });
    return data as { expired: number };
  }

  /** This node: its name, where its tenants live, and (with `TVS_STORAGE`) the tenants it holds. */
  async nodeInfo(options: RequestOptions = {}): Promise<NodeInfo> {
    const { data } = await this.http.request({ ...options, method: "GET", path: "/v1/admin/node" });
    return data as NodeInfo;
  }
}
