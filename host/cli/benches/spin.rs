//! tvs on Spin beside `tvs serve`, in one run on the same data: the sizes of the components
//! `spin build` makes; search (k = 10) and ingest (100 documents) latency through the
//! Spin-shaped host of the tests (a fresh instance per request, key-value in files) and through
//! `tvs serve`, on tenants of 1k to 20k documents of 384-d client vectors; and the tenant size
//! at which a search on Spin passes 100 ms (every Spin request reads its whole tenant from
//! key-value). `cargo bench -p tvs --bench spin` (`TVS_BENCH_SPIN_SIZES=1000,10000` to choose).
#![allow(clippy::print_stdout, clippy::unwrap_used, dead_code)]

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
#[path = "common/timing.rs"]
mod timing;

use http_client::{Connection, serve_in_background};

const ADMIN: &str = "bench-admin";
const DIMS: usize = 384;

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

fn batch(generator: &mut EmbeddingLike, from: usize, count: usize) -> String {
    let docs: Vec<Value> = (from..from + count)
        .map(|n| {
            json!({"id": format!("d{n}"), "text": format!("document number {n} of the bench tenant"),
                   "metadata": {"n": n, "group": n % 10}, "vector": generator.next_vector()})
        })
        .collect();
    json!({ "documents": docs }).to_string()
}

/// Fills a tenant to `docs` documents in 500-document requests.
fn fill(addr: SocketAddr, key: &str, docs: usize) {
    let mut generator = EmbeddingLike::new(DIMS, 7);
    let mut conn = Connection::open(addr);
    for from in (0..docs).step_by(500) {
        let (status, reply) = conn.post("/v1/documents", key, &batch(&mut generator, from, 500.min(docs - from)));
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    }
}

/// (search p50, p99, ingest-100 p50) on a tenant of `docs` documents.
fn measure(addr: SocketAddr, key: &str, docs: usize, rounds: usize) -> (Duration, Duration, Duration) {
    let mut queries = EmbeddingLike::new(DIMS, 99);
    let mut conn = Connection::open(addr);
    let (search_p50, search_p99) = timing::time(rounds, || {
        let body = json!({"vector": queries.next_vector(), "top_k": 10}).to_string();
        let (status, reply) = conn.post("/v1/search", key, &body);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    });
    // Ingest replaces the same 100 ids, so the tenant keeps its size.
    let mut generator = EmbeddingLike::new(DIMS, 11);
    let (ingest_p50, _) = timing::time(rounds.min(20), || {
        let (status, reply) = conn.post("/v1/documents", key, &batch(&mut generator, docs - 100, 100));
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    });
    (search_p50, search_p99, ingest_p50)
}

fn main() {
    let sizes: Vec<usize> = std::env::var("TVS_BENCH_SPIN_SIZES")
        .unwrap_or_else(|_| "1000,2000,5000,10000,20000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("a size"))
        .collect();

    let composed = spin_host::spin_build();
    println!("## Component sizes (`spin build`)\n");
    println!("| component | bytes |\n|---|---|");
    for (name, path) in [
        ("front (spin-sdk 5.2)", spin_host::built_part("tvs_spin_front")),
        (
            "handler (the built-in guest, unchanged)",
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
        pool,
        runtime,
        keys,
        settings,
        ServerLimits::default(),
    )));
    let spin = spin_host::SpinHost::start(
        &tmp.path().join("kv"),
        &[("admin_key", ADMIN), ("max_documents", "1000000")],
    );

    println!("\n## Latency by tenant size (k = 10 search; 100-document upsert), same data\n");
    println!(
        "| documents | Spin search p50 / p99 | tvs serve search p50 / p99 | ratio | Spin ingest 100 | tvs serve ingest 100 |"
    );
    println!("|---|---|---|---|---|---|");
    let mut spin_search = Vec::new();
    for &docs in &sizes {
        let started = Instant::now();
        let spin_key = create(spin.addr, &format!("t{docs}"));
        fill(spin.addr, &spin_key, docs);
        let serve_key = create(serve, &format!("t{docs}"));
        fill(serve, &serve_key, docs);
        let rounds = if docs <= 2000 { 200 } else { 40 };
        let (s50, s99, si) = measure(spin.addr, &spin_key, docs, rounds);
        let (t50, t99, ti) = measure(serve, &serve_key, docs, 200);
        println!(
            "| {docs} | {} / {} | {} / {} | {:.0}× | {} | {} |",
            ms(s50),
            ms(s99),
            ms(t50),
            ms(t99),
            s50.as_secs_f64() / t50.as_secs_f64(),
            ms(si),
            ms(ti)
        );
        eprintln!("  ({docs} documents measured in {:.0?})", started.elapsed());
        spin_search.push((docs, s50));
    }
    let limit = Duration::from_millis(100);
    let crossing = spin_search.windows(2).find(|w| w[0].1 <= limit && w[1].1 > limit);
    println!();
    match (spin_search.first(), spin_search.last(), crossing) {
        (Some(first), _, _) if first.1 > limit => {
            println!("A Spin search passes 100 ms already at {} documents.", first.0)
        }
        (_, _, Some(w)) => {
            // Search time grows linearly with the tenant (it is read whole): interpolate.
            let (a, b) = (w[0], w[1]);
            let at = a.0 as f64
                + (b.0 - a.0) as f64 * (limit.as_secs_f64() - a.1.as_secs_f64())
                    / (b.1.as_secs_f64() - a.1.as_secs_f64());
            println!(
                "A Spin search passes 100 ms at about {at:.0} documents (between {} and {}).",
                a.0, b.0
            );
        }
        (_, Some(last), None) => println!(
            "A Spin search stays under 100 ms up to {} documents (p50 {}).",
            last.0,
            ms(last.1)
        ),
        _ => {}
    }
}
