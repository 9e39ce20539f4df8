//! The plugins' own engine and what one call of a plugin may do.
//!
//! Invariants: plugins never share the built-in guests' engine or instance slots; every call
//! gets a fresh instance with an epoch deadline, a memory cap, a wasm stack limit, and caps on
//! host calls and log bytes; a WASI context with nothing in it (no preopens, no environment, no
//! network) whose stdout and stderr are captured into the plugin's log.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use tvs_store::store::TenantStore;

use super::PluginLimits;
use crate::bindings::tvs::store::types::{CollectionInfo, Document, Error, Hit, NewDocument};
use crate::tenant_calls;

/// Bindings of the plugin worlds (`wit/plugin`). Imports are trappable so that a plugin past
/// its host-call cap is stopped; records are the built-in guests' types.
pub mod bindings {
    pub mod function {
        wasmtime::component::bindgen!({
            path: "../../wit/plugin",
            world: "tvs:plugin/function",
            imports: { default: trappable },
            with: { "tvs:store/types": crate::bindings::tvs::store::types },
        });
    }
    pub mod transform {
        wasmtime::component::bindgen!({
            path: "../../wit/plugin",
            world: "tvs:plugin/ingest-transform",
            imports: { default: trappable },
            with: {
                "tvs:store/types": crate::bindings::tvs::store::types,
                "tvs:store/embedder": super::function::tvs::store::embedder,
                "tvs:plugin/log": super::function::tvs::plugin::log,
            },
        });
    }
    pub mod reranker {
        wasmtime::component::bindgen!({
            path: "../../wit/plugin",
            world: "tvs:plugin/reranker",
            imports: { default: trappable },
            with: {
                "tvs:store/types": crate::bindings::tvs::store::types,
                "tvs:plugin/log": super::function::tvs::plugin::log,
            },
        });
    }
}

use bindings::function::tvs::plugin::log::Level;

/// How often the plugin engine's epoch advances.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// One line a plugin logged.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogLine {
    pub level: &'static str,
    pub message: String,
}

/// Why a call stopped, told apart from the plugin's own `err`.
#[derive(Debug, thiserror::Error)]
pub enum Stop {
    #[error("plugin memory would exceed its cap of {0} bytes")]
    Memory(usize),
    #[error("the plugin made more than {0} host calls in one call")]
    HostCalls(u64),
}

/// Per-call state of a plugin instance.
pub struct PluginState {
    tenant: Arc<TenantStore>,
    wasi: WasiCtx,
    table: ResourceTable,
    memory_cap: usize,
    pub(crate) peak_memory: usize,
    host_calls: u64,
    max_host_calls: u64,
    pub(crate) log: Vec<LogLine>,
    log_bytes: usize,
    max_log_bytes: usize,
    log_truncated: bool,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
}

impl std::fmt::Debug for PluginState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginState")
            .field("tenant", &self.tenant.dir().root())
            .field("host_calls", &self.host_calls)
            .finish_non_exhaustive()
    }
}

impl PluginState {
    fn host_call(&mut self) -> wasmtime::Result<()> {
        self.host_calls += 1;
        if self.host_calls > self.max_host_calls {
            return Err(wasmtime::Error::new(Stop::HostCalls(self.max_host_calls)));
        }
        Ok(())
    }

    fn push_log(&mut self, level: &'static str, message: String) {
        if self.log_truncated {
            return;
        }
        if self.log_bytes + message.len() > self.max_log_bytes {
            self.log_truncated = true;
            self.log.push(LogLine {
                level: "warn",
                message: format!(
                    "log cap of {} bytes reached; later lines were dropped",
                    self.max_log_bytes
                ),
            });
            return;
        }
        self.log_bytes += message.len();
        self.log.push(LogLine { level, message });
    }

    /// Moves what the plugin wrote to stdout and stderr into its log.
    pub(crate) fn collect_output(&mut self) {
        for (level, pipe) in [("info", self.stdout.clone()), ("error", self.stderr.clone())] {
            let bytes = pipe.contents();
            for line in String::from_utf8_lossy(&bytes).lines().filter(|l| !l.is_empty()) {
                self.push_log(level, line.to_owned());
            }
        }
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl ResourceLimiter for PluginState {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            return Err(wasmtime::Error::new(Stop::Memory(self.memory_cap)));
        }
        self.peak_memory = self.peak_memory.max(desired);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl crate::bindings::tvs::store::types::Host for PluginState {}

impl bindings::function::tvs::store::collection::Host for PluginState {
    fn upsert(&mut self, documents: Vec<NewDocument>) -> wasmtime::Result<Result<Vec<String>, Error>> {
        self.host_call()?;
        Ok(tenant_calls::upsert(&self.tenant, documents))
    }
    fn delete(&mut self, ids: Vec<String>) -> wasmtime::Result<Result<u64, Error>> {
        self.host_call()?;
        Ok(tenant_calls::delete(&self.tenant, ids))
    }
    fn delete_where(&mut self, filter: String) -> wasmtime::Result<Result<u64, Error>> {
        self.host_call()?;
        Ok(tenant_calls::delete_where(&self.tenant, filter))
    }
    fn get(&mut self, ids: Vec<String>, include_vectors: bool) -> wasmtime::Result<Result<Vec<Document>, Error>> {
        self.host_call()?;
        Ok(tenant_calls::get(&self.tenant, ids, include_vectors))
    }
    fn search(
        &mut self,
        vector: Vec<f32>,
        k: u32,
        filter: Option<String>,
        include_vectors: bool,
    ) -> wasmtime::Result<Result<Vec<Hit>, Error>> {
        self.host_call()?;
        Ok(tenant_calls::search(&self.tenant, vector, k, filter, include_vectors))
    }
    fn count(&mut self) -> wasmtime::Result<u64> {
        self.host_call()?;
        Ok(self.tenant.count())
    }
    fn info(&mut self) -> wasmtime::Result<CollectionInfo> {
        self.host_call()?;
        Ok(tenant_calls::info(&self.tenant))
    }
}

/// The read-only view is the collection's reads, under the same caps.
impl bindings::reranker::tvs::store::collection_read::Host for PluginState {
    fn get(&mut self, ids: Vec<String>, include_vectors: bool) -> wasmtime::Result<Result<Vec<Document>, Error>> {
        bindings::function::tvs::store::collection::Host::get(self, ids, include_vectors)
    }
    fn search(
        &mut self,
        vector: Vec<f32>,
        k: u32,
        filter: Option<String>,
        include_vectors: bool,
    ) -> wasmtime::Result<Result<Vec<Hit>, Error>> {
        bindings::function::tvs::store::collection::Host::search(self, vector, k, filter, include_vectors)
    }
    fn count(&mut self) -> wasmtime::Result<u64> {
        bindings::function::tvs::store::collection::Host::count(self)
    }
    fn info(&mut self) -> wasmtime::Result<CollectionInfo> {
        bindings::function::tvs::store::collection::Host::info(self)
    }
}

impl bindings::function::tvs::store::embedder::Host for PluginState {
    fn model(&mut self) -> wasmtime::Result<(String, u32)> {
        self.host_call()?;
        Ok(tenant_calls::model(&self.tenant))
    }
    fn embed(&mut self, texts: Vec<String>) -> wasmtime::Result<Result<Vec<Vec<f32>>, Error>> {
        self.host_call()?;
        Ok(tenant_calls::embed(&self.tenant, texts))
    }
}

impl bindings::function::tvs::plugin::log::Host for PluginState {
    fn write(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        self.host_call()?;
        let level = match level {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        self.push_log(level, message);
        Ok(())
    }
}

/// The plugin engine, its linkers and its epoch ticker.
pub struct Sandbox {
    pub(crate) engine: Engine,
    pub(crate) function_linker: Linker<PluginState>,
    pub(crate) transform_linker: Linker<PluginState>,
    pub(crate) reranker_linker: Linker<PluginState>,
    limits: PluginLimits,
    stop_ticker: Arc<AtomicBool>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// The engine configuration plugins are compiled and run with; the child compiler uses the
/// same, so its artifacts deserialize here.
pub fn engine_config(limits: &PluginLimits) -> Config {
    let mut pool = PoolingAllocationConfig::default();
    let instances = limits.max_instances;
    // componentize-py components hold ~38 core instances and several memories each.
    pool.total_component_instances(instances)
        .max_core_instances_per_component(64)
        .max_memories_per_component(8)
        .max_tables_per_component(64)
        .total_core_instances(instances * 64)
        .total_memories(instances * 8)
        .total_tables(instances * 64)
        .total_stacks(instances)
        .max_memory_size(limits.memory_bytes);
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .max_wasm_stack(limits.max_wasm_stack)
        // Built without wasmtime's `component-model-async` feature: async components are refused
        // when they are compiled.
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

impl Sandbox {
    pub fn new(limits: PluginLimits) -> wasmtime::Result<Sandbox> {
        let engine = Engine::new(&engine_config(&limits))?;
        let mut function_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut function_linker)?;
        bindings::function::Function::add_to_linker::<PluginState, HasSelf<PluginState>>(&mut function_linker, |s| s)?;
        let mut transform_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut transform_linker)?;
        bindings::transform::IngestTransform::add_to_linker::<PluginState, HasSelf<PluginState>>(
            &mut transform_linker,
            |s| s,
        )?;
        let mut reranker_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut reranker_linker)?;
        bindings::reranker::Reranker::add_to_linker::<PluginState, HasSelf<PluginState>>(&mut reranker_linker, |s| s)?;

        let stop_ticker = crate::spawn_epoch_ticker(&engine, EPOCH_TICK, "tvs-plugin-epoch")?;
        Ok(Sandbox {
            engine,
            function_linker,
            transform_linker,
            reranker_linker,
            limits,
            stop_ticker,
        })
    }

    /// A store for one call bound to `tenant`, stopped after `deadline`.
    pub fn new_store(&self, tenant: Arc<TenantStore>, deadline: Duration) -> Store<PluginState> {
        let stdout = MemoryOutputPipe::new(self.limits.max_log_bytes);
        let stderr = MemoryOutputPipe::new(self.limits.max_log_bytes);
        let wasi = WasiCtx::builder().stdout(stdout.clone()).stderr(stderr.clone()).build();
        let state = PluginState {
            tenant,
            wasi,
            table: ResourceTable::new(),
            memory_cap: self.limits.memory_bytes,
            peak_memory: 0,
            host_calls: 0,
            max_host_calls: self.limits.max_host_calls,
            log: Vec::new(),
            log_bytes: 0,
            max_log_bytes: self.limits.max_log_bytes,
            log_truncated: false,
            stdout,
            stderr,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| state);
        let ticks = (deadline.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        store
    }

    /// Compiles a component in this process (the child compiler calls this).
    pub fn compile(&self, bytes: &[u8]) -> wasmtime::Result<Vec<u8>> {
        self.engine.precompile_component(bytes)
    }

    /// Loads an artifact this host compiled.
    ///
    /// The caller has checked the artifact's sha256 against the one recorded when this host
    /// wrote it, for this engine's compatibility hash.
    pub fn load_artifact(&self, artifact: &[u8]) -> wasmtime::Result<Component> {
        // SAFETY: `deserialize` trusts its input to be this engine's own compilation output.
        // Only artifacts compiled by this host (in a child process with the same engine
        // configuration) are passed here, after their recorded sha256 was checked, so no
        // tampered or foreign bytes reach it.
        #[allow(unsafe_code)]
        unsafe {
            Component::deserialize(&self.engine, artifact)
        }
    }

    /// A hex string that changes whenever compiled artifacts stop being loadable (a wasmtime
    /// upgrade, another engine configuration).
    pub fn engine_hash(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut hasher);
        format!("{:016x}", hasher.finish())
    }
}
