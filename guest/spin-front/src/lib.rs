//! The HTTP front of tvs on Spin: the routes of `tvs serve` that a Spin app offers (the data
//! routes, `POST /v1/embeddings`, and the admin routes that create a tenant and issue its key),
//! with the same request and response JSON and the same error bodies.
//!
//! Composed with `tvs:spin/storage` and the built-in guest (`guest/handler`) into one component
//! (see `host/spin-compose`); Spin runs a fresh instance per request. The front never touches
//! documents itself: it checks the key, binds the storage to that key's tenant
//! (`tenant.bind`), and calls the handler, which takes no tenant parameter.
//!
//! Keys are `tvs.{tenant}.{secret}` as in `tvs serve`; the store holds only the SHA-256 of the
//! secret and the comparison is constant-time. Tenant tokens (HS256 JWTs an app mints with a
//! signing key the admin created here, `POST /v1/admin/signing-keys`) are accepted wherever a
//! key is, checked by `tvs_guest_core::token` (the rules and messages `tvs serve` uses) against
//! the keys in the key-value store: the tenant comes from the verified claim only, and a read
//! token is refused on a write route. The admin key comes from the Spin variable `admin_key`;
//! admin routes are refused while it is empty.

wit_bindgen::generate!({
    path: "../../wit/spin",
    world: "tvs:spin/front",
    generate_all,
});

use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use spin_sdk::http::{Method, Request, Response};
use spin_sdk::http_component;

use tvs::spin::tenant::{self, Shape, TenantError};
use tvs::store::embedder;
use tvs::store::handler::{self, Chunking, IngestRequest, Mmr, SearchRequest};
use tvs::store::types::{Error as GuestError, IngestDocument, Metric};
use tvs_guest_core::filter::Filter;
use tvs_guest_core::models;
use tvs_guest_core::openai::Input;
use tvs_guest_core::rate::{Limits as RateLimits, Refusal};
use tvs_guest_core::token::{self as tokens, Scope, StoredKey};

/// Largest request body, as `tvs serve`'s default.
const MAX_BODY_BYTES: usize = 16 << 20;
/// Most documents per ingest request, as `tvs serve`.
const MAX_BATCH: usize = 10_000;
/// Largest `top_k`, as `tvs serve`.
const MAX_TOP_K: u32 = 1_000;
/// Largest `dims`, as `tvs serve`.
const MAX_DIMS: u32 = 16_384;

/// An error response: `{"error":{"code","message"}}`.
struct ApiError {
    status: u16,
    code: &'static str,
    message: String,
    /// Seconds for `Retry-After` (a 429).
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request", message)
    }
    fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "not_found", message)
    }
    fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "internal", message)
    }
}

fn json_response(status: u16, body: &Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body.to_string())
        .build()
}

/// `x-tvs-kv-reads` on an answer: what the storage read from the key-value store for it, and
/// its memory, so what a request costs on Spin can be seen from outside (the Spin bench reads it).
fn with_usage(mut response: Response) -> Response {
    let usage = tenant::usage();
    response.set_header(
        "x-tvs-kv-reads",
        format!(
            "gets={}; bytes={}; get-us={}; decode-us={}; storage-memory={}",
            usage.gets, usage.bytes, usage.get_micros, usage.decode_micros, usage.memory_bytes
        ),
    );
    response
}

#[http_component]
fn handle(request: Request) -> Response {
    match route(&request) {
        Ok((status, body)) => with_usage(json_response(status, &body)),
        Err(e) => {
            let body = json!({"error": {"code": e.code, "message": e.message}});
            match e.retry_after {
                Some(seconds) => Response::builder()
                    .status(e.status)
                    .header("content-type", "application/json")
                    .header("retry-after", seconds.to_string())
                    .body(body.to_string())
                    .build(),
                None => json_response(e.status, &body),
            }
        }
    }
}

type Answer = Result<(u16, Value), ApiError>;

fn route(request: &Request) -> Answer {
    let segments: Vec<String> = request
        .path()
        .trim_start_matches('/')
        .split('/')
        .map(percent_decode)
        .collect::<Option<_>>()
        .ok_or_else(|| ApiError::bad_request("the path is not valid percent-encoded UTF-8"))?;
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let ok = |value: Value| Ok((200, value));
    match (request.method(), segments.as_slice()) {
        (Method::Get, ["healthz"]) => ok(json!({"status": "ok"})),
        (Method::Post, ["v1", "tenants"]) => create_tenant(request),
        (Method::Post, ["v1", "tenants", id, "keys"]) => rotate_key(request, id),
        (Method::Patch, ["v1", "tenants", id]) => patch_tenant(request, id).and_then(ok),
        (Method::Post, ["v1", "admin", "signing-keys"]) => create_signing_key(request),
        (Method::Get, ["v1", "admin", "signing-keys"]) => list_signing_keys(request).and_then(ok),
        (Method::Delete, ["v1", "admin", "signing-keys", id]) => revoke_signing_key(request, id).and_then(ok),
        (Method::Post, ["v1", "documents"]) => upsert(request).and_then(ok),
        (Method::Post, ["v1", "documents", "delete"]) => delete_documents(request).and_then(ok),
        (Method::Get, ["v1", "documents", id]) => get_document(request, id).and_then(ok),
        (Method::Delete, ["v1", "documents", id]) => delete_document(request, id).and_then(ok),
        (Method::Post, ["v1", "search"]) => search(request).and_then(ok),
        (Method::Get, ["v1", "stats"]) => stats(request).and_then(ok),
        (Method::Post, ["v1", "embeddings"]) => embeddings(request).and_then(ok),
        _ => Err(ApiError::not_found("no such route")),
    }
}

/// A path segment with `%XX` escapes decoded, as `tvs serve` reads `{id}`.
fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The JSON body, with `tvs serve`'s checks: content type, size, syntax and fields.
fn body<T: for<'de> Deserialize<'de>>(request: &Request) -> Result<T, ApiError> {
    let content_type = request
        .header("content-type")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let mime = content_type.split(';').next().unwrap_or_default().trim();
    if !(mime.eq_ignore_ascii_case("application/json") || mime.ends_with("+json")) {
        return Err(ApiError::new(
            415,
            "unsupported_media_type",
            "send Content-Type: application/json",
        ));
    }
    if request.body().len() > MAX_BODY_BYTES {
        return Err(ApiError::new(
            413,
            "body_too_large",
            "the request body is larger than the server accepts",
        ));
    }
    serde_json::from_slice(request.body()).map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
}

fn bearer(request: &Request) -> Result<&str, ApiError> {
    request
        .header("authorization")
        .and_then(|v| v.as_str())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| ApiError::new(401, "unauthorized", "send Authorization: Bearer <key>"))
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn require_admin(request: &Request) -> Result<(), ApiError> {
    let key = bearer(request)?;
    let admin = spin_sdk::variables::get("admin_key").unwrap_or_default();
    if admin.trim().is_empty() {
        return Err(ApiError::new(
            403,
            "forbidden",
            "admin routes are off: set the Spin variable admin_key",
        ));
    }
    if constant_time_eq(&digest(key), &digest(admin.trim())) {
        Ok(())
    } else {
        Err(ApiError::new(403, "forbidden", "this route needs the admin key"))
    }
}

/// The tenant of the request's key or token, bound for this request when the credential allows
/// `scope`: from here on, the handler and the embedder serve that tenant only.
fn bind_tenant(request: &Request, scope: Scope) -> Result<String, ApiError> {
    let credential = bearer(request)?;
    let tenant = if tokens::is_token(credential) {
        let keys = stored_signing_keys()?.0;
        let grant = tokens::verify_hs256(credential, &keys, now_secs())
            .map_err(|e| ApiError::new(401, "unauthorized", e.to_string()))?;
        if !grant.scopes.allows(scope) {
            return Err(ApiError::new(403, "insufficient_scope", scope.missing_message()));
        }
        grant.tenant
    } else {
        tenant_of_key(credential)?.to_owned()
    };
    tenant::bind(&tenant).map_err(|e| match e {
        TenantError::NotFound => ApiError::not_found("the tenant of this key no longer exists"),
        other => ApiError::internal(format!("opening the tenant failed: {}", describe_tenant_error(&other))),
    })?;
    Ok(tenant)
}

/// The tenant a key belongs to, if it is a valid, current tenant key.
fn tenant_of_key(key: &str) -> Result<&str, ApiError> {
    let invalid = || ApiError::new(401, "unauthorized", "the key is not valid (revoked or unknown)");
    let (tenant, secret) = key
        .strip_prefix("tvs.")
        .and_then(|rest| rest.rsplit_once('.'))
        .ok_or_else(invalid)?;
    if !tvs_guest_core::tenant_id::is_valid(tenant) {
        return Err(invalid());
    }
    let stored = tenant::key_hash(tenant).ok_or_else(invalid)?;
    if !constant_time_eq(&digest(secret), &stored) {
        return Err(invalid());
    }
    Ok(tenant)
}

/// The signing keys as stored, and their stored text (for a compare-and-swap).
fn stored_signing_keys() -> Result<(Vec<StoredKey>, Option<String>), ApiError> {
    let failed = |m: String| ApiError::internal(format!("reading the signing keys failed: {m}"));
    let text = tenant::signing_keys().map_err(|e| failed(describe_tenant_error(&e)))?;
    let keys = match &text {
        Some(text) => serde_json::from_str(text).map_err(|e| failed(e.to_string()))?,
        None => Vec::new(),
    };
    Ok((keys, text))
}

/// Applies `change` to the stored signing keys by compare-and-swap (again on a fresh read when
/// another request changed them first), and returns what it returned.
fn change_signing_keys<T>(change: impl Fn(&mut Vec<StoredKey>) -> T) -> Result<T, ApiError> {
    for _ in 0..16 {
        let (mut keys, text) = stored_signing_keys()?;
        let out = change(&mut keys);
        let json = serde_json::to_string_pretty(&keys).map_err(|e| ApiError::internal(e.to_string()))?;
        let swapped = tenant::replace_signing_keys(text.as_deref(), &json).map_err(|e| {
            ApiError::internal(format!(
                "storing the signing keys failed: {}",
                describe_tenant_error(&e)
            ))
        })?;
        if swapped {
            return Ok(out);
        }
    }
    Err(ApiError::new(
        503,
        "busy",
        "the signing keys kept changing under this request; retry",
    ))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn create_signing_key(request: &Request) -> Answer {
    require_admin(request)?;
    let mut random = [0u8; tokens::NEW_KEY_RANDOM_BYTES];
    getrandom::fill(&mut random).map_err(|e| ApiError::internal(format!("no randomness: {e}")))?;
    let key = StoredKey::generate(&random, now_secs());
    change_signing_keys(|keys| keys.push(key.clone()))?;
    Ok((
        201,
        json!({"id": key.id, "created_at": key.created_at, "secret": key.secret_text()}),
    ))
}

fn list_signing_keys(request: &Request) -> Result<Value, ApiError> {
    require_admin(request)?;
    let keys = stored_signing_keys()?.0;
    Ok(json!({"signing_keys": keys.iter().map(StoredKey::info).collect::<Vec<_>>()}))
}

fn revoke_signing_key(request: &Request, id: &str) -> Result<Value, ApiError> {
    require_admin(request)?;
    let revoked_at = now_secs();
    change_signing_keys(|keys| tokens::revoke(keys, id, revoked_at))?
        .map(|info| json!(info))
        .ok_or_else(|| ApiError::not_found(format!("signing key {id} does not exist")))
}

/// What `PATCH /v1/tenants/{id}` may change on Spin: the document quota and the rate limits
/// (a field left out stays, `null` removes a rate limit). A bytes quota is `tvs serve`'s alone.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantPatch {
    #[serde(default)]
    max_documents: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    requests_per_second: Option<Option<f64>>,
    #[serde(default, deserialize_with = "present")]
    ingest_bytes_per_second: Option<Option<f64>>,
    #[serde(default)]
    max_bytes: Option<Value>,
}

/// A field that is present, `null` or not: `Some(None)` for `null`.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

fn patch_tenant(request: &Request, id: &str) -> Result<Value, ApiError> {
    require_admin(request)?;
    let patch: TenantPatch = body(request)?;
    if patch.max_bytes.is_some() {
        return Err(ApiError::bad_request(
            "max_bytes is not offered on Spin: max_documents bounds a tenant here",
        ));
    }
    let cap = variable_u64("max_documents", DEFAULT_MAX_DOCUMENTS)?;
    let max_documents = match &patch.max_documents {
        None => None,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n >= 1) => n.as_u64(),
        Some(Value::Null) => {
            return Err(ApiError::bad_request(
                "max_documents cannot be removed on Spin: every request reads its whole tenant",
            ));
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "max_documents must be at least 1 (leave it out or send null for no quota)",
            ));
        }
    };
    if let Some(limit) = max_documents
        && limit > cap
    {
        return Err(ApiError::bad_request(format!(
            "max_documents may be at most {cap} here (the Spin variable max_documents): every request reads the whole tenant"
        )));
    }
    if !tvs_guest_core::tenant_id::is_valid(id) {
        return Err(ApiError::bad_request(tvs_guest_core::tenant_id::invalid_message(id)));
    }
    tenant::bind(id).map_err(|e| match e {
        TenantError::NotFound => ApiError::not_found(format!("tenant {id} does not exist")),
        other => ApiError::internal(format!("opening the tenant failed: {}", describe_tenant_error(&other))),
    })?;
    let current = tenant::current_rate_limits().unwrap_or(tenant::RateLimits {
        requests_per_second: None,
        ingest_bytes_per_second: None,
    });
    let limits = tenant::RateLimits {
        requests_per_second: patch.requests_per_second.unwrap_or(current.requests_per_second),
        ingest_bytes_per_second: patch.ingest_bytes_per_second.unwrap_or(current.ingest_bytes_per_second),
    };
    shared_limits(&limits).validate().map_err(ApiError::bad_request)?;
    let stored =
        |e: TenantError| ApiError::internal(format!("storing the limits failed: {}", describe_tenant_error(&e)));
    if let Some(limit) = max_documents {
        tenant::set_max_documents(limit).map_err(stored)?;
    }
    if patch.requests_per_second.is_some() || patch.ingest_bytes_per_second.is_some() {
        tenant::set_rate_limits(limits).map_err(stored)?;
    }
    let info = handler::stats().map_err(guest_error)?;
    Ok(json!({
        "id": id,
        "rate_limits": shared_limits(&limits),
        "max_documents": tenant::max_documents(),
        "max_bytes": null,
        "usage": {"documents": info.count},
    }))
}

fn shared_limits(limits: &tenant::RateLimits) -> RateLimits {
    RateLimits {
        requests_per_second: limits.requests_per_second,
        ingest_bytes_per_second: limits.ingest_bytes_per_second,
    }
}

/// Admits one request of the bound tenant carrying `ingest_bytes` of documents under its rate
/// limits, or answers 429 naming the limit, with `Retry-After`.
fn admit(tenant_id: &str, ingest_bytes: u64) -> Result<(), ApiError> {
    match tenant::admit(ingest_bytes) {
        Ok(()) => Ok(()),
        Err(tenant::AdmitError::Limited(r)) => {
            let refusal = Refusal {
                limit: if r.limit == "requests_per_second" {
                    "requests_per_second"
                } else {
                    "ingest_bytes_per_second"
                },
                per_second: r.per_second,
                retry_after_secs: r.retry_after_secs,
            };
            Err(ApiError {
                retry_after: Some(refusal.retry_after_header()),
                ..ApiError::new(429, "rate_limited", refusal.message(tenant_id))
            })
        }
        Err(tenant::AdmitError::Store(m)) => Err(ApiError::new(
            503,
            "busy",
            format!("the tenant's rate limits could not be applied: {m}; retry"),
        )),
    }
}

fn describe_tenant_error(error: &TenantError) -> String {
    match error {
        TenantError::Exists => "the tenant exists".into(),
        TenantError::NotFound => "no such tenant".into(),
        TenantError::Invalid(m) | TenantError::Store(m) => m.clone(),
    }
}

/// `tvs serve`'s answer to an error of the guest.
fn guest_error(error: GuestError) -> ApiError {
    match error {
        GuestError::InvalidInput(m) => ApiError::bad_request(format!("invalid input: {m}")),
        GuestError::NoEmbedder => {
            ApiError::bad_request("this tenant has no embedding model; send vectors instead of text")
        }
        GuestError::QuotaExceeded(limit) => ApiError::new(
            413,
            "quota_exceeded",
            format!("quota exceeded: this tenant is limited to {limit} documents"),
        ),
        GuestError::TenantDeleted => ApiError::not_found("the tenant was deleted"),
        GuestError::Internal(m) => ApiError::internal(format!("internal error: {m}")),
    }
}

/// A new key for `tenant`, replacing its previous one.
fn issue_key(tenant: &str) -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| ApiError::internal(format!("no randomness: {e}")))?;
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    tenant::set_key_hash(tenant, &digest(&secret)).map_err(|e| match e {
        TenantError::NotFound => ApiError::not_found(format!("tenant {tenant} does not exist")),
        other => ApiError::internal(format!("storing the key failed: {}", describe_tenant_error(&other))),
    })?;
    Ok(format!("tvs.{tenant}.{secret}"))
}

/// A rate limit from a Spin variable: none when it is empty or absent.
fn variable_rate(name: &str) -> Result<Option<f64>, ApiError> {
    let text = spin_sdk::variables::get(name).unwrap_or_default();
    if text.trim().is_empty() {
        return Ok(None);
    }
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(Some(v)),
        _ => Err(ApiError::internal(format!(
            "the Spin variable {name} must be a positive number or empty, not {text:?}"
        ))),
    }
}

/// A Spin variable as a number, or `default` when it is not set.
fn variable_u64(name: &str, default: u64) -> Result<u64, ApiError> {
    match spin_sdk::variables::get(name) {
        Ok(text) if !text.trim().is_empty() => text
            .trim()
            .parse()
            .map_err(|_| ApiError::internal(format!("the Spin variable {name} is not a whole number: {text:?}"))),
        _ => Ok(default),
    }
}

/// Documents per tenant at most, unless the variable `max_documents` says otherwise: every
/// request reads the whole tenant from the key-value store, and a search of 384-d vectors
/// passes 100 ms at about 5,900 documents (`cargo bench -p tvs --bench spin`).
const DEFAULT_MAX_DOCUMENTS: u64 = 5_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    id: String,
    #[serde(default)]
    dims: Option<u32>,
    #[serde(default)]
    metric: Option<String>,
    /// Accepted for `tvs serve`'s request shape; Spin tenants are scanned exactly, in f32.
    #[serde(default)]
    scalar: Option<String>,
    #[serde(default)]
    embedding_model: Option<String>,
    #[serde(default)]
    max_documents: Option<u64>,
}

fn create_tenant(request: &Request) -> Answer {
    require_admin(request)?;
    let body: CreateTenant = body(request)?;
    if !tvs_guest_core::tenant_id::is_valid(&body.id) {
        return Err(ApiError::bad_request(tvs_guest_core::tenant_id::invalid_message(
            &body.id,
        )));
    }
    if let Some(scalar) = body.scalar.as_deref().filter(|s| *s != "f32") {
        return Err(ApiError::bad_request(format!(
            "scalar {scalar:?} is for the HNSW index of tvs serve; tenants on Spin are scanned exactly in f32"
        )));
    }
    let dims = body.dims.unwrap_or(models::LOCAL_MODEL_DIMS as u32);
    let invalid_config = |m: String| ApiError::bad_request(format!("invalid store config: {m}"));
    if dims == 0 || dims > MAX_DIMS {
        return Err(invalid_config(format!(
            "dims must be between 1 and {MAX_DIMS}, got {dims}"
        )));
    }
    let default_model = spin_sdk::variables::get("embedding_model")
        .ok()
        .filter(|m| !m.trim().is_empty())
        .unwrap_or_else(|| models::LOCAL_MODEL.to_owned());
    let model = models::canonical_model_name(body.embedding_model.as_deref().unwrap_or(&default_model));
    models::check_model_dims(&model, dims as usize).map_err(invalid_config)?;
    models::check_known_model(&model).map_err(invalid_config)?;
    let cap = variable_u64("max_documents", DEFAULT_MAX_DOCUMENTS)?;
    let max_documents = body.max_documents.unwrap_or(cap);
    if max_documents > cap {
        return Err(ApiError::bad_request(format!(
            "max_documents may be at most {cap} here (the Spin variable max_documents): every request reads the whole tenant"
        )));
    }
    let shape = Shape {
        dims,
        metric: body.metric.unwrap_or_else(|| "cos".into()),
        embedding_model: model,
        max_documents,
        rate_limits: tenant::RateLimits {
            requests_per_second: variable_rate("default_requests_per_second")?,
            ingest_bytes_per_second: variable_rate("default_ingest_bytes_per_second")?,
        },
    };
    tenant::create(&body.id, &shape).map_err(|e| match e {
        TenantError::Exists => ApiError::new(409, "conflict", format!("tenant {} already exists", body.id)),
        TenantError::Invalid(m) => ApiError::bad_request(m),
        other => ApiError::internal(format!("creating the tenant failed: {}", describe_tenant_error(&other))),
    })?;
    let key = issue_key(&body.id)?;
    Ok((201, json!({"id": body.id, "api_key": key})))
}

fn rotate_key(request: &Request, tenant: &str) -> Answer {
    require_admin(request)?;
    if !tvs_guest_core::tenant_id::is_valid(tenant) {
        return Err(ApiError::bad_request(tvs_guest_core::tenant_id::invalid_message(
            tenant,
        )));
    }
    let key = issue_key(tenant)?;
    Ok((200, json!({"id": tenant, "api_key": key})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DocumentIn {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    #[serde(default)]
    vector: Option<Vec<f32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChunkIn {
    size: u32,
    #[serde(default)]
    overlap: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpsertBody {
    documents: Vec<DocumentIn>,
    #[serde(default)]
    chunk: Option<ChunkIn>,
}

fn upsert(request: &Request) -> Result<Value, ApiError> {
    let tenant_id = bind_tenant(request, Scope::Write)?;
    // Charged as on `tvs serve`: the request body's length.
    let ingest_bytes = request.body().len() as u64;
    let body: UpsertBody = body(request)?;
    if body.documents.is_empty() {
        return Err(ApiError::bad_request("documents is empty"));
    }
    if body.documents.len() > MAX_BATCH {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_BATCH} documents per request"
        )));
    }
    let request = IngestRequest {
        documents: body
            .documents
            .into_iter()
            .map(|d| IngestDocument {
                id: d.id,
                text: d.text,
                metadata: d.metadata.map(|m| Value::Object(m).to_string()),
                vector: d.vector,
            })
            .collect(),
        chunk: body.chunk.map(|c| Chunking {
            size: c.size,
            overlap: c.overlap,
        }),
    };
    admit(&tenant_id, ingest_bytes)?;
    let response = handler::ingest(&request).map_err(guest_error)?;
    Ok(json!({"ids": response.ids, "embedded": response.embedded}))
}

#[derive(Deserialize)]
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchBody {
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    vector: Option<Vec<f32>>,
    #[serde(default)]
    top_k: Option<u32>,
    #[serde(default)]
    filter: Option<Value>,
    #[serde(default)]
    mmr: Option<MmrIn>,
    #[serde(default)]
    rerank: Option<String>,
}

/// Checks a filter here, so a bad one is a 400 before the tenant is read, and returns it as the
/// JSON text the guest takes.
fn checked_filter(filter: Option<&Value>) -> Result<Option<String>, ApiError> {
    let Some(filter) = filter else { return Ok(None) };
    Filter::parse(filter).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Some(filter.to_string()))
}

fn search(request: &Request) -> Result<Value, ApiError> {
    let tenant_id = bind_tenant(request, Scope::Read)?;
    let body: SearchBody = body(request)?;
    let top_k = match body.top_k {
        Some(k) => k,
        None => variable_u64("default_top_k", 5)?.min(u64::from(MAX_TOP_K)) as u32,
    };
    if top_k == 0 || top_k > MAX_TOP_K {
        return Err(ApiError::bad_request(format!(
            "top_k must be between 1 and {MAX_TOP_K}"
        )));
    }
    let filter = checked_filter(body.filter.as_ref())?;
    if body.rerank.is_some() {
        return Err(ApiError::bad_request(
            "rerank: tenant plugins run on tvs serve, not on Spin",
        ));
    }
    let request = SearchRequest {
        query: body.query,
        vector: body.vector,
        top_k,
        filter,
        mmr: body.mmr.map(|m| Mmr {
            fetch_k: m.fetch_k.min(MAX_TOP_K * 10),
            lambda_mult: m.lambda_mult,
        }),
    };
    admit(&tenant_id, 0)?;
    let hits = handler::search(&request).map_err(guest_error)?;
    let hits: Vec<Value> = hits
        .into_iter()
        .map(|h| {
            json!({"id": h.id, "score": h.score, "distance": h.distance, "text": h.text, "metadata": metadata_value(&h.metadata)})
        })
        .collect();
    Ok(json!({ "hits": hits }))
}

fn metadata_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| json!({}))
}

fn get_document(request: &Request, id: &str) -> Result<Value, ApiError> {
    let tenant_id = bind_tenant(request, Scope::Read)?;
    admit(&tenant_id, 0)?;
    let doc = handler::get(&[id.to_owned()])
        .map_err(guest_error)?
        .pop()
        .ok_or_else(|| ApiError::not_found(format!("no document {id:?}")))?;
    Ok(json!({"id": doc.id, "text": doc.text, "metadata": metadata_value(&doc.metadata)}))
}

fn delete_document(request: &Request, id: &str) -> Result<Value, ApiError> {
    let tenant_id = bind_tenant(request, Scope::Write)?;
    admit(&tenant_id, 0)?;
    match handler::delete(&[id.to_owned()], None).map_err(guest_error)? {
        0 => Err(ApiError::not_found(format!("no document {id:?}"))),
        n => Ok(json!({ "deleted": n })),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteBody {
    #[serde(default)]
    ids: Option<Vec<String>>,
    #[serde(default)]
    filter: Option<Value>,
}

fn delete_documents(request: &Request) -> Result<Value, ApiError> {
    let tenant_id = bind_tenant(request, Scope::Write)?;
    let body: DeleteBody = body(request)?;
    let filter = checked_filter(body.filter.as_ref())?;
    if body.ids.is_none() && filter.is_none() {
        return Err(ApiError::bad_request("give ids or filter"));
    }
    let ids = body.ids.unwrap_or_default();
    admit(&tenant_id, 0)?;
    let deleted = handler::delete(&ids, filter.as_deref()).map_err(guest_error)?;
    Ok(json!({ "deleted": deleted }))
}

fn stats(request: &Request) -> Result<Value, ApiError> {
    let tenant_id = bind_tenant(request, Scope::Read)?;
    admit(&tenant_id, 0)?;
    let info = handler::stats().map_err(guest_error)?;
    let metric = match info.metric {
        Metric::Cos => "cos",
        Metric::Ip => "ip",
        Metric::L2 => "l2",
    };
    let mut stats = json!({
        "count": info.count, "dims": info.dims, "metric": metric, "bytes": info.bytes,
        "embedding_model": info.embedding_model,
    });
    // Usage against the quota, as `tvs serve` shows it; every Spin tenant has one (the
    // `max_documents` variable when it was created without).
    if let Some(limit) = tenant::max_documents() {
        stats["max_documents"] = json!(limit);
    }
    if let Some(limits) = tenant::current_rate_limits().map(|l| shared_limits(&l))
        && !limits.is_unlimited()
    {
        stats["rate_limits"] = json!(limits);
    }
    // How a search reads this tenant on Spin: the estimate of its recall, and what it costs.
    if let Some(index) = tenant::index_info() {
        stats["index"] = json!({
            "clustered": index.clustered_rows, "unclustered": index.tail_rows,
            "clusters": index.clusters, "clusters_per_search": index.nprobe,
            "estimated_recall_at_10": index.recall, "key_value_values": index.values,
        });
    }
    Ok(stats)
}

/// OpenAI's embeddings request.
#[derive(Deserialize)]
struct EmbeddingsBody {
    #[serde(default)]
    model: Option<String>,
    input: Value,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<u64>,
    /// Accepted as OpenAI's clients send it; not used.
    #[serde(default)]
    #[allow(dead_code)]
    user: Option<String>,
}

/// The texts of an OpenAI `input`. Token ids are refused here: decoding them needs the 1.7 MB
/// cl100k table, which `tvs serve` has and this component does not carry.
fn embedding_inputs(input: Value) -> Result<Vec<String>, ApiError> {
    tvs_guest_core::openai::inputs(input)
        .map_err(ApiError::bad_request)?
        .into_iter()
        .map(|input| match input {
            Input::Text(text) => Ok(text),
            Input::TokenIds(_) => Err(ApiError::bad_request(
                "token ids are not taken on Spin: send texts (LangChain: OpenAIEmbeddings(check_embedding_ctx_length=False))",
            )),
        })
        .collect()
}

fn embeddings(request: &Request) -> Result<Value, ApiError> {
    let tenant_id = bind_tenant(request, Scope::Read)?;
    let body: EmbeddingsBody = body(request)?;
    let base64 = match body.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "encoding_format must be \"float\" or \"base64\", got {other:?}"
            )));
        }
    };
    let texts = embedding_inputs(body.input)?;
    admit(&tenant_id, 0)?;
    let (model, dims) = embedder::model();
    if model == "none" {
        return Err(ApiError::bad_request(
            "this tenant has no embedding model (it stores client vectors)",
        ));
    }
    if let Some(asked) = body
        .model
        .as_deref()
        .filter(|asked| !models::names_tenant_model(asked, &model))
    {
        return Err(ApiError::bad_request(format!(
            "this tenant embeds with {model}, not {asked:?}: vectors of two models do not mix"
        )));
    }
    if let Some(asked) = body.dimensions.filter(|&d| d != u64::from(dims)) {
        return Err(ApiError::bad_request(format!(
            "{model} makes {dims}-dimensional vectors and cannot shorten them: dimensions must be {dims} or left out, not {asked}"
        )));
    }
    let vectors = embedder::embed(&texts).map_err(|e| {
        ApiError::new(
            502,
            "embedding_failed",
            match e {
                GuestError::Internal(m) | GuestError::InvalidInput(m) => m,
                other => format!("{other:?}"),
            },
        )
    })?;
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = if base64 {
                use base64::Engine as _;
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    // Spin's generate-embeddings reports no per-request token count through tvs:store/embedder.
    Ok(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
    }))
}
