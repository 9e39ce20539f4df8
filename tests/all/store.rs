//! TenantStore behaviour: upsert replaces by id, deletes by id and filter, search agrees with a
//! brute-force reference in exact and HNSW modes, filters return `k` hits even when selective,
//! bad input changes nothing, and a reopened store (snapshot + log tail, compacted or not)
//! holds exactly what was acknowledged.

use std::collections::BTreeMap;

use serde_json::json;
use tvs_guest_core::filter::Filter;
use tvs_store::config::{Metric, ScalarKind, StoreConfig};
use tvs_store::store::{IndexKind, Mmr, NewDocument, SearchQuery, StoreError, TenantStore};
use tvs_synth::{EmbeddingLike, Rng};

use crate::support::{brute_force, config, documents, obj, temp_store};

fn query(vector: Vec<f32>, k: usize) -> SearchQuery {
    SearchQuery {
        vector,
        k,
        ..Default::default()
    }
}

fn ids(hits: &[tvs_store::store::Hit]) -> Vec<String> {
    hits.iter().map(|h| h.id.clone()).collect()
}

#[test]
fn upsert_replaces_by_id_and_get_returns_the_latest_version() {
    let (_tmp, _dir, store) = temp_store(&config(4, Metric::Cos));
    let doc = |text: &str, v: [f32; 4]| NewDocument {
        id: Some("a".into()),
        text: text.into(),
        metadata: obj(json!({"v": text})),
        vector: v.to_vec(),
    };
    store.upsert(vec![doc("first", [1.0, 0.0, 0.0, 0.0])]).expect("upsert");
    store
        .upsert(vec![doc("second", [0.0, 1.0, 0.0, 0.0])])
        .expect("replace");
    assert_eq!(store.count(), 1);
    let got = store.get(&["a".into()], true);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].text, "second");
    assert_eq!(got[0].vector.as_deref(), Some(&[0.0, 1.0, 0.0, 0.0][..]));
    let hits = store.search(&query(vec![0.0, 1.0, 0.0, 0.0], 5)).expect("search");
    assert_eq!(ids(&hits), ["a"]);
    assert!(
        (hits[0].score - 1.0).abs() < 1e-6,
        "cosine similarity of identical vectors"
    );
}

#[test]
fn generated_ids_are_returned_and_unique() {
    let (_tmp, _dir, store) = temp_store(&config(2, Metric::L2));
    let ids = store
        .upsert(
            (0..50)
                .map(|i| NewDocument {
                    vector: vec![i as f32, 1.0],
                    ..Default::default()
                })
                .collect(),
        )
        .expect("upsert");
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 50);
    assert_eq!(store.count(), 50);
}

#[test]
fn delete_by_ids_and_by_filter_remove_exactly_those_documents() {
    let (_tmp, _dir, store) = temp_store(&config(8, Metric::Cos));
    store.upsert(documents(100, 8, 1)).expect("upsert");
    assert_eq!(
        store
            .delete(&["doc-1".into(), "doc-2".into(), "nope".into()])
            .expect("delete"),
        2
    );
    let filter = Filter::parse(&json!({"bucket": {"$in": [3, 4]}})).expect("filter");
    assert_eq!(store.delete_where(&filter).expect("delete where"), 20);
    assert_eq!(store.count(), 78);
    assert!(
        store
            .get(&["doc-1".into(), "doc-13".into(), "doc-24".into()], false)
            .is_empty()
    );
    assert_eq!(store.get(&["doc-5".into()], false).len(), 1);
    let all = store
        .search(&query(documents(1, 8, 9)[0].vector.clone(), 100))
        .expect("search");
    assert_eq!(all.len(), 78, "deleted documents never come back from search");
}

#[test]
fn bad_documents_are_refused_with_the_reason_and_change_nothing() {
    let (_tmp, _dir, store) = temp_store(&config(3, Metric::Cos));
    store
        .upsert(vec![NewDocument {
            id: Some("keep".into()),
            vector: vec![1.0, 0.0, 0.0],
            ..Default::default()
        }])
        .expect("seed");
    let good = NewDocument {
        id: Some("new".into()),
        vector: vec![0.0, 1.0, 0.0],
        ..Default::default()
    };
    let cases = [
        (vec![1.0, 2.0], "2 dimensions"),
        (vec![f32::NAN, 0.0, 0.0], "finite"),
        (vec![f32::INFINITY, 0.0, 0.0], "finite"),
        (vec![0.0, 0.0, 0.0], "all zeros"),
    ];
    for (vector, needle) in cases {
        let bad = NewDocument {
            id: Some("keep".into()),
            vector,
            ..Default::default()
        };
        let err = store.upsert(vec![good.clone(), bad]).expect_err(needle);
        assert!(err.to_string().contains(needle), "{err}");
        assert!(err.to_string().contains("document 1"), "names the position: {err}");
    }
    let long_id = NewDocument {
        id: Some("x".repeat(513)),
        vector: vec![1.0, 0.0, 0.0],
        ..Default::default()
    };
    assert!(matches!(
        store.upsert(vec![long_id]),
        Err(StoreError::InvalidDocument { .. })
    ));
    assert_eq!(
        store.count(),
        1,
        "a refused batch writes nothing, not even its good documents"
    );
    assert_eq!(
        store.get(&["keep".into()], true)[0].vector.as_deref(),
        Some(&[1.0, 0.0, 0.0][..])
    );
}

#[test]
fn exact_search_matches_brute_force_for_every_metric() {
    for metric in [Metric::Cos, Metric::Ip, Metric::L2] {
        let (_tmp, _dir, store) = temp_store(&config(32, metric));
        let docs = documents(500, 32, 2);
        let reference: Vec<(String, Vec<f32>)> = docs
            .iter()
            .map(|d| (d.id.clone().expect("id"), d.vector.clone()))
            .collect();
        store.upsert(docs).expect("upsert");
        let mut queries = EmbeddingLike::new(32, 99);
        for _ in 0..20 {
            let q = queries.next_vector();
            let hits = store.search(&query(q.clone(), 10)).expect("search");
            assert_eq!(ids(&hits), brute_force(&reference, &q, metric, 10), "{metric:?}");
            assert!(hits.windows(2).all(|w| w[0].distance <= w[1].distance));
        }
    }
}

#[test]
fn scores_follow_langchain_faiss_conventions() {
    let a = [0.6f32, 0.8];
    let q = [1.0f32, 0.0];
    for (metric, expected) in [
        (Metric::L2, 0.4f32 * 0.4 + 0.8 * 0.8),
        (Metric::Ip, 0.6),
        (Metric::Cos, 0.6),
    ] {
        let (_tmp, _dir, store) = temp_store(&config(2, metric));
        store
            .upsert(vec![NewDocument {
                id: Some("a".into()),
                vector: a.to_vec(),
                ..Default::default()
            }])
            .expect("upsert");
        let hit = &store.search(&query(q.to_vec(), 1)).expect("search")[0];
        assert!(
            (hit.score - expected).abs() < 1e-5,
            "{metric:?}: {} vs {expected}",
            hit.score
        );
    }
}

#[test]
fn a_selective_filter_still_returns_k_hits_in_exact_and_hnsw_modes() {
    for threshold in [usize::MAX, 500] {
        let mut cfg = config(32, Metric::Cos);
        cfg.hnsw_threshold = threshold;
        let (_tmp, _dir, store) = temp_store(&cfg);
        let docs = documents(3000, 32, 3);
        let rare: Vec<(String, Vec<f32>)> = docs
            .iter()
            .filter(|d| d.metadata["i"].as_u64().expect("i") % 250 == 0)
            .map(|d| (d.id.clone().expect("id"), d.vector.clone()))
            .collect();
        store.upsert(docs).expect("upsert");
        store.wait_for_index();
        let expected_kind = if threshold == 500 {
            IndexKind::Hnsw
        } else {
            IndexKind::Exact
        };
        assert_eq!(store.info().index, expected_kind);
        let filter = Filter::parse(&json!({"i": {"$in": (0..3000).step_by(250).collect::<Vec<_>>()}})).expect("filter");
        let q = EmbeddingLike::new(32, 77).next_vector();
        let hits = store
            .search(&SearchQuery {
                filter: Some(filter),
                ..query(q.clone(), 10)
            })
            .expect("search");
        assert_eq!(
            ids(&hits),
            brute_force(&rare, &q, Metric::Cos, 10),
            "threshold {threshold}"
        );
    }
}

/// recall@10 of `store` (64-d cosine) against brute force over `reference`, on `n` fresh
/// embedding-like queries drawn with `seed`.
fn recall_at_10(store: &TenantStore, reference: &[(String, Vec<f32>)], seed: u64, n: usize) -> f64 {
    let mut queries = EmbeddingLike::new(64, seed);
    let mut found = 0;
    for _ in 0..n {
        let q = queries.next_vector();
        let truth = brute_force(reference, &q, Metric::Cos, 10);
        let hits = store.search(&query(q, 10)).expect("search");
        found += ids(&hits).iter().filter(|id| truth.contains(id)).count();
    }
    found as f64 / (n * 10) as f64
}

#[test]
fn hnsw_recall_at_10_is_high_on_embedding_like_vectors() {
    let mut cfg = config(64, Metric::Cos);
    cfg.hnsw_threshold = 1000;
    let (_tmp, _dir, store) = temp_store(&cfg);
    let docs = documents(5000, 64, 4);
    let reference: Vec<(String, Vec<f32>)> = docs
        .iter()
        .map(|d| (d.id.clone().expect("id"), d.vector.clone()))
        .collect();
    for chunk in docs.chunks(500) {
        store.upsert(chunk.to_vec()).expect("upsert");
    }
    store.wait_for_index();
    assert_eq!(store.info().index, IndexKind::Hnsw);
    let recall = recall_at_10(&store, &reference, 1234, 50);
    assert!(recall >= 0.9, "recall@10 = {recall}");
}

#[test]
fn a_graph_calibrates_its_search_breadth_to_the_recall_target_and_keeps_it_across_a_reopen() {
    let mut cfg = config(64, Metric::Cos);
    assert_eq!(
        cfg.ef_search,
        tvs_store::config::EF_SEARCH_CALIBRATED,
        "calibration is the default"
    );
    cfg.hnsw_threshold = 3000;
    let (_tmp, dir, store) = temp_store(&cfg);
    let docs = documents(4000, 64, 9);
    let reference: Vec<(String, Vec<f32>)> = docs
        .iter()
        .map(|d| (d.id.clone().expect("id"), d.vector.clone()))
        .collect();
    store.upsert(docs[..3000].to_vec()).expect("upsert");
    store.upsert(docs[3000..].to_vec()).expect("upsert");
    store.wait_for_index();
    let info = store.info();
    assert_eq!(info.index, IndexKind::Hnsw);
    let estimate = info.recall_estimate.expect("a graph of 3,000 is calibrated");
    let ef = info.ef_search.expect("a breadth");
    assert!(estimate >= 0.95, "held-out recall@10 {estimate} at ef_search {ef}");
    // Fresh queries find about what the held-out ones did.
    let recall = recall_at_10(&store, &reference, 4321, 100);
    assert!(recall >= 0.93, "recall@10 on fresh queries {recall} at ef_search {ef}");
    store.flush().expect("flush");
    drop(store);
    let reopened = TenantStore::open(&dir).expect("reopen");
    let again = reopened.info();
    assert_eq!(
        (again.ef_search, again.recall_estimate),
        (Some(ef), Some(estimate)),
        "kept in the snapshot"
    );
    drop(reopened);

    // As the graph grows by half, the indexer measures again with new vectors as held-out queries.
    let (_tmp, _dir, store) = temp_store(&cfg);
    let more = documents(7000, 64, 10);
    store.upsert(more[..3000].to_vec()).expect("upsert");
    for chunk in more[3000..].chunks(500) {
        store.upsert(chunk.to_vec()).expect("upsert");
    }
    store.wait_for_index();
    let info = store.info();
    let nodes = info.calibrated_at_nodes.expect("calibrated");
    assert!(
        nodes > 5000,
        "re-calibrated once the graph doubled (first at about 3,000), last at {nodes} nodes"
    );
    assert!(info.recall_estimate.expect("estimate") >= 0.95);
    drop(store);

    // A breadth set in the config is used as it is.
    let mut fixed = config(64, Metric::Cos);
    fixed.hnsw_threshold = 3000;
    fixed.ef_search = 24;
    let (_tmp, _dir, store) = temp_store(&fixed);
    store.upsert(docs[..3000].to_vec()).expect("upsert");
    store.wait_for_index();
    let info = store.info();
    assert_eq!((info.ef_search, info.recall_estimate), (Some(24), None));
}

#[test]
fn writes_during_the_background_graph_build_are_not_lost() {
    let mut cfg = config(32, Metric::L2);
    cfg.hnsw_threshold = 2000;
    let (_tmp, dir, store) = temp_store(&cfg);
    let docs = documents(6000, 32, 5);
    store.upsert(docs[..2000].to_vec()).expect("cross the threshold");
    // These land while the graph is (most likely) being built from the first 2000.
    for chunk in docs[2000..].chunks(100) {
        store.upsert(chunk.to_vec()).expect("upsert during build");
    }
    store
        .delete(&["doc-5".into(), "doc-2500".into()])
        .expect("delete during build");
    store.wait_for_index();
    assert_eq!(store.info().index, IndexKind::Hnsw);
    assert_eq!(store.count(), 5998);
    for (i, doc) in docs.iter().enumerate().step_by(97) {
        let hits = store.search(&query(doc.vector.clone(), 1)).expect("search");
        if i == 5 || i == 2500 {
            continue;
        }
        assert_eq!(hits[0].id, format!("doc-{i}"), "every document finds itself");
    }
    drop(store);
    let reopened = TenantStore::open(&dir).expect("reopen");
    assert_eq!(reopened.count(), 5998);
    assert_eq!(
        reopened.info().index,
        IndexKind::Hnsw,
        "the graph comes back from the snapshot"
    );
}

/// The current snapshot's file with extension `ext`.
fn snapshot_file(dir: &tvs_store::tenant::StoreDir, ext: &str) -> std::path::PathBuf {
    std::fs::read_dir(dir.vector_store())
        .expect("list")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|x| x == ext))
        .unwrap_or_else(|| panic!("a snapshot file .{ext}"))
}

/// A store whose 3,000 documents (`documents(3000, 32, seed)`) are in an HNSW graph built at
/// 1,000, snapshotted and closed: the starting point of the snapshot tests.
fn graph_store_on_disk(
    mut cfg: StoreConfig,
    seed: u64,
) -> (tempfile::TempDir, tvs_store::tenant::StoreDir, Vec<NewDocument>) {
    cfg.hnsw_threshold = 1000;
    let (tmp, dir, store) = temp_store(&cfg);
    let docs = documents(3000, 32, seed);
    store.upsert(docs.clone()).expect("upsert");
    store.wait_for_index();
    store.flush().expect("snapshot");
    drop(store);
    (tmp, dir, docs)
}

/// The snapshot manifest of the store in `dir`.
fn manifest_of(dir: &tvs_store::tenant::StoreDir) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.vector_store().join("manifest.json")).expect("manifest")).expect("json")
}

/// Flips one bit of the byte at `at` in `path`.
fn flip_bit(path: &std::path::Path, at: usize) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes[at] ^= 0x40;
    std::fs::write(path, &bytes).expect("flip a bit");
}

#[test]
fn a_damaged_graph_snapshot_is_ignored_and_the_log_replayed() {
    let (_tmp, dir, docs) = graph_store_on_disk(config(32, Metric::L2), 8);
    let graph_file = snapshot_file(&dir, "usearch");
    let middle = std::fs::metadata(&graph_file).expect("size").len() as usize / 2;
    flip_bit(&graph_file, middle);
    let reopened = TenantStore::open(&dir).expect("a damaged snapshot does not stop the open");
    assert_eq!(reopened.count(), 3000);
    reopened.wait_for_index();
    for (i, doc) in docs.iter().enumerate().step_by(101) {
        let hits = reopened.search(&query(doc.vector.clone(), 1)).expect("search");
        assert_eq!(hits[0].id, format!("doc-{i}"), "rebuilt from the log");
    }
}

#[test]
fn a_damaged_row_beside_the_graph_is_caught_when_first_used_and_the_log_answers_instead() {
    // The f32 rows beside an i8 graph are checked a block at a time as queries use them, so an
    // open does not read them all; a damaged block must still never feed an answer.
    let (_tmp, dir, docs) = graph_store_on_disk(config(32, Metric::L2), 12);
    let target = 1500;
    // Slot 1500 holds doc-1500: slots follow the first upsert.
    flip_bit(&snapshot_file(&dir, "slab"), target * 32 * 4 + 5);

    let store = TenantStore::open(&dir).expect("the open checks only the table of block CRCs");
    let near = store
        .search(&query(docs[10].vector.clone(), 1))
        .expect("an intact block answers");
    assert_eq!(near[0].id, "doc-10");
    assert!(!store.is_poisoned());
    let got = store.get(&[format!("doc-{target}")], true);
    assert_eq!(
        got[0].vector.as_ref(),
        Some(&docs[target].vector),
        "get reads the log instead"
    );
    let refused = store.search(&query(docs[target].vector.clone(), 1));
    assert!(
        matches!(&refused, Err(StoreError::Index(m)) if m.contains("checksum")),
        "a search that met the damaged row fails instead of answering without it: {refused:?}"
    );
    assert!(
        store.is_poisoned(),
        "the pool reopens a store whose snapshot is damaged"
    );
    drop(store);
    let reopened = TenantStore::open(&dir).expect("reopen");
    assert_eq!(reopened.count(), 3000);
    reopened.wait_for_index();
    let hits = reopened.search(&query(docs[target].vector.clone(), 1)).expect("search");
    assert_eq!(
        (hits[0].id.as_str(), hits[0].distance),
        ("doc-1500", 0.0),
        "rebuilt from the log"
    );
}

#[test]
fn a_graph_viewed_from_its_snapshot_takes_deletes_snapshots_again_and_then_grows() {
    // After an open the graph is a read-only view of the snapshot file: deletes only mark its
    // nodes dead, a snapshot serialises the view, and the first add copies it into memory.
    let (_tmp, dir, docs) = graph_store_on_disk(config(32, Metric::L2), 14);
    let viewed = TenantStore::open(&dir).expect("open");
    let gone: Vec<String> = (0..10).map(|i| format!("doc-{i}")).collect();
    assert_eq!(viewed.delete(&gone).expect("delete"), 10);
    viewed.flush().expect("a snapshot of the viewed graph");
    drop(viewed);
    let reopened = TenantStore::open(&dir).expect("reopen");
    assert_eq!(reopened.count(), 2990);
    assert!(reopened.get(&gone, false).is_empty());
    let more = documents(3100, 32, 15).split_off(3000);
    let renamed: Vec<NewDocument> = more
        .into_iter()
        .enumerate()
        .map(|(i, d)| NewDocument {
            id: Some(format!("new-{i}")),
            ..d
        })
        .collect();
    reopened.upsert(renamed.clone()).expect("writes after the open");
    reopened.wait_for_index();
    assert_eq!(
        reopened.info().pending_vectors,
        0,
        "the indexer added them to its own copy"
    );
    for doc in renamed.iter().step_by(9).chain(docs.iter().skip(10).step_by(301)) {
        let hits = reopened.search(&query(doc.vector.clone(), 1)).expect("search");
        assert_eq!(Some(&hits[0].id), doc.id.as_ref());
    }
}

#[test]
fn a_flush_after_the_indexer_drains_snapshots_the_finished_graph() {
    // Regression: the graph build snapshots at once, with the rows written during the build
    // still pending; the indexer then moves them into the graph without a log record, and a
    // later flush at the same log position was skipped, so every reopen read them back from
    // the log and scanned them exactly (a 200k-document tenant reopened in 2 s, not 0.3 s).
    let mut cfg = config(128, Metric::L2);
    cfg.hnsw_threshold = 2000;
    let (_tmp, dir, store) = temp_store(&cfg);
    let docs = documents(6000, 128, 9);
    store.upsert(docs[..2000].to_vec()).expect("cross the threshold");
    // One batch, logged long before a 2,000-node build ends: the build's own snapshot is
    // then taken at the log's final position with these rows pending.
    store
        .upsert(docs[2000..].to_vec())
        .expect("upsert while the graph is built");
    store.wait_for_index();
    assert_eq!(store.info().pending_vectors, 0);
    store.flush().expect("snapshot");
    drop(store);
    let reopened = TenantStore::open(&dir).expect("reopen");
    let info = reopened.info();
    assert_eq!(info.index, IndexKind::Hnsw);
    assert_eq!(info.pending_vectors, 0, "the snapshot holds every row in the graph");
}

#[test]
fn mmr_prefers_diverse_results() {
    let (_tmp, _dir, store) = temp_store(&config(2, Metric::Cos));
    let docs = [
        ("near", [1.0, 0.0]),
        ("near-twin", [0.999, 0.01]),
        ("other", [0.6, 0.8]),
    ];
    store
        .upsert(
            docs.iter()
                .map(|(id, v)| NewDocument {
                    id: Some((*id).into()),
                    vector: v.to_vec(),
                    ..Default::default()
                })
                .collect(),
        )
        .expect("upsert");
    let plain = store.search(&query(vec![1.0, 0.0], 2)).expect("search");
    assert_eq!(ids(&plain), ["near", "near-twin"]);
    let mmr = SearchQuery {
        mmr: Some(Mmr {
            fetch_k: 3,
            lambda_mult: 0.3,
        }),
        ..query(vec![1.0, 0.0], 2)
    };
    assert_eq!(ids(&store.search(&mmr).expect("mmr")), ["near", "other"]);
}

#[test]
fn a_reopened_store_matches_a_model_of_every_acknowledged_operation() {
    let mut cfg = config(16, Metric::Cos);
    cfg.hnsw_threshold = 400;
    let (_tmp, dir, mut store) = temp_store(&cfg);
    let mut model: BTreeMap<String, (String, Vec<f32>)> = BTreeMap::new();
    let mut rng = Rng::new(42);
    let mut generator = EmbeddingLike::new(16, 42);
    for round in 0..30 {
        for _ in 0..60 {
            let id = format!("d{}", rng.below(700));
            if rng.below(5) == 0 {
                store.delete(std::slice::from_ref(&id)).expect("delete");
                model.remove(&id);
            } else {
                let text = format!("{id} round {round}");
                let vector = generator.next_vector();
                store
                    .upsert(vec![NewDocument {
                        id: Some(id.clone()),
                        text: text.clone(),
                        metadata: Default::default(),
                        vector: vector.clone(),
                    }])
                    .expect("upsert");
                model.insert(id, (text, vector));
            }
        }
        match round % 3 {
            0 => store.flush().expect("snapshot"),
            1 => store.compact().expect("compact"),
            _ => {}
        }
        if round % 4 == 3 {
            store.wait_for_index();
            drop(store);
            store = TenantStore::open(&dir).expect("reopen");
        }
        assert_eq!(store.count(), model.len() as u64, "round {round}");
    }
    store.wait_for_index();
    drop(store);
    let store = TenantStore::open(&dir).expect("final reopen");
    let all_ids: Vec<String> = model.keys().cloned().collect();
    let got = store.get(&all_ids, true);
    assert_eq!(got.len(), model.len());
    for doc in got {
        let (text, vector) = &model[&doc.id];
        assert_eq!(&doc.text, text);
        assert_eq!(
            doc.vector.as_ref(),
            Some(vector),
            "full-precision vectors survive compaction"
        );
    }
}

#[test]
fn compaction_shrinks_the_log_when_dead_records_dominate() {
    let (_tmp, _dir, store) = temp_store(&config(8, Metric::Cos));
    let docs = documents(50, 8, 6);
    store.upsert(docs.clone()).expect("first version");
    let one_round = store.info().log_bytes;
    for _ in 1..40 {
        store.upsert(docs.clone()).expect("overwrite");
    }
    let info = store.info();
    assert!(info.dead_records < 1000, "compaction ran: {info:?}");
    // Without compaction the log would hold 40 rounds; it was cut back at 1000 dead records.
    assert!(
        info.log_bytes < one_round * 22,
        "log is {} bytes, one round {one_round}",
        info.log_bytes
    );
    store.compact().expect("explicit compaction");
    assert!(store.info().log_bytes <= one_round + 200, "only live records remain");
    assert_eq!(store.count(), 50);
}

#[test]
fn quotas_refuse_documents_beyond_the_limit() {
    let mut cfg = config(2, Metric::L2);
    cfg.max_documents = Some(3);
    let (_tmp, _dir, store) = temp_store(&cfg);
    let doc = |id: &str| NewDocument {
        id: Some(id.into()),
        vector: vec![1.0, 2.0],
        ..Default::default()
    };
    store.upsert(vec![doc("a"), doc("b"), doc("c")]).expect("within quota");
    assert!(matches!(
        store.upsert(vec![doc("d")]),
        Err(StoreError::QuotaExceeded { limit: 3, .. })
    ));
    store.upsert(vec![doc("a")]).expect("replacing does not count");
    assert_eq!(store.count(), 3);
}

#[test]
fn an_i8_graph_answers_with_exact_distances_over_vectors_of_any_length_and_keeps_them_across_reopens() {
    // L2 over vectors whose lengths differ: usearch's own i8 cast divides each vector by its
    // norm, which would lose this order; tvs's scaled codes plus the f32 re-rank keep it.
    let mut cfg = config(48, Metric::L2);
    assert_eq!(cfg.scalar, ScalarKind::I8, "i8 is the default");
    cfg.hnsw_threshold = 2500;
    let (_tmp, dir, store) = temp_store(&cfg);
    let mut generator = EmbeddingLike::new(48, 21);
    let mut lengths = Rng::new(5);
    let docs: Vec<NewDocument> = (0..3000)
        .map(|i| {
            let length = 0.25 + lengths.below(1000) as f32 / 250.0;
            NewDocument {
                id: Some(format!("doc-{i}")),
                text: format!("text {i}"),
                metadata: obj(json!({})),
                vector: generator.next_vector().iter().map(|x| x * length).collect(),
            }
        })
        .collect();
    let reference: Vec<(String, Vec<f32>)> = docs
        .iter()
        .map(|d| (d.id.clone().expect("id"), d.vector.clone()))
        .collect();
    store.upsert(docs).expect("upsert");
    store.wait_for_index();
    assert_eq!(store.info().index, IndexKind::Hnsw);
    let queries: Vec<Vec<f32>> = {
        let mut fresh = EmbeddingLike::new(48, 77);
        (0..60)
            .map(|i| {
                fresh
                    .next_vector()
                    .iter()
                    .map(|x| x * (0.5 + i as f32 / 30.0))
                    .collect()
            })
            .collect()
    };
    let answers = |store: &TenantStore| -> Vec<Vec<(String, f32)>> {
        queries
            .iter()
            .map(|q| {
                let hits = store.search(&query(q.clone(), 10)).expect("search");
                hits.into_iter().map(|h| (h.id, h.distance)).collect()
            })
            .collect()
    };
    let before = answers(&store);
    let mut found = 0;
    for (q, hits) in queries.iter().zip(&before) {
        let truth = brute_force(&reference, q, Metric::L2, 10);
        found += hits.iter().filter(|(id, _)| truth.contains(id)).count();
        for (id, d) in hits {
            let (_, v) = reference.iter().find(|(r, _)| r == id).expect("a stored id");
            let exact = tvs_store::vectors::distance(Metric::L2, q, v);
            assert!(
                (d - exact).abs() <= 1e-4 * exact.max(1.0),
                "{id}: {d} reported, {exact} exact"
            );
        }
    }
    let recall = found as f64 / (queries.len() * 10) as f64;
    assert!(recall >= 0.93, "recall@10 {recall}");
    store.flush().expect("flush");
    drop(store);
    let reopened = TenantStore::open(&dir).expect("reopen");
    assert_eq!(answers(&reopened), before, "same answers from the snapshot");
    drop(reopened);

    // A snapshot written before the f32 rows were kept beside the graph: they come from the log.
    let manifest_path = dir.vector_store().join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).expect("manifest")).expect("json");
    let slab = manifest["slab_file"]
        .as_str()
        .expect("a slab beside the i8 graph")
        .to_owned();
    std::fs::remove_file(dir.vector_store().join(slab)).expect("remove the slab");
    manifest.as_object_mut().expect("object").remove("slab_file");
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).expect("json")).expect("write");
    let reopened = TenantStore::open(&dir).expect("reopen without a slab");
    assert_eq!(reopened.info().index, IndexKind::Hnsw, "the graph is kept");
    assert_eq!(
        answers(&reopened),
        before,
        "same answers with the rows read back from the log"
    );
}

#[test]
fn a_graph_in_two_parts_answers_as_one_through_writes_snapshots_reopens_and_damage() {
    let mut cfg = config(48, Metric::L2);
    cfg.hnsw_threshold = 2500;
    cfg.graph_parts = 2;
    let (_tmp, dir, store) = temp_store(&cfg);
    let mut generator = EmbeddingLike::new(48, 31);
    let mut reference: Vec<(String, Vec<f32>)> = (0..3000)
        .map(|i| (format!("doc-{i}"), generator.next_vector()))
        .collect();
    let as_docs = |rows: &[(String, Vec<f32>)]| -> Vec<NewDocument> {
        rows.iter()
            .map(|(id, v)| NewDocument {
                id: Some(id.clone()),
                text: format!("text of {id}"),
                metadata: obj(json!({})),
                vector: v.clone(),
            })
            .collect()
    };
    store.upsert(as_docs(&reference)).expect("upsert");
    store.wait_for_index();
    assert_eq!(store.info().index, IndexKind::Hnsw);
    let queries: Vec<Vec<f32>> = {
        let mut fresh = EmbeddingLike::new(48, 78);
        (0..60).map(|_| fresh.next_vector()).collect()
    };
    // Recall against brute force over `reference`, and every reported distance exact.
    let check = |store: &TenantStore, reference: &[(String, Vec<f32>)], what: &str| -> Vec<Vec<String>> {
        let mut found = 0;
        let mut answers = Vec::new();
        for q in &queries {
            let hits = store.search(&query(q.clone(), 10)).expect("search");
            let truth = brute_force(reference, q, Metric::L2, 10);
            found += hits.iter().filter(|h| truth.contains(&h.id)).count();
            for h in &hits {
                let (_, v) = (reference.iter().find(|(r, _)| *r == h.id))
                    .unwrap_or_else(|| panic!("{what}: {} is not a live document", h.id));
                let exact = tvs_store::vectors::distance(Metric::L2, q, v);
                assert!(
                    (h.distance - exact).abs() <= 1e-4 * exact.max(1.0),
                    "{what}: {} off",
                    h.id
                );
            }
            answers.push(hits.into_iter().map(|h| h.id).collect());
        }
        let recall = found as f64 / (queries.len() * 10) as f64;
        assert!(recall >= 0.93, "{what}: recall@10 {recall}");
        answers
    };
    check(&store, &reference, "built in two parts");

    // Deletes, changes and new documents: the indexer adds to both parts.
    let deleted: Vec<String> = (0..3000).step_by(30).map(|i| format!("doc-{i}")).collect();
    store.delete(&deleted).expect("delete");
    reference.retain(|(id, _)| !deleted.contains(id));
    for row in reference.iter_mut().skip(7).step_by(40) {
        row.1 = generator.next_vector();
    }
    let changed: Vec<(String, Vec<f32>)> = reference.iter().skip(7).step_by(40).cloned().collect();
    let added: Vec<(String, Vec<f32>)> = (3000..3400)
        .map(|i| (format!("doc-{i}"), generator.next_vector()))
        .collect();
    store.upsert(as_docs(&changed)).expect("change");
    store.upsert(as_docs(&added)).expect("add");
    reference.extend(added.iter().cloned());
    store.wait_for_index();
    for (id, v) in added.iter().step_by(37).chain(changed.iter().step_by(11)) {
        let hits = store.search(&query(v.clone(), 1)).expect("search");
        assert_eq!(&hits[0].id, id, "a vector written after the build finds itself");
    }
    let before = check(&store, &reference, "after writes");

    store.flush().expect("snapshot");
    drop(store);
    let manifest = manifest_of(&dir);
    assert_eq!(manifest["vectors_kind"], "usearch-parts");
    let second = manifest["more_graph_files"][0]
        .as_str()
        .expect("a second part")
        .to_owned();
    assert!(dir.vector_store().join(&second).exists());

    let reopened = TenantStore::open(&dir).expect("reopen");
    assert_eq!(
        check(&reopened, &reference, "reopened"),
        before,
        "same answers from the snapshot"
    );
    // The viewed parts are copied before they grow.
    let more: Vec<(String, Vec<f32>)> = (3400..3500)
        .map(|i| (format!("doc-{i}"), generator.next_vector()))
        .collect();
    reopened.upsert(as_docs(&more)).expect("add after reopen");
    reopened.wait_for_index();
    reference.extend(more.iter().cloned());
    for (id, v) in more.iter().step_by(9) {
        assert_eq!(&reopened.search(&query(v.clone(), 1)).expect("search")[0].id, id);
    }
    reopened.flush().expect("snapshot again");
    drop(reopened);

    // A damaged second part: the snapshot is refused and the log answers.
    let manifest = manifest_of(&dir);
    let second = dir
        .vector_store()
        .join(manifest["more_graph_files"][0].as_str().expect("a second part"));
    flip_bit(&second, std::fs::metadata(&second).expect("size").len() as usize / 2);
    let replayed = TenantStore::open(&dir).expect("a damaged part does not stop the open");
    assert_eq!(replayed.count(), reference.len() as u64);
    replayed.wait_for_index();
    check(&replayed, &reference, "replayed from the log");
}

#[test]
fn a_graph_with_fewer_parts_than_wanted_is_rebuilt_in_the_background_while_it_answers() {
    // As a graph first built whole (under a lower threshold, or by an older tvs): one part, two
    // wanted.
    let mut cfg = config(32, Metric::L2);
    cfg.graph_parts = 1;
    let (_tmp, dir, docs) = graph_store_on_disk(cfg, 8);
    assert_eq!(manifest_of(&dir)["vectors_kind"], "usearch");
    let mut on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.config_file()).expect("config")).expect("json");
    on_disk["graph_parts"] = json!(2);
    std::fs::write(dir.config_file(), on_disk.to_string()).expect("config");

    let reopened = TenantStore::open(&dir).expect("reopen");
    for (i, doc) in docs.iter().enumerate().step_by(97) {
        let hits = reopened
            .search(&query(doc.vector.clone(), 1))
            .expect("search during the rebuild");
        assert_eq!(hits[0].id, format!("doc-{i}"));
    }
    reopened.wait_for_index();
    reopened.flush().expect("snapshot");
    assert_eq!(
        manifest_of(&dir)["vectors_kind"],
        "usearch-parts",
        "rebuilt in two parts"
    );
    for (i, doc) in docs.iter().enumerate().step_by(89) {
        let hits = reopened.search(&query(doc.vector.clone(), 1)).expect("search");
        assert_eq!(hits[0].id, format!("doc-{i}"));
    }
}

#[test]
fn quantised_graphs_still_find_near_duplicates() {
    for scalar in [ScalarKind::F32, ScalarKind::F16, ScalarKind::I8] {
        let cfg = StoreConfig {
            hnsw_threshold: 100,
            ..StoreConfig::new(32, Metric::Cos, scalar, "none")
        };
        let (_tmp, _dir, store) = temp_store(&cfg);
        let docs = documents(1000, 32, 8);
        store.upsert(docs.clone()).expect("upsert");
        store.wait_for_index();
        assert_eq!(store.info().index, IndexKind::Hnsw);
        let mut found = 0;
        for doc in docs.iter().step_by(50) {
            let hits = store.search(&query(doc.vector.clone(), 1)).expect("search");
            found += usize::from(hits[0].id == *doc.id.as_ref().expect("id"));
        }
        assert!(found >= 18, "{scalar:?}: {found}/20 documents found themselves");
    }
}

#[test]
fn documents_rewritten_many_times_stay_findable_in_the_graph() {
    // Regression: usearch's remove+add of a key can leave the new node unreachable; tvs never
    // removes nodes and rebuilds the graph once dead nodes pile up.
    let mut cfg = config(16, Metric::L2);
    cfg.hnsw_threshold = 300;
    let (_tmp, dir, mut store) = temp_store(&cfg);
    let vector_of = |seed: u64| EmbeddingLike::with_shape(16, 6, 16, 0.05, seed).next_vector();
    let mut live: BTreeMap<String, u64> = BTreeMap::new();
    let mut rng = Rng::new(1);
    for round in 0u64..24 {
        for n in 0..150 {
            let id = format!("d{}", rng.below(800));
            let seed = round * 1000 + n;
            if rng.below(10) == 0 {
                store.delete(std::slice::from_ref(&id)).expect("delete");
                live.remove(&id);
            } else {
                store
                    .upsert(vec![NewDocument {
                        id: Some(id.clone()),
                        vector: vector_of(seed),
                        ..Default::default()
                    }])
                    .expect("upsert");
                live.insert(id, seed);
            }
        }
        store.wait_for_index();
        if round % 8 == 7 {
            drop(store);
            store = TenantStore::open(&dir).expect("reopen");
            store.wait_for_index();
        }
        let missing: Vec<&String> = live
            .iter()
            .filter(|(id, seed)| !ids(&store.search(&query(vector_of(**seed), 10)).expect("search")).contains(id))
            .map(|(id, _)| id)
            .collect();
        assert!(
            missing.is_empty(),
            "round {round}: {missing:?} not found ({:?})",
            store.info()
        );
    }
    assert_eq!(store.info().index, IndexKind::Hnsw);
}

#[test]
fn vectors_still_waiting_for_the_graph_survive_a_snapshot_and_reopen() {
    let mut cfg = config(384, Metric::Cos);
    cfg.hnsw_threshold = 500;
    let (_tmp, dir, store) = temp_store(&cfg);
    let docs = documents(3000, 384, 11);
    store.upsert(docs[..500].to_vec()).expect("cross the threshold");
    store.wait_for_index();
    store
        .upsert(docs[500..].to_vec())
        .expect("a big batch after the graph exists");
    let info = store.info();
    assert!(
        info.pending_vectors > 0,
        "the batch was acknowledged before the graph took it: {info:?}"
    );
    store.flush().expect("snapshot with pending vectors");
    drop(store);
    let store = TenantStore::open(&dir).expect("reopen");
    assert_eq!(store.count(), 3000);
    let got = store.get(&["doc-2999".into()], true);
    assert_eq!(got[0].vector.as_ref(), Some(&docs[2999].vector));
    store.wait_for_index();
    let info = store.info();
    assert_eq!(info.pending_vectors, 0, "the indexer drained the buffer");
    // The f32 rows beside the i8 graph cost 1x the raw vectors and its nodes (codes and 32
    // links) about 0.45x; an unreleased buffer would add ~0.9x.
    assert!(
        info.memory_bytes * 10 < info.raw_vector_bytes * 19,
        "the drained buffer's memory was given back: {info:?}"
    );
    for doc in docs.iter().step_by(101) {
        let hits = store.search(&query(doc.vector.clone(), 3)).expect("search");
        assert_eq!(&hits[0].id, doc.id.as_ref().expect("id"));
    }
}

#[test]
fn concurrent_writers_share_fsyncs() {
    let (_tmp, _dir, store) = temp_store(&config(8, Metric::Cos));
    let docs = documents(400, 8, 12);
    std::thread::scope(|scope| {
        for part in docs.chunks(50) {
            let store = &store;
            scope.spawn(move || {
                for doc in part {
                    store.upsert(vec![doc.clone()]).expect("upsert");
                }
            });
        }
    });
    let info = store.info();
    assert_eq!(info.count, 400);
    assert!(
        info.log_syncs < 400,
        "400 acknowledged writes took {} fsyncs",
        info.log_syncs
    );
}
