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

use tvs::config::{ConfigFile, Metric, ScalarKind, ServeFile, Settings, StoreConfig};
use tvs::filter::Filter;
use tvs::runtime::{IngestDocument, IngestRequest, Mmr as GuestMmr, Runtime, RuntimeLimits, SearchRequest};
use tvs::store::{NewDocument, OpenError, TenantStore};
use tvs::tenant::{DataDir, StoreDir, TenantId};

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
    /// Ingest JSONL files of {"id","text","metadata","vector"} records
    Ingest(IngestArgs),
    /// k-NN search with a query vector
    Search(SearchArgs),
    /// Print a store's document count, dims, index kind and sizes as JSON
    Stats(TargetArgs),
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

#[derive(Debug, Args)]
struct StoreShape {
    /// Vector dimensions
    #[arg(long, default_value_t = 384)]
    dims: usize,
    /// Distance metric: cos, ip or l2
    #[arg(long, default_value = "cos")]
    metric: Metric,
    /// Storage of vectors in the HNSW graph: f32, f16 or i8
    #[arg(long, default_value = "f32")]
    scalar: ScalarKind,
    /// Embedding model (default: EMBEDDING_MODEL, else all-MiniLM-L6-v2; "none" for client vectors)
    #[arg(long)]
    model: Option<String>,
    /// Live documents at which an HNSW graph replaces exact scan [default: 10000]
    #[arg(long)]
    hnsw_threshold: Option<usize>,
    /// HNSW search breadth; higher is slower with better recall [default: 128]
    #[arg(long)]
    ef_search: Option<usize>,
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
    /// JSONL files, one document per line
    #[arg(required = true)]
    files: Vec<PathBuf>,
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
    /// Query vector as a JSON array
    #[arg(long)]
    vector: String,
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
    match cli.command {
        Command::Serve(args) => serve(settings, args, &file.serve),
        Command::Tenant(cmd) => tenant_command(&settings, cmd),
        Command::Ingest(args) => ingest(&settings, args),
        Command::Search(args) => search(&settings, args),
        Command::Stats(target) => {
            let store = open_target(&settings, &target)?;
            print_json(&store.info())?;
            Ok(Outcome::Done)
        }
    }
}

fn serve(settings: Settings, args: ServeArgs, file: &ServeFile) -> Result<Outcome> {
    let defaults = tvs::http::ServerLimits::default();
    let addr = args
        .addr
        .or(file.addr)
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 8080)));
    let guest_deadline_secs = args.guest_deadline_secs.or(file.guest_deadline_secs).unwrap_or(30);
    let guest_memory_mib = args.guest_memory_mib.or(file.guest_memory_mib).unwrap_or(256);
    let data = data_dir(&settings)?;
    let (keys, created) =
        tvs::auth::Keys::open(data.clone(), std::env::var("TVS_ADMIN_KEY").ok()).context("loading the admin key")?;
    if let Some(path) = created {
        writeln!(io::stderr(), "generated an admin key in {} (mode 0600)", path.display())?;
    }
    let limits = RuntimeLimits {
        deadline: std::time::Duration::from_secs(guest_deadline_secs.max(1)),
        memory_bytes: guest_memory_mib.max(1) << 20,
        ..RuntimeLimits::default()
    };
    let runtime = Arc::new(Runtime::new(limits).context("starting the wasm runtime")?);
    let pool = Arc::new(tvs::pool::Pool::new(
        data,
        tvs::pool::PoolConfig::from_settings(&settings),
    ));
    let server_limits = tvs::http::ServerLimits {
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
    let app = Arc::new(tvs::http::App::new(pool, runtime, keys, settings, server_limits));
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    tokio
        .block_on(async {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            // The address goes to stdout so scripts and tests can find an ephemeral port.
            writeln!(io::stdout(), "listening on http://{}", listener.local_addr()?)?;
            tvs::http::serve(app, listener).await
        })
        .with_context(|| format!("serving on {addr}"))?;
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

/// Reads one JSONL file, calling `each` with (line number, document) for every non-blank line.
fn read_jsonl(path: &Path, mut each: impl FnMut(usize, NewDocument) -> Result<()>) -> Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line_no = index + 1;
        let line = line.with_context(|| format!("{}:{line_no}: reading", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let doc: NewDocument = serde_json::from_str(&line)
            .map_err(|e| anyhow!("{}:{line_no}: not a document record: {e}", path.display()))?;
        each(line_no, doc).with_context(|| format!("{}:{line_no}", path.display()))?;
    }
    Ok(())
}

fn ingest(settings: &Settings, args: IngestArgs) -> Result<Outcome> {
    for path in &args.files {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !matches!(ext, "jsonl" | "ndjson") {
            bail!(
                "{}: only JSONL files with vectors can be ingested so far (text and Markdown need an embedding model)",
                path.display()
            );
        }
    }
    // Pass 1 validates everything, so a bad line stops the ingest before anything is written.
    // A tenant must exist; the single-tenant store is created after validation if missing.
    let (dir, _) = target_dir(settings, &args.target)?;
    let existing = if dir.exists() || args.target.tenant.is_some() {
        Some(open_target(settings, &args.target)?)
    } else {
        None
    };
    let mut dims = existing.as_ref().map(|store| store.config().dims);
    let mut total = 0u64;
    for path in &args.files {
        read_jsonl(path, |_, doc| {
            let want = *dims.get_or_insert(doc.vector.len());
            if doc.vector.len() != want {
                bail!("vector has {} dimensions, expected {want}", doc.vector.len());
            }
            if let Some(store) = &existing {
                store.check_vector(&doc.vector).map_err(|e| anyhow!(e))?;
            } else if let Some(i) = doc.vector.iter().position(|v| !v.is_finite()) {
                bail!("vector component {i} is not a finite number");
            }
            total += 1;
            Ok(())
        })?;
    }
    let Some(dims) = dims else {
        writeln!(io::stderr(), "nothing to ingest: the files hold no records")?;
        return Ok(Outcome::Done);
    };
    let store = match existing {
        Some(store) => store,
        None => {
            let config = StoreConfig::new(dims, args.metric, ScalarKind::F32, &settings.embedding_model);
            TenantStore::create(&dir, &config)
                .with_context(|| format!("creating the single-tenant store at {}", dir.root().display()))?
        }
    };

    let progress = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{spinner} {wide_bar} {pos}/{len} docs {per_sec} eta {eta}")
            .expect("static template"),
    );
    let batch_size = args.batch.max(1);
    let mut batch = Vec::with_capacity(batch_size);
    // Ingestion runs in the wasm guest, as it does for HTTP requests: one code path.
    let runtime = Runtime::new(RuntimeLimits::default()).context("starting the wasm runtime")?;
    let flush = |batch: &mut Vec<NewDocument>| -> Result<()> {
        let documents = std::mem::take(batch)
            .into_iter()
            .map(|d| IngestDocument {
                id: d.id,
                text: Some(d.text),
                metadata: Some(serde_json::Value::Object(d.metadata).to_string()),
                vector: Some(d.vector),
            })
            .collect();
        let response = runtime.ingest(store.clone(), &IngestRequest { documents, chunk: None })?;
        progress.inc(response.ids.len() as u64);
        Ok(())
    };
    for path in &args.files {
        read_jsonl(path, |_, doc| {
            batch.push(doc);
            if batch.len() >= batch_size {
                flush(&mut batch)?;
            }
            Ok(())
        })?;
    }
    flush(&mut batch)?;
    progress.finish_and_clear();
    if store.info().index != tvs::store::IndexKind::Exact {
        // Leave a snapshot with a complete graph, so the next open does not index again.
        writeln!(io::stderr(), "documents are durable; adding them to the HNSW index…")?;
        store.wait_for_index();
    }
    store
        .flush()
        .context("writing a snapshot after the ingest (the documents are durable in the log)")?;
    writeln!(
        io::stderr(),
        "ingested {total} documents; the store now holds {}",
        store.count()
    )?;
    Ok(Outcome::Done)
}

fn search(settings: &Settings, args: SearchArgs) -> Result<Outcome> {
    let vector: Vec<f32> = serde_json::from_str(&args.vector).context("--vector must be a JSON array of numbers")?;
    // Checked here so a bad filter is reported before any store is opened.
    if let Some(filter) = &args.filter {
        let value = serde_json::from_str(filter).context("--filter must be JSON")?;
        Filter::parse(&value)?;
    }
    let store = open_target(settings, &args.target)?;
    let k = args.k.unwrap_or(settings.default_top_k);
    let request = SearchRequest {
        query: None,
        vector: Some(vector),
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
