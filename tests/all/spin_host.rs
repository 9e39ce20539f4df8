//! A host that behaves as Spin 3.x does for the tvs component, beside the real Spin of
//! `spin_up`: it can inject what Spin cannot (failing or cut-off stores) and runs where no Spin
//! CLI is. `spin build` (the build commands of the root `spin.toml`, each through `sh -c` in its
//! `workdir`), and `spin up`'s HTTP trigger (wasmtime 48 + wasmtime-wasi-http 48 serving
//! `wasi:http/incoming-handler@0.2.0` on loopback with a fresh instance per request), with the
//! `fermyon:spin` 2.0 interfaces tvs uses, from the WIT vendored from spin-sdk 5.2.0:
//! - key-value: the stores the component lists in `key_value_stores`, backed by real files
//!   (a file per key, written atomically by rename), with Spin Cloud's limits (keys ≤ 255 bytes,
//!   values ≤ 1 MB), reached through `fermyon:spin/key-value` and `wasi:keyvalue` (store and
//!   atomics: compare-and-swap) alike, as Spin serves both from one store;
//! - variables: `[component.x.variables]` templates over the `[variables]` defaults,
//!   overridden by the test as `SPIN_VARIABLE_*` would;
//! - llm: `generate-embeddings` of the models listed in `ai_models`, answered by tvs's own
//!   MiniLM (Spin runs the same sentence-transformers weights).
//!
//! What only a Spin platform can show (`spin deploy`, a cloud's limits) is listed in
//! docs/spin.md.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/spin",
        world: "tvs:spin/platform",
        with: {
            "fermyon:spin/key-value.store": super::KvHandle,
            "wasi:keyvalue/store.bucket": super::KvHandle,
            "wasi:keyvalue/atomics.cas": super::CasHandle,
        },
    });
}

use bindings::fermyon::spin::key_value::Error as KvError;
use bindings::fermyon::spin::llm;
use bindings::fermyon::spin::variables;

/// The repository root, where `spin.toml` is.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `[component.tvs]` table of `spin.toml`.
pub fn manifest() -> toml::Table {
    let text = std::fs::read_to_string(repo_root().join("spin.toml")).expect("read spin.toml");
    text.parse().expect("spin.toml is TOML")
}

fn component_table(manifest: &toml::Table) -> &toml::Table {
    manifest["component"]["tvs"].as_table().expect("[component.tvs]")
}

/// Runs `spin.toml`'s build commands once per test process, as `spin build` does, and returns
/// the component's `source`.
pub fn spin_build() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let manifest = manifest();
        let component = component_table(&manifest);
        let build = component["build"].as_table().expect("[component.tvs.build]");
        let workdir = repo_root().join(build.get("workdir").and_then(|w| w.as_str()).unwrap_or("."));
        let commands: Vec<String> = match &build["command"] {
            toml::Value::String(one) => vec![one.clone()],
            toml::Value::Array(many) => many.iter().map(|c| c.as_str().expect("a command").to_owned()).collect(),
            other => panic!("build.command is {other:?}"),
        };
        for command in commands {
            eprintln!("spin build: {command}");
            let status = Command::new("sh")
                .arg("-c")
                .arg(&command)
                .current_dir(&workdir)
                // The test's own cargo settings do not apply to the app's build.
                .env_remove("CARGO_TARGET_DIR")
                .env_remove("CARGO_ENCODED_RUSTFLAGS")
                .env_remove("RUSTFLAGS")
                .status()
                .expect("run a build command");
            assert!(status.success(), "spin.toml build command failed: {command}");
        }
        let source = repo_root().join(component["source"].as_str().expect("source"));
        assert!(source.is_file(), "the build did not produce {}", source.display());
        source
    })
}

/// One of the parts `spin build` leaves beside the composed component.
pub fn built_part(stem: &str) -> PathBuf {
    let composed = spin_build();
    composed
        .parent()
        .expect("target/spin")
        .join("wasm32-wasip2/release")
        .join(format!("{stem}.wasm"))
}

/// The variables as Spin resolves them for the component: its `[component.tvs.variables]`
/// templates over the app's `[variables]` defaults, with `overrides` (as `SPIN_VARIABLE_*`).
pub fn resolve_variables(manifest: &toml::Table, overrides: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut app: BTreeMap<String, String> = manifest
        .get("variables")
        .and_then(|v| v.as_table())
        .map(|vars| {
            vars.iter()
                .filter_map(|(name, spec)| Some((name.clone(), spec.get("default")?.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    for (name, value) in overrides {
        app.insert((*name).to_owned(), (*value).to_owned());
    }
    let templates = component_table(manifest)
        .get("variables")
        .and_then(|v| v.as_table())
        .cloned()
        .unwrap_or_default();
    templates
        .iter()
        .map(|(name, template)| {
            let template = template.as_str().expect("a variable template");
            let value = match template.trim().strip_prefix("{{").and_then(|t| t.strip_suffix("}}")) {
                Some(app_var) => app
                    .get(app_var.trim())
                    .unwrap_or_else(|| panic!("app variable {app_var} has no value"))
                    .clone(),
                None => template.to_owned(),
            };
            (name.clone(), value)
        })
        .collect()
}

fn string_list(component: &toml::Table, key: &str) -> Vec<String> {
    component
        .get(key)
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// What the component may use, from `spin.toml`, and the state behind it.
#[derive(Debug)]
pub struct Platform {
    /// Store label → directory.
    stores: BTreeMap<String, PathBuf>,
    variables: BTreeMap<String, String>,
    ai_models: Vec<String>,
    /// Held by every write, so a compare-and-swap is atomic against all of them.
    writes: std::sync::Mutex<()>,
}

impl Platform {
    /// The platform `spin.toml` asks for, with every key-value store under `kv_root`.
    pub fn from_manifest(kv_root: &Path, overrides: &[(&str, &str)]) -> Platform {
        let manifest = manifest();
        let component = component_table(&manifest);
        let stores = string_list(component, "key_value_stores")
            .into_iter()
            .map(|label| {
                let dir = kv_root.join(&label);
                std::fs::create_dir_all(&dir).expect("store dir");
                (label, dir)
            })
            .collect();
        Platform {
            stores,
            variables: resolve_variables(&manifest, overrides),
            ai_models: string_list(component, "ai_models"),
            writes: std::sync::Mutex::new(()),
        }
    }
}

/// An open key-value store: a directory with a file per key (hex-encoded name).
#[derive(Debug)]
pub struct KvHandle {
    dir: PathBuf,
}

/// The state of one instance (one request).
pub struct HostState {
    platform: Arc<Platform>,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: DenyOutbound,
}

impl HostState {
    pub fn new(platform: Arc<Platform>) -> Self {
        HostState {
            platform,
            wasi: WasiCtx::builder().build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: DenyOutbound,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// `allowed_outbound_hosts = []`: every outgoing request is refused.
struct DenyOutbound;

/// What wasi-http's hooks pass around: a body's completion.
type BodyDone = Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>;
/// A response as the hooks return it, with its body's completion.
type SentResponse = Result<(http::Response<wasmtime_wasi_http::WasiBody>, BodyDone), wasmtime_wasi_http::Error>;

impl wasmtime_wasi_http::WasiHttpHooks for DenyOutbound {
    fn send_request(
        &mut self,
        _request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _body_done: BodyDone,
    ) -> Box<dyn Future<Output = SentResponse> + Send> {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

fn hex(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(name: &str) -> Option<String> {
    let bytes: Option<Vec<u8>> = (0..name.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(name.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

fn kv_other(e: impl std::fmt::Display) -> KvError {
    KvError::Other(e.to_string())
}

/// An open compare-and-swap: the key and the value it held when opened.
#[derive(Debug)]
pub struct CasHandle {
    dir: PathBuf,
    key: String,
    seen: Option<Vec<u8>>,
}

/// The file-per-key store behind both key-value interfaces.
mod files {
    use std::path::Path;

    pub fn get(dir: &Path, key: &str) -> std::io::Result<Option<Vec<u8>>> {
        match std::fs::read(dir.join(super::hex(key))) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Spin Cloud's limits, then an atomic replace.
    pub fn set(dir: &Path, key: &str, value: &[u8]) -> Result<(), String> {
        if key.len() > 255 || value.len() > 1 << 20 {
            return Err(format!(
                "key of {} or value of {} bytes is over the limit",
                key.len(),
                value.len()
            ));
        }
        let tmp = dir.join(format!(".{}.tmp", super::hex(key)));
        std::fs::write(&tmp, value).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, dir.join(super::hex(key))).map_err(|e| e.to_string())
    }

    pub fn delete(dir: &Path, key: &str) -> std::io::Result<()> {
        match std::fs::remove_file(dir.join(super::hex(key))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    pub fn keys(dir: &Path) -> std::io::Result<Vec<String>> {
        Ok(std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .filter_map(|e| super::unhex(e.file_name().to_str()?))
            .collect())
    }
}

impl HostState {
    fn store_dir(&self, handle: &Resource<KvHandle>) -> Result<PathBuf, String> {
        Ok(self.table.get(handle).map_err(|e| e.to_string())?.dir.clone())
    }

    fn locked_write<T>(&self, write: impl FnOnce() -> T) -> T {
        let _held = self
            .platform
            .writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        write()
    }
}

impl bindings::fermyon::spin::key_value::Host for HostState {}

impl bindings::fermyon::spin::key_value::HostStore for HostState {
    fn open(&mut self, label: String) -> Result<Resource<KvHandle>, KvError> {
        let dir = self.platform.stores.get(&label).ok_or(KvError::AccessDenied)?.clone();
        self.table.push(KvHandle { dir }).map_err(kv_other)
    }
    fn get(&mut self, store: Resource<KvHandle>, key: String) -> Result<Option<Vec<u8>>, KvError> {
        files::get(&self.store_dir(&store).map_err(kv_other)?, &key).map_err(kv_other)
    }
    fn set(&mut self, store: Resource<KvHandle>, key: String, value: Vec<u8>) -> Result<(), KvError> {
        let dir = self.store_dir(&store).map_err(kv_other)?;
        self.locked_write(|| files::set(&dir, &key, &value))
            .map_err(KvError::Other)
    }
    fn delete(&mut self, store: Resource<KvHandle>, key: String) -> Result<(), KvError> {
        let dir = self.store_dir(&store).map_err(kv_other)?;
        self.locked_write(|| files::delete(&dir, &key)).map_err(kv_other)
    }
    fn exists(&mut self, store: Resource<KvHandle>, key: String) -> Result<bool, KvError> {
        Ok(self.get(store, key)?.is_some())
    }
    fn get_keys(&mut self, store: Resource<KvHandle>) -> Result<Vec<String>, KvError> {
        files::keys(&self.store_dir(&store).map_err(kv_other)?).map_err(kv_other)
    }
    fn drop(&mut self, store: Resource<KvHandle>) -> wasmtime::Result<()> {
        self.table.delete(store)?;
        Ok(())
    }
}

use bindings::wasi::keyvalue::atomics;
use bindings::wasi::keyvalue::store as wasi_kv;

fn wasi_other(e: impl std::fmt::Display) -> wasi_kv::Error {
    wasi_kv::Error::Other(e.to_string())
}

impl wasi_kv::Host for HostState {
    fn open(&mut self, identifier: String) -> Result<Resource<KvHandle>, wasi_kv::Error> {
        let dir = self
            .platform
            .stores
            .get(&identifier)
            .ok_or(wasi_kv::Error::AccessDenied)?
            .clone();
        self.table.push(KvHandle { dir }).map_err(wasi_other)
    }
}

impl wasi_kv::HostBucket for HostState {
    fn get(&mut self, bucket: Resource<KvHandle>, key: String) -> Result<Option<Vec<u8>>, wasi_kv::Error> {
        files::get(&self.store_dir(&bucket).map_err(wasi_other)?, &key).map_err(wasi_other)
    }
    fn set(&mut self, bucket: Resource<KvHandle>, key: String, value: Vec<u8>) -> Result<(), wasi_kv::Error> {
        let dir = self.store_dir(&bucket).map_err(wasi_other)?;
        self.locked_write(|| files::set(&dir, &key, &value))
            .map_err(wasi_kv::Error::Other)
    }
    fn delete(&mut self, bucket: Resource<KvHandle>, key: String) -> Result<(), wasi_kv::Error> {
        let dir = self.store_dir(&bucket).map_err(wasi_other)?;
        self.locked_write(|| files::delete(&dir, &key)).map_err(wasi_other)
    }
    fn exists(&mut self, bucket: Resource<KvHandle>, key: String) -> Result<bool, wasi_kv::Error> {
        Ok(wasi_kv::HostBucket::get(self, bucket, key)?.is_some())
    }
    fn list_keys(
        &mut self,
        bucket: Resource<KvHandle>,
        _cursor: Option<String>,
    ) -> Result<wasi_kv::KeyResponse, wasi_kv::Error> {
        let keys = files::keys(&self.store_dir(&bucket).map_err(wasi_other)?).map_err(wasi_other)?;
        Ok(wasi_kv::KeyResponse { keys, cursor: None })
    }
    fn drop(&mut self, bucket: Resource<KvHandle>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for HostState {
    fn increment(&mut self, bucket: Resource<KvHandle>, key: String, delta: i64) -> Result<i64, wasi_kv::Error> {
        let dir = self.store_dir(&bucket).map_err(wasi_other)?;
        self.locked_write(|| {
            let current = match files::get(&dir, &key).map_err(wasi_other)? {
                Some(bytes) => String::from_utf8_lossy(&bytes)
                    .trim()
                    .parse::<i64>()
                    .map_err(wasi_other)?,
                None => 0,
            };
            let next = current + delta;
            files::set(&dir, &key, next.to_string().as_bytes()).map_err(wasi_kv::Error::Other)?;
            Ok(next)
        })
    }

    fn swap(&mut self, cas: Resource<CasHandle>, value: Vec<u8>) -> Result<(), atomics::CasError> {
        let handle = self
            .table
            .delete(cas)
            .map_err(|e| atomics::CasError::StoreError(wasi_other(e)))?;
        let outcome = self.locked_write(|| {
            let now = files::get(&handle.dir, &handle.key).map_err(wasi_other)?;
            if now != handle.seen {
                return Ok(Some(now));
            }
            files::set(&handle.dir, &handle.key, &value).map_err(wasi_kv::Error::Other)?;
            Ok(None)
        });
        match outcome {
            Ok(None) => Ok(()),
            // Another write went first: a fresh handle on what is there now, for a retry.
            Ok(Some(now)) => {
                let retry = CasHandle { seen: now, ..handle };
                let retry = self
                    .table
                    .push(retry)
                    .map_err(|e| atomics::CasError::StoreError(wasi_other(e)))?;
                Err(atomics::CasError::CasFailed(retry))
            }
            Err(e) => Err(atomics::CasError::StoreError(e)),
        }
    }
}

impl atomics::HostCas for HostState {
    fn new(&mut self, bucket: Resource<KvHandle>, key: String) -> Result<Resource<CasHandle>, wasi_kv::Error> {
        let dir = self.store_dir(&bucket).map_err(wasi_other)?;
        let seen = files::get(&dir, &key).map_err(wasi_other)?;
        self.table.push(CasHandle { dir, key, seen }).map_err(wasi_other)
    }
    fn current(&mut self, cas: Resource<CasHandle>) -> Result<Option<Vec<u8>>, wasi_kv::Error> {
        Ok(self.table.get(&cas).map_err(wasi_other)?.seen.clone())
    }
    fn drop(&mut self, cas: Resource<CasHandle>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

impl variables::Host for HostState {
    fn get(&mut self, name: String) -> Result<String, variables::Error> {
        self.platform
            .variables
            .get(&name)
            .cloned()
            .ok_or_else(|| variables::Error::Undefined(format!("no variable for {name:?}")))
    }
}

/// The local model, loaded once per test process.
fn minilm() -> &'static tvs_embed::LocalEmbedder {
    static MODEL: OnceLock<tvs_embed::LocalEmbedder> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = tvs_embed::model::model_dir();
        tvs_embed::model::ensure(&dir, &mut |line| eprintln!("{line}")).expect("fetching the local model");
        tvs_embed::LocalEmbedder::load(&dir).expect("load MiniLM")
    })
}

impl llm::Host for HostState {
    fn infer(
        &mut self,
        _model: String,
        _prompt: String,
        _params: Option<llm::InferencingParams>,
    ) -> Result<llm::InferencingResult, llm::Error> {
        Err(llm::Error::ModelNotSupported)
    }

    fn generate_embeddings(&mut self, model: String, text: Vec<String>) -> Result<llm::EmbeddingsResult, llm::Error> {
        // Spin answers only the models the component lists in ai_models.
        if model != "all-minilm-l6-v2" || !self.platform.ai_models.contains(&model) {
            return Err(llm::Error::ModelNotSupported);
        }
        let embeddings = minilm()
            .embed_texts(&text)
            .map_err(|e| llm::Error::RuntimeError(e.to_string()))?;
        Ok(llm::EmbeddingsResult {
            embeddings,
            usage: llm::EmbeddingsUsage { prompt_token_count: 0 },
        })
    }
}

/// The engine and linker of the host: WASI 0.2, wasi:http, and the `fermyon:spin` interfaces.
pub fn linker() -> (Engine, Linker<HostState>) {
    let engine = Engine::new(&Config::new()).expect("engine");
    let mut linker = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("wasi");
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).expect("wasi:http");
    bindings::Platform::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state).expect("spin");
    (engine, linker)
}

/// The tvs component served on loopback as `spin up` would; stops when dropped.
pub struct SpinHost {
    pub addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl SpinHost {
    /// Serves the component `spin build` made, with its key-value stores under `kv_root`.
    pub fn start(kv_root: &Path, variables: &[(&str, &str)]) -> SpinHost {
        let platform = Arc::new(Platform::from_manifest(kv_root, variables));
        let (engine, linker) = linker();
        let component = Component::from_file(&engine, spin_build()).expect("compile the tvs component");
        let pre = ProxyPre::new(linker.instantiate_pre(&component).expect("link as Spin")).expect("a wasi:http proxy");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind loopback");
        let addr = listener.local_addr().expect("address");
        runtime.spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let (pre, platform) = (pre.clone(), platform.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let (pre, platform) = (pre.clone(), platform.clone());
                        async move { handle(pre, platform, request).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(wasmtime_wasi_http::io::TokioIo::new(client), service)
                        .await;
                });
            }
        });
        SpinHost {
            addr,
            runtime: Some(runtime),
        }
    }
}

impl Drop for SpinHost {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// One request in a fresh instance, as Spin's HTTP trigger runs it.
async fn handle(
    pre: ProxyPre<HostState>,
    platform: Arc<Platform>,
    request: hyper::Request<hyper::body::Incoming>,
) -> wasmtime::Result<hyper::Response<HyperOutgoingBody>> {
    let mut store = Store::new(pre.engine(), HostState::new(platform));
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let request = store.data_mut().http().new_incoming_request(Scheme::Http, request)?;
    let out = store.data_mut().http().new_response_outparam(sender)?;
    let task = tokio::task::spawn(async move {
        let proxy = pre.instantiate_async(&mut store).await?;
        proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut store, request, out)
            .await
    });
    match receiver.await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(code)) => Err(wasmtime::Error::msg(format!("the component failed: {code:?}"))),
        Err(_) => match task.await {
            Ok(Ok(())) => Err(wasmtime::Error::msg("the component set no response")),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(wasmtime::Error::msg(e.to_string())),
        },
    }
}

/// The names a component imports.
pub fn component_imports(engine: &Engine, component: &Component) -> Vec<String> {
    component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_owned())
        .collect()
}
