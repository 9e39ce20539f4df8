//! Faults injected through the storage seam: an fsync that fails, a disk that is full, a
//! snapshot that cannot be read, a rename that fails. Each gives a clear error, loses no
//! acknowledged write, and leaves the store as `docs/design.md` says (a failed fsync poisons the
//! log until the store is reopened; everything else leaves it writable).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::Map;
use tvs_store::config::{Metric, ScalarKind, StoreConfig};
use tvs_store::storage::{OpenMode, StdStorage, Storage, StorageFile};
use tvs_store::store::{NewDocument, SearchQuery, TenantStore};
use tvs_store::tenant::{DataDir, StoreDir, TenantId};

/// An operation a fault can hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// `fsync`/`fdatasync` of a file fails with EIO.
    Sync,
    /// A write fails with ENOSPC.
    NoSpace,
    /// A read fails with EIO.
    Read,
    /// A rename fails with EIO.
    Rename,
}

/// The real file system, except that an armed fault fails every operation of its kind on a
/// path containing its needle.
#[derive(Debug, Default)]
struct Faulty {
    armed: Mutex<Option<(Fault, String)>>,
}

impl Faulty {
    fn arm(&self, fault: Fault, needle: &str) {
        *self.armed.lock().expect("lock") = Some((fault, needle.to_owned()));
    }
    fn disarm(&self) {
        *self.armed.lock().expect("lock") = None;
    }
    fn check(&self, fault: Fault, path: &Path) -> io::Result<()> {
        let armed = self.armed.lock().expect("lock");
        match &*armed {
            Some((armed, needle)) if *armed == fault && path.to_string_lossy().contains(needle.as_str()) => {
                Err(match fault {
                    Fault::NoSpace => io::Error::from_raw_os_error(libc::ENOSPC),
                    _ => io::Error::from_raw_os_error(libc::EIO),
                })
            }
            _ => Ok(()),
        }
    }
}

#[derive(Debug)]
struct Shared(Arc<Faulty>);

impl Storage for Shared {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn StorageFile>> {
        Ok(Box::new(FaultyFile {
            inner: StdStorage.open(path, mode)?,
            path: path.to_owned(),
            faults: self.0.clone(),
        }))
    }
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        StdStorage.create_dir(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.0.check(Fault::Rename, from)?;
        StdStorage.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        StdStorage.remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        StdStorage.remove_dir_all(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.0.check(Fault::Sync, path)?;
        StdStorage.sync_dir(path)
    }
}

#[derive(Debug)]
struct FaultyFile {
    inner: Box<dyn StorageFile>,
    path: PathBuf,
    faults: Arc<Faulty>,
}

impl StorageFile for FaultyFile {
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.faults.check(Fault::Read, &self.path)?;
        self.inner.read_at(buf, offset)
    }
    fn write_all(&self, buf: &[u8]) -> io::Result<()> {
        self.faults.check(Fault::NoSpace, &self.path)?;
        self.inner.write_all(buf)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.faults.check(Fault::NoSpace, &self.path)?;
        self.inner.write_all_at(buf, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync_all(&self) -> io::Result<()> {
        self.faults.check(Fault::Sync, &self.path)?;
        self.inner.sync_all()
    }
    fn sync_data(&self) -> io::Result<()> {
        self.faults.check(Fault::Sync, &self.path)?;
        self.inner.sync_data()
    }
}

fn doc(id: &str, seed: f32) -> NewDocument {
    NewDocument {
        id: Some(id.to_owned()),
        text: format!("text of {id}"),
        metadata: Map::new(),
        vector: vec![seed, 1.0 - seed, 0.5, -seed],
    }
}

/// A tenant "t" whose files go through a [`Faulty`] storage, open.
fn faulty_tenant(root: &Path, hnsw_threshold: usize) -> (Arc<Faulty>, StoreDir, Arc<TenantStore>) {
    let faults = Arc::new(Faulty::default());
    let data = DataDir::open_with_storage(root, Arc::new(Shared(faults.clone()))).expect("data dir");
    let id = TenantId::new("t").expect("id");
    let mut config = StoreConfig::new(4, Metric::L2, ScalarKind::default(), "none");
    config.hnsw_threshold = hnsw_threshold;
    let dir = data.create_tenant(&id, &config).expect("create");
    let store = TenantStore::open(&dir).expect("open");
    (faults, dir, store)
}

/// The ids a plain reopen (real file system) finds.
fn ids_after_reopen(root: &Path) -> Vec<String> {
    let data = DataDir::open(root).expect("data dir");
    let store = TenantStore::open(&data.store_dir(&TenantId::new("t").expect("id"))).expect("reopen");
    let all = ["a", "b", "c", "d", "e", "f"].map(String::from);
    store.get(&all, false).into_iter().map(|d| d.id).collect()
}

fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[test]
fn a_failed_fsync_refuses_the_write_poisons_the_log_and_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (faults, _dir, store) = faulty_tenant(tmp.path(), 1_000);
    store.upsert(vec![doc("a", 0.1)]).expect("acknowledged");

    faults.arm(Fault::Sync, "docs.jsonl");
    let failed = store.upsert(vec![doc("b", 0.2)]).expect_err("not acknowledged");
    faults.disarm();
    let text = chain(&failed);
    assert!(text.contains("Input/output error"), "{text}");
    // The kernel may have dropped the dirty pages: no later write is trusted to this log.
    let refused = store.upsert(vec![doc("c", 0.3)]).expect_err("poisoned");
    let text = chain(&refused);
    assert!(
        text.contains("writes are refused until the store is reopened"),
        "{text}"
    );
    assert!(store.delete(&["a".to_owned()]).is_err(), "deletes are refused too");
    drop(store);

    // Reopened, the store has every acknowledged write, never the refused one, and takes writes.
    let ids = ids_after_reopen(tmp.path());
    assert!(
        ids.contains(&"a".to_owned()) && !ids.contains(&"c".to_owned()),
        "{ids:?}"
    );
    let data = DataDir::open(tmp.path()).expect("data dir");
    let store = TenantStore::open(&data.store_dir(&TenantId::new("t").expect("id"))).expect("reopen");
    store.upsert(vec![doc("d", 0.4)]).expect("writable after reopen");
}

#[test]
fn a_full_disk_refuses_the_write_cleanly_and_the_store_carries_on() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (faults, dir, store) = faulty_tenant(tmp.path(), 1_000);
    store.upsert(vec![doc("a", 0.1)]).expect("acknowledged");
    let log_len = std::fs::metadata(dir.docs_log()).expect("log").len();

    faults.arm(Fault::NoSpace, "docs.jsonl");
    let failed = store.upsert(vec![doc("b", 0.2), doc("c", 0.3)]).expect_err("disk full");
    faults.disarm();
    assert!(chain(&failed).contains("No space left on device"), "{}", chain(&failed));
    assert_eq!(
        std::fs::metadata(dir.docs_log()).expect("log").len(),
        log_len,
        "no partial record"
    );
    assert!(
        store.get(&["b".to_owned()], false).is_empty(),
        "a refused write is not visible"
    );

    // Space is back: the store was never poisoned and takes the next write.
    store.upsert(vec![doc("d", 0.4)]).expect("writable again");
    drop(store);
    assert_eq!(ids_after_reopen(tmp.path()), ["a", "d"]);
}

#[test]
fn an_unreadable_snapshot_is_skipped_and_every_document_comes_back_from_the_log() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (faults, dir, store) = faulty_tenant(tmp.path(), 2);
    let docs: Vec<_> = ["a", "b", "c", "d"]
        .iter()
        .enumerate()
        .map(|(i, id)| doc(id, i as f32 / 4.0))
        .collect();
    store.upsert(docs).expect("upsert");
    store.wait_for_index();
    store.flush().expect("flush");
    drop(store);

    // EIO on the snapshot's files: the store opens from the log instead.
    faults.arm(Fault::Read, "snap-");
    let store = TenantStore::open(&dir).expect("opens without its snapshot");
    store.wait_for_index();
    assert_eq!(store.count(), 4);
    let hits = store
        .search(&SearchQuery {
            vector: doc("c", 0.5).vector,
            k: 1,
            filter: None,
            mmr: None,
            include_vectors: false,
        })
        .expect("search");
    assert_eq!(hits[0].id, "c");
    faults.disarm();
}

#[test]
fn a_failed_rename_fails_the_flush_or_compaction_and_keeps_every_write() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (faults, _dir, store) = faulty_tenant(tmp.path(), 1_000);
    store.upsert(vec![doc("a", 0.1), doc("b", 0.2)]).expect("upsert");
    store.flush().expect("first snapshot");
    store.upsert(vec![doc("c", 0.3)]).expect("upsert");

    // The manifest's rename fails: the flush says so, the previous snapshot stays current.
    faults.arm(Fault::Rename, "manifest");
    let failed = store.flush().expect_err("flush fails");
    assert!(chain(&failed).contains("snapshot I/O failed"), "{}", chain(&failed));
    // Compaction's rename of the new log fails: the old log stays in use.
    faults.arm(Fault::Rename, ".docs.jsonl.compact");
    let failed = store.compact().expect_err("compaction fails");
    assert!(chain(&failed).contains("Input/output error"), "{}", chain(&failed));
    faults.disarm();

    store.upsert(vec![doc("d", 0.4)]).expect("still writable");
    store.delete(&["a".to_owned()]).expect("delete");
    drop(store);
    assert_eq!(ids_after_reopen(tmp.path()), ["b", "c", "d"]);
}

#[test]
fn the_pool_reopens_a_store_whose_fsync_failed_so_the_next_request_can_write() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let faults = Arc::new(Faulty::default());
    let data = DataDir::open_with_storage(tmp.path(), Arc::new(Shared(faults.clone()))).expect("data dir");
    let pool = tvs_store::pool::Pool::new(
        data,
        tvs_store::pool::PoolConfig {
            capacity: 4,
            ttl: std::time::Duration::from_secs(3600),
            max_bytes: None,
        },
    );
    let id = TenantId::new("t").expect("id");
    pool.create_tenant(&id, &StoreConfig::new(4, Metric::L2, ScalarKind::default(), "none"))
        .expect("create");
    let store = pool.get(&id).expect("open");
    store.upsert(vec![doc("a", 0.1)]).expect("acknowledged");
    faults.arm(Fault::Sync, "docs.jsonl");
    store.upsert(vec![doc("b", 0.2)]).expect_err("fsync failed");
    faults.disarm();
    assert!(store.is_poisoned());
    drop(store);

    let reopened = pool.get(&id).expect("reopened");
    assert!(!reopened.is_poisoned());
    reopened.upsert(vec![doc("c", 0.3)]).expect("writable");
    assert_eq!(
        reopened.get(&["a".to_owned()], false).len(),
        1,
        "the acknowledged write is there"
    );
    assert_eq!(pool.stats().loads, 2, "loaded once, reopened once");
}
