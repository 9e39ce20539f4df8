//! A tenant's collection stored in a key-value store with Spin's limits (values ≤ 1 MB, keys
//! ≤ 255 bytes): the storage of tvs on Spin, where the only durable state is the key-value
//! store and many instances of the component may write one tenant at once. Pure Rust over the
//! [`KeyValue`] trait, so it runs inside a Wasm component and is tested natively, crashes and
//! concurrent writers included.
//!
//! Layout, for tenant `t` (keys ≤ 120 bytes):
//! ```text
//! tvs/t/config                 the tenant's shape: dims, metric, embedding model, document cap,
//!                              rate limits
//! tvs/t/rate                   the rate limits' token buckets (changed by compare-and-swap)
//! tvs/t/head                   {"generation": g, "segments": [names], "compacted": n}: the commit point
//! tvs/t/log/{g}/{seq}-{nonce}  a segment of generation g: JSON lines, ≤ 1,000,000 bytes, never rewritten
//! ```
//! Records are the document log's: `{"op":"upsert","id","text","metadata","vector"}` (vector as
//! base64 of little-endian f32) and `{"op":"delete","ids":[...]}`.
//!
//! A write (one `set` per key is atomic, and `head` changes only by compare-and-swap):
//! 1. its records go to new segments, under names no other writer can pick (a random nonce);
//! 2. `head` is swapped from the value the writer read to one that lists them: the write is
//!    acknowledged when the swap succeeds. If another writer swapped first, the writer deletes its
//!    segments, reads what changed, re-checks its request (quota, which ids exist) and tries
//!    again.
//!
//! A crash before the swap leaves `head` as it was: the new segments are named by no head, so
//! nothing of the unacknowledged write is visible, whole or half. A crash after it loses nothing.
//! Segments are never rewritten, so no writer can damage what another committed. Compaction
//! (after writes, when many small segments or dead records have piled up) writes generation g+1
//! whole and swaps `head` the same way, then deletes the keys of older generations (a reader that
//! finds a segment gone reads `head` again; leftovers of a crash are deleted by the next
//! compaction).

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tvs_guest_core::documents as document_rules;
use tvs_guest_core::filter::Filter;
use tvs_guest_core::rate::{self, Buckets, Limits, Refusal};

/// Largest segment value: under Spin's 1 MB (1,048,576 bytes) with room to spare.
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
/// Segments written one per write, beyond those compaction wrote, before compaction runs.
const COMPACT_AFTER_SEGMENTS: usize = 32;

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
    /// Live documents at most: every request of a Spin component reads the whole tenant.
    pub max_documents: u64,
    /// Requests and ingest bytes per second; unlimited when absent.
    #[serde(default, skip_serializing_if = "Limits::is_unlimited")]
    pub rate_limits: Limits,
}

/// The buckets as stored in `tvs/t/rate`, with the limits they were filled for (buckets of
/// other limits start full again).
#[derive(Debug, Serialize, Deserialize)]
struct StoredBuckets {
    limits: Limits,
    buckets: Buckets,
}

/// Attempts at a compare-and-swap of the buckets before a request is answered busy.
const RATE_ATTEMPTS: usize = 16;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Head {
    generation: u64,
    /// The segments of generation `generation`, in log order: `{seq}-{nonce}`.
    segments: Vec<String>,
    /// How many of `segments` compaction wrote; the others were written one per write.
    compacted: usize,
}

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

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Record {
    Upsert {
        id: String,
        text: String,
        metadata: Map<String, Value>,
        vector: String,
    },
    Delete {
        ids: Vec<String>,
    },
}

fn encode_vector(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn decode_vector(text: &str) -> Option<Vec<f32>> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).ok()?;
    (bytes.len() % 4 == 0).then(|| {
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    })
}

/// One tenant's collection, loaded whole from the store (what a Spin request does).
#[derive(Debug)]
pub struct KvCollection<K: KeyValue> {
    kv: K,
    tenant: String,
    config: Config,
    head: Head,
    /// `head` as stored: what the next swap expects to find.
    head_bytes: Vec<u8>,
    docs: BTreeMap<String, Document>,
    records: u64,
}

fn key(tenant: &str, rest: &str) -> String {
    format!("tvs/{tenant}/{rest}")
}

fn segment_key(tenant: &str, generation: u64, name: &str) -> String {
    key(tenant, &format!("log/{generation}/{name}"))
}

/// A segment name no concurrent writer picks: its position and 64 random bits (std seeds its
/// hash keys from the platform's random source, WASI's in a component).
fn segment_name(seq: usize) -> String {
    use std::hash::{BuildHasher, Hasher};
    let nonce = std::collections::hash_map::RandomState::new().build_hasher().finish();
    format!("{seq}-{nonce:016x}")
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, KvError> {
    serde_json::to_vec(value).map_err(|e| KvError::Store(e.to_string()))
}

impl<K: KeyValue> KvCollection<K> {
    /// Creates tenant `tenant` with `config` (the head is swapped in last: a crash leaves no
    /// tenant, and of two creators one gets `TenantExists`).
    pub fn create(mut kv: K, tenant: &str, config: Config) -> Result<Self, KvError> {
        if kv.get(&key(tenant, "head"))?.is_some() {
            return Err(KvError::TenantExists(tenant.into()));
        }
        kv.set(&key(tenant, "config"), &to_json(&config)?)?;
        let head = Head::default();
        let head_bytes = to_json(&head)?;
        if !kv.compare_and_swap(&key(tenant, "head"), None, &head_bytes)? {
            return Err(KvError::TenantExists(tenant.into()));
        }
        Ok(Self {
            kv,
            tenant: tenant.into(),
            config,
            head,
            head_bytes,
            docs: BTreeMap::new(),
            records: 0,
        })
    }

    /// Loads tenant `tenant`: its config, then every committed record.
    pub fn open(kv: K, tenant: &str) -> Result<Self, KvError> {
        let config: Config = match kv.get(&key(tenant, "config"))? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| KvError::Corrupt {
                tenant: tenant.into(),
                reason: format!("config: {e}"),
            })?,
            None if kv.get(&key(tenant, "head"))?.is_none() => return Err(KvError::NoTenant(tenant.into())),
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
            head: Head::default(),
            head_bytes: Vec::new(),
            docs: BTreeMap::new(),
            records: 0,
        };
        collection.reload()?;
        Ok(collection)
    }

    fn corrupt(&self, reason: String) -> KvError {
        KvError::Corrupt {
            tenant: self.tenant.clone(),
            reason,
        }
    }

    /// Reads `head` and the segments it names that are not loaded yet (all of them when the
    /// generation changed). A segment that is gone was compacted away after `head` was read, so
    /// `head` is read again.
    fn reload(&mut self) -> Result<(), KvError> {
        for _ in 0..WRITE_ATTEMPTS {
            let Some(head_bytes) = self.kv.get(&key(&self.tenant, "head"))? else {
                return Err(KvError::NoTenant(self.tenant.clone()));
            };
            if head_bytes == self.head_bytes {
                return Ok(());
            }
            let head: Head = serde_json::from_slice(&head_bytes).map_err(|e| self.corrupt(format!("head: {e}")))?;
            let extends = head.generation == self.head.generation
                && !self.head_bytes.is_empty()
                && head.segments.starts_with(&self.head.segments);
            let (mut docs, mut records, from) = if extends {
                (std::mem::take(&mut self.docs), self.records, self.head.segments.len())
            } else {
                (BTreeMap::new(), 0, 0)
            };
            let mut missing = false;
            for name in &head.segments[from..] {
                let Some(bytes) = self.kv.get(&segment_key(&self.tenant, head.generation, name))? else {
                    missing = true;
                    break;
                };
                for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    let record: Record =
                        serde_json::from_slice(line).map_err(|e| self.corrupt(format!("segment {name}: {e}")))?;
                    records += 1;
                    apply(&mut docs, record).map_err(|e| self.corrupt(e))?;
                }
            }
            if missing {
                // Compaction replaced this generation meanwhile: start over from the new head.
                self.head = Head::default();
                self.head_bytes.clear();
                continue;
            }
            self.head = head;
            self.head_bytes = head_bytes;
            self.docs = docs;
            self.records = records;
            return Ok(());
        }
        Err(self.corrupt("head names segments that keep disappearing".into()))
    }

    /// Runs `plan` on the current state and commits the records it returns, again on fresh state
    /// whenever another writer committed first; returns what `plan` returned with the records
    /// that were committed.
    fn write<R>(&mut self, plan: impl Fn(&Self) -> Result<(Vec<Vec<u8>>, R), KvError>) -> Result<R, KvError> {
        for _ in 0..WRITE_ATTEMPTS {
            let (lines, result) = plan(self)?;
            if lines.is_empty() {
                return Ok(result);
            }
            let mut values: Vec<Vec<u8>> = vec![Vec::new()];
            for line in &lines {
                if line.len() > SEGMENT_MAX {
                    return Err(KvError::InvalidInput(format!(
                        "a document of {} bytes is larger than a key-value value may be ({SEGMENT_MAX})",
                        line.len()
                    )));
                }
                let last = values.last_mut().expect("one value at least");
                if last.len() + line.len() > SEGMENT_MAX {
                    values.push(line.clone());
                } else {
                    last.extend_from_slice(line);
                }
            }
            let mut head = self.head.clone();
            let mut written = Vec::new();
            for value in &values {
                let name = segment_name(head.segments.len());
                let segment = segment_key(&self.tenant, head.generation, &name);
                self.kv.set(&segment, value)?;
                written.push(segment);
                head.segments.push(name);
            }
            let head_bytes = to_json(&head)?;
            if self
                .kv
                .compare_and_swap(&key(&self.tenant, "head"), Some(&self.head_bytes), &head_bytes)?
            {
                for line in &lines {
                    let record: Record = serde_json::from_slice(line).map_err(|e| KvError::Store(e.to_string()))?;
                    self.records += 1;
                    apply(&mut self.docs, record).map_err(KvError::Store)?;
                }
                self.head = head;
                self.head_bytes = head_bytes;
                self.compact_if_due()?;
                return Ok(result);
            }
            // Another write went first: ours is named by no head; drop it and look again.
            for segment in written {
                self.kv.delete(&segment)?;
            }
            self.reload()?;
        }
        Err(KvError::Busy(self.tenant.clone()))
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Changes the tenant's document cap: its config key alone (the head and the log stay as
    /// they are). A write that loaded the old config before this may still pass the old cap.
    pub fn set_max_documents(&mut self, limit: u64) -> Result<(), KvError> {
        if limit == 0 {
            return Err(KvError::InvalidInput("max_documents must be at least 1".into()));
        }
        let mut config = self.config.clone();
        config.max_documents = limit;
        self.kv.set(&key(&self.tenant, "config"), &to_json(&config)?)?;
        self.config = config;
        Ok(())
    }

    /// Changes the tenant's rate limits (its config key alone, as the document cap).
    pub fn set_rate_limits(&mut self, limits: Limits) -> Result<(), KvError> {
        limits.validate().map_err(KvError::InvalidInput)?;
        let mut config = self.config.clone();
        config.rate_limits = limits;
        self.kv.set(&key(&self.tenant, "config"), &to_json(&config)?)?;
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
        let rate_key = key(&self.tenant, "rate");
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
        self.docs.len() as u64
    }

    /// Committed log segments (values) the tenant takes in the store.
    pub fn segments(&self) -> u64 {
        self.head.segments.len() as u64
    }

    fn line(record: &Record) -> Vec<u8> {
        let mut line = serde_json::to_vec(record).unwrap_or_default();
        line.push(b'\n');
        line
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
        let lines: Vec<Vec<u8>> = documents
            .iter()
            .map(|d| {
                Self::line(&Record::Upsert {
                    id: d.id.clone(),
                    text: d.text.clone(),
                    metadata: d.metadata.clone(),
                    vector: encode_vector(&d.vector),
                })
            })
            .collect();
        let mut distinct: Vec<&str> = documents.iter().map(|d| d.id.as_str()).collect();
        distinct.sort_unstable();
        distinct.dedup();
        self.write(|c| {
            let new = distinct.iter().filter(|id| !c.docs.contains_key(**id)).count() as u64;
            if c.count() + new > c.config.max_documents {
                return Err(KvError::QuotaExceeded(c.config.max_documents));
            }
            Ok((lines.clone(), ()))
        })?;
        Ok(documents.into_iter().map(|d| d.id).collect())
    }

    /// Deletes documents by id; returns how many existed.
    pub fn delete(&mut self, ids: &[String]) -> Result<u64, KvError> {
        self.write(|c| {
            let mut existing: Vec<String> = ids.iter().filter(|id| c.docs.contains_key(*id)).cloned().collect();
            existing.sort_unstable();
            existing.dedup();
            let count = existing.len() as u64;
            let lines = if existing.is_empty() {
                Vec::new()
            } else {
                vec![Self::line(&Record::Delete { ids: existing })]
            };
            Ok((lines, count))
        })
    }

    /// Deletes every document whose metadata matches `filter` (when the delete commits); returns
    /// how many.
    pub fn delete_where(&mut self, filter: &Filter) -> Result<u64, KvError> {
        self.write(|c| {
            let ids: Vec<String> = c
                .docs
                .values()
                .filter(|d| filter.matches(&d.metadata))
                .map(|d| d.id.clone())
                .collect();
            let count = ids.len() as u64;
            let lines = if ids.is_empty() {
                Vec::new()
            } else {
                vec![Self::line(&Record::Delete { ids })]
            };
            Ok((lines, count))
        })
    }

    /// Documents by id, in the order asked; missing ids skipped.
    pub fn get(&self, ids: &[String]) -> Vec<Document> {
        ids.iter().filter_map(|id| self.docs.get(id).cloned()).collect()
    }

    /// Exact k-NN among the documents matching `filter`, nearest first (ties by id).
    pub fn search(&self, vector: &[f32], k: usize, filter: Option<&Filter>) -> Result<Vec<Hit>, KvError> {
        document_rules::check_vector(vector, self.config.dims, self.config.metric == Metric::Cos)
            .map_err(|reason| KvError::InvalidInput(format!("invalid query: query {reason}")))?;
        let mut scored: Vec<(f32, &Document)> = self
            .docs
            .values()
            .filter(|d| filter.is_none_or(|f| f.matches(&d.metadata)))
            .map(|d| (distance(self.config.metric, vector, &d.vector), d))
            .collect();
        scored.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
        Ok(scored
            .into_iter()
            .take(k)
            .map(|(distance, d)| Hit {
                score: score(self.config.metric, distance),
                distance,
                document: d.clone(),
            })
            .collect())
    }

    /// Records in the log per live document; compaction pays off past 2.
    pub fn dead_ratio(&self) -> f64 {
        self.records as f64 / (self.docs.len().max(1)) as f64
    }

    /// Compacts when writes have left many small segments or more dead records than live ones.
    fn compact_if_due(&mut self) -> Result<(), KvError> {
        let small = self.head.segments.len() - self.head.compacted.min(self.head.segments.len());
        if small > COMPACT_AFTER_SEGMENTS || (self.records > 1000 && self.dead_ratio() > 2.0) {
            self.compact()?;
        }
        Ok(())
    }

    /// Writes the live documents as generation g+1 and swaps it in, then deletes the keys of
    /// older generations. When another writer swapped `head` first, its new segments are dropped
    /// and nothing else changes (the next write compacts).
    pub fn compact(&mut self) -> Result<(), KvError> {
        let generation = self.head.generation + 1;
        let mut values: Vec<Vec<u8>> = vec![Vec::new()];
        for d in self.docs.values() {
            let line = Self::line(&Record::Upsert {
                id: d.id.clone(),
                text: d.text.clone(),
                metadata: d.metadata.clone(),
                vector: encode_vector(&d.vector),
            });
            let last = values.last_mut().expect("one value at least");
            if last.len() + line.len() > SEGMENT_MAX {
                values.push(line);
            } else {
                last.extend_from_slice(&line);
            }
        }
        let mut head = Head {
            generation,
            segments: Vec::new(),
            compacted: values.len(),
        };
        let mut written = Vec::new();
        for value in &values {
            let name = segment_name(head.segments.len());
            let segment = segment_key(&self.tenant, generation, &name);
            self.kv.set(&segment, value)?;
            written.push(segment);
            head.segments.push(name);
        }
        let head_bytes = to_json(&head)?;
        if !self
            .kv
            .compare_and_swap(&key(&self.tenant, "head"), Some(&self.head_bytes), &head_bytes)?
        {
            for segment in written {
                self.kv.delete(&segment)?;
            }
            return self.reload();
        }
        self.head = head;
        self.head_bytes = head_bytes;
        self.records = self.docs.len() as u64;
        // Older generations are garbage now (their readers read `head` again). This
        // generation's unnamed keys may be another writer's segments in flight: left alone.
        let prefix = key(&self.tenant, "log/");
        let current = format!("{prefix}{generation}/");
        for stale in self
            .kv
            .keys()?
            .into_iter()
            .filter(|k| k.starts_with(&prefix) && !k.starts_with(&current))
        {
            self.kv.delete(&stale)?;
        }
        Ok(())
    }

    /// Gives the store back (tests reopen it).
    pub fn into_store(self) -> K {
        self.kv
    }
}

/// Applies one record to the documents.
fn apply(docs: &mut BTreeMap<String, Document>, record: Record) -> Result<(), String> {
    match record {
        Record::Upsert {
            id,
            text,
            metadata,
            vector,
        } => {
            let vector = decode_vector(&vector).ok_or("a vector is not base64 of f32s")?;
            docs.insert(
                id.clone(),
                Document {
                    id,
                    text,
                    metadata,
                    vector,
                },
            );
        }
        Record::Delete { ids } => {
            for id in ids {
                docs.remove(&id);
            }
        }
    }
    Ok(())
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Lower is closer, as tvs's host computes it.
pub fn distance(metric: Metric, a: &[f32], b: &[f32]) -> f32 {
    match metric {
        Metric::L2 => a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum(),
        Metric::Ip => 1.0 - dot(a, b),
        Metric::Cos => {
            let norms = dot(a, a).sqrt() * dot(b, b).sqrt();
            if norms == 0.0 { 1.0 } else { 1.0 - dot(a, b) / norms }
        }
    }
}

/// The FAISS/LangChain score of a distance: squared L2, the inner product, the cosine.
pub fn score(metric: Metric, distance: f32) -> f32 {
    match metric {
        Metric::L2 => distance,
        Metric::Ip | Metric::Cos => 1.0 - distance,
    }
}
