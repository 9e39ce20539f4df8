//! Ingest and search run inside fresh wasm guests bound to one tenant; bad input gets a clear
//! error; hostile guests (an infinite loop, a memory bomb, a panic, a snoop on another tenant,
//! an import the host does not offer) are stopped or refused and the same host keeps serving.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tvs_runtime::{GuestError, IngestDocument, IngestRequest, Mmr, Runtime, RuntimeLimits, SearchRequest, guest_paths};
use tvs_store::config::Metric;
use tvs_store::store::TenantStore;

use crate::support::{config, temp_store};

fn doc(id: &str, vector: [f32; 4], metadata: &str) -> IngestDocument {
    IngestDocument {
        id: Some(id.into()),
        text: Some(format!("text {id}")),
        metadata: Some(metadata.into()),
        vector: Some(vector.to_vec()),
    }
}

fn by_vector(vector: [f32; 4], top_k: u32, filter: Option<&str>) -> SearchRequest {
    SearchRequest {
        query: None,
        vector: Some(vector.to_vec()),
        top_k,
        filter: filter.map(str::to_owned),
        mmr: None,
    }
}

fn seeded(runtime: &Runtime) -> (tempfile::TempDir, Arc<TenantStore>) {
    let (tmp, _dir, store) = temp_store(&config(4, Metric::Cos));
    let documents = vec![
        doc("a", [1.0, 0.0, 0.0, 0.0], r#"{"kind": "x", "n": 1}"#),
        doc("a-twin", [0.99, 0.05, 0.0, 0.0], r#"{"kind": "x", "n": 2}"#),
        doc("b", [0.0, 1.0, 0.0, 0.0], r#"{"kind": "y", "n": 3}"#),
        doc("c", [0.7, 0.7, 0.0, 0.0], r#"{"kind": "y", "n": 4}"#),
    ];
    let response = runtime
        .ingest(store.clone(), &IngestRequest { documents, chunk: None })
        .expect("ingest");
    assert_eq!(response.ids, ["a", "a-twin", "b", "c"]);
    (tmp, store)
}

fn ids(hits: &[tvs_runtime::Hit]) -> Vec<&str> {
    hits.iter().map(|h| h.id.as_str()).collect()
}

#[test]
fn ingest_and_search_run_inside_a_fresh_guest() {
    let runtime = Runtime::new(RuntimeLimits::default()).expect("runtime");
    let (_tmp, store) = seeded(&runtime);
    assert_eq!(store.count(), 4);
    let hits = runtime
        .search(store.clone(), &by_vector([1.0, 0.0, 0.0, 0.0], 2, None))
        .expect("search");
    assert_eq!(ids(&hits), ["a", "a-twin"]);
    assert_eq!(hits[0].metadata, r#"{"kind":"x","n":1}"#);
    let filtered = runtime
        .search(
            store.clone(),
            &by_vector([1.0, 0.0, 0.0, 0.0], 2, Some(r#"{"kind": "y"}"#)),
        )
        .expect("filtered");
    assert_eq!(ids(&filtered), ["c", "b"]);
    let mut diverse = by_vector([1.0, 0.0, 0.0, 0.0], 2, None);
    diverse.mmr = Some(Mmr {
        fetch_k: 4,
        lambda_mult: 0.3,
    });
    let hits = runtime.search(store, &diverse).expect("mmr");
    assert_eq!(hits[0].id, "a");
    assert_ne!(hits[1].id, "a-twin", "MMR skips the near duplicate");
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let runtime = Runtime::new(RuntimeLimits::default()).expect("runtime");
    let (_tmp, store) = seeded(&runtime);
    let cases: Vec<(IngestDocument, &str)> = vec![
        (doc("d", [1.0, 0.0, 0.0, 0.0], "not json"), "metadata is not JSON"),
        (doc("d", [1.0, 0.0, 0.0, 0.0], "[1]"), "JSON object"),
        (
            IngestDocument {
                vector: Some(vec![1.0, 2.0]),
                ..doc("d", [0.0; 4], "{}")
            },
            "dimensions",
        ),
        (
            IngestDocument {
                vector: Some(vec![f32::NAN, 0.0, 0.0, 0.0]),
                ..doc("d", [0.0; 4], "{}")
            },
            "finite",
        ),
        (
            IngestDocument {
                vector: None,
                ..doc("d", [0.0; 4], "{}")
            },
            "no embedding model",
        ),
        (
            IngestDocument {
                vector: None,
                text: None,
                ..doc("d", [0.0; 4], "{}")
            },
            "neither a vector nor text",
        ),
    ];
    for (bad, needle) in cases {
        let good = doc("fine", [0.0, 0.0, 1.0, 0.0], "{}");
        let err = runtime
            .ingest(
                store.clone(),
                &IngestRequest {
                    documents: vec![good, bad],
                    chunk: None,
                },
            )
            .expect_err(needle);
        assert!(matches!(err, GuestError::Request { .. }), "{err:?}");
        assert!(err.to_string().contains(needle), "{needle}: {err}");
        assert_eq!(store.count(), 4, "{needle}: nothing was written");
    }
    let err = runtime
        .search(
            store.clone(),
            &by_vector([1.0, 0.0, 0.0, 0.0], 2, Some(r#"{"n": {"$regex": "."}}"#)),
        )
        .expect_err("filter");
    assert!(err.to_string().contains("$regex"), "{err}");
    let err = runtime
        .search(
            store,
            &SearchRequest {
                query: Some("hello".into()),
                ..by_vector([1.0; 4], 1, None)
            },
        )
        .expect_err("both");
    assert!(err.to_string().contains("exactly one"), "{err}");
}

fn hostile_runtime(limits: RuntimeLimits) -> Runtime {
    Runtime::with_component(Path::new(guest_paths::HOSTILE), limits).expect("hostile guest loads")
}

fn query(text: &str) -> SearchRequest {
    SearchRequest {
        query: Some(text.into()),
        vector: None,
        top_k: 3,
        filter: None,
        mmr: None,
    }
}

#[test]
fn a_guest_that_loops_forever_is_stopped_by_the_deadline_and_the_host_keeps_serving() {
    let runtime = hostile_runtime(RuntimeLimits {
        deadline: Duration::from_millis(200),
        ..RuntimeLimits::default()
    });
    let (_tmp, _dir, store) = temp_store(&config(4, Metric::Cos));
    store
        .upsert(vec![tvs_store::store::NewDocument {
            id: Some("mine".into()),
            vector: vec![1.0, 0.0, 0.0, 0.0],
            ..Default::default()
        }])
        .expect("seed");
    let err = runtime
        .search(store.clone(), &query("loop"))
        .expect_err("must be stopped");
    assert!(matches!(err, GuestError::Deadline(_)), "{err:?}");
    let hits = runtime
        .search(store, &query("normal"))
        .expect("the same engine serves the next request");
    assert_eq!(ids(&hits), ["mine"]);
}

#[test]
fn a_guest_that_allocates_without_bound_is_stopped_by_the_memory_cap() {
    let runtime = hostile_runtime(RuntimeLimits {
        memory_bytes: 32 << 20,
        ..RuntimeLimits::default()
    });
    let (_tmp, _dir, store) = temp_store(&config(4, Metric::Cos));
    let err = runtime
        .search(store.clone(), &query("alloc"))
        .expect_err("must be stopped");
    assert!(matches!(err, GuestError::Memory(_)), "{err:?}");
    runtime.search(store, &query("normal")).expect("the host keeps serving");
}

#[test]
fn a_panicking_guest_becomes_an_error_without_its_backtrace() {
    let runtime = hostile_runtime(RuntimeLimits::default());
    let (_tmp, _dir, store) = temp_store(&config(4, Metric::Cos));
    let err = runtime.search(store.clone(), &query("panic")).expect_err("trap");
    assert!(matches!(err, GuestError::Trap(_)), "{err:?}");
    assert!(
        !err.to_string().contains("wasm backtrace"),
        "no backtrace for clients: {err}"
    );
    runtime.search(store, &query("normal")).expect("the host keeps serving");
}

#[test]
fn a_guest_sees_nothing_of_another_tenant_whatever_ids_or_filters_it_asks_for() {
    let runtime = hostile_runtime(RuntimeLimits::default());
    let (_victim_tmp, _victim_dir, victim) = temp_store(&config(4, Metric::Cos));
    victim
        .upsert(vec![tvs_store::store::NewDocument {
            id: Some("secret-1".into()),
            text: "victim's secret".into(),
            metadata: crate::support::obj(serde_json::json!({"tenant": "victim", "owner": "victim"})),
            vector: vec![1.0, 0.0, 0.0, 0.0],
        }])
        .expect("victim data");
    let (_tmp, _dir, attacker) = temp_store(&config(4, Metric::Cos));
    attacker
        .upsert(vec![tvs_store::store::NewDocument {
            id: Some("own".into()),
            vector: vec![0.9, 0.1, 0.0, 0.0],
            ..Default::default()
        }])
        .expect("attacker data");
    let hits = runtime.search(attacker, &query("snoop")).expect("snoop runs");
    assert_eq!(ids(&hits), ["own"], "only the attacker's own document");
    assert!(hits.iter().all(|h| !h.text.contains("secret")));
}

#[test]
fn a_guest_importing_an_interface_the_host_does_not_offer_is_refused_at_load() {
    let err =
        Runtime::with_component(Path::new(guest_paths::BAD_IMPORT), RuntimeLimits::default()).expect_err("refused");
    let message = err.to_string();
    assert!(message.contains("tvs:evil/admin"), "{message}");
    // The built-in guest still loads next to it.
    Runtime::new(RuntimeLimits::default()).expect("runtime");
}

#[test]
fn when_every_instance_slot_is_taken_a_request_is_refused_as_busy_not_queued() {
    let runtime = Arc::new(hostile_runtime(RuntimeLimits {
        deadline: Duration::from_millis(400),
        max_instances: 1,
        ..RuntimeLimits::default()
    }));
    let (_tmp, _dir, store) = temp_store(&config(4, Metric::Cos));
    let looping = {
        let (runtime, store) = (runtime.clone(), store.clone());
        // Retried while a probe below holds the slot, so the loop does get to run.
        std::thread::spawn(move || {
            loop {
                match runtime.search(store.clone(), &query("loop")) {
                    Err(GuestError::Busy) => std::thread::sleep(Duration::from_millis(1)),
                    other => return other,
                }
            }
        })
    };
    // Probes get the slot until the looping guest holds it; from then on, for its whole 400 ms
    // deadline, a request is refused at once.
    let mut refused = None;
    while !looping.is_finished() {
        match runtime.search(store.clone(), &query("normal")) {
            Err(err) => {
                refused = Some(err);
                break;
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    let err = refused.expect("a request was refused while the slot was taken");
    assert!(matches!(err, GuestError::Busy), "{err:?}");
    assert!(matches!(looping.join().expect("thread"), Err(GuestError::Deadline(_))));
    runtime.search(store, &query("normal")).expect("the slot is free again");
}
