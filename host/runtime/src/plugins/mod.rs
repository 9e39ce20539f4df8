//! Tenant plugins: components a tenant uploads, validated, compiled in a child process, stored
//! under the tenant's directory, and run one fresh sandboxed instance per call in their own
//! engine. The contract is `wit/plugin` (package `tvs:plugin@0.1.0`); `docs/plugins.md` is the
//! author's guide.
//!
//! Invariants:
//! - A plugin is reached only through the tenant whose directory holds it: every call takes
//!   that tenant's open store, and names never cross tenants.
//! - Only bytes this host compiled are deserialized, checked by the sha256 recorded when they
//!   were written (see [`registry`]).
//! - Every call is bounded: deadline, memory, wasm stack, output, log bytes and host calls.

mod inspect;
pub mod registry;
pub mod sandbox;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tvs_store::store::TenantStore;
use tvs_store::tenant::{StoreDir, TenantId};
use wasmtime::Trap;

pub use inspect::PluginKind;
use registry::{Artifact, TenantPlugins, sha256_hex};
pub use registry::{Meta, VersionInfo};
pub use sandbox::LogLine;
use sandbox::{PluginState, Sandbox, Stop};

/// Limits of plugins: per call, and per tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginLimits {
    /// Deadline of a `function` call.
    pub function_deadline: Duration,
    /// Deadline of an ingest transform or a re-ranker (they sit in a client's request path).
    pub hook_deadline: Duration,
    /// Largest linear memory of a plugin instance.
    pub memory_bytes: usize,
    /// Largest wasm stack.
    pub max_wasm_stack: usize,
    /// Largest response (`ok` or `err` text) of one call.
    pub max_output_bytes: usize,
    /// Log bytes kept per call (stdout and stderr included).
    pub max_log_bytes: usize,
    /// Calls into tvs (collection, embedder, log) per plugin call.
    pub max_host_calls: u64,
    /// Plugin instances that may exist at once, over all tenants (their own pool).
    pub max_instances: u32,
    /// Plugin calls that may run at once over all tenants, and per tenant: fewer than the cores,
    /// so that plugins can never take all the CPU from searches. Others wait up to
    /// `queue_wait`, then get "busy".
    pub max_running: usize,
    pub max_running_per_tenant: usize,
    pub queue_wait: Duration,
    /// Largest component accepted.
    pub max_component_bytes: usize,
    /// Plugins per tenant.
    pub max_plugins: usize,
    /// Versions kept per plugin (the active one always).
    pub max_versions: usize,
    /// Bytes of components and artifacts per tenant.
    pub max_stored_bytes: u64,
    /// Wall-clock limit of compiling one upload (the child is killed after it).
    pub compile_timeout: Duration,
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            function_deadline: Duration::from_secs(2),
            hook_deadline: Duration::from_millis(200),
            memory_bytes: 64 << 20,
            max_wasm_stack: 512 << 10,
            max_output_bytes: 1 << 20,
            max_log_bytes: 64 << 10,
            max_host_calls: 10_000,
            max_instances: 16,
            max_running: cores_but_one(),
            max_running_per_tenant: cores_but_one().div_ceil(2),
            queue_wait: Duration::from_secs(1),
            max_component_bytes: 40 << 20,
            max_plugins: 20,
            max_versions: 5,
            max_stored_bytes: 512 << 20,
            compile_timeout: Duration::from_secs(120),
        }
    }
}

fn cores_but_one() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .saturating_sub(1)
        .max(1)
}

/// Admission of plugin calls: at most `max_running` at once, `max_running_per_tenant` per tenant.
#[derive(Debug, Default)]
struct Running {
    total: usize,
    by_tenant: HashMap<PathBuf, usize>,
}

/// A running call's place; given back on drop.
struct Admitted<'p> {
    plugins: &'p Plugins,
    tenant: PathBuf,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        let mut running = self.plugins.running.lock().unwrap_or_else(|p| p.into_inner());
        running.total -= 1;
        if let Some(n) = running.by_tenant.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                running.by_tenant.remove(&self.tenant);
            }
        }
        drop(running);
        self.plugins.admitted.notify_all();
    }
}

/// How uploads are compiled.
#[derive(Debug, Clone)]
pub enum Compiler {
    /// Re-executes `program plugin-compile` (the `tvs` binary) under CPU-time and address-space
    /// limits and a wall-clock timeout, so a compile bomb kills the child, not the server.
    Subprocess { program: PathBuf },
    /// Compiles in this process: only for tests of this crate, never for a server.
    InProcess,
}

/// Why a plugin operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    #[error("no plugin named {0}")]
    NotFound(String),
    #[error("invalid plugin: {0}")]
    Invalid(String),
    #[error("plugin quota: {0}")]
    Quota(String),
    #[error("{name} is a {kind} plugin, not a {wanted}")]
    WrongKind {
        name: String,
        kind: &'static str,
        wanted: &'static str,
    },
    #[error("the plugin returned an error: {0}")]
    Plugin(String),
    #[error("the plugin ran longer than its {0:?} deadline and was stopped")]
    Deadline(Duration),
    #[error("the plugin needed more than {0} bytes of memory and was stopped")]
    Memory(usize),
    #[error("the plugin made more than {0} calls into tvs and was stopped")]
    HostCalls(u64),
    #[error("the plugin's output is larger than {0} bytes")]
    OutputTooLarge(usize),
    #[error("the plugin failed ({0})")]
    Trap(String),
    #[error("no plugin instance slot is free; retry shortly")]
    Busy,
    #[error("plugin storage failed: {0}")]
    Io(#[from] std::io::Error),
}

/// What one call of a plugin did.
#[derive(Debug, Clone, Serialize)]
pub struct CallReport {
    pub version: u32,
    pub log: Vec<LogLine>,
    pub elapsed_ms: f64,
    pub peak_memory_bytes: usize,
}

/// A plugin's description for `GET /v1/plugins/{name}`.
#[derive(Debug, Clone, Serialize)]
pub struct PluginInfo {
    pub name: String,
    pub kind: PluginKind,
    pub active: u32,
    pub versions: Vec<VersionInfo>,
    pub calls: u64,
    pub failures: u64,
    pub last_error: Option<String>,
    /// For an ingest transform: whether every ingest of the tenant goes through it.
    pub enabled: bool,
}

#[derive(Debug, Default, Clone)]
struct Counters {
    calls: u64,
    failures: u64,
    last_error: Option<String>,
}

enum Pre {
    Function(sandbox::bindings::function::FunctionPre<PluginState>),
    Transform(sandbox::bindings::transform::IngestTransformPre<PluginState>),
    Reranker(sandbox::bindings::reranker::RerankerPre<PluginState>),
}

struct Loaded {
    version: u32,
    kind: PluginKind,
    pre: Pre,
}

type Key = (PathBuf, String);

/// The plugins of every tenant of this process.
pub struct Plugins {
    sandbox: Sandbox,
    limits: PluginLimits,
    compiler: Compiler,
    engine_hash: String,
    /// Serialises uploads, activations and deletions (meta read-modify-write).
    registry_lock: Mutex<()>,
    loaded: Mutex<HashMap<Key, Arc<Loaded>>>,
    counters: Mutex<HashMap<Key, Counters>>,
    running: Mutex<Running>,
    admitted: std::sync::Condvar,
}

impl std::fmt::Debug for Plugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugins")
            .field("limits", &self.limits)
            .field("compiler", &self.compiler)
            .finish_non_exhaustive()
    }
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn check_name(name: &str) -> Result<(), PluginError> {
    TenantId::new(name).map(|_| ()).map_err(|_| {
        PluginError::Invalid(format!(
            "plugin name {name:?}: names follow the tenant-id rule ^[A-Za-z0-9][A-Za-z0-9_-]{{0,63}}$"
        ))
    })
}

impl Plugins {
    pub fn new(limits: PluginLimits, compiler: Compiler) -> Result<Plugins, crate::RuntimeError> {
        let sandbox = Sandbox::new(limits).map_err(|e| crate::RuntimeError {
            path: "plugin engine".into(),
            reason: format!("{e:#}"),
        })?;
        Ok(Plugins {
            engine_hash: sandbox.engine_hash(),
            sandbox,
            limits,
            compiler,
            registry_lock: Mutex::new(()),
            loaded: Mutex::new(HashMap::new()),
            counters: Mutex::new(HashMap::new()),
            running: Mutex::new(Running::default()),
            admitted: std::sync::Condvar::new(),
        })
    }

    pub fn limits(&self) -> PluginLimits {
        self.limits
    }

    fn key(dir: &StoreDir, name: &str) -> Key {
        (dir.root().to_owned(), name.to_owned())
    }

    fn forget(&self, dir: &StoreDir, name: &str) {
        self.loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&Self::key(dir, name));
    }

    /// Compiles untrusted bytes the configured way.
    fn compile(&self, bytes: &[u8]) -> Result<Vec<u8>, PluginError> {
        match &self.compiler {
            Compiler::InProcess => self
                .sandbox
                .compile(bytes)
                .map_err(|e| PluginError::Invalid(format!("it does not compile: {}", first_line(&format!("{e:#}"))))),
            Compiler::Subprocess { program } => compile_in_child(program, &self.limits, bytes),
        }
    }

    /// Validates, compiles and stores a new version of `name` for the tenant of `dir`, and
    /// makes it active.
    pub fn upload(&self, dir: &StoreDir, name: &str, bytes: &[u8]) -> Result<VersionInfo, PluginError> {
        check_name(name)?;
        if bytes.len() > self.limits.max_component_bytes {
            return Err(PluginError::Invalid(format!(
                "the component is {} bytes; the limit is {}",
                bytes.len(),
                self.limits.max_component_bytes
            )));
        }
        inspect::check_format(bytes).map_err(PluginError::Invalid)?;
        let artifact = self.compile(bytes)?;
        let component = self
            .sandbox
            .load_artifact(&artifact)
            .map_err(|e| PluginError::Invalid(first_line(&format!("{e:#}"))))?;
        let (kind, imports, exports) =
            inspect::check_component(&self.sandbox.engine, &component).map_err(PluginError::Invalid)?;
        // Linking proves every import has the type its world gives it.
        self.prepare(kind, &component)
            .map_err(|e| PluginError::Invalid(format!("it does not link: {}", first_line(&e))))?;

        let _guard = self.registry_lock.lock().unwrap_or_else(|p| p.into_inner());
        let plugins = TenantPlugins::new(dir);
        let existing = plugins.meta(name)?;
        if existing.is_none() && plugins.names()?.len() >= self.limits.max_plugins {
            return Err(PluginError::Quota(format!(
                "a tenant may have {} plugins",
                self.limits.max_plugins
            )));
        }
        let stored = plugins.stored_bytes()?;
        if stored + (bytes.len() + artifact.len()) as u64 > self.limits.max_stored_bytes {
            return Err(PluginError::Quota(format!(
                "plugins of a tenant may store {} bytes; {stored} are used",
                self.limits.max_stored_bytes
            )));
        }
        let mut meta = existing.unwrap_or(Meta {
            name: name.to_owned(),
            active: 0,
            next_version: 1,
            versions: Vec::new(),
        });
        let version = meta.next_version;
        let info = VersionInfo {
            version,
            kind,
            sha256: sha256_hex(bytes),
            bytes: bytes.len() as u64,
            imports,
            exports,
            uploaded_at: now_unix(),
            artifact: Some(Artifact {
                engine: self.engine_hash.clone(),
                sha256: sha256_hex(&artifact),
            }),
        };
        plugins.write_file(name, &plugins.component_path(name, version), bytes)?;
        plugins.write_file(
            name,
            &plugins.artifact_path(name, version, &self.engine_hash),
            &artifact,
        )?;
        meta.next_version += 1;
        meta.active = version;
        meta.versions.push(info.clone());
        while meta.versions.len() > self.limits.max_versions {
            let oldest = meta.versions.iter().position(|v| v.version != meta.active).unwrap_or(0);
            meta.versions.remove(oldest);
        }
        plugins.write_meta(&meta)?;
        plugins.remove_unreferenced(&meta, &self.engine_hash);
        self.forget(dir, name);
        Ok(info)
    }

    fn prepare(&self, kind: PluginKind, component: &wasmtime::component::Component) -> Result<Pre, String> {
        let err = |e: wasmtime::Error| format!("{e:#}");
        Ok(match kind {
            PluginKind::Function => {
                let pre = self.sandbox.function_linker.instantiate_pre(component).map_err(err)?;
                Pre::Function(sandbox::bindings::function::FunctionPre::new(pre).map_err(err)?)
            }
            PluginKind::IngestTransform => {
                let pre = self.sandbox.transform_linker.instantiate_pre(component).map_err(err)?;
                Pre::Transform(sandbox::bindings::transform::IngestTransformPre::new(pre).map_err(err)?)
            }
            PluginKind::Reranker => {
                let pre = self.sandbox.reranker_linker.instantiate_pre(component).map_err(err)?;
                Pre::Reranker(sandbox::bindings::reranker::RerankerPre::new(pre).map_err(err)?)
            }
        })
    }

    /// The names of the tenant's plugins with their versions and counters.
    pub fn list(&self, dir: &StoreDir) -> Result<Vec<PluginInfo>, PluginError> {
        let plugins = TenantPlugins::new(dir);
        plugins.names()?.iter().map(|name| self.info(dir, name)).collect()
    }

    pub fn info(&self, dir: &StoreDir, name: &str) -> Result<PluginInfo, PluginError> {
        check_name(name).map_err(|_| PluginError::NotFound(name.to_owned()))?;
        let meta = TenantPlugins::new(dir)
            .meta(name)?
            .ok_or_else(|| PluginError::NotFound(name.to_owned()))?;
        let counters = self
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&Self::key(dir, name))
            .cloned()
            .unwrap_or_default();
        let kind = meta
            .active_version()
            .map(|v| v.kind)
            .ok_or_else(|| PluginError::NotFound(name.to_owned()))?;
        let enabled = TenantPlugins::new(dir).enabled_transform()?.as_deref() == Some(name);
        Ok(PluginInfo {
            enabled,
            name: meta.name,
            kind,
            active: meta.active,
            versions: meta.versions,
            calls: counters.calls,
            failures: counters.failures,
            last_error: counters.last_error,
        })
    }

    /// Makes a kept version active again (a roll back, or forward).
    pub fn activate(&self, dir: &StoreDir, name: &str, version: u32) -> Result<PluginInfo, PluginError> {
        check_name(name).map_err(|_| PluginError::NotFound(name.to_owned()))?;
        {
            let _guard = self.registry_lock.lock().unwrap_or_else(|p| p.into_inner());
            let plugins = TenantPlugins::new(dir);
            let mut meta = plugins
                .meta(name)?
                .ok_or_else(|| PluginError::NotFound(name.to_owned()))?;
            if !meta.versions.iter().any(|v| v.version == version) {
                let kept: Vec<String> = meta.versions.iter().map(|v| v.version.to_string()).collect();
                return Err(PluginError::Invalid(format!(
                    "{name} has no version {version}; kept versions: {}",
                    kept.join(", ")
                )));
            }
            meta.active = version;
            plugins.write_meta(&meta)?;
            self.forget(dir, name);
        }
        self.info(dir, name)
    }

    pub fn delete(&self, dir: &StoreDir, name: &str) -> Result<(), PluginError> {
        check_name(name).map_err(|_| PluginError::NotFound(name.to_owned()))?;
        let _guard = self.registry_lock.lock().unwrap_or_else(|p| p.into_inner());
        let plugins = TenantPlugins::new(dir);
        if !plugins.delete(name)? {
            return Err(PluginError::NotFound(name.to_owned()));
        }
        if plugins.enabled_transform()?.as_deref() == Some(name) {
            plugins.set_enabled_transform(None)?;
        }
        self.forget(dir, name);
        self.counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&Self::key(dir, name));
        Ok(())
    }

    /// Makes every ingest of the tenant go through the ingest transform `name`.
    pub fn enable_transform(&self, dir: &StoreDir, name: &str) -> Result<PluginInfo, PluginError> {
        let kind = self.info(dir, name)?.kind;
        if kind != PluginKind::IngestTransform {
            return Err(PluginError::WrongKind {
                name: name.to_owned(),
                kind: kind.as_str(),
                wanted: PluginKind::IngestTransform.as_str(),
            });
        }
        {
            let _guard = self.registry_lock.lock().unwrap_or_else(|p| p.into_inner());
            TenantPlugins::new(dir).set_enabled_transform(Some(name))?;
        }
        self.info(dir, name)
    }

    /// Stops running the tenant's ingest transform `name` (if it is the enabled one).
    pub fn disable_transform(&self, dir: &StoreDir, name: &str) -> Result<PluginInfo, PluginError> {
        let info = self.info(dir, name)?;
        let _guard = self.registry_lock.lock().unwrap_or_else(|p| p.into_inner());
        let plugins = TenantPlugins::new(dir);
        if plugins.enabled_transform()?.as_deref() == Some(name) {
            plugins.set_enabled_transform(None)?;
        }
        Ok(PluginInfo { enabled: false, ..info })
    }

    /// The documents an ingest of `tenant` stores: `documents`, through the enabled ingest
    /// transform if there is one.
    pub fn before_ingest(
        &self,
        tenant: &Arc<TenantStore>,
        documents: Vec<crate::IngestDocument>,
    ) -> Result<Vec<crate::IngestDocument>, PluginError> {
        match TenantPlugins::new(tenant.dir()).enabled_transform()? {
            Some(name) => self.call_transform(tenant.clone(), &name, &documents).0,
            None => Ok(documents),
        }
    }

    /// The active version of a plugin, compiled and linked (cached until it changes).
    fn load(&self, dir: &StoreDir, name: &str) -> Result<Arc<Loaded>, PluginError> {
        check_name(name).map_err(|_| PluginError::NotFound(name.to_owned()))?;
        let key = Self::key(dir, name);
        if let Some(loaded) = self.loaded.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(loaded.clone());
        }
        let plugins = TenantPlugins::new(dir);
        let meta = plugins
            .meta(name)?
            .ok_or_else(|| PluginError::NotFound(name.to_owned()))?;
        let version = meta
            .active_version()
            .cloned()
            .ok_or_else(|| PluginError::NotFound(name.to_owned()))?;
        let component = self.load_component(&plugins, &meta, &version)?;
        let pre = self
            .prepare(version.kind, &component)
            .map_err(|e| PluginError::Trap(format!("linking failed: {}", first_line(&e))))?;
        let loaded = Arc::new(Loaded {
            version: version.version,
            kind: version.kind,
            pre,
        });
        self.loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, loaded.clone());
        Ok(loaded)
    }

    /// This host's artifact of a version, checked; compiled again from the component when it
    /// is missing, damaged, or from another engine.
    fn load_component(
        &self,
        plugins: &TenantPlugins,
        meta: &Meta,
        version: &VersionInfo,
    ) -> Result<wasmtime::component::Component, PluginError> {
        let name = &meta.name;
        let path = plugins.artifact_path(name, version.version, &self.engine_hash);
        let recorded = version.artifact.as_ref().filter(|a| a.engine == self.engine_hash);
        if let (Some(recorded), Ok(bytes)) = (recorded, plugins.read(&path)) {
            if sha256_hex(&bytes) == recorded.sha256 {
                return self
                    .sandbox
                    .load_artifact(&bytes)
                    .map_err(|e| PluginError::Trap(format!("loading failed: {}", first_line(&format!("{e:#}")))));
            }
            tracing::warn!(plugin = %name, version = version.version, "compiled artifact fails its checksum; compiling again");
        }
        let component = plugins.read(&plugins.component_path(name, version.version))?;
        if sha256_hex(&component) != version.sha256 {
            return Err(PluginError::Trap(format!(
                "the stored component of {name} v{} fails its checksum; upload it again",
                version.version
            )));
        }
        let artifact = self.compile(&component)?;
        let _guard = self.registry_lock.lock().unwrap_or_else(|p| p.into_inner());
        plugins.write_file(name, &path, &artifact)?;
        if let Some(mut fresh) = plugins.meta(name)?
            && let Some(v) = fresh.versions.iter_mut().find(|v| v.version == version.version)
        {
            v.artifact = Some(Artifact {
                engine: self.engine_hash.clone(),
                sha256: sha256_hex(&artifact),
            });
            plugins.write_meta(&fresh)?;
            // Artifacts of another engine are never loaded again.
            plugins.remove_unreferenced(&fresh, &self.engine_hash);
        }
        self.sandbox
            .load_artifact(&artifact)
            .map_err(|e| PluginError::Trap(format!("loading failed: {}", first_line(&format!("{e:#}")))))
    }

    fn record(&self, dir: &StoreDir, name: &str, outcome: Result<(), String>) {
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let entry = counters.entry(Self::key(dir, name)).or_default();
        entry.calls += 1;
        if let Err(e) = outcome {
            entry.failures += 1;
            entry.last_error = Some(e);
        }
    }

    /// Waits for a place to run a call of `tenant`'s plugin, or gives up after `queue_wait`.
    fn admit(&self, tenant: &Path) -> Result<Admitted<'_>, PluginError> {
        let deadline = Instant::now() + self.limits.queue_wait;
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let mine = running.by_tenant.get(tenant).copied().unwrap_or(0);
            if running.total < self.limits.max_running && mine < self.limits.max_running_per_tenant {
                running.total += 1;
                *running.by_tenant.entry(tenant.to_owned()).or_default() += 1;
                return Ok(Admitted {
                    plugins: self,
                    tenant: tenant.to_owned(),
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(PluginError::Busy);
            }
            running = self
                .admitted
                .wait_timeout(running, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Runs one call of the active version of `name` on a fresh instance bound to `tenant`;
    /// `call` returns `None` when the plugin is not of the kind it wants.
    fn run<T, U>(
        &self,
        tenant: Arc<TenantStore>,
        name: &str,
        wanted: PluginKind,
        check: impl FnOnce(T) -> Result<U, PluginError>,
        call: impl FnOnce(&Pre, &mut wasmtime::Store<PluginState>) -> Option<wasmtime::Result<T>>,
    ) -> (Result<U, PluginError>, Option<CallReport>) {
        let dir = tenant.dir().clone();
        let loaded = match self.load(&dir, name) {
            Ok(loaded) => loaded,
            Err(e) => return (Err(e), None),
        };
        let deadline = match wanted {
            PluginKind::Function => self.limits.function_deadline,
            PluginKind::IngestTransform | PluginKind::Reranker => self.limits.hook_deadline,
        };
        let _admitted = match self.admit(dir.root()) {
            Ok(admitted) => admitted,
            Err(e) => {
                self.record(&dir, name, Err(e.to_string()));
                return (Err(e), None);
            }
        };
        let started = Instant::now();
        let mut store = self.sandbox.new_store(tenant, deadline);
        let Some(result) = call(&loaded.pre, &mut store) else {
            return (
                Err(PluginError::WrongKind {
                    name: name.to_owned(),
                    kind: loaded.kind.as_str(),
                    wanted: wanted.as_str(),
                }),
                None,
            );
        };
        let result = self.settle(result, deadline).and_then(check);
        let state = store.data_mut();
        state.collect_output();
        let report = CallReport {
            version: loaded.version,
            log: std::mem::take(&mut state.log),
            elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
            peak_memory_bytes: state.peak_memory,
        };
        self.record(&dir, name, result.as_ref().map(|_| ()).map_err(ToString::to_string));
        (result, Some(report))
    }

    /// Calls the `function` plugin `name` of `tenant` with `request`: its `ok` text, or
    /// [`PluginError::Plugin`] with its `err` text; with what the call did.
    pub fn call_function(
        &self,
        tenant: Arc<TenantStore>,
        name: &str,
        request: &str,
    ) -> (Result<String, PluginError>, Option<CallReport>) {
        let max = self.limits.max_output_bytes;
        self.run(
            tenant,
            name,
            PluginKind::Function,
            |answer: Result<String, String>| {
                let text = answer.as_ref().map_or_else(String::len, String::len);
                if text > max {
                    return Err(PluginError::OutputTooLarge(max));
                }
                answer.map_err(PluginError::Plugin)
            },
            |pre, store| match pre {
                Pre::Function(pre) => Some(
                    pre.instantiate(&mut *store)
                        .and_then(|i| i.call_handle(&mut *store, request)),
                ),
                _ => None,
            },
        )
    }

    /// Runs the ingest transform `name` of `tenant` over the documents of one ingest.
    pub fn call_transform(
        &self,
        tenant: Arc<TenantStore>,
        name: &str,
        documents: &[crate::IngestDocument],
    ) -> (Result<Vec<crate::IngestDocument>, PluginError>, Option<CallReport>) {
        let size = |docs: &[crate::IngestDocument]| -> usize {
            docs.iter()
                .map(|d| {
                    d.id.as_ref().map_or(0, String::len)
                        + d.text.as_ref().map_or(0, String::len)
                        + d.metadata.as_ref().map_or(0, String::len)
                        + d.vector.as_ref().map_or(0, |v| v.len() * 4)
                })
                .sum()
        };
        // A transform may add (its own chunking), within reason.
        let max = self.limits.max_output_bytes.max(size(documents) * 4);
        self.run(
            tenant,
            name,
            PluginKind::IngestTransform,
            |answer: Result<Vec<crate::IngestDocument>, String>| match answer {
                Ok(docs) if size(&docs) > max => Err(PluginError::OutputTooLarge(max)),
                Ok(docs) => Ok(docs),
                Err(text) => Err(PluginError::Plugin(text)),
            },
            |pre, store| match pre {
                Pre::Transform(pre) => Some(
                    pre.instantiate(&mut *store)
                        .and_then(|i| i.tvs_plugin_transform().call_transform(&mut *store, documents)),
                ),
                _ => None,
            },
        )
    }

    /// Runs the re-ranker `name` of `tenant` over the hits of one search. It may re-order and
    /// drop hits; a hit it was not given is refused, and each hit comes back as it was given.
    pub fn call_rerank(
        &self,
        tenant: Arc<TenantStore>,
        name: &str,
        query: Option<&str>,
        hits: &[crate::Hit],
    ) -> (Result<Vec<crate::Hit>, PluginError>, Option<CallReport>) {
        self.run(
            tenant,
            name,
            PluginKind::Reranker,
            |answer: Result<Vec<crate::Hit>, String>| {
                let ranked = answer.map_err(PluginError::Plugin)?;
                let mut seen = std::collections::HashSet::new();
                ranked
                    .into_iter()
                    .map(|hit| {
                        let given = hits.iter().find(|h| h.id == hit.id).ok_or_else(|| {
                            PluginError::Plugin(format!(
                                "the re-ranker returned {:?}, which was not among the hits it was given",
                                hit.id
                            ))
                        })?;
                        if !seen.insert(hit.id.clone()) {
                            return Err(PluginError::Plugin(format!(
                                "the re-ranker returned {:?} twice",
                                hit.id
                            )));
                        }
                        Ok(given.clone())
                    })
                    .collect()
            },
            |pre, store| match pre {
                Pre::Reranker(pre) => Some(
                    pre.instantiate(&mut *store)
                        .and_then(|i| i.tvs_plugin_rerank().call_rerank(&mut *store, query, hits)),
                ),
                _ => None,
            },
        )
    }

    /// Maps a wasmtime failure of a call to what stopped it.
    fn settle<T>(&self, result: wasmtime::Result<T>, deadline: Duration) -> Result<T, PluginError> {
        result.map_err(|e| {
            let outcome = if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some() {
                PluginError::Busy
            } else if let Some(stop) = e.downcast_ref::<Stop>() {
                match stop {
                    Stop::Memory(cap) => PluginError::Memory(*cap),
                    Stop::HostCalls(cap) => PluginError::HostCalls(*cap),
                }
            } else {
                match e.downcast_ref::<Trap>() {
                    Some(Trap::Interrupt) => PluginError::Deadline(deadline),
                    Some(trap) => PluginError::Trap(trap.to_string()),
                    None => PluginError::Trap(first_line(&format!("{e}"))),
                }
            };
            tracing::info!(error = ?e, "plugin call stopped");
            outcome
        })
    }
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_owned()
}

/// Compiles in a child (`program plugin-compile IN OUT LIMITS`), killed past the timeout.
fn compile_in_child(program: &Path, limits: &PluginLimits, bytes: &[u8]) -> Result<Vec<u8>, PluginError> {
    let work = tempfile::tempdir()?;
    let input = work.path().join("in.wasm");
    let output = work.path().join("out.cwasm");
    std::fs::write(&input, bytes)?;
    let limits_json = serde_json::to_string(limits).map_err(std::io::Error::other)?;
    let mut child = Command::new(program)
        .arg("plugin-compile")
        .arg(&input)
        .arg(&output)
        .arg(&limits_json)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > limits.compile_timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(PluginError::Invalid(format!(
                "compiling took longer than {:?} and was stopped",
                limits.compile_timeout
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut stderr);
    }
    if !status.success() {
        use std::os::unix::process::ExitStatusExt;
        let why = match status.signal() {
            Some(signal) => format!(
                "the compiler was killed by signal {signal} (a CPU-time or memory limit: the component is too costly to compile)"
            ),
            None => first_line(stderr.trim()),
        };
        return Err(PluginError::Invalid(format!("it does not compile: {why}")));
    }
    Ok(std::fs::read(&output)?)
}

/// The plugin author's WIT, as files: `plugin.wit` (package `tvs:plugin`) and its dependency
/// `deps/store/*.wit` (package `tvs:store`), without the repository's symlink, which some
/// toolchains (componentize-js) do not follow.
pub const PLUGIN_WIT: &[(&str, &str)] = &[
    ("plugin.wit", include_str!("../../../../wit/plugin/plugin.wit")),
    ("deps/store/types.wit", include_str!("../../../../wit/types.wit")),
    ("deps/store/handler.wit", include_str!("../../../../wit/handler.wit")),
];

/// Writes [`PLUGIN_WIT`] under `dir`.
pub fn write_plugin_wit(dir: &Path) -> std::io::Result<()> {
    for (name, text) in PLUGIN_WIT {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, text)?;
    }
    Ok(())
}

/// The child side of [`Compiler::Subprocess`]: compiles `input` into `output` with the engine
/// configuration `limits` give. The caller has already limited this process's resources.
pub fn compile_child(input: &Path, output: &Path, limits_json: &str) -> Result<(), String> {
    let limits: PluginLimits = serde_json::from_str(limits_json).map_err(|e| format!("bad limits: {e}"))?;
    let mut config = sandbox::engine_config(&limits);
    // No instances run here; the pooling allocator's reservations would only cost address space.
    config.allocation_strategy(wasmtime::InstanceAllocationStrategy::OnDemand);
    let engine = wasmtime::Engine::new(&config).map_err(|e| format!("{e:#}"))?;
    let bytes = std::fs::read(input).map_err(|e| e.to_string())?;
    let artifact = engine.precompile_component(&bytes).map_err(|e| format!("{e:#}"))?;
    std::fs::write(output, artifact).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_wit_holds_every_tvs_store_file() {
        let wit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../wit");
        let mut in_repo: Vec<String> = std::fs::read_dir(&wit)
            .expect("wit/")
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|name| name.ends_with(".wit"))
            .map(|name| format!("deps/store/{name}"))
            .collect();
        in_repo.push("plugin.wit".into());
        in_repo.sort();
        let mut written: Vec<String> = PLUGIN_WIT.iter().map(|(name, _)| (*name).to_owned()).collect();
        written.sort();
        assert_eq!(written, in_repo, "PLUGIN_WIT must list every file of wit/ (tvs:store)");
        // The JavaScript plugin test builds a component from what `write_plugin_wit` writes.
        let dir = tempfile::tempdir().expect("tempdir");
        write_plugin_wit(dir.path()).expect("write");
        assert!(dir.path().join("deps/store/types.wit").is_file());
    }
}
