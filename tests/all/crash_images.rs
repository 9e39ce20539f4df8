//! Power cuts at every sync point: a workload runs over a recording storage; for every `fsync`
//! it made, the disk a power cut right after it may leave (unsynced writes lost, kept, or torn;
//! names not yet made durable by a directory fsync undone) is written out and opened. Each image
//! must open, hold every write acknowledged before the cut, show nothing half-written, and
//! search must agree with the documents.
//!
//! Images per sync point: all unsynced changes lost, all kept, and `TVS_CRASH_TORN_IMAGES`
//! (default 2) with a seeded random prefix of them kept, the last torn at a random byte.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};
use tvs_guest_core::filter::Filter;
use tvs_store::config::{Metric, ScalarKind, StoreConfig};
use tvs_store::store::{IndexKind, NewDocument, SearchQuery, TenantStore};
use tvs_store::tenant::{DataDir, TenantId};

use crate::disk_model::{Disk, Recorder, Survival, real_files};
use crate::support::obj;

const DIMS: usize = 4;

#[derive(Debug, Clone, PartialEq)]
struct Doc {
    text: String,
    metadata: Map<String, Value>,
    vector: Vec<f32>,
}

type Docs = BTreeMap<String, Doc>;
type Tenants = BTreeMap<String, Docs>;

/// What a step changes, once it is acknowledged.
#[derive(Debug, Clone)]
enum Change {
    /// Nothing a reader can see (open, flush, compaction, waiting for the indexer).
    Nothing,
    CreateTenant(String),
    DeleteTenant(String),
    /// The new state of each document the step touched (`None`: deleted).
    Docs {
        tenant: String,
        set: Vec<(String, Option<Doc>)>,
    },
    /// The active version of the tenant's plugin `p` (an upload or an activation).
    Plugin {
        tenant: String,
        active: u32,
    },
}

/// The active version of each tenant's plugin `p`.
type PluginVersions = BTreeMap<String, u32>;

/// The plugin runtime the workload and the checks share (compiling in this process: the
/// components are the tests' own).
fn plugins() -> &'static tvs_runtime::plugins::Plugins {
    static PLUGINS: std::sync::OnceLock<tvs_runtime::plugins::Plugins> = std::sync::OnceLock::new();
    PLUGINS.get_or_init(|| {
        tvs_runtime::plugins::Plugins::new(
            tvs_runtime::plugins::PluginLimits::default(),
            tvs_runtime::plugins::Compiler::InProcess,
        )
        .expect("plugin runtime")
    })
}

#[derive(Debug)]
struct Step {
    what: String,
    /// Operations recorded when the step began and when it returned (was acknowledged).
    start: usize,
    ack: usize,
    change: Change,
}

fn apply(tenants: &mut Tenants, plugin_versions: &mut PluginVersions, change: &Change) {
    match change {
        Change::Nothing => {}
        Change::Plugin { tenant, active } => {
            plugin_versions.insert(tenant.clone(), *active);
        }
        Change::CreateTenant(name) => {
            tenants.insert(name.clone(), Docs::new());
        }
        Change::DeleteTenant(name) => {
            tenants.remove(name);
            plugin_versions.remove(name);
        }
        Change::Docs { tenant, set } => {
            let docs = tenants.get_mut(tenant).expect("tenant of a change");
            for (id, doc) in set {
                match doc {
                    Some(doc) => docs.insert(id.clone(), doc.clone()),
                    None => docs.remove(id),
                };
            }
        }
    }
}

fn config(hnsw_threshold: usize) -> StoreConfig {
    let mut config = StoreConfig::new(DIMS, Metric::L2, ScalarKind::default(), "none");
    config.hnsw_threshold = hnsw_threshold;
    config
}

/// Runs the workload, recording each step's span and what it changed.
struct Workload<'a> {
    data: &'a DataDir,
    recorder: &'a Recorder,
    rng: rand::rngs::StdRng,
    steps: Vec<Step>,
}

impl Workload<'_> {
    fn step<T>(&mut self, what: &str, change: Change, run: impl FnOnce() -> T) -> T {
        let start = self.recorder.len();
        let out = run();
        self.steps.push(Step {
            what: what.to_owned(),
            start,
            ack: self.recorder.len(),
            change,
        });
        out
    }

    fn doc(&mut self, i: usize, version: u32) -> Doc {
        Doc {
            text: format!("text {i} v{version}"),
            metadata: obj(json!({"i": i, "kind": if i.is_multiple_of(2) { "even" } else { "odd" }, "v": version})),
            vector: (0..DIMS).map(|_| self.rng.random_range(-1.0f32..1.0)).collect(),
        }
    }

    fn upsert(&mut self, store: &Arc<TenantStore>, tenant: &str, docs: Vec<(String, Doc)>) {
        let new: Vec<NewDocument> = docs
            .iter()
            .map(|(id, doc)| NewDocument {
                id: Some(id.clone()),
                text: doc.text.clone(),
                metadata: doc.metadata.clone(),
                vector: doc.vector.clone(),
            })
            .collect();
        let what = format!("upsert {} into {tenant}", docs.len());
        let change = Change::Docs {
            tenant: tenant.to_owned(),
            set: docs.into_iter().map(|(id, doc)| (id, Some(doc))).collect(),
        };
        self.step(&what, change, || store.upsert(new).expect("upsert"));
    }

    fn open(&mut self, tenant: &str) -> Arc<TenantStore> {
        let dir = self.data.store_dir(&TenantId::new(tenant).expect("id"));
        self.step(&format!("open {tenant}"), Change::Nothing, || {
            TenantStore::open(&dir).expect("open")
        })
    }
}

fn run_workload(data: &DataDir, recorder: &Recorder, old_docs: &Docs) -> Vec<Step> {
    let mut w = Workload {
        data,
        recorder,
        rng: rand::rngs::StdRng::seed_from_u64(7),
        steps: Vec::new(),
    };
    let ids = |range: std::ops::Range<usize>| range.map(|i| format!("a{i}")).collect::<Vec<_>>();

    // Tenant "a": exact search throughout.
    w.step("create a", Change::CreateTenant("a".into()), || {
        data.create_tenant(&TenantId::new("a").expect("id"), &config(1_000))
            .expect("create a")
    });
    let a = w.open("a");
    let one = vec![("a0".to_owned(), w.doc(0, 1))];
    w.upsert(&a, "a", one);
    let batch: Vec<_> = ids(1..6)
        .into_iter()
        .zip(1..6)
        .map(|(id, i)| (id, w.doc(i, 1)))
        .collect();
    w.upsert(&a, "a", batch);
    let overwrite = vec![("a3".to_owned(), w.doc(3, 2))];
    w.upsert(&a, "a", overwrite);
    let deleted = Change::Docs {
        tenant: "a".into(),
        set: vec![("a2".into(), None)],
    };
    w.step("delete a2", deleted, || a.delete(&["a2".to_owned()]).expect("delete"));
    w.step("flush a", Change::Nothing, || a.flush().expect("flush"));
    let batch: Vec<_> = ids(6..9)
        .into_iter()
        .zip(6..9)
        .map(|(id, i)| (id, w.doc(i, 1)))
        .collect();
    w.upsert(&a, "a", batch);
    // Even documents now: a4, a6, a8 (a0 too).
    let evens = ["a0", "a4", "a6", "a8"].map(|id| (id.to_owned(), None)).to_vec();
    let even_filter = Filter::parse(&json!({"kind": "even"})).expect("filter");
    let change = Change::Docs {
        tenant: "a".into(),
        set: evens,
    };
    w.step("delete where kind = even", change, || {
        assert_eq!(a.delete_where(&even_filter).expect("delete_where"), 4)
    });
    w.step("compact a", Change::Nothing, || a.compact().expect("compact"));
    let one = vec![("a10".to_owned(), w.doc(10, 1))];
    w.upsert(&a, "a", one);
    w.step("flush a", Change::Nothing, || a.flush().expect("flush"));
    // Plugin uploads and a roll back: all or nothing, durable once answered.
    let probe = std::fs::read(tvs_runtime::guest_paths::PLUGIN_PROBE).expect("probe plugin");
    for version in [1, 2] {
        let change = Change::Plugin {
            tenant: "a".into(),
            active: version,
        };
        w.step(&format!("upload plugin v{version}"), change, || {
            plugins().upload(a.dir(), "p", &probe).expect("upload")
        });
    }
    let change = Change::Plugin {
        tenant: "a".into(),
        active: 1,
    };
    w.step("roll back plugin", change, || {
        plugins().activate(a.dir(), "p", 1).expect("activate")
    });
    drop(a);

    // Tenant "g": past its threshold of 8 a graph is built in the background and snapshotted.
    w.step("create g", Change::CreateTenant("g".into()), || {
        data.create_tenant(&TenantId::new("g").expect("id"), &config(8))
            .expect("create g")
    });
    let g = w.open("g");
    let batch: Vec<_> = (0..12).map(|i| (format!("g{i}"), w.doc(i, 1))).collect();
    w.upsert(&g, "g", batch);
    w.step("graph build and its snapshot", Change::Nothing, || g.wait_for_index());
    let batch: Vec<_> = (12..14).map(|i| (format!("g{i}"), w.doc(i, 1))).collect();
    w.upsert(&g, "g", batch);
    w.step("indexer", Change::Nothing, || g.wait_for_index());
    w.step("flush g", Change::Nothing, || g.flush().expect("flush"));
    let deleted = Change::Docs {
        tenant: "g".into(),
        set: vec![("g5".into(), None)],
    };
    w.step("delete g5", deleted, || g.delete(&["g5".to_owned()]).expect("delete"));
    drop(g);

    // Tenant "old": a version-1 log, upgraded in place when opened.
    let old = w.open("old");
    assert_eq!(old.count(), old_docs.len() as u64);
    let one = vec![("new".to_owned(), w.doc(50, 1))];
    w.upsert(&old, "old", one);
    w.step("flush old", Change::Nothing, || old.flush().expect("flush"));
    drop(old);

    // Tenant "gone": created, written, deleted.
    w.step("create gone", Change::CreateTenant("gone".into()), || {
        data.create_tenant(&TenantId::new("gone").expect("id"), &config(1_000))
            .expect("create gone")
    });
    let gone = w.open("gone");
    let one = vec![("x".to_owned(), w.doc(60, 1))];
    w.upsert(&gone, "gone", one);
    drop(gone);
    w.step("delete gone", Change::DeleteTenant("gone".into()), || {
        data.delete_tenant(&TenantId::new("gone").expect("id"))
            .expect("delete gone")
    });
    w.steps
}

/// A tenant written before recording starts, with a version-1 log: durable in every image.
fn write_v1_tenant(data: &DataDir) -> Docs {
    let id = TenantId::new("old").expect("id");
    let dir = data.create_tenant(&id, &config(1_000)).expect("create old");
    let mut log = String::from("{\"op\":\"header\",\"format\":\"tvs-doclog\",\"version\":1,\"generation\":1}\n");
    let mut docs = Docs::new();
    for i in 0..3 {
        let doc = Doc {
            text: format!("old {i}"),
            metadata: obj(json!({"i": i})),
            vector: vec![i as f32, 1.0, -0.5, 0.25],
        };
        let line = json!({"op": "upsert", "id": format!("o{i}"), "text": doc.text, "metadata": doc.metadata, "vector": doc.vector});
        log.push_str(&format!("{line}\n"));
        docs.insert(format!("o{i}"), doc);
    }
    std::fs::write(dir.docs_log(), log).expect("write a v1 log");
    docs
}

/// What a reader may see after a cut after `applied` operations: the tenants as every
/// acknowledged step left them, and the step that was running, whose change may show or not
/// (each document it touched on its own: a batch is not atomic, but no document is torn).
fn expected<'s>(initial: &Tenants, steps: &'s [Step], applied: usize) -> (Tenants, PluginVersions, Option<&'s Step>) {
    let mut tenants = initial.clone();
    let mut plugin_versions = PluginVersions::new();
    for step in steps {
        if step.ack <= applied {
            apply(&mut tenants, &mut plugin_versions, &step.change);
        } else {
            return (tenants, plugin_versions, (step.start < applied).then_some(step));
        }
    }
    (tenants, plugin_versions, None)
}

fn check_image(
    root: &Path,
    acked: &Tenants,
    plugin_versions: &PluginVersions,
    running: Option<&Step>,
) -> Result<(), String> {
    let data = DataDir::open(root).map_err(|e| format!("data dir: {e}"))?;
    // An interrupted deletion leaves its renamed tenant behind; opening the data dir removes it.
    for entry in std::fs::read_dir(root).map_err(|e| e.to_string())? {
        let name = entry.map_err(|e| e.to_string())?.file_name();
        if name.to_string_lossy().starts_with(".deleting-") {
            return Err(format!("{name:?} was left behind"));
        }
    }
    let running_change = running.map_or(&Change::Nothing, |s| &s.change);
    let mut names: BTreeSet<String> = acked.keys().cloned().collect();
    if let Change::CreateTenant(name) = running_change {
        names.insert(name.clone());
    }
    let listed: BTreeSet<String> = data
        .list_tenants(None, 1_000)
        .map_err(|e| format!("list: {e}"))?
        .tenants
        .into_iter()
        .collect();
    for name in &listed {
        if !names.contains(name) {
            return Err(format!("tenant {name} exists but was never acknowledged"));
        }
    }
    for name in &names {
        let exists = listed.contains(name);
        let may_be_absent = !acked.contains_key(name) || matches!(running_change, Change::DeleteTenant(n) if n == name);
        let may_exist = acked.contains_key(name) || matches!(running_change, Change::CreateTenant(n) if n == name);
        if !exists && !may_be_absent {
            return Err(format!("acknowledged tenant {name} is missing"));
        }
        if exists && !may_exist {
            return Err(format!("deleted tenant {name} is back"));
        }
        if exists {
            let empty = Docs::new();
            let docs = acked.get(name).unwrap_or(&empty);
            let touched = match running_change {
                Change::Docs { tenant, set } if tenant == name => set.clone(),
                _ => Vec::new(),
            };
            let mut versions: Vec<u32> = plugin_versions.get(name).copied().into_iter().collect();
            if let Change::Plugin { tenant, active } = running_change
                && tenant == name
            {
                versions.push(*active);
            }
            let plugin_may_be_absent = !plugin_versions.contains_key(name);
            check_tenant(&data, name, docs, &touched, (&versions, plugin_may_be_absent))
                .map_err(|e| format!("tenant {name}: {e}"))?;
        }
    }
    Ok(())
}

fn check_tenant(
    data: &DataDir,
    name: &str,
    acked: &Docs,
    touched: &[(String, Option<Doc>)],
    (plugin_versions, plugin_may_be_absent): (&[u32], bool),
) -> Result<(), String> {
    let dir = data.store_dir(&TenantId::new(name).expect("id"));
    let store = TenantStore::open(&dir).map_err(|e| format!("does not open: {e:#}"))?;
    store.wait_for_index();
    // The tenant's plugin is there at an acknowledged (or the running step's) version and runs,
    // or, if no upload was acknowledged, is absent; never half there.
    match plugins().info(&dir, "p") {
        Ok(info) if plugin_versions.contains(&info.active) => {
            let (answer, _) = plugins().call_function(store.clone(), "p", r#"{"op": "echo", "value": 1}"#);
            answer.map_err(|e| format!("plugin p v{} does not run: {e}", info.active))?;
        }
        Ok(info) => {
            return Err(format!(
                "plugin p is at v{}, expected one of {plugin_versions:?}",
                info.active
            ));
        }
        Err(tvs_runtime::plugins::PluginError::NotFound(_)) if plugin_may_be_absent => {}
        Err(e) => return Err(format!("plugin p: {e}")),
    }
    let mut ids: BTreeSet<&String> = acked.keys().collect();
    ids.extend(touched.iter().map(|(id, _)| id));
    let mut present = Vec::new();
    for id in ids {
        let got = store.get(std::slice::from_ref(id), true).pop().map(|d| Doc {
            text: d.text,
            metadata: d.metadata,
            vector: d.vector.unwrap_or_default(),
        });
        let before = acked.get(id);
        let after = touched.iter().find(|(t, _)| t == id).map(|(_, doc)| doc.as_ref());
        let allowed = got.as_ref() == before || after.is_some_and(|after| got.as_ref() == after);
        if !allowed {
            return Err(format!(
                "{id}: found {got:?}, acknowledged {before:?}, running step {after:?}"
            ));
        }
        if let Some(doc) = got {
            present.push((id.clone(), doc));
        }
    }
    if store.count() != present.len() as u64 {
        return Err(format!("{} documents, expected {}", store.count(), present.len()));
    }
    // The index agrees with the documents: each document is its own nearest neighbour.
    let mut found_self = 0;
    for (id, doc) in &present {
        let query = SearchQuery {
            vector: doc.vector.clone(),
            k: 1,
            filter: None,
            mmr: None,
            include_vectors: false,
        };
        let hits = store.search(&query).map_err(|e| format!("search: {e}"))?;
        found_self += usize::from(hits.first().is_some_and(|h| &h.id == id));
    }
    let exact = store.info().index == IndexKind::Exact;
    let wanted = if exact { present.len() } else { present.len() * 9 / 10 };
    if found_self < wanted {
        return Err(format!(
            "search finds {found_self} of {} documents by their own vector",
            present.len()
        ));
    }
    // The recovered store takes writes, and they survive a reopen.
    let probe = NewDocument {
        id: Some("probe".into()),
        text: "probe".into(),
        metadata: Map::new(),
        vector: vec![9.0; DIMS],
    };
    store
        .upsert(vec![probe])
        .map_err(|e| format!("write after recovery: {e}"))?;
    drop(store);
    let store = TenantStore::open(&dir).map_err(|e| format!("reopen after a write: {e:#}"))?;
    if store.get(&["probe".to_owned()], false).is_empty() {
        return Err("a write after recovery was lost on reopen".into());
    }
    Ok(())
}

fn skip_lock(name: &str) -> bool {
    name == ".lock"
}

#[test]
fn every_sync_point_leaves_a_disk_that_opens_with_every_acknowledged_write() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("data");
    std::fs::create_dir(&root).expect("root");
    let old_docs = write_v1_tenant(&DataDir::open(&root).expect("data dir"));
    let root = root.canonicalize().expect("canonical root");
    let initial_disk = Disk::scan(&root, &skip_lock);
    let initial: Tenants = [("old".to_owned(), old_docs.clone())].into_iter().collect();

    let recorder = Recorder::new();
    let data = DataDir::open_with_storage(&root, recorder.clone()).expect("data dir");
    let steps = run_workload(&data, &recorder, &old_docs);
    let ops = recorder.ops();

    // With every operation applied, the model is the real disk: the seam saw every change.
    let mut disk = initial_disk.clone();
    ops.iter().for_each(|op| disk.apply(op));
    assert_eq!(
        disk.current_files().keys().collect::<Vec<_>>(),
        real_files(&root, &skip_lock).keys().collect::<Vec<_>>()
    );
    assert!(
        disk.current_files() == real_files(&root, &skip_lock),
        "file contents differ from the model"
    );

    let torn_images: u64 = std::env::var("TVS_CRASH_TORN_IMAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let mut disk = initial_disk;
    let mut sync_points = 0;
    let mut images = 0;
    for (i, op) in ops.iter().enumerate() {
        disk.apply(op);
        if !op.is_sync() {
            continue;
        }
        sync_points += 1;
        let applied = i + 1;
        let (acked, plugin_versions, running) = expected(&initial, &steps, applied);
        let survivals = [Survival::Lost, Survival::Kept]
            .into_iter()
            .chain((0..torn_images).map(|k| Survival::Torn(applied as u64 * 1_000 + k)));
        for survival in survivals {
            let image = tempfile::tempdir().expect("image dir");
            disk.write_image(image.path(), survival);
            images += 1;
            if let Err(e) = check_image(image.path(), &acked, &plugin_versions, running) {
                let during = running.map_or("between steps".to_owned(), |s| format!("during {:?}", s.what));
                panic!(
                    "power cut after sync point {sync_points} (operation {applied}: {op:?}), {during}, {survival:?}: {e}"
                );
            }
        }
    }
    eprintln!(
        "{sync_points} sync points, {images} crash images, {} operations, {} steps",
        ops.len(),
        steps.len()
    );
    assert!(sync_points >= 40, "the workload made only {sync_points} sync points");
}
