//! The key-value layout under power cuts: a store that stops taking writes after its N-th
//! `set`, for every N of a workload, must reopen to exactly what was acknowledged; under
//! concurrent writers: every acknowledged write is there; and search must equal a brute-force
//! model.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use tvs_guest_core::filter::Filter;
use tvs_kv_collection::{Config, Document, KeyValue, KvCollection, KvError, Metric, SEGMENT_MAX};

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
        _ => unreachable!(),
    }
    Ok(())
}

const STEPS: usize = 7;

fn contents(c: &KvCollection<MemoryKv>, ids: impl Iterator<Item = String>) -> Model {
    let ids: Vec<String> = ids.collect();
    c.get(&ids).into_iter().map(|d| (d.id.clone(), d)).collect()
}

#[test]
fn a_cut_after_any_set_reopens_to_exactly_what_was_acknowledged() {
    // The number of sets of the whole workload, counted on a store that never fails.
    let mut kv = MemoryKv::default();
    let mut c = KvCollection::create(kv.clone(), "t", config()).unwrap();
    let mut model = Model::new();
    for step in 0..STEPS {
        workload(&mut c, &mut model, step).unwrap();
        if step == 1 {
            assert_eq!(
                c.segments(),
                3,
                "1.2 MB of documents take two segments beside the first write's"
            );
        }
    }
    kv = c.into_store();
    let all_ids: Vec<String> = (0..8).map(|i| format!("d{i}")).chain(["after".to_owned()]).collect();
    let full = KvCollection::open(kv.clone(), "t").unwrap();
    assert_eq!(contents(&full, all_ids.iter().cloned()), model);
    assert!(
        kv.map.keys().all(|k| !k.starts_with("tvs/t/log/0/")),
        "compaction removed generation 0"
    );
    assert!(kv.map.values().all(|v| v.len() <= SEGMENT_MAX));

    let mut cuts = 0;
    for budget in 0.. {
        let mut kv = MemoryKv {
            sets_left: Some(budget),
            ..MemoryKv::default()
        };
        let mut acked = Model::new();
        let mut finished = false;
        match KvCollection::create(kv.clone(), "t", config()) {
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
                let reopened = KvCollection::open(kv.clone(), "t")
                    .unwrap_or_else(|e| panic!("cut after {budget} sets: the tenant does not open: {e}"));
                assert_eq!(
                    contents(&reopened, all_ids.iter().cloned()),
                    acked,
                    "cut after {budget} sets: not what was acknowledged"
                );
                assert_eq!(reopened.count(), acked.len() as u64, "cut after {budget} sets");
                // And it takes writes again.
                let mut reopened = reopened;
                reopened.upsert(vec![doc("probe", 1, 5)]).unwrap();
                let again = KvCollection::open(reopened.into_store(), "t").unwrap();
                assert_eq!(
                    again.count(),
                    acked.len() as u64 + u64::from(!acked.contains_key("probe"))
                );
            }
        }
        cuts += 1;
        if finished {
            break;
        }
    }
    assert!(cuts > 10, "only {cuts} cut points");
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
    let reopened = KvCollection::open(kv.clone(), "t").unwrap();
    let acked: Vec<String> = acked.into_iter().flatten().collect();
    assert_eq!(acked.len(), WRITERS * WRITES * 9 / 10);
    let present = reopened.get(&acked);
    assert_eq!(present.len(), acked.len(), "acknowledged writes went missing");
    assert_eq!(reopened.count(), acked.len() as u64, "acknowledged deletes came back");
    // 320 writes compacted along the way; no key of an old generation is left.
    let head: Value = serde_json::from_slice(&kv.get("tvs/t/head").unwrap().unwrap()).unwrap();
    let generation = head["generation"].as_u64().unwrap();
    assert!(generation > 0, "compaction ran");
    assert!(
        kv.keys()
            .unwrap()
            .iter()
            .filter(|k| k.starts_with("tvs/t/log/"))
            .all(|k| k.starts_with(&format!("tvs/t/log/{generation}/"))),
        "old generations were deleted"
    );
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
