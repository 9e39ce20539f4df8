//! The first searches after an open against the next ones: a 200k-document tenant with a new
//! tenant's defaults is opened three times and asked the same 200 queries twice after each
//! open; each line prints QPS of the first pass, then of the second. The first pass pays for
//! mapping and checking the f32 rows it re-ranks for the first time.
//!
//! `cargo bench -p tvs-store --bench firstpass` (`TVS_BENCH_DIR` keeps the tenant there and
//! reuses it on the next run; default a temporary directory).
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::time::Instant;

use tvs_store::config::{Metric, ScalarKind, StoreConfig};
use tvs_store::store::{NewDocument, SearchQuery, TenantStore};
use tvs_store::tenant::StoreDir;
use tvs_synth::EmbeddingLike;

const DIMS: usize = 384;

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let root = std::env::var_os("TVS_BENCH_DIR").map_or_else(|| tmp.path().to_owned(), Into::into);
    let dir = StoreDir::new(std::path::Path::new(&root).join("big-200000"));
    if !dir.root().join("config").exists() {
        let config = StoreConfig::new(DIMS, Metric::L2, ScalarKind::default(), "none");
        let store = TenantStore::create(&dir, &config).unwrap();
        let mut generator = EmbeddingLike::with_shape(DIMS, 128, 12, 0.2, 1);
        for chunk in 0..200 {
            let batch: Vec<NewDocument> = (0..1000)
                .map(|i| NewDocument {
                    id: Some(format!("d{}", chunk * 1000 + i)),
                    vector: generator.next_vector(),
                    ..Default::default()
                })
                .collect();
            store.upsert(batch).unwrap();
        }
        store.wait_for_index();
        store.flush().unwrap();
    }
    let mut query_generator = EmbeddingLike::with_shape(DIMS, 128, 12, 0.2, 2);
    let queries: Vec<Vec<f32>> = (0..200).map(|_| query_generator.next_vector()).collect();
    println!("| open | first 200 queries, QPS | next 200, QPS |");
    println!("|---:|---:|---:|");
    for open in 1..=3 {
        let store = TenantStore::open(&dir).unwrap();
        let mut passes = Vec::new();
        for _ in 0..2 {
            let started = Instant::now();
            for q in &queries {
                store
                    .search(&SearchQuery {
                        vector: q.clone(),
                        k: 10,
                        ..Default::default()
                    })
                    .unwrap();
            }
            passes.push(queries.len() as f64 / started.elapsed().as_secs_f64());
        }
        println!("| {open} | {:.0} | {:.0} |", passes[0], passes[1]);
    }
}
