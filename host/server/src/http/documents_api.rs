//! A tenant's documents: `POST /v1/documents` (upsert, embedding texts without a vector),
//! `GET/DELETE /v1/documents/{id}` and `POST /v1/documents/delete` (by ids or filter). Each runs
//! in a fresh guest bound to the caller's tenant; a refused batch stores nothing.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tvs_runtime::{Chunking, IngestDocument, IngestRequest};
use utoipa::ToSchema;

use super::App;
use super::error::{ApiError, from_json_rejection, guest_failed};
use super::plugins_api::plugin_error;
use super::request::{checked_filter, tenant_for, with_store, with_store_metered};
use crate::tokens::Scope;

/// This resource's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(upsert_documents, get_document, delete_document, delete_documents))]
pub(super) struct Api;

pub(super) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/documents", post(upsert_documents))
        .route("/v1/documents/delete", post(delete_documents))
        .route("/v1/documents/{id}", get(get_document).delete(delete_document))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DocumentIn {
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
pub(super) struct ChunkIn {
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
pub(super) fn ingest_documents(value: Value) -> Result<Vec<IngestDocument>, ApiError> {
    let documents: Vec<DocumentIn> =
        serde_json::from_value(value).map_err(|e| ApiError::bad_request(format!("documents: {e}")))?;
    Ok(documents.into_iter().map(IngestDocument::from).collect())
}

/// A document in the request shape of `POST /v1/documents`.
pub(super) fn ingest_document_json(doc: IngestDocument) -> Value {
    let metadata: Option<Value> = doc.metadata.and_then(|m| serde_json::from_str(&m).ok());
    json!({"id": doc.id, "text": doc.text, "metadata": metadata, "vector": doc.vector})
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct UpsertBody {
    documents: Vec<DocumentIn>,
    #[serde(default)]
    chunk: Option<ChunkIn>,
}

#[utoipa::path(post, path = "/v1/documents", request_body = UpsertBody, responses((status = 200, description = "ids stored, in order"), (status = 400, description = "invalid input; nothing stored")), security(("tenant" = [])))]
pub(super) async fn upsert_documents(
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
            request.documents = plugins.before_ingest(&store, request.documents).map_err(plugin_error)?;
        }
        let response = app2
            .runtime
            .ingest(store, &request)
            .map_err(|e| guest_failed(app2, e))?;
        Ok(Json(json!({"ids": response.ids, "embedded": response.embedded})))
    })
    .await
}

#[utoipa::path(get, path = "/v1/documents/{id}", params(("id" = String, Path)), responses((status = 200, description = "the document"), (status = 404, description = "no such document")), security(("tenant" = [])))]
pub(super) async fn get_document(
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
pub(super) async fn delete_document(
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
pub(super) struct DeleteBody {
    #[serde(default)]
    ids: Option<Vec<String>>,
    /// A Mongo-style metadata filter.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    filter: Option<Value>,
}

#[utoipa::path(post, path = "/v1/documents/delete", request_body = DeleteBody, responses((status = 200, description = "how many were deleted")), security(("tenant" = [])))]
pub(super) async fn delete_documents(
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
