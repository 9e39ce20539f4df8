//! tvs-bucket: tenants on S3-compatible object storage (`TVS_STORAGE=s3://bucket/prefix`),
//! through the `object_store` crate. Nodes are caches; the bucket is the truth.
//!
//! Layout under the prefix, per tenant:
//! - `tenants/{id}/manifest.json`: the store config, the writer epoch, the published snapshot
//!   and the first live WAL number. Changed only by conditional updates (ETag `If-Match`).
//! - `tenants/{id}/wal/{n:020}`: one object per group commit, created once
//!   (`If-None-Match: *`): a header line (`{"tvs":"wal","epoch","nonce"}`), then document-log
//!   lines. A fence is a header line only (`{"tvs":"fence","epoch"}`).
//! - `tenants/{id}/snapshots/{sid}/`: `docs.jsonl` (the compacted log the snapshot covers) and
//!   the snapshot's files; immutable once the manifest names them.
//! - `tenants/{id}/api_key.sha256`: the hash of the tenant key's secret.
//! - `tenants/{id}/rate_limits.json`: the tenant's rate limits, if the admin set any.
//! - `signing_keys.json` (beside `tenants/`): the signing keys of tenant tokens, changed only by
//!   conditional updates.
//!
//! Invariants:
//! - WAL numbers from `first_wal` up are contiguous: a writer creates `n + 1` only after its
//!   `n` exists, and a takeover creates a fence at the first free number. A fenced writer's next
//!   create therefore fails ("already exists"), so after a takeover only the new writer can
//!   acknowledge anything, and the new writer replays every WAL object below its fence.
//! - A takeover bumps the epoch in the manifest (conditional update) before it fences; finding
//!   a fence of a higher epoch where it wants to fence means a newer takeover won, and it gives
//!   up rather than fence the winner.
//! - The manifest advances past WAL objects only after the snapshot covering them is uploaded,
//!   and only under the epoch that wrote them; WAL objects and snapshots are deleted only after.
//! - A deleted tenant keeps its manifest (as a tombstone) and its last fence, so a node still
//!   holding it can acknowledge nothing more, and a tenant re-created under the same id starts
//!   after that fence.

mod cache;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig, UpdateVersion,
};
use serde::{Deserialize, Serialize};

use tvs_store::config::StoreConfig;
use tvs_store::remote::{
    Catalog, HeldTenant, ObjectVersion, RemoteError, Replace, SharedObject, SnapshotFiles, TenantLog,
};
use tvs_store::store::OpenError;
use tvs_store::tenant::{StoreDir, TenantError, TenantId, TenantPage};

/// Name written in a tenant manifest.
const MANIFEST_FORMAT: &str = "tvs-tenant";
/// WAL objects fetched at once when a tenant is opened.
const FETCH_CONCURRENCY: usize = 16;
/// Fences kept in a manifest: a writer paused through more takeovers than this is long dead.
const FENCES_KEPT: usize = 64;
/// Attempts at a conditional manifest update before giving up (each loses only to another
/// node's update, which itself succeeded).
const MANIFEST_ATTEMPTS: usize = 32;

/// Tunables, from the environment.
#[derive(Debug, Clone, Copy)]
pub struct BucketSettings {
    /// How long a node answers reads for a tenant before it checks again that it still owns it
    /// (`TVS_OWNER_CHECK_MS`, default 1000).
    pub owner_check: Duration,
    /// WAL bytes since the last snapshot beyond which a snapshot is published
    /// (`TVS_S3_SNAPSHOT_BYTES`, default 8 MiB).
    pub snapshot_bytes: u64,
    /// WAL objects since the last snapshot beyond which a snapshot is published
    /// (`TVS_S3_SNAPSHOT_OBJECTS`, default 512).
    pub snapshot_objects: u64,
}

impl BucketSettings {
    pub fn from_env() -> Self {
        let var = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(default)
        };
        BucketSettings {
            owner_check: Duration::from_millis(var("TVS_OWNER_CHECK_MS", 1000)),
            snapshot_bytes: var("TVS_S3_SNAPSHOT_BYTES", 8 << 20),
            snapshot_objects: var("TVS_S3_SNAPSHOT_OBJECTS", 512),
        }
    }
}

/// A tenant manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TenantManifest {
    format: String,
    version: u32,
    /// `None` once the tenant is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config: Option<StoreConfig>,
    epoch: u64,
    first_wal: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    snapshot: Option<String>,
    #[serde(default)]
    deleted: bool,
    /// WAL numbers holding the fences of recent takeovers. They are never removed with the log
    /// below a snapshot: a paused writer fenced there would otherwise find the number free
    /// again and acknowledge a write nobody replays.
    #[serde(default)]
    fences: Vec<u64>,
}

impl TenantManifest {
    fn new(config: StoreConfig, epoch: u64, first_wal: u64, fences: Vec<u64>) -> Self {
        TenantManifest {
            format: MANIFEST_FORMAT.into(),
            version: 1,
            config: Some(config),
            epoch,
            first_wal,
            snapshot: None,
            deleted: false,
            fences,
        }
    }
}

/// The first line of a WAL object or fence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct WalHeader {
    tvs: String,
    epoch: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    nonce: String,
}

fn wal_header(kind: &str, epoch: u64, nonce: &str) -> Vec<u8> {
    let mut line = serde_json::to_vec(&WalHeader {
        tvs: kind.into(),
        epoch,
        nonce: nonce.into(),
    })
    .expect("a header serialises");
    line.push(b'\n');
    line
}

/// Splits a WAL object into its header and its log lines.
fn parse_wal(number: u64, bytes: &Bytes) -> Result<(WalHeader, Bytes), RemoteError> {
    let corrupt = |why: &str| RemoteError::Corrupt(format!("WAL object {number}: {why}"));
    let newline = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| corrupt("no header line"))?;
    let header: WalHeader = serde_json::from_slice(&bytes[..newline]).map_err(|_| corrupt("unreadable header"))?;
    let body = bytes.slice(newline + 1..);
    match header.tvs.as_str() {
        "wal" if body.last().is_none_or(|&b| b == b'\n') => Ok((header, body)),
        "fence" if body.is_empty() => Ok((header, body)),
        _ => Err(corrupt("not a WAL object or fence")),
    }
}

fn unavailable(e: object_store::Error) -> RemoteError {
    RemoteError::Unavailable(e.to_string())
}

/// The object store, its key prefix and the runtime its futures run on.
#[derive(Debug)]
struct Shared {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
    settings: BucketSettings,
    runtime: Runtime,
    node: String,
    /// Tenants this node holds as writer, for the admin API.
    held: Mutex<Vec<(TenantId, u64, std::sync::Weak<OwnedTenant>)>>,
}

/// A runtime of its own: store calls come from blocking threads of any runtime (or none).
#[derive(Debug)]
struct Runtime(Option<tokio::runtime::Runtime>);

impl Drop for Runtime {
    fn drop(&mut self) {
        // Dropping a runtime from inside another one's async context would panic.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl Shared {
    /// Runs `future` on the bucket's runtime and waits for it on this thread.
    fn run<T: Send + 'static>(&self, future: impl Future<Output = T> + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime
            .0
            .as_ref()
            .expect("the runtime lives as long as the bucket")
            .spawn(async move {
                let _ = tx.send(future.await);
            });
        rx.recv()
            .expect("the bucket's runtime runs every future it is given to the end")
    }

    fn tenant_path(&self, id: &TenantId) -> Path {
        self.prefix.clone().join("tenants").join(id.as_str())
    }

    fn manifest_path(&self, id: &TenantId) -> Path {
        self.tenant_path(id).join("manifest.json")
    }

    fn wal_dir(&self, id: &TenantId) -> Path {
        self.tenant_path(id).join("wal")
    }

    fn wal_path(&self, id: &TenantId, number: u64) -> Path {
        self.wal_dir(id).join(format!("{number:020}"))
    }

    fn snapshot_dir(&self, id: &TenantId, sid: &str) -> Path {
        self.tenant_path(id).join("snapshots").join(sid)
    }

    fn key_path(&self, id: &TenantId) -> Path {
        self.tenant_path(id).join("api_key.sha256")
    }

    fn shared_path(&self, object: &SharedObject) -> Path {
        match object {
            SharedObject::SigningKeys => self.prefix.clone().join("signing_keys.json"),
            SharedObject::RateLimits(id) => self.tenant_path(id).join("rate_limits.json"),
        }
    }

    /// Deletes objects, best effort (what is left is unreachable and only costs space).
    fn delete_objects(&self, paths: Vec<Path>) {
        let store = self.store.clone();
        let failed = self.run(async move {
            futures::stream::iter(paths)
                .map(|path| {
                    let store = store.clone();
                    async move { store.delete(&path).await.err().map(|e| (path, e)) }
                })
                .buffer_unordered(FETCH_CONCURRENCY)
                .filter_map(|failed| async move { failed })
                .collect::<Vec<_>>()
                .await
        });
        for (path, error) in failed {
            if !matches!(error, object_store::Error::NotFound { .. }) {
                tracing::warn!(object = %path, %error, "cannot delete an object that is no longer needed");
            }
        }
    }

    fn list_paths(&self, prefix: Path) -> Result<Vec<Path>, RemoteError> {
        let store = self.store.clone();
        self.run(async move {
            store
                .list(Some(&prefix))
                .map_ok(|meta| meta.location)
                .try_collect::<Vec<_>>()
                .await
        })
        .map_err(unavailable)
    }

    /// Removes everything under `prefix`, best effort.
    fn delete_under(&self, prefix: Path) {
        match self.list_paths(prefix.clone()) {
            Ok(paths) => self.delete_objects(paths),
            Err(e) => tracing::warn!(objects = %prefix, error = %e, "cannot list objects to remove them"),
        }
    }
}

async fn get_manifest(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
) -> Result<Option<(TenantManifest, UpdateVersion)>, RemoteError> {
    match store.get(path).await {
        Ok(got) => {
            let version = UpdateVersion {
                e_tag: got.meta.e_tag.clone(),
                version: got.meta.version.clone(),
            };
            let bytes = got.bytes().await.map_err(unavailable)?;
            let manifest: TenantManifest = serde_json::from_slice(&bytes)
                .map_err(|e| RemoteError::Corrupt(format!("unreadable manifest {path}: {e}")))?;
            if manifest.format != MANIFEST_FORMAT || manifest.version != 1 {
                return Err(RemoteError::Corrupt(format!(
                    "{path} is not a tvs tenant manifest of version 1"
                )));
            }
            Ok(Some((manifest, version)))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(unavailable(e)),
    }
}

/// Writes a manifest with `mode`; `Ok(None)` when the condition failed (another node wrote it).
async fn put_manifest(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    manifest: &TenantManifest,
    mode: PutMode,
) -> Result<Option<UpdateVersion>, RemoteError> {
    let json = serde_json::to_vec_pretty(manifest).expect("a manifest serialises");
    let options = PutOptions {
        mode,
        ..Default::default()
    };
    match store.put_opts(path, PutPayload::from(json), options).await {
        Ok(put) => Ok(Some(UpdateVersion {
            e_tag: put.e_tag,
            version: put.version,
        })),
        Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(None),
        Err(e) => Err(unavailable(e)),
    }
}

/// The outcome of a takeover: the manifest as this node's epoch wrote it, and the WAL numbers
/// below the fence.
#[derive(Debug)]
struct Takeover {
    manifest: TenantManifest,
    tag: UpdateVersion,
    fence: u64,
}

#[derive(Debug)]
enum TakeoverError {
    NotFound,
    Remote(RemoteError),
}

impl From<RemoteError> for TakeoverError {
    fn from(e: RemoteError) -> Self {
        TakeoverError::Remote(e)
    }
}

/// The bytes of an object.
async fn get_bytes(store: &Arc<dyn ObjectStore>, path: &Path) -> object_store::Result<Bytes> {
    store.get(path).await?.bytes().await
}

/// Creates `path` with `body` unless an object is there already (`If-None-Match: *`): `None`
/// when this call created it, else the bytes already there (another writer's, or this very
/// create's whose first answer was lost and which the client retried).
async fn create_or_read(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    body: PutPayload,
) -> Result<Option<Bytes>, RemoteError> {
    let options = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    match store.put_opts(path, body, options).await {
        Ok(_) => Ok(None),
        Err(object_store::Error::AlreadyExists { .. }) => get_bytes(store, path).await.map(Some).map_err(unavailable),
        Err(e) => Err(unavailable(e)),
    }
}

/// Bumps the epoch, then fences at the first free WAL number.
async fn take_over(store: Arc<dyn ObjectStore>, manifest_path: Path, wal_dir: Path) -> Result<Takeover, TakeoverError> {
    let mut attempt = 0;
    let (manifest, tag) = loop {
        attempt += 1;
        let Some((mut manifest, tag)) = get_manifest(&store, &manifest_path).await? else {
            return Err(TakeoverError::NotFound);
        };
        if manifest.deleted {
            return Err(TakeoverError::NotFound);
        }
        manifest.epoch += 1;
        match put_manifest(&store, &manifest_path, &manifest, PutMode::Update(tag)).await? {
            Some(tag) => break (manifest, tag),
            None if attempt < MANIFEST_ATTEMPTS => {
                tokio::time::sleep(Duration::from_millis(5 * attempt as u64)).await;
            }
            None => {
                return Err(
                    RemoteError::Unavailable("the tenant's manifest kept changing under this takeover".into()).into(),
                );
            }
        }
    };
    let offset = wal_dir
        .clone()
        .join(format!("{:020}", manifest.first_wal.saturating_sub(1)));
    let mut numbers: Vec<u64> = store
        .list_with_offset(Some(&wal_dir), &offset)
        .map_ok(|meta| meta.location.filename().and_then(|name| name.parse::<u64>().ok()))
        .try_collect::<Vec<_>>()
        .await
        .map_err(unavailable)?
        .into_iter()
        .flatten()
        .filter(|&n| n >= manifest.first_wal)
        .collect();
    numbers.sort_unstable();
    for (expected, &found) in (manifest.first_wal..).zip(&numbers) {
        if expected != found {
            return Err(RemoteError::Corrupt(format!("WAL object {expected} is missing (found {found})")).into());
        }
    }
    let mut fence = manifest.first_wal + numbers.len() as u64;
    let body = PutPayload::from(wal_header("fence", manifest.epoch, ""));
    while let Some(found) = create_or_read(&store, &wal_dir.clone().join(format!("{fence:020}")), body.clone()).await? {
        let (header, _) = parse_wal(fence, &found)?;
        if header.tvs == "fence" && header.epoch > manifest.epoch {
            return Err(
                RemoteError::Fenced(format!("a newer takeover (epoch {}) fenced WAL {fence}", header.epoch)).into(),
            );
        }
        // The old writer's last group commit landed first: it is replayed too.
        fence += 1;
    }
    let mut manifest = manifest;
    manifest.fences.push(fence);
    let excess = manifest.fences.len().saturating_sub(FENCES_KEPT);
    manifest.fences.drain(..excess);
    match put_manifest(&store, &manifest_path, &manifest, PutMode::Update(tag)).await? {
        Some(tag) => Ok(Takeover { manifest, tag, fence }),
        None => Err(RemoteError::Fenced("a newer takeover began while this one fenced".into()).into()),
    }
}

/// Tenants in an S3-compatible bucket.
#[derive(Debug, Clone)]
pub struct Bucket {
    shared: Arc<Shared>,
}

impl Bucket {
    /// Connects to `url` (`s3://bucket/prefix`), taking the endpoint, region and credentials
    /// from the standard AWS variables (`AWS_ENDPOINT`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, …).
    /// `node` names this node in logs and the admin API.
    pub fn connect(url: &str, node: &str, settings: BucketSettings) -> Result<Bucket, String> {
        Self::connect_with(url, node, settings, &[])
    }

    /// As [`Bucket::connect`], with `object_store` settings (`aws_endpoint`,
    /// `aws_access_key_id`, …) given here over the environment's.
    pub fn connect_with(
        url: &str,
        node: &str,
        settings: BucketSettings,
        config: &[(&str, &str)],
    ) -> Result<Bucket, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("TVS_STORAGE must look like s3://bucket/prefix, got {url:?}"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("TVS_STORAGE names no bucket: {url:?}"));
        }
        // reqwest's rustls has no provider of its own here; ring is the one the build carries.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let given = |key: &str| config.iter().find(|(k, _)| *k == key).map(|(_, v)| (*v).to_owned());
        let endpoint = given("aws_endpoint").or_else(|| {
            std::env::var("AWS_ENDPOINT_URL_S3")
                .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
                .or_else(|_| std::env::var("AWS_ENDPOINT"))
                .ok()
        });
        let allow_http = endpoint.as_deref().is_some_and(|e| e.starts_with("http://"))
            || std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(allow_http)
                    .with_connect_timeout(Duration::from_secs(2))
                    .with_timeout(Duration::from_secs(30)),
            )
            // A write waits for its WAL object: a store that is down must fail it in seconds, not
            // the crate's default three minutes.
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(10),
                ..Default::default()
            });
        for (key, value) in config {
            let key = key
                .parse()
                .map_err(|e| format!("unknown object storage setting {key:?}: {e}"))?;
            builder = builder.with_config(key, *value);
        }
        if let Some(endpoint) = endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let store = builder.build().map_err(|e| format!("cannot use {url}: {e}"))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tvs-bucket")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the object storage runtime: {e}"))?;
        let prefix = Path::from_iter(prefix.split('/').filter(|p| !p.is_empty()));
        Ok(Bucket {
            shared: Arc::new(Shared {
                store: Arc::new(store),
                prefix,
                url: url.to_owned(),
                settings,
                runtime: Runtime(Some(runtime)),
                node: node.to_owned(),
                held: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Checks that the bucket answers (a listing of the prefix).
    pub fn check(&self) -> Result<(), RemoteError> {
        let (store, prefix) = (self.shared.store.clone(), self.shared.prefix.clone());
        self.shared
            .run(async move { store.list_with_delimiter(Some(&prefix)).await.map(drop) })
            .map_err(unavailable)
    }

    fn take_over(&self, id: &TenantId) -> Result<Takeover, TakeoverError> {
        let shared = &self.shared;
        shared.run(take_over(
            shared.store.clone(),
            shared.manifest_path(id),
            shared.wal_dir(id),
        ))
    }
}

impl Catalog for Bucket {
    fn describe(&self) -> String {
        self.shared.url.clone()
    }

    fn create_tenant(&self, id: &TenantId, config: &StoreConfig) -> Result<(), TenantError> {
        config.validate_new().map_err(TenantError::InvalidConfig)?;
        let (store, path, config) = (self.shared.store.clone(), self.shared.manifest_path(id), config.clone());
        let created = self.shared.run(async move {
            for _ in 0..MANIFEST_ATTEMPTS {
                let fresh = TenantManifest::new(config.clone(), 0, 1, Vec::new());
                if put_manifest(&store, &path, &fresh, PutMode::Create).await?.is_some() {
                    return Ok(true);
                }
                match get_manifest(&store, &path).await? {
                    Some((tomb, tag)) if tomb.deleted => {
                        // Re-created after a deletion: start after the tombstone's fence.
                        let fresh = TenantManifest::new(config.clone(), tomb.epoch + 1, tomb.first_wal, tomb.fences);
                        if put_manifest(&store, &path, &fresh, PutMode::Update(tag))
                            .await?
                            .is_some()
                        {
                            return Ok(true);
                        }
                    }
                    Some(_) => return Ok(false),
                    None => {}
                }
            }
            Err(RemoteError::Unavailable("the tenant's manifest kept changing".into()))
        });
        match created {
            Ok(true) => Ok(()),
            Ok(false) => Err(TenantError::AlreadyExists(id.clone())),
            Err(e) => Err(TenantError::Remote(e)),
        }
    }

    fn tenant_exists(&self, id: &TenantId) -> Result<bool, TenantError> {
        let (store, path) = (self.shared.store.clone(), self.shared.manifest_path(id));
        match self.shared.run(async move { get_manifest(&store, &path).await }) {
            Ok(found) => Ok(found.is_some_and(|(m, _)| !m.deleted)),
            Err(e) => Err(TenantError::Remote(e)),
        }
    }

    fn list_tenants(&self, after: Option<&str>, limit: usize) -> Result<TenantPage, TenantError> {
        let store = self.shared.store.clone();
        let root = self.shared.prefix.clone().join("tenants");
        let after = after.map(str::to_owned);
        let shared = self.shared.clone();
        let listed = self.shared.run(async move {
            let listing = store.list_with_delimiter(Some(&root)).await.map_err(unavailable)?;
            let mut ids: Vec<TenantId> = listing
                .common_prefixes
                .iter()
                .filter_map(|p| p.filename().and_then(|name| TenantId::new(name).ok()))
                .filter(|id| after.as_deref().is_none_or(|a| id.as_str() > a))
                .collect();
            ids.sort_unstable();
            // Tombstones are skipped; reading manifests a page at a time keeps a listing of
            // many tenants from reading them all.
            let mut live = Vec::new();
            for chunk in ids.chunks(limit.max(1) + 1) {
                let found: Vec<(TenantId, bool)> = futures::stream::iter(chunk.iter().cloned())
                    .map(|id| {
                        let (store, path) = (store.clone(), shared.manifest_path(&id));
                        async move {
                            let manifest = get_manifest(&store, &path).await?;
                            Ok::<_, RemoteError>((id, manifest.is_some_and(|(m, _)| !m.deleted)))
                        }
                    })
                    .buffered(FETCH_CONCURRENCY)
                    .try_collect()
                    .await?;
                live.extend(found.into_iter().filter(|(_, alive)| *alive).map(|(id, _)| id));
                if live.len() > limit {
                    break;
                }
            }
            Ok::<_, RemoteError>(live)
        });
        let live = listed.map_err(TenantError::Remote)?;
        let limit = limit.max(1);
        let mut tenants: Vec<String> = live.into_iter().map(|id| id.to_string()).collect();
        let next_after = (tenants.len() > limit).then(|| tenants[limit - 1].clone());
        tenants.truncate(limit);
        Ok(TenantPage { tenants, next_after })
    }

    fn delete_tenant(&self, id: &TenantId) -> Result<(), TenantError> {
        let takeover = match self.take_over(id) {
            Ok(t) => t,
            Err(TakeoverError::NotFound) => return Err(TenantError::NotFound(id.clone())),
            Err(TakeoverError::Remote(RemoteError::Fenced(_))) => return Err(TenantError::Busy(id.clone())),
            Err(TakeoverError::Remote(e)) => return Err(TenantError::Remote(e)),
        };
        let mut tomb = takeover.manifest.clone();
        tomb.deleted = true;
        tomb.config = None;
        tomb.snapshot = None;
        tomb.first_wal = takeover.fence + 1;
        let (store, path) = (self.shared.store.clone(), self.shared.manifest_path(id));
        let tag = takeover.tag.clone();
        match self
            .shared
            .run(async move { put_manifest(&store, &path, &tomb, PutMode::Update(tag)).await })
        {
            Ok(Some(_)) => {}
            Ok(None) => return Err(TenantError::Busy(id.clone())),
            Err(e) => return Err(TenantError::Remote(e)),
        }
        // The tombstone is written: nothing below is reachable. Keep the fences, so that a node
        // still holding the tenant fails its next WAL create.
        let mut kept: Vec<Path> = takeover
            .manifest
            .fences
            .iter()
            .map(|&n| self.shared.wal_path(id, n))
            .collect();
        kept.push(self.shared.manifest_path(id));
        match self.shared.list_paths(self.shared.tenant_path(id)) {
            Ok(paths) => self
                .shared
                .delete_objects(paths.into_iter().filter(|p| !kept.contains(p)).collect()),
            Err(e) => tracing::warn!(tenant = %id, error = %e, "cannot list a deleted tenant's objects to remove them"),
        }
        Ok(())
    }

    fn open_tenant(&self, id: &TenantId, dir: &StoreDir) -> Result<Arc<dyn TenantLog>, OpenError> {
        let remote_err = OpenError::Remote;
        let started = Instant::now();
        let takeover = match self.take_over(id) {
            Ok(t) => t,
            Err(TakeoverError::NotFound) => return Err(OpenError::NotFound(dir.root().to_owned())),
            Err(TakeoverError::Remote(e)) => return Err(remote_err(e)),
        };
        let Takeover { manifest, tag, fence } = takeover;
        let took_over = started.elapsed();
        let config = manifest
            .config
            .clone()
            .ok_or_else(|| remote_err(RemoteError::Corrupt("a live manifest without a config".into())))?;
        // Everything below the fence, in order: what every earlier writer persisted.
        let numbers: Vec<u64> = (manifest.first_wal..fence).collect();
        let (store, shared) = (self.shared.store.clone(), self.shared.clone());
        let tenant = id.clone();
        let bodies = self
            .shared
            .run(async move {
                futures::stream::iter(numbers)
                    .map(|n| {
                        let (store, path) = (store.clone(), shared.wal_path(&tenant, n));
                        async move {
                            let bytes = get_bytes(&store, &path).await.map_err(unavailable)?;
                            parse_wal(n, &bytes).map(|(_, body)| body)
                        }
                    })
                    .buffered(FETCH_CONCURRENCY)
                    .try_collect::<Vec<Bytes>>()
                    .await
            })
            .map_err(remote_err)?;
        let tail_objects = bodies.len() as u64;
        let tail_bytes: u64 = bodies.iter().map(|b| b.len() as u64).sum();
        let fetched = started.elapsed();
        cache::materialize(self, id, dir, &manifest, &config, &bodies).map_err(|source| OpenError::Io {
            path: dir.root().to_owned(),
            source,
        })?;
        tracing::info!(
            tenant = %id,
            epoch = manifest.epoch,
            wal_objects = tail_objects,
            wal_bytes = tail_bytes,
            snapshot = manifest.snapshot.as_deref().unwrap_or("-"),
            takeover_ms = took_over.as_millis() as u64,
            wal_fetched_ms = fetched.as_millis() as u64,
            cache_ready_ms = started.elapsed().as_millis() as u64,
            "took the tenant over from object storage"
        );
        let owned = Arc::new(OwnedTenant {
            shared: self.shared.clone(),
            id: id.clone(),
            dir: dir.clone(),
            epoch: manifest.epoch,
            state: Mutex::new(Owned {
                next_wal: fence + 1,
                manifest: manifest.clone(),
                tag,
                tail_objects,
                tail_bytes,
            }),
            last_check: Mutex::new(Instant::now()),
            fenced: AtomicBool::new(false),
        });
        let mut held = self.shared.held.lock().unwrap_or_else(|p| p.into_inner());
        held.retain(|(tenant, _, owned)| tenant != id && owned.strong_count() > 0);
        held.push((id.clone(), manifest.epoch, Arc::downgrade(&owned)));
        Ok(owned)
    }

    fn key_hash(&self, id: &TenantId) -> Result<Option<String>, RemoteError> {
        let (store, path) = (self.shared.store.clone(), self.shared.key_path(id));
        self.shared.run(async move {
            match get_bytes(&store, &path).await {
                Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).trim().to_owned())),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(unavailable(e)),
            }
        })
    }

    fn set_key_hash(&self, id: &TenantId, hash: &str) -> Result<(), RemoteError> {
        let (store, path) = (self.shared.store.clone(), self.shared.key_path(id));
        let body = PutPayload::from(hash.as_bytes().to_vec());
        self.shared
            .run(async move { store.put(&path, body).await.map(drop) })
            .map_err(unavailable)
    }

    fn read_shared(&self, object: &SharedObject) -> Result<Option<(Vec<u8>, ObjectVersion)>, RemoteError> {
        let (store, path) = (self.shared.store.clone(), self.shared.shared_path(object));
        self.shared.run(async move {
            match store.get(&path).await {
                Ok(got) => {
                    let version = ObjectVersion {
                        e_tag: got.meta.e_tag.clone(),
                        version: got.meta.version.clone(),
                    };
                    let bytes = got.bytes().await.map_err(unavailable)?;
                    Ok(Some((bytes.to_vec(), version)))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(unavailable(e)),
            }
        })
    }

    fn write_shared(&self, object: &SharedObject, bytes: &[u8], replace: Replace) -> Result<bool, RemoteError> {
        let (store, path) = (self.shared.store.clone(), self.shared.shared_path(object));
        let mode = match replace {
            Replace::Any => PutMode::Overwrite,
            Replace::Absent => PutMode::Create,
            Replace::Version(v) => PutMode::Update(UpdateVersion {
                e_tag: v.e_tag,
                version: v.version,
            }),
        };
        let payload = PutPayload::from(bytes.to_vec());
        self.shared.run(async move {
            let options = PutOptions {
                mode,
                ..Default::default()
            };
            match store.put_opts(&path, payload, options).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(false),
                Err(e) => Err(unavailable(e)),
            }
        })
    }

    fn held(&self) -> Vec<HeldTenant> {
        let mut held = self.shared.held.lock().unwrap_or_else(|p| p.into_inner());
        held.retain(|(_, _, owned)| owned.upgrade().is_some_and(|o| !o.fenced.load(Ordering::Acquire)));
        let mut out: Vec<HeldTenant> = held
            .iter()
            .map(|(id, epoch, _)| HeldTenant {
                tenant: id.to_string(),
                epoch: *epoch,
            })
            .collect();
        out.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        out
    }
}

/// What an owner changes as it writes.
#[derive(Debug)]
struct Owned {
    next_wal: u64,
    /// The manifest as this node last wrote it, and its version.
    manifest: TenantManifest,
    tag: UpdateVersion,
    tail_objects: u64,
    tail_bytes: u64,
}

/// A tenant this node holds as its writer.
#[derive(Debug)]
pub struct OwnedTenant {
    shared: Arc<Shared>,
    id: TenantId,
    dir: StoreDir,
    epoch: u64,
    /// Held across a WAL create, so WAL objects go out one at a time and in log order.
    state: Mutex<Owned>,
    last_check: Mutex<Instant>,
    fenced: AtomicBool,
}

impl OwnedTenant {
    fn fenced(&self, why: String) -> RemoteError {
        self.fenced.store(true, Ordering::Release);
        tracing::warn!(tenant = %self.id, epoch = self.epoch, node = %self.shared.node, reason = %why, "fenced: another node holds this tenant now");
        RemoteError::Fenced(why)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Owned> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `manifest` over the one this owner last wrote (conditional on its version) and
    /// keeps it as the owner's; returns the one it replaced, or `None` when the manifest
    /// changed meanwhile (another node took the tenant over).
    fn replace_manifest(
        &self,
        state: &mut Owned,
        manifest: TenantManifest,
    ) -> Result<Option<TenantManifest>, RemoteError> {
        let (store, path, tag) = (
            self.shared.store.clone(),
            self.shared.manifest_path(&self.id),
            state.tag.clone(),
        );
        let body = manifest.clone();
        let written = self
            .shared
            .run(async move { put_manifest(&store, &path, &body, PutMode::Update(tag)).await })?;
        Ok(written.map(|tag| {
            state.tag = tag;
            std::mem::replace(&mut state.manifest, manifest)
        }))
    }
}

impl TenantLog for OwnedTenant {
    fn persist(&self, lines: &[u8]) -> Result<(), RemoteError> {
        if self.fenced.load(Ordering::Acquire) {
            return Err(RemoteError::Fenced("this node was fenced earlier".into()));
        }
        let mut state = self.lock();
        let number = state.next_wal;
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let mut body = wal_header("wal", self.epoch, &nonce);
        body.extend_from_slice(lines);
        let (store, path) = (self.shared.store.clone(), self.shared.wal_path(&self.id, number));
        let payload = PutPayload::from(body);
        let created = self
            .shared
            .run(async move { create_or_read(&store, &path, payload).await })?;
        if let Some(found) = created {
            let (header, _) = parse_wal(number, &found)?;
            if header.tvs != "wal" || header.nonce != nonce {
                return Err(self.fenced(format!(
                    "WAL {number} already exists, written by epoch {} (this node holds epoch {})",
                    header.epoch, self.epoch
                )));
            }
        }
        state.next_wal += 1;
        state.tail_objects += 1;
        state.tail_bytes += lines.len() as u64;
        Ok(())
    }

    fn check_owner(&self) -> Result<(), RemoteError> {
        if self.fenced.load(Ordering::Acquire) {
            return Err(RemoteError::Fenced("this node was fenced earlier".into()));
        }
        let mut last = self.last_check.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed() < self.shared.settings.owner_check {
            return Ok(());
        }
        let (store, path) = (self.shared.store.clone(), self.shared.manifest_path(&self.id));
        match self.shared.run(async move { get_manifest(&store, &path).await }) {
            Ok(Some((manifest, _))) if manifest.epoch == self.epoch && !manifest.deleted => {
                *last = Instant::now();
                Ok(())
            }
            Ok(Some((manifest, _))) if manifest.deleted => Err(self.fenced("the tenant was deleted".into())),
            Ok(Some((manifest, _))) => Err(self.fenced(format!(
                "the manifest holds epoch {}, this node {}",
                manifest.epoch, self.epoch
            ))),
            Ok(None) => Err(self.fenced("the tenant's manifest is gone".into())),
            // The store is down: no other node can take the tenant over meanwhile, so what this
            // node holds is still the latest.
            Err(e) => {
                tracing::warn!(tenant = %self.id, error = %e, "cannot check tenant ownership; serving from the cache");
                Ok(())
            }
        }
    }

    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }

    fn wants_snapshot(&self) -> bool {
        let state = self.lock();
        let settings = &self.shared.settings;
        state.tail_bytes >= settings.snapshot_bytes || state.tail_objects >= settings.snapshot_objects
    }

    fn publish_snapshot(&self, files: &SnapshotFiles) -> Result<(), RemoteError> {
        if self.fenced.load(Ordering::Acquire) {
            return Err(RemoteError::Fenced("this node was fenced earlier".into()));
        }
        let started = Instant::now();
        let mut state = self.lock();
        let covered = state.next_wal;
        let sid = format!("{covered:020}-{}", uuid::Uuid::new_v4().simple());
        let dir = self.shared.snapshot_dir(&self.id, &sid);
        let uploaded = cache::upload_snapshot(&self.shared, &dir, files);
        if let Err(e) = uploaded {
            self.shared.delete_under(dir.clone());
            return Err(e);
        }
        let mut manifest = state.manifest.clone();
        manifest.first_wal = covered;
        manifest.snapshot = Some(sid.clone());
        let old = match self.replace_manifest(&mut state, manifest) {
            Ok(Some(old)) => old,
            Ok(None) => {
                self.shared.delete_under(dir.clone());
                return Err(self.fenced("the manifest changed under a snapshot publish".into()));
            }
            Err(e) => {
                // Unknown whether it landed: keep the objects (the manifest may name them).
                return Err(e);
            }
        };
        let old_snapshot = old.snapshot;
        let old_wal = old.first_wal..covered;
        state.tail_objects = 0;
        state.tail_bytes = 0;
        drop(state);
        cache::write_marker(&self.dir, Some(&sid), files).map_err(|e| RemoteError::Unavailable(e.to_string()))?;
        let garbage: Vec<Path> = old_wal
            .filter(|n| !old.fences.contains(n))
            .map(|n| self.shared.wal_path(&self.id, n))
            .collect();
        self.shared.delete_objects(garbage);
        if let Some(old) = old_snapshot {
            self.shared.delete_under(self.shared.snapshot_dir(&self.id, &old));
        }
        tracing::info!(tenant = %self.id, snapshot = %sid, log_bytes = files.log_len, ms = started.elapsed().as_millis() as u64, "published a snapshot to object storage");
        Ok(())
    }

    fn cache_diverged(&self) {
        cache::remove_marker(&self.dir);
    }

    fn set_config(&self, config: &StoreConfig) -> Result<(), RemoteError> {
        if self.fenced.load(Ordering::Acquire) {
            return Err(RemoteError::Fenced("this node was fenced earlier".into()));
        }
        let mut state = self.lock();
        let mut manifest = state.manifest.clone();
        manifest.config = Some(config.clone());
        match self.replace_manifest(&mut state, manifest)? {
            Some(_) => Ok(()),
            // Only a takeover (or a delete, which is one) changes the manifest under its owner.
            None => Err(self.fenced("the manifest changed under a config update".into())),
        }
    }
}
