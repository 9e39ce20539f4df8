//! The error answer of every route, `{"error": {"code", "message"}}` with a fitting status, and the
//! mapping of the library's errors to it. No panic, wasm backtrace or storage detail reaches a
//! client: such failures are logged here and answered `500 internal`.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tvs_runtime::{GuestError, RequestErrorKind};
use tvs_store::remote::RemoteError;
use tvs_store::store::{OpenError, Quota};

use super::App;

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds for `Retry-After` (503 and 429 default to 1).
    retry_after: Option<u64>,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    pub(super) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    /// The seconds a 429 or 503 asks the client to wait (`Retry-After`; 1 when not set).
    pub(super) fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
    pub(super) fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server failed to complete the request",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE || self.status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(self.retry_after.unwrap_or(1)));
        }
        response
    }
}

pub(super) fn from_json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send Content-Type: application/json",
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the request body is larger than the server accepts",
        ),
        other => ApiError::bad_request(format!("malformed JSON body: {}", other.body_text())),
    }
}

/// The answer when another node holds the tenant: the client retries, and the proxy sends the
/// retry to the owner (or this node takes the tenant back if the proxy routes it here).
pub(super) fn tenant_moved(why: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "tenant_moved",
        format!("another node holds this tenant now ({why}); retry the request"),
    )
}

pub(super) fn from_remote(error: RemoteError) -> ApiError {
    match error {
        RemoteError::Fenced(why) => tenant_moved(&why),
        RemoteError::Unavailable(why) => {
            tracing::error!(error = %why, "object storage unavailable");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                "object storage is unavailable; nothing was changed; retry shortly",
            )
        }
        RemoteError::Corrupt(why) => {
            tracing::error!(error = %why, "a tenant's objects are damaged");
            ApiError::internal()
        }
    }
}

pub(super) fn from_open(error: OpenError) -> ApiError {
    match error {
        OpenError::Remote(e) => from_remote(e),
        OpenError::NotFound(_) => ApiError::not_found("the tenant of this key no longer exists"),
        OpenError::Locked(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "the tenant is open in another tvs process",
        ),
        other => {
            tracing::error!(error = ?other, "opening a tenant store failed");
            ApiError::internal()
        }
    }
}

pub(super) fn from_guest(error: GuestError) -> ApiError {
    match error {
        GuestError::Request { kind, message } => match kind {
            RequestErrorKind::InvalidInput | RequestErrorKind::NoEmbedder => ApiError::bad_request(message),
            // A storage quota: the request is too large for what the tenant may still hold.
            RequestErrorKind::QuotaExceeded(_) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "quota_exceeded", message)
            }
            RequestErrorKind::TenantDeleted => ApiError::not_found(message),
            RequestErrorKind::Internal => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
        },
        GuestError::Deadline(_) => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "guest_deadline", error.to_string()),
        GuestError::Memory(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "guest_memory", error.to_string()),
        GuestError::Trap(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "guest_trap", error.to_string()),
        GuestError::Busy => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", error.to_string()),
        other => {
            tracing::error!(error = ?other, "guest setup failed");
            ApiError::internal()
        }
    }
}

/// Maps a guest failure to a response, counting the failures of the sandbox.
pub(super) fn guest_failed(app: &App, error: GuestError) -> ApiError {
    match &error {
        GuestError::Deadline(_) => app.metrics.guest_failure("deadline"),
        GuestError::Memory(_) => app.metrics.guest_failure("memory"),
        GuestError::Trap(_) => app.metrics.guest_failure("trap"),
        GuestError::Busy => app.metrics.guest_failure("busy"),
        GuestError::Request {
            kind: RequestErrorKind::QuotaExceeded(quota),
            ..
        } => app.metrics.quota_exceeded(match quota {
            Quota::Documents => "max_documents",
            Quota::Bytes => "max_bytes",
        }),
        _ => {}
    }
    from_guest(error)
}
