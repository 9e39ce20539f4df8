//! Per-request guest cost: a fresh store + instantiate (pooling allocator) + call + drop, and
//! the cost of a search crossing the WIT boundary with a 384-d vector, against the same search
//! called natively. Prints a table; `cargo bench -p tvs --bench guest`.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use tvs_runtime::{Runtime, RuntimeLimits, SearchRequest};
use tvs_store::config::{Metric, ScalarKind, StoreConfig};
use tvs_store::store::{NewDocument, SearchQuery, TenantStore};
use tvs_store::tenant::StoreDir;
use tvs_synth::EmbeddingLike;

const ROUNDS: usize = 3000;

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

#[path = "common/timing.rs"]
mod timing;
use timing::time;

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let store = TenantStore::create(
        &StoreDir::new(tmp.path().join("t")),
        &StoreConfig::new(384, Metric::Cos, ScalarKind::default(), "none"),
    )
    .unwrap();
    let mut vectors = EmbeddingLike::new(384, 1);
    store
        .upsert(vec![NewDocument {
            id: Some("only".into()),
            vector: vectors.next_vector(),
            ..Default::default()
        }])
        .unwrap();
    let query = vectors.next_vector();

    let start = Instant::now();
    let runtime = Runtime::new(RuntimeLimits::default()).unwrap();
    let startup = start.elapsed();

    // top_k 0 is refused inside the guest before any host call: instantiate + call + drop.
    let refused = SearchRequest {
        query: None,
        vector: Some(query.clone()),
        top_k: 0,
        filter: None,
        mmr: None,
    };
    let empty = time(ROUNDS, || {
        runtime.search(store.clone(), &refused).unwrap_err();
    });
    let full_request = SearchRequest {
        top_k: 1,
        ..refused.clone()
    };
    let through_guest = time(ROUNDS, || {
        assert_eq!(runtime.search(store.clone(), &full_request).unwrap().len(), 1);
    });
    let native_query = SearchQuery {
        vector: query.clone(),
        k: 1,
        ..Default::default()
    };
    let native = time(ROUNDS, || {
        assert_eq!(store.search(&native_query).unwrap().len(), 1);
    });

    let rows = [
        (
            "runtime start-up (compile the guest component)",
            format!("{:.1} ms", startup.as_secs_f64() * 1e3),
        ),
        (
            "fresh instance + call + drop (no host call), median / p99",
            format!("{} / {}", us(empty.0), us(empty.1)),
        ),
        (
            "search k=1 through a fresh guest, 384-d query, median / p99",
            format!("{} / {}", us(through_guest.0), us(through_guest.1)),
        ),
        (
            "same search called natively, median / p99",
            format!("{} / {}", us(native.0), us(native.1)),
        ),
        (
            "boundary crossings of that search (guest - empty - native), median",
            us(through_guest.0.saturating_sub(empty.0).saturating_sub(native.0)),
        ),
    ];
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    println!("\n{:width$}  value", "measure");
    println!("{}  -----", "-".repeat(width));
    for (k, v) in rows {
        println!("{k:width$}  {v}");
    }
}
