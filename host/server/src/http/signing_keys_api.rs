//! Signing keys for tenant tokens, for the admin: `POST/GET /v1/admin/signing-keys` and
//! `DELETE /v1/admin/signing-keys/{id}`. A key's secret is shown once, at creation.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::App;
use super::error::{ApiError, from_remote};
use super::request::{blocking, require_admin};
use crate::tokens::SigningKeyError;

/// This resource's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(create_signing_key, list_signing_keys, revoke_signing_key))]
pub(super) struct Api;

pub(super) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route(
            "/v1/admin/signing-keys",
            post(create_signing_key).get(list_signing_keys),
        )
        .route("/v1/admin/signing-keys/{id}", delete(revoke_signing_key))
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
pub(super) async fn create_signing_key(
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
pub(super) async fn list_signing_keys(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_admin(&app, &headers)?;
    let app2 = app.clone();
    blocking(&app, move || {
        let keys = app2.keys.signing().list().map_err(signing_key_failed)?;
        Ok(Json(json!({"signing_keys": keys})))
    })
    .await
}

#[utoipa::path(delete, path = "/v1/admin/signing-keys/{id}", params(("id" = String, Path)), responses((status = 200, description = "revoked: tokens it signed are refused from now on"), (status = 404, description = "no such key")), security(("admin" = [])))]
pub(super) async fn revoke_signing_key(
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
