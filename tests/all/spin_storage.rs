//! The Spin storage component alone (`guest/spin-storage`, world `tvs:spin/storage`, as
//! `spin build` makes it) on the Spin-shaped platform of `spin_host`: key-value backed by real
//! files, and a fresh instance per request. Tenants are bound per instance and never see each
//! other, hostile ids are refused, and data outlives the host.

use std::path::Path;
use std::sync::Arc;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, Store};

use crate::spin_host::{HostState, Platform, built_part};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/spin",
        world: "tvs:spin/storage",
        with: {
            "fermyon:spin/key-value": crate::spin_host::bindings::fermyon::spin::key_value,
            "fermyon:spin/llm": crate::spin_host::bindings::fermyon::spin::llm,
            "wasi:keyvalue/store": crate::spin_host::bindings::wasi::keyvalue::store,
            "wasi:keyvalue/atomics": crate::spin_host::bindings::wasi::keyvalue::atomics,
        },
    });
}

use bindings::exports::tvs::spin::tenant::{RateLimits, Shape, TenantError};
use bindings::tvs::store::types::{Error, NewDocument};

impl bindings::tvs::store::types::Host for HostState {}

/// The storage component, compiled once, and the platform its instances run on.
struct StorageHost {
    engine: Engine,
    pre: bindings::StoragePre<HostState>,
    platform: Arc<Platform>,
}

impl StorageHost {
    fn new(kv_root: &Path) -> StorageHost {
        let engine = Engine::default();
        let component = Component::from_file(&engine, built_part("tvs_spin_storage")).expect("component");
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).expect("wasi");
        bindings::Storage::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s).expect("link");
        let pre = bindings::StoragePre::new(linker.instantiate_pre(&component).expect("pre")).expect("pre");
        StorageHost {
            engine,
            pre,
            platform: Arc::new(Platform::from_manifest(kv_root, &[])),
        }
    }

    /// A fresh instance, as for one request.
    fn request(&self) -> (Store<HostState>, bindings::Storage) {
        let mut store = Store::new(&self.engine, HostState::new(self.platform.clone()));
        let instance = self.pre.instantiate(&mut store).expect("instantiate");
        (store, instance)
    }
}

fn shape() -> Shape {
    Shape {
        dims: 4,
        metric: "l2".into(),
        embedding_model: "none".into(),
        max_documents: 1_000,
        rate_limits: RateLimits {
            requests_per_second: None,
            ingest_bytes_per_second: None,
        },
    }
}

fn doc(id: &str, vector: [f32; 4], kind: &str) -> NewDocument {
    NewDocument {
        id: Some(id.into()),
        text: format!("text of {id}"),
        metadata: format!(r#"{{"kind": "{kind}"}}"#),
        vector: vector.to_vec(),
    }
}

#[test]
fn tenants_on_spin_key_value_are_bound_per_request_isolated_and_durable() {
    let data = tempfile::tempdir().expect("tempdir");
    let host = StorageHost::new(data.path());
    for tenant in ["alice", "bob"] {
        let (mut store, instance) = host.request();
        instance
            .tvs_spin_tenant()
            .call_create(&mut store, tenant, &shape())
            .expect("call")
            .expect("created");
    }
    let (mut store, instance) = host.request();
    let again = instance
        .tvs_spin_tenant()
        .call_create(&mut store, "alice", &shape())
        .expect("call");
    assert!(matches!(again, Err(TenantError::Exists)), "{again:?}");

    // One request: bind alice, write.
    let (mut store, instance) = host.request();
    instance
        .tvs_spin_tenant()
        .call_bind(&mut store, "alice")
        .expect("call")
        .expect("bound");
    let collection = instance.tvs_store_collection();
    let ids = collection
        .call_upsert(
            &mut store,
            &[
                doc("n", [1.0, 0.0, 0.0, 0.0], "a"),
                doc("e", [0.0, 1.0, 0.0, 0.0], "b"),
                doc("u", [0.0, 0.0, 1.0, 0.0], "a"),
            ],
        )
        .expect("call")
        .expect("upserted");
    assert_eq!(ids, ["n", "e", "u"]);
    let bad = collection
        .call_upsert(&mut store, &[doc("x", [f32::NAN, 0.0, 0.0, 0.0], "a")])
        .expect("call");
    assert!(matches!(bad, Err(Error::InvalidInput(_))), "{bad:?}");

    // Another request: bob sees nothing of alice's.
    let (mut store, instance) = host.request();
    instance
        .tvs_spin_tenant()
        .call_bind(&mut store, "bob")
        .expect("call")
        .expect("bound");
    assert_eq!(
        instance.tvs_store_collection().call_count(&mut store).expect("count"),
        0
    );
    let hits = instance
        .tvs_store_collection()
        .call_search(&mut store, &[1.0, 0.0, 0.0, 0.0], 3, None, false)
        .expect("call")
        .expect("search");
    assert!(hits.is_empty());

    // A request without a bound tenant reaches no data.
    let (mut store, instance) = host.request();
    let unbound = instance
        .tvs_store_collection()
        .call_get(&mut store, &["n".to_owned()], false)
        .expect("call");
    assert!(unbound.is_err());
    let nobody = instance
        .tvs_spin_tenant()
        .call_bind(&mut store, "nobody")
        .expect("call");
    assert!(matches!(nobody, Err(TenantError::NotFound)), "{nobody:?}");
    let hostile = instance
        .tvs_spin_tenant()
        .call_bind(&mut store, "alice/log")
        .expect("call");
    assert!(matches!(hostile, Err(TenantError::Invalid(_))), "{hostile:?}");

    // After a restart of the host, alice's data is there: search, filter, delete-where.
    drop(host);
    let host = StorageHost::new(data.path());
    let (mut store, instance) = host.request();
    instance
        .tvs_spin_tenant()
        .call_bind(&mut store, "alice")
        .expect("call")
        .expect("bound");
    let collection = instance.tvs_store_collection();
    assert_eq!(collection.call_count(&mut store).expect("count"), 3);
    let kind_a = r#"{"kind": "a"}"#.to_owned();
    let hits = collection
        .call_search(&mut store, &[0.9, 0.1, 0.0, 0.0], 2, Some(&kind_a), false)
        .expect("call")
        .expect("search");
    assert_eq!(hits.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(), ["n", "u"]);
    let deleted = collection.call_delete_where(&mut store, &kind_a).expect("call");
    assert!(matches!(deleted, Ok(2)), "{deleted:?}");
    let left = collection
        .call_get(&mut store, &["n".into(), "e".into()], true)
        .expect("call")
        .expect("get");
    assert_eq!(left.len(), 1);
    assert_eq!(
        (left[0].id.as_str(), left[0].vector.as_deref()),
        ("e", Some(&[0.0, 1.0, 0.0, 0.0][..]))
    );
    // Every key and value stayed within Spin's limits.
    for entry in std::fs::read_dir(data.path().join("default")).expect("dir") {
        let entry = entry.expect("entry");
        let key = crate::spin_host::unhex(entry.file_name().to_str().expect("name")).expect("a key");
        assert!(
            key.len() <= 255 && entry.metadata().expect("meta").len() <= 1 << 20,
            "{key}"
        );
    }
}
