//! Cold open of a tenant from its snapshot, the first query included: a 2k-document tenant
//! (exact scan) and a big one (HNSW), with a new tenant's defaults.
//!
//! `cargo bench -p tvs-store --bench open` (`TVS_BENCH_N` documents in the big tenant, default
//! 200,000; `TVS_BENCH_DIR` keeps the tenants there and reuses them on the next run;
//! `TVS_BENCH_OPENS` opens each, default 9, more for a profiler). Files are
//! in the page cache, as for a tenant evicted from the pool and asked for again.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::path::Path;
use std::time::Instant;

use tvs_store::config::{Metric, ScalarKind, StoreConfig};
use tvs_store::store::{NewDocument, SearchQuery, TenantStore};
use tvs_store::tenant::StoreDir;
use tvs_synth::EmbeddingLike;

const DIMS: usize = 384;

fn prepare(dir: &StoreDir, n: usize) {
    if dir.root().join("config").exists() {
        return;
    }
    let config = StoreConfig::new(DIMS, Metric::L2, ScalarKind::default(), "none");
    let store = TenantStore::create(dir, &config).unwrap();
    let mut generator = EmbeddingLike::with_shape(DIMS, 128, 12, 0.2, 1);
    let mut next = 0;
    while next < n {
        let batch: Vec<NewDocument> = (next..(next + 10_000).min(n))
            .map(|i| NewDocument {
                id: Some(format!("d{i}")),
                text: format!("document {i}"),
                metadata: serde_json::from_str(&format!("{{\"i\": {i}}}")).unwrap(),
                vector: generator.next_vector(),
            })
            .collect();
        next += batch.len();
        store.upsert(batch).unwrap();
    }
    store.wait_for_index();
    store.flush().unwrap();
}

/// (p50, min) milliseconds of open + first query.
fn open_and_query(dir: &StoreDir, opens: usize) -> (f64, f64) {
    let query = SearchQuery {
        vector: EmbeddingLike::with_shape(DIMS, 128, 12, 0.2, 2).next_vector(),
        k: 10,
        ..Default::default()
    };
    let mut times: Vec<f64> = (0..opens)
        .map(|_| {
            let started = Instant::now();
            let store = TenantStore::open(dir).unwrap();
            assert_eq!(store.search(&query).unwrap().len(), 10);
            let took = started.elapsed().as_secs_f64() * 1e3;
            drop(store);
            took
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[opens / 2], times[0])
}

fn main() {
    let n: usize = std::env::var("TVS_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let opens: usize = std::env::var("TVS_BENCH_OPENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9)
        .max(1);
    let tmp = tempfile::tempdir().unwrap();
    let root = std::env::var_os("TVS_BENCH_DIR").map_or_else(|| tmp.path().to_owned(), Into::into);
    println!("| tenant | open + first query, p50 ms | min ms |");
    println!("|---|---:|---:|");
    for (name, docs) in [("small", 2_000), ("big", n)] {
        let dir = StoreDir::new(Path::new(&root).join(format!("{name}-{docs}")));
        prepare(&dir, docs);
        let (p50, min) = open_and_query(&dir, opens);
        println!("| {name} ({docs} documents) | {p50:.3} | {min:.3} |");
    }
}
