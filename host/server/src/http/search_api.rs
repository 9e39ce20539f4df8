//! `POST /v1/search`: k-NN with a metadata filter and MMR in a fresh guest bound to the caller's
//! tenant, then the tenant's re-ranker plugin when the request names one.

use std::sync::Arc;

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tvs_runtime::{Mmr, SearchRequest};
use utoipa::ToSchema;

use super::App;
use super::error::{ApiError, from_json_rejection, guest_failed};
use super::plugins_api::{plugin_error, plugins};
use super::request::{checked_filter, tenant_for, with_store};
use crate::tokens::Scope;

/// This resource's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(search))]
pub(super) struct Api;

pub(super) fn routes() -> Router<Arc<App>> {
    Router::new().route("/v1/search", post(search))
}

/// Hits in the response shape of `POST /v1/search`.
pub(super) fn hits_from_json(value: Value) -> Result<Vec<tvs_runtime::Hit>, ApiError> {
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

pub(super) fn hit_json(hit: tvs_runtime::Hit) -> Value {
    let metadata: Value = serde_json::from_str(&hit.metadata).unwrap_or_else(|_| json!({}));
    json!({"id": hit.id, "score": hit.score, "distance": hit.distance, "text": hit.text, "metadata": metadata})
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct MmrIn {
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
pub(super) struct SearchBody {
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
pub(super) async fn search(
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
            hits = plugins(app2)?
                .call_rerank(store, &name, query_text.as_deref(), &hits)
                .0
                .map_err(plugin_error)?;
        }
        Ok(Json(
            json!({"hits": hits.into_iter().map(hit_json).collect::<Vec<_>>()}),
        ))
    })
    .await
}
