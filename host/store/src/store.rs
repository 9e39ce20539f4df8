//! `TenantStore`: the documents and vectors of one tenant (or of the legacy single-tenant
//! folder), durable through the document log and fast to reopen through snapshots.
//!
//! Write protocol: validate the whole request; under the state's write lock append its records
//! to the log (one `write`) and apply them in memory; release the lock; wait for an fsync that
//! covers the records (shared with concurrent writers); acknowledge. Readers may therefore see
//! a write a moment before it is acknowledged, never one that could not be made durable without
//! the store failing loudly: if an fsync fails the log refuses further writes until reopened.
//!
//! Invariants:
//! - `by_id` and `entries` describe the same documents (`by_id` holds slots and reads ids from
//!   `entries`); `entries[slot]` is `Some` exactly for the slots whose vector is stored in
//!   [`Vectors`].
//! - `entries[slot].offset` is the log offset of that document's latest upsert record, so
//!   compaction can copy live records verbatim (vectors keep full precision).
//! - One process holds a store at a time (a `flock` on `.lock`); the pool makes sure one
//!   process holds at most one `TenantStore` per directory.

use std::collections::HashMap;
use std::fs::{File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{Metric, StoreConfig};
use crate::doclog::{self, DocLog, LogError, Record};
use crate::fsutil;
use crate::packed::{IdIndex, PackedDoc};
use crate::remote::{RemoteError, SnapshotFiles, TenantLog};
use crate::slab::Slab;
use crate::snapshot::{self, Manifest, SnapDoc};
use crate::storage::{self, OpenMode, Storage};
use crate::tenant::StoreDir;
use crate::vectors::{self, Calibration, Codes, Graph, GraphIndex, Neighbor, Vectors};
use tvs_guest_core::documents;
use tvs_guest_core::filter::{Filter, FilterError};

pub use tvs_guest_core::documents::{MAX_ID_BYTES, MAX_METADATA_BYTES};
/// Largest accepted `k` / `fetch_k`.
pub const MAX_K: usize = 10_000;
/// Vectors outside the graph in a remote tenant's snapshot beyond which the snapshot is
/// published again once the graph has taken in most of them.
const REPUBLISH_PENDING: u64 = 1_000;
/// Records superseded or deleted beyond which (and beyond the live count) the log is compacted.
const COMPACT_MIN_DEAD: u64 = 1_000;

/// A document to upsert.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDocument {
    /// Client-chosen id; a random one is generated when absent.
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    pub vector: Vec<f32>,
}

/// A stored document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    pub id: String,
    pub text: String,
    pub metadata: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<Vec<f32>>,
}

/// Maximal marginal relevance re-ranking, as LangChain does it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mmr {
    /// Candidates fetched before re-ranking (LangChain's default: 20).
    #[serde(default = "default_fetch_k")]
    pub fetch_k: usize,
    /// 1.0 = pure relevance, 0.0 = pure diversity (LangChain's default: 0.5).
    #[serde(default = "default_lambda")]
    pub lambda_mult: f32,
}

fn default_fetch_k() -> usize {
    20
}
fn default_lambda() -> f32 {
    0.5
}

/// A k-NN query.
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    pub vector: Vec<f32>,
    pub k: usize,
    pub filter: Option<Filter>,
    pub mmr: Option<Mmr>,
    pub include_vectors: bool,
}

/// One search result. `score` follows what LangChain's FAISS store returns: the squared L2
/// distance for `l2` (lower is closer), the inner product for `ip` and the cosine similarity for
/// `cos` (higher is closer). `distance` is always lower-is-closer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub id: String,
    pub score: f32,
    pub distance: f32,
    pub text: String,
    pub metadata: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<Vec<f32>>,
}

/// Which structure answers searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexKind {
    Exact,
    /// Exact scan while an HNSW graph is built in the background.
    Building,
    Hnsw,
}

/// Facts about a store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreInfo {
    pub count: u64,
    pub dims: usize,
    pub metric: Metric,
    pub scalar: crate::config::ScalarKind,
    pub embedding_model: String,
    pub index: IndexKind,
    /// Estimated resident bytes of vectors, graph, texts and metadata.
    pub memory_bytes: u64,
    /// Bytes of raw f32 vectors (count × dims × 4), for comparison.
    pub raw_vector_bytes: u64,
    pub log_bytes: u64,
    pub dead_records: u64,
    /// Vectors written since the graph was built that the background indexer has not added yet
    /// (searched exactly meanwhile).
    pub pending_vectors: u64,
    /// fsyncs of the document log since the store was opened (concurrent writers share them).
    pub log_syncs: u64,
    /// The HNSW search breadth in use (graph only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ef_search: Option<usize>,
    /// recall@10 measured at that breadth on vectors held out of the graph when it was built
    /// (calibrated graphs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recall_estimate: Option<f32>,
    /// Graph nodes when that recall was measured (calibration runs again as the graph doubles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibrated_at_nodes: Option<usize>,
}

/// Which quota a write would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// `max_documents`: live documents.
    Documents,
    /// `max_bytes`: the document log's size.
    Bytes,
}

impl std::fmt::Display for Quota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Quota::Documents => "documents",
            Quota::Bytes => "stored bytes",
        })
    }
}

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error("no store at {0} (create the tenant first)")]
    NotFound(PathBuf),
    #[error("the store at {0} is open in another tvs process; stop it or use that process")]
    Locked(PathBuf),
    #[error("cannot read the store at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

/// Why a write or read was refused. Nothing was changed when one is returned, except for
/// `Log` after a failed fsync, which also stops further writes until the store is reopened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("document {index}{}: {reason}", id.as_ref().map(|i| format!(" (id {i:?})")).unwrap_or_default())]
    InvalidDocument {
        index: usize,
        id: Option<String>,
        reason: String,
    },
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error("quota exceeded: this store is limited to {limit} {quota}")]
    QuotaExceeded { limit: u64, quota: Quota },
    #[error("the store was deleted")]
    Deleted,
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("internal index error: {0}")]
    Index(String),
    #[error("snapshot I/O failed")]
    Snapshot(#[source] io::Error),
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

/// An exclusive lock on a store directory, held while the store is open.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

/// Why [`StoreLock::acquire`] failed.
#[derive(Debug)]
pub enum LockError {
    Busy,
    Io(io::Error),
}

impl StoreLock {
    /// Takes the lock of `dir`, failing with `Busy` when another open file description
    /// (another process, or another open in this one) holds it.
    ///
    /// A holder that goes away within a second is waited for: a process forked by this one
    /// shares the lock until it `exec`s, which would otherwise make a reopen fail at random.
    pub fn acquire(dir: &StoreDir) -> Result<StoreLock, LockError> {
        let file = fsutil::open_append(&dir.lock_file()).map_err(LockError::Io)?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        let mut pause = std::time::Duration::from_millis(1);
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(StoreLock { _file: file }),
                Err(TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(50));
                }
                Err(TryLockError::WouldBlock) => return Err(LockError::Busy),
                Err(TryLockError::Error(e)) => return Err(LockError::Io(e)),
            }
        }
    }
}

#[derive(Debug)]
struct Entry {
    offset: u64,
    doc: PackedDoc,
}

/// The documents and vectors of a store.
#[derive(Debug)]
struct Docs {
    by_id: IdIndex,
    entries: Vec<Option<Entry>>,
    free_slots: Vec<u64>,
    vectors: Vectors,
    payload_bytes: usize,
    /// Log records superseded by later ones (compaction drops them).
    dead_records: u64,
}

impl Docs {
    fn new(dims: usize, metric: Metric) -> Self {
        Docs {
            by_id: IdIndex::default(),
            entries: Vec::new(),
            free_slots: Vec::new(),
            vectors: Vectors::exact(dims, metric),
            payload_bytes: 0,
            dead_records: 0,
        }
    }
}

#[derive(Debug)]
struct State {
    log: Arc<DocLog>,
    docs: Docs,
    /// What the current snapshot reflects: log generation, log offset and the index's
    /// [`Vectors::index_changes`] (the indexer moves rows into the graph without log records).
    snapshot_at: Option<(u64, u64, u64)>,
    /// Vectors outside the graph in the current snapshot: each is read back from its log record
    /// when the snapshot is opened.
    snapshot_pending: u64,
    deleted: bool,
}

/// One open store. Shared as `Arc<TenantStore>`; all methods take `&self`.
#[derive(Debug)]
pub struct TenantStore {
    dir: StoreDir,
    config: StoreConfig,
    state: RwLock<State>,
    lock: Mutex<Option<Arc<StoreLock>>>,
    builder: Mutex<Option<JoinHandle<()>>>,
    indexer: Mutex<Option<JoinHandle<()>>>,
    /// Serialises snapshot writers (flush, compaction): each removes the files of older
    /// snapshots, which must not be another writer's files in progress.
    snapshot_lock: Mutex<()>,
    /// The tenant's remote log when it lives in object storage (the directory is then a cache).
    remote: Option<Arc<dyn TenantLog>>,
    /// The quota on live documents (`u64::MAX`: none); starts as the config's and may be
    /// changed while the store is open ([`TenantStore::set_quotas`]).
    max_documents: AtomicU64,
    /// The quota on stored bytes; `u64::MAX` when there is none.
    max_bytes: AtomicU64,
    this: Weak<TenantStore>,
}

impl TenantStore {
    /// Creates a store in `dir` (which must not hold one yet) and opens it.
    pub fn create(dir: &StoreDir, config: &StoreConfig) -> Result<Arc<TenantStore>, OpenError> {
        let io_err = |source| OpenError::Io {
            path: dir.root().to_owned(),
            source,
        };
        config
            .validate_new()
            .map_err(|e| io_err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        if dir.exists() {
            return Err(io_err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a store already exists here",
            )));
        }
        if let Some(parent) = dir.root().parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io_err)?;
        }
        dir.initialise(config).map_err(io_err)?;
        drop(DocLog::create(dir.storage(), &dir.docs_log(), 1)?);
        dir.storage().sync_dir(dir.root()).map_err(io_err)?;
        Self::open(dir)
    }

    /// Opens the store in `dir`: takes its lock, loads the latest snapshot, then replays the log
    /// after it.
    pub fn open(dir: &StoreDir) -> Result<Arc<TenantStore>, OpenError> {
        Self::check_dir(dir)?;
        let lock = match StoreLock::acquire(dir) {
            Ok(lock) => Arc::new(lock),
            Err(LockError::Busy) => return Err(OpenError::Locked(dir.root().to_owned())),
            Err(LockError::Io(e)) => {
                return Err(OpenError::Io {
                    path: dir.root().to_owned(),
                    source: e,
                });
            }
        };
        Self::open_locked(dir, lock)
    }

    pub(crate) fn check_dir(dir: &StoreDir) -> Result<(), OpenError> {
        match dir.verify() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(OpenError::NotFound(dir.root().to_owned())),
            Err(e) => Err(OpenError::Io {
                path: dir.root().to_owned(),
                source: e,
            }),
            Ok(()) if !dir.exists() => Err(OpenError::NotFound(dir.root().to_owned())),
            Ok(()) => Ok(()),
        }
    }

    /// Opens the store with a lock the caller already holds (the pool keeps a tenant's lock
    /// across the drop of one store and the open of the next, so no other process can slip in
    /// and no drop in progress can make the reopen fail).
    pub fn open_locked(dir: &StoreDir, lock: Arc<StoreLock>) -> Result<Arc<TenantStore>, OpenError> {
        Self::open_with(dir, lock, None)
    }

    /// Opens the cache `dir` of a tenant that lives remotely, `remote` being this node's hold on
    /// it as writer: commits go to `remote` instead of being fsynced.
    pub fn open_remote(
        dir: &StoreDir,
        lock: Arc<StoreLock>,
        remote: Arc<dyn TenantLog>,
    ) -> Result<Arc<TenantStore>, OpenError> {
        Self::open_with(dir, lock, Some(remote))
    }

    fn open_with(
        dir: &StoreDir,
        lock: Arc<StoreLock>,
        remote: Option<Arc<dyn TenantLog>>,
    ) -> Result<Arc<TenantStore>, OpenError> {
        let io_err = |source: io::Error| OpenError::Io {
            path: dir.root().to_owned(),
            source,
        };
        Self::check_dir(dir)?;
        let config = dir.read_config().map_err(io_err)?;

        let (log_generation, log_len) = DocLog::read_generation(dir.storage(), &dir.docs_log())?;
        let mut loader = Loader::new(&config);
        let mut replay_from = None;
        match snapshot::read_manifest(dir.storage(), &dir.vector_store()) {
            Ok(Some(manifest)) if manifest.log_generation == log_generation && manifest.log_offset <= log_len => {
                match loader.load_snapshot(dir, &manifest) {
                    Ok(()) => replay_from = Some(manifest.log_offset),
                    Err(e) => {
                        tracing::warn!(store = %dir.root().display(), error = %e, "ignoring a damaged snapshot; replaying the whole log");
                        loader = Loader::new(&config);
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(store = %dir.root().display(), error = %e, "ignoring an unreadable snapshot manifest")
            }
        }
        let snapshot_at = replay_from.map(|offset| (log_generation, offset, 0));
        let (log, report) = DocLog::open(dir.storage(), &dir.docs_log(), replay_from, |offset, record| {
            loader.apply(offset, record)
        })?;
        if let Some(remote) = &remote {
            log.set_sink(remote.clone());
        }
        if report.records > 0 || report.torn_bytes > 0 {
            tracing::debug!(store = %dir.root().display(), records = report.records, torn = report.torn_bytes, "replayed log tail");
        }
        let mut state = loader.finish(Arc::new(log), snapshot_at);
        let needs_graph = state.docs.vectors.wants_build(state.docs.len(), &config);
        let needs_indexer = state.docs.vectors.claim_indexer();
        let max_documents = AtomicU64::new(config.max_documents.unwrap_or(u64::MAX));
        let max_bytes = AtomicU64::new(config.max_bytes.unwrap_or(u64::MAX));
        let store = Arc::new_cyclic(|this| TenantStore {
            dir: dir.clone(),
            config,
            state: RwLock::new(state),
            lock: Mutex::new(Some(lock)),
            builder: Mutex::new(None),
            indexer: Mutex::new(None),
            snapshot_lock: Mutex::new(()),
            max_documents,
            max_bytes,
            remote,
            this: this.clone(),
        });
        if needs_graph {
            store.start_graph_build();
        }
        if needs_indexer {
            store.start_indexer();
        }
        Ok(store)
    }

    /// The config the store was opened with; the documents quota may have changed since
    /// ([`TenantStore::max_documents`] is the one enforced).
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    pub fn dir(&self) -> &StoreDir {
        &self.dir
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn check_writable(state: &State) -> Result<(), StoreError> {
        if state.deleted {
            return Err(StoreError::Deleted);
        }
        // Compaction too: it would copy records the disk may not hold.
        state.log.check_poison()?;
        Ok(())
    }

    /// The quota on live documents, if any.
    pub fn max_documents(&self) -> Option<u64> {
        Some(self.max_documents.load(Ordering::Acquire)).filter(|n| *n != u64::MAX)
    }

    /// The quota on stored bytes (the document log's size), if any.
    pub fn max_bytes(&self) -> Option<u64> {
        Some(self.max_bytes.load(Ordering::Acquire)).filter(|n| *n != u64::MAX)
    }

    /// The stored bytes `max_bytes` counts: the document log's length.
    pub fn stored_bytes(&self) -> u64 {
        self.read().log.end()
    }

    /// Changes the quotas given (`Some(None)` removes one, `None` leaves it): written to the
    /// config file (atomically, once for both) first, then enforced. Documents beyond a lowered
    /// quota stay; only new writes are refused. Not for tenants in object storage (their config
    /// lives in the bucket's manifest).
    pub fn set_quotas(&self, max_documents: Option<Option<u64>>, max_bytes: Option<Option<u64>>) -> io::Result<()> {
        if max_documents.is_none() && max_bytes.is_none() {
            return Ok(());
        }
        // Snapshot writers and this never interleave on the store's files.
        let _files = self.snapshot_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut config = self.dir.read_config()?;
        if let Some(limit) = max_documents {
            config.max_documents = limit;
        }
        if let Some(limit) = max_bytes {
            config.max_bytes = limit;
        }
        // In object storage the manifest is the truth, the config file a cache of it: the
        // manifest first, so a failure leaves the old quotas everywhere.
        if let Some(remote) = &self.remote {
            remote.set_config(&config).map_err(io::Error::other)?;
        }
        let path = self.dir.config_file();
        let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
            return Err(io::Error::other("the config file has no directory"));
        };
        let json = serde_json::to_vec_pretty(&config).map_err(io::Error::other)?;
        storage::write_atomic(self.dir.storage(), dir, name, &json)?;
        for (quota, limit) in [(&self.max_documents, max_documents), (&self.max_bytes, max_bytes)] {
            if let Some(limit) = limit {
                quota.store(limit.unwrap_or(u64::MAX), Ordering::Release);
            }
        }
        Ok(())
    }

    /// Whether an fsync of the log failed: the store refuses writes until it is reopened, and
    /// the pool reopens it on the next request (replaying what the disk really holds).
    /// A store another node took over counts as poisoned too, so the pool opens the tenant
    /// afresh (taking it back) when it is asked for here again; so does one whose snapshot
    /// turned out damaged after the open (its manifest is gone: the reopen replays the log).
    pub fn is_poisoned(&self) -> bool {
        // One read guard at a time: a second `read()` while holding one can wait behind a
        // queued writer that waits for the first (std's lock prefers writers).
        let poisoned = {
            let state = self.read();
            state.log.is_poisoned() || state.docs.vectors.is_damaged()
        };
        poisoned || self.is_fenced()
    }

    /// After a snapshot's rows failed their CRC: forgets the snapshot (its manifest), so the
    /// reopen the pool makes of this poisoned store rebuilds everything from the log.
    fn forget_damaged_snapshot(&self) -> StoreError {
        let storage = self.dir.storage();
        let dir = self.dir.vector_store();
        let removed = match storage.remove_file(&dir.join(snapshot::MANIFEST)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => storage.sync_dir(&dir),
        };
        match removed {
            Ok(()) => {
                tracing::error!(store = %self.dir.root().display(), "snapshot vectors fail their checksum; the snapshot is dropped and the store reopens from its log")
            }
            Err(e) => {
                tracing::error!(store = %self.dir.root().display(), error = %e, "snapshot vectors fail their checksum and dropping the snapshot failed")
            }
        }
        StoreError::Index(
            "the snapshot's vectors fail their checksum; the store reopens from its log on the next request".into(),
        )
    }

    /// A document's vector read back from its log record.
    fn vector_from_log(state: &State, slot: u64) -> Option<Vec<f32>> {
        let entry = state.docs.entries.get(slot as usize)?.as_ref()?;
        let mut line = Vec::new();
        state.log.read_line_at(entry.offset, &mut line).ok()?;
        match serde_json::from_slice(&line) {
            Ok(Record::Upsert { id, vector, .. }) if id == entry.doc.id() => Some(vector),
            _ => None,
        }
    }

    /// Whether another node took this (remote) tenant over: this store must not answer for it.
    pub fn is_fenced(&self) -> bool {
        self.remote.as_ref().is_some_and(|r| r.is_fenced()) || self.read().log.is_fenced()
    }

    /// This node's hold on the tenant when it lives remotely.
    pub fn remote(&self) -> Option<&Arc<dyn TenantLog>> {
        self.remote.as_ref()
    }

    /// For a remote tenant, checks (at most every so often) that no other node took it over, so
    /// that reads are not answered from a stale cache.
    pub fn check_owner(&self) -> Result<(), RemoteError> {
        match &self.remote {
            Some(remote) => remote.check_owner(),
            None => Ok(()),
        }
    }

    /// Checks a vector against the store: dims, finite components, non-zero for cosine.
    pub fn check_vector(&self, vector: &[f32]) -> Result<(), String> {
        documents::check_vector(vector, self.config.dims, self.config.metric == Metric::Cos)
    }

    /// Inserts or replaces documents by id; returns their ids once they are durable.
    pub fn upsert(&self, docs: Vec<NewDocument>) -> Result<Vec<String>, StoreError> {
        let mut ids = Vec::with_capacity(docs.len());
        let mut packed = Vec::with_capacity(docs.len());
        for (index, doc) in docs.iter().enumerate() {
            let invalid = |reason: String| StoreError::InvalidDocument {
                index,
                id: doc.id.clone(),
                reason,
            };
            let id = match &doc.id {
                Some(id) => {
                    documents::check_id(id).map_err(invalid)?;
                    id.clone()
                }
                None => uuid::Uuid::new_v4().to_string(),
            };
            self.check_vector(&doc.vector).map_err(invalid)?;
            let metadata_json = serde_json::to_vec(&doc.metadata).map_err(|e| invalid(e.to_string()))?;
            documents::check_metadata_size(metadata_json.len()).map_err(invalid)?;
            packed.push(PackedDoc::new(&id, &doc.text, &metadata_json).map_err(invalid)?);
            ids.push(id);
        }
        if docs.is_empty() {
            return Ok(ids);
        }
        // base64 vectors take 16/3 bytes a dimension; text and metadata vary.
        let mut buf = Vec::with_capacity(docs.len() * (self.config.dims * 6 + 256));
        let mut line_starts = Vec::with_capacity(docs.len());
        for (doc, packed) in docs.iter().zip(&packed) {
            line_starts.push(buf.len() as u64);
            doclog::encode_upsert(
                &mut buf,
                packed.id(),
                packed.text(),
                packed.metadata_json(),
                &doc.vector,
            );
        }

        if let Some(limit) = self.max_bytes() {
            // Over the byte quota with dead records in the log: compacting may make room.
            let compactable = {
                let state = self.read();
                state.log.end() + buf.len() as u64 > limit && state.docs.dead_records > 0
            };
            if compactable {
                self.compact()?;
            }
        }
        let mut state = self.write();
        Self::check_writable(&state)?;
        if let Some(limit) = self.max_bytes()
            && state.log.end() + buf.len() as u64 > limit
        {
            return Err(StoreError::QuotaExceeded {
                limit,
                quota: Quota::Bytes,
            });
        }
        if let Some(limit) = self.max_documents() {
            let mut fresh: Vec<&str> = ids
                .iter()
                .map(String::as_str)
                .filter(|id| state.docs.slot_of(id).is_none())
                .collect();
            fresh.sort_unstable();
            fresh.dedup();
            if state.docs.len() as u64 + fresh.len() as u64 > limit {
                return Err(StoreError::QuotaExceeded {
                    limit,
                    quota: Quota::Documents,
                });
            }
        }
        let (start, end) = state.log.append(&buf)?;
        for ((doc, packed), rel) in docs.iter().zip(packed).zip(line_starts) {
            state.docs.upsert(packed, &doc.vector, start + rel);
        }
        let log = state.log.clone();
        let start_build = self.should_build(&state);
        let start_indexer = state.docs.vectors.claim_indexer();
        drop(state);
        if start_build {
            self.start_graph_build();
        }
        if start_indexer {
            self.start_indexer();
        }
        log.sync_to(end)?;
        self.maybe_compact()?;
        Ok(ids)
    }

    /// Deletes documents by id; returns how many existed. Durable when it returns.
    pub fn delete(&self, ids: &[String]) -> Result<u64, StoreError> {
        let state = self.write();
        Self::check_writable(&state)?;
        let mut present: Vec<String> = ids
            .iter()
            .filter(|id| state.docs.slot_of(id).is_some())
            .cloned()
            .collect();
        present.sort_unstable();
        present.dedup();
        self.delete_locked(state, present)
    }

    /// Deletes every document whose metadata matches `filter`; returns how many.
    pub fn delete_where(&self, filter: &Filter) -> Result<u64, StoreError> {
        let state = self.write();
        Self::check_writable(&state)?;
        let fields = filter.fields();
        let ids: Vec<String> = state
            .docs
            .entries
            .iter()
            .flatten()
            .filter(|e| passes(filter, &fields, &e.doc))
            .map(|e| e.doc.id().to_owned())
            .collect();
        self.delete_locked(state, ids)
    }

    fn delete_locked(&self, mut state: RwLockWriteGuard<'_, State>, ids: Vec<String>) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut buf = Vec::new();
        let record = Record::Delete { ids };
        doclog::encode_line(&mut buf, &record);
        let (_, end) = state.log.append(&buf)?;
        let Record::Delete { ids } = record else {
            unreachable!("built above")
        };
        let removed = ids.iter().filter(|id| state.docs.delete(id)).count() as u64;
        state.docs.dead_records += 1;
        let log = state.log.clone();
        drop(state);
        log.sync_to(end)?;
        self.maybe_compact()?;
        Ok(removed)
    }

    /// Gets documents by id, in the order asked; missing ids are skipped.
    pub fn get(&self, ids: &[String], include_vectors: bool) -> Vec<Document> {
        let state = self.read();
        let mut buf = vec![0f32; self.config.dims];
        ids.iter()
            .filter_map(|id| {
                let slot = state.docs.slot_of(id)?;
                let entry = state.docs.entries[slot as usize].as_ref()?;
                let vector = if !include_vectors {
                    None
                } else if state.docs.vectors.get(slot, &mut buf) {
                    Some(buf.clone())
                } else {
                    // A row withheld by a damaged snapshot: the log has the vector.
                    Self::vector_from_log(&state, slot)
                };
                Some(Document {
                    id: entry.doc.id().to_owned(),
                    text: entry.doc.text().to_owned(),
                    metadata: entry.doc.metadata(),
                    vector,
                })
            })
            .collect()
    }

    /// Number of live documents.
    /// Ids of the live documents, in slot order (for exports; `get` them in batches).
    pub fn ids(&self) -> Vec<String> {
        let state = self.read();
        (state.docs.entries.iter())
            .filter_map(|e| e.as_ref().map(|e| e.doc.id().to_owned()))
            .collect()
    }

    pub fn count(&self) -> u64 {
        self.read().docs.len() as u64
    }

    /// k-NN search with an optional filter applied during the search and optional MMR.
    pub fn search(&self, query: &SearchQuery) -> Result<Vec<Hit>, StoreError> {
        self.check_vector(&query.vector)
            .map_err(|e| StoreError::InvalidQuery(format!("query {e}")))?;
        if query.k == 0 || query.k > MAX_K {
            return Err(StoreError::InvalidQuery(format!(
                "k must be between 1 and {MAX_K}, got {}",
                query.k
            )));
        }
        let wanted = match &query.mmr {
            Some(mmr) => {
                if !(0.0..=1.0).contains(&mmr.lambda_mult) {
                    return Err(StoreError::InvalidQuery(
                        "mmr.lambda_mult must be between 0 and 1".into(),
                    ));
                }
                if mmr.fetch_k == 0 || mmr.fetch_k > MAX_K {
                    return Err(StoreError::InvalidQuery(format!(
                        "mmr.fetch_k must be between 1 and {MAX_K}"
                    )));
                }
                mmr.fetch_k.max(query.k)
            }
            None => query.k,
        };
        let state = self.read();
        if state.deleted {
            return Err(StoreError::Deleted);
        }
        let filter_fields = query.filter.as_ref().map(Filter::fields).unwrap_or_default();
        let accept = |slot: u64| {
            state
                .docs
                .entries
                .get(slot as usize)
                .and_then(Option::as_ref)
                .is_some_and(|e| query.filter.as_ref().is_none_or(|f| passes(f, &filter_fields, &e.doc)))
        };
        let all_slots = 0..state.docs.entries.len() as u64;
        let live = state.docs.len();
        let mut neighbors = match state.docs.vectors.graph_search(&query.vector, wanted, accept) {
            Some(Ok(found)) if found.len() >= wanted.min(live) => found,
            Some(Ok(_)) => {
                // A selective filter can starve the graph walk; the exact scan over the
                // matching documents guarantees `k` results whenever `k` documents match.
                state
                    .docs
                    .vectors
                    .exact_search(&query.vector, wanted, all_slots, accept)
            }
            Some(Err(e)) => return Err(StoreError::Index(format!("graph search failed: {e}"))),
            None => state
                .docs
                .vectors
                .exact_search(&query.vector, wanted, all_slots, accept),
        };
        if state.docs.vectors.is_damaged() {
            return Err(self.forget_damaged_snapshot());
        }
        let mut vectors_of: HashMap<u64, Vec<f32>> = HashMap::new();
        if query.mmr.is_some() || query.include_vectors {
            for n in &neighbors {
                let mut buf = vec![0f32; self.config.dims];
                if state.docs.vectors.get(n.slot, &mut buf) {
                    vectors_of.insert(n.slot, buf);
                }
            }
        }
        if let Some(mmr) = &query.mmr {
            let embeddings: Vec<&[f32]> = neighbors
                .iter()
                .map(|n| vectors_of.get(&n.slot).map_or(&[][..], Vec::as_slice))
                .collect();
            let picked = tvs_guest_core::mmr::select(&query.vector, &embeddings, query.k, mmr.lambda_mult);
            neighbors = picked.into_iter().map(|i| neighbors[i]).collect();
        }
        Ok(neighbors
            .into_iter()
            .filter_map(|Neighbor { slot, distance }| {
                let entry = state.docs.entries[slot as usize].as_ref()?;
                Some(Hit {
                    id: entry.doc.id().to_owned(),
                    score: self.score_of(distance),
                    distance,
                    text: entry.doc.text().to_owned(),
                    metadata: entry.doc.metadata(),
                    vector: if query.include_vectors {
                        vectors_of.remove(&slot)
                    } else {
                        None
                    },
                })
            })
            .collect())
    }

    fn score_of(&self, distance: f32) -> f32 {
        match self.config.metric {
            Metric::L2 => distance,
            Metric::Ip | Metric::Cos => 1.0 - distance,
        }
    }

    /// Facts about the store.
    pub fn info(&self) -> StoreInfo {
        let state = self.read();
        let count = state.docs.len() as u64;
        let graph = state.docs.vectors.graph();
        let calibration = graph.and_then(Graph::calibration);
        StoreInfo {
            count,
            dims: self.config.dims,
            metric: self.config.metric,
            scalar: self.config.scalar,
            embedding_model: self.config.embedding_model.clone(),
            index: if state.docs.vectors.is_hnsw() {
                IndexKind::Hnsw
            } else if state.docs.vectors.is_building() {
                IndexKind::Building
            } else {
                IndexKind::Exact
            },
            memory_bytes: memory_of(&state.docs) as u64,
            raw_vector_bytes: count * self.config.dims as u64 * 4,
            log_bytes: state.log.end(),
            dead_records: state.docs.dead_records,
            pending_vectors: state.docs.vectors.pending_len() as u64,
            log_syncs: state.log.syncs(),
            ef_search: graph.map(Graph::ef_search),
            recall_estimate: calibration.map(|c| c.recall),
            calibrated_at_nodes: calibration.map(|c| c.nodes),
        }
    }

    /// Estimated resident bytes (for the pool's byte bound).
    pub fn memory_bytes(&self) -> u64 {
        memory_of(&self.read().docs) as u64
    }

    /// Writes a snapshot if the log has grown since the last one, so the next open is fast.
    /// Durability never depends on this: the log alone is the truth.
    pub fn flush(&self) -> Result<(), StoreError> {
        let _snapshot = self.snapshot_lock.lock().unwrap_or_else(|p| p.into_inner());
        let state = self.read();
        if state.deleted {
            return Ok(());
        }
        let at = (
            state.log.generation(),
            state.log.end(),
            state.docs.vectors.index_changes(),
        );
        if state.snapshot_at == Some(at) {
            return Ok(());
        }
        // A remote tenant's snapshot is worth its upload only once the log after the last one
        // is large (until then an open replays that log from the bucket), or once the graph has
        // taken in most of the vectors the last one held outside it (each read back from the
        // log on open).
        let pending = state.docs.vectors.pending_len() as u64;
        let graph_caught_up = state.snapshot_pending >= REPUBLISH_PENDING && pending * 2 <= state.snapshot_pending;
        if self.remote.as_ref().is_some_and(|r| !r.wants_snapshot()) && !graph_caught_up {
            return Ok(());
        }
        let manifest = self.write_snapshot(&state)?;
        let changes = state.docs.vectors.index_changes();
        // Published while the state is still held: nothing is persisted meanwhile, so the
        // snapshot covers exactly what the remote log holds.
        self.publish(&manifest)?;
        drop(state);
        let mut state = self.write();
        state.snapshot_at = Some((manifest.log_generation, manifest.log_offset, changes));
        state.snapshot_pending = pending;
        Ok(())
    }

    /// Publishes the snapshot just written to the remote store, if the tenant lives there.
    fn publish(&self, manifest: &Manifest) -> Result<(), StoreError> {
        let Some(remote) = &self.remote else { return Ok(()) };
        let files = SnapshotFiles {
            log: self.dir.docs_log(),
            log_len: manifest.log_offset,
            dir: self.dir.vector_store(),
            files: manifest.files().cloned().collect(),
            manifest: serde_json::to_vec_pretty(manifest).map_err(|e| StoreError::Snapshot(io::Error::other(e)))?,
        };
        remote.publish_snapshot(&files)?;
        Ok(())
    }

    fn write_snapshot(&self, state: &State) -> Result<Manifest, StoreError> {
        let (generation, offset) = (state.log.generation(), state.log.end());
        // The snapshot must never run ahead of what the log has made durable.
        state.log.sync_to(offset)?;
        if let Some(remote) = &self.remote {
            remote.cache_diverged();
        }
        let storage = self.dir.storage();
        let dir = self.dir.vector_store();
        let stem = format!("snap-{generation}-{offset}-{}", uuid::Uuid::new_v4().simple());
        let docs_file = format!("{stem}.docs");
        let live = state.docs.len() as u64;
        snapshot::write_data_file(storage, &dir.join(&docs_file), |out| {
            snapshot::encode_docs(
                out,
                live,
                state.docs.entries.iter().enumerate().filter_map(|(slot, e)| {
                    let e = e.as_ref()?;
                    let node = state.docs.vectors.graph().map_or(u64::MAX, |g| g.node_of(slot as u64));
                    Some((slot as u64, node, e.offset, &e.doc))
                }),
            )
        })
        .map_err(StoreError::Snapshot)?;
        let next_node = state.docs.vectors.graph().map_or(0, Graph::next_node);
        let slab_file = match (state.docs.vectors.graph(), state.docs.vectors.slab()) {
            (Some(graph), Some(slab)) if graph.reranks() => {
                let file = format!("{stem}.slab");
                snapshot::write_slab_file(storage, &dir.join(&file), slab, state.docs.entries.len())
                    .map_err(StoreError::Snapshot)?;
                Some(file)
            }
            _ => None,
        };
        let (vectors_kind, mut graph_files) = match (state.docs.vectors.graph(), state.docs.vectors.slab()) {
            (Some(graph), _) => {
                let parts = graph.parts();
                let kind = if parts.len() == 1 {
                    snapshot::KIND_GRAPH
                } else {
                    snapshot::KIND_GRAPH_PARTS
                };
                let mut files = Vec::new();
                for (i, part) in parts.enumerate() {
                    let file = if i == 0 {
                        format!("{stem}.usearch")
                    } else {
                        format!("{stem}.{i}.usearch")
                    };
                    let mut bytes = vec![0u8; part.serialized_length()];
                    part.save_to_buffer(&mut bytes)
                        .map_err(|e| StoreError::Snapshot(io::Error::other(e.to_string())))?;
                    snapshot::write_data_file(storage, &dir.join(&file), |out| out.write_all(&bytes))
                        .map_err(StoreError::Snapshot)?;
                    files.push(file);
                }
                (kind, files)
            }
            (None, slab) => {
                let file = format!("{stem}.vectors");
                let rows = state.docs.entries.len();
                snapshot::write_data_file(storage, &dir.join(&file), |out| match slab {
                    Some(slab) => slab.write_rows(out, rows),
                    None => Ok(()),
                })
                .map_err(StoreError::Snapshot)?;
                (snapshot::KIND_ROWS, vec![file])
            }
        };
        let vectors_file = graph_files.remove(0);
        storage.sync_dir(&dir).map_err(StoreError::Snapshot)?;
        let manifest = Manifest {
            format: "tvs-snapshot".into(),
            version: 1,
            log_generation: generation,
            log_offset: offset,
            docs_file,
            vectors_kind: vectors_kind.into(),
            vectors_file,
            next_node,
            documents: live,
            calibration: state.docs.vectors.graph().and_then(|g| g.calibration().copied()),
            graph_scale: state.docs.vectors.graph().and_then(|g| g.codes().scale()),
            slab_file,
            more_graph_files: graph_files,
        };
        snapshot::commit_manifest(storage, &dir, &manifest).map_err(StoreError::Snapshot)?;
        Ok(manifest)
    }

    fn maybe_compact(&self) -> Result<(), StoreError> {
        let needed = {
            let state = self.read();
            state.docs.dead_records >= COMPACT_MIN_DEAD.max(state.docs.len() as u64)
        };
        if needed { self.compact() } else { Ok(()) }
    }

    /// Rewrites the log with only the latest record of each live document, then snapshots.
    pub fn compact(&self) -> Result<(), StoreError> {
        let _snapshot = self.snapshot_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut state = self.write();
        Self::check_writable(&state)?;
        let old = state.log.clone();
        // Every record must be durable before the log is rewritten: the new log counts as
        // synced, and a commit still owed to the old one would otherwise land after newer ones.
        old.sync_to(old.end())?;
        if let Some(remote) = &self.remote {
            remote.cache_diverged();
        }
        let mut live: Vec<(u64, u64)> = state
            .docs
            .entries
            .iter()
            .enumerate()
            .filter_map(|(slot, e)| Some((e.as_ref()?.offset, slot as u64)))
            .collect();
        live.sort_unstable();
        let mut new_offsets = Vec::with_capacity(live.len());
        let new_log = DocLog::replace(self.dir.storage(), old.path(), old.generation() + 1, |out| {
            let mut line = Vec::new();
            let mut pos = doclog::header_line(old.generation() + 1).len() as u64;
            for (offset, slot) in &live {
                old.read_line_at(*offset, &mut line)?;
                out.write_all(&line)?;
                new_offsets.push((*slot, pos));
                pos += line.len() as u64;
            }
            Ok(())
        })?;
        for (slot, offset) in new_offsets {
            if let Some(entry) = state.docs.entries[slot as usize].as_mut() {
                entry.offset = offset;
            }
        }
        let before = old.end();
        if let Some(remote) = &self.remote {
            new_log.set_sink(remote.clone());
        }
        state.log = Arc::new(new_log);
        state.docs.dead_records = 0;
        tracing::info!(store = %self.dir.root().display(), before, after = state.log.end(), "compacted the document log");
        let manifest = self.write_snapshot(&state)?;
        state.snapshot_at = Some((
            manifest.log_generation,
            manifest.log_offset,
            state.docs.vectors.index_changes(),
        ));
        state.snapshot_pending = state.docs.vectors.pending_len() as u64;
        self.publish(&manifest)
    }

    /// Marks the store deleted (every later call fails) and releases its directory lock so the
    /// directory can be removed. Used by tenant deletion.
    pub fn mark_deleted(&self) {
        let mut state = self.write();
        state.deleted = true;
        drop(state);
        self.lock.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    pub fn is_deleted(&self) -> bool {
        self.read().deleted
    }

    fn should_build(&self, state: &State) -> bool {
        state.docs.vectors.wants_build(state.docs.len(), &self.config)
    }

    /// Builds the HNSW graph on a background thread; writers carry on meanwhile.
    fn start_graph_build(&self) {
        let rows = {
            let mut state = self.write();
            if !self.should_build(&state) {
                return;
            }
            let live: Vec<u64> = state.docs.by_id.slots().collect();
            state.docs.vectors.begin_build(live.into_iter())
        };
        let weak = self.this.clone();
        let config = self.config.clone();
        let handle = std::thread::Builder::new().name("tvs-hnsw-build".into()).spawn(move || {
            let built = Graph::build(&config, &rows);
            drop(rows);
            let Some(store) = weak.upgrade() else { return };
            let mut state = store.write();
            match built {
                Ok(graph) => {
                    let docs = &mut state.docs;
                    let entries = &docs.entries;
                    docs.vectors.install_graph(graph, |slot| entries.get(slot as usize).is_some_and(Option::is_some));
                    let start_indexer = docs.vectors.claim_indexer();
                    tracing::info!(store = %store.dir.root().display(), docs = docs.len(), "HNSW graph built");
                    drop(state);
                    if start_indexer {
                        store.start_indexer();
                    }
                    if let Err(e) = store.flush() {
                        tracing::warn!(error = %e, "snapshot after graph build failed");
                    }
                }
                Err(e) => {
                    state.docs.vectors.abort_build();
                    tracing::error!(store = %store.dir.root().display(), error = %e, "HNSW build failed; keeping the current index");
                }
            }
        });
        match handle {
            Ok(handle) => {
                let previous = self.builder.lock().unwrap_or_else(|p| p.into_inner()).replace(handle);
                debug_assert!(previous.is_none_or(|h| h.is_finished()));
            }
            Err(e) => {
                self.write().docs.vectors.abort_build();
                tracing::error!(error = %e, "cannot spawn the HNSW build thread");
            }
        }
    }

    /// Adds pending vectors to the graph on a background thread, a batch at a time; each batch
    /// is added without the store's lock and published under it. Called after claiming the
    /// indexer role ([`Vectors::claim_indexer`]).
    fn start_indexer(&self) {
        const BATCH: usize = 256;
        let weak = self.this.clone();
        let spawned = std::thread::Builder::new().name("tvs-hnsw-index".into()).spawn(move || {
            loop {
                let Some(store) = weak.upgrade() else { return };
                // A graph viewed from its snapshot cannot grow: copy it first, without the lock.
                let viewed = store.read().docs.vectors.viewed_parts();
                for (epoch, part, viewed) in viewed {
                    match viewed.to_owned_index() {
                        Ok(index) => store.write().docs.vectors.adopt_owned_part(epoch, part, index),
                        Err(e) => tracing::warn!(store = %store.dir.root().display(), error = %e, "copying the viewed graph failed"),
                    }
                }
                let batch = match store.write().docs.vectors.begin_indexing(BATCH) {
                    Ok(Some(batch)) => batch,
                    Ok(None) => return,
                    Err(e) => {
                        store.write().docs.vectors.stop_indexing();
                        tracing::error!(store = %store.dir.root().display(), error = %e, "graph indexing failed; vectors stay in the exact-scan buffer");
                        return;
                    }
                };
                // The batch's vectors are not in the graph yet: the held-out queries a growing
                // graph re-calibrates its search breadth on.
                let calibration = batch
                    .calibration_queries()
                    .and_then(|queries| store.calibrate_graph(batch.epoch(), &queries));
                // Snapshots serialise the graph; they must not run while nodes are added.
                let added = {
                    let _snapshot = store.snapshot_lock.lock().unwrap_or_else(|p| p.into_inner());
                    batch.add_all()
                };
                let mut state = store.write();
                if let Err(e) = added {
                    state.docs.vectors.stop_indexing();
                    tracing::error!(store = %store.dir.root().display(), error = %e, "graph indexing failed; vectors stay in the exact-scan buffer");
                    return;
                }
                if let Some(calibration) = calibration {
                    tracing::info!(store = %store.dir.root().display(), nodes = calibration.nodes, ef_search = calibration.ef_search, recall = calibration.recall, "re-calibrated the graph's search breadth");
                    state.docs.vectors.recalibrated(batch.epoch(), calibration);
                }
                state.docs.vectors.finish_indexing(batch);
            }
        });
        match spawned {
            Ok(handle) => {
                self.indexer.lock().unwrap_or_else(|p| p.into_inner()).replace(handle);
            }
            Err(e) => {
                self.write().docs.vectors.stop_indexing();
                tracing::error!(error = %e, "cannot spawn the graph indexer thread");
            }
        }
    }

    /// Measures the breadth the graph of `epoch` needs on `queries` (vectors not in it). Takes
    /// the read lock once per query and breadth, so writers wait for one search at most.
    fn calibrate_graph(&self, epoch: u64, queries: &[&[f32]]) -> Option<Calibration> {
        let k = vectors::CALIBRATION_K;
        let truths: Vec<Vec<u64>> = queries
            .iter()
            .map(|q| self.read().docs.vectors.calibration_truth(epoch, q, k))
            .collect::<Option<_>>()?;
        let nodes = self.read().docs.vectors.graph_nodes(epoch)?;
        vectors::climb_ladder(&truths, nodes, |i, ef| {
            self.read().docs.vectors.calibration_answer(epoch, queries[i], k, ef)
        })
    }

    /// Waits until no graph build or indexing runs (tests, benchmarks, shutdown).
    pub fn wait_for_index(&self) {
        loop {
            let builder = self.builder.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(handle) = builder {
                let _ = handle.join();
            }
            let indexer = self.indexer.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(handle) = indexer {
                let _ = handle.join();
            }
            let busy = {
                let state = self.read();
                state.docs.vectors.is_building() || state.docs.vectors.is_indexing()
            };
            if !busy {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

fn memory_of(docs: &Docs) -> usize {
    let per_slot = size_of::<Option<Entry>>();
    docs.vectors.memory_bytes() + docs.payload_bytes + docs.entries.capacity() * per_slot + docs.by_id.heap_bytes()
}

thread_local! {
    /// Scratch space for the metadata values a filter reads, reused across the candidates of a
    /// search so that evaluating a filter allocates nothing for numbers and booleans.
    static FILTER_VALUES: std::cell::RefCell<Vec<Option<Value>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether `doc`'s metadata passes `filter`, whose [`Filter::fields`] are `fields`.
fn passes(filter: &Filter, fields: &[&str], doc: &PackedDoc) -> bool {
    FILTER_VALUES.with_borrow_mut(|values| filter.matches_json(doc.metadata_json(), fields, values))
}

/// The id stored at `slot` (empty for an empty slot, which no id index entry points at).
fn id_at(entries: &[Option<Entry>], slot: u64) -> &[u8] {
    entries
        .get(slot as usize)
        .and_then(Option::as_ref)
        .map_or(&[][..], |e| e.doc.id_bytes())
}

impl Docs {
    /// Number of live documents.
    fn len(&self) -> usize {
        self.by_id.len()
    }

    fn slot_of(&self, id: &str) -> Option<u64> {
        self.by_id.get(id.as_bytes(), |slot| id_at(&self.entries, slot))
    }

    /// Applies an upsert at log `offset` of a document already packed.
    fn upsert(&mut self, doc: PackedDoc, vector: &[f32], offset: u64) {
        let slot = match self.slot_of(doc.id()) {
            Some(slot) => {
                self.dead_records += 1;
                slot
            }
            None => {
                let slot = self.free_slots.pop().unwrap_or(self.entries.len() as u64);
                if slot as usize == self.entries.len() {
                    self.entries.push(None);
                }
                slot
            }
        };
        self.vectors.set(slot, vector);
        self.payload_bytes += doc.heap_bytes();
        if let Some(old) = self.entries[slot as usize].replace(Entry { offset, doc }) {
            self.payload_bytes -= old.doc.heap_bytes();
        }
        let Docs { by_id, entries, .. } = self;
        let id = id_at(entries, slot);
        by_id.insert(id, slot, |s| id_at(entries, s));
    }

    /// Applies the deletion of one id; returns whether it existed.
    fn delete(&mut self, id: &str) -> bool {
        let Docs { by_id, entries, .. } = self;
        let Some(slot) = by_id.remove(id.as_bytes(), |s| id_at(entries, s)) else {
            return false;
        };
        self.vectors.remove(slot);
        if let Some(old) = self.entries[slot as usize].take() {
            self.payload_bytes -= old.doc.heap_bytes();
            self.dead_records += 1;
        }
        self.free_slots.push(slot);
        true
    }
}

/// Builds a store's documents from a snapshot and a log tail.
struct Loader {
    config: StoreConfig,
    docs: Docs,
}

impl Loader {
    fn new(config: &StoreConfig) -> Self {
        Loader {
            config: config.clone(),
            docs: Docs::new(config.dims, config.metric),
        }
    }

    /// The graph of a snapshot, viewed in place where the storage maps files.
    fn open_graph(&self, storage: &dyn Storage, path: &Path) -> io::Result<GraphIndex> {
        let index = vectors::new_graph(&self.config).map_err(io::Error::other)?;
        let index = match snapshot::map_data_file(storage, path)? {
            // Mapped and checked: usearch views the file in place.
            Some((map, len)) => GraphIndex::viewed(index, map, len).map_err(io::Error::other)?,
            None => {
                // usearch reads the file itself (it stops before the CRC trailer), after the CRC
                // is checked by streaming: no second in-memory copy of the graph.
                match path.to_str() {
                    Some(path_text) => {
                        snapshot::verify_data_file(storage, path)?;
                        index.load(path_text)
                    }
                    None => index.load_from_buffer(&snapshot::read_data_file(storage, path)?),
                }
                .map_err(|e| io::Error::other(e.to_string()))?;
                GraphIndex::owned(index)
            }
        };
        if index.dimensions() != self.config.dims {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "graph dims differ from the config",
            ));
        }
        vectors::prepare_loaded(&index).map_err(io::Error::other)?;
        Ok(index)
    }

    fn load_snapshot(&mut self, dir: &StoreDir, manifest: &Manifest) -> io::Result<()> {
        let dims = self.config.dims;
        let storage = dir.storage();
        let vs = dir.vector_store();
        let vectors_path = vs.join(&manifest.vectors_file);
        // The graph (checked, then indexed by usearch) on a second thread while this one decodes
        // the documents: each is about half of a big tenant's open.
        // (A graph in parts opens a part a thread.)
        let (this, vs_dir) = (&*self, &vs);
        let (snap_docs, graph) = std::thread::scope(|scope| {
            let parts: Vec<_> = (manifest.graph_files().into_iter())
                .map(|file| scope.spawn(move || this.open_graph(storage, &vs_dir.join(file))))
                .collect();
            let docs = snapshot::read_data_file(storage, &vs.join(&manifest.docs_file))
                .and_then(|bytes| snapshot::decode_docs(&bytes));
            let parts: io::Result<Vec<GraphIndex>> = parts
                .into_iter()
                .map(|handle| {
                    handle
                        .join()
                        .unwrap_or_else(|_| Err(io::Error::other("opening the graph panicked")))
                })
                .collect();
            (docs, parts)
        });
        let snap_docs = snap_docs?;
        let vectors = match manifest.vectors_kind.as_str() {
            snapshot::KIND_ROWS => {
                let mut v = Vectors::exact(dims, self.config.metric);
                v.set_slab(snapshot::read_slab(storage, &vectors_path, dims)?);
                v
            }
            snapshot::KIND_GRAPH | snapshot::KIND_GRAPH_PARTS => {
                let parts = graph?;
                if manifest.vectors_kind == snapshot::KIND_GRAPH && parts.len() != 1 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a one-part graph names more parts",
                    ));
                }
                let nodes = snap_docs
                    .iter()
                    .filter(|d| d.node != vectors::NONE)
                    .map(|d| (d.slot, d.node));
                let codes = manifest.graph_scale.map_or(Codes::Usearch, Codes::Scaled);
                let mut graph = Graph::restore(parts, self.config.metric, codes, nodes, manifest.next_node)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                graph.set_calibration(&self.config, manifest.calibration);
                let reranks = graph.reranks();
                let mut vectors = Vectors::with_graph(dims, self.config.metric, graph);
                let slab = match &manifest.slab_file {
                    Some(file) if reranks => Some(snapshot::open_slab_file(storage, &vs.join(file), dims)?),
                    Some(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "a slab is recorded beside an f32 graph",
                        ));
                    }
                    None => None,
                };
                // Vectors the indexer had not added yet are read back from their log records,
                // and all of them beside a quantising graph whose snapshot has no slab.
                let from_log = |doc: &&SnapDoc| doc.node == vectors::NONE || (reranks && slab.is_none());
                let mut rebuilt_slab = (reranks && slab.is_none()).then(|| Slab::new(dims));
                let log = storage.open(&dir.docs_log(), OpenMode::Read)?;
                let mut line = Vec::new();
                for doc in snap_docs.iter().filter(from_log) {
                    doclog::read_line_at(&*log, doc.offset, &mut line)?;
                    let vector = match serde_json::from_slice(&line) {
                        Ok(Record::Upsert { id, vector, .. }) if id == doc.doc.id() && vector.len() == dims => vector,
                        _ => {
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!("log record at {} is not the upsert of {:?}", doc.offset, doc.doc.id()),
                            ));
                        }
                    };
                    if doc.node == vectors::NONE {
                        vectors.restore_pending(doc.slot, &vector);
                    }
                    if let Some(rows) = &mut rebuilt_slab {
                        rows.set(doc.slot, &vector);
                    }
                }
                if let Some(slab) = slab.or(rebuilt_slab) {
                    vectors.set_slab(slab);
                }
                vectors
            }
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unknown vectors kind {other}"),
                ));
            }
        };
        let slab_rows = vectors.slab().map(Slab::rows);
        let docs = &mut self.docs;
        docs.vectors = vectors;
        let Docs { by_id, entries, .. } = docs;
        by_id.reserve(snap_docs.len(), |s| id_at(entries, s));
        for doc in snap_docs {
            let slot = doc.slot as usize;
            if slab_rows.is_some_and(|rows| slot >= rows) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "document slot beyond the vector file",
                ));
            }
            if docs.entries.len() <= slot {
                docs.entries.resize_with(slot + 1, || None);
            }
            if docs.entries[slot].is_some() {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "duplicate slot in snapshot"));
            }
            docs.payload_bytes += doc.doc.heap_bytes();
            docs.entries[slot] = Some(Entry {
                offset: doc.offset,
                doc: doc.doc,
            });
            let Docs { by_id, entries, .. } = docs;
            if by_id
                .insert(id_at(entries, doc.slot), doc.slot, |s| id_at(entries, s))
                .is_some()
            {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "duplicate id in snapshot"));
            }
        }
        docs.free_slots = (0..docs.entries.len() as u64)
            .rev()
            .filter(|s| docs.entries[*s as usize].is_none())
            .collect();
        Ok(())
    }

    fn apply(&mut self, offset: u64, record: Record) -> Result<(), String> {
        match record {
            Record::Upsert {
                id,
                text,
                metadata,
                vector,
            } => {
                if vector.len() != self.config.dims || vector.iter().any(|v| !v.is_finite()) {
                    return Err(format!(
                        "record for {id:?} has a vector of the wrong size or with non-finite values"
                    ));
                }
                let metadata_json = serde_json::to_vec(&metadata).map_err(|e| e.to_string())?;
                let doc = PackedDoc::new(&id, &text, &metadata_json)?;
                self.docs.upsert(doc, &vector, offset);
                Ok(())
            }
            Record::Delete { ids } => {
                for id in &ids {
                    self.docs.delete(id);
                }
                self.docs.dead_records += 1;
                Ok(())
            }
            Record::Header { .. } => Err("unexpected header".into()),
        }
    }

    fn finish(self, log: Arc<DocLog>, snapshot_at: Option<(u64, u64, u64)>) -> State {
        let snapshot_pending = self.docs.vectors.pending_len() as u64;
        State {
            log,
            docs: self.docs,
            snapshot_at,
            snapshot_pending,
            deleted: false,
        }
    }
}
