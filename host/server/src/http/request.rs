//! What every route does with a request before its own work: who is calling (the admin, or a
//! tenant by key or token with a scope), running blocking work off the async threads under the
//! request timeout, and reaching an authenticated tenant's store under its rate limits.

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode, header};
use serde_json::Value;
use tvs_guest_core::filter::Filter;
use tvs_store::remote::RemoteError;
use tvs_store::store::TenantStore;
use tvs_store::tenant::TenantId;

use super::App;
use super::error::{ApiError, from_open, from_remote, tenant_moved};
use crate::auth::AuthError;
use crate::tokens::Scope;

pub(super) fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send Authorization: Bearer <key>",
            )
        })
}

pub(super) fn require_admin(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    if app.keys.is_admin(bearer(headers)?) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this route needs the admin key",
        ))
    }
}

/// The tenant an admin route names in its path, once the caller is the admin.
pub(super) fn admin_tenant(app: &App, headers: &HeaderMap, id: &str) -> Result<TenantId, ApiError> {
    require_admin(app, headers)?;
    TenantId::new(id).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// 404 unless the tenant exists (checked before anything is written for it).
pub(super) fn require_tenant(app: &App, id: &TenantId) -> Result<(), ApiError> {
    if app.pool.data_dir().tenant_exists(id).map_err(from_remote)? {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("tenant {id} does not exist")))
    }
}

/// The tenant a request's key or token is for, when it allows `scope` there.
pub(super) fn tenant_for(app: &App, headers: &HeaderMap, scope: Scope) -> Result<TenantId, ApiError> {
    let bearer = bearer(headers)?;
    // With tenants in object storage a check may read the bucket (a key hash or the signing
    // keys, at most every few seconds): the worker hands its other tasks on meanwhile.
    let granted = if app.pool.data_dir().catalog().is_some() {
        tokio::task::block_in_place(|| app.keys.grant(bearer))
    } else {
        app.keys.grant(bearer)
    };
    let grant = granted.map_err(|e| {
        app.metrics.auth_refused(match &e {
            AuthError::Key => "key",
            AuthError::Token(_) => "token",
            AuthError::Unavailable(e) => return from_remote(e.clone()),
        });
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
    })?;
    if !grant.scopes.allows(scope) {
        app.metrics.auth_refused("scope");
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            scope.missing_message(),
        ));
    }
    Ok(grant.tenant)
}

/// Runs blocking work off the async threads, under the request timeout.
pub(super) async fn blocking<T: Send + 'static>(
    app: &App,
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::time::timeout(app.limits.request_timeout, tokio::task::spawn_blocking(work)).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => {
            tracing::error!(error = %join, "request handler panicked");
            Err(ApiError::internal())
        }
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            "the request took too long",
        )),
    }
}

/// Checks a request's filter here, so a bad one is a 400 before any store is opened, and returns
/// it as the JSON text the guest takes.
pub(super) fn checked_filter(filter: Option<&Value>) -> Result<Option<String>, ApiError> {
    let Some(filter) = filter else { return Ok(None) };
    Filter::parse(filter).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Some(filter.to_string()))
}

/// Runs `work` with the store of an authenticated tenant, on the blocking pool under the
/// request timeout.
pub(super) async fn with_store<T: Send + 'static>(
    app: &Arc<App>,
    tenant: TenantId,
    work: impl FnOnce(&App, Arc<TenantStore>) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    with_store_metered(app, tenant, 0, work).await
}

/// [`with_store`] for a request carrying `ingest_bytes` of documents, counted against the
/// tenant's ingest rate.
pub(super) async fn with_store_metered<T: Send + 'static>(
    app: &Arc<App>,
    tenant: TenantId,
    ingest_bytes: u64,
    work: impl FnOnce(&App, Arc<TenantStore>) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let shared = app.clone();
    blocking(app, move || {
        shared.rates.admit(&tenant, ingest_bytes).map_err(|refusal| {
            shared.metrics.rate_limited(refusal.limit);
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                refusal.message(tenant.as_str()),
            )
            .with_retry_after(refusal.retry_after_header())
        })?;
        let store = shared.pool.get(&tenant).map_err(from_open)?;
        // A node that lost the tenant while paused or partitioned must not answer from its
        // cache: at most `TVS_OWNER_CHECK_MS` after a takeover it finds out here. Either way
        // the store then counts as poisoned, and the pool opens the tenant afresh next time.
        store.check_owner().map_err(from_remote)?;
        let result = work(&shared, store.clone());
        if result.is_err() && store.remote().is_some() {
            if store.is_fenced() {
                return Err(tenant_moved("a write found the tenant taken over"));
            }
            if store.is_poisoned() {
                // A WAL object could not be written; the next request reopens the tenant.
                return Err(from_remote(RemoteError::Unavailable(
                    "a write could not reach object storage".into(),
                )));
            }
        }
        result
    })
    .await
}
