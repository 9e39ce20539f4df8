//! Tenants, for the admin: `POST/GET /v1/tenants`, `GET/PATCH/DELETE /v1/tenants/{id}` (limits
//! and usage) and `POST /v1/tenants/{id}/keys` (rotation). A tenant is created with its limits
//! or not at all, and a refused change leaves its quotas and rates as they were.

use std::io;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tvs_store::config::{Metric, ScalarKind, StoreConfig};
use tvs_store::remote::RemoteError;
use tvs_store::tenant::{TenantError, TenantId};
use utoipa::ToSchema;

use super::App;
use super::error::{ApiError, from_json_rejection, from_open, from_remote};
use super::request::{admin_tenant, blocking, require_admin, require_tenant};
use crate::rates::RateLimits;

/// This resource's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(create_tenant, list_tenants, delete_tenant, get_tenant, patch_tenant, rotate_key))]
pub(super) struct Api;

pub(super) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/tenants", post(create_tenant).get(list_tenants))
        .route(
            "/v1/tenants/{id}",
            delete(delete_tenant).get(get_tenant).patch(patch_tenant),
        )
        .route("/v1/tenants/{id}/keys", post(rotate_key))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateTenant {
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
pub(super) async fn create_tenant(
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
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    after: Option<String>,
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/tenants", params(ListQuery), responses((status = 200, description = "a sorted page of tenant ids")), security(("admin" = [])))]
pub(super) async fn list_tenants(
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
pub(super) async fn delete_tenant(
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
pub(super) struct TenantPatch {
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
pub(super) async fn get_tenant(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = admin_tenant(&app, &headers, &id)?;
    let app2 = app.clone();
    blocking(&app, move || tenant_view(&app2, &id).map(Json)).await
}

#[utoipa::path(patch, path = "/v1/tenants/{id}", params(("id" = String, Path)), request_body = TenantPatch, responses((status = 200, description = "the tenant's limits and usage after the change"), (status = 404, description = "no such tenant")), security(("admin" = [])))]
pub(super) async fn patch_tenant(
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
pub(super) async fn rotate_key(
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
