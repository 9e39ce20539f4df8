//! The key-value layout under power cuts: a store that stops taking writes after its N-th
//! `set`, for every N of a workload that folds, splits and merges clusters, must reopen to
//! exactly what was acknowledged; under concurrent writers: every acknowledged write is there;
//! and search must equal a brute-force model.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use tvs_guest_core::filter::Filter;
use tvs_kv_collection::{Config, Document, KeyValue, KvCollection, KvError, Metric, SEGMENT_MAX, Tuning};

/// Spin's key-value store in memory; every `set` after the first `sets_left` fails.
#[derive(Debug, Default, Clone)]
struct MemoryKv {
    map: BTreeMap<String, Vec<u8>>,
    sets_left: Option<usize>,
}

impl KeyValue for MemoryKv {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.map.get(key).cloned())
    }
    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), KvError> {
        assert!(key.len() <= 255, "key {key} is longer than Spin allows");
        assert!(
            value.len() <= 1 << 20,
            "a value of {} bytes is larger than Spin allows",
            value.len()
        );
        match &mut self.sets_left {
            Some(0) => return Err(KvError::Store("power cut".into())),
            Some(n) => *n -= 1,
            None => {}
        }
        self.map.insert(key.to_owned(), value.to_vec());
        Ok(())
    }
    fn delete(&mut self, key: &str) -> Result<(), KvError> {
        if self.sets_left == Some(0) {
            return Err(KvError::Store("power cut".into()));
        }
        self.map.remove(key);
        Ok(())
    }
    fn keys(&self) -> Result<Vec<String>, KvError> {
        Ok(self.map.keys().cloned().collect())
    }
    fn compare_and_swap(&mut self, key: &str, expected: Option<&[u8]>, value: &[u8]) -> Result<bool, KvError> {
        if self.map.get(key).map(Vec::as_slice) != expected {
            return Ok(false);
        }
        self.set(key, value)?;
        Ok(true)
    }
}

fn config() -> Config {
    Config {
        dims: 4,
        metric: Metric::L2,
        embedding_model: "none".into(),
        max_documents: 100_000,
        rate_limits: Default::default(),
    }
}

/// Folds every few rows and splits small clusters, so a short workload goes through every
/// step of the layout.
fn small() -> Tuning {
    Tuning {
        fold_rows: 4,
        fold_share: 25,
        max_fold_rows: 4,
        fold_pages: 3,
        cluster_rows: 2,
        split_rows: 4,
        max_parts: 2,
        max_splits: 2,
        text_page_bytes: 200,
        shard_ids: 2,
        calibration_queries: 4,
        recall_target: 0.96,
    }
}

fn doc(id: &str, seed: u32, text_bytes: usize) -> Document {
    let metadata: Map<String, Value> = json!({"seed": seed, "even": seed.is_multiple_of(2)})
        .as_object()
        .cloned()
        .unwrap();
    Document {
        id: id.into(),
        text: "t".repeat(text_bytes),
        metadata,
        vector: (0..4).map(|i| ((seed * 7 + i) % 13) as f32 / 13.0).collect(),
    }
}

type Model = BTreeMap<String, Document>;

/// The workload: (what it does to the model, run it). Big texts make segments roll over.
fn workload(c: &mut KvCollection<MemoryKv>, model: &mut Model, step: usize) -> Result<(), KvError> {
    match step {
        0 => {
            let docs: Vec<Document> = (0..5).map(|i| doc(&format!("d{i}"), i, 10)).collect();
            c.upsert(docs.clone())?;
            docs.into_iter().for_each(|d| drop(model.insert(d.id.clone(), d)));
        }
        1 => {
            // Three documents of 400 kB: two segment roll-overs in one write.
            let docs: Vec<Document> = (5..8).map(|i| doc(&format!("d{i}"), i, 400_000)).collect();
            c.upsert(docs.clone())?;
            docs.into_iter().for_each(|d| drop(model.insert(d.id.clone(), d)));
        }
        2 => {
            c.delete(&["d1".into(), "d6".into(), "missing".into()])?;
            model.remove("d1");
            model.remove("d6");
        }
        3 => {
            let filter = Filter::parse(&json!({"even": true})).unwrap();
            c.delete_where(&filter)?;
            model.retain(|_, d| d.metadata["even"] != json!(true));
        }
        4 => {
            let d = doc("d3", 99, 20);
            c.upsert(vec![d.clone()])?;
            model.insert(d.id.clone(), d);
        }
        5 => c.compact()?,
        6 => {
            let d = doc("after", 5, 30);
            c.upsert(vec![d.clone()])?;
            model.insert(d.id.clone(), d);
        }
        7 => {
            // Enough single writes to fold twice and split.
            for i in 0..9 {
                let d = doc(&format!("e{i}"), 20 + i, 15);
                c.upsert(vec![d.clone()])?;
                model.insert(d.id.clone(), d);
            }
        }
        8 => {
            c.delete(&["e2".into(), "d0".into()])?;
            model.remove("e2");
            model.remove("d0");
            let d = doc("e5", 77, 5);
            c.upsert(vec![d.clone()])?;
            model.insert(d.id.clone(), d);
        }
        _ => unreachable!(),
    }
    Ok(())
}

const STEPS: usize = 9;

fn all_ids() -> Vec<String> {
    (0..8)
        .map(|i| format!("d{i}"))
        .chain((0..9).map(|i| format!("e{i}")))
        .chain(["after".to_owned(), "probe".to_owned()])
        .collect()
}

fn contents(c: &mut KvCollection<MemoryKv>) -> Model {
    c.get(&all_ids(), true)
        .unwrap()
        .into_iter()
        .map(|d| (d.id.clone(), d))
        .collect()
}

/// Every live document, as a search that must return all of them sees it.
fn searched(c: &mut KvCollection<MemoryKv>) -> Model {
    let everything = Filter::parse(&json!({})).unwrap();
    c.search(&[0.5, 0.5, 0.5, 0.5], 1000, Some(&everything))
        .unwrap()
        .into_iter()
        .map(|h| (h.document.id.clone(), h.document))
        .collect()
}

#[test]
fn a_cut_after_any_set_reopens_to_exactly_what_was_acknowledged() {
    // The number of sets of the whole workload, counted on a store that never fails.
    let mut kv = MemoryKv::default();
    let mut c = KvCollection::create_tuned(kv.clone(), "t", config(), small()).unwrap();
    let mut model = Model::new();
    for step in 0..STEPS {
        workload(&mut c, &mut model, step).unwrap();
        if step == 1 {
            // The first write folded into clusters; 1.2 MB of documents wait in the tail.
            let info = c.index_info().unwrap();
            assert_eq!((info.clustered_rows, info.tail_rows), (5, 3), "{info:?}");
        }
    }
    let info = c.index_info().unwrap();
    assert!(info.clusters >= 3, "clusters split as they grew: {info:?}");
    kv = c.into_store();
    let mut full = KvCollection::open_tuned(kv.clone(), "t", small()).unwrap();
    assert_eq!(contents(&mut full), model);
    assert_eq!(searched(&mut full), model);
    assert!(kv.map.values().all(|v| v.len() <= SEGMENT_MAX));
    // After a compaction, the store holds what the head names and nothing else.
    full.compact().unwrap();
    let values = full.index_info().unwrap().values;
    let kv = full.into_store();
    assert_eq!(
        kv.map.keys().filter(|k| k.starts_with("tvs/t/")).count() as u64,
        values,
        "{:#?}",
        kv.map.keys()
    );

    let mut cuts = 0;
    for budget in 0.. {
        let mut kv = MemoryKv {
            sets_left: Some(budget),
            ..MemoryKv::default()
        };
        let mut acked = Model::new();
        let mut finished = false;
        match KvCollection::create_tuned(kv.clone(), "t", config(), small()) {
            Err(_) => {
                // The creation was never acknowledged: there is no tenant, and it can be created.
                kv.sets_left = None;
                match KvCollection::open(kv.clone(), "t") {
                    Err(KvError::NoTenant(_)) => {}
                    other => panic!("cut after {budget} sets during creation: {other:?}"),
                }
                KvCollection::create(kv, "t", config()).expect("created again");
            }
            Ok(mut c) => {
                let mut done = 0;
                for step in 0..STEPS {
                    if workload(&mut c, &mut acked, step).is_err() {
                        break;
                    }
                    done += 1;
                }
                finished = done == STEPS;
                kv = c.into_store();
                kv.sets_left = None;
                let mut reopened = KvCollection::open_tuned(kv.clone(), "t", small())
                    .unwrap_or_else(|e| panic!("cut after {budget} sets: the tenant does not open: {e}"));
                assert_eq!(
                    contents(&mut reopened),
                    acked,
                    "cut after {budget} sets: not what was acknowledged"
                );
                assert_eq!(searched(&mut reopened), acked, "cut after {budget} sets: search");
                assert_eq!(reopened.count(), acked.len() as u64, "cut after {budget} sets");
                // And it takes writes again, folding what the cut left unfolded.
                reopened.upsert(vec![doc("probe", 1, 5)]).unwrap();
                reopened.compact().unwrap();
                let mut again = KvCollection::open_tuned(reopened.into_store(), "t", small()).unwrap();
                assert_eq!(
                    again.count(),
                    acked.len() as u64 + u64::from(!acked.contains_key("probe"))
                );
                let mut expected = acked.clone();
                let probe = doc("probe", 1, 5);
                expected.insert(probe.id.clone(), probe);
                assert_eq!(
                    searched(&mut again),
                    expected,
                    "cut after {budget} sets: after compaction"
                );
            }
        }
        cuts += 1;
        if finished {
            break;
        }
    }
    assert!(cuts > 60, "only {cuts} cut points");
}

#[test]
fn search_orders_by_distance_with_filters_and_bad_input_changes_nothing() {
    let mut c = KvCollection::create(
        MemoryKv::default(),
        "t",
        Config {
            max_documents: 3,
            ..config()
        },
    )
    .unwrap();
    let docs = vec![doc("a", 1, 1), doc("b", 2, 1), doc("c", 4, 1)];
    c.upsert(docs.clone()).unwrap();
    let query = docs[1].vector.clone();
    let hits = c.search(&query, 2, None).unwrap();
    assert_eq!(hits[0].document.id, "b");
    assert_eq!(
        (hits[0].distance, hits[0].score),
        (0.0, 0.0),
        "squared L2, score = distance"
    );
    assert!(hits[0].distance <= hits[1].distance);
    let odd = Filter::parse(&json!({"even": false})).unwrap();
    assert_eq!(
        c.search(&query, 3, Some(&odd))
            .unwrap()
            .iter()
            .map(|h| h.document.id.as_str())
            .collect::<Vec<_>>(),
        ["a"]
    );

    // Refused writes change nothing, in memory or in the store.
    let store_before = c.into_store();
    let mut c = KvCollection::open(store_before.clone(), "t").unwrap();
    let mut nan = doc("n", 1, 1);
    nan.vector[0] = f32::NAN;
    assert!(matches!(
        c.upsert(vec![doc("ok", 3, 1), nan]),
        Err(KvError::InvalidInput(_))
    ));
    let mut short = doc("s", 1, 1);
    short.vector.pop();
    assert!(matches!(c.upsert(vec![short]), Err(KvError::InvalidInput(_))));
    assert!(matches!(c.upsert(vec![doc("d", 5, 1)]), Err(KvError::QuotaExceeded(3))));
    assert!(matches!(c.search(&[1.0], 1, None), Err(KvError::InvalidInput(_))));
    assert_eq!(c.count(), 3);
    assert_eq!(c.into_store().map, store_before.map);
}

/// One store shared by threads, each key operation atomic, as Spin's store is to the instances
/// of a component serving requests side by side.
#[derive(Debug, Clone, Default)]
struct SharedKv(std::sync::Arc<std::sync::Mutex<BTreeMap<String, Vec<u8>>>>);

impl KeyValue for SharedKv {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.0.lock().unwrap().get(key).cloned())
    }
    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.0.lock().unwrap().insert(key.to_owned(), value.to_vec());
        Ok(())
    }
    fn delete(&mut self, key: &str) -> Result<(), KvError> {
        self.0.lock().unwrap().remove(key);
        Ok(())
    }
    fn keys(&self) -> Result<Vec<String>, KvError> {
        Ok(self.0.lock().unwrap().keys().cloned().collect())
    }
    fn compare_and_swap(&mut self, key: &str, expected: Option<&[u8]>, value: &[u8]) -> Result<bool, KvError> {
        let mut map = self.0.lock().unwrap();
        if map.get(key).map(Vec::as_slice) != expected {
            return Ok(false);
        }
        map.insert(key.to_owned(), value.to_vec());
        Ok(true)
    }
}

#[test]
fn concurrent_writers_lose_no_acknowledged_write() {
    let kv = SharedKv::default();
    let mut config = config();
    config.max_documents = 10_000;
    KvCollection::create(kv.clone(), "t", config).unwrap();
    const WRITERS: usize = 8;
    const WRITES: usize = 40;
    let acked: Vec<Vec<String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..WRITERS)
            .map(|w| {
                let kv = kv.clone();
                scope.spawn(move || {
                    let mut acked = Vec::new();
                    for n in 0..WRITES {
                        // One request: open the tenant, write, done.
                        let mut c = KvCollection::open(kv.clone(), "t").unwrap();
                        let id = format!("w{w}-{n}");
                        c.upsert(vec![doc(&id, (w * WRITES + n) as u32, 10)]).unwrap();
                        acked.push(id);
                        if n % 10 == 9 {
                            // And deletes racing with the upserts of others.
                            let gone = acked.remove(acked.len() - 2);
                            assert_eq!(c.delete(&[gone]).unwrap(), 1);
                        }
                    }
                    acked
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut reopened = KvCollection::open(kv.clone(), "t").unwrap();
    let acked: Vec<String> = acked.into_iter().flatten().collect();
    assert_eq!(acked.len(), WRITERS * WRITES * 9 / 10);
    let present = reopened.get(&acked, false).unwrap();
    assert_eq!(present.len(), acked.len(), "acknowledged writes went missing");
    assert_eq!(reopened.count(), acked.len() as u64, "acknowledged deletes came back");
    // 320 single writes folded along the way; a compaction leaves only what the head names.
    assert!(reopened.index_info().unwrap().clusters >= 1, "the tail was folded");
    reopened.compact().unwrap();
    let values = reopened.index_info().unwrap().values;
    assert_eq!(
        kv.keys().unwrap().iter().filter(|k| k.starts_with("tvs/t/")).count() as u64,
        values,
        "values no head names were deleted"
    );
    assert_eq!(reopened.get(&acked, false).unwrap().len(), acked.len());
}

/// Searches and gets running beside writers that fold, split and merge clusters: every read
/// succeeds (a value deleted under it sends it back to a fresh head), never shows one document
/// twice or a version nobody wrote, and the end state is what was acknowledged.
#[test]
fn reads_beside_folding_writers_see_one_consistent_tenant() {
    let kv = SharedKv::default();
    let tuning = Tuning {
        fold_rows: 12,
        fold_pages: 6,
        cluster_rows: 6,
        split_rows: 14,
        ..small()
    };
    let mut config = config();
    config.max_documents = 10_000;
    KvCollection::create_tuned(kv.clone(), "t", config, tuning).unwrap();
    const WRITERS: usize = 3;
    const WRITES: usize = 60;
    let done = std::sync::atomic::AtomicBool::new(false);
    let (acked, searches) = std::thread::scope(|scope| {
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (kv, done) = (kv.clone(), &done);
                scope.spawn(move || {
                    let everything = Filter::parse(&json!({})).unwrap();
                    let mut searches = 0;
                    while !done.load(std::sync::atomic::Ordering::Relaxed) {
                        let mut c = KvCollection::open_tuned(kv.clone(), "t", tuning).unwrap();
                        let hits = c.search(&[0.1, 0.2, 0.3, 0.4], 10_000, Some(&everything)).unwrap();
                        let mut ids: Vec<&str> = hits.iter().map(|h| h.document.id.as_str()).collect();
                        ids.sort_unstable();
                        let n = ids.len();
                        ids.dedup();
                        assert_eq!(ids.len(), n, "a document came back twice");
                        for h in &hits {
                            let (w, i): (u32, u32) = h.document.id[1..]
                                .split_once('-')
                                .map(|(w, i)| (w.parse().unwrap(), i.parse().unwrap()))
                                .unwrap();
                            assert_eq!(
                                h.document,
                                doc(&h.document.id, w * 1000 + i, 3),
                                "a version nobody wrote"
                            );
                        }
                        searches += 1;
                    }
                    searches
                })
            })
            .collect();
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let kv = kv.clone();
                scope.spawn(move || {
                    let mut acked = Vec::new();
                    for n in 0..WRITES {
                        let mut c = KvCollection::open_tuned(kv.clone(), "t", tuning).unwrap();
                        let id = format!("w{w}-{n}");
                        c.upsert(vec![doc(&id, (w * 1000 + n) as u32, 3)]).unwrap();
                        acked.push(id);
                        if n % 7 == 6 {
                            let gone = acked.remove(acked.len() / 2);
                            assert_eq!(c.delete(&[gone]).unwrap(), 1);
                        }
                    }
                    acked
                })
            })
            .collect();
        let acked: Vec<String> = writers.into_iter().flat_map(|h| h.join().unwrap()).collect();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let searches: usize = readers.into_iter().map(|h| h.join().unwrap()).sum();
        (acked, searches)
    });
    assert!(searches > 10, "only {searches} searches ran beside the writers");
    let mut c = KvCollection::open_tuned(kv.clone(), "t", tuning).unwrap();
    let info = c.index_info().unwrap();
    assert!(info.clusters > 3, "the writers folded and split: {info:?}");
    let everything = Filter::parse(&json!({})).unwrap();
    let mut found: Vec<String> = c
        .search(&[0.0; 4], 10_000, Some(&everything))
        .unwrap()
        .into_iter()
        .map(|h| h.document.id)
        .collect();
    found.sort();
    let mut acked = acked;
    acked.sort();
    assert_eq!(found, acked);
}

/// Rate limits on Spin: the buckets outlive the instance (one per request) in `tvs/t/rate`, a
/// refused request changes nothing, and new limits start from full buckets.
#[test]
fn rate_buckets_outlive_each_instance_and_a_refusal_changes_nothing() {
    use tvs_guest_core::rate::Limits;
    let limits = Limits {
        requests_per_second: Some(2.0),
        ingest_bytes_per_second: None,
    };
    let mut first = KvCollection::create(
        MemoryKv::default(),
        "t",
        Config {
            rate_limits: limits,
            ..config()
        },
    )
    .expect("create");
    assert_eq!(first.admit(0, 1_000).expect("store"), Ok(()));
    assert_eq!(first.admit(0, 1_000).expect("store"), Ok(()));
    // A fresh instance on the same store (the next request) sees the spent buckets.
    let mut next = KvCollection::open(first.into_store(), "t").expect("open");
    let refused = next.admit(0, 1_100).expect("store").expect_err("two a second");
    assert_eq!(refused.limit, "requests_per_second");
    assert!((refused.retry_after_secs - 0.4).abs() < 1e-9, "{refused:?}");
    let stored = next.into_store();
    let before = stored.map.clone();
    let mut again = KvCollection::open(stored, "t").expect("open");
    assert!(again.admit(0, 1_200).expect("store").is_err());
    let stored = again.into_store();
    assert_eq!(stored.map, before, "a refused request wrote nothing");
    let mut later = KvCollection::open(stored, "t").expect("open");
    assert_eq!(
        later.admit(0, 1_500).expect("store"),
        Ok(()),
        "a second later it passes"
    );
    // New limits: full buckets of the new rate.
    later
        .set_rate_limits(Limits {
            requests_per_second: Some(1.0),
            ingest_bytes_per_second: Some(100.0),
        })
        .expect("set");
    let mut changed = KvCollection::open(later.into_store(), "t").expect("open");
    assert_eq!(changed.config().rate_limits.ingest_bytes_per_second, Some(100.0));
    assert_eq!(changed.admit(150, 1_500).expect("store"), Ok(()));
    let refused = changed.admit(10, 1_600).expect("store").expect_err("in debt");
    assert_eq!(refused.limit, "requests_per_second");
    // A power cut while the buckets are written: an error, not an admission.
    let mut store = changed.into_store();
    store.sets_left = Some(0);
    let mut cut = KvCollection::open(store, "t").expect("open");
    assert!(cut.admit(0, 9_000).is_err());
    assert!(
        cut.set_rate_limits(Limits {
            requests_per_second: Some(-1.0),
            ingest_bytes_per_second: None
        })
        .is_err()
    );
}
