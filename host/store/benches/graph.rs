//! HNSW search breadth: a calibrated graph against fixed breadths, on one graph, in one run.
//! Builds a usearch graph the way the store does (`vectors::new_graph`, f32, connectivity 16),
//! calibrates it on vectors held out of it (`vectors::calibrate`, as `Graph::build` does), then
//! measures recall@10 against brute force and single-thread QPS on fresh queries at the
//! calibrated breadth and at fixed ones.
//!
//! `cargo bench -p tvs-store --bench graph` (`TVS_BENCH_N` documents, default 50,000; the
//! suite's generator shape 128-d latent, 12 clusters, noise 0.2).
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::time::Instant;

use tvs_store::config::{Metric, RECALL_TARGET, ScalarKind, StoreConfig};
use tvs_store::vectors::{self, calibrate};
use tvs_synth::EmbeddingLike;

const DIMS: usize = 384;
const K: usize = 10;

fn main() {
    let n: usize = std::env::var("TVS_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let mut docs_gen = EmbeddingLike::with_shape(DIMS, 128, 12, 0.2, 1);
    let docs: Vec<Vec<f32>> = (0..n).map(|_| docs_gen.next_vector()).collect();
    let mut query_gen = EmbeddingLike::with_shape(DIMS, 128, 12, 0.2, 2);
    let queries: Vec<Vec<f32>> = (0..500).map(|_| query_gen.next_vector()).collect();
    let truth: Vec<Vec<u64>> = queries
        .iter()
        .map(|q| {
            let mut scored: Vec<(f32, u64)> = docs
                .iter()
                .enumerate()
                .map(|(i, d)| (vectors::distance(Metric::L2, q, d), i as u64))
                .collect();
            scored.select_nth_unstable_by(K, |a, b| a.0.total_cmp(&b.0));
            scored.truncate(K);
            scored.into_iter().map(|(_, i)| i).collect()
        })
        .collect();
    let config = StoreConfig::new(DIMS, Metric::L2, ScalarKind::F32, "none");
    let index = vectors::new_graph(&config).unwrap();
    vectors::ensure_capacity(&index, n).unwrap();
    // As `Graph::build` does: hold out every (n / 300)-th vector, calibrate, add them.
    let stride = n / 300;
    let started = Instant::now();
    for (i, d) in docs.iter().enumerate() {
        if i % stride != stride - 1 {
            index.add(i as u64, d).unwrap();
        }
    }
    let build = started.elapsed();
    let held: Vec<Vec<f32>> = docs
        .iter()
        .enumerate()
        .filter(|(i, _)| i % stride == stride - 1)
        .map(|(_, d)| d.clone())
        .collect();
    let started = Instant::now();
    let calibration = calibrate(&index, &held, RECALL_TARGET).unwrap();
    let took = started.elapsed();
    for (i, d) in docs.iter().enumerate() {
        if i % stride == stride - 1 {
            index.add(i as u64, d).unwrap();
        }
    }
    println!(
        "{n} documents: graph built in {:.1} s; calibrated in {:.2} s to ef_search {} (held-out recall@10 {:.3})",
        build.as_secs_f64(),
        took.as_secs_f64(),
        calibration.ef_search,
        calibration.recall
    );
    println!("| ef_search | recall@10 (fresh queries) | QPS, 1 thread |");
    println!("|---|---:|---:|");
    let mut efs = vec![calibration.ef_search];
    efs.extend(
        [96, 128, 160, 192, 224, 256]
            .into_iter()
            .filter(|ef| *ef != calibration.ef_search),
    );
    for ef in efs {
        let started = Instant::now();
        let mut found = 0;
        for (q, t) in queries.iter().zip(&truth) {
            let hits = index.search(q, ef.max(K)).unwrap();
            found += hits.keys.iter().take(K).filter(|k| t.contains(k)).count();
        }
        let qps = queries.len() as f64 / started.elapsed().as_secs_f64();
        let label = if ef == calibration.ef_search {
            format!("{ef} (calibrated)")
        } else {
            ef.to_string()
        };
        println!(
            "| {label} | {:.3} | {qps:.0} |",
            found as f64 / (queries.len() * K) as f64
        );
    }
}
