//! tvs-runtime: the WebAssembly runtime: one wasmtime `Engine` with the pooling allocator, the built-in guest
//! compiled once, and a fresh sandboxed instance for every data request.
//!
//! Invariants:
//! - A guest reaches data only through `collection` and `embedder`, implemented here on a
//!   [`GuestState`] that holds exactly one tenant's `Arc<TenantStore>`: no import takes a tenant
//!   name, so a guest cannot address another tenant.
//! - Every instance runs under an epoch deadline and a memory cap; a trap, a deadline or an
//!   exhausted cap ends that request with a [`GuestError`] and nothing else: the engine, the
//!   pool and other tenants carry on. Trap messages with wasm backtraces are logged, never
//!   returned to clients.
//! - Guests get a WASI context with nothing in it: no preopened directories, no environment,
//!   no sockets, no arguments.

pub mod plugins;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use tvs_guest_core::filter::Filter;
use tvs_store::doclog::LogError;
use tvs_store::store::{self as tenant_store, Quota, StoreError, TenantStore};

/// Bindings of `wit/` (world `guest`), generated once here.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "guest",
    });
}

pub use bindings::exports::tvs::store::handler::{Chunking, IngestRequest, IngestResponse, Mmr, SearchRequest};
pub use bindings::tvs::store::types::IngestDocument;
use bindings::tvs::store::types::{self as wit, Error, NewDocument};
pub use bindings::tvs::store::types::{CollectionInfo, Document, Hit, Metric as GuestMetric};

/// Paths of the guest components `build.rs` built: `HANDLER` (the built-in guest) and the test
/// guests `HOSTILE` and `BAD_IMPORT` (see `tests/guests/README.md`).
pub mod guest_paths {
    include!(concat!(env!("OUT_DIR"), "/guests.rs"));
}

/// Path of the built-in guest component.
pub const HANDLER_COMPONENT: &str = guest_paths::HANDLER;

/// Limits of a guest instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeLimits {
    /// Wall-clock budget of one request inside the guest (host calls included).
    pub deadline: Duration,
    /// Largest linear memory a guest may grow to.
    pub memory_bytes: usize,
    /// Guest instances that may exist at once (the pooling allocator's slots).
    pub max_instances: u32,
}

impl Default for RuntimeLimits {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(30),
            memory_bytes: 256 << 20,
            max_instances: 64,
        }
    }
}

/// How often the epoch advances; deadlines are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Why a request could not be served by a guest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuestError {
    /// The guest ran past its deadline and was stopped.
    #[error("the request ran longer than its {0:?} deadline and was stopped")]
    Deadline(Duration),
    /// The guest tried to grow its memory past the cap.
    #[error("the request needed more than {0} bytes of guest memory and was stopped")]
    Memory(usize),
    /// The guest trapped (a panic, an unreachable, a bad memory access).
    #[error("the guest failed while serving the request ({0})")]
    Trap(String),
    /// The guest returned a WIT error (bad input, quota, …).
    #[error("{message}")]
    Request { kind: RequestErrorKind, message: String },
    /// No instance slot was free.
    #[error("no guest instance slot is free; retry shortly")]
    Busy,
    /// Loading or linking failed.
    #[error("guest setup failed: {0}")]
    Setup(String),
}

/// The kind of a WIT error a guest returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestErrorKind {
    InvalidInput,
    /// Which quota: the WIT error names only its limit; the host remembers the rest.
    QuotaExceeded(Quota),
    TenantDeleted,
    NoEmbedder,
    Internal,
}

/// Advances `engine`'s epoch every `tick` on a thread of its own (epoch deadlines count these
/// ticks), until the returned flag is set or the engine is gone.
pub(crate) fn spawn_epoch_ticker(engine: &Engine, tick: Duration, name: &str) -> std::io::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let (ticker_engine, stopped) = (engine.weak(), stop.clone());
    std::thread::Builder::new().name(name.into()).spawn(move || {
        while !stopped.load(Ordering::Relaxed) {
            std::thread::sleep(tick);
            match ticker_engine.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => return,
            }
        }
    })?;
    Ok(stop)
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot load the guest component {path}: {reason}")]
pub struct RuntimeError {
    pub path: String,
    pub reason: String,
}

/// The error a refused memory growth traps with, so it can be told from other traps.
#[derive(Debug, thiserror::Error)]
#[error("guest memory would exceed its cap of {0} bytes")]
struct MemoryCapExceeded(usize);

/// Caps a guest's linear memory and tables; a refused growth traps (rather than making
/// `memory.grow` return -1, which Rust's allocator would turn into an abort anyway).
#[derive(Debug)]
struct Caps {
    memory_bytes: usize,
}

/// Largest table a guest may grow to (function references, not data).
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl ResourceLimiter for Caps {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            return Err(wasmtime::Error::new(MemoryCapExceeded(self.memory_bytes)));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Per-instance state: the calling tenant's store and an empty WASI context.
pub struct GuestState {
    store: Arc<TenantStore>,
    /// Which quota refused this request's write, if one did: the WIT error carries only the
    /// limit, and the client's message names the quota.
    refused_quota: Option<Quota>,
    wasi: WasiCtx,
    table: ResourceTable,
    caps: Caps,
}

impl std::fmt::Debug for GuestState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestState")
            .field("store", &self.store.dir().root())
            .field("caps", &self.caps)
            .finish()
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The engine and the pre-linked built-in guest.
pub struct Runtime {
    engine: Engine,
    handler: bindings::GuestPre<GuestState>,
    limits: RuntimeLimits,
    stop_ticker: Arc<AtomicBool>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

impl Runtime {
    /// An engine with the built-in guest.
    pub fn new(limits: RuntimeLimits) -> Result<Runtime, RuntimeError> {
        Self::with_component(Path::new(HANDLER_COMPONENT), limits)
    }

    /// An engine with the guest component at `path` (tests load hostile guests this way).
    pub fn with_component(path: &Path, limits: RuntimeLimits) -> Result<Runtime, RuntimeError> {
        let err = |reason: String| RuntimeError {
            path: path.display().to_string(),
            reason,
        };
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(limits.max_instances)
            .total_core_instances(limits.max_instances * 4)
            .total_memories(limits.max_instances * 2)
            .total_tables(limits.max_instances * 4)
            .total_stacks(limits.max_instances)
            .max_memory_size(limits.memory_bytes);
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| err(format!("{e:#}")))?;
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let component = Component::new(&engine, &bytes).map_err(|e| err(format!("{e:#}")))?;
        let mut linker: Linker<GuestState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| err(format!("{e:#}")))?;
        bindings::Guest::add_to_linker::<GuestState, HasSelf<GuestState>>(&mut linker, |state| state)
            .map_err(|e| err(format!("{e:#}")))?;
        let pre = linker.instantiate_pre(&component).map_err(|e| err(format!("{e:#}")))?;
        let handler = bindings::GuestPre::new(pre).map_err(|e| err(format!("{e:#}")))?;

        let stop_ticker = spawn_epoch_ticker(&engine, EPOCH_TICK, "tvs-epoch").map_err(|e| err(e.to_string()))?;
        Ok(Runtime {
            engine,
            handler,
            limits,
            stop_ticker,
        })
    }

    pub fn limits(&self) -> RuntimeLimits {
        self.limits
    }

    fn new_store(&self, tenant: Arc<TenantStore>) -> Store<GuestState> {
        let state = GuestState {
            store: tenant,
            refused_quota: None,
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            caps: Caps {
                memory_bytes: self.limits.memory_bytes,
            },
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.caps);
        let ticks = (self.limits.deadline.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        store
    }

    /// Runs `call` on a fresh instance bound to `tenant`, mapping traps to [`GuestError`].
    fn run<R>(
        &self,
        tenant: Arc<TenantStore>,
        call: impl FnOnce(&bindings::Guest, &mut Store<GuestState>) -> wasmtime::Result<Result<R, Error>>,
    ) -> Result<R, GuestError> {
        let mut store = self.new_store(tenant);
        let instance = match self.handler.instantiate(&mut store) {
            Ok(instance) => instance,
            Err(e) if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some() => {
                return Err(GuestError::Busy);
            }
            Err(e) => return Err(self.classify(e)),
        };
        match call(&instance, &mut store) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(GuestError::Request {
                kind: kind_of(&error, store.data().refused_quota),
                message: describe(&error, store.data().refused_quota),
            }),
            Err(e) => Err(self.classify(e)),
        }
    }

    fn classify(&self, error: wasmtime::Error) -> GuestError {
        let detail = format!("{error:?}");
        let outcome = if error.downcast_ref::<MemoryCapExceeded>().is_some() {
            GuestError::Memory(self.limits.memory_bytes)
        } else {
            match error.downcast_ref::<Trap>() {
                Some(Trap::Interrupt) => GuestError::Deadline(self.limits.deadline),
                Some(trap) => GuestError::Trap(trap.to_string()),
                None => GuestError::Trap(first_line(&format!("{error}"))),
            }
        };
        tracing::warn!(error = %detail, "guest request failed");
        outcome
    }

    /// Ingests through a fresh guest bound to `tenant`.
    pub fn ingest(&self, tenant: Arc<TenantStore>, request: &IngestRequest) -> Result<IngestResponse, GuestError> {
        self.run(tenant, |guest, store| {
            guest.tvs_store_handler().call_ingest(store, request)
        })
    }

    /// Gets documents through a fresh guest bound to `tenant`.
    pub fn get(&self, tenant: Arc<TenantStore>, ids: &[String]) -> Result<Vec<Document>, GuestError> {
        self.run(tenant, |guest, store| guest.tvs_store_handler().call_get(store, ids))
    }

    /// Deletes by ids and/or filter through a fresh guest bound to `tenant`.
    pub fn delete(&self, tenant: Arc<TenantStore>, ids: &[String], filter: Option<&String>) -> Result<u64, GuestError> {
        self.run(tenant, |guest, store| {
            guest.tvs_store_handler().call_delete(store, ids, filter)
        })
    }

    /// Collection facts through a fresh guest bound to `tenant`.
    pub fn stats(&self, tenant: Arc<TenantStore>) -> Result<CollectionInfo, GuestError> {
        self.run(tenant, |guest, store| guest.tvs_store_handler().call_stats(store))
    }

    /// Searches through a fresh guest bound to `tenant`.
    pub fn search(&self, tenant: Arc<TenantStore>, request: &SearchRequest) -> Result<Vec<Hit>, GuestError> {
        self.run(tenant, |guest, store| {
            guest.tvs_store_handler().call_search(store, request)
        })
    }
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_owned()
}

fn kind_of(error: &Error, quota: Option<Quota>) -> RequestErrorKind {
    match error {
        Error::InvalidInput(_) => RequestErrorKind::InvalidInput,
        Error::QuotaExceeded(_) => RequestErrorKind::QuotaExceeded(quota.unwrap_or(Quota::Documents)),
        Error::TenantDeleted => RequestErrorKind::TenantDeleted,
        Error::NoEmbedder => RequestErrorKind::NoEmbedder,
        Error::Internal(_) => RequestErrorKind::Internal,
    }
}

/// A client-facing message for a WIT error; `quota` names the quota behind `quota-exceeded`
/// (the documents quota when unknown: the only one other hosts of the guest enforce).
pub fn describe(error: &Error, quota: Option<Quota>) -> String {
    match error {
        Error::InvalidInput(m) => format!("invalid input: {m}"),
        Error::QuotaExceeded(limit) => format!(
            "quota exceeded: this tenant is limited to {limit} {}",
            quota.unwrap_or(Quota::Documents)
        ),
        Error::TenantDeleted => "the tenant was deleted".into(),
        Error::NoEmbedder => "this tenant has no embedding model; send vectors instead of text".into(),
        Error::Internal(m) => format!("internal error: {m}"),
    }
}

fn to_wit(error: StoreError) -> Error {
    match error {
        StoreError::InvalidDocument { .. } | StoreError::InvalidQuery(_) | StoreError::Filter(_) => {
            Error::InvalidInput(error.to_string())
        }
        StoreError::QuotaExceeded { limit, .. } => Error::QuotaExceeded(limit),
        StoreError::Deleted => Error::TenantDeleted,
        // Said plainly, without paths: the client can act on these (wait, retry, tell the operator).
        StoreError::Log(LogError::Io { ref source, .. }) if source.kind() == std::io::ErrorKind::StorageFull => {
            tracing::error!(error = ?error, "disk full");
            Error::Internal("the server's disk is full; the write was not stored".into())
        }
        StoreError::Log(LogError::Poisoned { .. }) => {
            tracing::error!(error = ?error, "write to a poisoned log");
            Error::Internal(
                "an earlier write of this tenant could not be made durable; retry, and the tenant is reopened from what its log holds".into(),
            )
        }
        other => {
            tracing::error!(error = ?other, "store error during a guest call");
            Error::Internal("the store could not complete the operation".into())
        }
    }
}

fn parse_metadata(index: usize, json: &str) -> Result<serde_json::Map<String, serde_json::Value>, Error> {
    match serde_json::from_str(json) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(Error::InvalidInput(format!(
            "document {index}: metadata must be a JSON object"
        ))),
        Err(e) => Err(Error::InvalidInput(format!(
            "document {index}: metadata is not JSON: {e}"
        ))),
    }
}

fn parse_filter(json: &str) -> Result<Filter, Error> {
    Filter::parse_text(json).map_err(|e| Error::InvalidInput(e.to_string()))
}

fn metadata_json(map: &serde_json::Map<String, serde_json::Value>) -> String {
    serde_json::to_string(map).unwrap_or_else(|_| "{}".into())
}

impl wit::Host for GuestState {}

/// What `collection`, `collection-read` and `embedder` do for a tenant, shared by the built-in
/// guests and tenant plugins (whose bindings add caps around these calls).
pub(crate) mod tenant_calls {
    use super::*;

    pub fn upsert(store: &TenantStore, documents: Vec<NewDocument>) -> Result<Vec<String>, Error> {
        upsert_noting_quota(store, documents, &mut None)
    }

    /// [`upsert`], setting `refused` to the quota that refused the write, if one did.
    pub fn upsert_noting_quota(
        store: &TenantStore,
        documents: Vec<NewDocument>,
        refused: &mut Option<Quota>,
    ) -> Result<Vec<String>, Error> {
        let docs = documents
            .into_iter()
            .enumerate()
            .map(|(index, d)| {
                Ok(tenant_store::NewDocument {
                    id: d.id,
                    text: d.text,
                    metadata: parse_metadata(index, &d.metadata)?,
                    vector: d.vector,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        store.upsert(docs).map_err(|e| {
            if let StoreError::QuotaExceeded { quota, .. } = &e {
                *refused = Some(*quota);
            }
            to_wit(e)
        })
    }

    pub fn delete(store: &TenantStore, ids: Vec<String>) -> Result<u64, Error> {
        store.delete(&ids).map_err(to_wit)
    }

    pub fn delete_where(store: &TenantStore, filter: String) -> Result<u64, Error> {
        let filter = parse_filter(&filter)?;
        store.delete_where(&filter).map_err(to_wit)
    }

    pub fn get(store: &TenantStore, ids: Vec<String>, include_vectors: bool) -> Result<Vec<Document>, Error> {
        Ok(store
            .get(&ids, include_vectors)
            .into_iter()
            .map(|d| Document {
                id: d.id,
                text: d.text,
                metadata: metadata_json(&d.metadata),
                vector: d.vector,
            })
            .collect())
    }

    pub fn search(
        store: &TenantStore,
        vector: Vec<f32>,
        k: u32,
        filter: Option<String>,
        include_vectors: bool,
    ) -> Result<Vec<Hit>, Error> {
        let filter = filter.as_deref().map(parse_filter).transpose()?;
        let query = tenant_store::SearchQuery {
            vector,
            k: k as usize,
            filter,
            mmr: None,
            include_vectors,
        };
        Ok(store
            .search(&query)
            .map_err(to_wit)?
            .into_iter()
            .map(|h| Hit {
                id: h.id,
                score: h.score,
                distance: h.distance,
                text: h.text,
                metadata: metadata_json(&h.metadata),
                vector: h.vector,
            })
            .collect())
    }

    pub fn info(store: &TenantStore) -> CollectionInfo {
        let config = store.config();
        CollectionInfo {
            count: store.count(),
            dims: config.dims as u32,
            metric: match config.metric {
                tvs_store::config::Metric::Cos => wit::Metric::Cos,
                tvs_store::config::Metric::Ip => wit::Metric::Ip,
                tvs_store::config::Metric::L2 => wit::Metric::L2,
            },
            embedding_model: config.embedding_model.clone(),
            bytes: store.memory_bytes(),
        }
    }

    pub fn model(store: &TenantStore) -> (String, u32) {
        let config = store.config();
        match config.embedding_model.as_str() {
            "none" => ("none".into(), 0),
            model => (model.to_owned(), config.dims as u32),
        }
    }

    pub fn embed(store: &TenantStore, texts: Vec<String>) -> Result<Vec<Vec<f32>>, Error> {
        let config = store.config();
        let embedder = tvs_embed::embedder_for(&config.embedding_model).map_err(|e| match e {
            tvs_embed::EmbedError::NoModel => Error::NoEmbedder,
            other => Error::Internal(other.to_string()),
        })?;
        embedder.embed(&texts, config.dims).map_err(|e| {
            tracing::warn!(error = %e, "embedding failed");
            Error::Internal(e.to_string())
        })
    }
}

impl bindings::tvs::store::collection::Host for GuestState {
    fn upsert(&mut self, documents: Vec<NewDocument>) -> Result<Vec<String>, Error> {
        tenant_calls::upsert_noting_quota(&self.store, documents, &mut self.refused_quota)
    }

    fn delete(&mut self, ids: Vec<String>) -> Result<u64, Error> {
        tenant_calls::delete(&self.store, ids)
    }

    fn delete_where(&mut self, filter: String) -> Result<u64, Error> {
        tenant_calls::delete_where(&self.store, filter)
    }

    fn get(&mut self, ids: Vec<String>, include_vectors: bool) -> Result<Vec<Document>, Error> {
        tenant_calls::get(&self.store, ids, include_vectors)
    }

    fn search(
        &mut self,
        vector: Vec<f32>,
        k: u32,
        filter: Option<String>,
        include_vectors: bool,
    ) -> Result<Vec<Hit>, Error> {
        tenant_calls::search(&self.store, vector, k, filter, include_vectors)
    }

    fn count(&mut self) -> u64 {
        self.store.count()
    }

    fn info(&mut self) -> CollectionInfo {
        tenant_calls::info(&self.store)
    }
}

impl bindings::tvs::store::embedder::Host for GuestState {
    fn model(&mut self) -> (String, u32) {
        tenant_calls::model(&self.store)
    }

    fn embed(&mut self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, Error> {
        tenant_calls::embed(&self.store, texts)
    }
}
