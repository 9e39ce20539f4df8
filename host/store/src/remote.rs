//! The seam to a remote durable store: with `TVS_STORAGE=s3://…` a tenant's acknowledged writes
//! live in object storage, and its directory under the data directory is only a cache.
//!
//! tvs-store defines what it needs ([`Catalog`] for the set of tenants, [`TenantLog`] for one
//! open tenant) and never talks to a bucket itself; `tvs-bucket` implements both over
//! S3-compatible storage.
//!
//! Invariants:
//! - A write is acknowledged only after [`TenantLog::persist`] returned `Ok` for bytes covering
//!   it; the local log is then a cache and is not fsynced.
//! - Persisted bytes are whole log lines, handed over in log order and each exactly once per
//!   owner; a takeover replays them in that order.
//! - After `persist` returned [`RemoteError::Fenced`], the store refuses every later write: the
//!   tenant belongs to another node.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::StoreConfig;
use crate::store::OpenError;
use crate::tenant::{StoreDir, TenantError, TenantId, TenantPage};

/// Why a remote operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    /// Another node has taken the tenant over; this node must not write or answer for it.
    #[error("another node took this tenant over ({0})")]
    Fenced(String),
    /// The object store could not be reached or refused the request.
    #[error("object storage is unavailable: {0}")]
    Unavailable(String),
    /// What the bucket holds does not make sense (a gap in the log, an unreadable manifest).
    #[error("the tenant's objects are damaged: {0}")]
    Corrupt(String),
}

/// The files of a snapshot just written to the cache, to publish to the remote store: the log's
/// first `log_len` bytes, and the snapshot files in `dir`.
#[derive(Debug, Clone)]
pub struct SnapshotFiles {
    pub log: PathBuf,
    pub log_len: u64,
    pub dir: PathBuf,
    /// Data files of the snapshot in `dir` (documents, vectors or graph).
    pub files: Vec<String>,
    /// The snapshot's `manifest.json` as written in `dir`.
    pub manifest: Vec<u8>,
}

/// One tenant held by this node, as its writer.
pub trait TenantLog: Send + Sync + fmt::Debug {
    /// Makes `lines` durable remotely, after everything persisted before; returns once they are.
    fn persist(&self, lines: &[u8]) -> Result<(), RemoteError>;
    /// Whether this node still owns the tenant (checked against the remote store at most every
    /// so often; cheap in between).
    fn check_owner(&self) -> Result<(), RemoteError>;
    /// The writer epoch this node holds the tenant under.
    fn epoch(&self) -> u64;
    /// Whether this node found out (on a write or an ownership check) that another node took
    /// the tenant over.
    fn is_fenced(&self) -> bool;
    /// Whether the log persisted since the last published snapshot is large enough that opening
    /// the tenant elsewhere would be faster from a new snapshot.
    fn wants_snapshot(&self) -> bool;
    /// Publishes a snapshot covering everything persisted so far (the caller holds the store so
    /// that nothing is persisted meanwhile), then lets the log before it be removed.
    fn publish_snapshot(&self, files: &SnapshotFiles) -> Result<(), RemoteError>;
    /// Called after a snapshot's files were rewritten locally (compaction) and before any other
    /// call: the cache no longer matches the published snapshot until the next publish.
    fn cache_diverged(&self);
    /// Replaces the tenant's config (its quotas) where every node reads it, as its writer.
    fn set_config(&self, config: &StoreConfig) -> Result<(), RemoteError>;
}

/// A small object the nodes share beside the tenants' data, read and replaced whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedObject {
    /// The signing keys of tenant tokens.
    SigningKeys,
    /// A tenant's rate limits (removed with the tenant).
    RateLimits(TenantId),
}

/// The version of a shared object as read, for a conditional replace (an ETag or an object
/// version, whichever the store gives).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectVersion {
    pub e_tag: Option<String>,
    pub version: Option<String>,
}

/// What a write of a shared object may replace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replace {
    /// Whatever is there, or nothing.
    Any,
    /// Only an absent object.
    Absent,
    /// Only the object as it was at this version.
    Version(ObjectVersion),
}

/// A tenant held by a node, for the admin API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HeldTenant {
    pub tenant: String,
    pub epoch: u64,
}

/// The set of tenants kept in a remote store.
pub trait Catalog: Send + Sync + fmt::Debug {
    /// Where the tenants live, for logs and the admin API (`s3://bucket/prefix`).
    fn describe(&self) -> String;
    fn create_tenant(&self, id: &TenantId, config: &StoreConfig) -> Result<(), TenantError>;
    fn tenant_exists(&self, id: &TenantId) -> Result<bool, TenantError>;
    fn list_tenants(&self, after: Option<&str>, limit: usize) -> Result<TenantPage, TenantError>;
    /// Deletes a tenant: takes it over first, so that a node still holding it can no longer
    /// acknowledge a write.
    fn delete_tenant(&self, id: &TenantId) -> Result<(), TenantError>;
    /// Takes the tenant over as its writer (fencing any other) and writes its current state
    /// into `dir`, which the caller has locked; the store then opens `dir` as usual.
    fn open_tenant(&self, id: &TenantId, dir: &StoreDir) -> Result<Arc<dyn TenantLog>, OpenError>;
    /// The SHA-256 (hex) of the tenant's API key secret, if one was issued.
    fn key_hash(&self, id: &TenantId) -> Result<Option<String>, RemoteError>;
    fn set_key_hash(&self, id: &TenantId, hash: &str) -> Result<(), RemoteError>;
    /// The tenants this node holds as writer now, with their epochs.
    fn held(&self) -> Vec<HeldTenant>;
    /// A shared object's bytes and version; `None` if there is none.
    fn read_shared(&self, object: &SharedObject) -> Result<Option<(Vec<u8>, ObjectVersion)>, RemoteError>;
    /// Writes a shared object if `replace` allows; `Ok(false)` when another write came first.
    fn write_shared(&self, object: &SharedObject, bytes: &[u8], replace: Replace) -> Result<bool, RemoteError>;
}
