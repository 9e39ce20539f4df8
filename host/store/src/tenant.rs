//! Tenant ids and the directory layout of a store.
//!
//! Invariants:
//! - A [`TenantId`] can only be built from a string matching `^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`,
//!   so a path built from it is always exactly one new component under the data directory.
//! - Tenant creation is atomic (built under a temp name, then renamed); deletion first renames the
//!   directory away (so a concurrent open sees all or nothing), then removes it.
//! - Directory checks never follow symlinks (see [`crate::fsutil`]).

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::StoreConfig;
use crate::fsutil;
use crate::remote::Catalog;
use crate::storage::{self, StdStorage, Storage};

pub use tvs_guest_core::tenant_id::TENANT_ID_RULE;

/// A validated tenant id.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

/// A string that is not a valid tenant id.
#[derive(Debug, thiserror::Error)]
#[error("invalid tenant id {id:?}: {TENANT_ID_RULE}")]
pub struct InvalidTenantId {
    pub id: String,
}

impl TenantId {
    pub fn new(id: &str) -> Result<Self, InvalidTenantId> {
        if tvs_guest_core::tenant_id::is_valid(id) {
            Ok(TenantId(id.to_owned()))
        } else {
            Err(InvalidTenantId {
                id: id.chars().take(100).collect(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantId({})", self.0)
    }
}

/// The files of one store: a tenant's directory, or the legacy single-tenant folder, and the
/// [`Storage`] every file operation on them goes through.
#[derive(Debug, Clone)]
pub struct StoreDir {
    root: PathBuf,
    storage: Arc<dyn Storage>,
}

/// Name of the document log inside a store directory.
pub const DOCS_LOG: &str = "docs.jsonl";
/// Name of the snapshot directory inside a store directory.
pub const VECTOR_STORE: &str = "vector_store";
/// Name of the config directory inside a store directory.
pub const CONFIG_DIR: &str = "config";
/// Name of the config file inside the config directory.
pub const CONFIG_FILE: &str = "user_config.json";
/// Name of the lock file that keeps a second process from opening the store.
pub const LOCK_FILE: &str = ".lock";

impl StoreDir {
    /// The directory at `root`, on the real file system.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self::with_storage(root, StdStorage::shared())
    }

    /// The directory at `root`, reached through `storage` (tests record or fail operations).
    pub fn with_storage(root: impl Into<PathBuf>, storage: Arc<dyn Storage>) -> Self {
        Self {
            root: root.into(),
            storage,
        }
    }

    pub fn storage(&self) -> &dyn Storage {
        &*self.storage
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn docs_log(&self) -> PathBuf {
        self.root.join(DOCS_LOG)
    }
    pub fn vector_store(&self) -> PathBuf {
        self.root.join(VECTOR_STORE)
    }
    pub fn config_dir(&self) -> PathBuf {
        self.root.join(CONFIG_DIR)
    }
    pub fn config_file(&self) -> PathBuf {
        self.config_dir().join(CONFIG_FILE)
    }
    pub fn lock_file(&self) -> PathBuf {
        self.root.join(LOCK_FILE)
    }

    /// Whether a store has been initialised here.
    pub fn exists(&self) -> bool {
        fs::symlink_metadata(self.config_file()).is_ok()
    }

    /// Checks that the root and its subdirectories are real directories, not symlinks.
    pub fn verify(&self) -> io::Result<()> {
        fsutil::ensure_real_dir(&self.root)?;
        fsutil::ensure_real_dir(&self.vector_store())?;
        fsutil::ensure_real_dir(&self.config_dir())
    }

    /// Writes the layout and config into `self.root`, which must exist and be empty-ish. The
    /// caller creates the log next and then fsyncs `self.root`, which makes the subdirectory
    /// entries durable too; fsyncing it here as well would cost a sixth fsync per tenant.
    pub fn initialise(&self, config: &StoreConfig) -> io::Result<()> {
        let storage = self.storage();
        storage::create_real_dir(storage, &self.root)?;
        storage::create_real_dir(storage, &self.vector_store())?;
        storage::create_real_dir(storage, &self.config_dir())?;
        let json = serde_json::to_vec_pretty(config).map_err(io::Error::other)?;
        storage::write_atomic(storage, &self.config_dir(), CONFIG_FILE, &json)
    }

    /// Reads and validates `config/user_config.json`.
    pub fn read_config(&self) -> io::Result<StoreConfig> {
        let bytes = storage::read_all(self.storage(), &self.config_file())?;
        let mut config: StoreConfig = serde_json::from_slice(&bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a valid store config: {e}", self.config_file().display()),
            )
        })?;
        config.validate().map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", self.config_file().display()),
            )
        })?;
        // Older stores may hold another spelling of the same model; report one name.
        config.embedding_model = tvs_guest_core::models::canonical_model_name(&config.embedding_model);
        Ok(config)
    }
}

/// Errors of tenant management.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TenantError {
    #[error(transparent)]
    InvalidId(#[from] InvalidTenantId),
    #[error("tenant {0} already exists")]
    AlreadyExists(TenantId),
    #[error("tenant {0} does not exist")]
    NotFound(TenantId),
    #[error("invalid store config: {0}")]
    InvalidConfig(String),
    #[error("tenant {0} is open in another tvs process; stop it first")]
    Busy(TenantId),
    #[error(transparent)]
    Remote(#[from] crate::remote::RemoteError),
    #[error("I/O error on the data directory {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The root that holds one directory per tenant (`TVS_DATA_DIR`). With a [`Catalog`] the
/// tenants live remotely and each directory is that node's cache of one.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
    storage: Arc<dyn Storage>,
    catalog: Option<Arc<dyn Catalog>>,
}

/// A page of tenant ids, sorted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TenantPage {
    pub tenants: Vec<String>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next_after: Option<String>,
}

impl DataDir {
    /// Opens (creating if needed) the data directory.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, TenantError> {
        Self::open_with_storage(root, StdStorage::shared())
    }

    /// Opens the data directory, reaching every store in it through `storage`.
    pub fn open_with_storage(root: impl Into<PathBuf>, storage: Arc<dyn Storage>) -> Result<Self, TenantError> {
        let root = root.into();
        let io_err = |source| TenantError::Io {
            path: root.clone(),
            source,
        };
        fs::create_dir_all(&root).map_err(io_err)?;
        // The root itself is chosen by the operator and may be a symlink; everything below it
        // is checked.
        let root = root.canonicalize().map_err(io_err)?;
        let data = Self {
            root,
            storage,
            catalog: None,
        };
        data.remove_leftovers();
        Ok(data)
    }

    /// Removes what a crash in the middle of a tenant deletion or creation left behind: a
    /// deleted tenant renamed to `.deleting-*` (never read again), and a `.creating-*` directory
    /// older than an hour (a creation in progress in another process is younger).
    fn remove_leftovers(&self) {
        let Ok(entries) = fs::read_dir(&self.root) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let stale = name.starts_with(".deleting-")
                || (name.starts_with(".creating-")
                    && entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > std::time::Duration::from_secs(3600))));
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if stale && is_dir {
                match self.storage.remove_dir_all(&entry.path()) {
                    Ok(()) => {
                        tracing::info!(dir = %entry.path().display(), "removed what an interrupted tenant deletion or creation left")
                    }
                    Err(e) => {
                        tracing::warn!(dir = %entry.path().display(), error = %e, "cannot remove a leftover directory")
                    }
                }
            }
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Keeps the tenants in `catalog` (object storage); the directory becomes a cache.
    pub fn with_catalog(mut self, catalog: Arc<dyn Catalog>) -> Self {
        self.catalog = Some(catalog);
        self
    }

    /// Where the tenants live when not in this directory.
    pub fn catalog(&self) -> Option<&Arc<dyn Catalog>> {
        self.catalog.as_ref()
    }

    /// The directory of a tenant; built only from a validated id.
    pub fn store_dir(&self, id: &TenantId) -> StoreDir {
        StoreDir::with_storage(self.root.join(id.as_str()), self.storage.clone())
    }

    fn io_err(&self, source: io::Error) -> TenantError {
        TenantError::Io {
            path: self.root.clone(),
            source,
        }
    }

    /// Creates a tenant atomically: the directory is built under a hidden temp name and
    /// renamed into place, so no reader ever sees a half-created tenant.
    pub fn create_tenant(&self, id: &TenantId, config: &StoreConfig) -> Result<StoreDir, TenantError> {
        config.validate_new().map_err(TenantError::InvalidConfig)?;
        if let Some(catalog) = &self.catalog {
            catalog.create_tenant(id, config)?;
            return Ok(self.store_dir(id));
        }
        let final_dir = self.store_dir(id);
        if fs::symlink_metadata(final_dir.root()).is_ok() {
            return Err(TenantError::AlreadyExists(id.clone()));
        }
        let storage = &*self.storage;
        let tmp = StoreDir::with_storage(
            self.root
                .join(format!(".creating-{id}-{}", uuid::Uuid::new_v4().simple())),
            self.storage.clone(),
        );
        let built = tmp.initialise(config).and_then(|()| {
            crate::doclog::DocLog::create(storage, &tmp.docs_log(), 1).map_err(io::Error::other)?;
            storage.sync_dir(tmp.root())
        });
        if let Err(e) = built {
            let _ = storage.remove_dir_all(tmp.root());
            return Err(self.io_err(e));
        }
        // rename(2) would replace an empty directory that appeared meanwhile; renameat2's
        // RENAME_NOREPLACE is not in std, so re-check and accept that tiny window.
        if fs::symlink_metadata(final_dir.root()).is_ok() {
            let _ = storage.remove_dir_all(tmp.root());
            return Err(TenantError::AlreadyExists(id.clone()));
        }
        storage
            .rename(tmp.root(), final_dir.root())
            .map_err(|e| self.io_err(e))?;
        storage.sync_dir(&self.root).map_err(|e| self.io_err(e))?;
        Ok(final_dir)
    }

    /// Whether a tenant exists (as a real directory with a config, or a live manifest in object
    /// storage, which may be unreachable: an outage is not an answer).
    pub fn tenant_exists(&self, id: &TenantId) -> Result<bool, crate::remote::RemoteError> {
        if let Some(catalog) = &self.catalog {
            return catalog.tenant_exists(id).map_err(|e| match e {
                TenantError::Remote(e) => e,
                other => crate::remote::RemoteError::Unavailable(other.to_string()),
            });
        }
        let dir = self.store_dir(id);
        Ok(fsutil::ensure_real_dir(dir.root()).is_ok() && dir.exists())
    }

    /// Lists tenants sorted by id, `limit` at a time, starting after `after`.
    pub fn list_tenants(&self, after: Option<&str>, limit: usize) -> Result<TenantPage, TenantError> {
        if let Some(catalog) = &self.catalog {
            return catalog.list_tenants(after, limit);
        }
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(|e| self.io_err(e))? {
            let entry = entry.map_err(|e| self.io_err(e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            // Hidden entries (temp, trash, admin key) and symlinks are never tenants.
            let Ok(id) = TenantId::new(&name) else { continue };
            let Ok(file_type) = entry.file_type() else { continue };
            if !file_type.is_dir() || !self.store_dir(&id).exists() {
                continue;
            }
            if after.is_some_and(|a| name.as_str() <= a) {
                continue;
            }
            ids.push(name);
        }
        ids.sort_unstable();
        let limit = limit.max(1);
        let next_after = (ids.len() > limit).then(|| ids[limit - 1].clone());
        ids.truncate(limit);
        Ok(TenantPage {
            tenants: ids,
            next_after,
        })
    }

    /// Moves a tenant's directory out of the namespace and removes it. Callers that keep the
    /// tenant open (the pool) must close it first; see [`crate::pool::Pool::delete_tenant`].
    pub fn delete_tenant(&self, id: &TenantId) -> Result<(), TenantError> {
        if let Some(catalog) = &self.catalog {
            catalog.delete_tenant(id)?;
            // What is left is this node's cache of it.
            return match self.delete_local(id) {
                Ok(()) | Err(TenantError::NotFound(_)) => Ok(()),
                Err(e) => Err(e),
            };
        }
        self.delete_local(id)
    }

    fn delete_local(&self, id: &TenantId) -> Result<(), TenantError> {
        let dir = self.store_dir(id);
        match fs::symlink_metadata(dir.root()) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(TenantError::NotFound(id.clone())),
            Err(e) => return Err(self.io_err(e)),
            Ok(meta) if meta.file_type().is_symlink() => {
                // A planted symlink is removed as a link; its target is never touched.
                self.storage.remove_file(dir.root()).map_err(|e| self.io_err(e))?;
                return Ok(());
            }
            Ok(_) => {}
        }
        // Another process holding the store open would keep writing into the removed tree.
        let lock = crate::store::StoreLock::acquire(&dir).map_err(|e| match e {
            crate::store::LockError::Busy => TenantError::Busy(id.clone()),
            crate::store::LockError::Io(source) => TenantError::Io {
                path: dir.lock_file(),
                source,
            },
        })?;
        let trash = self
            .root
            .join(format!(".deleting-{id}-{}", uuid::Uuid::new_v4().simple()));
        self.storage.rename(dir.root(), &trash).map_err(|e| self.io_err(e))?;
        drop(lock);
        self.storage.sync_dir(&self.root).map_err(|e| self.io_err(e))?;
        self.storage.remove_dir_all(&trash).map_err(|e| self.io_err(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ids_matching_the_rule() {
        for id in ["a", "A9", "user_42", "team-x", "0", &"x".repeat(64)] {
            assert!(TenantId::new(id).is_ok(), "{id}");
        }
    }

    #[test]
    fn rejects_ids_that_could_name_a_path_and_says_the_rule() {
        for id in [
            "",
            ".",
            "..",
            "../etc",
            "a/b",
            "a\\b",
            "-lead",
            "_lead",
            ".hidden",
            "a.b",
            "é",
            "a b",
            "a\0b",
            &"x".repeat(65),
            "/abs",
        ] {
            let err = TenantId::new(id).expect_err(id);
            assert!(err.to_string().contains("^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"), "{err}");
        }
    }
}
