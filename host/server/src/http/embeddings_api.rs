//! `POST /v1/embeddings`: OpenAI's request and response shapes, answered by the tenant's own model
//! only (another model is refused, so one tenant never mixes vectors of two models).

use std::sync::Arc;

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tvs_guest_core::openai::Input;
use utoipa::ToSchema;

use super::App;
use super::error::{ApiError, from_json_rejection};
use super::request::{tenant_for, with_store};
use crate::tokens::Scope;

/// This resource's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(embeddings))]
pub(super) struct Api;

pub(super) fn routes() -> Router<Arc<App>> {
    Router::new().route("/v1/embeddings", post(embeddings))
}

/// OpenAI's embeddings request, as its clients send it.
#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct EmbeddingsBody {
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
pub(super) async fn embeddings(
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
