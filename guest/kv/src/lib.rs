//! A tenant's collection stored in a key-value store with Spin's limits (values ≤ 1 MB, keys
//! ≤ 255 bytes): the storage of tvs on Spin, where the only durable state is `spin:key-value`.
//! Pure Rust over the [`KeyValue`] trait, so it runs inside a Wasm component and is tested
//! natively, crashes included.
//!
//! Layout, for tenant `t` (keys ≤ 90 bytes):
//! ```text
//! tvs/t/config            the tenant's shape: dims, metric, embedding model, document cap
//! tvs/t/head              {"generation": g, "segments": n, "last_len": bytes}: the commit point
//! tvs/t/log/{g}/{i}       segment i < n of generation g: JSON lines, ≤ 1,000,000 bytes each
//! ```
//! Records are the document log's: `{"op":"upsert","id","text","metadata","vector"}` (vector as
//! base64 of little-endian f32) and `{"op":"delete","ids":[...]}`.
//!
//! Commit order of a write (one set per key is atomic; nothing else is assumed):
//! 1. the last segment is written again with the new lines appended (its old bytes are its
//!    prefix), and new segments are written under keys past `segments`;
//! 2. `head` is written with the new segment count and last length: the write is acknowledged
//!    when this returns.
//!
//! A crash before step 2 leaves `head` as it was: readers cut the last segment at `last_len`
//! and ignore keys past `segments`, so nothing of the unacknowledged write is visible, whole or
//! half. A crash after it loses nothing. Compaction writes generation g+1 whole, then `head`,
//! then deletes generation g's keys (leftovers of a crash there are deleted by the next
//! compaction).

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tvs_guest_core::documents as document_rules;
use tvs_guest_core::filter::Filter;

/// Largest segment value: under Spin's 1 MB (1,048,576 bytes) with room to spare.
pub const SEGMENT_MAX: usize = 1_000_000;

/// A key-value store as Spin offers it. A `set` is atomic for its key.
pub trait KeyValue {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError>;
    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), KvError>;
    fn delete(&mut self, key: &str) -> Result<(), KvError>;
    fn keys(&self) -> Result<Vec<String>, KvError>;
}

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
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct Head {
    generation: u64,
    segments: u64,
    last_len: u64,
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
    /// The last segment's committed bytes (appends rewrite it).
    last: Vec<u8>,
    docs: BTreeMap<String, Document>,
    records: u64,
}

fn key(tenant: &str, rest: &str) -> String {
    format!("tvs/{tenant}/{rest}")
}

fn segment_key(tenant: &str, generation: u64, index: u64) -> String {
    key(tenant, &format!("log/{generation}/{index}"))
}

impl<K: KeyValue> KvCollection<K> {
    /// Creates tenant `tenant` with `config` (the head is written last: a crash leaves no tenant).
    pub fn create(mut kv: K, tenant: &str, config: Config) -> Result<Self, KvError> {
        if kv.get(&key(tenant, "head"))?.is_some() {
            return Err(KvError::TenantExists(tenant.into()));
        }
        let json = serde_json::to_vec(&config).map_err(|e| KvError::Store(e.to_string()))?;
        kv.set(&key(tenant, "config"), &json)?;
        let head = Head::default();
        kv.set(
            &key(tenant, "head"),
            &serde_json::to_vec(&head).map_err(|e| KvError::Store(e.to_string()))?,
        )?;
        Ok(Self {
            kv,
            tenant: tenant.into(),
            config,
            head,
            last: Vec::new(),
            docs: BTreeMap::new(),
            records: 0,
        })
    }

    /// Loads tenant `tenant`: its config, then every committed record.
    pub fn open(kv: K, tenant: &str) -> Result<Self, KvError> {
        let corrupt = |reason: String| KvError::Corrupt {
            tenant: tenant.into(),
            reason,
        };
        let head: Head = match kv.get(&key(tenant, "head"))? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("head: {e}")))?,
            None => return Err(KvError::NoTenant(tenant.into())),
        };
        let config: Config = match kv.get(&key(tenant, "config"))? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("config: {e}")))?,
            None => return Err(corrupt("no config".into())),
        };
        let mut collection = Self {
            kv,
            tenant: tenant.into(),
            config,
            head,
            last: Vec::new(),
            docs: BTreeMap::new(),
            records: 0,
        };
        for index in 0..head.segments {
            let mut bytes = collection
                .kv
                .get(&segment_key(tenant, head.generation, index))?
                .ok_or_else(|| corrupt(format!("segment {index} of {} is missing", head.segments)))?;
            if index + 1 == head.segments {
                if (bytes.len() as u64) < head.last_len {
                    return Err(corrupt(format!(
                        "the last segment is shorter than its {} committed bytes",
                        head.last_len
                    )));
                }
                bytes.truncate(head.last_len as usize);
            }
            for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let record: Record =
                    serde_json::from_slice(line).map_err(|e| corrupt(format!("segment {index}: {e}")))?;
                collection.apply(record).map_err(corrupt)?;
            }
            if index + 1 == head.segments {
                collection.last = bytes;
            }
        }
        Ok(collection)
    }

    fn apply(&mut self, record: Record) -> Result<(), String> {
        self.records += 1;
        match record {
            Record::Upsert {
                id,
                text,
                metadata,
                vector,
            } => {
                let vector = decode_vector(&vector).ok_or("a vector is not base64 of f32s")?;
                self.docs.insert(
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
                    self.docs.remove(&id);
                }
            }
        }
        Ok(())
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn count(&self) -> u64 {
        self.docs.len() as u64
    }

    /// Committed log segments (values) the tenant takes in the store.
    pub fn segments(&self) -> u64 {
        self.head.segments
    }

    /// Appends records and commits them; `apply` has already been checked to succeed.
    fn commit(&mut self, lines: &[Vec<u8>]) -> Result<(), KvError> {
        let mut head = self.head;
        let mut last = self.last.clone();
        let mut written: Vec<(u64, Vec<u8>)> = Vec::new();
        if head.segments == 0 {
            head.segments = 1;
        }
        for line in lines {
            if line.len() > SEGMENT_MAX {
                return Err(KvError::InvalidInput(format!(
                    "a document of {} bytes is larger than a key-value value may be ({SEGMENT_MAX})",
                    line.len()
                )));
            }
            if last.len() + line.len() > SEGMENT_MAX {
                written.push((head.segments - 1, std::mem::take(&mut last)));
                head.segments += 1;
            }
            last.extend_from_slice(line);
        }
        written.push((head.segments - 1, last.clone()));
        head.last_len = last.len() as u64;
        // Step 1: the segments; step 2: the head, the commit point.
        for (index, bytes) in &written {
            self.kv
                .set(&segment_key(&self.tenant, head.generation, *index), bytes)?;
        }
        let json = serde_json::to_vec(&head).map_err(|e| KvError::Store(e.to_string()))?;
        self.kv.set(&key(&self.tenant, "head"), &json)?;
        self.head = head;
        self.last = last;
        Ok(())
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
        let new = documents.iter().filter(|d| !self.docs.contains_key(&d.id)).count() as u64;
        if self.count() + new > self.config.max_documents {
            return Err(KvError::QuotaExceeded(self.config.max_documents));
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
        self.commit(&lines)?;
        let ids = documents.iter().map(|d| d.id.clone()).collect();
        for doc in documents {
            self.records += 1;
            self.docs.insert(doc.id.clone(), doc);
        }
        Ok(ids)
    }

    /// Deletes documents by id; returns how many existed.
    pub fn delete(&mut self, ids: &[String]) -> Result<u64, KvError> {
        let existing: Vec<String> = ids.iter().filter(|id| self.docs.contains_key(*id)).cloned().collect();
        if existing.is_empty() {
            return Ok(0);
        }
        self.commit(&[Self::line(&Record::Delete { ids: existing.clone() })])?;
        self.records += 1;
        for id in &existing {
            self.docs.remove(id);
        }
        Ok(existing.len() as u64)
    }

    /// Deletes every document whose metadata matches `filter`; returns how many.
    pub fn delete_where(&mut self, filter: &Filter) -> Result<u64, KvError> {
        let ids: Vec<String> = self
            .docs
            .values()
            .filter(|d| filter.matches(&d.metadata))
            .map(|d| d.id.clone())
            .collect();
        self.delete(&ids)
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

    /// Writes the live documents as generation g+1, commits it, then deletes generation g.
    pub fn compact(&mut self) -> Result<(), KvError> {
        let old = self.head;
        let mut head = Head {
            generation: old.generation + 1,
            segments: 0,
            last_len: 0,
        };
        let mut segment: Vec<u8> = Vec::new();
        let mut index = 0;
        for d in self.docs.values() {
            let line = Self::line(&Record::Upsert {
                id: d.id.clone(),
                text: d.text.clone(),
                metadata: d.metadata.clone(),
                vector: encode_vector(&d.vector),
            });
            if segment.len() + line.len() > SEGMENT_MAX {
                self.kv
                    .set(&segment_key(&self.tenant, head.generation, index), &segment)?;
                segment.clear();
                index += 1;
            }
            segment.extend_from_slice(&line);
        }
        self.kv
            .set(&segment_key(&self.tenant, head.generation, index), &segment)?;
        head.segments = index + 1;
        head.last_len = segment.len() as u64;
        let json = serde_json::to_vec(&head).map_err(|e| KvError::Store(e.to_string()))?;
        self.kv.set(&key(&self.tenant, "head"), &json)?;
        self.head = head;
        self.last = segment;
        self.records = self.docs.len() as u64;
        // Generation g and any older leftovers are garbage now.
        let prefix = key(&self.tenant, "log/");
        let current = format!("{prefix}{}/", head.generation);
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
