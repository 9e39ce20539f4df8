//! Per-tenant rate limits against a real `tvs serve`: the admin sets requests/s and ingest
//! bytes/s (`PATCH /v1/tenants/{id}`), a server's defaults reach new tenants, a request over a
//! limit gets 429 naming the limit with `Retry-After` and changes nothing, and it passes once
//! that time has gone by; limits outlive a restart and refusals are counted in /metrics.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};

use crate::http::{ADMIN, Server, call, create_tenant, header, ingest, request_with_head};

/// Status, `Retry-After` and JSON body of one request.
fn send(addr: SocketAddr, method: &str, path: &str, key: &str, body: &str) -> (u16, Option<u64>, Value) {
    let (status, head, value) =
        request_with_head(addr, method, path, Some(key), Some("application/json"), body.as_bytes());
    let retry_after = header(&head, "retry-after").map(|v| v.parse().expect("seconds"));
    (status, retry_after, value)
}

fn search(addr: SocketAddr, key: &str) -> (u16, Option<u64>, Value) {
    send(
        addr,
        "POST",
        "/v1/search",
        key,
        &json!({"vector": [1, 0, 0, 0], "top_k": 1}).to_string(),
    )
}

fn patch(addr: SocketAddr, tenant: &str, body: Value) -> (u16, Value) {
    call(
        addr,
        "PATCH",
        &format!("/v1/tenants/{tenant}"),
        Some(ADMIN),
        Some(&body.to_string()),
    )
}

#[test]
fn rate_limits_refuse_with_429_and_retry_after_change_nothing_and_persist() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(tmp.path(), &[], &[("TVS_DEFAULT_INGEST_BYTES_PER_SECOND", "1000000")]);
    let addr = server.addr;
    let key = create_tenant(addr, "alice", 4);
    let (status, view) = call(addr, "GET", "/v1/tenants/alice", Some(ADMIN), None);
    assert_eq!(status, 200, "{view}");
    assert_eq!(
        view["rate_limits"],
        json!({"ingest_bytes_per_second": 1e6}),
        "the default reached the new tenant"
    );
    assert_eq!(call(addr, "PATCH", "/v1/tenants/alice", Some(&key), Some("{}")).0, 403);
    assert_eq!(patch(addr, "nobody", json!({"requests_per_second": 1})).0, 404);
    let (status, body) = patch(addr, "alice", json!({"requests_per_second": -2}));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("requests_per_second")
    );

    // Requests per second: a second's burst passes, the next waits.
    let (status, view) = patch(
        addr,
        "alice",
        json!({"requests_per_second": 4, "ingest_bytes_per_second": null}),
    );
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["rate_limits"], json!({"requests_per_second": 4.0}));
    let answers: Vec<_> = (0..12).map(|_| search(addr, &key)).collect();
    let passed = answers.iter().filter(|(s, _, _)| *s == 200).count();
    assert!((4..=6).contains(&passed), "{passed} of 12 passed at 4/s");
    let (_, retry_after, refusal) = answers.iter().find(|(s, _, _)| *s == 429).expect("a refusal");
    assert_eq!(refusal["error"]["code"], "rate_limited");
    let message = refusal["error"]["message"].as_str().expect("message");
    assert!(message.contains("4 requests per second"), "{message}");
    assert_eq!(*retry_after, Some(1));
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(search(addr, &key).0, 200, "after Retry-After it passes");

    // Ingest bytes per second: the second big request waits, and wrote nothing.
    patch(
        addr,
        "alice",
        json!({"requests_per_second": null, "ingest_bytes_per_second": 600}),
    );
    let big = |id: &str| json!([{"id": id, "text": "x".repeat(400), "vector": [1, 0, 0, 0]}]);
    assert_eq!(ingest(addr, &key, big("first")).0, 200);
    let body = json!({"documents": big("second")}).to_string();
    let (status, retry_after, refusal) = send(addr, "POST", "/v1/documents", &key, &body);
    assert_eq!(status, 429, "{refusal}");
    assert!(
        refusal["error"]["message"]
            .as_str()
            .expect("message")
            .contains("600 ingest bytes per second")
    );
    assert!(retry_after.is_some_and(|s| s >= 1));
    assert_eq!(
        call(addr, "GET", "/v1/documents/second", Some(&key), None).0,
        404,
        "nothing half-applied"
    );
    std::thread::sleep(Duration::from_secs(retry_after.expect("retry after")));
    assert_eq!(send(addr, "POST", "/v1/documents", &key, &body).0, 200);
    let (_, stats) = call(addr, "GET", "/v1/stats", Some(&key), None);
    assert_eq!(
        stats["rate_limits"],
        json!({"ingest_bytes_per_second": 600.0}),
        "{stats}"
    );

    let (_, spec) = call(addr, "GET", "/openapi.json", None, None);
    assert!(
        spec["paths"]["/v1/tenants/{id}"]["patch"].is_object(),
        "the spec describes PATCH"
    );
    assert!(spec["paths"]["/v1/tenants/{id}"]["get"].is_object());
    let patch_schema = &spec["components"]["schemas"]["TenantPatch"]["properties"];
    for field in [
        "requests_per_second",
        "ingest_bytes_per_second",
        "max_documents",
        "max_bytes",
    ] {
        assert!(
            patch_schema[field].is_object(),
            "TenantPatch documents {field}: {patch_schema}"
        );
    }

    let (_, metrics) = call(addr, "GET", "/metrics", None, None);
    let metrics = metrics.as_str().expect("text");
    assert!(
        metrics.contains("tvs_rate_limited_total{limit=\"ingest_bytes_per_second\"} 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("tvs_rate_limited_total{limit=\"requests_per_second\"} 0"),
        "{metrics}"
    );

    // The documents quota: set, enforced with 413 naming it, nothing of the batch written.
    let (status, view) = patch(addr, "alice", json!({"max_documents": 3}));
    assert_eq!((status, &view["max_documents"]), (200, &json!(3)), "{view}");
    assert_eq!(view["usage"]["documents"], 2);
    let doc = |id: &str| json!({"id": id, "text": "t", "vector": [0, 1, 0, 0]});
    let (status, refusal) = ingest(addr, &key, json!([doc("q1"), doc("q2")]));
    assert_eq!(
        (status, refusal["error"]["code"].as_str()),
        (413, Some("quota_exceeded")),
        "{refusal}"
    );
    assert!(
        refusal["error"]["message"]
            .as_str()
            .expect("message")
            .contains("3 documents")
    );
    assert_eq!(
        call(addr, "GET", "/v1/documents/q1", Some(&key), None).0,
        404,
        "nothing half-applied"
    );
    assert_eq!(ingest(addr, &key, json!([doc("q1")])).0, 200, "one more fits");
    let (_, stats) = call(addr, "GET", "/v1/stats", Some(&key), None);
    assert_eq!(
        (&stats["count"], &stats["max_documents"]),
        (&json!(3), &json!(3)),
        "the tenant sees its usage against the quota: {stats}"
    );
    assert_eq!(patch(addr, "alice", json!({"max_documents": 0})).0, 400);

    drop(server);
    let server = Server::start(tmp.path(), &[], &[]);
    let (_, view) = call(server.addr, "GET", "/v1/tenants/alice", Some(ADMIN), None);
    assert_eq!(view["max_documents"], 3, "the quota is kept across a restart");
    let (status, _) = ingest(server.addr, &key, json!([doc("q2")]));
    assert_eq!(status, 413);
    let (status, view) = patch(server.addr, "alice", json!({"max_documents": null}));
    assert_eq!((status, &view["max_documents"]), (200, &Value::Null));
    let (_, stats) = call(server.addr, "GET", "/v1/stats", Some(&key), None);
    assert!(stats.get("max_documents").is_none(), "no quota, none shown: {stats}");
    assert_eq!(
        ingest(server.addr, &key, json!([doc("q2")])).0,
        200,
        "no quota: it fits"
    );
    let (_, view) = call(server.addr, "GET", "/v1/tenants/alice", Some(ADMIN), None);
    assert_eq!(
        view["rate_limits"],
        json!({"ingest_bytes_per_second": 600.0}),
        "kept across a restart"
    );
    let created = create_tenant(server.addr, "bob", 4);
    let (_, view) = call(server.addr, "GET", "/v1/tenants/bob", Some(ADMIN), None);
    assert_eq!(view["rate_limits"], json!({}), "no default on this server: unlimited");
    assert_eq!(search(server.addr, &created).0, 200);

    // The bytes quota: the size of the tenant's log, shown to the admin and to the tenant.
    let bob = created;
    for id in ["b1", "b2", "b3"] {
        assert_eq!(ingest(server.addr, &bob, json!([doc(id)])).0, 200);
    }
    let (_, view) = call(server.addr, "GET", "/v1/tenants/bob", Some(ADMIN), None);
    let used = view["usage"]["stored_bytes"].as_u64().expect("stored bytes");
    assert!(used > 0, "{view}");
    assert_eq!(patch(server.addr, "bob", json!({"max_bytes": 0})).0, 400);
    let (status, view) = patch(server.addr, "bob", json!({"max_bytes": used}));
    assert_eq!((status, &view["max_bytes"]), (200, &json!(used)), "{view}");
    let (status, refusal) = ingest(server.addr, &bob, json!([doc("b4")]));
    assert_eq!(
        (status, refusal["error"]["code"].as_str()),
        (413, Some("quota_exceeded")),
        "{refusal}"
    );
    let message = refusal["error"]["message"].as_str().expect("message");
    assert!(message.contains(&format!("{used} stored bytes")), "{message}");
    assert_eq!(
        call(server.addr, "GET", "/v1/documents/b4", Some(&bob), None).0,
        404,
        "nothing half-applied"
    );
    let (_, stats) = call(server.addr, "GET", "/v1/stats", Some(&bob), None);
    assert_eq!(
        (&stats["max_bytes"], &stats["stored_bytes"]),
        (&json!(used), &json!(used)),
        "{stats}"
    );
    // Deleted documents make room once the log is compacted, which a write past the quota
    // does first.
    for id in ["b1", "b2"] {
        assert_eq!(
            call(server.addr, "DELETE", &format!("/v1/documents/{id}"), Some(&bob), None).0,
            200
        );
    }
    let (status, view) = ingest(server.addr, &bob, json!([doc("b4")]));
    assert_eq!(status, 200, "{view}");
    let (_, view) = call(server.addr, "GET", "/v1/tenants/bob", Some(ADMIN), None);
    assert_eq!(view["usage"]["documents"], 2);
    assert!(
        view["usage"]["stored_bytes"].as_u64().expect("stored bytes") <= used,
        "{view}"
    );
    let (_, metrics) = call(server.addr, "GET", "/metrics", None, None);
    let metrics = metrics.as_str().expect("text");
    assert!(
        metrics.contains("tvs_quota_exceeded_total{quota=\"max_bytes\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tvs_quota_exceeded_total{quota=\"max_documents\"} 1"),
        "{metrics}"
    );
    let (status, view) = patch(server.addr, "bob", json!({"max_bytes": null}));
    assert_eq!((status, &view["max_bytes"]), (200, &Value::Null));
    assert_eq!(
        ingest(server.addr, &bob, json!([doc("b5"), doc("b6")])).0,
        200,
        "no quota"
    );
}
