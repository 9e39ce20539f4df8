//! The operator's views, for the admin: the pool (`GET /v1/admin/pool`, `POST
//! /v1/admin/pool/cleanup`) and this node (`GET /v1/admin/node`: where its tenants live and
//! which it holds as writer).

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::App;
use super::error::ApiError;
use super::request::{blocking, require_admin};

/// This resource's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(pool_stats, pool_cleanup, node_info))]
pub(super) struct Api;

pub(super) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/admin/pool", get(pool_stats))
        .route("/v1/admin/pool/cleanup", post(pool_cleanup))
        .route("/v1/admin/node", get(node_info))
}

#[utoipa::path(get, path = "/v1/admin/pool", responses((status = 200, description = "pool counters and hit rate")), security(("admin" = [])))]
pub(super) async fn pool_stats(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    require_admin(&app, &headers)?;
    Ok(Json(
        serde_json::to_value(app.pool.stats()).map_err(|_| ApiError::internal())?,
    ))
}

#[utoipa::path(post, path = "/v1/admin/pool/cleanup", responses((status = 200, description = "how many expired stores were dropped")), security(("admin" = [])))]
pub(super) async fn pool_cleanup(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    require_admin(&app, &headers)?;
    let app2 = app.clone();
    blocking(&app, move || Ok(Json(json!({"expired": app2.pool.cleanup_expired()})))).await
}

#[utoipa::path(get, path = "/v1/admin/node", responses((status = 200, description = "this node's name, where its tenants live, and the tenants it holds as writer with their epochs")), security(("admin" = [])))]
pub(super) async fn node_info(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
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
