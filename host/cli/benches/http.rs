//! Load bench of `tvs serve` on loopback: ingest documents/s and search requests/s with p50/p99
//! through HTTP and a fresh guest per request, on 2k-document tenants, beside the same searches
//! called in-process in the same run, and with a tenant token in place of the key. Bounded in
//! count; prints a table.
//! `cargo bench -p tvs --bench http`.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tvs_guest_core::token;
use tvs_runtime::{Runtime, RuntimeLimits};
use tvs_server::auth::Keys;
use tvs_server::http::{App, ServerLimits};
use tvs_store::config::Settings;
use tvs_store::pool::{Pool, PoolConfig};
use tvs_store::store::SearchQuery;
use tvs_store::tenant::{DataDir, TenantId};
use tvs_synth::EmbeddingLike;

const ADMIN: &str = "bench-admin";
const TENANTS: usize = 4;
const DOCS: usize = 2000;
const DIMS: usize = 384;
const SEARCHES_PER_CLIENT: usize = 1500;

#[path = "common/http_client.rs"]
mod http_client;
use http_client::{Connection, serve_in_background};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let data = DataDir::open(tmp.path()).unwrap();
    let (keys, _) = Keys::open(data.clone(), Some(ADMIN.into())).unwrap();
    let settings = Settings::default();
    let pool = Arc::new(Pool::new(data, PoolConfig::from_settings(&settings)));
    let runtime = Arc::new(Runtime::new(RuntimeLimits::default()).unwrap());
    let app = Arc::new(App::new(pool.clone(), runtime, keys, settings, ServerLimits::default()));
    let addr = serve_in_background(app);

    // Tenants and ingest through HTTP + guest, 500 documents per request.
    let mut tenant_keys = Vec::new();
    let mut ingest_time = Duration::ZERO;
    for t in 0..TENANTS {
        let mut admin = Connection::open(addr);
        let (status, body) = admin.post(
            "/v1/tenants",
            ADMIN,
            &json!({"id": format!("t{t}"), "dims": DIMS, "embedding_model": "none"}).to_string(),
        );
        assert_eq!(status, 201);
        let key = serde_json::from_slice::<Value>(&body).unwrap()["api_key"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut generator = EmbeddingLike::new(DIMS, t as u64);
        let mut conn = Connection::open(addr);
        for chunk in 0..DOCS / 500 {
            let docs: Vec<Value> = (0..500)
                .map(|n| json!({"id": format!("d{}", chunk * 500 + n), "text": format!("document {n}"), "metadata": {"n": n}, "vector": generator.next_vector()}))
                .collect();
            let body = json!({"documents": docs}).to_string();
            let start = Instant::now();
            let (status, reply) = conn.post("/v1/documents", &key, &body);
            ingest_time += start.elapsed();
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
        }
        tenant_keys.push(key);
    }
    let ingest_rate = (TENANTS * DOCS) as f64 / ingest_time.as_secs_f64();

    let mut rows = vec![(
        "ingest through HTTP + guest, 500 docs/request, durable".to_string(),
        format!("{ingest_rate:.0} docs/s"),
    )];
    // Tenant tokens for the same tenants (read scope, an hour), to set beside the keys.
    let mut admin = Connection::open(addr);
    let (status, body) = admin.post("/v1/admin/signing-keys", ADMIN, "");
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let secret = serde_json::from_slice::<Value>(&body).unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut parts = secret.splitn(3, '.').skip(1);
    let (kid, hmac) = (parts.next().unwrap(), parts.next().unwrap());
    let hmac = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, hmac).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let tenant_tokens: Vec<String> = (0..TENANTS)
        .map(|t| {
            let claims = token::Claims {
                tenant: format!("t{t}"),
                scope: "read".into(),
                exp: now + 3600,
                nbf: None,
                iat: Some(now),
            };
            token::sign_hs256(kid, &hmac, &claims)
        })
        .collect();

    let tenant_keys = Arc::new(tenant_keys);
    let tenant_tokens = Arc::new(tenant_tokens);
    for (clients, credential) in [(1usize, "key"), (1, "token"), (4, "key")] {
        let start = Instant::now();
        let threads: Vec<_> = (0..clients)
            .map(|c| {
                let keys = if credential == "key" {
                    tenant_keys.clone()
                } else {
                    tenant_tokens.clone()
                };
                std::thread::spawn(move || {
                    let mut conn = Connection::open(addr);
                    let mut queries = EmbeddingLike::new(DIMS, 1000 + c as u64);
                    let mut times = Vec::with_capacity(SEARCHES_PER_CLIENT);
                    for n in 0..SEARCHES_PER_CLIENT {
                        let body = json!({"vector": queries.next_vector(), "top_k": 10}).to_string();
                        let t = Instant::now();
                        let (status, _) = conn.post("/v1/search", &keys[(c + n) % keys.len()], &body);
                        times.push(t.elapsed());
                        assert_eq!(status, 200);
                    }
                    times
                })
            })
            .collect();
        let mut times: Vec<Duration> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        let elapsed = start.elapsed();
        times.sort();
        rows.push((
            format!("search k=10 over HTTP + guest, {clients} client(s), tenant {credential}: req/s; p50 / p99"),
            format!(
                "{:.0}; {} / {}",
                times.len() as f64 / elapsed.as_secs_f64(),
                ms(percentile(&times, 0.5)),
                ms(percentile(&times, 0.99))
            ),
        ));
    }

    // The same searches in-process, same run, for the cost of HTTP + guest.
    let store = pool.get(&TenantId::new("t0").unwrap()).unwrap();
    let mut queries = EmbeddingLike::new(DIMS, 1000);
    let mut times: Vec<Duration> = (0..SEARCHES_PER_CLIENT)
        .map(|_| {
            let q = SearchQuery {
                vector: queries.next_vector(),
                k: 10,
                ..Default::default()
            };
            let t = Instant::now();
            store.search(&q).unwrap();
            t.elapsed()
        })
        .collect();
    times.sort();
    rows.push((
        "same search in-process (no HTTP, no guest): p50 / p99".into(),
        format!("{} / {}", ms(percentile(&times, 0.5)), ms(percentile(&times, 0.99))),
    ));

    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    println!("\n{:width$}  value", "measure");
    println!("{}  -----", "-".repeat(width));
    for (k, v) in rows {
        println!("{k:width$}  {v}");
    }
}
