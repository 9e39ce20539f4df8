//! The pool of open tenant stores: an LRU bounded by count and optionally by estimated bytes,
//! whose entries expire a TTL after their last use.
//!
//! Invariants:
//! - At most one `TenantStore` per tenant exists in the process. Every store the pool opened is
//!   remembered weakly; a miss for a tenant whose store is still alive (evicted while a request
//!   held it) takes that same store back instead of opening a second writer.
//! - Concurrent misses for one tenant load it once; the others wait for that load.
//! - A store handed out is an `Arc`: eviction or expiry only drops the pool's reference, never
//!   tears the store down under a request. Evicted and expired stores are flushed (snapshotted)
//!   outside the pool's lock.
//! - A tenant being deleted cannot be loaded; its open store is marked deleted first.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use lru::LruCache;
use serde::Serialize;

use crate::config::{Settings, StoreConfig};
use crate::fsutil;
use crate::store::{LockError, OpenError, StoreLock, TenantStore};
use crate::tenant::{DataDir, TenantError, TenantId};

/// Bounds of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    pub capacity: usize,
    pub ttl: Duration,
    pub max_bytes: Option<u64>,
}

impl PoolConfig {
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            capacity: settings.pool_size,
            ttl: settings.ttl,
            max_bytes: settings.pool_max_bytes,
        }
    }
}

/// Counters of the pool; `hit_rate` is hits / (hits + misses).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PoolStats {
    pub hits: u64,
    pub misses: u64,
    pub loads: u64,
    pub evictions: u64,
    pub expirations: u64,
    pub size: usize,
    pub capacity: usize,
    pub bytes: u64,
    pub hit_rate: f64,
}

#[derive(Debug)]
struct Slot {
    store: Arc<TenantStore>,
    last_used: Instant,
    bytes: u64,
}

#[derive(Debug)]
struct Inner {
    lru: LruCache<TenantId, Slot>,
    loading: HashSet<TenantId>,
    deleting: HashSet<TenantId>,
    /// Every store opened by this pool that may still be alive, with its directory lock. The
    /// lock is released only when the pool sees the store gone, so a tenant is never reopened
    /// while its previous store is still being dropped.
    alive: HashMap<TenantId, (Weak<TenantStore>, Arc<StoreLock>)>,
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    loads: AtomicU64,
    evictions: AtomicU64,
    expirations: AtomicU64,
}

/// With tenants in object storage, tenant caches kept on disk per slot of the pool.
pub const CACHES_PER_POOL_SLOT: usize = 4;

/// The pool. Share it as `Arc<Pool>`.
#[derive(Debug)]
pub struct Pool {
    data: DataDir,
    config: PoolConfig,
    inner: Mutex<Inner>,
    load_done: Condvar,
    counters: Counters,
}

impl Pool {
    pub fn new(data: DataDir, config: PoolConfig) -> Self {
        Pool {
            data,
            config,
            inner: Mutex::new(Inner {
                // Unbounded at the LRU level: the pool evicts itself, so that it can count and
                // flush what leaves, and so that the byte bound applies too.
                lru: LruCache::unbounded(),
                loading: HashSet::new(),
                deleting: HashSet::new(),
                alive: HashMap::new(),
            }),
            load_done: Condvar::new(),
            counters: Counters::default(),
        }
    }

    pub fn data_dir(&self) -> &DataDir {
        &self.data
    }

    pub fn config(&self) -> PoolConfig {
        self.config
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The open store of `tenant`, loading it on a miss.
    pub fn get(&self, tenant: &TenantId) -> Result<Arc<TenantStore>, OpenError> {
        let mut leaving = Vec::new();
        let result = self.get_inner(tenant, &mut leaving);
        flush_all(leaving);
        result
    }

    fn get_inner(&self, tenant: &TenantId, leaving: &mut Vec<Arc<TenantStore>>) -> Result<Arc<TenantStore>, OpenError> {
        let mut inner = self.lock();
        loop {
            if inner.deleting.contains(tenant) {
                return Err(OpenError::NotFound(self.data.store_dir(tenant).root().to_owned()));
            }
            if let Some(slot) = inner.lru.get_mut(tenant) {
                if slot.store.is_poisoned() {
                    // A failed fsync (or a takeover by another node): reopen from the log rather
                    // than refuse writes until the entry expires. The old store refuses every
                    // write, so it is no second writer.
                    let slot = inner.lru.pop(tenant).expect("present");
                    tracing::warn!(tenant = %tenant, "reopening a store that could not make a write durable or was taken over");
                    drop(slot);
                    break;
                }
                if slot.last_used.elapsed() < self.config.ttl {
                    slot.last_used = Instant::now();
                    self.counters.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(slot.store.clone());
                }
                let slot = inner.lru.pop(tenant).expect("present");
                self.counters.expirations.fetch_add(1, Ordering::Relaxed);
                leaving.push(slot.store);
            }
            if inner.loading.contains(tenant) {
                inner = self.load_done.wait(inner).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            break;
        }
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        let (revived, held_lock) = match inner.alive.get(tenant) {
            Some((weak, lock)) => (
                weak.upgrade().filter(|s| !s.is_deleted() && !s.is_poisoned()),
                Some(lock.clone()),
            ),
            None => (None, None),
        };
        let store = match revived {
            Some(store) => store,
            None => {
                inner.loading.insert(tenant.clone());
                drop(inner);
                let opened = self.open_store(tenant, held_lock);
                inner = self.lock();
                inner.loading.remove(tenant);
                self.load_done.notify_all();
                let (store, lock) = opened?;
                self.counters.loads.fetch_add(1, Ordering::Relaxed);
                inner.alive.insert(tenant.clone(), (Arc::downgrade(&store), lock));
                store
            }
        };
        let bytes = store.memory_bytes();
        inner.lru.put(
            tenant.clone(),
            Slot {
                store: store.clone(),
                last_used: Instant::now(),
                bytes,
            },
        );
        self.evict_over_bounds(&mut inner, leaving);
        // An entry goes once its store is gone *and* has dropped its share of the lock: a store
        // whose drop is still running holds the lock file open a moment longer.
        inner
            .alive
            .retain(|_, (weak, lock)| weak.strong_count() > 0 || Arc::strong_count(lock) > 1);
        Ok(store)
    }

    fn open_store(
        &self,
        tenant: &TenantId,
        held_lock: Option<Arc<StoreLock>>,
    ) -> Result<(Arc<TenantStore>, Arc<StoreLock>), OpenError> {
        let dir = self.data.store_dir(tenant);
        // Only a new cache adds to the caches on disk, so only then are they trimmed.
        let new_cache = self.data.catalog().is_some() && std::fs::symlink_metadata(dir.root()).is_err();
        match self.data.catalog() {
            // A cache directory: made here when this node has not held the tenant before.
            Some(_) => crate::storage::create_real_dir(dir.storage(), dir.root()).map_err(|source| OpenError::Io {
                path: dir.root().to_owned(),
                source,
            })?,
            // Checked before the lock file is touched, so a planted symlink never gets one.
            None => TenantStore::check_dir(&dir)?,
        }
        let lock = match held_lock {
            Some(lock) => lock,
            None => match StoreLock::acquire(&dir) {
                Ok(lock) => Arc::new(lock),
                Err(LockError::Busy) => return Err(OpenError::Locked(dir.root().to_owned())),
                Err(LockError::Io(source)) => {
                    return Err(match source.kind() {
                        std::io::ErrorKind::NotFound => OpenError::NotFound(dir.root().to_owned()),
                        _ => OpenError::Io {
                            path: dir.root().to_owned(),
                            source,
                        },
                    });
                }
            },
        };
        let store = match self.data.catalog() {
            Some(catalog) => {
                let remote = catalog.open_tenant(tenant, &dir)?;
                let store = match TenantStore::open_remote(&dir, lock.clone(), remote.clone()) {
                    Ok(store) => store,
                    Err(OpenError::Remote(e)) => return Err(OpenError::Remote(e)),
                    Err(e) => {
                        // The cache is damaged (a disk error, a hand edit): the bucket has the
                        // truth, so rebuild the cache from it once.
                        tracing::warn!(tenant = %tenant, error = %e, "rebuilding a cache that does not open");
                        remote.cache_diverged();
                        drop(remote);
                        let remote = catalog.open_tenant(tenant, &dir)?;
                        TenantStore::open_remote(&dir, lock.clone(), remote)?
                    }
                };
                // The lock file's time says when the cache was last used (see `trim_caches`).
                if let Err(e) =
                    fsutil::open_append(&dir.lock_file()).and_then(|f| f.set_modified(std::time::SystemTime::now()))
                {
                    tracing::debug!(tenant = %tenant, error = %e, "cannot mark the cache as used");
                }
                if new_cache {
                    self.trim_caches();
                }
                store
            }
            None => TenantStore::open_locked(&dir, lock.clone())?,
        };
        Ok((store, lock))
    }

    /// With tenants in object storage, keeps the caches of at most [`CACHES_PER_POOL_SLOT`] ×
    /// capacity tenants on disk: the least recently opened caches of tenants this process does
    /// not hold are removed (the next open downloads the tenant again).
    fn trim_caches(&self) {
        let keep = self.config.capacity.max(1) * CACHES_PER_POOL_SLOT;
        let Ok(entries) = std::fs::read_dir(self.data.root()) else {
            return;
        };
        let mut caches: Vec<(std::time::SystemTime, TenantId)> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| {
                let id = TenantId::new(e.file_name().to_str()?).ok()?;
                let used = std::fs::metadata(e.path().join(crate::tenant::LOCK_FILE))
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
                Some((used, id))
            })
            .collect();
        if caches.len() <= keep {
            return;
        }
        caches.sort();
        let excess = caches.len() - keep;
        for (_, id) in caches.into_iter().take(excess) {
            let inner = self.lock();
            if inner.alive.contains_key(&id) || inner.loading.contains(&id) || inner.deleting.contains(&id) {
                continue;
            }
            // Held under the pool's lock, so no open of this tenant starts meanwhile; the file
            // lock keeps another process on the same directory (a misconfiguration) safe.
            let dir = self.data.store_dir(&id);
            let Ok(file) = fsutil::open_append(&dir.lock_file()) else {
                continue;
            };
            if file.try_lock().is_err() {
                continue;
            }
            match std::fs::remove_dir_all(dir.root()) {
                Ok(()) => tracing::debug!(tenant = %id, "removed a cache to bound the disk it takes"),
                Err(e) => tracing::warn!(tenant = %id, error = %e, "cannot remove a tenant's cache"),
            }
            drop(inner);
        }
    }

    fn evict_over_bounds(&self, inner: &mut Inner, leaving: &mut Vec<Arc<TenantStore>>) {
        let over_bytes = |inner: &Inner| {
            self.config
                .max_bytes
                .is_some_and(|max| inner.lru.iter().map(|(_, s)| s.bytes).sum::<u64>() > max)
        };
        // The entry just used is the most recent; it is kept even if alone it exceeds the bytes.
        while inner.lru.len() > self.config.capacity.max(1) || (inner.lru.len() > 1 && over_bytes(inner)) {
            let Some((_, slot)) = inner.lru.pop_lru() else { break };
            self.counters.evictions.fetch_add(1, Ordering::Relaxed);
            leaving.push(slot.store);
        }
    }

    /// Drops every entry idle for longer than the TTL; returns how many.
    pub fn cleanup_expired(&self) -> usize {
        let mut leaving = Vec::new();
        {
            let mut inner = self.lock();
            let expired: Vec<TenantId> = inner
                .lru
                .iter()
                .filter(|(_, slot)| slot.last_used.elapsed() >= self.config.ttl)
                .map(|(id, _)| id.clone())
                .collect();
            for id in expired {
                if let Some(slot) = inner.lru.pop(&id) {
                    leaving.push(slot.store);
                }
            }
            self.counters
                .expirations
                .fetch_add(leaving.len() as u64, Ordering::Relaxed);
        }
        let n = leaving.len();
        flush_all(leaving);
        n
    }

    /// Current counters.
    pub fn stats(&self) -> PoolStats {
        let inner = self.lock();
        let hits = self.counters.hits.load(Ordering::Relaxed);
        let misses = self.counters.misses.load(Ordering::Relaxed);
        PoolStats {
            hits,
            misses,
            loads: self.counters.loads.load(Ordering::Relaxed),
            evictions: self.counters.evictions.load(Ordering::Relaxed),
            expirations: self.counters.expirations.load(Ordering::Relaxed),
            size: inner.lru.len(),
            capacity: self.config.capacity,
            bytes: inner.lru.iter().map(|(_, s)| s.bytes).sum(),
            hit_rate: if hits + misses == 0 {
                0.0
            } else {
                hits as f64 / (hits + misses) as f64
            },
        }
    }

    /// Whether `tenant` is in the pool now (does not count as a use).
    pub fn contains(&self, tenant: &TenantId) -> bool {
        self.lock().lru.contains(tenant)
    }

    /// Creates a tenant (not loaded until first use).
    pub fn create_tenant(&self, tenant: &TenantId, config: &StoreConfig) -> Result<(), TenantError> {
        self.data.create_tenant(tenant, config).map(drop)
    }

    /// Deletes a tenant and all its data. Requests holding its store get `Deleted` errors from
    /// then on; the tenant cannot be loaded while this runs.
    pub fn delete_tenant(&self, tenant: &TenantId) -> Result<(), TenantError> {
        let open = {
            let mut inner = self.lock();
            while inner.loading.contains(tenant) {
                inner = self.load_done.wait(inner).unwrap_or_else(|p| p.into_inner());
            }
            inner.deleting.insert(tenant.clone());
            inner.lru.pop(tenant);
            inner.alive.remove(tenant).and_then(|(weak, _lock)| weak.upgrade())
        };
        if let Some(store) = open {
            store.mark_deleted();
        }
        let result = self.data.delete_tenant(tenant);
        self.lock().deleting.remove(tenant);
        result
    }

    /// Flushes every store open in the process (shutdown).
    pub fn flush_all(&self) {
        let stores: Vec<Arc<TenantStore>> = self
            .lock()
            .alive
            .values()
            .filter_map(|(weak, _)| weak.upgrade())
            .collect();
        flush_all(stores);
    }
}

fn flush_all(stores: Vec<Arc<TenantStore>>) {
    for store in stores {
        if let Err(e) = store.flush() {
            tracing::warn!(store = %store.dir().root().display(), error = %e, "flush on eviction failed (the log still holds every write)");
        }
    }
}
