//! Tenant ids and directories: the id rule is enforced before any path is built, creation and
//! listing follow the layout, deletion removes everything and is safe against concurrent opens,
//! and symlinks planted in the data directory never lead a read or write outside it.

use std::fs;
use std::os::unix::fs::symlink;
use std::sync::Arc;

use tvs_store::config::Metric;
use tvs_store::pool::{Pool, PoolConfig};
use tvs_store::store::{NewDocument, OpenError, StoreError, TenantStore};
use tvs_store::tenant::{DataDir, TenantError, TenantId};

use crate::support::config;

fn tenant(id: &str) -> TenantId {
    TenantId::new(id).expect("valid id")
}

#[test]
fn creating_a_tenant_lays_out_the_seed_directories() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = DataDir::open(tmp.path().join("user_data")).expect("data dir");
    data.create_tenant(&tenant("alice"), &config(4, Metric::Cos))
        .expect("create");
    let root = tmp.path().join("user_data/alice");
    assert!(root.join("docs.jsonl").is_file());
    assert!(root.join("vector_store").is_dir());
    let cfg: serde_json::Value =
        serde_json::from_slice(&fs::read(root.join("config/user_config.json")).expect("config")).expect("json");
    assert_eq!(cfg["dims"], 4);
    assert_eq!(cfg["metric"], "cos");
    let err = data
        .create_tenant(&tenant("alice"), &config(4, Metric::Cos))
        .expect_err("twice");
    assert!(matches!(err, TenantError::AlreadyExists(_)));
}

#[test]
fn listing_is_sorted_and_paginated_and_skips_non_tenants() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = DataDir::open(tmp.path()).expect("data dir");
    for id in ["delta", "alpha", "charlie", "bravo", "echo"] {
        data.create_tenant(&tenant(id), &config(2, Metric::L2)).expect("create");
    }
    fs::write(tmp.path().join(".admin_key"), "x").expect("file");
    fs::create_dir(tmp.path().join("not.a.tenant")).expect("dir");
    fs::create_dir(tmp.path().join("emptydir")).expect("dir without config");
    let first = data.list_tenants(None, 2).expect("page 1");
    assert_eq!(first.tenants, ["alpha", "bravo"]);
    let second = data.list_tenants(first.next_after.as_deref(), 2).expect("page 2");
    assert_eq!(second.tenants, ["charlie", "delta"]);
    let third = data.list_tenants(second.next_after.as_deref(), 2).expect("page 3");
    assert_eq!(third.tenants, ["echo"]);
    assert_eq!(third.next_after, None);
}

#[test]
fn deleting_a_tenant_removes_all_its_data_and_its_open_store_refuses_writes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = DataDir::open(tmp.path()).expect("data dir");
    let pool = Pool::new(
        data,
        PoolConfig {
            capacity: 4,
            ttl: std::time::Duration::from_secs(60),
            max_bytes: None,
        },
    );
    let id = tenant("bob");
    pool.create_tenant(&id, &config(2, Metric::L2)).expect("create");
    let store = pool.get(&id).expect("open");
    store
        .upsert(vec![NewDocument {
            id: Some("x".into()),
            vector: vec![1.0, 1.0],
            ..Default::default()
        }])
        .expect("write");
    pool.delete_tenant(&id).expect("delete");
    assert!(!tmp.path().join("bob").exists());
    assert!(
        fs::read_dir(tmp.path()).expect("ls").next().is_none(),
        "no trash left behind"
    );
    let err = store
        .upsert(vec![NewDocument {
            vector: vec![1.0, 1.0],
            ..Default::default()
        }])
        .expect_err("deleted");
    assert!(matches!(err, StoreError::Deleted));
    assert!(matches!(pool.get(&id), Err(OpenError::NotFound(_))));
    // The id is free again, and the new tenant starts empty.
    pool.create_tenant(&id, &config(2, Metric::L2)).expect("recreate");
    assert_eq!(pool.get(&id).expect("open new").count(), 0);
}

#[test]
fn delete_racing_with_opens_leaves_either_the_whole_tenant_or_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = DataDir::open(tmp.path()).expect("data dir");
    let pool = Arc::new(Pool::new(
        data,
        PoolConfig {
            capacity: 2,
            ttl: std::time::Duration::from_secs(60),
            max_bytes: None,
        },
    ));
    for round in 0..20 {
        let id = tenant(&format!("t{round}"));
        pool.create_tenant(&id, &config(2, Metric::L2)).expect("create");
        let openers: Vec<_> = (0..4)
            .map(|_| {
                let (pool, id) = (pool.clone(), id.clone());
                std::thread::spawn(move || match pool.get(&id) {
                    Ok(store) => match store.upsert(vec![NewDocument {
                        vector: vec![1.0, 0.0],
                        ..Default::default()
                    }]) {
                        Ok(_) | Err(StoreError::Deleted) => {}
                        Err(e) => panic!("unexpected write error: {e}"),
                    },
                    Err(OpenError::NotFound(_)) => {}
                    Err(e) => panic!("unexpected open error: {e}"),
                })
            })
            .collect();
        pool.delete_tenant(&id).expect("delete");
        for t in openers {
            t.join().expect("opener");
        }
        assert!(!tmp.path().join(id.as_str()).exists(), "round {round}");
    }
}

#[test]
fn another_process_holding_a_store_blocks_a_second_writer() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = DataDir::open(tmp.path()).expect("data dir");
    let id = tenant("held");
    let dir = data.create_tenant(&id, &config(2, Metric::L2)).expect("create");
    let _first = TenantStore::open(&dir).expect("first open");
    // flock is per open file description, so a second open in this process behaves as a
    // second process would.
    assert!(matches!(TenantStore::open(&dir), Err(OpenError::Locked(_))));
    assert!(matches!(data.delete_tenant(&id), Err(TenantError::Busy(_))));
}

#[test]
fn a_symlinked_tenant_directory_is_neither_listed_nor_opened_nor_followed_on_delete() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("outside");
    let data = DataDir::open(tmp.path().join("user_data")).expect("data dir");
    // A complete, valid store outside the data dir, linked in under a valid tenant id.
    let victim = data
        .create_tenant(&tenant("victim"), &config(2, Metric::L2))
        .expect("create");
    fs::rename(victim.root(), outside.path().join("victim")).expect("move out");
    symlink(outside.path().join("victim"), tmp.path().join("user_data/evil")).expect("plant");
    assert!(data.list_tenants(None, 100).expect("list").tenants.is_empty());
    let err = TenantStore::open(&data.store_dir(&tenant("evil"))).expect_err("must not follow");
    assert!(
        err.to_string().contains("cannot read") || err.to_string().contains("symlink"),
        "{err}"
    );
    data.delete_tenant(&tenant("evil")).expect("delete removes the link");
    assert!(
        outside.path().join("victim/docs.jsonl").exists(),
        "the target is untouched"
    );
    assert!(fs::symlink_metadata(tmp.path().join("user_data/evil")).is_err());
}

#[test]
fn symlinked_files_inside_a_tenant_are_refused_and_their_targets_untouched() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("outside");
    let data = DataDir::open(tmp.path()).expect("data dir");
    for (id, planted) in [
        ("log", "docs.jsonl"),
        ("cfg", "config/user_config.json"),
        ("lock", ".lock"),
    ] {
        let dir = data.create_tenant(&tenant(id), &config(2, Metric::L2)).expect("create");
        let target = outside.path().join(format!("{id}-secret"));
        let original = fs::read(dir.root().join(planted)).unwrap_or_default();
        fs::write(&target, &original).expect("target");
        let _ = fs::remove_file(dir.root().join(planted));
        symlink(&target, dir.root().join(planted)).expect("plant");
        let err = TenantStore::open(&dir).expect_err(planted);
        assert!(
            format!("{err:#}").contains("symlink") || format!("{:?}", err).contains("symlink"),
            "{planted}: {err:?}"
        );
        assert_eq!(
            fs::read(&target).expect("target"),
            original,
            "{planted}: target unchanged"
        );
    }
    let dir = data
        .create_tenant(&tenant("vs"), &config(2, Metric::L2))
        .expect("create");
    fs::remove_dir(dir.root().join("vector_store")).expect("rm");
    symlink(outside.path(), dir.root().join("vector_store")).expect("plant dir");
    assert!(TenantStore::open(&dir).is_err(), "a symlinked vector_store is refused");
}

#[test]
fn hostile_ids_are_rejected_with_the_rule_before_any_path_is_built() {
    for id in ["..", "../x", "a/b", ".hidden", "x".repeat(65).as_str(), "ü", ""] {
        let err = TenantId::new(id).expect_err(id);
        assert!(err.to_string().contains("1 to 64 characters"), "{err}");
    }
}
