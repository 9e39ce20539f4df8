//! Argument parsing and the commands of the `tvs` binary. `anyhow` lives here only: the
//! library returns typed errors, this edge adds context and prints the chain.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use tvs_guest_core::filter::Filter;
use tvs_runtime::{Chunking, IngestDocument, IngestRequest, Mmr as GuestMmr, Runtime, RuntimeLimits, SearchRequest};
use tvs_store::config::{ConfigFile, Metric, ScalarKind, ServeFile, Settings, StoreConfig};
use tvs_store::store::{OpenError, TenantStore};
use tvs_store::tenant::{DataDir, StoreDir, TenantId};

#[derive(Debug, Parser)]
#[command(name = "tvs", version, about = "Multi-tenant vector store", propagate_version = true)]
pub struct Cli {
    /// TOML configuration file (environment variables and flags override it)
    #[arg(long, global = true, env = "TVS_CONFIG")]
    config: Option<PathBuf>,
    /// Root of the tenant directories [env: TVS_DATA_DIR, default: ./user_data]
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Log as JSON lines instead of text
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API (admin key: TVS_ADMIN_KEY, else generated into the data dir)
    Serve(ServeArgs),
    /// Create, list or delete tenants
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Ingest JSONL records, text and Markdown files (texts are embedded, files chunked)
    Ingest(IngestArgs),
    /// k-NN search with a query text or vector
    Search(SearchArgs),
    /// Import LangChain FAISS.save_local folders (one, or a whole old user_data/ tree with --all)
    ImportLangchain(ImportArgs),
    /// Export tenants as LangChain FAISS.save_local folders (one, or every tenant with --all)
    ExportLangchain(ExportArgs),
    /// Fetch or check the local embedding model (all-MiniLM-L6-v2)
    #[command(subcommand)]
    Model(ModelCommand),
    /// Print a store's document count, dims, index kind and sizes as JSON
    Stats(TargetArgs),
    /// Upload, list, activate or delete a tenant's plugins (see docs/plugins.md)
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Internal: compile an uploaded plugin in this child process, under resource limits
    #[command(hide = true)]
    PluginCompile {
        input: PathBuf,
        output: PathBuf,
        /// The plugin limits as JSON (the engine must match the server's).
        limits: String,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080]
    #[arg(long, env = "TVS_ADDR")]
    addr: Option<std::net::SocketAddr>,
    /// Largest request body in bytes [default: 16 MiB]
    #[arg(long)]
    max_body_bytes: Option<usize>,
    /// Seconds a request may take [default: 60]
    #[arg(long)]
    request_timeout_secs: Option<u64>,
    /// Seconds a guest may run for one request [default: 30]
    #[arg(long)]
    guest_deadline_secs: Option<u64>,
    /// Largest guest memory in MiB [default: 256]
    #[arg(long)]
    guest_memory_mib: Option<usize>,
    /// API requests served at once; more get 503 with Retry-After [default: 48]
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// Where tenants live: `s3://bucket/prefix` for S3-compatible object storage (endpoint,
    /// region and credentials from the AWS_* variables; docs/deploy.md), the data directory
    /// then being this node's cache [default: the data directory]
    #[arg(long, env = "TVS_STORAGE")]
    storage: Option<String>,
    /// This node's name in the X-Tvs-Node response header [default: the listen address]
    #[arg(long, env = "TVS_NODE_ID")]
    node_id: Option<String>,
    /// Requests per second a new tenant may make (then 429 with Retry-After; PATCH
    /// /v1/tenants/{id} changes it) [default: unlimited]
    #[arg(long, env = "TVS_DEFAULT_REQUESTS_PER_SECOND")]
    default_requests_per_second: Option<f64>,
    /// Ingest request bytes per second a new tenant may send [default: unlimited]
    #[arg(long, env = "TVS_DEFAULT_INGEST_BYTES_PER_SECOND")]
    default_ingest_bytes_per_second: Option<f64>,
    #[command(flatten)]
    plugins: PluginArgs,
}

/// Limits and quotas of tenant plugins (docs/plugins.md), set by the operator.
#[derive(Debug, Args)]
struct PluginArgs {
    /// Deadline of a function plugin call, in ms [default: 2000]
    #[arg(long, env = "TVS_PLUGIN_FUNCTION_DEADLINE_MS")]
    plugin_function_deadline_ms: Option<u64>,
    /// Deadline of an ingest transform or re-ranker call, in ms [default: 200]
    #[arg(long, env = "TVS_PLUGIN_HOOK_DEADLINE_MS")]
    plugin_hook_deadline_ms: Option<u64>,
    /// Largest plugin memory in MiB [default: 64]
    #[arg(long, env = "TVS_PLUGIN_MEMORY_MIB")]
    plugin_memory_mib: Option<usize>,
    /// Plugins per tenant [default: 20]
    #[arg(long, env = "TVS_PLUGIN_MAX_PLUGINS")]
    plugin_max_plugins: Option<usize>,
    /// Versions kept per plugin [default: 5]
    #[arg(long, env = "TVS_PLUGIN_MAX_VERSIONS")]
    plugin_max_versions: Option<usize>,
    /// MiB of plugin components and artifacts per tenant [default: 512]
    #[arg(long, env = "TVS_PLUGIN_MAX_STORED_MIB")]
    plugin_max_stored_mib: Option<u64>,
    /// Seconds compiling one upload may take before its child is killed [default: 120]
    #[arg(long, env = "TVS_PLUGIN_COMPILE_TIMEOUT_SECS")]
    plugin_compile_timeout_secs: Option<u64>,
}

impl PluginArgs {
    fn limits(&self) -> tvs_runtime::plugins::PluginLimits {
        use std::time::Duration;
        let defaults = tvs_runtime::plugins::PluginLimits::default();
        tvs_runtime::plugins::PluginLimits {
            function_deadline: self
                .plugin_function_deadline_ms
                .map_or(defaults.function_deadline, |ms| Duration::from_millis(ms.max(1))),
            hook_deadline: self
                .plugin_hook_deadline_ms
                .map_or(defaults.hook_deadline, |ms| Duration::from_millis(ms.max(1))),
            memory_bytes: self.plugin_memory_mib.map_or(defaults.memory_bytes, |m| m.max(1) << 20),
            max_plugins: self.plugin_max_plugins.unwrap_or(defaults.max_plugins),
            max_versions: self.plugin_max_versions.map_or(defaults.max_versions, |v| v.max(1)),
            max_stored_bytes: self
                .plugin_max_stored_mib
                .map_or(defaults.max_stored_bytes, |m| m << 20),
            compile_timeout: self
                .plugin_compile_timeout_secs
                .map_or(defaults.compile_timeout, |s| Duration::from_secs(s.max(1))),
            ..defaults
        }
    }
}

#[derive(Debug, Args)]
struct ExportArgs {
    /// The folder to write index.faiss and index.pkl into (created); with --all, a user_data/
    /// tree of DIR/{tenant}/vector_store/faiss_index/ folders, the layout import-langchain --all
    /// and the old app read
    dir: PathBuf,
    /// Tenant to export; required without --all
    #[arg(long, required_unless_present = "all", conflicts_with = "all")]
    tenant: Option<String>,
    /// Export every tenant
    #[arg(long)]
    all: bool,
}

#[derive(Debug, Args)]
struct ImportArgs {
    /// A FAISS.save_local folder (index.faiss + index.pkl); with --all, a user_data/ tree whose
    /// user folders hold vector_store/faiss_index/
    dir: PathBuf,
    /// Tenant to import into (created if missing); required without --all
    #[arg(long, required_unless_present = "all", conflicts_with = "all")]
    tenant: Option<String>,
    /// Import every user folder of DIR into the tenant of the same name
    #[arg(long)]
    all: bool,
    /// The store's LangChain distance strategy, which save_local does not record: l2
    /// (EUCLIDEAN_DISTANCE), ip (MAX_INNER_PRODUCT) or cos [default: the index's, l2 or ip]
    #[arg(long)]
    metric: Option<Metric>,
    /// Embedding model of new tenants [default: EMBEDDING_MODEL if it makes vectors of the
    /// index's size, else none]
    #[arg(long)]
    model: Option<String>,
}

#[derive(Debug, Subcommand)]
enum ModelCommand {
    /// Download the model (pinned by sha256) into TVS_MODEL_DIR unless a whole copy is there
    Fetch {
        /// Fetch again even if the model in place is whole
        #[arg(long)]
        force: bool,
    },
    /// Verify the model files and print where they are
    Check,
}

#[derive(Debug, Subcommand)]
enum TenantCommand {
    /// Create a tenant
    Create(CreateArgs),
    /// List tenants, sorted, one per line
    List {
        /// Start after this id (pagination)
        #[arg(long)]
        after: Option<String>,
        /// Maximum ids to print
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Delete a tenant and all its data
    Delete { id: String },
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Validate, compile and store a component as the next version of a plugin, and activate it
    Upload {
        #[arg(long)]
        tenant: String,
        name: String,
        /// The component (.wasm)
        file: PathBuf,
    },
    /// The tenant's plugins with their versions, as JSON lines
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Make a kept version of a plugin active (roll back or forward)
    Activate {
        #[arg(long)]
        tenant: String,
        name: String,
        /// The version to make active
        #[arg(value_name = "VERSION")]
        number: u32,
    },
    /// Delete a plugin and all its versions
    Delete {
        #[arg(long)]
        tenant: String,
        name: String,
    },
    /// Write the plugin author's WIT (package tvs:plugin and its tvs:store dependency) into DIR
    Wit { dir: PathBuf },
}

#[derive(Debug, Args)]
struct StoreShape {
    /// Vector dimensions
    #[arg(long, default_value_t = 384)]
    dims: usize,
    /// Distance metric: cos, ip or l2
    #[arg(long, default_value = "cos")]
    metric: Metric,
    /// Storage of vectors in the HNSW graph: i8, f16 (both re-ranked with exact f32) or f32
    #[arg(long, default_value = "i8")]
    scalar: ScalarKind,
    /// Embedding model (default: EMBEDDING_MODEL, else all-MiniLM-L6-v2; "none" for client vectors)
    #[arg(long)]
    model: Option<String>,
    /// Live documents at which an HNSW graph replaces exact scan [default: 10000]
    #[arg(long)]
    hnsw_threshold: Option<usize>,
    /// HNSW search breadth; higher is slower with better recall [default: 0, each graph
    /// calibrates its own for recall@10 >= 0.95 when it is built]
    #[arg(long)]
    ef_search: Option<usize>,
    /// Parts an HNSW graph is built in, each searched on its own core [default: 0, two from
    /// 10,000 documents on machines with two cores or more; 1 keeps a search on one core]
    #[arg(long)]
    graph_parts: Option<usize>,
}

#[derive(Debug, Args)]
struct CreateArgs {
    id: String,
    #[command(flatten)]
    shape: StoreShape,
}

#[derive(Debug, Args)]
struct TargetArgs {
    /// Tenant to use; without it, the single-tenant store at VECTOR_STORE_FOLDER
    #[arg(long)]
    tenant: Option<String>,
}

#[derive(Debug, Args)]
struct IngestArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// JSONL files of {"id","text","metadata","vector"} records (texts without a vector are
    /// embedded), or .txt/.md files (one document each, id = path, split into chunks)
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Split texts into chunks of at most this many characters [.txt/.md default: 1000]
    #[arg(long)]
    chunk_size: Option<u32>,
    /// Characters shared by consecutive chunks
    #[arg(long, default_value_t = 200, requires = "chunk_size")]
    chunk_overlap: u32,
    /// Documents per durable batch
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Shape of the single-tenant store if this ingest creates it (dims come from the data)
    #[arg(long, default_value = "cos")]
    metric: Metric,
}

#[derive(Debug, Args)]
struct SearchArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Query text, embedded with the store's model
    #[arg(conflicts_with = "vector")]
    query: Option<String>,
    /// Query vector as a JSON array
    #[arg(long)]
    vector: Option<String>,
    /// Number of results [default: DEFAULT_TOP_K, else 5]
    #[arg(short, long)]
    k: Option<usize>,
    /// Metadata filter as JSON, e.g. '{"page": {"$gte": 2}}'
    #[arg(long)]
    filter: Option<String>,
    /// Re-rank by maximal marginal relevance
    #[arg(long)]
    mmr: bool,
    /// MMR candidates
    #[arg(long, default_value_t = 20)]
    fetch_k: usize,
    /// MMR trade-off: 1 relevance, 0 diversity
    #[arg(long, default_value_t = 0.5)]
    lambda_mult: f32,
}

/// What a command found, mapped to the exit code.
enum Outcome {
    Done,
    NothingFound,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    match run(cli) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::NothingFound) => ExitCode::from(1),
        Err(err) => {
            if err
                .downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            let _ = writeln!(io::stderr(), "error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TVS_LOG").unwrap_or_else(|_| "warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn run(cli: Cli) -> Result<Outcome> {
    let file = match &cli.config {
        Some(path) => ConfigFile::read(path)?,
        None => ConfigFile::default(),
    };
    let mut settings = Settings::from_env_and_file(&file)?;
    if let Some(dir) = cli.data_dir {
        settings.data_dir = dir;
    }
    let offline = !matches!(
        cli.command,
        Command::Serve(_) | Command::Model(_) | Command::PluginCompile { .. }
    );
    if offline && std::env::var("TVS_STORAGE").is_ok_and(|s| !s.trim().is_empty()) {
        anyhow::bail!(
            "TVS_STORAGE is set: tenants live in object storage, and this command works on a data directory; use the HTTP API of `tvs serve` (docs/deploy.md)"
        );
    }
    match cli.command {
        Command::Serve(args) => serve(settings, args, &file.serve),
        Command::Tenant(cmd) => tenant_command(&settings, cmd),
        Command::Ingest(args) => ingest(&settings, args),
        Command::Search(args) => search(&settings, args),
        Command::Model(cmd) => model_command(cmd),
        Command::ImportLangchain(args) => import_langchain(&settings, args),
        Command::ExportLangchain(args) => export_langchain(&settings, args),
        Command::Plugin(cmd) => plugin_command(&settings, cmd),
        Command::PluginCompile { input, output, limits } => {
            crate::limit_compiler_resources();
            tvs_runtime::plugins::compile_child(&input, &output, &limits).map_err(anyhow::Error::msg)?;
            Ok(Outcome::Done)
        }
        Command::Stats(target) => {
            let store = open_target(&settings, &target)?;
            print_json(&store.info())?;
            Ok(Outcome::Done)
        }
    }
}

/// The plugin runtime when the store's tenant enabled an ingest transform (every ingest goes
/// through it, from the CLI as over HTTP); `None` otherwise, without starting an engine.
fn ingest_plugins(store: &TenantStore) -> Result<Option<tvs_runtime::plugins::Plugins>> {
    let enabled = tvs_runtime::plugins::registry::TenantPlugins::new(store.dir())
        .enabled_transform()
        .context("reading the tenant's enabled ingest transform")?;
    if enabled.is_none() {
        return Ok(None);
    }
    let compiler = tvs_runtime::plugins::Compiler::Subprocess {
        program: std::env::current_exe().context("finding this binary to compile plugins with")?,
    };
    let plugins = tvs_runtime::plugins::Plugins::new(tvs_runtime::plugins::PluginLimits::default(), compiler)
        .context("starting the plugin runtime")?;
    Ok(Some(plugins))
}

fn serve(settings: Settings, args: ServeArgs, file: &ServeFile) -> Result<Outcome> {
    let defaults = tvs_server::http::ServerLimits::default();
    let addr = args
        .addr
        .or(file.addr)
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 8080)));
    let guest_deadline_secs = args.guest_deadline_secs.or(file.guest_deadline_secs).unwrap_or(30);
    let guest_memory_mib = args.guest_memory_mib.or(file.guest_memory_mib).unwrap_or(256);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    let listener = tokio
        .block_on(tokio::net::TcpListener::bind(addr))
        .with_context(|| format!("listening on {addr}"))?;
    let local_addr = listener.local_addr().context("reading the listen address")?;
    let node = args.node_id.clone().unwrap_or_else(|| local_addr.to_string());
    let mut data = data_dir(&settings)?;
    let remote = match args.storage.as_deref().map(str::trim) {
        None | Some("") => false,
        Some(url) => {
            if std::env::var("TVS_ADMIN_KEY").map_or(true, |k| k.trim().is_empty()) {
                anyhow::bail!("TVS_STORAGE={url} needs TVS_ADMIN_KEY, the same on every node");
            }
            let bucket = tvs_bucket::Bucket::connect(url, &node, tvs_bucket::BucketSettings::from_env())
                .map_err(anyhow::Error::msg)?;
            bucket
                .check()
                .with_context(|| format!("reaching {url} (set AWS_ENDPOINT, AWS_REGION and credentials)"))?;
            data = data.with_catalog(Arc::new(bucket));
            writeln!(
                io::stderr(),
                "tenants live in {url}; {} is this node's cache",
                data.root().display()
            )?;
            true
        }
    };
    let (keys, created) = tvs_server::auth::Keys::open(data.clone(), std::env::var("TVS_ADMIN_KEY").ok())
        .context("loading the admin key")?;
    if let Some(path) = created {
        writeln!(io::stderr(), "generated an admin key in {} (mode 0600)", path.display())?;
    }
    if tvs_guest_core::models::is_local_model(&settings.embedding_model) {
        // The README's one start command must work on a fresh machine: fetch the default model
        // when it is missing. A failure is not fatal: tenants with client vectors still work,
        // and text requests get an error naming the command that fixes it.
        let dir = tvs_embed::model::model_dir();
        if let Err(e) = tvs_embed::model::ensure(&dir, &mut |line| {
            let _ = writeln!(io::stderr(), "{line}");
        }) {
            writeln!(io::stderr(), "warning: {e}")?;
        }
    }
    let limits = RuntimeLimits {
        deadline: std::time::Duration::from_secs(guest_deadline_secs.max(1)),
        memory_bytes: guest_memory_mib.max(1) << 20,
        ..RuntimeLimits::default()
    };
    let runtime = Arc::new(Runtime::new(limits).context("starting the wasm runtime")?);
    let pool = Arc::new(tvs_store::pool::Pool::new(
        data,
        tvs_store::pool::PoolConfig::from_settings(&settings),
    ));
    let server_limits = tvs_server::http::ServerLimits {
        max_body_bytes: args
            .max_body_bytes
            .or(file.max_body_bytes)
            .unwrap_or(defaults.max_body_bytes),
        request_timeout: args
            .request_timeout_secs
            .or(file.request_timeout_secs)
            .map_or(defaults.request_timeout, |s| std::time::Duration::from_secs(s.max(1))),
        max_in_flight: args
            .max_in_flight
            .or(file.max_in_flight)
            .unwrap_or(defaults.max_in_flight)
            .clamp(1, limits.max_instances as usize),
        ..defaults
    };
    // Uploads are compiled by this same binary in a child process under resource limits.
    let compiler = tvs_runtime::plugins::Compiler::Subprocess {
        program: std::env::current_exe().context("finding this binary to compile plugins with")?,
    };
    let default_rates = tvs_server::rates::RateLimits {
        requests_per_second: args.default_requests_per_second,
        ingest_bytes_per_second: args.default_ingest_bytes_per_second,
    };
    default_rates
        .validate()
        .map_err(|e| anyhow::anyhow!("--default-requests-per-second / --default-ingest-bytes-per-second: {e}"))?;
    let mut app = tvs_server::http::App::new(pool, runtime, keys, settings, server_limits)
        .with_node(&node)
        .with_default_rates(default_rates);
    // Plugins are files in a tenant's directory, which is only a cache with object storage.
    if !remote {
        let plugins = tvs_runtime::plugins::Plugins::new(args.plugins.limits(), compiler)
            .context("starting the plugin runtime")?;
        app = app.with_plugins(Arc::new(plugins));
    }
    let app = Arc::new(app);
    tokio
        .block_on(async {
            // The address goes to stdout so scripts and tests can find an ephemeral port.
            writeln!(io::stdout(), "listening on http://{local_addr}")?;
            tvs_server::http::serve(app, listener).await
        })
        .with_context(|| format!("serving on {addr}"))?;
    Ok(Outcome::Done)
}

/// What importing one folder did.
struct Imported {
    documents: usize,
    created: bool,
    count_after: u64,
    config: StoreConfig,
}

/// Imports one `FAISS.save_local` folder into a tenant, creating it if needed. Everything is
/// read and checked before anything is written; documents are upserted by their LangChain id,
/// so running it again changes nothing.
fn import_folder(
    settings: &Settings,
    data: &DataDir,
    runtime: &Runtime,
    tenant: &TenantId,
    folder: &Path,
    args: &ImportArgs,
    progress: &ProgressBar,
) -> Result<Imported> {
    let saved = tvs_langchain::read_folder(folder).with_context(|| format!("reading {}", folder.display()))?;
    let metric = args.metric.unwrap_or(saved.index.metric);
    let dims = saved.index.dims;
    let dir = data.store_dir(tenant);
    let (store, created) = match TenantStore::open(&dir) {
        Ok(store) => {
            let config = store.config();
            if config.dims != dims || config.metric != metric {
                bail!(
                    "tenant {tenant} holds {}-dimensional {:?} vectors; the folder has {dims}-dimensional {metric:?} ones",
                    config.dims,
                    config.metric
                );
            }
            (store, false)
        }
        Err(OpenError::NotFound(_)) => {
            let model = match &args.model {
                Some(model) => model.clone(),
                None if model_dims(&settings.embedding_model).is_none_or(|d| d == dims) => {
                    settings.embedding_model.clone()
                }
                None => "none".into(),
            };
            let config = StoreConfig::new(dims, metric, ScalarKind::default(), &model);
            data.create_tenant(tenant, &config)?;
            (TenantStore::open(&dir)?, true)
        }
        Err(other) => return Err(anyhow::Error::new(other).context(format!("opening tenant {tenant}"))),
    };
    let rows = saved.documents.len();
    progress.set_length(rows as u64);
    progress.set_position(0);
    for (start, chunk) in saved.documents.chunks(512).enumerate().map(|(i, c)| (i * 512, c)) {
        let documents = chunk
            .iter()
            .enumerate()
            .map(|(offset, doc)| IngestDocument {
                id: Some(doc.id.clone()),
                text: Some(doc.text.clone()),
                metadata: Some(serde_json::Value::Object(doc.metadata.clone()).to_string()),
                vector: Some(saved.index.row(start + offset).to_vec()),
            })
            .collect();
        runtime
            .ingest(store.clone(), &IngestRequest { documents, chunk: None })
            .with_context(|| format!("importing rows {start}..{}", start + chunk.len()))?;
        progress.inc(chunk.len() as u64);
    }
    if store.info().index != tvs_store::store::IndexKind::Exact {
        store.wait_for_index();
    }
    store
        .flush()
        .context("writing a snapshot (the documents are durable in the log)")?;
    Ok(Imported {
        documents: rows,
        created,
        count_after: store.count(),
        config: store.config().clone(),
    })
}

/// The save_local folder inside an old user folder: `vector_store/faiss_index/` (the seed's
/// layout), else `vector_store/` or the user folder itself when they hold `index.faiss`.
fn faiss_folder_of(user: &Path) -> Option<PathBuf> {
    [
        user.join("vector_store").join("faiss_index"),
        user.join("vector_store"),
        user.to_path_buf(),
    ]
    .into_iter()
    .find(|dir| dir.join("index.faiss").is_file())
}

fn import_langchain(settings: &Settings, args: ImportArgs) -> Result<Outcome> {
    let data = data_dir(settings)?;
    let runtime = Runtime::new(RuntimeLimits::default()).context("starting the wasm runtime")?;
    let style =
        ProgressStyle::with_template("{prefix:>16} {wide_bar} {pos}/{len} docs {per_sec}").expect("static template");
    let describe = |imported: &Imported| {
        format!(
            "{} documents imported ({}; {} dims, {:?}, model {}; the tenant holds {})",
            imported.documents,
            if imported.created {
                "tenant created"
            } else {
                "existing tenant"
            },
            imported.config.dims,
            imported.config.metric,
            imported.config.embedding_model,
            imported.count_after
        )
    };
    if !args.all {
        let tenant = TenantId::new(args.tenant.as_deref().unwrap_or_default())?;
        let progress = ProgressBar::new(0).with_style(style).with_prefix(tenant.to_string());
        let imported = import_folder(settings, &data, &runtime, &tenant, &args.dir, &args, &progress)?;
        progress.finish_and_clear();
        writeln!(io::stderr(), "{tenant}: {}", describe(&imported))?;
        return Ok(Outcome::Done);
    }
    let mut users: Vec<String> = std::fs::read_dir(&args.dir)
        .with_context(|| format!("listing {}", args.dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .map(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    users.sort();
    let tally = for_each_reported(
        &users,
        "users",
        "skipped: no index.faiss in vector_store/faiss_index/",
        |name| {
            let Some(folder) = faiss_folder_of(&args.dir.join(name)) else {
                return Ok(None);
            };
            let tenant = TenantId::new(name)?;
            let progress = ProgressBar::hidden()
                .with_style(style.clone())
                .with_prefix(name.to_owned());
            let imported = import_folder(settings, &data, &runtime, &tenant, &folder, &args, &progress)?;
            Ok(Some(describe(&imported)))
        },
    )?;
    writeln!(
        io::stderr(),
        "{} users imported, {} skipped, {} failed",
        tally.done,
        tally.skipped,
        tally.failed
    )?;
    if tally.failed > 0 {
        bail!(
            "{} of {} user folders could not be imported (see above)",
            tally.failed,
            users.len()
        );
    }
    Ok(Outcome::Done)
}

/// How a `--all` run went: items done, skipped, failed.
struct Tally {
    done: usize,
    skipped: usize,
    failed: usize,
}

/// Runs `each` on every name under an overall progress bar, printing a line per name: what
/// `each` said, `skipped_line` when it said nothing, or the error. One failure stops nothing.
fn for_each_reported(
    names: &[String],
    unit: &str,
    skipped_line: &str,
    mut each: impl FnMut(&str) -> Result<Option<String>>,
) -> Result<Tally> {
    let overall = ProgressBar::new(names.len() as u64)
        .with_style(
            ProgressStyle::with_template(&format!("{{prefix:>16}} {{wide_bar}} {{pos}}/{{len}} {unit}"))
                .expect("a valid template"),
        )
        .with_prefix(format!("all {unit}"));
    let mut tally = Tally {
        done: 0,
        skipped: 0,
        failed: 0,
    };
    for name in names {
        let report = each(name);
        overall.inc(1);
        let line = match report {
            Ok(Some(line)) => {
                tally.done += 1;
                line
            }
            Ok(None) => {
                tally.skipped += 1;
                skipped_line.to_owned()
            }
            Err(e) => {
                tally.failed += 1;
                format!("FAILED: {e:#}")
            }
        };
        overall.suspend(|| writeln!(io::stderr(), "{name}: {line}"))?;
    }
    overall.finish_and_clear();
    Ok(tally)
}

/// Writes one tenant as a `save_local` folder; returns how to load it in LangChain.
fn export_folder(data: &DataDir, tenant: &TenantId, folder: &Path, progress: &ProgressBar) -> Result<String> {
    let store = TenantStore::open(&data.store_dir(tenant)).with_context(|| format!("opening tenant {tenant}"))?;
    let config = store.config().clone();
    let ids = store.ids();
    progress.set_length(ids.len() as u64);
    progress.set_position(0);
    let mut documents = Vec::with_capacity(ids.len());
    let mut values = Vec::with_capacity(ids.len() * config.dims);
    for batch in ids.chunks(1024) {
        for doc in store.get(batch, true) {
            let vector = doc
                .vector
                .ok_or_else(|| anyhow!("document {} came back without its vector", doc.id))?;
            // FAISS has no cosine index: LangChain's cosine stores are unit vectors under
            // inner product, so scores stay the cosine similarity.
            match config.metric {
                Metric::Cos => {
                    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
                    values.extend(vector.iter().map(|x| if norm > 0.0 { x / norm } else { *x }));
                }
                Metric::L2 | Metric::Ip => values.extend_from_slice(&vector),
            }
            documents.push(tvs_langchain::StoredDocument {
                id: doc.id,
                text: doc.text,
                metadata: doc.metadata,
            });
        }
        progress.inc(batch.len() as u64);
    }
    if documents.len() != ids.len() {
        bail!(
            "tenant {tenant} changed during the export ({} of {} documents read); run it again",
            documents.len(),
            ids.len()
        );
    }
    let index = tvs_langchain::FlatIndex {
        metric: match config.metric {
            Metric::L2 => Metric::L2,
            Metric::Ip | Metric::Cos => Metric::Ip,
        },
        dims: config.dims,
        values,
    };
    tvs_langchain::export::write_folder(folder, &index, &documents)
        .with_context(|| format!("writing {}", folder.display()))?;
    let strategy = match config.metric {
        Metric::L2 => "the default EUCLIDEAN_DISTANCE",
        Metric::Ip => "distance_strategy=MAX_INNER_PRODUCT",
        Metric::Cos => "distance_strategy=MAX_INNER_PRODUCT and normalize_L2=True (unit vectors)",
    };
    Ok(format!(
        "{} documents, {} dims, {:?}: FAISS.load_local with {strategy}",
        documents.len(),
        config.dims,
        config.metric
    ))
}

fn export_langchain(settings: &Settings, args: ExportArgs) -> Result<Outcome> {
    let data = data_dir(settings)?;
    let style =
        ProgressStyle::with_template("{prefix:>16} {wide_bar} {pos}/{len} docs {per_sec}").expect("static template");
    if !args.all {
        let tenant = TenantId::new(args.tenant.as_deref().unwrap_or_default())?;
        let progress = ProgressBar::new(0).with_style(style).with_prefix(tenant.to_string());
        let line = export_folder(&data, &tenant, &args.dir, &progress)?;
        progress.finish_and_clear();
        writeln!(io::stderr(), "{tenant}: {line}")?;
        return Ok(Outcome::Done);
    }
    let mut tenants = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = data.list_tenants(after.as_deref(), 1000)?;
        tenants.extend(page.tenants);
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let tally = for_each_reported(&tenants, "tenants", "", |name| {
        let tenant = TenantId::new(name)?;
        let folder = args.dir.join(name).join("vector_store").join("faiss_index");
        export_folder(&data, &tenant, &folder, &ProgressBar::hidden()).map(Some)
    })?;
    writeln!(io::stderr(), "{} tenants exported, {} failed", tally.done, tally.failed)?;
    if tally.failed > 0 {
        bail!(
            "{} of {} tenants could not be exported (see above)",
            tally.failed,
            tenants.len()
        );
    }
    Ok(Outcome::Done)
}

fn model_command(cmd: ModelCommand) -> Result<Outcome> {
    let dir = tvs_embed::model::model_dir();
    let mut say = |line: &str| {
        let _ = writeln!(io::stderr(), "{line}");
    };
    match cmd {
        ModelCommand::Fetch { force } => {
            if !force && tvs_embed::model::load_files(&dir).is_ok() {
                say(&format!("the local embedding model in {} is whole", dir.display()));
            } else {
                tvs_embed::model::fetch(&dir, &mut say)?;
                tvs_embed::LocalEmbedder::load(&dir)?;
            }
        }
        ModelCommand::Check => {
            tvs_embed::LocalEmbedder::load(&dir)?;
            writeln!(io::stdout(), "{}", dir.display())?;
        }
    }
    Ok(Outcome::Done)
}

fn data_dir(settings: &Settings) -> Result<DataDir> {
    DataDir::open(&settings.data_dir)
        .with_context(|| format!("opening the data directory {}", settings.data_dir.display()))
}

fn tenant_command(settings: &Settings, cmd: TenantCommand) -> Result<Outcome> {
    let data = data_dir(settings)?;
    match cmd {
        TenantCommand::Create(CreateArgs { id, shape }) => {
            let id = TenantId::new(&id)?;
            let model = shape.model.unwrap_or_else(|| settings.embedding_model.clone());
            let mut config = StoreConfig::new(shape.dims, shape.metric, shape.scalar, &model);
            if let Some(t) = shape.hnsw_threshold {
                config.hnsw_threshold = t;
            }
            if let Some(ef) = shape.ef_search {
                config.ef_search = ef;
            }
            if let Some(parts) = shape.graph_parts {
                config.graph_parts = parts;
            }
            data.create_tenant(&id, &config)?;
            writeln!(io::stdout(), "{id}")?;
        }
        TenantCommand::List { after, limit } => {
            let page = data.list_tenants(after.as_deref(), limit)?;
            let mut out = io::stdout().lock();
            for id in &page.tenants {
                writeln!(out, "{id}")?;
            }
            if let Some(next) = page.next_after {
                tracing::info!("more tenants follow; continue with --after {next}");
            }
        }
        TenantCommand::Delete { id } => {
            let id = TenantId::new(&id)?;
            data.delete_tenant(&id)?;
        }
    }
    Ok(Outcome::Done)
}

fn plugin_command(settings: &Settings, cmd: PluginCommand) -> Result<Outcome> {
    let tenant = match &cmd {
        PluginCommand::Wit { dir } => {
            tvs_runtime::plugins::write_plugin_wit(dir).with_context(|| format!("writing into {}", dir.display()))?;
            return Ok(Outcome::Done);
        }
        PluginCommand::Upload { tenant, .. }
        | PluginCommand::List { tenant }
        | PluginCommand::Activate { tenant, .. }
        | PluginCommand::Delete { tenant, .. } => TenantId::new(tenant)?,
    };
    let data = data_dir(settings)?;
    if !data.tenant_exists(&tenant)? {
        bail!("tenant {tenant} does not exist");
    }
    let dir = data.store_dir(&tenant);
    // A server that has this tenant open holds its lock: change its plugins over HTTP then.
    let _lock = match tvs_store::store::StoreLock::acquire(&dir) {
        Ok(lock) => lock,
        Err(tvs_store::store::LockError::Busy) => {
            bail!("tenant {tenant} is open in a running tvs; use its HTTP API (/v1/plugins) instead")
        }
        Err(tvs_store::store::LockError::Io(e)) => return Err(e).context("locking the tenant"),
    };
    let compiler = tvs_runtime::plugins::Compiler::Subprocess {
        program: std::env::current_exe().context("finding this binary to compile plugins with")?,
    };
    let plugins = tvs_runtime::plugins::Plugins::new(tvs_runtime::plugins::PluginLimits::default(), compiler)
        .context("starting the plugin runtime")?;
    let mut out = io::stdout().lock();
    match cmd {
        PluginCommand::Upload { name, file, .. } => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let version = plugins.upload(&dir, &name, &bytes)?;
            writeln!(
                out,
                "{}",
                serde_json::json!({"name": name, "version": version.version, "kind": version.kind, "sha256": version.sha256})
            )?;
        }
        PluginCommand::List { .. } => {
            for info in plugins.list(&dir)? {
                writeln!(out, "{}", serde_json::to_string(&info)?)?;
            }
        }
        PluginCommand::Activate { name, number, .. } => {
            let info = plugins.activate(&dir, &name, number)?;
            writeln!(out, "{}", serde_json::json!({"name": info.name, "active": info.active}))?;
        }
        PluginCommand::Delete { name, .. } => plugins.delete(&dir, &name)?,
        PluginCommand::Wit { .. } => unreachable!("answered above"),
    }
    Ok(Outcome::Done)
}

/// The directory a command targets and how to name it in messages. Without `--tenant` this is
/// the single-tenant store at `VECTOR_STORE_FOLDER`.
fn target_dir(settings: &Settings, target: &TargetArgs) -> Result<(StoreDir, String)> {
    Ok(match &target.tenant {
        Some(tenant) => {
            let id = TenantId::new(tenant)?;
            (data_dir(settings)?.store_dir(&id), format!("tenant {id}"))
        }
        None => {
            let dir = settings.default_store_dir();
            let what = format!("the single-tenant store at {}", dir.root().display());
            (dir, what)
        }
    })
}

/// Opens the store a command targets.
fn open_target(settings: &Settings, target: &TargetArgs) -> Result<Arc<TenantStore>> {
    let (dir, what) = target_dir(settings, target)?;
    TenantStore::open(&dir).map_err(|e| match e {
        OpenError::NotFound(_) if target.tenant.is_some() => {
            anyhow!("{what} does not exist; create it with `tvs tenant create`")
        }
        OpenError::NotFound(_) => anyhow!("{what} does not exist yet; `tvs ingest` without --tenant creates it"),
        other => anyhow::Error::new(other).context(format!("opening {what}")),
    })
}

/// One document to ingest: a JSONL record, or a whole text or Markdown file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    metadata: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    vector: Option<Vec<f32>>,
    /// Whole files are split into chunks; JSONL records only with `--chunk-size`.
    #[serde(skip)]
    whole_file: bool,
}

/// Reads the records of one file, calling `each` with (line number, record). A text or Markdown
/// file is one record (line 1) whose id is the path as given.
fn read_records(path: &Path, mut each: impl FnMut(usize, Record) -> Result<()>) -> Result<()> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext {
        "jsonl" | "ndjson" => {}
        "txt" | "text" | "md" | "markdown" => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading {} as UTF-8 text", path.display()))?;
            let source = path.display().to_string();
            let mut metadata = serde_json::Map::new();
            metadata.insert("source".into(), source.clone().into());
            let record = Record {
                id: Some(source),
                text: Some(text),
                metadata,
                vector: None,
                whole_file: true,
            };
            return each(1, record).with_context(|| path.display().to_string());
        }
        _ => bail!(
            "{}: unsupported file type; tvs ingests .jsonl/.ndjson records and .txt/.md texts",
            path.display()
        ),
    }
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line_no = index + 1;
        let line = line.with_context(|| format!("{}:{line_no}: reading", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let record: Record = serde_json::from_str(&line)
            .map_err(|e| anyhow!("{}:{line_no}: not a document record: {e}", path.display()))?;
        each(line_no, record).with_context(|| format!("{}:{line_no}", path.display()))?;
    }
    Ok(())
}

/// The dimensions a model's vectors have, where that is known without calling it.
fn model_dims(model: &str) -> Option<usize> {
    tvs_guest_core::models::is_local_model(model).then_some(tvs_guest_core::models::LOCAL_MODEL_DIMS)
}

fn ingest(settings: &Settings, args: IngestArgs) -> Result<Outcome> {
    // Pass 1 validates everything, so a bad line stops the ingest before anything is written.
    // A tenant must exist; the single-tenant store is created after validation if missing.
    let (dir, what) = target_dir(settings, &args.target)?;
    let existing = if dir.exists() || args.target.tenant.is_some() {
        Some(open_target(settings, &args.target)?)
    } else {
        None
    };
    let mut vector_dims = existing.as_ref().map(|store| store.config().dims);
    let mut total = 0u64;
    let mut texts_to_embed = 0u64;
    for path in &args.files {
        read_records(path, |_, record| {
            match &record.vector {
                Some(vector) => {
                    let want = *vector_dims.get_or_insert(vector.len());
                    if vector.len() != want {
                        bail!("vector has {} dimensions, expected {want}", vector.len());
                    }
                    if let Some(store) = &existing {
                        store.check_vector(vector).map_err(|e| anyhow!(e))?;
                    } else if let Some(i) = vector.iter().position(|v| !v.is_finite()) {
                        bail!("vector component {i} is not a finite number");
                    }
                }
                None if record.text.as_deref().is_none_or(|t| t.trim().is_empty()) => {
                    bail!("the record has neither a vector nor a text to embed")
                }
                None => texts_to_embed += 1,
            }
            total += 1;
            Ok(())
        })?;
    }
    if total == 0 {
        writeln!(io::stderr(), "nothing to ingest: the files hold no records")?;
        return Ok(Outcome::Done);
    }
    let model = match &existing {
        Some(store) => store.config().embedding_model.clone(),
        None => new_store_model(settings, vector_dims, texts_to_embed > 0)?,
    };
    if texts_to_embed > 0 {
        if model == "none" {
            bail!("{what} stores client vectors (embedding model \"none\"): give every record a vector");
        }
        // Loads (and verifies) the model now, so a missing model stops the ingest before any write.
        tvs_embed::embedder_for(&model).with_context(|| format!("{texts_to_embed} records need embedding"))?;
    }
    let store = match existing {
        Some(store) => store,
        None => {
            let dims = vector_dims
                .or_else(|| model_dims(&model))
                .context("the single-tenant store's dimensions are unknown: give at least one record a vector")?;
            let config = StoreConfig::new(dims, args.metric, ScalarKind::default(), &model);
            TenantStore::create(&dir, &config)
                .with_context(|| format!("creating the single-tenant store at {}", dir.root().display()))?
        }
    };

    let progress = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{spinner} {wide_bar} {pos}/{len} docs {per_sec} eta {eta}")
            .expect("static template"),
    );
    let batch_size = args.batch.max(1);
    let chunk_flag = args.chunk_size.map(|size| Chunking {
        size,
        overlap: args.chunk_overlap,
    });
    let mut batch = Vec::with_capacity(batch_size);
    let mut stored = 0u64;
    // Ingestion runs in the wasm guest, as it does for HTTP requests: one code path.
    let runtime = Runtime::new(RuntimeLimits::default()).context("starting the wasm runtime")?;
    let plugins = ingest_plugins(&store)?;
    let mut flush = |batch: &mut Vec<Record>, chunk: Option<Chunking>| -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let records = batch.len() as u64;
        let documents = std::mem::take(batch)
            .into_iter()
            .map(|d| IngestDocument {
                id: d.id,
                text: d.text,
                metadata: Some(serde_json::Value::Object(d.metadata).to_string()),
                vector: d.vector,
            })
            .collect();
        let documents = match &plugins {
            Some(plugins) => plugins.before_ingest(&store, documents)?,
            None => documents,
        };
        let response = runtime.ingest(store.clone(), &IngestRequest { documents, chunk })?;
        stored += response.ids.len() as u64;
        progress.inc(records);
        Ok(())
    };
    for path in &args.files {
        read_records(path, |_, record| {
            if record.whole_file {
                let chunk = chunk_flag.unwrap_or(DEFAULT_FILE_CHUNKING);
                flush(&mut vec![record], Some(chunk))?;
                return Ok(());
            }
            batch.push(record);
            if batch.len() >= batch_size {
                flush(&mut batch, chunk_flag)?;
            }
            Ok(())
        })?;
    }
    flush(&mut batch, chunk_flag)?;
    progress.finish_and_clear();
    if store.info().index != tvs_store::store::IndexKind::Exact {
        // Leave a snapshot with a complete graph, so the next open does not index again.
        writeln!(io::stderr(), "documents are durable; adding them to the HNSW index…")?;
        store.wait_for_index();
    }
    store
        .flush()
        .context("writing a snapshot after the ingest (the documents are durable in the log)")?;
    let chunks = if stored == total {
        String::new()
    } else {
        format!(" as {stored} chunks")
    };
    writeln!(
        io::stderr(),
        "ingested {total} documents{chunks}; the store now holds {}",
        store.count()
    )?;
    Ok(Outcome::Done)
}

/// Text and Markdown files are split as LangChain's RecursiveCharacterTextSplitter defaults do.
const DEFAULT_FILE_CHUNKING: Chunking = Chunking {
    size: 1000,
    overlap: 200,
};

/// The model of a single-tenant store this ingest creates: `EMBEDDING_MODEL`, unless every
/// record brings a vector of another size than that model makes, in which case the store keeps
/// client vectors only.
fn new_store_model(settings: &Settings, vector_dims: Option<usize>, needs_embedding: bool) -> Result<String> {
    let model = settings.embedding_model.clone();
    match (vector_dims, model_dims(&model)) {
        (Some(have), Some(makes)) if have != makes => {
            if needs_embedding {
                bail!(
                    "records mix {have}-dimensional vectors with texts that {model} would embed as {makes}-dimensional ones"
                );
            }
            writeln!(
                io::stderr(),
                "the vectors have {have} dimensions and {model} makes {makes}: the new store keeps client vectors only (embedding model \"none\")"
            )?;
            Ok("none".into())
        }
        _ => Ok(model),
    }
}

fn search(settings: &Settings, args: SearchArgs) -> Result<Outcome> {
    let vector: Option<Vec<f32>> = args
        .vector
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .context("--vector must be a JSON array of numbers")?;
    if vector.is_none() && args.query.as_deref().is_none_or(|q| q.trim().is_empty()) {
        bail!("give a query text, or a query vector with --vector");
    }
    // Checked here so a bad filter is reported before any store is opened.
    if let Some(filter) = &args.filter {
        let value = serde_json::from_str(filter).context("--filter must be JSON")?;
        Filter::parse(&value)?;
    }
    let store = open_target(settings, &args.target)?;
    let k = args.k.unwrap_or(settings.default_top_k);
    let request = SearchRequest {
        query: if vector.is_some() { None } else { args.query.clone() },
        vector,
        top_k: u32::try_from(k).context("-k is too large")?,
        filter: args.filter.clone(),
        mmr: args.mmr.then(|| GuestMmr {
            fetch_k: u32::try_from(args.fetch_k).unwrap_or(u32::MAX),
            lambda_mult: args.lambda_mult,
        }),
    };
    let runtime = Runtime::new(RuntimeLimits::default()).context("starting the wasm runtime")?;
    let hits = runtime.search(store, &request)?;
    let mut out = io::stdout().lock();
    for hit in &hits {
        let metadata: serde_json::Value = serde_json::from_str(&hit.metadata).unwrap_or_default();
        let line = serde_json::json!({
            "id": hit.id, "score": hit.score, "distance": hit.distance, "text": hit.text, "metadata": metadata,
        });
        serde_json::to_writer(&mut out, &line)?;
        writeln!(out)?;
    }
    Ok(if hits.is_empty() {
        Outcome::NothingFound
    } else {
        Outcome::Done
    })
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}
