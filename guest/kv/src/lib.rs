//! A tenant's collection in a key-value store with Spin's limits (values ≤ 1 MB, keys ≤ 255
//! bytes): the storage of tvs on Spin, where the only durable state is the key-value store, an
//! instance lives one request, and many instances may write one tenant at once. A request reads
//! only what it needs: a search reads the head, the clusters nearest its query and the texts of
//! its hits, never the whole tenant. Pure Rust over the [`KeyValue`] trait, so it runs inside a
//! Wasm component and is tested natively, crashes and concurrent writers included; the same
//! values can be read from any store with gets by key (object storage too).
//!
//! Layout, for tenant `t` (keys ≤ 130 bytes; values named `v/{seq}-{nonce}/…` are immutable):
//! ```text
//! tvs/t/config          the tenant's shape: dims, metric, model, document cap, rate limits
//! tvs/t/rate            the rate limits' token buckets (changed by compare-and-swap)
//! tvs/t/head            the commit point (JSON): rows assigned, live count, the tail (pages of
//!                       rows not yet clustered) and its ids, the dead-rows bitmap, the manifest
//! tvs/t/v/…/p{n}        a tail page: rows of one write, with vectors, metadata and texts
//! tvs/t/v/…/m           the manifest (JSON): clusters and their parts, text pages, id shards,
//!                       the calibrated clusters to read per search and the recall they give
//! tvs/t/v/…/k{n}        the centroids (f32), in values of at most 250,000 floats
//! tvs/t/v/…/c{c}-{n}    a part of cluster c: rows with vectors, ids and metadata
//! tvs/t/v/…/x{n}        a text page: rows' ids, metadata and texts, each tagged with its cluster
//! tvs/t/v/…/i{s}        a shard of the map from document id to row
//! tvs/t/v/…/d           the bitmap of clustered rows that are deleted or replaced
//! tvs/t/v/…/q           the calibration: held-out queries and their true neighbours
//! ```
//!
//! A document version is a *row* (numbered in write order). A write puts its rows in a new tail
//! page, then swaps `head` by compare-and-swap from the value it read: acknowledged when the
//! swap succeeds. A writer that loses the swap deletes what it wrote, reads again, re-checks its
//! request (quota, which ids exist) and retries. Once the tail holds enough rows, the writer
//! that finds it so *folds* it into the clusters (after its own write is acknowledged): every
//! row goes to its nearest centroid as a new part of that cluster, clusters with too many parts
//! are rewritten whole without their dead rows, clusters grown too large split in two, texts go
//! to text pages, ids to the id shards, and the calibration measures how many clusters a search
//! must read for recall@10 ≥ 0.95; all under new names, committed by one swap of `head`. So a
//! crash at any point leaves `head` naming only complete values, and nothing rewrites a value a
//! reader may be reading. Values a head no longer names are deleted after the swap; what a
//! crash leaves behind, by a later fold.
//!
//! A search reads the centroids, the calibrated number of nearest clusters (more while a filter
//! has matched fewer than `k`), scans them and the tail exactly, and reads the text pages of its
//! hits: its distances and scores are exact, only which clusters it reads is approximate.

mod encoding;
mod fold;
pub mod ivf;
mod search;
mod v1;

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tvs_guest_core::documents as document_rules;
use tvs_guest_core::filter::Filter;
use tvs_guest_core::rate::{self, Buckets, Limits, Refusal};

use encoding::{Bitmap, Page};
use ivf::Centroids;

/// Largest value written: under Spin's 1 MB (1,048,576 bytes) with room to spare.
pub const SEGMENT_MAX: usize = 1_000_000;

/// A key-value store as Spin offers it. A `set` is atomic for its key.
pub trait KeyValue {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError>;
    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), KvError>;
    fn delete(&mut self, key: &str) -> Result<(), KvError>;
    fn keys(&self) -> Result<Vec<String>, KvError>;
    /// Sets `key` to `value` only if it holds `expected` (`None`: the key is absent), atomically;
    /// returns whether it did (Spin: `wasi:keyvalue/atomics` compare-and-swap).
    fn compare_and_swap(&mut self, key: &str, expected: Option<&[u8]>, value: &[u8]) -> Result<bool, KvError>;
}

/// Attempts of one write against concurrent writers: each failed attempt means another write
/// was committed, so the store as a whole always makes progress.
const WRITE_ATTEMPTS: usize = 64;

/// Why a key-value operation or a request failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    #[error("key-value store: {0}")]
    Store(String),
    #[error("stored data of tenant {tenant} is damaged: {reason}")]
    Corrupt { tenant: String, reason: String },
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("quota exceeded: this tenant is limited to {0} documents")]
    QuotaExceeded(u64),
    #[error("tenant {0} does not exist")]
    NoTenant(String),
    #[error("tenant {0} already exists")]
    TenantExists(String),
    #[error("too many concurrent writes to tenant {0}; retry")]
    Busy(String),
    /// A value the head named was replaced by a commit while this request read it; the request
    /// reads the head again and starts over (only seen when that keeps happening).
    #[error("tenant {0} kept changing while it was read; retry")]
    HeadMoved(String),
}

/// Distance metric, as `tvs:store/types.metric`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    Cos,
    Ip,
    L2,
}

/// A tenant's fixed shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub dims: usize,
    pub metric: Metric,
    pub embedding_model: String,
    /// Live documents at most.
    pub max_documents: u64,
    /// Requests and ingest bytes per second; unlimited when absent.
    #[serde(default, skip_serializing_if = "Limits::is_unlimited")]
    pub rate_limits: Limits,
}

/// How the clustered layout is shaped: the defaults suit Spin; tests shrink them to exercise
/// folds, splits and merges on a few documents.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tuning {
    /// Rows in the tail (live or not) at which a write folds it into the clusters; every search
    /// scans the tail exactly, so this bounds that scan. A larger tenant lets its tail grow to
    /// `1/fold_share` of its documents, up to `max_fold_rows`: a fold writes a part to nearly
    /// every cluster (a key-value write each), so bigger folds cost less per document.
    pub fold_rows: usize,
    pub fold_share: usize,
    pub max_fold_rows: usize,
    /// Tail pages at which a write folds the tail (single-document writes make one page each).
    pub fold_pages: usize,
    /// Rows a cluster of a new index aims at.
    pub cluster_rows: usize,
    /// A cluster with more rows splits in two.
    pub split_rows: usize,
    /// Parts of a cluster beyond which a fold rewrites it as one (without its dead rows).
    pub max_parts: usize,
    /// Clusters one fold splits at most (the largest first).
    pub max_splits: usize,
    /// Bytes of a text page (a hit reads one).
    pub text_page_bytes: usize,
    /// Ids per shard of the id map beyond which the shards double.
    pub shard_ids: usize,
    /// Held-out queries the calibration measures recall with.
    pub calibration_queries: usize,
    /// The recall@10 the calibrated number of clusters reaches on the held-out queries.
    pub recall_target: f32,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            fold_rows: 2_000,
            fold_share: 25,
            max_fold_rows: 5_000,
            fold_pages: 64,
            cluster_rows: 400,
            split_rows: 1_000,
            max_parts: 4,
            max_splits: 16,
            text_page_bytes: 64 << 10,
            shard_ids: 8_192,
            calibration_queries: 64,
            recall_target: 0.96,
        }
    }
}

/// Neighbours the recall is measured on.
const CALIBRATION_K: usize = 10;
/// True neighbours kept per query, so deletes leave ten.
const TRUTH_KEEP: usize = 20;

/// The buckets as stored in `tvs/t/rate`, with the limits they were filled for (buckets of
/// other limits start full again).
#[derive(Debug, Serialize, Deserialize)]
struct StoredBuckets {
    limits: Limits,
    buckets: Buckets,
}

/// Attempts at a compare-and-swap of the buckets before a request is answered busy.
const RATE_ATTEMPTS: usize = 16;

/// A stored document.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub id: String,
    pub text: String,
    pub metadata: Map<String, Value>,
    pub vector: Vec<f32>,
}

/// One search result: `score` follows the FAISS/LangChain convention, `distance` is always
/// lower-is-closer.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub document: Document,
    pub score: f32,
    pub distance: f32,
}

/// What a tenant's index looks like now, for stats and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct IndexInfo {
    /// Rows in clusters (deleted ones included until their cluster is rewritten).
    pub clustered_rows: u64,
    /// Rows in the tail, scanned exactly by every search.
    pub tail_rows: u64,
    pub clusters: u64,
    /// Clusters a search reads.
    pub nprobe: u64,
    /// recall@10 of reading `nprobe` clusters, measured on held-out vectors.
    pub recall: f32,
    /// Values the tenant takes in the store (head, config and what the head names).
    pub values: u64,
}

/// What one operation read from the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Reads {
    pub gets: u64,
    pub bytes: u64,
    /// Time spent waiting on the store's gets, and decoding what they returned.
    pub get_micros: u64,
    pub decode_micros: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TailPage {
    key: String,
    first_row: u32,
    rows: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Head {
    format: u32,
    /// Commits so far: names of a commit's values start with the seq it makes.
    seq: u64,
    next_row: u32,
    count: u64,
    tail: Vec<TailPage>,
    /// Ids written or deleted since the last fold: their live row, or `None` when deleted.
    tail_ids: BTreeMap<String, Option<u32>>,
    dead: Option<String>,
    manifest: Option<String>,
}

const FORMAT: u32 = 2;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Cluster {
    parts: Vec<String>,
    /// Rows in its parts, dead ones included.
    rows: u32,
    /// The cluster this one split from: rows tagged with that cluster may be here now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    split_from: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TextPage {
    key: String,
    first_row: u32,
    last_row: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Manifest {
    /// Rows below were folded; the tail's rows are at or above it.
    watermark: u32,
    /// The centroids' values, in order.
    centroids: Vec<String>,
    clusters: Vec<Cluster>,
    texts: Vec<TextPage>,
    shards: Vec<String>,
    calibration: Option<String>,
    nprobe: u32,
    recall: f32,
    /// Live clustered rows when the queries were last drawn (drawn again as that doubles).
    calibrated_rows: u64,
    folds: u64,
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, KvError> {
    serde_json::to_vec(value).map_err(|e| KvError::Store(e.to_string()))
}

fn key_of(tenant: &str, rest: &str) -> String {
    format!("tvs/{tenant}/{rest}")
}

/// 64 random bits (std seeds its hash keys from the platform's random source, WASI's in a
/// component), so concurrent writers never pick the same names.
fn nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

/// FNV-1a: the shard of an id must not change between versions or platforms.
fn shard_of(id: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as usize
}

/// The commit seq a value's key was written for (`…/v/{seq}-{nonce}/…`).
fn seq_of(value_key: &str) -> Option<u64> {
    let rest = value_key.split("/v/").nth(1)?;
    rest.split('-').next()?.parse().ok()
}

/// Whether `row` is still the row of document `id` under `head`: not deleted or replaced since
/// the last fold (clustered rows deleted or replaced are also in the dead bitmap).
fn is_current(head: &Head, id: &str, row: u32) -> bool {
    head.tail_ids.get(id).is_none_or(|entry| *entry == Some(row))
}

fn metric_norm(metric: Metric, v: &[f32]) -> f32 {
    match metric {
        Metric::Cos => ivf::norm(v),
        Metric::Ip | Metric::L2 => 0.0,
    }
}

/// One tenant's collection: its head as last read, and the immutable values read so far
/// (cached by key, so never stale).
#[derive(Debug)]
pub struct KvCollection<K: KeyValue> {
    kv: K,
    tenant: String,
    config: Config,
    tuning: Tuning,
    head: Head,
    /// `head` as stored: what the next swap expects to find.
    head_bytes: Vec<u8>,
    /// Values read and decoded, by key (values never change under a key).
    cache: HashMap<String, Rc<dyn Any>>,
    reads: Reads,
}

/// The values one write attempt made (deleted again when its swap fails).
#[derive(Debug, Default)]
struct Written(Vec<String>);

impl<K: KeyValue> KvCollection<K> {
    /// Creates tenant `tenant` with `config` (the head is swapped in last: a crash leaves no
    /// tenant, and of two creators one gets `TenantExists`).
    pub fn create(kv: K, tenant: &str, config: Config) -> Result<Self, KvError> {
        Self::create_tuned(kv, tenant, config, Tuning::default())
    }

    pub fn create_tuned(mut kv: K, tenant: &str, config: Config, tuning: Tuning) -> Result<Self, KvError> {
        if kv.get(&key_of(tenant, "head"))?.is_some() {
            return Err(KvError::TenantExists(tenant.into()));
        }
        kv.set(&key_of(tenant, "config"), &to_json(&config)?)?;
        let head = Head {
            format: FORMAT,
            ..Head::default()
        };
        let head_bytes = to_json(&head)?;
        if !kv.compare_and_swap(&key_of(tenant, "head"), None, &head_bytes)? {
            return Err(KvError::TenantExists(tenant.into()));
        }
        Ok(Self {
            kv,
            tenant: tenant.into(),
            config,
            tuning,
            head,
            head_bytes,
            cache: HashMap::new(),
            reads: Reads::default(),
        })
    }

    /// Opens tenant `tenant`: its config and head, nothing more. A tenant of the first layout
    /// is carried over to this one here, once (by compare-and-swap, like any write).
    pub fn open(kv: K, tenant: &str) -> Result<Self, KvError> {
        Self::open_tuned(kv, tenant, Tuning::default())
    }

    pub fn open_tuned(kv: K, tenant: &str, tuning: Tuning) -> Result<Self, KvError> {
        let config: Config = match kv.get(&key_of(tenant, "config"))? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| KvError::Corrupt {
                tenant: tenant.into(),
                reason: format!("config: {e}"),
            })?,
            None if kv.get(&key_of(tenant, "head"))?.is_none() => return Err(KvError::NoTenant(tenant.into())),
            None => {
                return Err(KvError::Corrupt {
                    tenant: tenant.into(),
                    reason: "no config".into(),
                });
            }
        };
        let mut collection = Self {
            kv,
            tenant: tenant.into(),
            config,
            tuning,
            head: Head::default(),
            head_bytes: Vec::new(),
            cache: HashMap::new(),
            reads: Reads::default(),
        };
        collection.reload()?;
        Ok(collection)
    }

    fn corrupt(&self, reason: impl Into<String>) -> KvError {
        KvError::Corrupt {
            tenant: self.tenant.clone(),
            reason: reason.into(),
        }
    }

    /// Reads `head` again (after losing a swap, or to see other writers' commits).
    fn reload(&mut self) -> Result<(), KvError> {
        for _ in 0..WRITE_ATTEMPTS {
            let Some(bytes) = self.kv.get(&key_of(&self.tenant, "head"))? else {
                return Err(KvError::NoTenant(self.tenant.clone()));
            };
            self.reads.gets += 1;
            self.reads.bytes += bytes.len() as u64;
            match serde_json::from_slice::<Head>(&bytes) {
                Ok(head) if head.format == FORMAT => {
                    self.head = head;
                    self.head_bytes = bytes;
                    return Ok(());
                }
                Ok(head) => return Err(self.corrupt(format!("head of unknown format {}", head.format))),
                Err(_) => match v1::parse_head(&bytes) {
                    Some(old) => self.carry_over(&bytes, &old)?,
                    None => return Err(self.corrupt("head is neither of this layout nor of the first")),
                },
            }
        }
        Err(self.corrupt("the head keeps changing while it is read"))
    }

    /// Writes a tenant of the first layout as tail pages of this one and swaps its head for
    /// theirs; the old segments are deleted once the swap is done. Losing the swap is fine: the
    /// caller reads the head again.
    fn carry_over(&mut self, old_bytes: &[u8], old: &v1::Head) -> Result<(), KvError> {
        let Some(docs) = v1::documents(&self.kv, &self.tenant, old)? else {
            return Ok(());
        };
        let mut head = Head {
            format: FORMAT,
            seq: 1,
            count: docs.len() as u64,
            ..Head::default()
        };
        let prefix = self.value_prefix(&Head::default());
        let mut written = Written::default();
        let documents: Vec<&Document> = docs.values().collect();
        let result = self.write_rows(&mut head, &prefix, &documents, &mut written);
        if let Err(e) = result {
            self.discard(written);
            return Err(e);
        }
        let head_bytes = to_json(&head)?;
        if self
            .kv
            .compare_and_swap(&key_of(&self.tenant, "head"), Some(old_bytes), &head_bytes)?
        {
            for segment in v1::segment_keys(&self.tenant, old) {
                let _ = self.kv.delete(&segment);
            }
        } else {
            self.discard(written);
        }
        Ok(())
    }

    /// The prefix of the values a commit on top of `head` writes.
    fn value_prefix(&self, head: &Head) -> String {
        key_of(&self.tenant, &format!("v/{:020}-{:016x}", head.seq + 1, nonce()))
    }

    fn discard(&mut self, written: Written) {
        for k in written.0 {
            let _ = self.kv.delete(&k);
        }
    }

    fn put(&mut self, key: String, value: &[u8], written: &mut Written) -> Result<(), KvError> {
        if value.len() > SEGMENT_MAX {
            return Err(KvError::Store(format!("a value of {} bytes is too large", value.len())));
        }
        self.kv.set(&key, value)?;
        written.0.push(key);
        Ok(())
    }

    /// An immutable value the head names, decoded, and kept for the rest of the request when
    /// `keep` (small values read again: manifest, centroids, shards, pages of texts). Cluster
    /// parts are not kept: a search reads each once, and a fold or a full scan would otherwise
    /// hold the whole tenant.
    fn decoded<T: 'static>(
        &mut self,
        key: &str,
        keep: bool,
        decode: impl FnOnce(&[u8]) -> Result<T, String>,
    ) -> Result<Rc<T>, KvError> {
        if let Some(v) = self.cache.get(key).and_then(|v| v.clone().downcast::<T>().ok()) {
            return Ok(v);
        }
        let started = std::time::Instant::now();
        let got = self.kv.get(key)?;
        self.reads.get_micros += started.elapsed().as_micros() as u64;
        let Some(bytes) = got else {
            // Gone because a newer head no longer names it (compaction deleted it), or damage.
            let head = self.kv.get(&key_of(&self.tenant, "head"))?;
            return Err(if head.as_deref() == Some(self.head_bytes.as_slice()) {
                self.corrupt(format!("{key} is named but missing"))
            } else {
                KvError::HeadMoved(self.tenant.clone())
            });
        };
        self.reads.gets += 1;
        self.reads.bytes += bytes.len() as u64;
        let started = std::time::Instant::now();
        let value = Rc::new(decode(&bytes).map_err(|e| self.corrupt(format!("{key}: {e}")))?);
        self.reads.decode_micros += started.elapsed().as_micros() as u64;
        if keep {
            self.cache.insert(key.to_owned(), value.clone());
        }
        Ok(value)
    }

    fn page(&mut self, key: &str) -> Result<Rc<Page>, KvError> {
        self.decoded(key, true, Page::decode)
    }

    /// A cluster part, read without keeping it.
    fn part(&mut self, key: &str) -> Result<Rc<Page>, KvError> {
        self.decoded(key, false, Page::decode)
    }

    fn manifest(&mut self) -> Result<Option<Rc<Manifest>>, KvError> {
        let Some(name) = self.head.manifest.clone() else {
            return Ok(None);
        };
        self.decoded(&name, true, |bytes| {
            serde_json::from_slice::<Manifest>(bytes).map_err(|e| e.to_string())
        })
        .map(Some)
    }

    fn centroids(&mut self, manifest: &Manifest) -> Result<Rc<Centroids>, KvError> {
        let mut data = Vec::new();
        for name in &manifest.centroids {
            data.extend_from_slice(&self.decoded(name, true, encoding::decode_floats)?);
        }
        Ok(Rc::new(Centroids {
            dims: self.config.dims,
            data,
        }))
    }

    fn dead(&mut self) -> Result<Rc<Bitmap>, KvError> {
        let Some(name) = self.head.dead.clone() else {
            return Ok(Rc::new(Bitmap::default()));
        };
        self.decoded(&name, true, Bitmap::decode)
    }

    fn shard(&mut self, name: &str) -> Result<Rc<Vec<(String, u32)>>, KvError> {
        self.decoded(name, true, encoding::decode_ids)
    }

    /// The live row of document `id`, if it exists.
    fn live_row(&mut self, id: &str) -> Result<Option<u32>, KvError> {
        if let Some(entry) = self.head.tail_ids.get(id) {
            return Ok(*entry);
        }
        let Some(manifest) = self.manifest()? else {
            return Ok(None);
        };
        let name = &manifest.shards[shard_of(id, manifest.shards.len())];
        let shard = self.shard(name)?;
        let row = shard
            .binary_search_by(|(i, _)| i.as_str().cmp(id))
            .ok()
            .map(|i| shard[i].1);
        match row {
            Some(row) if !self.dead()?.contains(row) => Ok(Some(row)),
            _ => Ok(None),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn tuning(&self) -> &Tuning {
        &self.tuning
    }

    /// What this collection has read from the store since it was opened.
    pub fn reads(&self) -> Reads {
        self.reads
    }

    /// Changes the tenant's document cap: its config key alone (the head stays as it is). A
    /// write that loaded the old config before this may still pass the old cap.
    pub fn set_max_documents(&mut self, limit: u64) -> Result<(), KvError> {
        if limit == 0 {
            return Err(KvError::InvalidInput("max_documents must be at least 1".into()));
        }
        let mut config = self.config.clone();
        config.max_documents = limit;
        self.kv.set(&key_of(&self.tenant, "config"), &to_json(&config)?)?;
        self.config = config;
        Ok(())
    }

    /// Changes the tenant's rate limits (its config key alone, as the document cap).
    pub fn set_rate_limits(&mut self, limits: Limits) -> Result<(), KvError> {
        limits.validate().map_err(KvError::InvalidInput)?;
        let mut config = self.config.clone();
        config.rate_limits = limits;
        self.kv.set(&key_of(&self.tenant, "config"), &to_json(&config)?)?;
        self.config = config;
        Ok(())
    }

    /// Admits one request carrying `ingest_bytes` of documents at `now_ms` (the wall clock: an
    /// instance lives one request, so the buckets live in `tvs/t/rate`, changed by
    /// compare-and-swap), or says which limit refuses it; a refused request changes nothing.
    pub fn admit(&mut self, ingest_bytes: u64, now_ms: u64) -> Result<Result<(), Refusal>, KvError> {
        let limits = self.config.rate_limits;
        if limits.is_unlimited() {
            return Ok(Ok(()));
        }
        let rate_key = key_of(&self.tenant, "rate");
        for _ in 0..RATE_ATTEMPTS {
            let current = self.kv.get(&rate_key)?;
            let mut buckets = current
                .as_deref()
                .and_then(|bytes| serde_json::from_slice::<StoredBuckets>(bytes).ok())
                .filter(|stored| stored.limits == limits)
                .map_or_else(|| Buckets::full(&limits, now_ms), |stored| stored.buckets);
            if let Err(refusal) = rate::admit(&limits, &mut buckets, ingest_bytes, now_ms) {
                return Ok(Err(refusal));
            }
            let next = to_json(&StoredBuckets { limits, buckets })?;
            if self.kv.compare_and_swap(&rate_key, current.as_deref(), &next)? {
                return Ok(Ok(()));
            }
        }
        Err(KvError::Busy(self.tenant.clone()))
    }

    pub fn count(&self) -> u64 {
        self.head.count
    }

    /// The index as it stands, and the values the tenant takes in the store.
    pub fn index_info(&mut self) -> Result<IndexInfo, KvError> {
        self.reading(Self::index_info_once)
    }

    fn index_info_once(&mut self) -> Result<IndexInfo, KvError> {
        let tail_rows: u64 = self.head.tail.iter().map(|p| u64::from(p.rows)).sum();
        let mut values = 2 + self.head.tail.len() as u64 + u64::from(self.head.dead.is_some());
        let Some(manifest) = self.manifest()? else {
            return Ok(IndexInfo {
                clustered_rows: 0,
                tail_rows,
                clusters: 0,
                nprobe: 0,
                recall: 1.0,
                values,
            });
        };
        values += 2
            + u64::from(manifest.calibration.is_some())
            + manifest.shards.len() as u64
            + manifest.texts.len() as u64
            + manifest.clusters.iter().map(|c| c.parts.len() as u64).sum::<u64>();
        Ok(IndexInfo {
            clustered_rows: manifest.clusters.iter().map(|c| u64::from(c.rows)).sum(),
            tail_rows,
            clusters: manifest.clusters.len() as u64,
            nprobe: u64::from(manifest.nprobe),
            recall: manifest.recall,
            values,
        })
    }

    /// Runs `plan` on the current head and commits the head it returns (with the values it
    /// wrote), again on a fresh head whenever another writer committed first; returns what
    /// `plan` returned. A plan that changes nothing writes nothing.
    fn write<R>(
        &mut self,
        mut plan: impl FnMut(&mut Self, &mut Head, &str, &mut Written) -> Result<(bool, R), KvError>,
    ) -> Result<R, KvError> {
        for _ in 0..WRITE_ATTEMPTS {
            let mut head = self.head.clone();
            let prefix = self.value_prefix(&head);
            let mut written = Written::default();
            let (changed, result) = match plan(self, &mut head, &prefix, &mut written) {
                Ok(planned) => planned,
                Err(KvError::HeadMoved(_)) => {
                    self.discard(written);
                    self.reload()?;
                    continue;
                }
                Err(e) => {
                    self.discard(written);
                    return Err(e);
                }
            };
            if !changed {
                self.discard(written);
                return Ok(result);
            }
            head.seq += 1;
            let head_bytes = to_json(&head)?;
            if self
                .kv
                .compare_and_swap(&key_of(&self.tenant, "head"), Some(&self.head_bytes), &head_bytes)?
            {
                self.head = head;
                self.head_bytes = head_bytes;
                // The write is acknowledged; a fold that fails is tried again by a later write.
                if self.fold_due() {
                    let _ = self.fold(false);
                }
                return Ok(result);
            }
            // Another write went first: what this one wrote is named by no head.
            self.discard(written);
            self.reload()?;
        }
        Err(KvError::Busy(self.tenant.clone()))
    }

    fn tail_rows(&self) -> usize {
        self.head.tail.iter().map(|p| p.rows as usize).sum()
    }

    fn fold_due(&self) -> bool {
        let share = (self.head.count as usize / self.tuning.fold_share.max(1)).min(self.tuning.max_fold_rows);
        self.tail_rows() >= self.tuning.fold_rows.max(share) || self.head.tail.len() >= self.tuning.fold_pages
    }

    /// Puts `documents` as new rows in tail pages of `head` (at most [`SEGMENT_MAX`] each).
    fn write_rows(
        &mut self,
        head: &mut Head,
        prefix: &str,
        documents: &[&Document],
        written: &mut Written,
    ) -> Result<(), KvError> {
        let dims = self.config.dims;
        let metric = self.config.metric;
        let mut page = Page::new(dims);
        let mut bytes = 0usize;
        let mut first_row = head.next_row;
        let mut pages = 0usize;
        for doc in documents {
            let metadata = serde_json::to_string(&doc.metadata).map_err(|e| KvError::Store(e.to_string()))?;
            let size = Page::row_bytes(dims, &doc.id, &metadata, &doc.text);
            if size + 64 > SEGMENT_MAX {
                return Err(KvError::InvalidInput(format!(
                    "a document of {size} bytes is larger than a key-value value may be ({SEGMENT_MAX})"
                )));
            }
            if !page.is_empty() && bytes + size + 64 > SEGMENT_MAX {
                self.flush_tail_page(head, prefix, &mut pages, &mut page, first_row, written)?;
                first_row = head.next_row;
                bytes = 0;
            }
            let row = head.next_row;
            head.next_row = row
                .checked_add(1)
                .ok_or_else(|| KvError::InvalidInput("this tenant has used every row number".into()))?;
            page.push(
                row,
                &doc.vector,
                metric_norm(metric, &doc.vector),
                &doc.id,
                &metadata,
                &doc.text,
            );
            head.tail_ids.insert(doc.id.clone(), Some(row));
            bytes += size;
        }
        if !page.is_empty() {
            self.flush_tail_page(head, prefix, &mut pages, &mut page, first_row, written)?;
        }
        Ok(())
    }

    fn flush_tail_page(
        &mut self,
        head: &mut Head,
        prefix: &str,
        pages: &mut usize,
        page: &mut Page,
        first_row: u32,
        written: &mut Written,
    ) -> Result<(), KvError> {
        let name = format!("{prefix}/p{pages}");
        *pages += 1;
        self.put(name.clone(), &page.encode(), written)?;
        head.tail.push(TailPage {
            key: name,
            first_row,
            rows: page.len() as u32,
        });
        *page = Page::new(self.config.dims);
        Ok(())
    }

    /// Marks clustered `rows` dead in a new bitmap of `head`.
    fn kill(&mut self, head: &mut Head, prefix: &str, rows: &[u32], written: &mut Written) -> Result<(), KvError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut dead = (*self.dead()?).clone();
        for &row in rows {
            dead.insert(row);
        }
        let name = format!("{prefix}/d");
        self.put(name.clone(), &dead.encode(), written)?;
        head.dead = Some(name);
        Ok(())
    }

    /// The watermark below which rows are clustered (0 before the first fold).
    fn watermark(&mut self) -> Result<u32, KvError> {
        Ok(self.manifest()?.map_or(0, |m| m.watermark))
    }

    /// Inserts or replaces documents by id, all or none; durable when it returns.
    pub fn upsert(&mut self, documents: Vec<Document>) -> Result<Vec<String>, KvError> {
        let cosine = self.config.metric == Metric::Cos;
        for (index, doc) in documents.iter().enumerate() {
            let invalid =
                |reason: String| KvError::InvalidInput(document_rules::invalid_document(index, Some(&doc.id), &reason));
            document_rules::check_id(&doc.id).map_err(invalid)?;
            document_rules::check_vector(&doc.vector, self.config.dims, cosine).map_err(invalid)?;
            let metadata_bytes = serde_json::to_vec(&doc.metadata).map_or(0, |json| json.len());
            document_rules::check_metadata_size(metadata_bytes).map_err(invalid)?;
        }
        // Of one id written twice in a batch, the last is kept (as a log applied in order).
        let mut last: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, d) in documents.iter().enumerate() {
            last.insert(&d.id, i);
        }
        let kept: Vec<&Document> = documents
            .iter()
            .enumerate()
            .filter(|(i, d)| last[d.id.as_str()] == *i)
            .map(|(_, d)| d)
            .collect();
        self.write(|c, head, prefix, written| {
            let watermark = c.watermark()?;
            let mut replaced = Vec::new();
            let mut new = 0u64;
            for d in &kept {
                match c.live_row(&d.id)? {
                    Some(row) if row < watermark => replaced.push(row),
                    Some(_) => {}
                    None => new += 1,
                }
            }
            if head.count + new > c.config.max_documents {
                return Err(KvError::QuotaExceeded(c.config.max_documents));
            }
            head.count += new;
            c.kill(head, prefix, &replaced, written)?;
            c.write_rows(head, prefix, &kept, written)?;
            Ok((true, ()))
        })?;
        Ok(documents.into_iter().map(|d| d.id).collect())
    }

    /// Plans the delete of those of `ids` that exist under `head`; returns how many.
    fn plan_delete(
        &mut self,
        head: &mut Head,
        prefix: &str,
        written: &mut Written,
        ids: &[String],
    ) -> Result<(bool, u64), KvError> {
        let watermark = self.watermark()?;
        let mut distinct: Vec<&String> = ids.iter().collect();
        distinct.sort_unstable();
        distinct.dedup();
        let mut clustered = Vec::new();
        let mut deleted = 0u64;
        for id in distinct {
            if let Some(row) = self.live_row(id)? {
                if row < watermark {
                    clustered.push(row);
                }
                head.tail_ids.insert(id.clone(), None);
                deleted += 1;
            }
        }
        if deleted == 0 {
            return Ok((false, 0));
        }
        head.count -= deleted;
        self.kill(head, prefix, &clustered, written)?;
        Ok((true, deleted))
    }

    /// Deletes documents by id; returns how many existed.
    pub fn delete(&mut self, ids: &[String]) -> Result<u64, KvError> {
        self.write(|c, head, prefix, written| c.plan_delete(head, prefix, written, ids))
    }

    /// Deletes every document whose metadata matches `filter`; returns how many. Reads the
    /// whole tenant (metadata lives beside the vectors, not in an index), again on each retry.
    pub fn delete_where(&mut self, filter: &Filter) -> Result<u64, KvError> {
        self.write(|c, head, prefix, written| {
            let mut ids = Vec::new();
            c.for_each_live_row(|page, i| {
                let metadata: Map<String, Value> = serde_json::from_str(&page.metadata[i]).unwrap_or_default();
                if filter.matches(&metadata) {
                    ids.push(page.ids[i].clone());
                }
            })?;
            c.plan_delete(head, prefix, written, &ids)
        })
    }

    /// Calls `f` with every live row (cluster parts, then tail pages) of the current head.
    fn for_each_live_row(&mut self, mut f: impl FnMut(&Page, usize)) -> Result<(), KvError> {
        let dead = self.dead()?;
        if let Some(manifest) = self.manifest()? {
            for cluster in &manifest.clusters {
                for part in &cluster.parts {
                    let page = self.part(part)?;
                    for i in 0..page.len() {
                        if !dead.contains(page.rows[i]) && is_current(&self.head, &page.ids[i], page.rows[i]) {
                            f(&page, i);
                        }
                    }
                }
            }
        }
        for tail in self.head.tail.clone() {
            let page = self.page(&tail.key)?;
            for i in 0..page.len() {
                if self.head.tail_ids.get(&page.ids[i]) == Some(&Some(page.rows[i])) {
                    f(&page, i);
                }
            }
        }
        Ok(())
    }

    /// Gives the store back (tests reopen it).
    pub fn into_store(self) -> K {
        self.kv
    }
}

/// Lower is closer, as tvs's host computes it.
pub fn distance(metric: Metric, a: &[f32], b: &[f32]) -> f32 {
    ivf::distance_with_norms(metric, a, ivf::norm(a), b, ivf::norm(b))
}

/// The FAISS/LangChain score of a distance: squared L2, the inner product, the cosine.
pub fn score(metric: Metric, distance: f32) -> f32 {
    match metric {
        Metric::L2 => distance,
        Metric::Ip | Metric::Cos => 1.0 - distance,
    }
}
