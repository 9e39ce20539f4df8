//! The clustered layout at a size where it matters: searches of a tenant of embedding-like
//! vectors find the true neighbours (recall@10 against brute force) while reading a small part
//! of the tenant, filters stay exact, and a tenant written in the first layout is carried over
//! whole.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};

use base64::Engine as _;
use serde_json::{Map, Value, json};
use tvs_guest_core::filter::Filter;
use tvs_kv_collection::{Config, Document, KeyValue, KvCollection, KvError, Metric, distance};

#[derive(Debug, Default, Clone)]
struct MemoryKv(BTreeMap<String, Vec<u8>>);

impl KeyValue for MemoryKv {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.0.get(key).cloned())
    }
    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), KvError> {
        assert!(key.len() <= 255 && value.len() <= 1 << 20);
        self.0.insert(key.to_owned(), value.to_vec());
        Ok(())
    }
    fn delete(&mut self, key: &str) -> Result<(), KvError> {
        self.0.remove(key);
        Ok(())
    }
    fn keys(&self) -> Result<Vec<String>, KvError> {
        Ok(self.0.keys().cloned().collect())
    }
    fn compare_and_swap(&mut self, key: &str, expected: Option<&[u8]>, value: &[u8]) -> Result<bool, KvError> {
        if self.0.get(key).map(Vec::as_slice) != expected {
            return Ok(false);
        }
        self.0.insert(key.to_owned(), value.to_vec());
        Ok(true)
    }
}

const DIMS: usize = 384;

fn corpus(n: usize) -> Vec<Document> {
    let mut generator = tvs_synth::EmbeddingLike::new(DIMS, 7);
    (0..n)
        .map(|i| Document {
            id: format!("doc-{i}"),
            text: format!("document {i}"),
            metadata: json!({"group": i % 10}).as_object().cloned().unwrap(),
            vector: generator.next_vector(),
        })
        .collect()
}

fn brute_force(docs: &[Document], query: &[f32], k: usize, keep: impl Fn(&Document) -> bool) -> Vec<String> {
    let mut scored: Vec<(f32, &str)> = docs
        .iter()
        .filter(|d| keep(d))
        .map(|d| (distance(Metric::Cos, query, &d.vector), d.id.as_str()))
        .collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1)));
    scored.into_iter().take(k).map(|(_, id)| id.to_owned()).collect()
}

/// A tenant of client vectors holding `docs`, written in batches of `batch`.
fn filled(docs: &[Document], batch: usize) -> KvCollection<MemoryKv> {
    let config = Config {
        dims: DIMS,
        metric: Metric::Cos,
        embedding_model: "none".into(),
        max_documents: 100_000,
        rate_limits: Default::default(),
    };
    let mut c = KvCollection::create(MemoryKv::default(), "t", config).unwrap();
    for batch in docs.chunks(batch) {
        c.upsert(batch.to_vec()).unwrap();
    }
    c
}

#[test]
fn a_tenant_of_20k_embedding_like_vectors_is_searched_at_the_calibrated_recall_reading_a_small_part() {
    let docs = corpus(20_000);
    let mut c = filled(&docs, 200);
    let info = c.index_info().unwrap();
    assert_eq!(c.count(), 20_000);
    assert!(info.clusters >= 20, "{info:?}");
    assert!(info.recall >= 0.95, "calibrated on held-out vectors: {info:?}");
    let kv = c.into_store();
    let tenant_bytes: usize =
        kv.0.iter()
            .filter(|(k, _)| k.starts_with("tvs/t/"))
            .map(|(_, v)| v.len())
            .sum();

    let mut queries = tvs_synth::EmbeddingLike::new(DIMS, 99);
    let (mut found, mut total, mut read) = (0usize, 0usize, 0u64);
    const QUERIES: usize = 100;
    for _ in 0..QUERIES {
        // One request: open, search, done.
        let mut c = KvCollection::open(kv.clone(), "t").unwrap();
        let query = queries.next_vector();
        let hits = c.search(&query, 10, None).unwrap();
        read += c.reads().bytes;
        let truth: HashSet<String> = brute_force(&docs, &query, 10, |_| true).into_iter().collect();
        found += hits.iter().filter(|h| truth.contains(&h.document.id)).count();
        total += truth.len();
        // Distances are exact, whatever was read.
        for h in &hits {
            let d = docs.iter().find(|d| d.id == h.document.id).unwrap();
            assert!((h.distance - distance(Metric::Cos, &query, &d.vector)).abs() < 1e-5);
            assert_eq!(h.document.text, d.text);
        }
    }
    let recall = found as f64 / total as f64;
    let share = read as f64 / QUERIES as f64 / tenant_bytes as f64;
    eprintln!(
        "recall@10 {recall:.3}, each search read {:.1}% of the tenant ({info:?})",
        share * 100.0
    );
    assert!(recall >= 0.93, "recall@10 {recall}");
    assert!(share < 0.25, "a search read {:.0}% of the tenant", share * 100.0);

    // A filter is exact: every hit matches, and k of them come back even when the calibrated
    // clusters hold fewer.
    let mut c = KvCollection::open(kv.clone(), "t").unwrap();
    let query = queries.next_vector();
    let rare = Filter::parse(&json!({"group": 3})).unwrap();
    let hits = c.search(&query, 10, Some(&rare)).unwrap();
    let truth = brute_force(&docs, &query, 10, |d| d.metadata["group"] == json!(3));
    assert_eq!(hits.len(), 10);
    assert!(hits.iter().all(|h| h.document.metadata["group"] == json!(3)));
    let overlap = hits.iter().filter(|h| truth.contains(&h.document.id)).count();
    assert!(overlap >= 8, "filtered recall {overlap}/10");
}

#[test]
fn deletes_and_replacements_are_seen_by_search_and_get_after_folds() {
    let docs = corpus(3_000);
    let mut c = filled(&docs, 500);
    assert!(c.index_info().unwrap().clusters > 1);
    // A clustered document replaced by a far-away vector, one deleted.
    let mut moved = docs[10].clone();
    moved.vector = docs[2_999].vector.clone();
    moved.text = "moved".into();
    c.upsert(vec![moved.clone()]).unwrap();
    assert_eq!(c.delete(&["doc-20".into()]).unwrap(), 1);
    let mut c = KvCollection::open(c.into_store(), "t").unwrap();
    let hits = c.search(&docs[10].vector, 5, None).unwrap();
    assert!(
        hits.iter().all(|h| h.document.text != "document 10"),
        "the old version is gone"
    );
    let hits = c.search(&docs[20].vector, 5, None).unwrap();
    assert!(hits.iter().all(|h| h.document.id != "doc-20"));
    let got = c
        .get(&["doc-10".into(), "doc-20".into(), "doc-30".into()], true)
        .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].text.as_str(), &got[0].vector), ("moved", &moved.vector));
    assert_eq!(got[1].vector, docs[30].vector, "a clustered row's exact vector");
    assert_eq!(c.count(), 2_999);
    // Folded and compacted, the same answers.
    c.compact().unwrap();
    let mut c = KvCollection::open(c.into_store(), "t").unwrap();
    assert_eq!(c.get(&["doc-10".into()], false).unwrap()[0].text, "moved");
    assert!(c.get(&["doc-20".into()], false).unwrap().is_empty());
    assert_eq!(c.count(), 2_999);
    let everything = Filter::parse(&json!({})).unwrap();
    assert_eq!(
        c.search(&docs[0].vector, 5_000, Some(&everything)).unwrap().len(),
        2_999
    );
}

fn v1_line(op: Value) -> String {
    let mut line = op.to_string();
    line.push('\n');
    line
}

#[test]
fn a_tenant_of_the_first_layout_is_carried_over_on_open() {
    let mut kv = MemoryKv::default();
    let config = json!({"dims": 2, "metric": "l2", "embedding_model": "none", "max_documents": 10});
    kv.set("tvs/old/config", config.to_string().as_bytes()).unwrap();
    let vector = |x: f32, y: f32| {
        let bytes: Vec<u8> = [x, y].iter().flat_map(|v| v.to_le_bytes()).collect();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    let segment = [
        v1_line(json!({"op": "upsert", "id": "a", "text": "first", "metadata": {"k": 1}, "vector": vector(0.0, 0.0)})),
        v1_line(json!({"op": "upsert", "id": "b", "text": "second", "metadata": {}, "vector": vector(1.0, 0.0)})),
        v1_line(json!({"op": "delete", "ids": ["a"]})),
        v1_line(json!({"op": "upsert", "id": "c", "text": "third", "metadata": {}, "vector": vector(0.0, 1.0)})),
    ]
    .concat();
    kv.set("tvs/old/log/0/0-abc", segment.as_bytes()).unwrap();
    kv.set(
        "tvs/old/head",
        json!({"generation": 0, "segments": ["0-abc"], "compacted": 0})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    let mut c = KvCollection::open(kv, "old").unwrap();
    assert_eq!(c.count(), 2);
    let got = c.get(&["a".into(), "b".into(), "c".into()], true).unwrap();
    let ids: Vec<&str> = got.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["b", "c"]);
    assert_eq!(got[1].vector, vec![0.0, 1.0]);
    let metadata: Map<String, Value> = Map::new();
    assert_eq!(got[0].metadata, metadata);
    let hits = c.search(&[0.9, 0.1], 1, None).unwrap();
    assert_eq!(hits[0].document.id, "b");
    let kv = c.into_store();
    assert!(
        !kv.0.contains_key("tvs/old/log/0/0-abc"),
        "the old segments are deleted"
    );
    assert!(KvCollection::open(kv, "old").unwrap().count() == 2);
}
