//! The Spin storage component (`guest/spin-collection`, world `tvs:spin/kv-collection`) run by
//! a host that behaves as Spin does: Spin's own `fermyon:spin/key-value@2.0.0` interface
//! (vendored in `wit/spin/deps/fermyon-spin`) backed by real files, only the store `default`,
//! and a fresh instance per request. Tenants are bound per instance and never see each other;
//! data outlives the host.

use std::path::{Path, PathBuf};

use tvs_runtime::guest_paths;
use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/spin",
        world: "tvs:spin/kv-collection",
        with: { "fermyon:spin/key-value.store": super::KvHandle },
    });
}

use bindings::exports::tvs::spin::tenant::Shape;
use bindings::fermyon::spin::key_value::Error as KvError;
use bindings::tvs::store::types::{Error, NewDocument};

/// An open `default` store: a directory with a file per key (hex-encoded name).
#[derive(Debug)]
pub struct KvHandle {
    dir: PathBuf,
}

struct HostState {
    dir: PathBuf,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn hex(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(name: &str) -> Option<String> {
    let bytes: Option<Vec<u8>> = (0..name.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(name.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

impl bindings::tvs::store::types::Host for HostState {}
impl bindings::fermyon::spin::key_value::Host for HostState {}

impl bindings::fermyon::spin::key_value::HostStore for HostState {
    fn open(&mut self, label: String) -> Result<Resource<KvHandle>, KvError> {
        if label != "default" {
            return Err(KvError::NoSuchStore);
        }
        self.table
            .push(KvHandle { dir: self.dir.clone() })
            .map_err(|e| KvError::Other(e.to_string()))
    }
    fn get(&mut self, store: Resource<KvHandle>, key: String) -> Result<Option<Vec<u8>>, KvError> {
        let dir = &self.table.get(&store).map_err(|e| KvError::Other(e.to_string()))?.dir;
        match std::fs::read(dir.join(hex(&key))) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(KvError::Other(e.to_string())),
        }
    }
    fn set(&mut self, store: Resource<KvHandle>, key: String, value: Vec<u8>) -> Result<(), KvError> {
        // Spin's limits, as its cloud states them.
        if key.len() > 255 || value.len() > 1 << 20 {
            return Err(KvError::Other(format!(
                "key of {} or value of {} bytes is over the limit",
                key.len(),
                value.len()
            )));
        }
        let dir = &self.table.get(&store).map_err(|e| KvError::Other(e.to_string()))?.dir;
        let tmp = dir.join(format!(".{}.tmp", hex(&key)));
        std::fs::write(&tmp, &value).map_err(|e| KvError::Other(e.to_string()))?;
        std::fs::rename(&tmp, dir.join(hex(&key))).map_err(|e| KvError::Other(e.to_string()))
    }
    fn delete(&mut self, store: Resource<KvHandle>, key: String) -> Result<(), KvError> {
        let dir = &self.table.get(&store).map_err(|e| KvError::Other(e.to_string()))?.dir;
        match std::fs::remove_file(dir.join(hex(&key))) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(KvError::Other(e.to_string())),
        }
    }
    fn exists(&mut self, store: Resource<KvHandle>, key: String) -> Result<bool, KvError> {
        Ok(self.get(store, key)?.is_some())
    }
    fn get_keys(&mut self, store: Resource<KvHandle>) -> Result<Vec<String>, KvError> {
        let dir = &self.table.get(&store).map_err(|e| KvError::Other(e.to_string()))?.dir;
        let entries = std::fs::read_dir(dir).map_err(|e| KvError::Other(e.to_string()))?;
        Ok(entries
            .filter_map(Result::ok)
            .filter_map(|e| unhex(e.file_name().to_str()?))
            .collect())
    }
    fn drop(&mut self, store: Resource<KvHandle>) -> wasmtime::Result<()> {
        self.table.delete(store)?;
        Ok(())
    }
}

/// The component, compiled once, and the directory its `default` store lives in.
struct SpinHost {
    engine: Engine,
    pre: bindings::KvCollectionPre<HostState>,
    dir: PathBuf,
}

impl SpinHost {
    fn new(dir: &Path) -> SpinHost {
        let engine = Engine::default();
        let component = Component::from_file(&engine, guest_paths::SPIN_COLLECTION).expect("component");
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).expect("wasi");
        bindings::KvCollection::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s).expect("link");
        let pre = bindings::KvCollectionPre::new(linker.instantiate_pre(&component).expect("pre")).expect("pre");
        SpinHost {
            engine,
            pre,
            dir: dir.to_owned(),
        }
    }

    /// A fresh instance, as for one request.
    fn request(&self) -> (Store<HostState>, bindings::KvCollection) {
        let state = HostState {
            dir: self.dir.clone(),
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
        };
        let mut store = Store::new(&self.engine, state);
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
    let host = SpinHost::new(data.path());
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
    assert!(again.expect_err("exists").contains("already exists"));

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
    assert!(nobody.expect_err("no tenant").contains("does not exist"));

    // After a restart of the host, alice's data is there: search, filter, delete-where.
    drop(host);
    let host = SpinHost::new(data.path());
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
    for entry in std::fs::read_dir(data.path()).expect("dir") {
        let entry = entry.expect("entry");
        let key = unhex(entry.file_name().to_str().expect("name")).expect("a key");
        assert!(
            key.len() <= 255 && entry.metadata().expect("meta").len() <= 1 << 20,
            "{key}"
        );
    }
}

/// The imports check: linked with only what a Spin 3.x host defines (WASI 0.2 and the vendored
/// fermyon:spin key-value), the component instantiates; its `tvs:store/types` import holds only
/// types and needs no definition. Any other import fails here, named.
#[test]
fn the_component_needs_nothing_but_what_spin_provides() {
    let engine = Engine::default();
    let component = Component::from_file(&engine, guest_paths::SPIN_COLLECTION).expect("component");
    let mut linker: Linker<HostState> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).expect("wasi");
    bindings::fermyon::spin::key_value::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
        .expect("key-value");
    let outside: Vec<String> = component
        .component_type()
        .imports(&engine)
        .map(|(name, _)| name.to_owned())
        .filter(|name| !(name.starts_with("fermyon:spin/") || name.starts_with("wasi:") && name.contains("@0.2.")))
        .collect();
    match linker.instantiate_pre(&component) {
        Ok(_) => {}
        Err(e) => panic!("imports outside Spin's {outside:?}: {e:#}"),
    }
}
