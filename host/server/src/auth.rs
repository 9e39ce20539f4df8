//! API keys. A tenant key is `tvs.{tenant}.{secret}` with 256 random bits of secret; only the
//! SHA-256 of the secret is stored (`{tenant}/config/api_key.sha256`), compared in constant
//! time. The admin key comes from `TVS_ADMIN_KEY`, or is generated once into
//! `{data}/.admin_key` (mode 0600).
//!
//! With tenants in object storage the hash is the object `tenants/{tenant}/api_key.sha256`,
//! read through the catalog and remembered for [`REMOTE_KEY_TTL`]: a key issued on one node
//! works on every node at once (a key that does not match is checked against the bucket
//! again), and a rotated one stops working everywhere within that time.
//!
//! A request may instead carry a tenant token ([`crate::tokens`]): a JWT an app minted for one
//! tenant with a signing secret, scoped to read, write and/or plugins. A key allows everything.
//!
//! Invariant: the tenant of a request is the one named in its key *and* whose stored hash the
//! key's secret matches, or the one a verified token's claim names; nothing else (URL, body,
//! filter) can choose a tenant.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use tvs_store::fsutil;
use tvs_store::remote::{Catalog, RemoteError};
use tvs_store::storage::{self, StdStorage};
use tvs_store::tenant::{DataDir, TenantId};

use crate::tokens::{Grant, Scopes, SigningKeys, TokenError};

/// File holding the hash of a tenant's key, in its config directory.
pub const KEY_HASH_FILE: &str = "api_key.sha256";
/// File holding the generated admin key, in the data directory.
pub const ADMIN_KEY_FILE: &str = ".admin_key";

fn random_hex(bytes: usize) -> io::Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// How long a node trusts a key hash read from object storage.
pub const REMOTE_KEY_TTL: Duration = Duration::from_secs(5);
/// How often at most a key that does not match the cached hash makes a node read it again (so
/// that a flood of bad keys costs the bucket at most this rate of reads per tenant).
pub const REMOTE_KEY_RECHECK: Duration = Duration::from_millis(100);

/// Issues and checks keys.
#[derive(Debug)]
pub struct Keys {
    data: DataDir,
    admin: [u8; 32],
    signing: SigningKeys,
    /// Key hashes read from object storage, and when (`None`: no key was issued).
    remote_hashes: Mutex<HashMap<TenantId, CachedHash>>,
}

/// Why a bearer credential was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the key is not valid (revoked or unknown)")]
    Key,
    #[error(transparent)]
    Token(TokenError),
    /// Object storage holds the key's hash and cannot be read, and this node has none cached.
    #[error(transparent)]
    Unavailable(RemoteError),
}

/// When a key hash was read, and what it was (`None`: the tenant has no key).
type CachedHash = (Instant, Option<[u8; 32]>);

impl Keys {
    /// Loads the admin key (from `env_key`, else the key file, else a new one written there).
    /// Returns the keys and, when a key file was created, its path (to tell the operator).
    pub fn open(data: DataDir, env_key: Option<String>) -> io::Result<(Keys, Option<PathBuf>)> {
        let path = data.root().join(ADMIN_KEY_FILE);
        let (admin, created) = match env_key.filter(|k| !k.trim().is_empty()) {
            Some(key) => (digest(key.trim()), None),
            None => match storage::read_all(&StdStorage, &path) {
                Ok(bytes) => (digest(String::from_utf8_lossy(&bytes).trim()), None),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let key = format!("tvs-admin.{}", random_hex(32)?);
                    storage::write_atomic(&StdStorage, data.root(), ADMIN_KEY_FILE, format!("{key}\n").as_bytes())?;
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
                    (digest(&key), Some(path))
                }
                Err(e) => return Err(e),
            },
        };
        let keys = Keys {
            signing: SigningKeys::open(&data)?,
            data,
            admin,
            remote_hashes: Mutex::default(),
        };
        Ok((keys, created))
    }

    /// Whether `key` is the admin key.
    pub fn is_admin(&self, key: &str) -> bool {
        constant_time_eq(&digest(key), &self.admin)
    }

    /// The signing keys tenant tokens are verified with.
    pub fn signing(&self) -> &SigningKeys {
        &self.signing
    }

    /// What a bearer credential grants: a tenant key everything for its tenant, a token what
    /// its claims say.
    pub fn grant(&self, bearer: &str) -> Result<Grant, AuthError> {
        // Anything that is not a token is judged as a key, `tvs.{tenant}.{secret}`.
        if tvs_guest_core::token::is_token(bearer) {
            return self.signing.verify(bearer).map_err(AuthError::Token);
        }
        match self.key_tenant(bearer) {
            Ok(Some(tenant)) => Ok(Grant {
                tenant,
                scopes: Scopes::ALL,
            }),
            Ok(None) => Err(AuthError::Key),
            Err(e) => Err(AuthError::Unavailable(e)),
        }
    }

    /// The tenant a key belongs to, if it is a valid, current tenant key.
    pub fn tenant_of(&self, key: &str) -> Option<TenantId> {
        self.key_tenant(key).ok().flatten()
    }

    /// The tenant a key belongs to, if it is a valid, current tenant key; an error when its
    /// hash is in object storage, which cannot be read, and no copy of it is cached here.
    fn key_tenant(&self, key: &str) -> Result<Option<TenantId>, RemoteError> {
        let Some((tenant, secret)) = key.strip_prefix("tvs.").and_then(|rest| rest.rsplit_once('.')) else {
            return Ok(None);
        };
        let Ok(tenant) = TenantId::new(tenant) else {
            return Ok(None);
        };
        let Some(catalog) = self.data.catalog() else {
            let stored = storage::read_all(&StdStorage, &self.hash_path(&tenant))
                .ok()
                .and_then(|bytes| parse_hex32(std::str::from_utf8(&bytes).ok()?));
            return Ok(stored
                .is_some_and(|s| constant_time_eq(&digest(secret), &s))
                .then_some(tenant));
        };
        let matches = |stored: Option<[u8; 32]>| stored.is_some_and(|s| constant_time_eq(&digest(secret), &s));
        if matches(self.remote_hash(catalog.as_ref(), &tenant, REMOTE_KEY_TTL)?) {
            return Ok(Some(tenant));
        }
        // A key issued on another node a moment ago (or a tenant created again) must work at
        // once; a revoked one may still match a cached hash for the TTL.
        let fresher = self.remote_hash(catalog.as_ref(), &tenant, REMOTE_KEY_RECHECK)?;
        Ok(matches(fresher).then_some(tenant))
    }

    /// The tenant's key hash, from the cache if it was read within `max_age`. While object
    /// storage does not answer, the hash last read stays in use (the key still names its
    /// tenant, whose requests then get the store's own answer, not "invalid key").
    fn remote_hash(
        &self,
        catalog: &dyn Catalog,
        tenant: &TenantId,
        max_age: Duration,
    ) -> Result<Option<[u8; 32]>, RemoteError> {
        let mut cache = self.remote_hashes.lock().unwrap_or_else(|p| p.into_inner());
        let cached = cache.get(tenant).copied();
        if let Some((read, hash)) = cached
            && read.elapsed() < max_age
        {
            return Ok(hash);
        }
        drop(cache);
        let hash = match catalog.key_hash(tenant) {
            Ok(hash) => hash.as_deref().and_then(parse_hex32),
            Err(e) => {
                tracing::warn!(tenant = %tenant, error = %e, "cannot read a key hash from object storage");
                let (_, hash) = cached.ok_or(e)?;
                hash
            }
        };
        cache = self.remote_hashes.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 100_000 {
            cache.clear();
        }
        // After a failed read too: the next try is a TTL away, so requests do not each wait
        // on the bucket's timeouts.
        cache.insert(tenant.clone(), (Instant::now(), hash));
        Ok(hash)
    }

    fn hash_path(&self, tenant: &TenantId) -> PathBuf {
        self.data.store_dir(tenant).config_dir().join(KEY_HASH_FILE)
    }

    /// Issues a new key for `tenant`, replacing (revoking) any earlier one. The key is returned
    /// once and never stored.
    pub fn issue(&self, tenant: &TenantId) -> io::Result<String> {
        let secret = random_hex(32)?;
        let hash: String = digest(&secret).iter().map(|b| format!("{b:02x}")).collect();
        if let Some(catalog) = self.data.catalog() {
            catalog.set_key_hash(tenant, &hash).map_err(io::Error::other)?;
            self.remote_hashes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(tenant.clone(), (Instant::now(), parse_hex32(&hash)));
            return Ok(format!("tvs.{tenant}.{secret}"));
        }
        let dir = self.data.store_dir(tenant).config_dir();
        fsutil::ensure_real_dir(&dir)?;
        storage::write_atomic(&StdStorage, &dir, KEY_HASH_FILE, hash.as_bytes())?;
        Ok(format!("tvs.{tenant}.{secret}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tvs_store::config::{Metric, ScalarKind, StoreConfig};

    #[test]
    fn issued_keys_authenticate_their_tenant_only_until_rotated() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = DataDir::open(tmp.path()).expect("data");
        let (keys, created) = Keys::open(data.clone(), None).expect("keys");
        assert!(created.is_some(), "an admin key file was generated");
        let admin = std::fs::read_to_string(tmp.path().join(ADMIN_KEY_FILE)).expect("admin key");
        assert!(keys.is_admin(admin.trim()));
        let mode = std::fs::metadata(tmp.path().join(ADMIN_KEY_FILE))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let config = StoreConfig::new(2, Metric::L2, ScalarKind::F32, "none");
        let (a, b) = (TenantId::new("a").expect("id"), TenantId::new("b").expect("id"));
        data.create_tenant(&a, &config).expect("a");
        data.create_tenant(&b, &config).expect("b");
        let key_a = keys.issue(&a).expect("issue");
        assert_eq!(keys.tenant_of(&key_a), Some(a.clone()));
        let secret = key_a.rsplit_once('.').expect("secret").1;
        assert_eq!(
            keys.tenant_of(&format!("tvs.b.{secret}")),
            None,
            "a's secret does not open b"
        );
        assert!(!keys.is_admin(&key_a));
        let rotated = keys.issue(&a).expect("rotate");
        assert_eq!(keys.tenant_of(&key_a), None, "the old key is revoked");
        assert_eq!(keys.tenant_of(&rotated), Some(a));
        assert_eq!(keys.tenant_of("tvs.../../x.y"), None);
    }
}
