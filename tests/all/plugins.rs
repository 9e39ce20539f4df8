//! Tenant plugins through a real `tvs serve`: upload, call, list, roll back, delete; isolation
//! between tenants; hostile plugins stopped with their own error codes while the server keeps
//! answering searches; uploads that are not plugin components refused with the reason; a
//! damaged compiled artifact compiled again. The probe plugin is `tests/plugins/probe`.

use std::path::Path;

use serde_json::{Value, json};
use tvs_runtime::guest_paths;

use crate::http::{ADMIN, Server, call, create_tenant, ingest, request};

fn probe() -> Vec<u8> {
    std::fs::read(guest_paths::PLUGIN_PROBE).expect("the probe plugin was built")
}

fn upload(server: &Server, key: &str, name: &str, bytes: &[u8]) -> (u16, Value) {
    request(
        server.addr,
        "PUT",
        &format!("/v1/plugins/{name}"),
        Some(key),
        Some("application/wasm"),
        bytes,
    )
}

fn call_fn(server: &Server, key: &str, name: &str, body: Value) -> (u16, Value) {
    call(
        server.addr,
        "POST",
        &format!("/v1/fn/{name}"),
        Some(key),
        Some(&body.to_string()),
    )
}

/// A tenant with three documents of 4 dimensions.
fn tenant_with_documents(server: &Server, id: &str) -> String {
    let key = create_tenant(server.addr, id, 4);
    let docs = json!([
        {"id": "north", "text": "n", "vector": [1.0, 0.0, 0.0, 0.0]},
        {"id": "east", "text": "e", "vector": [0.0, 1.0, 0.0, 0.0]},
        {"id": "up", "text": "u", "vector": [0.0, 0.0, 1.0, 0.0]},
    ]);
    let (status, body) = ingest(server.addr, &key, docs);
    assert_eq!(status, 200, "{body}");
    key
}

fn searches_still_work(server: &Server, key: &str) {
    let (status, body) = call(
        server.addr,
        "POST",
        "/v1/search",
        Some(key),
        Some(r#"{"vector": [1, 0, 0, 0], "top_k": 1}"#),
    );
    assert_eq!((status, body["hits"][0]["id"].as_str()), (200, Some("north")), "{body}");
}

#[test]
fn a_tenant_uploads_calls_lists_rolls_back_and_deletes_a_function_plugin() {
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(data.path(), &[], &[]);
    let alice = tenant_with_documents(&server, "alice");
    let bob = tenant_with_documents(&server, "bob");

    let (status, v1) = upload(&server, &alice, "probe", &probe());
    assert_eq!(status, 201, "{v1}");
    assert_eq!(
        (v1["version"].as_u64(), v1["kind"].as_str()),
        (Some(1), Some("function"))
    );
    assert_eq!(v1["sha256"].as_str().map(str::len), Some(64));
    let imports: Vec<&str> = v1["imports"]
        .as_array()
        .expect("imports")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(imports.contains(&"tvs:store/collection@0.1.0"), "{imports:?}");
    assert!(v1["exports"].as_array().expect("exports").contains(&json!("handle")));

    // The plugin sees its tenant's collection: three documents, the nearest first.
    assert_eq!(
        call_fn(&server, &alice, "probe", json!({"op": "count"})),
        (200, json!({"count": 3}))
    );
    let (status, found) = call_fn(
        &server,
        &alice,
        "probe",
        json!({"op": "search", "vector": [0, 1, 0, 0], "k": 2}),
    );
    assert_eq!((status, &found["ids"][0]), (200, &json!("east")), "{found}");
    // Its `err` is a 422 with its message.
    let (status, failed) = call_fn(&server, &alice, "probe", json!({"op": "fail"}));
    assert_eq!(status, 422, "{failed}");
    assert_eq!(failed["error"]["code"], "plugin_error");
    assert_eq!(failed["error"]["message"], "the probe refuses this request");

    // Another tenant neither sees nor calls it.
    assert_eq!(call_fn(&server, &bob, "probe", json!({"op": "count"})).0, 404);
    assert_eq!(call(server.addr, "GET", "/v1/plugins/probe", Some(&bob), None).0, 404);
    assert_eq!(
        call(server.addr, "GET", "/v1/plugins", Some(&bob), None),
        (200, json!({"plugins": []}))
    );

    // The test route returns the output with the log (stdout and stderr included) and figures.
    let (status, run) = call(
        server.addr,
        "POST",
        "/v1/plugins/probe/test",
        Some(&alice),
        Some(&json!({"input": {"op": "log"}}).to_string()),
    );
    assert_eq!((status, &run["ok"]), (200, &json!(true)), "{run}");
    let lines: Vec<&str> = run["log"]
        .as_array()
        .expect("log")
        .iter()
        .filter_map(|l| l["message"].as_str())
        .collect();
    for wanted in ["hello from the probe", "printed to stdout", "printed to stderr"] {
        assert!(lines.contains(&wanted), "{wanted}: {run}");
    }
    assert!(run["elapsed_ms"].as_f64().expect("time") > 0.0);
    assert!(run["peak_memory_bytes"].as_u64().expect("memory") > 0);

    // A second version becomes active; rolling back makes the first active again.
    let (status, v2) = upload(&server, &alice, "probe", &probe());
    assert_eq!((status, v2["version"].as_u64()), (201, Some(2)), "{v2}");
    let (status, listed) = call(server.addr, "GET", "/v1/plugins", Some(&alice), None);
    assert_eq!(status, 200);
    assert_eq!(listed["plugins"][0]["active"], 2);
    assert_eq!(listed["plugins"][0]["versions"].as_array().map(Vec::len), Some(2));
    assert!(listed["plugins"][0]["calls"].as_u64().expect("calls") >= 4, "{listed}");
    assert_eq!(
        listed["plugins"][0]["last_error"],
        "the plugin returned an error: the probe refuses this request"
    );
    let (status, rolled) = call(
        server.addr,
        "POST",
        "/v1/plugins/probe/active",
        Some(&alice),
        Some(r#"{"version": 1}"#),
    );
    assert_eq!((status, &rolled["active"]), (200, &json!(1)), "{rolled}");
    let (status, missing) = call(
        server.addr,
        "POST",
        "/v1/plugins/probe/active",
        Some(&alice),
        Some(r#"{"version": 9}"#),
    );
    assert_eq!(status, 400, "{missing}");
    assert_eq!(call_fn(&server, &alice, "probe", json!({"op": "count"})).0, 200);

    // Deleted, it is gone.
    assert_eq!(
        call(server.addr, "DELETE", "/v1/plugins/probe", Some(&alice), None).0,
        200
    );
    assert_eq!(call_fn(&server, &alice, "probe", json!({"op": "count"})).0, 404);
    assert!(!data.path().join("alice/plugins/probe").exists());
}

#[test]
fn hostile_plugins_are_stopped_with_their_own_errors_and_the_server_keeps_serving() {
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(data.path(), &[], &[]);
    let key = tenant_with_documents(&server, "t");
    assert_eq!(upload(&server, &key, "probe", &probe()).0, 201);
    let cases = [
        (json!({"op": "loop"}), 504, "plugin_deadline"),
        (json!({"op": "grow"}), 500, "plugin_memory"),
        (json!({"op": "big"}), 500, "plugin_memory"),
        (json!({"op": "big", "bytes": 2 << 20}), 500, "plugin_output"),
        (json!({"op": "recurse"}), 500, "plugin_trap"),
        (json!({"op": "host-flood"}), 500, "plugin_host_calls"),
        (json!({"op": "panic"}), 500, "plugin_trap"),
        (json!({"op": "huge-k", "vector": [1, 0, 0, 0]}), 422, "plugin_error"),
        (json!({"op": "passwd"}), 422, "plugin_error"),
    ];
    for (request, status, code) in cases {
        let (got, body) = call_fn(&server, &key, "probe", request.clone());
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{request}: {body}"
        );
        let message = body["error"]["message"].as_str().expect("message");
        assert!(
            !message.contains("wasm backtrace") && !message.contains("0x"),
            "{message}"
        );
        searches_still_work(&server, &key);
    }
    // A log flood is cut at the cap, and says so.
    let (status, run) = call(
        server.addr,
        "POST",
        "/v1/plugins/probe/test",
        Some(&key),
        Some(r#"{"input": {"op": "log-flood"}}"#),
    );
    assert_eq!(status, 200, "{run}");
    let log = run["log"].as_array().expect("log");
    assert!(log.len() < 10_000, "{} lines kept", log.len());
    assert!(
        log.last()
            .and_then(|l| l["message"].as_str())
            .expect("last")
            .contains("log cap")
    );
    searches_still_work(&server, &key);
}

#[test]
fn uploads_that_are_not_plugin_components_are_refused_with_the_reason() {
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(data.path(), &[], &[]);
    let key = tenant_with_documents(&server, "t");
    let guest = std::fs::read(guest_paths::HANDLER).expect("built-in guest");
    let cases: [(&[u8], &str); 5] = [
        (b"", "empty"),
        (b"(component)", "WebAssembly text"),
        (b"\0asm\x01\0\0\0", "core WebAssembly module"),
        (b"PK\x03\x04 a zip", "not WebAssembly"),
        (&guest, "exports none of `handle`"),
    ];
    for (bytes, needle) in cases {
        let (status, body) = upload(&server, &key, "x", bytes);
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("invalid_plugin")),
            "{needle}: {body}"
        );
        assert!(
            body["error"]["message"].as_str().expect("message").contains(needle),
            "{needle}: {body}"
        );
    }
    // A component lifting its export with the async ABI, which this host does not run.
    let (status, body) = upload(&server, &key, "async", &plugin_bytes(guest_paths::PLUGIN_ASYNC));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_plugin")),
        "{body}"
    );
    assert!(
        body["error"]["message"].as_str().expect("message").contains("async"),
        "{body}"
    );
    // A compiled artifact of this very host is refused too: only components are uploaded.
    assert_eq!(upload(&server, &key, "probe", &probe()).0, 201);
    let artifact = std::fs::read_dir(data.path().join("t/plugins/probe"))
        .expect("plugin dir")
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().ends_with(".cwasm"))
        .expect("an artifact");
    let (status, body) = upload(&server, &key, "y", &std::fs::read(artifact.path()).expect("read"));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("precompiled"),
        "{body}"
    );
    // Not a wasm content type; a name outside the id grammar.
    let (status, _) = request(
        server.addr,
        "PUT",
        "/v1/plugins/z",
        Some(&key),
        Some("text/plain"),
        &probe(),
    );
    assert_eq!(status, 415);
    let (status, body) = upload(&server, &key, "bad.name", &probe());
    assert_eq!(status, 400, "{body}");
    // Nothing of the refused uploads was stored.
    let (_, listed) = call(server.addr, "GET", "/v1/plugins", Some(&key), None);
    assert_eq!(listed["plugins"].as_array().map(Vec::len), Some(1), "{listed}");
    let _ = ADMIN;
}

#[test]
fn a_damaged_compiled_artifact_is_compiled_again_and_plugins_survive_a_restart() {
    let data = tempfile::tempdir().expect("tempdir");
    let key = {
        let server = Server::start(data.path(), &[], &[]);
        let key = tenant_with_documents(&server, "t");
        assert_eq!(upload(&server, &key, "probe", &probe()).0, 201);
        key
    };
    let dir = data.path().join("t/plugins/probe");
    let artifact = std::fs::read_dir(&dir)
        .expect("plugin dir")
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().ends_with(".cwasm"))
        .expect("an artifact")
        .path();
    let mut bytes = std::fs::read(&artifact).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&artifact, &bytes).expect("damage");

    let server = Server::start(data.path(), &[], &[]);
    assert_eq!(
        call_fn(&server, &key, "probe", json!({"op": "count"})),
        (200, json!({"count": 3}))
    );
    assert_ne!(
        std::fs::read(&artifact).expect("read"),
        bytes,
        "the artifact was written again"
    );
    drop(server);

    // An artifact recorded for another engine (a wasmtime upgrade) is never loaded: the
    // component is compiled again for this one.
    let meta_path = dir.join("meta.json");
    let mut meta: Value = serde_json::from_str(&std::fs::read_to_string(&meta_path).expect("meta")).expect("JSON");
    let engine = meta["versions"][0]["artifact"]["engine"]
        .as_str()
        .expect("engine")
        .to_owned();
    meta["versions"][0]["artifact"]["engine"] = json!("0123456789abcdef");
    std::fs::write(&meta_path, meta.to_string()).expect("meta");
    std::fs::rename(&artifact, dir.join("v1-0123456789abcdef.cwasm")).expect("rename");
    let server = Server::start(data.path(), &[], &[]);
    assert_eq!(
        call_fn(&server, &key, "probe", json!({"op": "count"})),
        (200, json!({"count": 3}))
    );
    assert!(artifact.is_file(), "compiled again for this engine");
    assert!(
        !dir.join("v1-0123456789abcdef.cwasm").exists(),
        "the other engine's artifact was removed"
    );
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(&meta_path).expect("meta")).expect("JSON");
    assert_eq!(meta["versions"][0]["artifact"]["engine"], engine.as_str());
    assert!(Path::new(&dir).join("meta.json").is_file());
}

fn plugin_bytes(path: &str) -> Vec<u8> {
    std::fs::read(path).expect("a plugin built by host/runtime/build.rs")
}

fn post(server: &Server, key: &str, path: &str, body: Value) -> (u16, Value) {
    call(server.addr, "POST", path, Some(key), Some(&body.to_string()))
}

#[test]
fn an_enabled_ingest_transform_rewrites_every_ingest_and_a_reranker_reorders_search() {
    let data = tempfile::tempdir().expect("tempdir");
    let key = {
        let server = Server::start(data.path(), &[], &[]);
        let key = create_tenant(server.addr, "t", 4);
        let (status, redact) = upload(&server, &key, "redact", &plugin_bytes(guest_paths::PLUGIN_REDACT));
        assert_eq!(
            (status, redact["kind"].as_str()),
            (201, Some("ingest-transform")),
            "{redact}"
        );
        let (status, recency) = upload(
            &server,
            &key,
            "recency",
            &plugin_bytes(guest_paths::EXAMPLE_RECENCY_RERANK),
        );
        assert_eq!((status, recency["kind"].as_str()), (201, Some("reranker")), "{recency}");

        // Kinds are kept apart: a transform is not a function, a re-ranker not a transform.
        assert_eq!(
            call_fn(&server, &key, "redact", json!({})).1["error"]["code"],
            "wrong_plugin_kind"
        );
        assert_eq!(post(&server, &key, "/v1/plugins/recency/enable", json!({})).0, 400);
        let (status, enabled) = post(&server, &key, "/v1/plugins/redact/enable", json!({}));
        assert_eq!((status, &enabled["enabled"]), (200, &json!(true)), "{enabled}");

        // Every ingest goes through it: addresses redacted, skipped documents dropped...
        let (status, stored) = ingest(
            server.addr,
            &key,
            json!([
                {"id": "a", "text": "write to bob@example.com today", "vector": [1, 0, 0, 0]},
                {"id": "b", "text": "skipped", "metadata": {"skip": true}, "vector": [0, 1, 0, 0]},
            ]),
        );
        assert_eq!((status, &stored["ids"]), (200, &json!(["a"])), "{stored}");
        let (_, a) = call(server.addr, "GET", "/v1/documents/a", Some(&key), None);
        assert_eq!(a["text"], "write to [email] today", "{a}");
        assert_eq!(call(server.addr, "GET", "/v1/documents/b", Some(&key), None).0, 404);
        // ...and an ingest it refuses stores nothing.
        let (status, refused) = ingest(
            server.addr,
            &key,
            json!([{"id": "c", "text": "fine"}, {"id": "d", "text": "REFUSE me", "vector": [0, 0, 1, 0]}]),
        );
        assert_eq!(
            (status, refused["error"]["code"].as_str()),
            (422, Some("plugin_error")),
            "{refused}"
        );
        assert_eq!(call(server.addr, "GET", "/v1/documents/c", Some(&key), None).0, 404);

        // The re-ranker moves the recent document up, returning the hits it was given.
        let docs = json!([
            {"id": "old", "text": "o", "metadata": {"year": 1990}, "vector": [1, 0.8, 0, 0]},
            {"id": "new", "text": "n", "metadata": {"year": 2024}, "vector": [1, 0.75, 0, 0]},
        ]);
        assert_eq!(ingest(server.addr, &key, docs).0, 200);
        let search = |rerank: Option<&str>| {
            let mut body = json!({"vector": [1, 1, 0, 0], "top_k": 2});
            if let Some(name) = rerank {
                body["rerank"] = json!(name);
            }
            post(&server, &key, "/v1/search", body)
        };
        let (status, plain) = search(None);
        assert_eq!((status, &plain["hits"][0]["id"]), (200, &json!("old")), "{plain}");
        let (status, reranked) = search(Some("recency"));
        assert_eq!(status, 200, "{reranked}");
        assert_eq!(reranked["hits"][0]["id"], "new", "{reranked}");
        assert_eq!(
            reranked["hits"][0]["score"], plain["hits"][1]["score"],
            "hits come back as given"
        );
        assert_eq!(search(Some("nope")).0, 404);
        assert_eq!(search(Some("redact")).1["error"]["code"], "wrong_plugin_kind");
        key
    };

    // The CLI's ingest goes through the enabled transform too.
    let file = data.path().join("more.jsonl");
    std::fs::write(
        &file,
        "{\"id\": \"cli\", \"text\": \"mail alice@example.org\", \"vector\": [0, 0, 0, 1]}\n",
    )
    .expect("write");
    let out = crate::support::tvs(
        data.path(),
        &["ingest", "--tenant", "t", file.to_str().expect("utf8")],
        &[("TVS_DATA_DIR", data.path().to_str().expect("utf8"))],
    );
    assert!(out.status.success(), "{}", crate::support::stderr(&out));
    let server = Server::start(data.path(), &[], &[]);
    let (_, cli) = call(server.addr, "GET", "/v1/documents/cli", Some(&key), None);
    assert_eq!(cli["text"], "mail [email]", "{cli}");
    // Disabled, ingests are stored as sent.
    let (status, disabled) = post(&server, &key, "/v1/plugins/redact/disable", json!({}));
    assert_eq!((status, &disabled["enabled"]), (200, &json!(false)), "{disabled}");
    assert_eq!(
        ingest(
            server.addr,
            &key,
            json!([{"id": "raw", "text": "x@y.io", "vector": [0, 0, 1, 1]}])
        )
        .0,
        200
    );
    assert_eq!(
        call(server.addr, "GET", "/v1/documents/raw", Some(&key), None).1["text"],
        "x@y.io"
    );
}

#[test]
fn a_plugin_reaching_for_files_sockets_or_other_interfaces_is_refused_at_upload() {
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(data.path(), &[], &[]);
    let key = create_tenant(server.addr, "t", 4);
    let (status, body) = upload(&server, &key, "escape", &plugin_bytes(guest_paths::PLUGIN_ESCAPE));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_plugin")),
        "{body}"
    );
    let message = body["error"]["message"].as_str().expect("message");
    for named in ["`tvs:escape/admin`", "`wasi:sockets/tcp@0.2.6`"] {
        assert!(message.contains(named), "{named}: {message}");
    }
    // Files are not refused at upload (componentize-js always imports them), but reach nothing.
    assert!(!message.contains("wasi:filesystem"), "{message}");
    assert_eq!(
        call(server.addr, "GET", "/v1/plugins", Some(&key), None).1,
        json!({"plugins": []})
    );
}

#[test]
fn a_plugin_whose_memory_starts_above_the_cap_is_refused_at_upload() {
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(data.path(), &[], &[]);
    let key = tenant_with_documents(&server, "t");
    let (status, body) = upload(&server, &key, "fat", &plugin_bytes(guest_paths::PLUGIN_FAT));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_plugin")),
        "{body}"
    );
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("minimum byte size of 104857600"), "{message}");
    assert_eq!(call_fn(&server, &key, "fat", json!({})).0, 404);
    searches_still_work(&server, &key);
}

#[test]
fn deleting_or_rolling_back_a_plugin_during_calls_ends_them_cleanly() {
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(data.path(), &[], &[]);
    let key = tenant_with_documents(&server, "t");
    assert_eq!(upload(&server, &key, "probe", &probe()).0, 201);
    assert_eq!(upload(&server, &key, "probe", &probe()).0, 201);
    let addr = server.addr;
    // Calls that run until their 2 s deadline, started before the changes below.
    let running: Vec<_> = (0..3)
        .map(|_| {
            let key = key.clone();
            std::thread::spawn(move || call(addr, "POST", "/v1/fn/probe", Some(&key), Some(r#"{"op": "loop"}"#)))
        })
        .collect();
    // Well inside the running call's 2 s and the waiting calls' 1 s: all three have started.
    std::thread::sleep(std::time::Duration::from_millis(700));
    let (status, rolled) = post(&server, &key, "/v1/plugins/probe/active", json!({"version": 1}));
    assert_eq!((status, &rolled["active"]), (200, &json!(1)), "{rolled}");
    assert_eq!(
        call(server.addr, "DELETE", "/v1/plugins/probe", Some(&key), None).0,
        200
    );
    // Each ends with its deadline, or was never admitted (a tenant runs few plugin calls at once).
    let mut stopped = 0;
    for call in running {
        let (status, body) = call.join().expect("thread");
        match (status, body["error"]["code"].as_str()) {
            (504, Some("plugin_deadline")) => stopped += 1,
            (503, Some("busy")) => {}
            other => panic!("{other:?}: {body}"),
        }
    }
    assert!(stopped >= 1, "at least one call ran until its deadline");
    assert_eq!(call_fn(&server, &key, "probe", json!({"op": "count"})).0, 404);
    searches_still_work(&server, &key);
}

#[test]
fn a_tenant_keeps_five_versions_of_a_plugin_and_at_most_twenty_plugins() {
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(data.path(), &[], &[]);
    let key = create_tenant(server.addr, "t", 4);
    let bytes = probe();
    for version in 1..=7 {
        let (status, body) = upload(&server, &key, "probe", &bytes);
        assert_eq!((status, body["version"].as_u64()), (201, Some(version)), "{body}");
    }
    let (_, info) = call(server.addr, "GET", "/v1/plugins/probe", Some(&key), None);
    let kept: Vec<u64> = info["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter_map(|v| v["version"].as_u64())
        .collect();
    assert_eq!(kept, [3, 4, 5, 6, 7], "{info}");
    let files = std::fs::read_dir(data.path().join("t/plugins/probe"))
        .expect("dir")
        .count();
    assert_eq!(
        files,
        1 + 5 * 2,
        "meta, and a component and an artifact per kept version"
    );
    for n in 1..20 {
        assert_eq!(upload(&server, &key, &format!("p{n}"), &bytes).0, 201, "plugin {n}");
    }
    let (status, body) = upload(&server, &key, "one-too-many", &bytes);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("quota_exceeded")),
        "{body}"
    );
}

#[test]
fn the_python_example_built_with_componentize_py_redacts_every_ingest() {
    let python = crate::support::langchain_python();
    let componentize = python.with_file_name("componentize-py");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/plugins/python-redact");
    let built = tempfile::tempdir().expect("tempdir");
    let wasm = built.path().join("redact.wasm");
    let started = std::time::Instant::now();
    let out = std::process::Command::new(&componentize)
        .current_dir(&example)
        .args([
            "-d",
            "../../../wit/plugin",
            "-w",
            "tvs:plugin/ingest-transform",
            "componentize",
            "--stub-wasi",
            "app",
            "-o",
        ])
        .arg(&wasm)
        .output()
        .expect("run componentize-py");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let build_time = started.elapsed();

    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(data.path(), &[], &[]);
    let key = create_tenant(server.addr, "t", 4);
    let bytes = std::fs::read(&wasm).expect("component");
    let started = std::time::Instant::now();
    let (status, uploaded) = upload(&server, &key, "redact", &bytes);
    let upload_time = started.elapsed();
    assert_eq!(
        (status, uploaded["kind"].as_str()),
        (201, Some("ingest-transform")),
        "{uploaded}"
    );
    eprintln!(
        "python plugin: {} bytes, componentize-py {build_time:?}, upload (compile) {upload_time:?}",
        bytes.len()
    );
    assert_eq!(post(&server, &key, "/v1/plugins/redact/enable", json!({})).0, 200);
    let text = "mail bob@example.com or call +1 (555) 123-4567 about order 12345";
    let (status, stored) = ingest(
        server.addr,
        &key,
        json!([{"id": "a", "text": text, "vector": [1, 0, 0, 0]}]),
    );
    assert_eq!(status, 200, "{stored}");
    let (_, a) = call(server.addr, "GET", "/v1/documents/a", Some(&key), None);
    assert_eq!(a["text"], "mail [email] or call [phone] about order 12345", "{a}");
    let (status, run) = post(
        &server,
        &key,
        "/v1/plugins/redact/test",
        json!({"input": {"documents": [{"id": "x", "text": "a@b.co"}]}}),
    );
    assert_eq!((status, &run["output"][0]["text"]), (200, &json!("[email]")), "{run}");
    assert_eq!(run["log"][0]["message"], "redacted 1 of 1 documents", "{run}");
}

/// componentize-js from npm, installed once under `target/` (so `cargo test` needs Node.js and
/// npm, which the machine has, and nothing else).
fn componentize_js() -> std::path::PathBuf {
    const PACKAGE: &str = "@bytecodealliance/componentize-js@0.23.0";
    static TOOL: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    TOOL.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("js-tools");
        let marker = dir.join("tvs-installed.txt");
        let tool = dir.join("node_modules/.bin/componentize-js");
        if std::fs::read_to_string(&marker).ok().as_deref() != Some(PACKAGE) {
            std::fs::create_dir_all(&dir).expect("tools dir");
            let out = std::process::Command::new("npm")
                .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
                .arg(&dir)
                .arg(PACKAGE)
                .output()
                .expect("npm (Node.js) is needed to build the JavaScript plugin example: apt-get install nodejs npm");
            assert!(
                out.status.success(),
                "npm install {PACKAGE}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::write(&marker, PACKAGE).expect("marker");
        }
        tool
    })
    .clone()
}

#[test]
fn the_javascript_example_built_with_componentize_js_finds_related_documents() {
    let tool = componentize_js();
    let build = tempfile::tempdir().expect("tempdir");
    // The WIT as `tvs plugin wit` writes it for authors (plain files, no symlink).
    let out = crate::support::tvs(build.path(), &["plugin", "wit", "wit"], &[]);
    assert!(out.status.success(), "{}", crate::support::stderr(&out));
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/plugins/js-related/related.js");
    std::fs::copy(&example, build.path().join("related.js")).expect("copy");
    let started = std::time::Instant::now();
    let out = std::process::Command::new(&tool)
        .current_dir(build.path())
        .args([
            "related.js",
            "--wit",
            "wit",
            "-n",
            "function",
            "-d",
            "http",
            "-d",
            "fetch-event",
            "-o",
            "related.wasm",
        ])
        .output()
        .expect("run componentize-js");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let build_time = started.elapsed();

    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(data.path(), &[], &[]);
    let key = tenant_with_documents(&server, "t");
    let docs = json!([{"id": "north-east", "text": "ne", "vector": [1, 1, 0, 0]}]);
    assert_eq!(ingest(server.addr, &key, docs).0, 200);
    let bytes = std::fs::read(build.path().join("related.wasm")).expect("component");
    let started = std::time::Instant::now();
    let (status, uploaded) = upload(&server, &key, "related", &bytes);
    let upload_time = started.elapsed();
    assert_eq!(
        (status, uploaded["kind"].as_str()),
        (201, Some("function")),
        "{uploaded}"
    );
    eprintln!(
        "javascript plugin: {} bytes, componentize-js {build_time:?}, upload (compile) {upload_time:?}",
        bytes.len()
    );
    let (status, related) = call_fn(&server, &key, "related", json!({"id": "north", "k": 2}));
    assert_eq!(status, 200, "{related}");
    let ids: Vec<&str> = related["related"]
        .as_array()
        .expect("related")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids[0], "north-east", "{related}");
    assert!(!ids.contains(&"north") && ids.len() == 2, "{related}");
    let (status, missing) = call_fn(&server, &key, "related", json!({"id": "nowhere"}));
    assert_eq!(
        (status, &missing["error"]["message"]),
        (422, &json!("no document \"nowhere\"")),
        "{missing}"
    );
}

#[test]
fn the_cli_uploads_lists_activates_and_deletes_plugins_when_no_server_holds_the_tenant() {
    let data = tempfile::tempdir().expect("tempdir");
    let env = [("TVS_DATA_DIR", data.path().to_str().expect("utf8"))];
    let tvs = |args: &[&str]| crate::support::tvs(data.path(), args, &env);
    assert!(
        tvs(&["tenant", "create", "t", "--model", "none", "--dims", "4"])
            .status
            .success()
    );
    let probe_path = guest_paths::PLUGIN_PROBE;
    for version in [1, 2] {
        let out = tvs(&["plugin", "upload", "--tenant", "t", "probe", probe_path]);
        assert!(out.status.success(), "{}", crate::support::stderr(&out));
        let line: Value = serde_json::from_str(crate::support::stdout(&out).trim()).expect("JSON");
        assert_eq!(
            (line["version"].as_u64(), line["kind"].as_str()),
            (Some(version), Some("function"))
        );
    }
    let out = tvs(&["plugin", "activate", "--tenant", "t", "probe", "1"]);
    assert!(out.status.success(), "{}", crate::support::stderr(&out));
    let out = tvs(&["plugin", "list", "--tenant", "t"]);
    let listed: Value = serde_json::from_str(crate::support::stdout(&out).trim()).expect("JSON");
    assert_eq!(
        (listed["name"].as_str(), listed["active"].as_u64()),
        (Some("probe"), Some(1)),
        "{listed}"
    );
    let refused = tvs(&["plugin", "upload", "--tenant", "t", "bad", "/etc/hostname"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        crate::support::stderr(&refused).contains("not WebAssembly"),
        "{}",
        crate::support::stderr(&refused)
    );

    // While a server has the tenant open, the CLI says to use the HTTP API.
    let server = Server::start(data.path(), &[], &[]);
    let key = {
        let (status, body) = call(server.addr, "POST", "/v1/tenants/t/keys", Some(ADMIN), None);
        assert_eq!(status, 200, "{body}");
        body["api_key"].as_str().expect("key").to_owned()
    };
    assert_eq!(
        call_fn(&server, &key, "probe", json!({"op": "count"})),
        (200, json!({"count": 0}))
    );
    let busy = tvs(&["plugin", "delete", "--tenant", "t", "probe"]);
    assert_eq!(busy.status.code(), Some(2));
    assert!(
        crate::support::stderr(&busy).contains("use its HTTP API"),
        "{}",
        crate::support::stderr(&busy)
    );
    drop(server);
    assert!(tvs(&["plugin", "delete", "--tenant", "t", "probe"]).status.success());
    assert!(
        crate::support::stdout(&tvs(&["plugin", "list", "--tenant", "t"]))
            .trim()
            .is_empty()
    );
}

fn leb128(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn section(id: u8, body: &[u8], out: &mut Vec<u8>) {
    out.push(id);
    leb128(body.len(), out);
    out.extend_from_slice(body);
}

/// A component holding one core module of `functions` small functions: costly to compile,
/// cheap to make.
fn compile_bomb(functions: usize) -> Vec<u8> {
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    section(1, &[0x01, 0x60, 0x00, 0x00], &mut module); // one type: func()
    let mut funcs = Vec::new();
    leb128(functions, &mut funcs);
    funcs.extend(std::iter::repeat_n(0u8, functions));
    section(3, &funcs, &mut module);
    let mut code = Vec::new();
    leb128(functions, &mut code);
    for _ in 0..functions {
        // No locals; i32.const 0, drop, end.
        code.extend_from_slice(&[0x05, 0x00, 0x41, 0x00, 0x1a, 0x0b]);
    }
    section(10, &code, &mut module);
    let mut component = b"\0asm\x0d\0\x01\0".to_vec();
    section(1, &module, &mut component); // a core module section
    component
}

#[test]
fn a_component_too_costly_to_compile_is_stopped_in_its_child_and_the_server_carries_on() {
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(data.path(), &["--plugin-compile-timeout-secs", "1"], &[]);
    let key = tenant_with_documents(&server, "t");
    let bomb = compile_bomb(1_000_000);
    let started = std::time::Instant::now();
    let (status, body) = upload(&server, &key, "bomb", &bomb);
    let took = started.elapsed();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_plugin")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("compiling took longer than 1s"),
        "{body}"
    );
    assert!(took < std::time::Duration::from_secs(20), "{took:?}");
    searches_still_work(&server, &key);
    assert_eq!(
        upload(&server, &key, "probe", &probe()).0,
        201,
        "the next upload compiles"
    );
}

#[test]
fn oversize_uploads_and_stored_bytes_past_the_quota_are_refused_and_a_deleted_tenant_takes_its_plugins() {
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(data.path(), &["--plugin-max-stored-mib", "1"], &[]);
    let key = create_tenant(server.addr, "t", 4);
    // Past the 40 MiB component limit: refused before it is read whole.
    let (status, _) = upload(&server, &key, "huge", &vec![0u8; 41 << 20]);
    assert_eq!(status, 413);
    // The probe and its artifact fit in 1 MiB once, not twice.
    assert_eq!(upload(&server, &key, "probe", &probe()).0, 201);
    let mut refused = None;
    for n in 0..8 {
        let (status, body) = upload(&server, &key, &format!("copy{n}"), &probe());
        if status != 201 {
            refused = Some((status, body));
            break;
        }
    }
    let (status, body) = refused.expect("the stored-bytes quota was reached");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("quota_exceeded")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("1048576 bytes"),
        "{body}"
    );

    let (status, _) = call(server.addr, "DELETE", "/v1/tenants/t", Some(ADMIN), None);
    assert!(status == 200 || status == 204, "{status}");
    assert!(!data.path().join("t").exists(), "the tenant's plugins went with it");
}
