//! The plugin routes: upload, list, describe, activate, delete, test (`/v1/plugins`) and call
//! (`/v1/fn/{name}`). The tenant always comes from the key, so another tenant's plugin is
//! simply not found.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tvs_runtime::plugins::{CallReport, PluginError, PluginKind, Plugins};

use super::App;
use super::documents_api::{ingest_document_json, ingest_documents};
use super::error::{ApiError, from_json_rejection};
use super::request::{tenant_for, with_store};
use super::search_api::{hit_json, hits_from_json};
use crate::tokens::Scope;

pub(super) fn routes(app: &Arc<App>) -> Router<Arc<App>> {
    let upload_limit = app
        .plugins
        .as_ref()
        .map_or(1 << 20, |p| p.limits().max_component_bytes + 1);
    Router::new()
        .route(
            "/v1/plugins/{name}",
            put(upload)
                .layer(DefaultBodyLimit::max(upload_limit))
                .get(describe)
                .delete(remove),
        )
        .route("/v1/plugins", axum::routing::get(list))
        .route("/v1/plugins/{name}/active", post(activate))
        .route("/v1/plugins/{name}/test", post(test))
        .route("/v1/plugins/{name}/enable", post(enable))
        .route("/v1/plugins/{name}/disable", post(disable))
        .route("/v1/fn/{name}", post(call))
}

pub(crate) fn plugins(app: &App) -> Result<Arc<Plugins>, ApiError> {
    app.plugins.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "plugins_disabled",
            "this server does not run tenant plugins",
        )
    })
}

/// The HTTP answer to a plugin failure. Messages never carry wasm backtraces (they are logged).
pub(crate) fn plugin_error(error: PluginError) -> ApiError {
    let message = error.to_string();
    match error {
        PluginError::NotFound(_) => ApiError::not_found(message),
        PluginError::Invalid(_) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_plugin", message),
        PluginError::Quota(_) => ApiError::new(StatusCode::FORBIDDEN, "quota_exceeded", message),
        PluginError::WrongKind { .. } => ApiError::new(StatusCode::BAD_REQUEST, "wrong_plugin_kind", message),
        PluginError::Plugin(text) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "plugin_error", text),
        PluginError::Deadline(_) => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "plugin_deadline", message),
        PluginError::Memory(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "plugin_memory", message),
        PluginError::HostCalls(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "plugin_host_calls", message),
        PluginError::OutputTooLarge(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "plugin_output", message),
        PluginError::Trap(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "plugin_trap", message),
        PluginError::Busy => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", message),
        PluginError::Io(e) => {
            tracing::error!(error = %e, "plugin storage failed");
            ApiError::internal()
        }
        other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "plugin_failed", other.to_string()),
    }
}

fn info_json(info: &tvs_runtime::plugins::PluginInfo) -> Value {
    serde_json::to_value(info).unwrap_or(Value::Null)
}

/// `PUT /v1/plugins/{name}`: the body is the component.
async fn upload(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let tenant = tenant_for(&app, &headers, Scope::Plugins)?;
    let plugins = plugins(&app)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/wasm") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the component with Content-Type: application/wasm",
        ));
    }
    let version = with_store(&app, tenant, move |_, store| {
        plugins
            .upload(store.dir(), &name, &body)
            .map_err(plugin_error)
            .map(|v| (name, v))
    })
    .await?;
    let (name, v) = version;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "name": name, "version": v.version, "kind": v.kind, "sha256": v.sha256, "bytes": v.bytes,
            "imports": v.imports, "exports": v.exports,
        })),
    ))
}

/// `GET /v1/plugins`.
async fn list(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let tenant = tenant_for(&app, &headers, Scope::Read)?;
    let plugins = plugins(&app)?;
    with_store(&app, tenant, move |_, store| {
        let all = plugins.list(store.dir()).map_err(plugin_error)?;
        Ok(Json(json!({"plugins": all.iter().map(info_json).collect::<Vec<_>>()})))
    })
    .await
}

/// `GET /v1/plugins/{name}`.
async fn describe(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant_for(&app, &headers, Scope::Read)?;
    let plugins = plugins(&app)?;
    with_store(&app, tenant, move |_, store| {
        Ok(Json(info_json(
            &plugins.info(store.dir(), &name).map_err(plugin_error)?,
        )))
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Activate {
    version: u32,
}

/// `POST /v1/plugins/{name}/active {"version": n}`.
async fn activate(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Json<Activate>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant_for(&app, &headers, Scope::Plugins)?;
    let plugins = plugins(&app)?;
    let Json(body) = body.map_err(from_json_rejection)?;
    with_store(&app, tenant, move |_, store| {
        Ok(Json(info_json(
            &plugins
                .activate(store.dir(), &name, body.version)
                .map_err(plugin_error)?,
        )))
    })
    .await
}

/// `POST /v1/plugins/{name}/enable`: every ingest of the tenant goes through this ingest
/// transform from now on.
async fn enable(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant_for(&app, &headers, Scope::Plugins)?;
    let plugins = plugins(&app)?;
    with_store(&app, tenant, move |_, store| {
        Ok(Json(info_json(
            &plugins.enable_transform(store.dir(), &name).map_err(plugin_error)?,
        )))
    })
    .await
}

/// `POST /v1/plugins/{name}/disable`.
async fn disable(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant_for(&app, &headers, Scope::Plugins)?;
    let plugins = plugins(&app)?;
    with_store(&app, tenant, move |_, store| {
        Ok(Json(info_json(
            &plugins.disable_transform(store.dir(), &name).map_err(plugin_error)?,
        )))
    })
    .await
}

/// `DELETE /v1/plugins/{name}`.
async fn remove(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant_for(&app, &headers, Scope::Plugins)?;
    let plugins = plugins(&app)?;
    with_store(&app, tenant, move |_, store| {
        plugins.delete(store.dir(), &name).map_err(plugin_error)?;
        Ok(Json(json!({"deleted": name})))
    })
    .await
}

/// `POST /v1/fn/{name}`: the body goes to the function plugin as text; its `ok` text is the
/// response body.
async fn call(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let tenant = tenant_for(&app, &headers, Scope::Write)?;
    let plugins = plugins(&app)?;
    let request = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::bad_request("the request body must be UTF-8 text (JSON)"))?;
    let answer = with_store(&app, tenant, move |_, store| {
        plugins.call_function(store, &name, &request).0.map_err(plugin_error)
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], answer).into_response())
}

/// `POST /v1/plugins/{name}/test`: one run on `input`, with the log, time and peak memory.
/// `input` is the request (function), `{"documents": [...]}` (ingest transform) or
/// `{"query"?, "hits": [...]}` (re-ranker).
async fn test(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant_for(&app, &headers, Scope::Plugins)?;
    let plugins = plugins(&app)?;
    let Json(body) = body.map_err(from_json_rejection)?;
    let input = body.get("input").cloned().unwrap_or(Value::Null);
    with_store(&app, tenant, move |_, store| {
        let kind = plugins.info(store.dir(), &name).map_err(plugin_error)?.kind;
        let (output, report): (Result<Value, PluginError>, Option<CallReport>) = match kind {
            PluginKind::Function => {
                let text = match &input {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                let (result, report) = plugins.call_function(store, &name, &text);
                (result.map(Value::String), report)
            }
            PluginKind::IngestTransform => {
                let documents = ingest_documents(input.get("documents").cloned().unwrap_or(Value::Null))?;
                let (result, report) = plugins.call_transform(store, &name, &documents);
                (
                    result.map(|docs| Value::Array(docs.into_iter().map(ingest_document_json).collect())),
                    report,
                )
            }
            PluginKind::Reranker => {
                let query = input.get("query").and_then(Value::as_str).map(str::to_owned);
                let hits = hits_from_json(input.get("hits").cloned().unwrap_or(Value::Null))?;
                let (result, report) = plugins.call_rerank(store, &name, query.as_deref(), &hits);
                (
                    result.map(|hits| Value::Array(hits.into_iter().map(hit_json).collect())),
                    report,
                )
            }
        };
        let mut answer = match output {
            Ok(output) => json!({"ok": true, "output": output}),
            Err(PluginError::NotFound(n)) => return Err(ApiError::not_found(format!("no plugin named {n}"))),
            Err(e) => json!({"ok": false, "error": {"code": plugin_error_code(&e), "message": e.to_string()}}),
        };
        if let Some(report) = report {
            answer["version"] = json!(report.version);
            answer["log"] = json!(report.log);
            answer["elapsed_ms"] = json!(report.elapsed_ms);
            answer["peak_memory_bytes"] = json!(report.peak_memory_bytes);
        }
        Ok(Json(answer))
    })
    .await
}

fn plugin_error_code(error: &PluginError) -> &'static str {
    match error {
        PluginError::Plugin(_) => "plugin_error",
        PluginError::Deadline(_) => "plugin_deadline",
        PluginError::Memory(_) => "plugin_memory",
        PluginError::HostCalls(_) => "plugin_host_calls",
        PluginError::OutputTooLarge(_) => "plugin_output",
        PluginError::Trap(_) => "plugin_trap",
        _ => "plugin_failed",
    }
}
