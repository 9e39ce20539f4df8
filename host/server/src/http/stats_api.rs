//! `GET /v1/stats`: a tenant's count, dimensions, metric, bytes and model, with the limits set
//! on it (left out when none is, as on Spin).

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::App;
use super::error::{ApiError, guest_failed};
use super::request::{tenant_for, with_store};
use crate::rates::RateLimits;
use crate::tokens::Scope;

/// This resource's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(stats))]
pub(super) struct Api;

pub(super) fn routes() -> Router<Arc<App>> {
    Router::new().route("/v1/stats", get(stats))
}

#[utoipa::path(get, path = "/v1/stats", responses((status = 200, description = "count, dims, metric, bytes, embedding model")), security(("tenant" = [])))]
pub(super) async fn stats(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
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
