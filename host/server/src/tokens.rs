//! Tenant tokens: short-lived JWTs an app mints for its users with a signing secret the admin
//! created (`POST /v1/admin/signing-keys`), so the app keeps one secret instead of a key per
//! user, as Qdrant's JWT access does.
//!
//! The token format, the scopes, the refusals and the claim rules are
//! [`tvs_guest_core::token`]'s (shared with the Spin front); here the `jsonwebtoken` crate checks
//! the signature and lifetime, and the keys are kept. The signing secret the admin is shown once is `tvs_sk.{kid}.{base64url of 32 bytes}`: the key
//! id and the HMAC key in one string. Rotation: create a new key, mint with it, revoke the old one
//! once the tokens it signed have expired (revoking refuses them at once).
//!
//! Signing keys live in `{data}/.signing_keys.json` (mode 0600, written atomically), which a
//! tenant id can never name (ids start with a letter or digit). With tenants in object storage
//! they are the bucket's `signing_keys.json`, changed by conditional updates (two nodes creating
//! keys at once both land) and read by every node at most [`SHARED_KEYS_TTL`] ago: a key created
//! on one node signs tokens every node accepts at once (an unknown `kid` makes a node read the
//! keys again), a revoked one is refused everywhere within that time.
//!
//! Invariant: a token grants exactly the scopes of its verified claims, for the tenant its claim
//! names; an unknown or revoked key, any algorithm but HS256 (`none` included), a bad signature,
//! an expired or not-yet-valid token, or a claim that fails the tenant grammar grants nothing.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tvs_guest_core::token as rules;

use tvs_store::remote::{Catalog, RemoteError, Replace, SharedObject};
use tvs_store::storage::{self, StdStorage};
use tvs_store::tenant::{DataDir, TenantId};

/// File holding the signing keys, in the data directory.
pub const SIGNING_KEYS_FILE: &str = ".signing_keys.json";
/// How long a node trusts the signing keys it read from object storage.
pub const SHARED_KEYS_TTL: Duration = Duration::from_secs(5);
/// How often at most a token naming an unknown key makes a node read the keys again.
pub const SHARED_KEYS_RECHECK: Duration = Duration::from_millis(100);
/// Attempts at a conditional update of the shared keys (each lost only to another node's
/// update, which itself landed).
const SHARED_KEYS_ATTEMPTS: usize = 16;
pub use tvs_guest_core::token::{Claims, LEEWAY_SECS, MAX_TTL_SECS, Scope, Scopes, StoredKey, TokenError};

/// A verified token: whose it is and what it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub tenant: TenantId,
    pub scopes: Scopes,
}

/// A signing key as the admin API shows it (never its secret, except once at creation).
pub type SigningKeyInfo = rules::KeyInfo;

/// Why a signing key could not be created or revoked.
#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    #[error("storing the signing keys failed: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

/// Where the signing keys are kept.
#[derive(Debug)]
enum Place {
    File(PathBuf),
    Bucket(Arc<dyn Catalog>),
}

/// The keys as last read, and when.
#[derive(Debug)]
struct Loaded {
    keys: Vec<StoredKey>,
    read_at: Instant,
}

/// The server's signing keys.
#[derive(Debug)]
pub struct SigningKeys {
    place: Place,
    loaded: RwLock<Loaded>,
}

fn parse_keys(bytes: &[u8], from: &str) -> io::Result<Vec<StoredKey>> {
    serde_json::from_slice(bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{from} is not a list of signing keys: {e}"),
        )
    })
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl SigningKeys {
    /// Loads the data directory's signing keys (none yet is fine).
    pub fn open(data: &DataDir) -> io::Result<SigningKeys> {
        let (place, keys) = match data.catalog() {
            Some(catalog) => {
                let keys = match catalog.read_shared(&SharedObject::SigningKeys) {
                    Ok(Some((bytes, _))) => parse_keys(&bytes, "the bucket's signing_keys.json")?,
                    Ok(None) => Vec::new(),
                    // Read again on the first token: a node must start while the bucket is down.
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the signing keys from object storage yet");
                        Vec::new()
                    }
                };
                (Place::Bucket(catalog.clone()), keys)
            }
            None => {
                let path = data.root().join(SIGNING_KEYS_FILE);
                let keys = match storage::read_all(&StdStorage, &path) {
                    Ok(bytes) => parse_keys(&bytes, &path.display().to_string())?,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
                    Err(e) => return Err(e),
                };
                (Place::File(path), keys)
            }
        };
        Ok(SigningKeys {
            place,
            loaded: RwLock::new(Loaded {
                keys,
                read_at: Instant::now(),
            }),
        })
    }

    /// Applies `change` to the keys where they are kept, and returns what it returned. `change`
    /// may run more than once (on a fresh read each time) when nodes change the keys at once.
    fn update<T>(&self, change: impl Fn(&mut Vec<StoredKey>) -> T) -> Result<T, SigningKeyError> {
        match &self.place {
            Place::File(path) => {
                let mut loaded = self.loaded.write().unwrap_or_else(|p| p.into_inner());
                let mut next = loaded.keys.clone();
                let out = change(&mut next);
                let dir = path
                    .parent()
                    .ok_or_else(|| io::Error::other("the key file has no directory"))?;
                let json = serde_json::to_vec_pretty(&next).map_err(io::Error::other)?;
                storage::write_atomic(&StdStorage, dir, SIGNING_KEYS_FILE, &json)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
                loaded.keys = next;
                Ok(out)
            }
            Place::Bucket(catalog) => {
                for _ in 0..SHARED_KEYS_ATTEMPTS {
                    let (mut next, replace) = match catalog.read_shared(&SharedObject::SigningKeys)? {
                        Some((bytes, version)) => (
                            parse_keys(&bytes, "the bucket's signing_keys.json")?,
                            Replace::Version(version),
                        ),
                        None => (Vec::new(), Replace::Absent),
                    };
                    let out = change(&mut next);
                    let json = serde_json::to_vec_pretty(&next).map_err(io::Error::other)?;
                    if catalog.write_shared(&SharedObject::SigningKeys, &json, replace)? {
                        *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = Loaded {
                            keys: next,
                            read_at: Instant::now(),
                        };
                        return Ok(out);
                    }
                }
                Err(RemoteError::Unavailable("the signing keys kept changing under this update".into()).into())
            }
        }
    }

    /// Reads the shared keys again if the copy here is older than `max_age` (nothing to do
    /// with keys in a file: this server is their only writer).
    fn refresh(&self, max_age: Duration) -> Result<(), RemoteError> {
        let Place::Bucket(catalog) = &self.place else {
            return Ok(());
        };
        if self.loaded.read().unwrap_or_else(|p| p.into_inner()).read_at.elapsed() < max_age {
            return Ok(());
        }
        let read = catalog
            .read_shared(&SharedObject::SigningKeys)
            .and_then(|found| match found {
                Some((bytes, _)) => parse_keys(&bytes, "the bucket's signing_keys.json")
                    .map_err(|e| RemoteError::Corrupt(e.to_string())),
                None => Ok(Vec::new()),
            });
        let mut loaded = self.loaded.write().unwrap_or_else(|p| p.into_inner());
        // A failed read keeps the keys last read until the next try, `max_age` from now, so that
        // requests do not each wait on the bucket's timeouts.
        loaded.read_at = Instant::now();
        loaded.keys = read?;
        Ok(())
    }

    /// Creates a signing key; returns it and its secret text (`tvs_sk.{kid}.{key}`), which is
    /// not kept anywhere the API can show again.
    pub fn create(&self) -> Result<(SigningKeyInfo, String), SigningKeyError> {
        let mut random = [0u8; rules::NEW_KEY_RANDOM_BYTES];
        getrandom::fill(&mut random).map_err(|e| io::Error::other(e.to_string()))?;
        let stored = StoredKey::generate(&random, now_secs());
        self.update(|keys| keys.push(stored.clone()))?;
        Ok((stored.info(), stored.secret_text()))
    }

    /// Every signing key, oldest first (with keys in object storage, as the bucket holds them
    /// now).
    pub fn list(&self) -> Result<Vec<SigningKeyInfo>, SigningKeyError> {
        self.refresh(Duration::ZERO)?;
        Ok(self
            .loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys
            .iter()
            .map(StoredKey::info)
            .collect())
    }

    /// Revokes a key: tokens it signed are refused from now on. `Ok(None)` when there is no
    /// such key; revoking twice keeps the first time.
    pub fn revoke(&self, id: &str) -> Result<Option<SigningKeyInfo>, SigningKeyError> {
        let revoked_at = now_secs();
        self.update(|keys| rules::revoke(keys, id, revoked_at))
    }

    /// The HMAC key of `kid`, reading shared keys again when the copy here is stale or does not
    /// know it.
    fn hmac_key(&self, kid: Option<&str>) -> Result<Vec<u8>, TokenError> {
        let kid = kid.ok_or(TokenError::UnknownKey)?;
        let mut recheck = false;
        loop {
            let max_age = if recheck { SHARED_KEYS_RECHECK } else { SHARED_KEYS_TTL };
            if let Err(e) = self.refresh(max_age) {
                // The copy here still answers: a bucket outage must not refuse every token.
                tracing::warn!(error = %e, "cannot read the signing keys from object storage");
            }
            let found = rules::key_of(&self.loaded.read().unwrap_or_else(|p| p.into_inner()).keys, Some(kid));
            match found {
                Err(TokenError::UnknownKey) if !recheck && matches!(self.place, Place::Bucket(_)) => recheck = true,
                found => return found,
            }
        }
    }

    /// Verifies `token` (bare or `tvs.{tenant}.{jwt}`).
    pub fn verify(&self, token: &str) -> Result<Grant, TokenError> {
        let (hint, jwt) = rules::split_routing(token);
        // The header is read here, not by `jsonwebtoken`, which calls an algorithm it has no
        // name for (`none`) a malformed token rather than a wrong algorithm.
        let header = jwt.split('.').next().unwrap_or_default();
        let key = self.hmac_key(rules::hs256_kid(header)?.as_deref())?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.required_spec_claims = ["exp".to_owned()].into();
        let data = jsonwebtoken::decode::<Claims>(jwt, &DecodingKey::from_secret(&key), &validation).map_err(|e| {
            match e.kind() {
                ErrorKind::InvalidSignature => TokenError::Signature,
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidAlgorithm => TokenError::Algorithm,
                _ => TokenError::Malformed(e.to_string()),
            }
        })?;
        let granted = rules::grant(&data.claims, hint, now_secs())?;
        Ok(Grant {
            tenant: TenantId::new(&granted.tenant).map_err(|e| TokenError::Tenant(e.to_string()))?,
            scopes: granted.scopes,
        })
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::{EncodingKey, Header};

    use super::*;

    /// Mints a token with a signing secret as [`SigningKeys::create`] returned it, as an app does
    /// (the Python client's `mint_token`).
    fn mint(secret: &str, tenant: &TenantId, scope: &str, ttl: Duration) -> Result<String, TokenError> {
        let mut parts = secret.trim().splitn(3, '.');
        let (Some(rules::SECRET_PREFIX), Some(kid), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed(
                "a signing secret looks like tvs_sk.{kid}.{key}".into(),
            ));
        };
        let key = URL_SAFE_NO_PAD
            .decode(key)
            .map_err(|_| TokenError::Malformed("the signing secret's key is not base64url".into()))?;
        Scopes::parse(scope)?;
        let now = now_secs();
        let claims = Claims {
            tenant: tenant.as_str().to_owned(),
            scope: scope.to_owned(),
            exp: now + ttl.as_secs(),
            nbf: None,
            iat: Some(now),
        };
        let header = Header {
            kid: Some(kid.to_owned()),
            ..Header::new(Algorithm::HS256)
        };
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&key))
            .map_err(|e| TokenError::Malformed(e.to_string()))
    }

    #[test]
    fn scopes_parse_strictly() {
        let both = Scopes::parse("read write").expect("valid");
        assert!(both.allows(Scope::Read) && both.allows(Scope::Write) && !both.allows(Scope::Plugins));
        assert!(Scopes::parse("read admin").is_err());
        assert!(Scopes::parse("  ").is_err());
        assert!(Scopes::ALL.allows(Scope::Plugins));
    }

    #[test]
    fn a_minted_token_verifies_until_its_key_is_revoked() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = DataDir::open(tmp.path()).expect("data dir");
        let keys = SigningKeys::open(&data).expect("open");
        let (info, secret) = keys.create().expect("create");
        let alice = TenantId::new("alice").expect("id");
        let token = mint(&secret, &alice, "read", Duration::from_secs(60)).expect("mint");
        let grant = keys.verify(&token).expect("valid");
        assert_eq!(grant.tenant, alice);
        assert!(grant.scopes.allows(Scope::Read) && !grant.scopes.allows(Scope::Write));
        assert_eq!(
            keys.verify(&format!("tvs.alice.{token}")).map(|g| g.tenant),
            Ok(alice.clone())
        );
        assert_eq!(
            keys.verify(&format!("tvs.bob.{token}")),
            Err(TokenError::PrefixMismatch)
        );
        // Kept on disk, private to the server's user.
        let reopened = SigningKeys::open(&data).expect("reopen");
        assert!(reopened.verify(&token).is_ok());
        let mode = std::fs::metadata(tmp.path().join(SIGNING_KEYS_FILE))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        keys.revoke(&info.id).expect("revoke");
        assert_eq!(keys.verify(&token), Err(TokenError::RevokedKey));
        assert_eq!(
            SigningKeys::open(&data).expect("reopen").verify(&token),
            Err(TokenError::RevokedKey)
        );
    }

    /// The Spin front checks tokens with `tvs_guest_core::token::verify_hs256`, not
    /// `jsonwebtoken`: both must take the same tokens and refuse the same ones for the same reason.
    #[test]
    fn the_spin_fronts_verifier_agrees_with_jsonwebtoken() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = DataDir::open(tmp.path()).expect("data dir");
        let keys = SigningKeys::open(&data).expect("open");
        let (info, secret) = keys.create().expect("create");
        let stored = keys.loaded.read().expect("keys").keys.clone();
        let alice = TenantId::new("alice").expect("id");
        let now = now_secs();
        let by_jsonwebtoken = mint(&secret, &alice, "read write", Duration::from_secs(60)).expect("mint");
        let granted = rules::verify_hs256(&by_jsonwebtoken, &stored, now).expect("the guest verifier takes it");
        assert_eq!(granted.tenant, "alice");
        assert!(granted.scopes.allows(Scope::Write));
        let key = URL_SAFE_NO_PAD.decode(&stored[0].secret).expect("key");
        let claims = |exp: u64, tenant: &str| Claims {
            tenant: tenant.into(),
            scope: "read".into(),
            exp,
            nbf: None,
            iat: Some(now.saturating_sub(60)),
        };
        let by_guest = rules::sign_hs256(&info.id, &key, &claims(now + 60, "alice"));
        assert_eq!(keys.verify(&by_guest).map(|g| g.tenant), Ok(alice));
        for (token, why) in [
            (
                rules::sign_hs256(&info.id, &key, &claims(now - 30, "alice")),
                TokenError::Expired,
            ),
            (
                rules::sign_hs256(&info.id, &[1; 32], &claims(now + 60, "alice")),
                TokenError::Signature,
            ),
            (
                rules::sign_hs256("nokey", &key, &claims(now + 60, "alice")),
                TokenError::UnknownKey,
            ),
            (
                rules::sign_hs256(&info.id, &key, &claims(now + MAX_TTL_SECS, "alice")),
                TokenError::TooLong,
            ),
        ] {
            assert_eq!(keys.verify(&token).as_ref().map(|_| ()), Err(&why));
            assert_eq!(rules::verify_hs256(&token, &stored, now).map(|_| ()), Err(why));
        }
        let bad_tenant = rules::sign_hs256(&info.id, &key, &claims(now + 60, "../x"));
        assert!(matches!(keys.verify(&bad_tenant), Err(TokenError::Tenant(_))));
        assert!(matches!(
            rules::verify_hs256(&bad_tenant, &stored, now),
            Err(TokenError::Tenant(_))
        ));
    }
}
