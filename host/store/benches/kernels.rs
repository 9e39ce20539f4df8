//! Distance kernels and the exact scan, side by side in one run: the portable Rust kernels
//! (eight lanes, vectorised for the build's baseline CPU) against the ones dispatched at run
//! time (pulp: AVX2+FMA or NEON, four accumulators); and `Vectors::exact_search` (the search of a tenant below the
//! HNSW threshold) over 2,000 and 20,000 embedding-like 384-d vectors.
//!
//! `cargo bench -p tvs-store --bench kernels`
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Instant;

use tvs_store::config::Metric;
use tvs_store::vectors::{self, Vectors, portable};
use tvs_synth::EmbeddingLike;

const DIMS: usize = 384;

/// Nanoseconds per row of `kernel` over `rows`, best of five passes.
fn per_row(rows: &[Vec<f32>], query: &[f32], kernel: impl Fn(&[f32], &[f32]) -> f32) -> f64 {
    (0..5)
        .map(|_| {
            let started = Instant::now();
            let mut sum = 0f32;
            for _ in 0..20 {
                for row in rows {
                    sum += kernel(black_box(query), black_box(row));
                }
            }
            black_box(sum);
            started.elapsed().as_secs_f64() * 1e9 / (rows.len() * 20) as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let mut generator = EmbeddingLike::new(DIMS, 7);
    let rows: Vec<Vec<f32>> = (0..2_000).map(|_| generator.next_vector()).collect();
    let query = generator.next_vector();
    println!("| {DIMS}-d kernel, ns per vector | portable | dispatched (pulp, 4 accumulators) | speed-up |");
    println!("|---|---:|---:|---:|");
    let cells = [
        (
            "squared L2",
            per_row(&rows, &query, |a, b| portable::distance(Metric::L2, a, b)),
            per_row(&rows, &query, |a, b| vectors::distance(Metric::L2, a, b)),
        ),
        (
            "inner product",
            per_row(&rows, &query, portable::dot),
            per_row(&rows, &query, vectors::dot),
        ),
    ];
    for (name, slow, fast) in cells {
        println!("| {name} | {slow:.1} | {fast:.1} | {:.2}× |", slow / fast);
    }
    println!();
    println!("| exact scan, k = 10 (dispatched kernels) | p50 |");
    println!("|---|---:|");
    for n in [2_000usize, 20_000] {
        for metric in [Metric::L2, Metric::Cos] {
            let mut v = Vectors::exact(DIMS, metric);
            let mut generator = EmbeddingLike::new(DIMS, 11);
            for slot in 0..n as u64 {
                v.set(slot, &generator.next_vector());
            }
            let queries: Vec<Vec<f32>> = (0..200).map(|_| generator.next_vector()).collect();
            let mut times: Vec<f64> = queries
                .iter()
                .map(|q| {
                    let started = Instant::now();
                    black_box(v.exact_search(q, 10, 0..n as u64, |_| true));
                    started.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            times.sort_by(f64::total_cmp);
            println!("| {n} docs, {metric:?} | {:.3} ms |", times[times.len() / 2]);
        }
    }
}
