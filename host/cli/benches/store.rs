//! Store benchmark: prints a table of search latency and recall@10 (exact scan on a small
//! tenant, HNSW on a big one), durable single-document writes/s, batch ingest docs/s, cold open
//! time and memory per open tenant against its raw f32 vectors.
//!
//! `cargo bench -p tvs --bench store` (the big tenant has `TVS_BENCH_BIG` documents, default
//! 200000; `TVS_BENCH_BIG=20000` for a quick run). Vectors are embedding-like (32-d clustered
//! latent mapped to 384-d plus noise), never i.i.d. Gaussian.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use tvs_store::config::{Metric, ScalarKind, StoreConfig};
use tvs_store::store::{Hit, NewDocument, SearchQuery, TenantStore};
use tvs_store::tenant::StoreDir;
use tvs_synth::EmbeddingLike;

const DIMS: usize = 384;
const QUERIES: usize = 200;

#[path = "common/rss.rs"]
mod rss;
use rss::rss_bytes;

fn docs(n: usize, seed: u64) -> Vec<NewDocument> {
    let mut generator = EmbeddingLike::new(DIMS, seed);
    (0..n)
        .map(|i| NewDocument {
            id: Some(format!("d{i}")),
            text: format!("document {i}"),
            metadata: serde_json::from_str(&format!("{{\"n\": {i}}}")).unwrap(),
            vector: generator.next_vector(),
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn fmt_ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

struct Row(String, String);

/// Exact top-10 by brute force.
fn truth(corpus: &[NewDocument], query: &[f32]) -> Vec<String> {
    let mut scored: Vec<(f32, usize)> = corpus
        .iter()
        .enumerate()
        .map(|(i, d)| (tvs_store::vectors::distance(Metric::Cos, query, &d.vector), i))
        .collect();
    scored.select_nth_unstable_by(10, |a, b| a.0.total_cmp(&b.0));
    scored.truncate(10);
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    scored.into_iter().map(|(_, i)| corpus[i].id.clone().unwrap()).collect()
}

/// Queries and their exact top-10, computed once per corpus.
struct Workload {
    queries: Vec<Vec<f32>>,
    truths: Vec<Vec<String>>,
}

fn workload(corpus: &[NewDocument]) -> Workload {
    let mut generator = EmbeddingLike::new(DIMS, 4242);
    let queries: Vec<Vec<f32>> = (0..QUERIES).map(|_| generator.next_vector()).collect();
    let truths = queries.iter().map(|q| truth(corpus, q)).collect();
    Workload { queries, truths }
}

/// Runs every query once, timed; returns the sorted latencies and each query's hits.
fn timed_searches(
    store: &TenantStore,
    work: &Workload,
    filter: Option<&tvs_guest_core::filter::Filter>,
) -> (Vec<Duration>, Vec<Vec<Hit>>) {
    let mut times = Vec::with_capacity(QUERIES);
    let mut results = Vec::with_capacity(QUERIES);
    for q in &work.queries {
        let start = Instant::now();
        let hits = store
            .search(&SearchQuery {
                vector: q.clone(),
                k: 10,
                filter: filter.cloned(),
                ..Default::default()
            })
            .unwrap();
        times.push(start.elapsed());
        results.push(hits);
    }
    times.sort();
    (times, results)
}

fn qps(sorted_times: &[Duration]) -> f64 {
    sorted_times.len() as f64 / sorted_times.iter().sum::<Duration>().as_secs_f64()
}

fn search_rows(label: &str, store: &TenantStore, work: &Workload, rows: &mut Vec<Row>) {
    let (times, results) = timed_searches(store, work, None);
    let found: usize = results
        .iter()
        .zip(&work.truths)
        .map(|(hits, truth)| hits.iter().filter(|h| truth.contains(&h.id)).count())
        .sum();
    rows.push(Row(
        format!("{label}: search k=10 p50 / p99"),
        format!(
            "{} / {}",
            fmt_ms(percentile(&times, 0.5)),
            fmt_ms(percentile(&times, 0.99))
        ),
    ));
    rows.push(Row(
        format!("{label}: search QPS (1 thread)"),
        format!("{:.0}", qps(&times)),
    ));
    rows.push(Row(
        format!("{label}: recall@10"),
        format!("{:.3}", found as f64 / (10 * QUERIES) as f64),
    ));
}

/// Search with a metadata filter that half of the documents pass (`n < half`): the filter is
/// evaluated on candidates, so this shows what reading stored metadata costs.
fn filtered_search_rows(label: &str, store: &TenantStore, work: &Workload, half: usize, rows: &mut Vec<Row>) {
    let filter = tvs_guest_core::filter::Filter::parse(&serde_json::json!({"n": {"$lt": half}})).unwrap();
    let (times, results) = timed_searches(store, work, Some(&filter));
    for hits in &results {
        assert_eq!(hits.len(), 10);
        assert!(hits.iter().all(|h| h.metadata["n"].as_u64().unwrap() < half as u64));
    }
    rows.push(Row(
        format!("{label}: filtered search (half pass) p50; QPS"),
        format!("{}; {:.0}", fmt_ms(percentile(&times, 0.5)), qps(&times)),
    ));
}

fn main() {
    let big: usize = std::env::var("TVS_BENCH_BIG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let tmp = tempfile::tempdir().unwrap();
    let mut rows = Vec::new();
    let config = StoreConfig::new(DIMS, Metric::Cos, ScalarKind::default(), "none");

    // Small tenant: 2,000 documents, exact scan.
    let small_dir = StoreDir::new(tmp.path().join("small"));
    let small_docs = docs(2000, 1);
    let store = TenantStore::create(&small_dir, &config).unwrap();
    let start = Instant::now();
    for chunk in small_docs.chunks(100) {
        store.upsert(chunk.to_vec()).unwrap();
    }
    let batch_rate = 2000.0 / start.elapsed().as_secs_f64();
    rows.push(Row(
        "batch ingest, 100 docs/batch, durable".into(),
        format!("{batch_rate:.0} docs/s"),
    ));
    let small_work = workload(&small_docs);
    search_rows("2k exact", &store, &small_work, &mut rows);
    filtered_search_rows("2k exact", &store, &small_work, 1000, &mut rows);
    let small_graph = TenantStore::create(
        &StoreDir::new(tmp.path().join("small-hnsw")),
        &StoreConfig {
            hnsw_threshold: 1000,
            ..config.clone()
        },
    )
    .unwrap();
    small_graph.upsert(small_docs.clone()).unwrap();
    small_graph.wait_for_index();
    search_rows("2k hnsw (ef 128)", &small_graph, &small_work, &mut rows);
    filtered_search_rows("2k hnsw (ef 128)", &small_graph, &small_work, 1000, &mut rows);
    drop(small_graph);
    store.flush().unwrap();
    drop(store);

    // Cold open of the small tenant from its snapshot.
    let mut opens = Vec::new();
    for _ in 0..20 {
        let start = Instant::now();
        let store = TenantStore::open(&small_dir).unwrap();
        opens.push(start.elapsed());
        drop(store);
    }
    opens.sort();
    rows.push(Row(
        "2k cold open p50 / p99 (snapshot)".into(),
        format!(
            "{} / {}",
            fmt_ms(percentile(&opens, 0.5)),
            fmt_ms(percentile(&opens, 0.99))
        ),
    ));

    // Memory of an open 2k tenant against its raw vectors (estimate; 3 MB is too small for an
    // RSS delta to mean anything inside a process that has freed more than that).
    let store = TenantStore::open(&small_dir).unwrap();
    let raw = 2000.0 * DIMS as f64 * 4.0;
    rows.push(Row(
        "2k open tenant memory / raw f32 (estimate)".into(),
        format!("{:.2}x", store.memory_bytes() as f64 / raw),
    ));
    drop(store);

    // Durable single-document writes, one writer and four concurrent writers (group commit).
    let writes_dir = StoreDir::new(tmp.path().join("writes"));
    let store = TenantStore::create(&writes_dir, &config).unwrap();
    let one_by_one = docs(300, 2);
    let start = Instant::now();
    for d in &one_by_one {
        store.upsert(vec![d.clone()]).unwrap();
    }
    rows.push(Row(
        "single-doc durable writes, 1 writer".into(),
        format!("{:.0} writes/s", 300.0 / start.elapsed().as_secs_f64()),
    ));
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..4 {
            let (store, docs) = (&store, &one_by_one);
            s.spawn(move || {
                for (i, d) in docs.iter().enumerate().filter(|(i, _)| i % 4 == t) {
                    let mut d = d.clone();
                    d.id = Some(format!("c{i}"));
                    store.upsert(vec![d]).unwrap();
                }
            });
        }
    });
    rows.push(Row(
        "single-doc durable writes, 4 writers".into(),
        format!("{:.0} writes/s", 300.0 / start.elapsed().as_secs_f64()),
    ));
    drop(store);

    // Big tenant: exact scan first (a store that never builds a graph), then HNSW.
    let big_docs = docs(big, 3);
    let big_work = workload(&big_docs);
    let exact_dir = StoreDir::new(tmp.path().join("big-exact"));
    let exact = TenantStore::create(
        &exact_dir,
        &StoreConfig {
            hnsw_threshold: usize::MAX,
            ..config.clone()
        },
    )
    .unwrap();
    for chunk in big_docs.chunks(1000) {
        exact.upsert(chunk.to_vec()).unwrap();
    }
    search_rows(&format!("{big} exact"), &exact, &big_work, &mut rows);
    drop(exact);
    std::fs::remove_dir_all(exact_dir.root()).unwrap();

    let big_dir = StoreDir::new(tmp.path().join("big"));
    let store = TenantStore::create(&big_dir, &config).unwrap();
    let start = Instant::now();
    for chunk in big_docs.chunks(1000) {
        store.upsert(chunk.to_vec()).unwrap();
    }
    let logged = start.elapsed();
    store.wait_for_index();
    let indexed = start.elapsed();
    rows.push(Row(
        format!("{big} docs: ingest 1000/batch durable; + HNSW build"),
        format!(
            "{:.0} docs/s; {:.1} s total",
            big as f64 / logged.as_secs_f64(),
            indexed.as_secs_f64()
        ),
    ));
    search_rows(&format!("{big} hnsw (ef 128)"), &store, &big_work, &mut rows);
    filtered_search_rows(&format!("{big} hnsw (ef 128)"), &store, &big_work, big / 2, &mut rows);
    let info = store.info();
    rows.push(Row(
        format!("{big} open tenant memory / raw f32 (estimate)"),
        format!("{:.2}x", info.memory_bytes as f64 / info.raw_vector_bytes as f64),
    ));
    store.flush().unwrap();
    drop(store);
    drop(big_docs);
    let before = rss_bytes();
    let start = Instant::now();
    let store = TenantStore::open(&big_dir).unwrap();
    rows.push(Row(format!("{big} cold open (snapshot)"), fmt_ms(start.elapsed())));
    let rss_delta = rss_bytes().saturating_sub(before) as f64;
    rows.push(Row(
        format!("{big} open tenant RSS delta / raw f32"),
        format!("{:.2}x", rss_delta / store.info().raw_vector_bytes as f64),
    ));
    drop(store);

    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    println!("\n{:width$}  value", "measure");
    println!("{}  -----", "-".repeat(width));
    for Row(k, v) in rows {
        println!("{k:width$}  {v}");
    }
}
