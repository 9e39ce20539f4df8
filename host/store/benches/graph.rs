//! HNSW graphs as the store builds them, in one run: f32, i8 codes with an exact re-rank, and
//! i8 in two parts searched on two threads (the default from `SPLIT_FROM` rows). Each graph is
//! built by `Graph::build_in_parts` (connectivity 32, breadth calibrated on held-out vectors),
//! then recall@10 against brute force and QPS from one client are measured on fresh queries at
//! the calibrated breadth and at fixed ones.
//!
//! `cargo bench -p tvs-store --bench graph` (`TVS_BENCH_N` documents, default 50,000; the
//! suite's generator shape 128-d latent, 12 clusters, noise 0.2; `TVS_BENCH_GRAPHS` a comma list
//! of `f32`, `i8`, `i8x2`, default all).
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::time::Instant;

use tvs_store::config::{Metric, ScalarKind, StoreConfig};
use tvs_store::slab::Slab;
use tvs_store::vectors::{self, Graph, Vectors};
use tvs_synth::EmbeddingLike;

const DIMS: usize = 384;
const K: usize = 10;

fn main() {
    let n: usize = std::env::var("TVS_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let mut docs_gen = EmbeddingLike::with_shape(DIMS, 128, 12, 0.2, 1);
    let rows: Vec<(u64, Vec<f32>)> = (0..n as u64).map(|i| (i, docs_gen.next_vector())).collect();
    let mut query_gen = EmbeddingLike::with_shape(DIMS, 128, 12, 0.2, 2);
    let queries: Vec<Vec<f32>> = (0..500).map(|_| query_gen.next_vector()).collect();
    let truth: Vec<Vec<u64>> = queries
        .iter()
        .map(|q| vectors::exact_top(Metric::L2, q, K, rows.iter().map(|(s, v)| (*s, v.as_slice()))))
        .collect();
    println!("{n} documents, 384-d, L2, 500 fresh queries, one thread");
    println!("| graph | parts | build s | ef_search | recall@10 | QPS |");
    println!("|---|---:|---:|---:|---:|---:|");
    let wanted = std::env::var("TVS_BENCH_GRAPHS").unwrap_or_else(|_| "f32,i8,i8x2".into());
    let graphs = [
        ("f32", ScalarKind::F32, 1),
        ("i8", ScalarKind::I8, 1),
        ("i8x2", ScalarKind::I8, 2),
    ];
    for (_, scalar, parts) in graphs
        .into_iter()
        .filter(|(name, ..)| wanted.split(',').any(|w| w == *name))
    {
        let config = StoreConfig::new(DIMS, Metric::L2, scalar, "none");
        let started = Instant::now();
        let graph = Graph::build_in_parts(&config, &rows, parts).unwrap();
        let build = started.elapsed().as_secs_f64();
        let calibrated = graph.ef_search();
        let label = match graph.codes() {
            vectors::Codes::Usearch => format!("{scalar:?}"),
            vectors::Codes::Scaled(scale) => format!("{scalar:?} × {scale:.2}, f32 re-rank"),
        };
        let reranks = graph.reranks();
        let mut store = Vectors::with_graph(DIMS, Metric::L2, graph);
        if reranks {
            store.set_slab(Slab::from_vec(
                DIMS,
                rows.iter().flat_map(|(_, v)| v.iter().copied()).collect(),
            ));
        }
        let epoch = store.graph_epoch();
        let mut efs = vec![calibrated];
        efs.extend([32, 48, 64, 96, 128, 192].into_iter().filter(|ef| *ef != calibrated));
        for ef in efs {
            let started = Instant::now();
            let mut found = 0;
            for (q, t) in queries.iter().zip(&truth) {
                let hits = store.calibration_answer(epoch, q, K, ef).unwrap();
                found += hits.iter().filter(|s| t.contains(s)).count();
            }
            let qps = queries.len() as f64 / started.elapsed().as_secs_f64();
            let ef_label = if ef == calibrated {
                format!("{ef} (calibrated)")
            } else {
                ef.to_string()
            };
            println!(
                "| {label} | {parts} | {build:.1} | {ef_label} | {:.3} | {qps:.0} |",
                found as f64 / (queries.len() * K) as f64
            );
        }
    }
}
