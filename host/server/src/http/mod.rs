//! The HTTP API of `tvs serve` (axum). Routes and shapes follow the contract in DESIGN.md.
//!
//! Invariants:
//! - The tenant of a data request comes from its `Authorization: Bearer` key alone.
//! - Every data request (ingest, search, get, delete, stats) runs in a fresh guest instance
//!   bound to the key's tenant ([`tvs_runtime`]); admin routes are native. Blocking work (files, guests) runs on the blocking thread pool.
//! - Every error is `{"error":{"code","message"}}` with a fitting status; no panic or wasm
//!   backtrace reaches a client, and a refused request changes nothing.
//!
//! One module per resource (`tenants_api`, `documents_api`, `search_api`, …), each opening with
//! its routes and request types; [`error`] maps failures to answers and [`request`] holds what
//! every route does first (who is calling, the blocking pool, the tenant's store).

mod admin_api;
mod documents_api;
mod embeddings_api;
mod error;
mod plugins_api;
mod request;
mod search_api;
mod signing_keys_api;
mod stats_api;
mod tenants_api;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use utoipa::OpenApi;

use crate::auth::Keys;
use crate::metrics::Metrics;
use crate::rates::{RateLimits, Rates};
pub use error::ApiError;
use tvs_runtime::Runtime;
use tvs_store::config::Settings;
use tvs_store::pool::Pool;

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
    pub(crate) metrics: Metrics,
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

/// What the OpenAPI document says beside the resources' routes.
#[derive(OpenApi)]
#[openapi(
    info(title = "tvs", description = "Multi-tenant vector store. Data routes take a tenant key or a tenant token (an HS256 JWT minted with a signing key from `/v1/admin/signing-keys`: header `kid`, claims `tenant`, `scope` = space-separated `read`/`write`/`plugins`, `exp`; 403 `insufficient_scope` when the route needs another scope), admin routes the admin key, both as `Authorization: Bearer`. Errors are {\"error\": {\"code\", \"message\"}}."),
    paths(healthz, metrics),
    modifiers(&BearerAuth)
)]
struct Base;

/// The OpenAPI description, generated from the handlers' annotations: each resource module
/// describes its own routes.
#[derive(Debug)]
pub struct ApiDoc;

impl OpenApi for ApiDoc {
    fn openapi() -> utoipa::openapi::OpenApi {
        let mut doc = Base::openapi();
        for part in [
            tenants_api::Api::openapi(),
            signing_keys_api::Api::openapi(),
            documents_api::Api::openapi(),
            search_api::Api::openapi(),
            stats_api::Api::openapi(),
            embeddings_api::Api::openapi(),
            admin_api::Api::openapi(),
        ] {
            doc.merge(part);
        }
        doc
    }
}

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
        .merge(tenants_api::routes())
        .merge(signing_keys_api::routes())
        .merge(documents_api::routes())
        .merge(search_api::routes())
        .merge(stats_api::routes())
        .merge(embeddings_api::routes())
        .merge(plugins_api::routes(&app))
        .merge(admin_api::routes())
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
