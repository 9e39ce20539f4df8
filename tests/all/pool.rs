//! The pool: LRU by count and bytes, TTL expiry, one load per concurrent miss, stores in use
//! survive eviction without a second writer appearing, eviction flushes, and stats count it all.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use tvs_store::config::Metric;
use tvs_store::pool::{Pool, PoolConfig};
use tvs_store::store::NewDocument;
use tvs_store::tenant::{DataDir, TenantId};

use crate::support::{config, documents};

fn pool_with(tenants: usize, config_: PoolConfig) -> (tempfile::TempDir, Arc<Pool>, Vec<TenantId>) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = DataDir::open(tmp.path()).expect("data dir");
    let pool = Arc::new(Pool::new(data, config_));
    let ids: Vec<TenantId> = (0..tenants)
        .map(|i| TenantId::new(&format!("t{i}")).expect("id"))
        .collect();
    for id in &ids {
        pool.create_tenant(id, &config(8, Metric::Cos)).expect("create");
    }
    (tmp, pool, ids)
}

fn bounded(capacity: usize) -> PoolConfig {
    PoolConfig {
        capacity,
        ttl: Duration::from_secs(3600),
        max_bytes: None,
    }
}

#[test]
fn the_least_recently_used_store_is_evicted_and_counted() {
    let (_tmp, pool, ids) = pool_with(4, bounded(2));
    pool.get(&ids[0]).expect("t0");
    pool.get(&ids[1]).expect("t1");
    pool.get(&ids[0]).expect("t0 again: now most recent");
    pool.get(&ids[2]).expect("t2 evicts t1");
    assert!(pool.contains(&ids[0]) && pool.contains(&ids[2]) && !pool.contains(&ids[1]));
    let stats = pool.stats();
    assert_eq!(
        (stats.hits, stats.misses, stats.loads, stats.evictions, stats.size),
        (1, 3, 3, 1, 2)
    );
    assert!((stats.hit_rate - 0.25).abs() < 1e-9);
}

#[test]
fn entries_expire_after_the_ttl_and_cleanup_drops_them() {
    let (_tmp, pool, ids) = pool_with(
        3,
        PoolConfig {
            capacity: 5,
            ttl: Duration::from_millis(200),
            max_bytes: None,
        },
    );
    for id in &ids {
        pool.get(id).expect("load");
    }
    std::thread::sleep(Duration::from_millis(400));
    pool.get(&ids[0]).expect("an expired entry is a miss");
    let stats = pool.stats();
    assert_eq!((stats.expirations, stats.misses, stats.hits), (1, 4, 0));
    assert_eq!(pool.cleanup_expired(), 2);
    let stats = pool.stats();
    assert_eq!((stats.expirations, stats.size), (3, 1));
}

#[test]
fn concurrent_misses_for_one_tenant_load_it_once() {
    let (_tmp, pool, ids) = pool_with(1, bounded(4));
    // Give the load some work so the threads overlap it.
    let store = pool.get(&ids[0]).expect("seed");
    store.upsert(documents(2000, 8, 1)).expect("docs");
    drop(store);
    let pool = {
        let data = pool.data_dir().clone();
        drop(pool);
        Arc::new(Pool::new(data, bounded(4)))
    };
    let barrier = Arc::new(Barrier::new(16));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (pool, id, barrier) = (pool.clone(), ids[0].clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                pool.get(&id).expect("get")
            })
        })
        .collect();
    let stores: Vec<_> = threads.into_iter().map(|t| t.join().expect("thread")).collect();
    assert_eq!(pool.stats().loads, 1);
    assert!(
        stores.windows(2).all(|w| Arc::ptr_eq(&w[0], &w[1])),
        "everyone got the same store"
    );
    assert_eq!(stores[0].count(), 2000);
}

#[test]
fn a_store_in_use_survives_eviction_and_is_taken_back_not_reopened() {
    let (_tmp, pool, ids) = pool_with(3, bounded(1));
    let held = pool.get(&ids[0]).expect("t0");
    pool.get(&ids[1]).expect("t1 evicts t0");
    assert!(!pool.contains(&ids[0]));
    held.upsert(vec![NewDocument {
        id: Some("late".into()),
        vector: vec![1.0; 8],
        ..Default::default()
    }])
    .expect("the evicted store still works for its holder");
    let again = pool.get(&ids[0]).expect("t0 again");
    assert!(Arc::ptr_eq(&held, &again), "no second writer for t0");
    assert_eq!(again.get(&["late".into()], false).len(), 1);
    assert_eq!(pool.stats().loads, 2, "t0 was revived, not loaded again");
}

#[test]
fn eviction_flushes_a_snapshot_so_the_next_open_skips_the_log() {
    let (tmp, pool, ids) = pool_with(2, bounded(1));
    pool.get(&ids[0])
        .expect("t0")
        .upsert(documents(100, 8, 2))
        .expect("docs");
    assert!(!tmp.path().join("t0/vector_store/manifest.json").exists());
    pool.get(&ids[1]).expect("t1 evicts t0");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("t0/vector_store/manifest.json")).expect("manifest"))
            .expect("json");
    assert_eq!(manifest["documents"], 100);
}

#[test]
fn the_byte_bound_evicts_until_the_pool_fits() {
    let (_tmp, pool, ids) = pool_with(3, bounded(10));
    for id in &ids {
        pool.get(id).expect("load").upsert(documents(1000, 8, 3)).expect("docs");
    }
    let one_store = pool.get(&ids[0]).expect("t0").memory_bytes();
    let data = pool.data_dir().clone();
    let limited = Pool::new(
        data,
        PoolConfig {
            capacity: 10,
            ttl: Duration::from_secs(60),
            max_bytes: Some(one_store * 2 + one_store / 2),
        },
    );
    drop(pool);
    for id in &ids {
        limited.get(id).expect("load");
    }
    let stats = limited.stats();
    assert_eq!(stats.size, 2, "{stats:?}");
    assert_eq!(stats.evictions, 1);
    assert!(stats.bytes <= one_store * 2 + one_store / 2);
}

#[test]
fn many_threads_on_many_tenants_with_a_tiny_pool_lose_nothing() {
    let (_tmp, pool, ids) = pool_with(12, bounded(3));
    let ids = Arc::new(ids);
    let workers: Vec<_> = (0..8)
        .map(|t| {
            let (pool, ids) = (pool.clone(), ids.clone());
            std::thread::spawn(move || {
                let mut written = Vec::new();
                let mut rng = tvs_synth::Rng::new(t);
                for n in 0..150 {
                    let tenant = &ids[rng.below(ids.len() as u64) as usize];
                    let store = pool.get(tenant).expect("get");
                    if n % 3 == 0 {
                        store
                            .search(&tvs_store::store::SearchQuery {
                                vector: vec![0.5; 8],
                                k: 3,
                                ..Default::default()
                            })
                            .expect("search");
                    } else {
                        let id = format!("w{t}-{n}");
                        store
                            .upsert(vec![NewDocument {
                                id: Some(id.clone()),
                                vector: vec![1.0 + n as f32; 8],
                                ..Default::default()
                            }])
                            .expect("upsert");
                        written.push((tenant.clone(), id));
                    }
                }
                written
            })
        })
        .collect();
    let written: Vec<(TenantId, String)> = workers.into_iter().flat_map(|w| w.join().expect("worker")).collect();
    let stats = pool.stats();
    assert!(stats.size <= 3 && stats.evictions > 0, "{stats:?}");
    for (tenant, id) in &written {
        assert_eq!(
            pool.get(tenant)
                .expect("get")
                .get(std::slice::from_ref(id), false)
                .len(),
            1,
            "{tenant}/{id}"
        );
    }
    // And the same holds for a fresh pool reading the files.
    let data = pool.data_dir().clone();
    drop(pool);
    let fresh = Pool::new(data, bounded(3));
    for (tenant, id) in &written {
        assert_eq!(
            fresh
                .get(tenant)
                .expect("get")
                .get(std::slice::from_ref(id), false)
                .len(),
            1,
            "{tenant}/{id}"
        );
    }
}
