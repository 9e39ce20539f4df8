//! The storage of tvs on Spin (world `tvs:spin/storage`): `tvs:store/collection` over Spin's
//! key-value store and `tvs:store/embedder` over Spin's `generate-embeddings`. One instance
//! serves one request; `tenant.bind` (called by the front after it checked the key) opens that
//! tenant (its config and head), and every collection and embedder call works on it, reading
//! only the values it needs. The layout and commit protocol
//! are `tvs-kv-collection`'s; a tenant's key hash is one more key, `tvs/{tenant}/key`, outside
//! that layout's log, and the signing keys of tenant tokens are `tvs.signing_keys` (no tenant's
//! keys start so), replaced by compare-and-swap.

wit_bindgen::generate!({
    path: "../../wit/spin",
    world: "tvs:spin/storage",
    generate_all,
});

use std::cell::RefCell;

use exports::tvs::spin::tenant::{
    AdmitError, Guest as TenantGuest, IndexState, InstanceUsage, RateLimits, RateRefusal, Shape, TenantError,
};
use exports::tvs::store::collection::Guest as CollectionGuest;
use exports::tvs::store::embedder::Guest as EmbedderGuest;
use fermyon::spin::key_value::{Error as KvStoreError, Store};
use fermyon::spin::llm;
use tvs::store::types::{CollectionInfo, Document, Error, Hit, Metric as WitMetric, NewDocument};
use tvs_guest_core::documents as document_rules;
use tvs_guest_core::filter::Filter;
use tvs_kv_collection::{Config, KeyValue, KvCollection, KvError, Metric};

/// The Spin store, as the layout's [`KeyValue`]: reads and writes through
/// `fermyon:spin/key-value`, compare-and-swap through `wasi:keyvalue/atomics` on the same store.
struct SpinKv {
    store: Store,
    bucket: Option<wasi::keyvalue::store::Bucket>,
}

fn store_error(e: KvStoreError) -> KvError {
    KvError::Store(format!("{e:?}"))
}

fn bucket_error(e: wasi::keyvalue::store::Error) -> KvError {
    KvError::Store(format!("wasi:keyvalue: {e:?}"))
}

impl KeyValue for SpinKv {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.store.get(key).map_err(store_error)
    }
    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.store.set(key, value).map_err(store_error)
    }
    fn delete(&mut self, key: &str) -> Result<(), KvError> {
        self.store.delete(key).map_err(store_error)
    }
    fn keys(&self) -> Result<Vec<String>, KvError> {
        self.store.get_keys().map_err(store_error)
    }
    fn compare_and_swap(&mut self, key: &str, expected: Option<&[u8]>, value: &[u8]) -> Result<bool, KvError> {
        use wasi::keyvalue::atomics::{self, Cas, CasError};
        if self.bucket.is_none() {
            self.bucket = Some(wasi::keyvalue::store::open(STORE_LABEL).map_err(bucket_error)?);
        }
        let bucket = self.bucket.as_ref().expect("opened above");
        let cas = Cas::new(bucket, key).map_err(bucket_error)?;
        if cas.current().map_err(bucket_error)?.as_deref() != expected {
            return Ok(false);
        }
        match atomics::swap(cas, value) {
            Ok(()) => Ok(true),
            Err(CasError::CasFailed(_)) => Ok(false),
            Err(CasError::StoreError(e)) => Err(bucket_error(e)),
        }
    }
}

/// The store `spin.toml` lists in `key_value_stores`.
const STORE_LABEL: &str = "default";

thread_local! {
    static BOUND: RefCell<Option<KvCollection<SpinKv>>> = const { RefCell::new(None) };
}

fn open_store() -> Result<SpinKv, String> {
    Store::open(STORE_LABEL)
        .map(|store| SpinKv { store, bucket: None })
        .map_err(|e| format!("opening the key-value store: {e:?}"))
}

fn to_wit(error: KvError) -> Error {
    match error {
        KvError::InvalidInput(m) => Error::InvalidInput(m),
        KvError::QuotaExceeded(limit) => Error::QuotaExceeded(limit),
        KvError::NoTenant(_) => Error::TenantDeleted,
        other => Error::Internal(other.to_string()),
    }
}

fn with_bound<T>(f: impl FnOnce(&mut KvCollection<SpinKv>) -> Result<T, Error>) -> Result<T, Error> {
    BOUND.with(|bound| match bound.borrow_mut().as_mut() {
        Some(collection) => f(collection),
        None => Err(Error::Internal("no tenant is bound to this request".into())),
    })
}

fn parse_filter(json: &str) -> Result<Filter, Error> {
    Filter::parse_text(json).map_err(|e| Error::InvalidInput(e.to_string()))
}

fn metadata_object(index: usize, json: &str) -> Result<serde_json::Map<String, serde_json::Value>, Error> {
    match serde_json::from_str(json) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        _ => Err(Error::InvalidInput(format!(
            "document {index}: metadata must be a JSON object"
        ))),
    }
}

struct SpinCollection;

fn tenant_error(error: KvError) -> TenantError {
    match error {
        KvError::TenantExists(_) => TenantError::Exists,
        KvError::NoTenant(_) => TenantError::NotFound,
        KvError::InvalidInput(m) => TenantError::Invalid(m),
        other => TenantError::Store(other.to_string()),
    }
}

fn limits_from_wit(limits: &RateLimits) -> tvs_guest_core::rate::Limits {
    tvs_guest_core::rate::Limits {
        requests_per_second: limits.requests_per_second,
        ingest_bytes_per_second: limits.ingest_bytes_per_second,
    }
}

/// The key of the signing keys: outside `tvs/`, where every tenant's keys are.
const SIGNING_KEYS_KEY: &str = "tvs.signing_keys";

fn key_hash_key(tenant: &str) -> String {
    format!("tvs/{tenant}/key")
}

/// Tenant ids name keys: only the ids `tvs serve` accepts, so no id can reach into another
/// tenant's keys (`a/log` is refused).
fn checked_tenant(tenant: &str) -> Result<(), TenantError> {
    if tvs_guest_core::tenant_id::is_valid(tenant) {
        Ok(())
    } else {
        Err(TenantError::Invalid(tvs_guest_core::tenant_id::invalid_message(tenant)))
    }
}

impl TenantGuest for SpinCollection {
    fn create(tenant: String, shape: Shape) -> Result<(), TenantError> {
        checked_tenant(&tenant)?;
        let metric = match shape.metric.as_str() {
            "cos" => Metric::Cos,
            "ip" => Metric::Ip,
            "l2" => Metric::L2,
            other => {
                return Err(TenantError::Invalid(format!(
                    "metric must be cos, ip or l2, not {other:?}"
                )));
            }
        };
        let config = Config {
            dims: shape.dims as usize,
            metric,
            embedding_model: tvs_guest_core::models::canonical_model_name(&shape.embedding_model),
            max_documents: shape.max_documents,
            rate_limits: limits_from_wit(&shape.rate_limits),
        };
        let store = open_store().map_err(TenantError::Store)?;
        KvCollection::create(store, &tenant, config)
            .map(|_| ())
            .map_err(tenant_error)
    }

    fn set_key_hash(tenant: String, sha256: Vec<u8>) -> Result<(), TenantError> {
        checked_tenant(&tenant)?;
        if sha256.len() != 32 {
            return Err(TenantError::Invalid("a key hash is 32 bytes of SHA-256".into()));
        }
        let mut store = open_store().map_err(TenantError::Store)?;
        if store
            .get(&format!("tvs/{tenant}/head"))
            .map_err(tenant_error)?
            .is_none()
        {
            return Err(TenantError::NotFound);
        }
        store.set(&key_hash_key(&tenant), &sha256).map_err(tenant_error)
    }

    fn key_hash(tenant: String) -> Option<Vec<u8>> {
        checked_tenant(&tenant).ok()?;
        open_store().ok()?.get(&key_hash_key(&tenant)).ok()?
    }

    fn bind(tenant: String) -> Result<(), TenantError> {
        checked_tenant(&tenant)?;
        let store = open_store().map_err(TenantError::Store)?;
        let collection = KvCollection::open(store, &tenant).map_err(tenant_error)?;
        BOUND.with(|bound| *bound.borrow_mut() = Some(collection));
        Ok(())
    }

    fn index_info() -> Option<IndexState> {
        with_bound(|c| c.index_info().map_err(to_wit)).ok().map(|i| IndexState {
            clustered_rows: i.clustered_rows,
            tail_rows: i.tail_rows,
            clusters: i.clusters,
            nprobe: i.nprobe,
            recall: i.recall,
            values: i.values,
        })
    }

    fn usage() -> InstanceUsage {
        let reads = with_bound(|c| Ok(c.reads())).unwrap_or_default();
        InstanceUsage {
            gets: reads.gets,
            bytes: reads.bytes,
            get_micros: reads.get_micros,
            decode_micros: reads.decode_micros,
            memory_bytes: (core::arch::wasm32::memory_size(0) * 65_536) as u64,
        }
    }

    fn max_documents() -> Option<u64> {
        with_bound(|c| Ok(c.config().max_documents)).ok()
    }

    fn set_max_documents(limit: u64) -> Result<(), TenantError> {
        BOUND.with(|bound| match bound.borrow_mut().as_mut() {
            Some(collection) => collection.set_max_documents(limit).map_err(tenant_error),
            None => Err(TenantError::Invalid("no tenant is bound to this request".into())),
        })
    }

    fn current_rate_limits() -> Option<RateLimits> {
        with_bound(|c| {
            let limits = c.config().rate_limits;
            Ok(RateLimits {
                requests_per_second: limits.requests_per_second,
                ingest_bytes_per_second: limits.ingest_bytes_per_second,
            })
        })
        .ok()
    }

    fn set_rate_limits(limits: RateLimits) -> Result<(), TenantError> {
        BOUND.with(|bound| match bound.borrow_mut().as_mut() {
            Some(collection) => collection
                .set_rate_limits(limits_from_wit(&limits))
                .map_err(tenant_error),
            None => Err(TenantError::Invalid("no tenant is bound to this request".into())),
        })
    }

    fn admit(ingest_bytes: u64) -> Result<(), AdmitError> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        BOUND.with(|bound| match bound.borrow_mut().as_mut() {
            Some(collection) => match collection.admit(ingest_bytes, now_ms) {
                Ok(Ok(())) => Ok(()),
                Ok(Err(refusal)) => Err(AdmitError::Limited(RateRefusal {
                    limit: refusal.limit.to_owned(),
                    per_second: refusal.per_second,
                    retry_after_secs: refusal.retry_after_secs,
                })),
                Err(e) => Err(AdmitError::Store(e.to_string())),
            },
            None => Err(AdmitError::Store("no tenant is bound to this request".into())),
        })
    }

    fn signing_keys() -> Result<Option<String>, TenantError> {
        let store = open_store().map_err(TenantError::Store)?;
        match store.get(SIGNING_KEYS_KEY).map_err(tenant_error)? {
            Some(bytes) => String::from_utf8(bytes)
                .map(Some)
                .map_err(|_| TenantError::Store("the stored signing keys are not UTF-8".into())),
            None => Ok(None),
        }
    }

    fn replace_signing_keys(expected: Option<String>, keys: String) -> Result<bool, TenantError> {
        let mut store = open_store().map_err(TenantError::Store)?;
        store
            .compare_and_swap(
                SIGNING_KEYS_KEY,
                expected.as_deref().map(str::as_bytes),
                keys.as_bytes(),
            )
            .map_err(tenant_error)
    }
}

/// Spin's name of the one model it serves, `all-MiniLM-L6-v2`.
const SPIN_LOCAL_MODEL: &str = "all-minilm-l6-v2";

impl EmbedderGuest for SpinCollection {
    fn model() -> (String, u32) {
        with_bound(|c| {
            let config = c.config();
            Ok(match config.embedding_model.as_str() {
                "none" => ("none".to_owned(), 0),
                model => (model.to_owned(), config.dims as u32),
            })
        })
        .unwrap_or_else(|_| ("none".to_owned(), 0))
    }

    fn embed(texts: Vec<String>) -> Result<Vec<Vec<f32>>, Error> {
        let (model, dims) = with_bound(|c| Ok((c.config().embedding_model.clone(), c.config().dims)))?;
        if model == "none" {
            return Err(Error::NoEmbedder);
        }
        if !tvs_guest_core::models::is_local_model(&model) {
            return Err(Error::Internal(format!(
                "{model} is not served on Spin: tenants here use {} (Spin's {SPIN_LOCAL_MODEL}) or none",
                tvs_guest_core::models::LOCAL_MODEL
            )));
        }
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let result = llm::generate_embeddings(SPIN_LOCAL_MODEL, &texts).map_err(|e| {
            Error::Internal(match e {
                llm::Error::ModelNotSupported => format!(
                    "the platform does not serve {SPIN_LOCAL_MODEL}: list it in the component's ai_models, or create tenants with embedding_model none"
                ),
                llm::Error::RuntimeError(m) | llm::Error::InvalidInput(m) => format!("generate-embeddings: {m}"),
            })
        })?;
        if result.embeddings.len() != texts.len() || result.embeddings.iter().any(|v| v.len() != dims) {
            return Err(Error::Internal(format!(
                "generate-embeddings returned {} vectors for {} texts, not all of {dims} dimensions",
                result.embeddings.len(),
                texts.len()
            )));
        }
        Ok(result.embeddings)
    }
}

impl CollectionGuest for SpinCollection {
    fn upsert(documents: Vec<NewDocument>) -> Result<Vec<String>, Error> {
        with_bound(|c| {
            let (dims, cosine) = (c.config().dims, c.config().metric == Metric::Cos);
            // Checked here too, before ids are generated, so a refusal names the client's id
            // (or none) in tvs serve's words.
            let docs = documents
                .into_iter()
                .enumerate()
                .map(|(index, d)| {
                    let invalid = |reason: String| {
                        Error::InvalidInput(document_rules::invalid_document(index, d.id.as_deref(), &reason))
                    };
                    if let Some(id) = &d.id {
                        document_rules::check_id(id).map_err(invalid)?;
                    }
                    document_rules::check_vector(&d.vector, dims, cosine).map_err(invalid)?;
                    Ok(tvs_kv_collection::Document {
                        metadata: metadata_object(index, &d.metadata)?,
                        id: d.id.unwrap_or_else(|| format!("{:016x}{index}", random_id())),
                        text: d.text,
                        vector: d.vector,
                    })
                })
                .collect::<Result<Vec<_>, Error>>()?;
            c.upsert(docs).map_err(to_wit)
        })
    }

    fn delete(ids: Vec<String>) -> Result<u64, Error> {
        with_bound(|c| c.delete(&ids).map_err(to_wit))
    }

    fn delete_where(filter: String) -> Result<u64, Error> {
        let filter = parse_filter(&filter)?;
        with_bound(|c| c.delete_where(&filter).map_err(to_wit))
    }

    fn get(ids: Vec<String>, include_vectors: bool) -> Result<Vec<Document>, Error> {
        with_bound(|c| {
            Ok(c.get(&ids, include_vectors)
                .map_err(to_wit)?
                .into_iter()
                .map(|d| Document {
                    id: d.id,
                    text: d.text,
                    metadata: serde_json::Value::Object(d.metadata).to_string(),
                    vector: include_vectors.then_some(d.vector),
                })
                .collect())
        })
    }

    fn search(vector: Vec<f32>, k: u32, filter: Option<String>, include_vectors: bool) -> Result<Vec<Hit>, Error> {
        if k == 0 || k > 10_000 {
            return Err(Error::InvalidInput(format!("k must be between 1 and 10000, got {k}")));
        }
        let filter = filter.as_deref().map(parse_filter).transpose()?;
        with_bound(|c| {
            Ok(c.search(&vector, k as usize, filter.as_ref())
                .map_err(to_wit)?
                .into_iter()
                .map(|h| Hit {
                    id: h.document.id,
                    score: h.score,
                    distance: h.distance,
                    text: h.document.text,
                    metadata: serde_json::Value::Object(h.document.metadata).to_string(),
                    vector: include_vectors.then_some(h.document.vector),
                })
                .collect())
        })
    }

    fn count() -> u64 {
        with_bound(|c| Ok(c.count())).unwrap_or(0)
    }

    fn info() -> CollectionInfo {
        with_bound(|c| {
            let config = c.config();
            Ok(CollectionInfo {
                count: c.count(),
                dims: config.dims as u32,
                metric: match config.metric {
                    Metric::Cos => WitMetric::Cos,
                    Metric::Ip => WitMetric::Ip,
                    Metric::L2 => WitMetric::L2,
                },
                embedding_model: config.embedding_model.clone(),
                bytes: 0,
            })
        })
        .unwrap_or(CollectionInfo {
            count: 0,
            dims: 0,
            metric: WitMetric::Cos,
            embedding_model: "none".into(),
            bytes: 0,
        })
    }
}

/// A random 64-bit number, for ids the client left out: std seeds its hash keys from WASI's
/// random source.
fn random_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

export!(SpinCollection);
