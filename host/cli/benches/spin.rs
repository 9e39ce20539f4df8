//! tvs on the real Spin (`spin up`, Spin 4.0.2 with its SQLite key-value, a fresh instance per
//! request) beside `tvs serve`, in one run on the same data: tenants of 1k, 10k and 100k
//! embedding-like 384-d documents ingested in batches of 200; then search (k = 10) p50 / p99
//! and recall@10 against brute force, a filtered search, single-document writes, what a Spin
//! search reads from key-value (values and bytes, from the `x-tvs-kv-reads` header the
//! component sets) and its storage's peak memory, and the index as `GET /v1/stats` shows it.
//! `cargo bench -p tvs --bench spin` (`TVS_BENCH_SPIN_SIZES=1000,10000` to choose; the Spin CLI
//! from `../shared/tools/spin/spin` or `TVS_SPIN`).
//!
//! Every request goes on a fresh connection, to both servers: on a kept-alive connection Spin
//! 4.0.2's HTTP trigger writes a chunked answer in pieces without TCP_NODELAY, and each answer
//! waits for the client's delayed ACK (44 ms p50 for a 1.4 ms search, measured here).
#![allow(clippy::print_stdout, clippy::unwrap_used, dead_code)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tvs_runtime::{Runtime, RuntimeLimits};
use tvs_server::auth::Keys;
use tvs_server::http::{App, ServerLimits};
use tvs_store::config::Settings;
use tvs_store::pool::{Pool, PoolConfig};
use tvs_store::tenant::DataDir;
use tvs_synth::EmbeddingLike;

#[path = "common/http_client.rs"]
mod http_client;
#[path = "../../../tests/all/spin_host.rs"]
mod spin_host;
#[path = "../../../tests/all/spin_up.rs"]
mod spin_up;
#[path = "common/timing.rs"]
mod timing;

/// What `spin_up` needs of the tests' support: the local model's files, for Spin's own `llm`.
mod support {
    pub fn local_model() -> &'static std::path::Path {
        static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
        DIR.get_or_init(|| {
            let dir = tvs_embed::model::model_dir();
            tvs_embed::model::ensure(&dir, &mut |line| eprintln!("{line}")).expect("the local model");
            dir
        })
    }
}

use http_client::{Connection, serve_in_background};

const ADMIN: &str = "bench-admin";
const DIMS: usize = 384;
const QUERIES: usize = 200;
const BATCH: usize = 200;

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn create(addr: SocketAddr, id: &str) -> String {
    let (status, body) = Connection::open(addr).post(
        "/v1/tenants",
        ADMIN,
        &json!({"id": id, "dims": DIMS, "embedding_model": "none", "max_documents": 1_000_000}).to_string(),
    );
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice::<Value>(&body).unwrap()["api_key"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn documents(vectors: &[Vec<f32>], from: usize) -> String {
    let docs: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let n = from + i;
            json!({"id": format!("d{n}"), "text": format!("document number {n} of the bench tenant"),
                   "metadata": {"n": n, "group": n % 10}, "vector": v})
        })
        .collect();
    json!({ "documents": docs }).to_string()
}

/// Ingests `vectors` in batches of [`BATCH`]; returns documents per second over the whole fill
/// and over its last tenth (the rate at this size, folds included), and the largest storage
/// memory a write reported (Spin only: the writes that fold hold the most).
fn fill(addr: SocketAddr, key: &str, vectors: &[Vec<f32>]) -> (f64, f64, u64) {
    let started = Instant::now();
    // The batches of the last tenth (rounded down to a whole batch).
    let last_tenth = (vectors.len() - vectors.len() / 10) / BATCH * BATCH;
    let mut tenth_started = started;
    let mut memory = 0;
    for (b, chunk) in vectors.chunks(BATCH).enumerate() {
        if b * BATCH == last_tenth {
            tenth_started = Instant::now();
        }
        let mut conn = Connection::open(addr);
        let (status, reply) = conn.post("/v1/documents", key, &documents(chunk, b * BATCH));
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
        memory = kv_reads(&conn).map_or(memory, |r| memory.max(r.memory));
    }
    let tenth = vectors.len() - last_tenth;
    (
        vectors.len() as f64 / started.elapsed().as_secs_f64(),
        tenth as f64 / tenth_started.elapsed().as_secs_f64(),
        memory,
    )
}

fn cosine_distance(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    1.0 - dot / (norm(a) * norm(b))
}

/// The exact top-10 ids among the documents `keep` admits.
fn truth(vectors: &[Vec<f32>], query: &[f32], keep: impl Fn(usize) -> bool) -> HashSet<String> {
    let mut scored: Vec<(f32, usize)> = vectors
        .iter()
        .enumerate()
        .filter(|(n, _)| keep(*n))
        .map(|(n, v)| (cosine_distance(query, v), n))
        .collect();
    let tenth = 10.min(scored.len() - 1);
    scored.select_nth_unstable_by(tenth, |a, b| a.0.total_cmp(&b.0));
    scored.truncate(10);
    scored.into_iter().map(|(_, n)| format!("d{n}")).collect()
}

#[derive(Debug, Default)]
struct Measured {
    ingest_docs_per_s: f64,
    /// Over the last tenth of the fill: the rate at this size.
    ingest_at_size: f64,
    /// The largest storage memory an ingest request reported (Spin only).
    ingest_memory: u64,
    search: (Duration, Duration),
    recall: f64,
    filtered: Duration,
    single_write: Duration,
    /// Medians of what a search read (values, bytes, µs in gets, µs decoding) and the largest
    /// storage memory seen (Spin only).
    reads: Option<KvReads>,
    index: Value,
}

#[derive(Debug, Default, Clone, Copy)]
struct KvReads {
    gets: u64,
    bytes: u64,
    get_us: u64,
    decode_us: u64,
    memory: u64,
}

fn kv_reads(conn: &Connection) -> Option<KvReads> {
    let header = conn.header("x-tvs-kv-reads")?;
    let field = |name: &str| {
        header
            .split(';')
            .find_map(|part| part.trim().strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
    };
    Some(KvReads {
        gets: field("gets")?,
        bytes: field("bytes")?,
        get_us: field("get-us")?,
        decode_us: field("decode-us")?,
        memory: field("storage-memory")?,
    })
}

fn median(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values[values.len() / 2]
}

/// Waits until `tvs serve`'s store of `tenant` searches its graph (built in the background
/// after a large ingest; searched exactly meanwhile), as a user's searches would a little later.
fn wait_for_graph(pool: &Pool, tenant: &str) {
    let id = tvs_store::tenant::TenantId::new(tenant).unwrap();
    let started = Instant::now();
    loop {
        let info = pool.get(&id).unwrap().info();
        if info.index == tvs_store::store::IndexKind::Exact && info.count < 10_000
            || info.index == tvs_store::store::IndexKind::Hnsw && info.pending_vectors == 0
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "  (tvs serve's index of {tenant} ready {:.1?} after the ingest)",
        started.elapsed()
    );
}

fn measure(
    addr: SocketAddr,
    key: &str,
    vectors: &[Vec<f32>],
    queries: &[Vec<f32>],
    truths: &[HashSet<String>],
    settle: impl FnOnce(),
) -> Measured {
    let (ingest_docs_per_s, ingest_at_size, ingest_memory) = fill(addr, key, vectors);
    let mut measured = Measured {
        ingest_docs_per_s,
        ingest_at_size,
        ingest_memory,
        ..Measured::default()
    };
    settle();
    // The first searches after the last write may read cold pages: warm up as a user would
    // be, then time every query once.
    for q in queries.iter().take(10) {
        Connection::open(addr).post("/v1/search", key, &json!({"vector": q, "top_k": 10}).to_string());
    }
    let (mut times, mut found, mut reads) = (Vec::new(), 0usize, Vec::new());
    for (q, truth) in queries.iter().zip(truths) {
        let body = json!({"vector": q, "top_k": 10}).to_string();
        let started = Instant::now();
        let mut conn = Connection::open(addr);
        let (status, reply) = conn.post("/v1/search", key, &body);
        times.push(started.elapsed());
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
        let hits: Value = serde_json::from_slice(&reply).unwrap();
        found += hits["hits"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| truth.contains(h["id"].as_str().unwrap()))
            .count();
        reads.extend(kv_reads(&conn));
    }
    measured.search = timing::stats(times);
    measured.recall = found as f64 / truths.iter().map(HashSet::len).sum::<usize>() as f64;
    if !reads.is_empty() {
        measured.reads = Some(KvReads {
            gets: median(reads.iter().map(|r| r.gets).collect()),
            bytes: median(reads.iter().map(|r| r.bytes).collect()),
            get_us: median(reads.iter().map(|r| r.get_us).collect()),
            decode_us: median(reads.iter().map(|r| r.decode_us).collect()),
            memory: reads.iter().map(|r| r.memory).max().unwrap_or(0),
        });
    }
    // A filter matching a tenth of the tenant: every hit must match.
    let mut filtered = Vec::new();
    for q in queries.iter().take(50) {
        let body = json!({"vector": q, "top_k": 10, "filter": {"group": 3}}).to_string();
        let started = Instant::now();
        let (status, reply) = Connection::open(addr).post("/v1/search", key, &body);
        filtered.push(started.elapsed());
        assert_eq!(status, 200);
        let hits: Value = serde_json::from_slice(&reply).unwrap();
        let hits = hits["hits"].as_array().unwrap();
        assert_eq!(hits.len(), 10);
        assert!(
            hits.iter().all(|h| h["metadata"]["group"] == 3),
            "a hit outside the filter"
        );
    }
    measured.filtered = timing::stats(filtered).0;
    // Single-document writes replace existing documents, so the tenant keeps its size.
    let mut single = Vec::new();
    for (i, v) in vectors.iter().take(50).enumerate() {
        let body = documents(std::slice::from_ref(v), i);
        let started = Instant::now();
        let (status, _) = Connection::open(addr).post("/v1/documents", key, &body);
        single.push(started.elapsed());
        assert_eq!(status, 200);
    }
    measured.single_write = timing::stats(single).0;
    let (_, stats) = Connection::open(addr).get("/v1/stats", key);
    let stats: Value = serde_json::from_slice(&stats).unwrap();
    measured.index = stats["index"].clone();
    measured
}

fn main() {
    let sizes: Vec<usize> = std::env::var("TVS_BENCH_SPIN_SIZES")
        .unwrap_or_else(|_| "1000,10000,100000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("a size"))
        .collect();
    let Some(spin) = spin_up::spin_binary() else {
        eprintln!("no Spin CLI: put Spin 4.0.2 at ../shared/tools/spin/spin or set TVS_SPIN");
        std::process::exit(2);
    };

    let composed = spin_host::spin_build();
    println!("## Component sizes (`spin build`)\n");
    println!("| component | bytes |\n|---|---|");
    for (name, path) in [
        ("front (spin-sdk 5.2)", spin_host::built_part("tvs_spin_front")),
        (
            "handler (the built-in guest)",
            spin_host::built_part("tvs_guest_handler"),
        ),
        (
            "storage (key-value + generate-embeddings)",
            spin_host::built_part("tvs_spin_storage"),
        ),
        ("composed tvs.wasm", composed.to_path_buf()),
    ] {
        println!("| {name} | {} |", std::fs::metadata(&path).unwrap().len());
    }

    let tmp = tempfile::tempdir().unwrap();
    let data = DataDir::open(tmp.path().join("serve")).unwrap();
    let (keys, _) = Keys::open(data.clone(), Some(ADMIN.into())).unwrap();
    let settings = Settings::default();
    let pool = Arc::new(Pool::new(data, PoolConfig::from_settings(&settings)));
    let runtime = Arc::new(Runtime::new(RuntimeLimits::default()).unwrap());
    let serve = serve_in_background(Arc::new(App::new(
        pool.clone(),
        runtime,
        keys,
        settings,
        ServerLimits::default(),
    )));
    let state = tmp.path().join("spin");
    std::fs::create_dir_all(&state).unwrap();
    let up = spin_up::SpinUp::start(&spin, &state, &[("admin_key", ADMIN), ("max_documents", "1000000")]);

    let mut query_generator = EmbeddingLike::new(DIMS, 99);
    let queries: Vec<Vec<f32>> = (0..QUERIES).map(|_| query_generator.next_vector()).collect();
    let mut rows = Vec::new();
    for &docs in &sizes {
        let started = Instant::now();
        let mut generator = EmbeddingLike::new(DIMS, 7);
        let vectors: Vec<Vec<f32>> = (0..docs).map(|_| generator.next_vector()).collect();
        let truths: Vec<HashSet<String>> = queries.iter().map(|q| truth(&vectors, q, |_| true)).collect();
        let tenant = format!("t{docs}");
        let on_spin = measure(up.addr, &create(up.addr, &tenant), &vectors, &queries, &truths, || {});
        let on_serve = measure(serve, &create(serve, &tenant), &vectors, &queries, &truths, || {
            wait_for_graph(&pool, &tenant)
        });
        eprintln!("  ({docs} documents measured in {:.0?})", started.elapsed());
        rows.push((docs, on_spin, on_serve));
    }

    println!("\n## Search (k = 10), same data and queries ({QUERIES} queries, one client)\n");
    println!(
        "| documents | spin up p50 / p99 | recall@10 | tvs serve p50 / p99 | recall@10 | filtered (1 in 10) spin up / tvs serve |"
    );
    println!("|---:|---|---:|---|---:|---|");
    for (docs, s, t) in &rows {
        println!(
            "| {docs} | {} / {} | {:.3} | {} / {} | {:.3} | {} / {} |",
            ms(s.search.0),
            ms(s.search.1),
            s.recall,
            ms(t.search.0),
            ms(t.search.1),
            t.recall,
            ms(s.filtered),
            ms(t.filtered)
        );
    }
    println!("\n## Writes: ingest in batches of {BATCH}, and single-document upserts (p50)\n");
    println!("Ingest over the whole fill, and over its last tenth (the rate at that size).\n");
    println!(
        "| documents | spin up ingest (whole / last tenth) | tvs serve ingest (whole / last tenth) | spin up single write | tvs serve single write |"
    );
    println!("|---:|---:|---:|---|---|");
    for (docs, s, t) in &rows {
        println!(
            "| {docs} | {:.0} / {:.0} docs/s | {:.0} / {:.0} docs/s | {} | {} |",
            s.ingest_docs_per_s,
            s.ingest_at_size,
            t.ingest_docs_per_s,
            t.ingest_at_size,
            ms(s.single_write),
            ms(t.single_write)
        );
    }
    println!("\n## What a search on Spin reads, and the index (`GET /v1/stats`)\n");
    println!(
        "| documents | values read | bytes read | in gets | decoding | storage peak memory (search / ingest) | clusters | read per search | estimated recall | key-value values |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (docs, s, _) in &rows {
        let r = s.reads.unwrap_or_default();
        let i = &s.index;
        println!(
            "| {docs} | {} | {:.2} MB | {:.2} ms | {:.2} ms | {:.1} / {:.1} MiB | {} | {} | {:.3} | {} |",
            r.gets,
            r.bytes as f64 / 1e6,
            r.get_us as f64 / 1e3,
            r.decode_us as f64 / 1e3,
            r.memory as f64 / (1 << 20) as f64,
            s.ingest_memory as f64 / (1 << 20) as f64,
            i["clusters"],
            i["clusters_per_search"],
            i["estimated_recall_at_10"].as_f64().unwrap_or(1.0),
            i["key_value_values"]
        );
    }
}
