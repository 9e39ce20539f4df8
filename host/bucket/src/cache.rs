//! A node's cache of a tenant: the tenant's directory under the data directory, rebuilt from
//! the bucket when it does not match.
//!
//! The cache is the published snapshot (the compacted `docs.jsonl` it covers and its files in
//! `vector_store/`) plus the WAL objects after it appended to `docs.jsonl`. `cache.json` records
//! which snapshot the directory holds and how long the log was then; it is removed before any
//! local snapshot is written and written again only once that snapshot is published, so a
//! directory that has it always holds exactly that snapshot. An open then cuts the log back to
//! the snapshot and appends the WAL objects from the bucket, which are the truth; without the
//! marker (or with another snapshot) the directory is emptied and downloaded again.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};

use tvs_store::config::StoreConfig;
use tvs_store::doclog::{self, DocLog};
use tvs_store::remote::{RemoteError, SnapshotFiles};
use tvs_store::snapshot;
use tvs_store::storage;
use tvs_store::tenant::{self as layout, StoreDir, TenantId};

use crate::{Bucket, Shared, TenantManifest, unavailable};

/// Name of the marker file in a tenant's cache directory.
pub const CACHE_MARKER: &str = "cache.json";
/// Objects above this size are uploaded in parts.
const SINGLE_PUT_MAX: u64 = 32 << 20;
const PART_BYTES: usize = 16 << 20;
const PARTS_IN_FLIGHT: usize = 4;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Marker {
    snapshot: Option<String>,
    generation: u64,
    log_len: u64,
}

fn read_marker(root: &FsPath) -> Option<Marker> {
    let bytes = fs::read(root.join(CACHE_MARKER)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Forgets which snapshot the directory holds (before it is changed locally).
pub(crate) fn remove_marker(dir: &StoreDir) {
    match fs::remove_file(dir.root().join(CACHE_MARKER)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(dir = %dir.root().display(), error = %e, "cannot remove the cache marker"),
    }
}

/// Records that the directory holds snapshot `sid` over the first `files.log_len` log bytes.
pub(crate) fn write_marker(dir: &StoreDir, sid: Option<&str>, files: &SnapshotFiles) -> io::Result<()> {
    let (generation, _) = DocLog::read_generation(dir.storage(), &files.log).map_err(io::Error::other)?;
    let marker = Marker {
        snapshot: sid.map(str::to_owned),
        generation,
        log_len: files.log_len,
    };
    let json = serde_json::to_vec(&marker).map_err(io::Error::other)?;
    storage::write_atomic(dir.storage(), dir.root(), CACHE_MARKER, &json)
}

/// Empties the directory except its lock file (held by the caller).
fn wipe(root: &FsPath) -> io::Result<()> {
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        if entry.file_name() == layout::LOCK_FILE {
            continue;
        }
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(entry.path())?;
        } else {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Makes `dir` hold the tenant as the bucket has it: the published snapshot, then `wal_bodies`
/// (the log lines of every WAL object after it, in order).
pub(crate) fn materialize(
    bucket: &Bucket,
    id: &TenantId,
    dir: &StoreDir,
    manifest: &TenantManifest,
    config: &StoreConfig,
    wal_bodies: &[Bytes],
) -> io::Result<()> {
    let root = dir.root();
    storage::create_real_dir(dir.storage(), root)?;
    let log = dir.docs_log();
    // The config is fixed for a tenant's life, but a tenant deleted and created again under the
    // same id may have another.
    let write_config = || -> io::Result<()> {
        let json = serde_json::to_vec_pretty(config).map_err(io::Error::other)?;
        storage::write_atomic(dir.storage(), &dir.config_dir(), layout::CONFIG_FILE, &json)
    };
    let reusable = read_marker(root).filter(|marker| {
        marker.snapshot == manifest.snapshot
            && DocLog::read_generation(dir.storage(), &log)
                .is_ok_and(|(generation, len)| generation == marker.generation && len >= marker.log_len)
    });
    match reusable {
        Some(marker) => {
            OpenOptions::new().write(true).open(&log)?.set_len(marker.log_len)?;
            write_config()?;
        }
        None => {
            wipe(root)?;
            storage::create_real_dir(dir.storage(), &dir.vector_store())?;
            storage::create_real_dir(dir.storage(), &dir.config_dir())?;
            write_config()?;
            match &manifest.snapshot {
                Some(sid) => download_snapshot(bucket, id, sid, dir)?,
                None => fs::write(&log, doclog::header_line(1))?,
            }
            // The marker vouches for these bytes, so they must be on disk before it.
            File::open(&log)?.sync_all()?;
            let files = SnapshotFiles {
                log: log.clone(),
                log_len: fs::metadata(&log)?.len(),
                dir: dir.vector_store(),
                files: Vec::new(),
                manifest: Vec::new(),
            };
            write_marker(dir, manifest.snapshot.as_deref(), &files)?;
        }
    }
    let mut out = OpenOptions::new().append(true).open(&log)?;
    for body in wal_bodies {
        out.write_all(body)?;
    }
    Ok(())
}

fn download_snapshot(bucket: &Bucket, id: &TenantId, sid: &str, dir: &StoreDir) -> io::Result<()> {
    let shared = &bucket.shared;
    let remote = shared.snapshot_dir(id, sid);
    let manifest_bytes = download_to_memory(shared, remote.clone().join(snapshot::MANIFEST))?;
    let manifest: snapshot::Manifest = serde_json::from_slice(&manifest_bytes).map_err(io::Error::other)?;
    let mut files = vec![(remote.clone().join(layout::DOCS_LOG), dir.docs_log())];
    for name in manifest.files() {
        check_file_name(name)?;
        files.push((remote.clone().join(name.as_str()), dir.vector_store().join(name)));
    }
    // One after the other, each streamed: on loopback, ranges in parallel measured slower
    // (the store and tvs share the cores).
    let store = shared.store.clone();
    shared.run(async move {
        for (from, to) in files {
            download_to_file(store.clone(), from, to).await?;
        }
        Ok::<_, io::Error>(())
    })?;
    storage::write_atomic(dir.storage(), &dir.vector_store(), snapshot::MANIFEST, &manifest_bytes)
}

/// A snapshot manifest from the bucket names files in one directory, nothing else.
fn check_file_name(name: &str) -> io::Result<()> {
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if plain {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a snapshot names the file {name:?}"),
        ))
    }
}

fn download_to_memory(shared: &Shared, path: Path) -> io::Result<Bytes> {
    let store = shared.store.clone();
    shared
        .run(async move { crate::get_bytes(&store, &path).await })
        .map_err(|e| io::Error::other(unavailable(e)))
}

async fn download_to_file(store: Arc<dyn ObjectStore>, path: Path, to: PathBuf) -> io::Result<()> {
    let remote_err = |e: object_store::Error| io::Error::other(unavailable(e));
    let mut out = File::create(&to)?;
    let mut chunks = store.get(&path).await.map_err(remote_err)?.into_stream();
    while let Some(chunk) = chunks.next().await {
        out.write_all(&chunk.map_err(remote_err)?)?;
    }
    out.sync_all()
}

/// Uploads a snapshot's objects under `remote` (not yet named by the manifest).
pub(crate) fn upload_snapshot(shared: &Shared, remote: &Path, files: &SnapshotFiles) -> Result<(), RemoteError> {
    let io_err = |e: io::Error| RemoteError::Unavailable(format!("reading the snapshot to upload: {e}"));
    upload_file(shared, remote.clone().join(layout::DOCS_LOG), &files.log, files.log_len)?;
    for name in &files.files {
        let path = files.dir.join(name);
        let len = fs::metadata(&path).map_err(io_err)?.len();
        upload_file(shared, remote.clone().join(name.as_str()), &path, len)?;
    }
    let store = shared.store.clone();
    let (path, body) = (
        remote.clone().join(snapshot::MANIFEST),
        PutPayload::from(files.manifest.clone()),
    );
    shared
        .run(async move { store.put(&path, body).await.map(drop) })
        .map_err(unavailable)
}

/// Uploads the first `len` bytes of `file`.
fn upload_file(shared: &Shared, path: Path, file: &FsPath, len: u64) -> Result<(), RemoteError> {
    let io_err = |e: io::Error| RemoteError::Unavailable(format!("reading {} to upload: {e}", file.display()));
    let mut reader = File::open(file).map_err(io_err)?.take(len);
    let store: Arc<dyn ObjectStore> = shared.store.clone();
    if len <= SINGLE_PUT_MAX {
        let mut bytes = Vec::with_capacity(len as usize);
        reader.read_to_end(&mut bytes).map_err(io_err)?;
        return shared
            .run(async move { store.put(&path, PutPayload::from(bytes)).await.map(drop) })
            .map_err(unavailable);
    }
    let upload = shared
        .run(async move { store.put_multipart(&path).await })
        .map_err(unavailable)?;
    let mut parts = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
    let mut buf = vec![0u8; PART_BYTES];
    loop {
        let n = read_full(&mut reader, &mut buf).map_err(io_err)?;
        if n == 0 {
            break;
        }
        let chunk = Bytes::copy_from_slice(&buf[..n]);
        parts = shared
            .run(async move {
                parts.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                parts.put(chunk);
                Ok::<_, object_store::Error>(parts)
            })
            .map_err(unavailable)?;
    }
    shared
        .run(async move { parts.finish().await.map(drop) })
        .map_err(unavailable)
}

fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}
