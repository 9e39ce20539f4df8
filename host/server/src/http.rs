//! The HTTP API of `tvs serve` (axum). Routes and shapes follow the contract in DESIGN.md.
//!
//! Invariants:
//! - The tenant of a data request comes from its `Authorization: Bearer` key alone.
//! - Every data request (ingest, search, get, delete, stats) runs in a fresh guest instance
//!   bound to the key's tenant ([`tvs_runtime`]); admin routes are native. Blocking work (files, guests) runs on the blocking thread pool.
//! - Every error is `{"error":{"code","message"}}` with a fitting status; no panic or wasm
//!   backtrace reaches a client, and a refused request changes nothing.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use utoipa::{OpenApi, ToSchema};

use crate::auth::{AuthError, Keys};
use crate::metrics::Metrics;
use crate::rates::{RateLimits, Rates};
use crate::tokens::{Scope, SigningKeyError};
use tvs_guest_core::filter::Filter;
use tvs_guest_core::openai::Input;
use tvs_runtime::{Chunking, GuestError, IngestDocument, IngestRequest, Mmr, RequestErrorKind, Runtime, SearchRequest};
use tvs_store::config::{Metric, ScalarKind, Settings, StoreConfig};
use tvs_store::pool::Pool;
use tvs_store::remote::RemoteError;
use tvs_store::store::{OpenError, Quota, TenantStore};
use tvs_store::tenant::{TenantError, TenantId};

/// Limits of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Largest number of documents in one ingest request.
    pub max_batch: usize,
    /// Largest `top_k`.
    pub max_top_k: u32,
    /// Time a request may take before it is answered 504.
    pub request_timeout: Duration,
    /// API requests served at once; more are answered 503 with `Retry-After`.
    pub max_in_flight: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 << 20,
            max_batch: 10_000,
            max_top_k: 1_000,
            request_timeout: Duration::from_secs(60),
            // Below the runtime's instance slots, so a request never waits for a guest slot.
            max_in_flight: 48,
        }
    }
}

/// Shared state of the server.
#[derive(Debug)]
pub struct App {
    pub pool: Arc<Pool>,
    pub runtime: Arc<Runtime>,
    pub keys: Keys,
    pub settings: Settings,
    pub limits: ServerLimits,
    /// Tenant plugins; `None` in embedded uses that do not offer them (their routes answer 503).
    pub plugins: Option<Arc<tvs_runtime::plugins::Plugins>>,
    /// This node's name, sent as `X-Tvs-Node` on every response (to see where a proxy routed).
    pub node: Option<HeaderValue>,
    /// Per-tenant request and ingest rates.
    pub rates: Rates,
    metrics: Metrics,
    in_flight: tokio::sync::Semaphore,
}

impl App {
    pub fn new(pool: Arc<Pool>, runtime: Arc<Runtime>, keys: Keys, settings: Settings, limits: ServerLimits) -> Self {
        App {
            rates: Rates::new(pool.data_dir().clone(), RateLimits::default()),
            pool,
            runtime,
            keys,
            settings,
            metrics: Metrics::default(),
            in_flight: tokio::sync::Semaphore::new(limits.max_in_flight.max(1)),
            limits,
            plugins: None,
            node: None,
        }
    }

    /// Names this node in an `X-Tvs-Node` header on every response.
    pub fn with_node(mut self, node: &str) -> Self {
        self.node = HeaderValue::from_str(node).ok();
        self
    }

    /// The rate limits new tenants get.
    pub fn with_default_rates(mut self, defaults: RateLimits) -> Self {
        self.rates = Rates::new(self.pool.data_dir().clone(), defaults);
        self
    }

    /// Offers tenant plugins (`/v1/plugins`, `/v1/fn`).
    pub fn with_plugins(mut self, plugins: Arc<tvs_runtime::plugins::Plugins>) -> Self {
        self.plugins = Some(plugins);
        self
    }
}

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds for `Retry-After` (503 and 429 default to 1).
    retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub(crate) fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server failed to complete the request",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE || self.status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(self.retry_after.unwrap_or(1)));
        }
        response
    }
}

pub(crate) fn from_json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send Content-Type: application/json",
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the request body is larger than the server accepts",
        ),
        other => ApiError::bad_request(format!("malformed JSON body: {}", other.body_text())),
    }
}

/// The answer when another node holds the tenant: the client retries, and the proxy sends the
/// retry to the owner (or this node takes the tenant back if the proxy routes it here).
fn tenant_moved(why: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "tenant_moved",
        format!("another node holds this tenant now ({why}); retry the request"),
    )
}

fn from_remote(error: RemoteError) -> ApiError {
    match error {
        RemoteError::Fenced(why) => tenant_moved(&why),
        RemoteError::Unavailable(why) => {
            tracing::error!(error = %why, "object storage unavailable");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                "object storage is unavailable; nothing was changed; retry shortly",
            )
        }
        RemoteError::Corrupt(why) => {
            tracing::error!(error = %why, "a tenant's objects are damaged");
            ApiError::internal()
        }
    }
}

fn from_open(error: OpenError) -> ApiError {
    match error {
        OpenError::Remote(e) => from_remote(e),
        OpenError::NotFound(_) => ApiError::not_found("the tenant of this key no longer exists"),
        OpenError::Locked(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "the tenant is open in another tvs process",
        ),
        other => {
            tracing::error!(error = ?other, "opening a tenant store failed");
            ApiError::internal()
        }
    }
}

fn from_guest(error: GuestError) -> ApiError {
    match error {
        GuestError::Request { kind, message } => match kind {
            RequestErrorKind::InvalidInput | RequestErrorKind::NoEmbedder => ApiError::bad_request(message),
            // A storage quota: the request is too large for what the tenant may still hold.
            RequestErrorKind::QuotaExceeded(_) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "quota_exceeded", message)
            }
            RequestErrorKind::TenantDeleted => ApiError::not_found(message),
            RequestErrorKind::Internal => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
        },
        GuestError::Deadline(_) => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "guest_deadline", error.to_string()),
        GuestError::Memory(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "guest_memory", error.to_string()),
        GuestError::Trap(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "guest_trap", error.to_string()),
        GuestError::Busy => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", error.to_string()),
        other => {
            tracing::error!(error = ?other, "guest setup failed");
            ApiError::internal()
        }
    }
}

/// Maps a guest failure to a response, counting the failures of the sandbox.
fn guest_failed(app: &App, error: GuestError) -> ApiError {
    match &error {
        GuestError::Deadline(_) => app.metrics.guest_failure("deadline"),
        GuestError::Memory(_) => app.metrics.guest_failure("memory"),
        GuestError::Trap(_) => app.metrics.guest_failure("trap"),
        GuestError::Busy => app.metrics.guest_failure("busy"),
        GuestError::Request {
            kind: RequestErrorKind::QuotaExceeded(quota),
            ..
        } => app.metrics.quota_exceeded(match quota {
            Quota::Documents => "max_documents",
            Quota::Bytes => "max_bytes",
        }),
        _ => {}
    }
    from_guest(error)
}

fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send Authorization: Bearer <key>",
            )
        })
}

fn require_admin(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    if app.keys.is_admin(bearer(headers)?) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this route needs the admin key",
        ))
    }
}

/// The tenant an admin route names in its path, once the caller is the admin.
fn admin_tenant(app: &App, headers: &HeaderMap, id: &str) -> Result<TenantId, ApiError> {
    require_admin(app, headers)?;
    TenantId::new(id).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// 404 unless the tenant exists (checked before anything is written for it).
fn require_tenant(app: &App, id: &TenantId) -> Result<(), ApiError> {
    if app.pool.data_dir().tenant_exists(id).map_err(from_remote)? {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("tenant {id} does not exist")))
    }
}

/// The tenant a request's key or token is for, when it allows `scope` there.
pub(crate) fn tenant_for(app: &App, headers: &HeaderMap, scope: Scope) -> Result<TenantId, ApiError> {
    let bearer = bearer(headers)?;
    // With tenants in object storage a check may read the bucket (a key hash or the signing
    // keys, at most every few seconds): the worker hands its other tasks on meanwhile.
    let granted = if app.pool.data_dir().catalog().is_some() {
        tokio::task::block_in_place(|| app.keys.grant(bearer))
    } else {
        app.keys.grant(bearer)
    };
    let grant = granted.map_err(|e| {
        app.metrics.auth_refused(match &e {
            AuthError::Key => "key",
            AuthError::Token(_) => "token",
            AuthError::Unavailable(e) => return from_remote(e.clone()),
        });
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
    })?;
    if !grant.scopes.allows(scope) {
        app.metrics.auth_refused("scope");
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            scope.missing_message(),
        ));
    }
    Ok(grant.tenant)
}

/// Runs blocking work off the async threads, under the request timeout.
async fn blocking<T: Send + 'static>(
    app: &App,
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::time::timeout(app.limits.request_timeout, tokio::task::spawn_blocking(work)).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => {
            tracing::error!(error = %join, "request handler panicked");
            Err(ApiError::internal())
        }
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            "the request took too long",
        )),
    }
}

/// Checks a request's filter here, so a bad one is a 400 before any store is opened, and returns
/// it as the JSON text the guest takes.
fn checked_filter(filter: Option<&Value>) -> Result<Option<String>, ApiError> {
    let Some(filter) = filter else { return Ok(None) };
    Filter::parse(filter).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Some(filter.to_string()))
}

/// Runs `work` with the store of an authenticated tenant, on the blocking pool under the
/// request timeout.
pub(crate) async fn with_store<T: Send + 'static>(
    app: &Arc<App>,
    tenant: TenantId,
    work: impl FnOnce(&App, Arc<TenantStore>) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    with_store_metered(app, tenant, 0, work).await
}

/// [`with_store`] for a request carrying `ingest_bytes` of documents, counted against the
/// tenant's ingest rate.
pub(crate) async fn with_store_metered<T: Send + 'static>(
    app: &Arc<App>,
    tenant: TenantId,
    ingest_bytes: u64,
    work: impl FnOnce(&App, Arc<TenantStore>) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let shared = app.clone();
    blocking(app, move || {
        shared.rates.admit(&tenant, ingest_bytes).map_err(|refusal| {
            shared.metrics.rate_limited(refusal.limit);
            ApiError {
                retry_after: Some(refusal.retry_after_header()),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    refusal.message(tenant.as_str()),
                )
            }
        })?;
        let store = shared.pool.get(&tenant).map_err(from_open)?;
        // A node that lost the tenant while paused or partitioned must not answer from its
        // cache: at most `TVS_OWNER_CHECK_MS` after a takeover it finds out here. Either way
        // the store then counts as poisoned, and the pool opens the tenant afresh next time.
        store.check_owner().map_err(from_remote)?;
        let result = work(&shared, store.clone());
        if result.is_err() && store.remote().is_some() {
            if store.is_fenced() {
                return Err(tenant_moved("a write found the tenant taken over"));
            }
            if store.is_poisoned() {
                // A WAL object could not be written; the next request reopens the tenant.
                return Err(from_remote(RemoteError::Unavailable(
                    "a write could not reach object storage".into(),
                )));
            }
        }
        result
    })
    .await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    id: String,
    #[serde(default)]
    dims: Option<usize>,
    /// `cos` (default), `ip` or `l2`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    metric: Option<Metric>,
    /// `i8` (default), `f16` or `f32`: how the HNSW graph stores vectors (a quantised graph's
    /// candidates are re-ranked with the exact f32 vectors).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    scalar: Option<ScalarKind>,
    #[serde(default)]
    embedding_model: Option<String>,
    #[serde(default)]
    max_documents: Option<u64>,
    /// The most bytes the tenant's document log may hold (see `TenantPatch`).
    #[serde(default)]
    max_bytes: Option<u64>,
}

#[utoipa::path(post, path = "/v1/tenants", request_body = CreateTenant, responses((status = 201, description = "the tenant and its API key, shown once"), (status = 409, description = "exists")), security(("admin" = [])))]
async fn create_tenant(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Json<CreateTenant>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require_admin(&app, &headers)?;
    let Json(body) = body.map_err(from_json_rejection)?;
    let id = TenantId::new(&body.id).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut config = StoreConfig::new(
        body.dims.unwrap_or(384),
        body.metric.unwrap_or(Metric::Cos),
        body.scalar.unwrap_or_default(),
        body.embedding_model.as_deref().unwrap_or(&app.settings.embedding_model),
    );
    check_quotas(body.max_documents, body.max_bytes)?;
    config.max_documents = body.max_documents;
    config.max_bytes = body.max_bytes;
    let app2 = app.clone();
    let key = blocking(&app, move || {
        app2.pool.create_tenant(&id, &config).map_err(|e| match e {
            TenantError::AlreadyExists(_) => ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            TenantError::InvalidConfig(_) | TenantError::InvalidId(_) => ApiError::bad_request(e.to_string()),
            TenantError::Remote(e) => from_remote(e),
            other => {
                tracing::error!(error = ?other, "creating a tenant failed");
                ApiError::internal()
            }
        })?;
        let defaults = app2.rates.defaults();
        // In a bucket, limits an earlier tenant of this id left behind are replaced too.
        if (defaults != RateLimits::default() || app2.pool.data_dir().catalog().is_some())
            && let Err(e) = app2.rates.set(&id, defaults)
        {
            // A tenant without its limits is not created: take it back, so a retry starts over.
            if let Err(undo) = app2.pool.delete_tenant(&id) {
                tracing::error!(tenant = %id, error = %undo, "removing a tenant whose limits could not be written failed");
            }
            return Err(limits_failed(e));
        }
        let key = app2.keys.issue(&id).map_err(|e| {
            tracing::error!(error = %e, "issuing a key failed");
            ApiError::internal()
        })?;
        Ok(json!({"id": id.as_str(), "api_key": key}))
    })
    .await?;
    Ok((StatusCode::CREATED, Json(key)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
struct ListQuery {
    after: Option<String>,
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/tenants", params(ListQuery), responses((status = 200, description = "a sorted page of tenant ids")), security(("admin" = [])))]
async fn list_tenants(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&app, &headers)?;
    let app2 = app.clone();
    blocking(&app, move || {
        let page = app2
            .pool
            .data_dir()
            .list_tenants(query.after.as_deref(), query.limit.unwrap_or(100).min(1000))
            .map_err(|e| match e {
                TenantError::Remote(e) => from_remote(e),
                other => {
                    tracing::error!(error = ?other, "listing tenants failed");
                    ApiError::internal()
                }
            })?;
        Ok(Json(json!({"tenants": page.tenants, "next_after": page.next_after})))
    })
    .await
}

#[utoipa::path(delete, path = "/v1/tenants/{id}", params(("id" = String, Path)), responses((status = 204, description = "deleted with all its data"), (status = 404, description = "no such tenant")), security(("admin" = [])))]
async fn delete_tenant(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = admin_tenant(&app, &headers, &id)?;
    let app2 = app.clone();
    blocking(&app, move || {
        app2.rates.forget(&id);
        app2.pool.delete_tenant(&id).map_err(|e| match e {
            TenantError::NotFound(_) => ApiError::not_found(e.to_string()),
            TenantError::Busy(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", e.to_string()),
            TenantError::Remote(e) => from_remote(e),
            other => {
                tracing::error!(error = ?other, "deleting a tenant failed");
                ApiError::internal()
            }
        })
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PATCH /v1/tenants/{id}`: fields present are set (`null` removes the limit), others kept.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct TenantPatch {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<f64>)]
    requests_per_second: Option<Option<f64>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<f64>)]
    ingest_bytes_per_second: Option<Option<f64>>,
    /// The most live documents the tenant may hold (new ones past it get 413).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>)]
    max_documents: Option<Option<u64>>,
    /// The most bytes the tenant's document log may hold: every document whole (vector, text,
    /// metadata as stored); replaced and deleted ones until the log is compacted, which a write
    /// past the quota does first. A write that would pass it gets 413.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>)]
    max_bytes: Option<Option<u64>>,
}

/// A quota of 0 would refuse every write; no quota is said by leaving it out (or `null`).
fn check_quotas(max_documents: Option<u64>, max_bytes: Option<u64>) -> Result<(), ApiError> {
    for (name, limit) in [("max_documents", max_documents), ("max_bytes", max_bytes)] {
        if limit == Some(0) {
            return Err(ApiError::bad_request(format!(
                "{name} must be at least 1 (leave it out or send null for no quota)"
            )));
        }
    }
    Ok(())
}

/// A field that is present, `null` or not: `Some(None)` for `null`.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

fn tenant_view(app: &App, id: &TenantId) -> Result<Value, ApiError> {
    require_tenant(app, id)?;
    let mut store = app.pool.get(id).map_err(from_open)?;
    // A node another took the tenant from must not show what it last held: it takes it back.
    if store.check_owner().is_err() {
        store = app.pool.get(id).map_err(from_open)?;
    }
    let info = store.info();
    Ok(json!({
        "id": id.as_str(),
        "rate_limits": app.rates.limits(id),
        "max_documents": store.max_documents(),
        "max_bytes": store.max_bytes(),
        "usage": {
            "documents": info.count, "stored_bytes": info.log_bytes,
            "vector_bytes": info.raw_vector_bytes, "memory_bytes": info.memory_bytes,
        },
    }))
}

#[utoipa::path(get, path = "/v1/tenants/{id}", params(("id" = String, Path)), responses((status = 200, description = "the tenant's limits and usage"), (status = 404, description = "no such tenant")), security(("admin" = [])))]
async fn get_tenant(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = admin_tenant(&app, &headers, &id)?;
    let app2 = app.clone();
    blocking(&app, move || tenant_view(&app2, &id).map(Json)).await
}

#[utoipa::path(patch, path = "/v1/tenants/{id}", params(("id" = String, Path)), request_body = TenantPatch, responses((status = 200, description = "the tenant's limits and usage after the change"), (status = 404, description = "no such tenant")), security(("admin" = [])))]
async fn patch_tenant(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<TenantPatch>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = admin_tenant(&app, &headers, &id)?;
    let Json(patch) = body.map_err(from_json_rejection)?;
    let app2 = app.clone();
    blocking(&app, move || {
        require_tenant(&app2, &id)?;
        let mut limits = app2.rates.limits(&id);
        if let Some(v) = patch.requests_per_second {
            limits.requests_per_second = v;
        }
        if let Some(v) = patch.ingest_bytes_per_second {
            limits.ingest_bytes_per_second = v;
        }
        limits.validate().map_err(ApiError::bad_request)?;
        check_quotas(patch.max_documents.flatten(), patch.max_bytes.flatten())?;
        let mut before = None;
        if patch.max_documents.is_some() || patch.max_bytes.is_some() {
            // A node that lost the tenant to another finds out here and takes it back once.
            for attempt in 0..2 {
                let store = app2.pool.get(&id).map_err(from_open)?;
                before = Some((store.max_documents(), store.max_bytes()));
                match store.set_quotas(patch.max_documents, patch.max_bytes) {
                    Ok(()) => break,
                    Err(e) if attempt == 0 && store.is_poisoned() => {
                        tracing::info!(tenant = %id, error = %e, "taking the tenant back to change its quotas");
                    }
                    Err(e) => return Err(limits_failed(e)),
                }
            }
        }
        if let Err(e) = app2.rates.set(&id, limits) {
            // Nothing half-applied: the quotas go back to what they were.
            if let Some((documents, bytes)) = before
                && let Err(undo) = app2
                    .pool
                    .get(&id)
                    .map_err(|e| io::Error::other(e.to_string()))
                    .and_then(|store| store.set_quotas(Some(documents), Some(bytes)))
            {
                tracing::error!(tenant = %id, error = %undo, "restoring the quotas after a failed rate change failed");
            }
            return Err(limits_failed(e));
        }
        tenant_view(&app2, &id).map(Json)
    })
    .await
}

#[utoipa::path(post, path = "/v1/tenants/{id}/keys", params(("id" = String, Path)), responses((status = 200, description = "a new key; the old one is revoked")), security(("admin" = [])))]
async fn rotate_key(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = admin_tenant(&app, &headers, &id)?;
    let app2 = app.clone();
    blocking(&app, move || {
        require_tenant(&app2, &id)?;
        let key = app2.keys.issue(&id).map_err(|_| ApiError::internal())?;
        Ok(Json(json!({"id": id.as_str(), "api_key": key})))
    })
    .await
}

/// A failed write of a tenant's limits: object storage's own errors as such, else an internal
/// error (logged).
fn limits_failed(e: io::Error) -> ApiError {
    if let Some(remote) = e.get_ref().and_then(|inner| inner.downcast_ref::<RemoteError>()) {
        return from_remote(remote.clone());
    }
    tracing::error!(error = %e, "writing a tenant's limits failed");
    ApiError::internal()
}

fn signing_key_failed(e: SigningKeyError) -> ApiError {
    match e {
        SigningKeyError::Remote(e) => from_remote(e),
        SigningKeyError::Io(e) => {
            tracing::error!(error = %e, "storing the signing keys failed");
            ApiError::internal()
        }
    }
}

#[utoipa::path(post, path = "/v1/admin/signing-keys", responses((status = 201, description = "a new signing key for tenant tokens; `secret` (`tvs_sk.{kid}.{key}`) is shown once"), (status = 503, description = "object storage is unavailable")), security(("admin" = [])))]
async fn create_signing_key(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require_admin(&app, &headers)?;
    let app2 = app.clone();
    blocking(&app, move || {
        let (info, secret) = app2.keys.signing().create().map_err(signing_key_failed)?;
        Ok((
            StatusCode::CREATED,
            Json(json!({"id": info.id, "created_at": info.created_at, "secret": secret})),
        ))
    })
    .await
}

#[utoipa::path(get, path = "/v1/admin/signing-keys", responses((status = 200, description = "every signing key (id, created_at, revoked_at), never a secret")), security(("admin" = [])))]
async fn list_signing_keys(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    require_admin(&app, &headers)?;
    let app2 = app.clone();
    blocking(&app, move || {
        let keys = app2.keys.signing().list().map_err(signing_key_failed)?;
        Ok(Json(json!({"signing_keys": keys})))
    })
    .await
}

#[utoipa::path(delete, path = "/v1/admin/signing-keys/{id}", params(("id" = String, Path)), responses((status = 200, description = "revoked: tokens it signed are refused from now on"), (status = 404, description = "no such key")), security(("admin" = [])))]
async fn revoke_signing_key(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&app, &headers)?;
    let app2 = app.clone();
    blocking(&app, move || {
        match app2.keys.signing().revoke(&id).map_err(signing_key_failed)? {
            Some(info) => Ok(Json(json!(info))),
            None => Err(ApiError::not_found(format!("signing key {id} does not exist"))),
        }
    })
    .await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct DocumentIn {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    text: Option<String>,
    /// A JSON object.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Map<String, Value>>,
    #[serde(default)]
    vector: Option<Vec<f32>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ChunkIn {
    size: u32,
    #[serde(default)]
    overlap: u32,
}

impl From<DocumentIn> for IngestDocument {
    fn from(d: DocumentIn) -> Self {
        IngestDocument {
            id: d.id,
            text: d.text,
            metadata: d.metadata.map(|m| Value::Object(m).to_string()),
            vector: d.vector,
        }
    }
}

/// Documents in the request shape of `POST /v1/documents`.
pub(crate) fn ingest_documents(value: Value) -> Result<Vec<IngestDocument>, ApiError> {
    let documents: Vec<DocumentIn> =
        serde_json::from_value(value).map_err(|e| ApiError::bad_request(format!("documents: {e}")))?;
    Ok(documents.into_iter().map(IngestDocument::from).collect())
}

/// A document in the request shape of `POST /v1/documents`.
pub(crate) fn ingest_document_json(doc: IngestDocument) -> Value {
    let metadata: Option<Value> = doc.metadata.and_then(|m| serde_json::from_str(&m).ok());
    json!({"id": doc.id, "text": doc.text, "metadata": metadata, "vector": doc.vector})
}

/// Hits in the response shape of `POST /v1/search`.
pub(crate) fn hits_from_json(value: Value) -> Result<Vec<tvs_runtime::Hit>, ApiError> {
    #[derive(Deserialize)]
    struct HitIn {
        id: String,
        #[serde(default)]
        score: f32,
        #[serde(default)]
        distance: f32,
        #[serde(default)]
        text: String,
        #[serde(default)]
        metadata: Map<String, Value>,
    }
    let hits: Vec<HitIn> = serde_json::from_value(value).map_err(|e| ApiError::bad_request(format!("hits: {e}")))?;
    Ok(hits
        .into_iter()
        .map(|h| tvs_runtime::Hit {
            id: h.id,
            score: h.score,
            distance: h.distance,
            text: h.text,
            metadata: Value::Object(h.metadata).to_string(),
            vector: None,
        })
        .collect())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpsertBody {
    documents: Vec<DocumentIn>,
    #[serde(default)]
    chunk: Option<ChunkIn>,
}

#[utoipa::path(post, path = "/v1/documents", request_body = UpsertBody, responses((status = 200, description = "ids stored, in order"), (status = 400, description = "invalid input; nothing stored")), security(("tenant" = [])))]
async fn upsert_documents(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Json<UpsertBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant_for(&app, &headers, Scope::Write)?;
    // The request body's size is what the ingest rate counts (the body is bounded by
    // `max_body_bytes`, so a missing length counts as that bound).
    let ingest_bytes = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(app.limits.max_body_bytes as u64);
    let Json(body) = body.map_err(from_json_rejection)?;
    if body.documents.is_empty() {
        return Err(ApiError::bad_request("documents is empty"));
    }
    if body.documents.len() > app.limits.max_batch {
        return Err(ApiError::bad_request(format!(
            "at most {} documents per request",
            app.limits.max_batch
        )));
    }
    let request = IngestRequest {
        documents: body.documents.into_iter().map(IngestDocument::from).collect(),
        chunk: body.chunk.map(|c| Chunking {
            size: c.size,
            overlap: c.overlap,
        }),
    };
    with_store_metered(&app, tenant, ingest_bytes, move |app2, store| {
        let mut request = request;
        if let Some(plugins) = &app2.plugins {
            request.documents = plugins
                .before_ingest(&store, request.documents)
                .map_err(crate::plugin_routes::plugin_error)?;
        }
        let response = app2
            .runtime
            .ingest(store, &request)
            .map_err(|e| guest_failed(app2, e))?;
        Ok(Json(json!({"ids": response.ids, "embedded": response.embedded})))
    })
    .await
}

pub(crate) fn hit_json(hit: tvs_runtime::Hit) -> Value {
    let metadata: Value = serde_json::from_str(&hit.metadata).unwrap_or_else(|_| json!({}));
    json!({"id": hit.id, "score": hit.score, "distance": hit.distance, "text": hit.text, "metadata": metadata})
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct MmrIn {
    #[serde(default = "default_fetch_k")]
    fetch_k: u32,
    #[serde(default = "default_lambda")]
    lambda_mult: f32,
}

fn default_fetch_k() -> u32 {
    20
}
fn default_lambda() -> f32 {
    0.5
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SearchBody {
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    vector: Option<Vec<f32>>,
    #[serde(default)]
    top_k: Option<u32>,
    /// A Mongo-style metadata filter.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    filter: Option<Value>,
    #[serde(default)]
    mmr: Option<MmrIn>,
    /// The name of one of the tenant's re-ranker plugins, which re-orders or filters the hits.
    #[serde(default)]
    rerank: Option<String>,
}

#[utoipa::path(post, path = "/v1/search", request_body = SearchBody, responses((status = 200, description = "hits: id, score, distance, text, metadata")), security(("tenant" = [])))]
async fn search(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Json<SearchBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant_for(&app, &headers, Scope::Read)?;
    let Json(body) = body.map_err(from_json_rejection)?;
    let top_k = body.top_k.unwrap_or(app.settings.default_top_k as u32);
    if top_k == 0 || top_k > app.limits.max_top_k {
        return Err(ApiError::bad_request(format!(
            "top_k must be between 1 and {}",
            app.limits.max_top_k
        )));
    }
    let filter = checked_filter(body.filter.as_ref())?;
    let rerank = body.rerank;
    let query_text = body.query.clone();
    let request = SearchRequest {
        query: body.query,
        vector: body.vector,
        top_k,
        filter,
        mmr: body.mmr.map(|m| Mmr {
            fetch_k: m.fetch_k.min(app.limits.max_top_k * 10),
            lambda_mult: m.lambda_mult,
        }),
    };
    with_store(&app, tenant, move |app2, store| {
        let mut hits = app2
            .runtime
            .search(store.clone(), &request)
            .map_err(|e| guest_failed(app2, e))?;
        if let Some(name) = rerank {
            hits = crate::plugin_routes::plugins(app2)?
                .call_rerank(store, &name, query_text.as_deref(), &hits)
                .0
                .map_err(crate::plugin_routes::plugin_error)?;
        }
        Ok(Json(
            json!({"hits": hits.into_iter().map(hit_json).collect::<Vec<_>>()}),
        ))
    })
    .await
}

#[utoipa::path(get, path = "/v1/documents/{id}", params(("id" = String, Path)), responses((status = 200, description = "the document"), (status = 404, description = "no such document")), security(("tenant" = [])))]
async fn get_document(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant_for(&app, &headers, Scope::Read)?;
    with_store(&app, tenant, move |app2, store| {
        let doc = app2
            .runtime
            .get(store, std::slice::from_ref(&id))
            .map_err(|e| guest_failed(app2, e))?
            .pop()
            .ok_or_else(|| ApiError::not_found(format!("no document {id:?}")))?;
        let metadata: Value = serde_json::from_str(&doc.metadata).unwrap_or_else(|_| json!({}));
        Ok(Json(json!({"id": doc.id, "text": doc.text, "metadata": metadata})))
    })
    .await
}

#[utoipa::path(delete, path = "/v1/documents/{id}", params(("id" = String, Path)), responses((status = 200, description = "deleted"), (status = 404, description = "no such document")), security(("tenant" = [])))]
async fn delete_document(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant_for(&app, &headers, Scope::Write)?;
    with_store(&app, tenant, move |app2, store| {
        match app2
            .runtime
            .delete(store, std::slice::from_ref(&id), None)
            .map_err(|e| guest_failed(app2, e))?
        {
            0 => Err(ApiError::not_found(format!("no document {id:?}"))),
            n => Ok(Json(json!({"deleted": n}))),
        }
    })
    .await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct DeleteBody {
    #[serde(default)]
    ids: Option<Vec<String>>,
    /// A Mongo-style metadata filter.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    filter: Option<Value>,
}

#[utoipa::path(post, path = "/v1/documents/delete", request_body = DeleteBody, responses((status = 200, description = "how many were deleted")), security(("tenant" = [])))]
async fn delete_documents(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Json<DeleteBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant_for(&app, &headers, Scope::Write)?;
    let Json(body) = body.map_err(from_json_rejection)?;
    let filter = checked_filter(body.filter.as_ref())?;
    if body.ids.is_none() && filter.is_none() {
        return Err(ApiError::bad_request("give ids or filter"));
    }
    with_store(&app, tenant, move |app2, store| {
        let ids = body.ids.unwrap_or_default();
        let deleted = app2
            .runtime
            .delete(store, &ids, filter.as_ref())
            .map_err(|e| guest_failed(app2, e))?;
        Ok(Json(json!({"deleted": deleted})))
    })
    .await
}

#[utoipa::path(get, path = "/v1/stats", responses((status = 200, description = "count, dims, metric, bytes, embedding model")), security(("tenant" = [])))]
async fn stats(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let tenant = tenant_for(&app, &headers, Scope::Read)?;
    let store_tenant = tenant.clone();
    with_store(&app, tenant, move |app2, store| {
        let (max_documents, max_bytes) = (store.max_documents(), store.max_bytes());
        let stored_bytes = max_bytes.map(|_| store.stored_bytes());
        let info = app2.runtime.stats(store).map_err(|e| guest_failed(app2, e))?;
        let metric = match info.metric {
            tvs_runtime::GuestMetric::Cos => "cos",
            tvs_runtime::GuestMetric::Ip => "ip",
            tvs_runtime::GuestMetric::L2 => "l2",
        };
        let mut stats = json!({
            "count": info.count, "dims": info.dims, "metric": metric, "bytes": info.bytes,
            "embedding_model": info.embedding_model,
        });
        // Limits are shown when set, so a tenant without any answers as on Spin (which has none);
        // `count` is the usage against `max_documents`.
        let rates = app2.rates.limits(&store_tenant);
        if rates != RateLimits::default() {
            stats["rate_limits"] = json!(rates);
        }
        if let Some(max) = max_documents {
            stats["max_documents"] = json!(max);
        }
        if let (Some(max), Some(stored)) = (max_bytes, stored_bytes) {
            stats["max_bytes"] = json!(max);
            stats["stored_bytes"] = json!(stored);
        }
        Ok(Json(stats))
    })
    .await
}

/// OpenAI's embeddings request, as its clients send it.
#[derive(Debug, Deserialize, ToSchema)]
struct EmbeddingsBody {
    /// The tenant's model, in any spelling of it (`all-MiniLM-L6-v2`, `all-minilm-l6-v2`,
    /// `sentence-transformers/all-MiniLM-L6-v2`; for `openai:<model>` tenants, `<model>` too);
    /// omitted means the tenant's model. Another model is refused: vectors of two models do not
    /// mix in one tenant.
    #[serde(default)]
    model: Option<String>,
    /// A text, a list of texts, or `cl100k_base` token ids (one list or a list of lists), as
    /// OpenAI takes them; token ids are decoded to text and embedded by the tenant's model.
    #[schema(value_type = Object)]
    input: Value,
    /// `float` (the default) or `base64` (the little-endian f32 bytes, which the `openai` client
    /// asks for unless told otherwise).
    #[serde(default)]
    encoding_format: Option<String>,
    /// If given, must equal the tenant's dimensions: these models cannot shorten their vectors.
    #[serde(default)]
    dimensions: Option<u64>,
    /// The end user, for the caller's own abuse tracking at OpenAI; accepted and not used.
    #[serde(default)]
    #[allow(dead_code)]
    user: Option<String>,
}

/// How `/v1/embeddings` writes each vector.
#[derive(Debug, Clone, Copy)]
enum EncodingFormat {
    Float,
    /// Base64 of the vector's little-endian f32 bytes, as OpenAI sends it.
    Base64,
}

impl EncodingFormat {
    fn parse(format: Option<&str>) -> Result<Self, ApiError> {
        match format {
            None | Some("float") => Ok(Self::Float),
            Some("base64") => Ok(Self::Base64),
            Some(other) => Err(ApiError::bad_request(format!(
                "encoding_format must be \"float\" or \"base64\", got {other:?}"
            ))),
        }
    }

    fn encode(self, vector: Vec<f32>) -> Value {
        match self {
            Self::Float => json!(vector),
            Self::Base64 => {
                use base64::Engine as _;
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
        }
    }
}

/// The texts of an OpenAI `input`: token ids are read as cl100k_base and decoded to text.
fn embedding_inputs(input: Value) -> Result<Vec<String>, ApiError> {
    tvs_guest_core::openai::inputs(input)
        .map_err(ApiError::bad_request)?
        .into_iter()
        .enumerate()
        .map(|(index, input)| match input {
            Input::Text(text) => Ok(text),
            Input::TokenIds(ids) => tvs_embed::text_of_openai_tokens(&ids)
                .map_err(|e| ApiError::bad_request(format!("input[{index}]: {e}"))),
        })
        .collect()
}

#[utoipa::path(post, path = "/v1/embeddings", request_body = EmbeddingsBody, responses((status = 200, description = "OpenAI-shaped embeddings from the tenant's model"), (status = 400, description = "bad input, another model, or a tenant without a model")), security(("tenant" = [])))]
async fn embeddings(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Json<EmbeddingsBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant_for(&app, &headers, Scope::Read)?;
    let Json(body) = body.map_err(from_json_rejection)?;
    let format = EncodingFormat::parse(body.encoding_format.as_deref())?;
    with_store(&app, tenant, move |_, store| {
        // Here, off the async threads: decoding token ids may first build the cl100k table.
        let texts = embedding_inputs(body.input)?;
        let config = store.config();
        let model = config.embedding_model.clone();
        if model == "none" {
            return Err(ApiError::bad_request(
                "this tenant has no embedding model (it stores client vectors)",
            ));
        }
        if let Some(asked) = body.model.as_deref().filter(|asked| !tvs_guest_core::models::names_tenant_model(asked, &model)) {
            return Err(ApiError::bad_request(format!(
                "this tenant embeds with {model}, not {asked:?}: vectors of two models do not mix"
            )));
        }
        if let Some(dims) = body.dimensions.filter(|&d| d != config.dims as u64) {
            return Err(ApiError::bad_request(format!(
                "{model} makes {}-dimensional vectors and cannot shorten them: dimensions must be {} or left out, not {dims}",
                config.dims, config.dims
            )));
        }
        let embedder = tvs_embed::embedder_for(&model).map_err(|e| {
            tracing::warn!(error = %e, "no embedder");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "model_unavailable", e.to_string())
        })?;
        let (vectors, tokens) = embedder.embed_counted(&texts, config.dims).map_err(|e| {
            tracing::warn!(error = %e, "embedding failed");
            ApiError::new(StatusCode::BAD_GATEWAY, "embedding_failed", e.to_string())
        })?;
        let tokens = tokens.unwrap_or(0);
        let data: Vec<Value> = vectors
            .into_iter()
            .enumerate()
            .map(|(index, vector)| json!({"object": "embedding", "index": index, "embedding": format.encode(vector)}))
            .collect();
        Ok(Json(json!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })))
    })
    .await
}

#[utoipa::path(get, path = "/v1/admin/pool", responses((status = 200, description = "pool counters and hit rate")), security(("admin" = [])))]
async fn pool_stats(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    require_admin(&app, &headers)?;
    Ok(Json(
        serde_json::to_value(app.pool.stats()).map_err(|_| ApiError::internal())?,
    ))
}

#[utoipa::path(post, path = "/v1/admin/pool/cleanup", responses((status = 200, description = "how many expired stores were dropped")), security(("admin" = [])))]
async fn pool_cleanup(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    require_admin(&app, &headers)?;
    let app2 = app.clone();
    blocking(&app, move || Ok(Json(json!({"expired": app2.pool.cleanup_expired()})))).await
}

#[utoipa::path(get, path = "/v1/admin/node", responses((status = 200, description = "this node's name, where its tenants live, and the tenants it holds as writer with their epochs")), security(("admin" = [])))]
async fn node_info(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    require_admin(&app, &headers)?;
    let node = app.node.as_ref().and_then(|n| n.to_str().ok()).map(str::to_owned);
    let data = app.pool.data_dir();
    Ok(Json(match data.catalog() {
        Some(catalog) => json!({
            "node": node,
            "storage": catalog.describe(),
            "tenants": catalog.held(),
        }),
        None => json!({
            "node": node,
            "storage": data.root().display().to_string(),
            "tenants": Value::Null,
        }),
    }))
}

#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "alive")))]
async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text")))]
async fn metrics(State(app): State<Arc<App>>) -> String {
    app.metrics.render(&app.pool.stats())
}

async fn count_requests(
    State(app): State<Arc<App>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let _permit = if route.starts_with("/v1/") {
        match app.in_flight.try_acquire() {
            Ok(permit) => Some(permit),
            Err(_) => {
                app.metrics.rejected_busy();
                app.metrics.observe(&route, 503, started.elapsed().as_secs_f64());
                let mut response = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    "the server is at its limit of requests in flight; retry shortly",
                )
                .into_response();
                name_node(&app, &mut response);
                return response;
            }
        }
    } else {
        None
    };
    let mut response = next.run(request).await;
    app.metrics
        .observe(&route, response.status().as_u16(), started.elapsed().as_secs_f64());
    name_node(&app, &mut response);
    response
}

fn name_node(app: &App, response: &mut Response) {
    if let Some(node) = &app.node {
        response.headers_mut().insert("x-tvs-node", node.clone());
    }
}

/// The OpenAPI description, generated from the handlers' annotations.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "tvs", description = "Multi-tenant vector store. Data routes take a tenant key or a tenant token (an HS256 JWT minted with a signing key from `/v1/admin/signing-keys`: header `kid`, claims `tenant`, `scope` = space-separated `read`/`write`/`plugins`, `exp`; 403 `insufficient_scope` when the route needs another scope), admin routes the admin key, both as `Authorization: Bearer`. Errors are {\"error\": {\"code\", \"message\"}}."),
    paths(
        create_tenant, list_tenants, delete_tenant, get_tenant, patch_tenant, rotate_key, create_signing_key, list_signing_keys,
        revoke_signing_key, upsert_documents, search, get_document,
        delete_document, delete_documents, stats, embeddings, pool_stats, pool_cleanup, node_info, healthz, metrics
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        for name in ["admin", "tenant"] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

async fn fallback() -> ApiError {
    ApiError::not_found("no such route")
}

/// The router of the API.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/tenants", post(create_tenant).get(list_tenants))
        .route(
            "/v1/tenants/{id}",
            delete(delete_tenant).get(get_tenant).patch(patch_tenant),
        )
        .route("/v1/tenants/{id}/keys", post(rotate_key))
        .route(
            "/v1/admin/signing-keys",
            post(create_signing_key).get(list_signing_keys),
        )
        .route("/v1/admin/signing-keys/{id}", delete(revoke_signing_key))
        .route("/v1/documents", post(upsert_documents))
        .route("/v1/documents/delete", post(delete_documents))
        .route("/v1/documents/{id}", get(get_document).delete(delete_document))
        .route("/v1/search", post(search))
        .route("/v1/stats", get(stats))
        .route("/v1/embeddings", post(embeddings))
        .merge(crate::plugin_routes::routes(&app))
        .route("/v1/admin/pool", get(pool_stats))
        .route("/v1/admin/pool/cleanup", post(pool_cleanup))
        .route("/v1/admin/node", get(node_info))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(app.limits.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(app.clone(), count_requests))
        .with_state(app)
}

/// Serves until SIGINT/SIGTERM, then stops accepting, finishes in-flight requests and flushes
/// every open store.
pub async fn serve(app: Arc<App>, listener: tokio::net::TcpListener) -> io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "tvs is listening");
    let pool = app.pool.clone();
    let cleanup_pool = app.pool.clone();
    let cleanup = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let pool = cleanup_pool.clone();
            let _ = tokio::task::spawn_blocking(move || pool.cleanup_expired()).await;
        }
    });
    axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    cleanup.abort();
    tokio::task::spawn_blocking(move || pool.flush_all()).await.ok();
    tracing::info!("stopped; every open store was flushed");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
