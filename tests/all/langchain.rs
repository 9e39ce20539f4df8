//! Moving from LangChain's FAISS stores: real stores made by langchain-community and faiss-cpu
//! (`tests/langchain/make_faiss_stores.py`, in a venv the tests create) are imported with
//! `tvs import-langchain`, then every document must come back whole and the same query vectors
//! must return LangChain's top-k ids with its scores.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use tvs_runtime::{Runtime, RuntimeLimits, SearchRequest};
use tvs_store::store::TenantStore;
use tvs_store::tenant::{DataDir, TenantId};

use crate::support::{langchain_python, stderr, tvs};

/// Makes the stores and LangChain's answers; returns the parsed `expected.json`.
fn make_stores(out: &Path) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/langchain/make_faiss_stores.py");
    let made = Command::new(langchain_python())
        .arg(script)
        .arg(out)
        .output()
        .expect("run python");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    serde_json::from_str(&std::fs::read_to_string(out.join("expected.json")).expect("expected.json")).expect("JSON")
}

fn open(data: &Path, tenant: &str) -> std::sync::Arc<TenantStore> {
    let dir = DataDir::open(data)
        .expect("data dir")
        .store_dir(&TenantId::new(tenant).expect("id"));
    TenantStore::open(&dir).expect("open tenant")
}

/// Checks a tenant against LangChain: every document whole, every query's ids and scores.
fn assert_same_as_langchain(runtime: &Runtime, data: &Path, tenant: &str, expected: &Value) {
    let store = open(data, tenant);
    let documents = expected["documents"].as_array().expect("documents");
    assert_eq!(store.count(), documents.len() as u64, "{tenant}");
    let ids: Vec<String> = documents
        .iter()
        .map(|d| d["id"].as_str().expect("id").to_owned())
        .collect();
    let stored = store.get(&ids, false);
    assert_eq!(stored.len(), ids.len(), "{tenant}: every document is there");
    for (doc, got) in documents.iter().zip(&stored) {
        assert_eq!(got.id, doc["id"].as_str().expect("id"), "{tenant}");
        assert_eq!(got.text, doc["text"].as_str().expect("text"), "{tenant}/{}", got.id);
        assert_eq!(
            Value::Object(got.metadata.clone()),
            doc["metadata"],
            "{tenant}/{}",
            got.id
        );
    }
    for query in expected["queries"].as_array().expect("queries") {
        let vector: Vec<f32> = serde_json::from_value(query["vector"].clone()).expect("vector");
        let want_ids: Vec<&str> = query["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| v.as_str().expect("id"))
            .collect();
        let hits = runtime
            .search(
                store.clone(),
                &SearchRequest {
                    query: None,
                    vector: Some(vector),
                    top_k: want_ids.len() as u32,
                    filter: None,
                    mmr: None,
                },
            )
            .expect("search");
        let got_ids: Vec<&str> = hits.iter().map(|h| h.id.as_str()).collect();
        assert_eq!(got_ids, want_ids, "{tenant}");
        for (hit, want) in hits.iter().zip(query["scores"].as_array().expect("scores")) {
            let want = want.as_f64().expect("score");
            assert!(
                (f64::from(hit.score) - want).abs() <= 1e-5,
                "{tenant}/{}: score {} vs LangChain {want}",
                hit.id,
                hit.score
            );
        }
    }
}

#[test]
fn imported_faiss_stores_answer_like_langchain_with_every_document_whole() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let made = tmp.path().join("made");
    let expected = make_stores(&made);
    let runtime = Runtime::new(RuntimeLimits::default()).expect("runtime");
    for (name, metric) in [("l2", "L2"), ("ip", "Ip"), ("l2_deleted", "L2"), ("pydantic_v1", "L2")] {
        let folder = made.join(name);
        let out = tvs(
            tmp.path(),
            &["import-langchain", "--tenant", name, folder.to_str().expect("utf8")],
            &[],
        );
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("{metric}, model none")),
            "{}",
            stderr(&out)
        );
        assert_same_as_langchain(&runtime, &tmp.path().join("user_data"), name, &expected["stores"][name]);
    }
    // Importing again duplicates nothing.
    let folder = made.join("l2");
    let again = tvs(
        tmp.path(),
        &["import-langchain", "--tenant", "l2", folder.to_str().expect("utf8")],
        &[],
    );
    assert!(stderr(&again).contains("existing tenant") && stderr(&again).contains("the tenant holds 300"));
    // A tenant of another shape is refused before anything is written.
    let ip_folder = made.join("ip");
    let clash = tvs(
        tmp.path(),
        &["import-langchain", "--tenant", "l2", ip_folder.to_str().expect("utf8")],
        &[],
    );
    assert_eq!(clash.status.code(), Some(2));
    assert!(
        stderr(&clash).contains("L2") && stderr(&clash).contains("Ip"),
        "{}",
        stderr(&clash)
    );
    assert_eq!(open(&tmp.path().join("user_data"), "l2").count(), 300);
}

#[test]
fn a_whole_old_user_data_tree_imports_one_tenant_per_user_and_reports_each() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let made = tmp.path().join("made");
    let expected = make_stores(&made);
    let old = made.join("user_data");
    // A user folder whose name is not a valid tenant id fails alone; the others import.
    let hostile = old.join("bad name!").join("vector_store").join("faiss_index");
    std::fs::create_dir_all(&hostile).expect("mkdir");
    for file in ["index.faiss", "index.pkl"] {
        std::fs::copy(
            old.join("alice/vector_store/faiss_index").join(file),
            hostile.join(file),
        )
        .expect("copy");
    }
    let data = tmp.path().join("tvs_data");
    let env = [("TVS_DATA_DIR", data.to_str().expect("utf8"))];
    let out = tvs(
        tmp.path(),
        &["import-langchain", "--all", old.to_str().expect("utf8")],
        &env,
    );
    assert_eq!(out.status.code(), Some(2), "one user failed");
    let report = stderr(&out);
    for needle in [
        "alice: 300 documents imported (tenant created",
        "bob: 80 documents imported (tenant created",
        "carol: skipped",
        "bad name!: FAILED",
        "2 users imported, 1 skipped, 1 failed",
    ] {
        assert!(report.contains(needle), "{needle}: {report}");
    }
    let runtime = Runtime::new(RuntimeLimits::default()).expect("runtime");
    assert_same_as_langchain(&runtime, &data, "alice", &expected["stores"]["l2"]);
    assert_same_as_langchain(&runtime, &data, "bob", &expected["stores"]["l2_deleted"]);
    // Safe to re-run: the same counts, nothing duplicated.
    std::fs::remove_dir_all(old.join("bad name!")).expect("rm");
    let again = tvs(
        tmp.path(),
        &["import-langchain", "--all", old.to_str().expect("utf8")],
        &env,
    );
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(stderr(&again).contains("alice: 300 documents imported (existing tenant"));
    assert_eq!(open(&data, "alice").count(), 300);
    assert_eq!(open(&data, "bob").count(), 80);
}

/// Opens `folder` with real LangChain (`tests/langchain/load_export.py`): its documents in row
/// order and its answers to `queries` (`k` each).
fn load_in_langchain(tmp: &Path, folder: &Path, metric: &str, queries: &[Value], k: usize) -> Value {
    let query_file = tmp.join("queries.json");
    let vectors: Vec<&Value> = queries.iter().map(|q| &q["vector"]).collect();
    std::fs::write(&query_file, serde_json::to_vec(&vectors).expect("json")).expect("write queries");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/langchain/load_export.py");
    let loaded = Command::new(langchain_python())
        .arg(script)
        .arg(folder)
        .arg(metric)
        .arg(&query_file)
        .arg(k.to_string())
        .output()
        .expect("run python");
    assert!(loaded.status.success(), "{}", String::from_utf8_lossy(&loaded.stderr));
    serde_json::from_slice(&loaded.stdout).expect("JSON from load_export.py")
}

#[test]
fn exported_tenants_open_in_real_langchain_with_its_answers_and_import_back_whole() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let made = tmp.path().join("made");
    let expected = make_stores(&made);
    let runtime = Runtime::new(RuntimeLimits::default()).expect("runtime");
    let data = tmp.path().join("user_data");
    for (name, metric) in [("l2", "l2"), ("ip", "ip"), ("l2_deleted", "l2")] {
        let want = &expected["stores"][name];
        let folder = made.join(name);
        let imported = tvs(
            tmp.path(),
            &["import-langchain", "--tenant", name, folder.to_str().expect("utf8")],
            &[],
        );
        assert!(imported.status.success(), "{name}: {}", stderr(&imported));
        let out = tmp.path().join("exported").join(name);
        let exported = tvs(
            tmp.path(),
            &["export-langchain", "--tenant", name, out.to_str().expect("utf8")],
            &[],
        );
        assert!(exported.status.success(), "{name}: {}", stderr(&exported));
        let documents = want["documents"].as_array().expect("documents");
        assert!(
            stderr(&exported).contains(&format!("{name}: {} documents, 16 dims", documents.len())),
            "{}",
            stderr(&exported)
        );

        // Real LangChain opens it: every document whole, its id on the Document too, and
        // LangChain's own answers (ids and scores) on the folder it saved.
        let queries = want["queries"].as_array().expect("queries");
        let loaded = load_in_langchain(tmp.path(), &out, metric, queries, 5);
        assert_eq!(loaded["dims"], 16);
        let by_id = |docs: &[Value]| -> std::collections::BTreeMap<String, Value> {
            docs.iter()
                .map(|d| (d["id"].as_str().expect("id").to_owned(), d.clone()))
                .collect()
        };
        let got_docs = loaded["documents"].as_array().expect("documents");
        assert_eq!(got_docs.len(), documents.len(), "{name}");
        let got = by_id(got_docs);
        for (id, doc) in by_id(documents) {
            let back = &got[&id];
            assert_eq!(back["text"], doc["text"], "{name}/{id}");
            assert_eq!(back["metadata"], doc["metadata"], "{name}/{id}");
            assert_eq!(back["doc_id"], doc["id"], "{name}/{id}: Document.id");
        }
        for (query, answer) in queries.iter().zip(loaded["answers"].as_array().expect("answers")) {
            assert_eq!(answer["ids"], query["ids"], "{name}");
            for (score, want) in
                (answer["scores"].as_array().expect("scores").iter()).zip(query["scores"].as_array().expect("scores"))
            {
                let (score, want) = (score.as_f64().expect("score"), want.as_f64().expect("score"));
                assert!((score - want).abs() <= 1e-5, "{name}: {score} vs {want}");
            }
        }

        // And tvs imports the export back: the same documents, the same answers.
        let back = format!("{name}_back");
        let reimported = tvs(
            tmp.path(),
            &["import-langchain", "--tenant", &back, out.to_str().expect("utf8")],
            &[],
        );
        assert!(reimported.status.success(), "{name}: {}", stderr(&reimported));
        assert_same_as_langchain(&runtime, &data, &back, want);
    }

    // Every tenant at once, in the old app's layout, which import-langchain --all reads.
    let tree = tmp.path().join("tree");
    let all = tvs(
        tmp.path(),
        &["export-langchain", "--all", tree.to_str().expect("utf8")],
        &[],
    );
    assert!(all.status.success(), "{}", stderr(&all));
    assert!(
        stderr(&all).contains("6 tenants exported, 0 failed"),
        "{}",
        stderr(&all)
    );
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let again = tvs(
        elsewhere.path(),
        &["import-langchain", "--all", tree.to_str().expect("utf8")],
        &[],
    );
    assert!(again.status.success(), "{}", stderr(&again));
    assert_same_as_langchain(
        &runtime,
        &elsewhere.path().join("user_data"),
        "ip",
        &expected["stores"]["ip"],
    );
    assert_same_as_langchain(
        &runtime,
        &elsewhere.path().join("user_data"),
        "l2_deleted_back",
        &expected["stores"]["l2_deleted"],
    );
    let missing = tvs(
        tmp.path(),
        &[
            "export-langchain",
            "--tenant",
            "nobody",
            tmp.path().join("x").to_str().expect("utf8"),
        ],
        &[],
    );
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("nobody"), "{}", stderr(&missing));
}

#[test]
fn hostile_or_unsupported_files_are_refused_by_name_and_nothing_is_written() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let folder = tmp.path().join("store");
    std::fs::create_dir(&folder).expect("mkdir");
    let flat = {
        let mut out = b"IxF2".to_vec();
        out.extend(2i32.to_le_bytes());
        out.extend(1i64.to_le_bytes());
        out.extend([0u8; 16]);
        out.push(1);
        out.extend(1i32.to_le_bytes());
        out.extend(2u64.to_le_bytes());
        out.extend(1f32.to_le_bytes());
        out.extend(2f32.to_le_bytes());
        out
    };
    let cases: [(&[u8], &[u8], &str); 4] = [
        // A pickle that would run os.system("id") under Python's unpickler.
        (&flat, b"\x80\x02cos\nsystem\n\x8c\x02id\x85R.", "os.system"),
        (b"IHNf\x10\x00\x00\x00", b"\x80\x04.", "\"IHNf\""),
        (&flat, b"\x80\x04\x8c\x03abc", "ends early"),
        (&flat, b"\x80\x04K\x01.", "expected (docstore, index_to_docstore_id)"),
    ];
    for (faiss, pkl, needle) in cases {
        std::fs::write(folder.join("index.faiss"), faiss).expect("write");
        std::fs::write(folder.join("index.pkl"), pkl).expect("write");
        let out = tvs(
            tmp.path(),
            &["import-langchain", "--tenant", "t", folder.to_str().expect("utf8")],
            &[],
        );
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr(&out).contains(needle), "{needle}: {}", stderr(&out));
    }
    let listed = tvs(tmp.path(), &["tenant", "list"], &[]);
    assert!(
        crate::support::stdout(&listed).trim().is_empty(),
        "no tenant was created"
    );
}

#[test]
fn the_python_client_passes_its_langchain_tests_against_a_real_server() {
    crate::support::local_model();
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/python");
    let out = Command::new(langchain_python())
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(client.join("tests"))
        .env("TVS_BIN", env!("CARGO_BIN_EXE_tvs"))
        .env("TVS_PROBE_PLUGIN", tvs_runtime::guest_paths::PLUGIN_PROBE)
        .env("PYTHONPATH", &client)
        .output()
        .expect("run pytest");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("15 passed"), "{report}");
}
