//! Tenant tokens' rules, shared by `tvs serve` (which checks signatures with the `jsonwebtoken`
//! crate) and the Spin front (which has no JWT library and checks HS256 with [`verify_hs256`]):
//! the scopes, the signing keys as stored, every refusal with the words a client is told, and
//! what the claims of a correctly signed token must satisfy.
//!
//! A token is an HS256 JWT whose header names its signing key (`kid`) and whose claims are
//! `tenant`, `scope` (space-separated `read`, `write`, `plugins`), `exp` (required) and
//! optionally `nbf` and `iat`; sent bare or as `tvs.{tenant}.{jwt}` so that a proxy can route it
//! by tenant like a key, in which case the prefix must name the claim's tenant.
//!
//! Invariant: a token grants exactly the scopes of its claims, for the tenant its claim names,
//! and only if its header says HS256, its `kid` names a signing key that is not revoked, its
//! signature is that key's HMAC-SHA256 of its first two parts, and it is within its lifetime.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::tenant_id;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 5;
/// Longest lifetime a token may claim (`exp - iat`, or `exp - now` without `iat`), in seconds:
/// tokens are meant to be short-lived; a longer-lived credential is a tenant key.
pub const MAX_TTL_SECS: u64 = 7 * 24 * 3600;
/// How a signing secret shown to the admin starts: `tvs_sk.{kid}.{base64url key}`.
pub const SECRET_PREFIX: &str = "tvs_sk";

/// What a credential allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Search, get, stats, embeddings, listing plugins.
    Read,
    /// Upserts, deletes, calling tenant functions.
    Write,
    /// Uploading, activating and removing plugins.
    Plugins,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Plugins => "plugins",
        }
    }

    /// The message of a 403 for a credential without this scope.
    pub fn missing_message(self) -> String {
        format!("this route needs a token with the {} scope", self.name())
    }
}

/// A set of scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    /// What a tenant key allows: everything.
    pub const ALL: Scopes = Scopes(0b111);

    fn bit(scope: Scope) -> u8 {
        match scope {
            Scope::Read => 1,
            Scope::Write => 2,
            Scope::Plugins => 4,
        }
    }

    pub fn allows(self, scope: Scope) -> bool {
        self.0 & Self::bit(scope) != 0
    }

    /// Parses a space-separated `scope` claim; an unknown scope or an empty claim is an error.
    pub fn parse(text: &str) -> Result<Scopes, TokenError> {
        let mut scopes = Scopes::default();
        for word in text.split_whitespace() {
            let scope = match word {
                "read" => Scope::Read,
                "write" => Scope::Write,
                "plugins" => Scope::Plugins,
                other => return Err(TokenError::Scope(format!("unknown scope {other:?}"))),
            };
            scopes.0 |= Self::bit(scope);
        }
        if scopes.0 == 0 {
            return Err(TokenError::Scope("the scope claim names no scope".into()));
        }
        Ok(scopes)
    }
}

/// Why a token grants nothing; the message is what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a well-formed JWT: {0}")]
    Malformed(String),
    #[error("the token's algorithm must be HS256")]
    Algorithm,
    #[error("the token names no signing key (kid) or one this server does not know")]
    UnknownKey,
    #[error("the token's signing key was revoked")]
    RevokedKey,
    #[error("the token's signature does not match its signing key")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token lives longer than the longest allowed ({} days)", MAX_TTL_SECS / 86_400)]
    TooLong,
    #[error("the token's tenant claim is not a valid tenant id: {0}")]
    Tenant(String),
    #[error("the token's scope claim is invalid: {0}")]
    Scope(String),
    #[error("the token's routing prefix names another tenant than its claim")]
    PrefixMismatch,
}

/// What a verified token allows: its tenant (a valid id) and its scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub tenant: String,
    pub scopes: Scopes,
}

/// The claims tvs reads and writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub tenant: String,
    pub scope: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// A signing key as stored (`tvs serve`'s `.signing_keys.json`, the bucket's
/// `signing_keys.json`, Spin's key-value): a JSON list of these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKey {
    pub id: String,
    /// The HMAC key, base64url without padding.
    pub secret: String,
    pub created_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<u64>,
}

/// A signing key as the admin API shows it: never its secret (shown once, at creation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub created_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<u64>,
}

/// Random bytes a new signing key is made of: 8 for its id, 32 for its HMAC key.
pub const NEW_KEY_RANDOM_BYTES: usize = 40;

impl StoredKey {
    /// A new key made of `random` (from the platform's secure source), created at `now`.
    pub fn generate(random: &[u8; NEW_KEY_RANDOM_BYTES], now: u64) -> StoredKey {
        let (id, key) = random.split_at(8);
        StoredKey {
            id: id.iter().map(|b| format!("{b:02x}")).collect(),
            secret: URL_SAFE_NO_PAD.encode(key),
            created_at: now,
            revoked_at: None,
        }
    }

    /// The secret text the admin is shown once: `tvs_sk.{kid}.{key}`.
    pub fn secret_text(&self) -> String {
        format!("{SECRET_PREFIX}.{}.{}", self.id, self.secret)
    }

    pub fn info(&self) -> KeyInfo {
        KeyInfo {
            id: self.id.clone(),
            created_at: self.created_at,
            revoked_at: self.revoked_at,
        }
    }
}

/// Revokes key `id` among `keys` at `now` (revoking twice keeps the first time); what it is
/// now, or `None` when there is no such key.
pub fn revoke(keys: &mut [StoredKey], id: &str, now: u64) -> Option<KeyInfo> {
    let key = keys.iter_mut().find(|k| k.id == id)?;
    key.revoked_at.get_or_insert(now);
    Some(key.info())
}

/// The routing prefix's tenant (if the token has one) and the JWT.
pub fn split_routing(token: &str) -> (Option<&str>, &str) {
    match token.strip_prefix("tvs.").and_then(|rest| rest.split_once('.')) {
        Some((hint, jwt)) => (Some(hint), jwt),
        None => (None, token),
    }
}

/// Whether a bearer credential is a token (a JWT: three segments, the first a JSON header,
/// `eyJ…`, bare or after `tvs.{tenant}.`) rather than a key (`tvs.{tenant}.{secret}`).
pub fn is_token(bearer: &str) -> bool {
    let (_, jwt) = split_routing(bearer);
    jwt.starts_with("eyJ") && jwt.split('.').count() == 3
}

/// The HMAC key of `kid` among `keys`, refusing an unknown or revoked one.
pub fn key_of(keys: &[StoredKey], kid: Option<&str>) -> Result<Vec<u8>, TokenError> {
    let stored = kid
        .and_then(|kid| keys.iter().find(|k| k.id == kid))
        .ok_or(TokenError::UnknownKey)?;
    if stored.revoked_at.is_some() {
        return Err(TokenError::RevokedKey);
    }
    URL_SAFE_NO_PAD
        .decode(&stored.secret)
        .map_err(|_| TokenError::UnknownKey)
}

/// What the claims of a token whose signature and lifetime were checked grant, `now` in Unix
/// seconds: a lifetime within [`MAX_TTL_SECS`], a valid tenant id matching the routing prefix,
/// and known scopes.
pub fn grant(claims: &Claims, hint: Option<&str>, now: u64) -> Result<Grant, TokenError> {
    let issued = claims.iat.unwrap_or(now).max(claims.nbf.unwrap_or(0));
    if claims.exp.saturating_sub(issued) > MAX_TTL_SECS {
        return Err(TokenError::TooLong);
    }
    if !tenant_id::is_valid(&claims.tenant) {
        return Err(TokenError::Tenant(tenant_id::invalid_message(&claims.tenant)));
    }
    if hint.is_some_and(|h| h != claims.tenant) {
        return Err(TokenError::PrefixMismatch);
    }
    Ok(Grant {
        tenant: claims.tenant.clone(),
        scopes: Scopes::parse(&claims.scope)?,
    })
}

fn segment(text: &str, what: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|e| TokenError::Malformed(format!("its {what} is not base64url: {e}")))
}

/// The `kid` of a JWT's header segment, once its `alg` is `HS256` (any other, `none` included,
/// or none at all, is [`TokenError::Algorithm`], whatever a JWT library thinks of its name).
pub fn hs256_kid(header: &str) -> Result<Option<String>, TokenError> {
    let header: serde_json::Value = serde_json::from_slice(&segment(header, "header")?)
        .map_err(|e| TokenError::Malformed(format!("its header is not JSON: {e}")))?;
    if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
        return Err(TokenError::Algorithm);
    }
    Ok(header.get("kid").and_then(|k| k.as_str()).map(str::to_owned))
}

/// Verifies an HS256 token (bare or `tvs.{tenant}.{jwt}`) against `keys` at `now` (Unix
/// seconds), as `tvs serve` does with `jsonwebtoken`: the header's `alg` must be `HS256` (so
/// `none` and every other algorithm are refused before a key is looked at), the signature is
/// compared in constant time, then `exp` (required) and `nbf` with [`LEEWAY_SECS`] of skew.
pub fn verify_hs256(token: &str, keys: &[StoredKey], now: u64) -> Result<Grant, TokenError> {
    let (hint, jwt) = split_routing(token);
    let mut parts = jwt.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("a JWT has three dot-separated parts".into()));
    };
    let signing_input = &jwt[..jwt.len() - signature.len() - 1];
    let kid = hs256_kid(header)?;
    let key = key_of(keys, kid.as_deref())?;
    let signature = segment(signature, "signature")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| TokenError::UnknownKey)?;
    mac.update(signing_input.as_bytes());
    mac.verify_slice(&signature).map_err(|_| TokenError::Signature)?;
    let claims: Claims = serde_json::from_slice(&segment(payload, "payload")?)
        .map_err(|e| TokenError::Malformed(format!("its claims are not tvs's (tenant, scope, exp): {e}")))?;
    if claims.exp.saturating_add(LEEWAY_SECS) < now {
        return Err(TokenError::Expired);
    }
    if claims.nbf.is_some_and(|nbf| nbf > now.saturating_add(LEEWAY_SECS)) {
        return Err(TokenError::NotYetValid);
    }
    grant(&claims, hint, now)
}

/// Signs claims into an HS256 token with `key` named `kid` (for tests and tools: apps mint
/// with their own JWT library).
pub fn sign_hs256(kid: &str, key: &[u8], claims: &Claims) -> String {
    let header = serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": kid});
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialise"))
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn key() -> StoredKey {
        StoredKey {
            id: "k1".into(),
            secret: URL_SAFE_NO_PAD.encode([7u8; 32]),
            created_at: NOW - 100,
            revoked_at: None,
        }
    }

    fn claims(tenant: &str, scope: &str) -> Claims {
        Claims {
            tenant: tenant.into(),
            scope: scope.into(),
            exp: NOW + 600,
            nbf: None,
            iat: Some(NOW),
        }
    }

    fn token(claims: &Claims) -> String {
        sign_hs256("k1", &[7u8; 32], claims)
    }

    #[test]
    fn scopes_parse_strictly() {
        assert!(Scopes::parse("read write").expect("valid").allows(Scope::Write));
        assert!(!Scopes::parse("read").expect("valid").allows(Scope::Write));
        assert!(Scopes::parse("").is_err());
        assert!(Scopes::parse("read admin").is_err());
    }

    #[test]
    fn a_signed_token_grants_its_claims_and_every_wrong_one_is_refused_with_its_reason() {
        let keys = [key()];
        let good = token(&claims("alice", "read"));
        let granted = verify_hs256(&good, &keys, NOW).expect("valid");
        assert_eq!(granted.tenant, "alice");
        assert!(granted.scopes.allows(Scope::Read) && !granted.scopes.allows(Scope::Write));
        assert_eq!(verify_hs256(&format!("tvs.alice.{good}"), &keys, NOW), Ok(granted));
        assert_eq!(
            verify_hs256(&format!("tvs.bob.{good}"), &keys, NOW),
            Err(TokenError::PrefixMismatch)
        );

        let expired = Claims {
            exp: NOW - 60,
            iat: Some(NOW - 120),
            ..claims("alice", "read")
        };
        assert_eq!(verify_hs256(&token(&expired), &keys, NOW), Err(TokenError::Expired));
        let within_leeway = Claims {
            exp: NOW - 3,
            iat: Some(NOW - 60),
            ..claims("alice", "read")
        };
        assert!(verify_hs256(&token(&within_leeway), &keys, NOW).is_ok());
        let early = Claims {
            nbf: Some(NOW + 60),
            ..claims("alice", "read")
        };
        assert_eq!(verify_hs256(&token(&early), &keys, NOW), Err(TokenError::NotYetValid));
        let long = Claims {
            exp: NOW + MAX_TTL_SECS + 60,
            ..claims("alice", "read")
        };
        assert_eq!(verify_hs256(&token(&long), &keys, NOW), Err(TokenError::TooLong));
        assert!(matches!(
            verify_hs256(&token(&claims("../etc", "read")), &keys, NOW),
            Err(TokenError::Tenant(_))
        ));
        assert!(matches!(
            verify_hs256(&token(&claims("alice", "admin")), &keys, NOW),
            Err(TokenError::Scope(_))
        ));

        // Another key's signature, a changed claim, `none` and another algorithm.
        assert_eq!(
            verify_hs256(&sign_hs256("k1", &[8u8; 32], &claims("alice", "read")), &keys, NOW),
            Err(TokenError::Signature)
        );
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims("bob", "read write")).expect("json"));
        assert_eq!(verify_hs256(&parts.join("."), &keys, NOW), Err(TokenError::Signature));
        for alg in ["none", "HS512", "RS256"] {
            let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","kid":"k1"}}"#));
            let forged = format!("{header}.{}.{}", parts[1], if alg == "none" { "" } else { "c2ln" });
            assert_eq!(verify_hs256(&forged, &keys, NOW), Err(TokenError::Algorithm), "{alg}");
        }
        assert_eq!(
            verify_hs256(&sign_hs256("k2", &[7u8; 32], &claims("alice", "read")), &keys, NOW),
            Err(TokenError::UnknownKey)
        );
        let revoked = [StoredKey {
            revoked_at: Some(NOW - 1),
            ..key()
        }];
        assert_eq!(verify_hs256(&good, &revoked, NOW), Err(TokenError::RevokedKey));
        assert!(matches!(
            verify_hs256("eyJ.a", &keys, NOW),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            verify_hs256("eyJhbGciOi.x.y", &keys, NOW),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn tokens_and_keys_are_told_apart() {
        let good = token(&claims("alice", "read"));
        assert!(is_token(&good) && is_token(&format!("tvs.alice.{good}")));
        assert!(!is_token("tvs.alice.0123abcd"));
    }
}
