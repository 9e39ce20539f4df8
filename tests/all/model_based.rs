//! Random sequences of store operations against a model: a `BTreeMap` of documents and a
//! brute-force k-NN. Upserts (ids collide on purpose), deletes, delete-where, gets, searches with
//! and without filters, flushes, compactions, reopens, and reopens from a crash image (every
//! unsynced change lost) are applied to both; every answer is compared.
//!
//! Exact mode must equal the model exactly (the same distances; ids equal up to ties). HNSW mode
//! must return only live documents that match the filter, at their true distance, with recall@k
//! of at least 0.9 over a case's unfiltered searches. A failing case is shrunk by proptest and
//! printed as the list of actions that reproduces it.
//!
//! Cases are deterministic (a fixed seed); `TVS_PROPTEST_CASES` runs more.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::{Value, json};
use tvs_guest_core::filter::Filter;
use tvs_store::config::{Metric, ScalarKind, StoreConfig};
use tvs_store::store::{NewDocument, SearchQuery, TenantStore};
use tvs_store::tenant::{DataDir, TenantId};

use crate::disk_model::{Disk, Recorder, Survival};

const DIMS: usize = 8;

/// Unfiltered searches answered by the graph, over all cases (the HNSW test checks there were).
static GRAPH_SEARCHES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[derive(Debug, Clone, Copy)]
enum FilterKind {
    TagIs(u8),
    NAbove(u8),
    TagInOrNBelow(u8, u8),
    NotTag(u8),
}

#[derive(Debug, Clone)]
enum Action {
    /// (document number, salt): the salt decides the vector, text and metadata.
    Upsert(Vec<(u8, u16)>),
    Delete(Vec<u8>),
    DeleteWhere(FilterKind),
    Get(u8),
    Search {
        salt: u16,
        k: u8,
        filter: Option<FilterKind>,
    },
    Flush,
    Compact,
    Reopen,
    CrashReopen,
}

#[derive(Debug, Clone, PartialEq)]
struct Doc {
    text: String,
    tag: String,
    n: u64,
    vector: Vec<f32>,
}

fn id_of(number: u8) -> String {
    format!("d{}", number % 24)
}

fn vector_of(salt: u16, number: u8) -> Vec<f32> {
    // A small deterministic generator: distinct salts give unrelated vectors.
    let mut state = (u64::from(salt) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (u64::from(number) + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
    (0..DIMS)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 20_001) as f32 / 10_000.0 - 1.0
        })
        .collect()
}

fn doc_of(number: u8, salt: u16) -> Doc {
    Doc {
        text: format!("text {salt}"),
        tag: format!("t{}", salt % 3),
        n: u64::from(salt % 50),
        vector: vector_of(salt, number),
    }
}

impl FilterKind {
    fn json(self) -> Value {
        match self {
            FilterKind::TagIs(t) => json!({"tag": format!("t{}", t % 3)}),
            FilterKind::NAbove(x) => json!({"n": {"$gt": x % 50}}),
            FilterKind::TagInOrNBelow(t, x) => {
                json!({"$or": [{"tag": {"$in": [format!("t{}", t % 3)]}}, {"n": {"$lt": x % 50}}]})
            }
            FilterKind::NotTag(t) => json!({"$not": {"tag": format!("t{}", t % 3)}}),
        }
    }

    /// The model's own reading of the filter (not the store's parser).
    fn matches(self, doc: &Doc) -> bool {
        match self {
            FilterKind::TagIs(t) => doc.tag == format!("t{}", t % 3),
            FilterKind::NAbove(x) => doc.n > u64::from(x % 50),
            FilterKind::TagInOrNBelow(t, x) => doc.tag == format!("t{}", t % 3) || doc.n < u64::from(x % 50),
            FilterKind::NotTag(t) => doc.tag != format!("t{}", t % 3),
        }
    }

    fn parsed(self) -> Filter {
        Filter::parse(&self.json()).expect("a valid filter")
    }
}

fn filter_kind() -> impl Strategy<Value = FilterKind> {
    prop_oneof![
        any::<u8>().prop_map(FilterKind::TagIs),
        any::<u8>().prop_map(FilterKind::NAbove),
        (any::<u8>(), any::<u8>()).prop_map(|(t, x)| FilterKind::TagInOrNBelow(t, x)),
        any::<u8>().prop_map(FilterKind::NotTag),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => prop::collection::vec((any::<u8>(), any::<u16>()), 1..6).prop_map(Action::Upsert),
        2 => prop::collection::vec(any::<u8>(), 1..4).prop_map(Action::Delete),
        1 => filter_kind().prop_map(Action::DeleteWhere),
        2 => any::<u8>().prop_map(Action::Get),
        4 => (any::<u16>(), 1u8..8, prop::option::of(filter_kind()))
            .prop_map(|(salt, k, filter)| Action::Search { salt, k, filter }),
        1 => Just(Action::Flush),
        1 => Just(Action::Compact),
        1 => Just(Action::Reopen),
        1 => Just(Action::CrashReopen),
    ]
}

/// A store over a recording storage, so that a crash image of it can be cut at any time.
struct Subject {
    _dirs: Vec<tempfile::TempDir>,
    root: std::path::PathBuf,
    initial: Disk,
    recorder: Arc<Recorder>,
    store: Option<Arc<TenantStore>>,
}

impl Subject {
    fn new(hnsw_threshold: usize) -> Subject {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().canonicalize().expect("root");
        let recorder = Recorder::new();
        let data = DataDir::open_with_storage(&root, recorder.clone()).expect("data dir");
        let mut config = StoreConfig::new(DIMS, Metric::L2, ScalarKind::default(), "none");
        config.hnsw_threshold = hnsw_threshold;
        let initial = Disk::scan(&root, &|_| false);
        data.create_tenant(&TenantId::new("t").expect("id"), &config)
            .expect("create");
        let mut subject = Subject {
            _dirs: vec![tmp],
            root,
            initial,
            recorder,
            store: None,
        };
        subject.open();
        subject
    }

    fn open(&mut self) {
        let data = DataDir::open_with_storage(&self.root, self.recorder.clone()).expect("data dir");
        let store = TenantStore::open(&data.store_dir(&TenantId::new("t").expect("id"))).expect("open");
        store.wait_for_index();
        self.store = Some(store);
    }

    fn store(&self) -> &Arc<TenantStore> {
        self.store.as_ref().expect("open")
    }

    /// Power is cut now: the store restarts from what its fsyncs made durable.
    fn crash(&mut self) {
        let store = self.store.take().expect("open");
        store.wait_for_index();
        drop(store);
        let mut disk = self.initial.clone();
        for op in self.recorder.ops() {
            disk.apply(&op);
        }
        let image = tempfile::tempdir().expect("image");
        disk.write_image(image.path(), Survival::Lost);
        self.root = image.path().canonicalize().expect("image root");
        self.initial = Disk::scan(&self.root, &|name| name == ".lock");
        self.recorder = Recorder::new();
        self._dirs.push(image);
        self.open();
    }
}

fn check(actions: &[Action], hnsw_threshold: usize) -> Result<(), TestCaseError> {
    let mut subject = Subject::new(hnsw_threshold);
    let mut model: BTreeMap<String, Doc> = BTreeMap::new();
    let (mut recall_found, mut recall_wanted) = (0usize, 0usize);
    for (step, action) in actions.iter().enumerate() {
        let at = |what: &str| format!("action {step} ({action:?}): {what}");
        match action {
            Action::Upsert(items) => {
                let docs: Vec<NewDocument> = items
                    .iter()
                    .map(|&(number, salt)| {
                        let doc = doc_of(number, salt);
                        NewDocument {
                            id: Some(id_of(number)),
                            text: doc.text.clone(),
                            metadata: json!({"tag": doc.tag, "n": doc.n})
                                .as_object()
                                .cloned()
                                .unwrap_or_default(),
                            vector: doc.vector,
                        }
                    })
                    .collect();
                subject
                    .store()
                    .upsert(docs)
                    .map_err(|e| TestCaseError::fail(at(&e.to_string())))?;
                for &(number, salt) in items {
                    model.insert(id_of(number), doc_of(number, salt));
                }
                subject.store().wait_for_index();
            }
            Action::Delete(numbers) => {
                let ids: Vec<String> = numbers.iter().map(|&n| id_of(n)).collect();
                let mut unique = ids.clone();
                unique.sort();
                unique.dedup();
                let expected = unique.iter().filter(|id| model.contains_key(*id)).count() as u64;
                let deleted = subject
                    .store()
                    .delete(&ids)
                    .map_err(|e| TestCaseError::fail(at(&e.to_string())))?;
                prop_assert_eq!(deleted, expected, "{}", at("deleted count"));
                unique.iter().for_each(|id| {
                    model.remove(id);
                });
            }
            Action::DeleteWhere(kind) => {
                let deleted = subject
                    .store()
                    .delete_where(&kind.parsed())
                    .map_err(|e| TestCaseError::fail(at(&e.to_string())))?;
                let before = model.len();
                model.retain(|_, doc| !kind.matches(doc));
                prop_assert_eq!(deleted, (before - model.len()) as u64, "{}", at("deleted count"));
            }
            Action::Get(number) => {
                let id = id_of(*number);
                let got = subject.store().get(std::slice::from_ref(&id), true).pop();
                let got = got.map(|d| Doc {
                    text: d.text,
                    tag: d.metadata["tag"].as_str().unwrap_or_default().to_owned(),
                    n: d.metadata["n"].as_u64().unwrap_or(u64::MAX),
                    vector: d.vector.unwrap_or_default(),
                });
                prop_assert_eq!(got.as_ref(), model.get(&id), "{}", at("get"));
            }
            Action::Search { salt, k, filter } => {
                let query = vector_of(*salt, 255);
                let hits = subject
                    .store()
                    .search(&SearchQuery {
                        vector: query.clone(),
                        k: usize::from(*k),
                        filter: filter.map(FilterKind::parsed),
                        mmr: None,
                        include_vectors: false,
                    })
                    .map_err(|e| TestCaseError::fail(at(&e.to_string())))?;
                let mut truth: Vec<(f32, &String)> = model
                    .iter()
                    .filter(|(_, doc)| filter.is_none_or(|f| f.matches(doc)))
                    .map(|(id, doc)| (tvs_store::vectors::distance(Metric::L2, &query, &doc.vector), id))
                    .collect();
                truth.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1)));
                truth.truncate(usize::from(*k));
                // Every hit is live, matches, and is reported at its true distance.
                for hit in &hits {
                    let doc = model
                        .get(&hit.id)
                        .ok_or_else(|| TestCaseError::fail(at(&format!("{} is not live", hit.id))))?;
                    prop_assert!(
                        filter.is_none_or(|f| f.matches(doc)),
                        "{}",
                        at(&format!("{} fails the filter", hit.id))
                    );
                    let true_distance = tvs_store::vectors::distance(Metric::L2, &query, &doc.vector);
                    prop_assert!(
                        (hit.distance - true_distance).abs() <= 1e-4 * true_distance.max(1.0),
                        "{}",
                        at("distance")
                    );
                    prop_assert_eq!(&hit.text, &doc.text, "{}", at("text"));
                }
                let exact = subject.store().info().index == tvs_store::store::IndexKind::Exact;
                if exact {
                    let got: Vec<f32> = hits.iter().map(|h| h.distance).collect();
                    let want: Vec<f32> = truth.iter().map(|t| t.0).collect();
                    prop_assert_eq!(got.len(), want.len(), "{}", at("exact: number of hits"));
                    for (g, w) in got.iter().zip(&want) {
                        prop_assert!(
                            (g - w).abs() <= 1e-4 * w.max(1.0),
                            "{}",
                            at(&format!("exact: {got:?} vs {want:?}"))
                        );
                    }
                } else if filter.is_none() {
                    GRAPH_SEARCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    recall_wanted += truth.len();
                    recall_found += truth.iter().filter(|(_, id)| hits.iter().any(|h| &h.id == *id)).count();
                }
            }
            Action::Flush => subject
                .store()
                .flush()
                .map_err(|e| TestCaseError::fail(at(&e.to_string())))?,
            Action::Compact => subject
                .store()
                .compact()
                .map_err(|e| TestCaseError::fail(at(&e.to_string())))?,
            Action::Reopen => {
                subject.store.take();
                subject.open();
            }
            Action::CrashReopen => subject.crash(),
        }
        prop_assert_eq!(subject.store().count(), model.len() as u64, "{}", at("count"));
    }
    if recall_wanted > 0 {
        let recall = recall_found as f64 / recall_wanted as f64;
        prop_assert!(
            recall >= 0.9,
            "HNSW recall@k {recall:.3} over the case's unfiltered searches"
        );
    }
    Ok(())
}

fn run(name: &str, default_cases: u32, max_actions: usize, hnsw_threshold: usize) {
    let cases = std::env::var("TVS_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let strategy = prop::collection::vec(action(), 1..max_actions);
    if let Err(e) = runner.run(&strategy, |actions| check(&actions, hnsw_threshold)) {
        panic!("{name}: {e}");
    }
}

#[test]
fn exact_mode_answers_exactly_as_a_btreemap_and_brute_force_do() {
    run("exact", 40, 40, 1_000_000);
}

#[test]
fn hnsw_mode_returns_only_live_matching_documents_with_recall_above_0_9() {
    run("hnsw", 32, 80, 6);
    let searches = GRAPH_SEARCHES.load(std::sync::atomic::Ordering::Relaxed);
    assert!(searches >= 100, "only {searches} searches were answered by a graph");
}
