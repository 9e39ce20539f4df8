//! A tenant's plugins on disk, under its store directory (deleting the tenant deletes them):
//!
//! ```text
//! {tenant}/plugins/{name}/meta.json          versions, active version, artifact hashes
//! {tenant}/plugins/{name}/v{n}.wasm          the component as uploaded
//! {tenant}/plugins/{name}/v{n}-{engine}.cwasm  this host's compiled artifact of it
//! ```
//!
//! Invariants: `meta.json` is the commit point. Every file is written whole (temp, fsync,
//! rename, directory fsync) before the meta that names it, so an upload is all or nothing and
//! survives a power cut once answered. An artifact is deserialized only if its sha256 equals
//! the one recorded when this host wrote it, for the same engine compatibility hash; otherwise
//! it is compiled again from the component (whose own sha256 is checked first).

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tvs_store::storage;
use tvs_store::tenant::StoreDir;

use super::inspect::PluginKind;

pub const PLUGINS_DIR: &str = "plugins";
const META: &str = "meta.json";
/// Which ingest transform the tenant enabled (a name with a dot is never a plugin's).
const ENABLED: &str = "enabled.json";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Enabled {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ingest_transform: Option<String>,
}

/// One uploaded version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub version: u32,
    pub kind: PluginKind,
    /// sha256 of the component as uploaded (hex).
    pub sha256: String,
    pub bytes: u64,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    /// Seconds since the Unix epoch.
    pub uploaded_at: u64,
    /// This host's compiled artifact: engine compatibility hash and the artifact's sha256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Artifact>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    pub engine: String,
    pub sha256: String,
}

/// A plugin's `meta.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub name: String,
    pub active: u32,
    pub next_version: u32,
    pub versions: Vec<VersionInfo>,
}

impl Meta {
    pub fn active_version(&self) -> Option<&VersionInfo> {
        self.versions.iter().find(|v| v.version == self.active)
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The plugins of one tenant.
#[derive(Debug, Clone)]
pub struct TenantPlugins {
    dir: StoreDir,
}

impl TenantPlugins {
    pub fn new(dir: &StoreDir) -> Self {
        Self { dir: dir.clone() }
    }

    fn root(&self) -> PathBuf {
        self.dir.root().join(PLUGINS_DIR)
    }

    fn plugin_dir(&self, name: &str) -> PathBuf {
        self.root().join(name)
    }

    pub fn component_path(&self, name: &str, version: u32) -> PathBuf {
        self.plugin_dir(name).join(format!("v{version}.wasm"))
    }

    pub fn artifact_path(&self, name: &str, version: u32, engine: &str) -> PathBuf {
        self.plugin_dir(name).join(format!("v{version}-{engine}.cwasm"))
    }

    /// Names of the tenant's plugins, sorted.
    pub fn names(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        match std::fs::read_dir(self.root()) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry?;
                    let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                        continue;
                    };
                    if !name.starts_with('.') && entry.path().join(META).is_file() {
                        names.push(name);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        names.sort();
        Ok(names)
    }

    pub fn meta(&self, name: &str) -> io::Result<Option<Meta>> {
        match storage::read_all(self.dir.storage(), &self.plugin_dir(name).join(META)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("plugin {name}: {e}"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Bytes of every stored file of every plugin (for the stored-bytes quota).
    pub fn stored_bytes(&self) -> io::Result<u64> {
        let mut total = 0;
        for name in self.names()? {
            for entry in std::fs::read_dir(self.plugin_dir(&name))? {
                total += entry?.metadata()?.len();
            }
        }
        Ok(total)
    }

    fn ensure_dirs(&self, name: &str) -> io::Result<()> {
        let storage = self.dir.storage();
        let root = self.root();
        if !root.is_dir() {
            storage::create_real_dir(storage, &root)?;
            storage.sync_dir(self.dir.root())?;
        }
        let dir = self.plugin_dir(name);
        if !dir.is_dir() {
            storage::create_real_dir(storage, &dir)?;
            storage.sync_dir(&root)?;
        }
        Ok(())
    }

    /// Writes a file of a plugin whole and durably.
    pub fn write_file(&self, name: &str, file: &Path, bytes: &[u8]) -> io::Result<()> {
        self.ensure_dirs(name)?;
        let file_name = file
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| io::Error::other("bad plugin file name"))?;
        storage::write_atomic(self.dir.storage(), &self.plugin_dir(name), file_name, bytes)
    }

    /// Commits a new meta: the point where an upload, activation or deletion of a version
    /// happens.
    pub fn write_meta(&self, meta: &Meta) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(meta).map_err(io::Error::other)?;
        self.ensure_dirs(&meta.name)?;
        storage::write_atomic(self.dir.storage(), &self.plugin_dir(&meta.name), META, &json)
    }

    /// Removes files no version in `meta` names (pruned versions, artifacts of other engines).
    pub fn remove_unreferenced(&self, meta: &Meta, engine: &str) {
        let Ok(entries) = std::fs::read_dir(self.plugin_dir(&meta.name)) else {
            return;
        };
        for entry in entries.flatten() {
            let Some(file) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let kept = file == META
                || meta.versions.iter().any(|v| {
                    file == format!("v{}.wasm", v.version) || file == format!("v{}-{engine}.cwasm", v.version)
                });
            if !kept {
                let _ = self.dir.storage().remove_file(&entry.path());
            }
        }
    }

    /// Deletes a plugin: its meta first (so it is gone at once), then its files.
    pub fn delete(&self, name: &str) -> io::Result<bool> {
        let dir = self.plugin_dir(name);
        if !dir.join(META).is_file() {
            return Ok(false);
        }
        let storage = self.dir.storage();
        let trash = self
            .root()
            .join(format!(".deleting-{name}-{}", uuid::Uuid::new_v4().simple()));
        storage.rename(&dir, &trash)?;
        storage.sync_dir(&self.root())?;
        storage.remove_dir_all(&trash)?;
        Ok(true)
    }

    /// The ingest transform every ingest of the tenant goes through, if one is enabled.
    pub fn enabled_transform(&self) -> io::Result<Option<String>> {
        match storage::read_all(self.dir.storage(), &self.root().join(ENABLED)) {
            Ok(bytes) => Ok(serde_json::from_slice::<Enabled>(&bytes)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{ENABLED}: {e}")))?
                .ingest_transform),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Enables `name` as the tenant's ingest transform, or none.
    pub fn set_enabled_transform(&self, name: Option<&str>) -> io::Result<()> {
        let storage = self.dir.storage();
        let root = self.root();
        if !root.is_dir() {
            storage::create_real_dir(storage, &root)?;
            storage.sync_dir(self.dir.root())?;
        }
        let enabled = Enabled {
            ingest_transform: name.map(str::to_owned),
        };
        let json = serde_json::to_vec_pretty(&enabled).map_err(io::Error::other)?;
        storage::write_atomic(storage, &root, ENABLED, &json)
    }

    /// Reads a stored file (component or artifact).
    pub fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        storage::read_all(self.dir.storage(), path)
    }
}
