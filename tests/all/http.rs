//! `tvs serve` end to end, as a child process on loopback: tenant lifecycle, documents and
//! search through the guest, isolation between tenants, bad input answered 4xx without changing
//! data, kill -9 during a stream of writes losing no acknowledged write, and many clients over
//! more tenants than the pool holds.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use serde_json::{Value, json};

pub(crate) const ADMIN: &str = "test-admin-key";

/// A `tvs serve` child; killed when dropped.
pub(crate) struct Server {
    child: Child,
    pub(crate) addr: SocketAddr,
}

impl Server {
    pub(crate) fn start(data: &Path, extra_args: &[&str], env: &[(&str, &str)]) -> Server {
        // Fetched once here, so servers started side by side do not each download it.
        crate::support::local_model();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tvs"));
        cmd.args(["serve", "--addr", "127.0.0.1:0"])
            .args(extra_args)
            .env("TVS_DATA_DIR", data)
            .env("TVS_ADMIN_KEY", ADMIN)
            .env_remove("VECTOR_STORE_POOL_SIZE")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn tvs serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read address");
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Server {
            addr: addr.parse().expect("address"),
            child,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn kill_9(&mut self) {
        let status = Command::new("kill")
            .args(["-9", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns the status and the JSON body (or
/// `Value::String` of the body when it is not JSON).
pub(crate) fn call(addr: SocketAddr, method: &str, path: &str, key: Option<&str>, body: Option<&str>) -> (u16, Value) {
    let body = body.unwrap_or("");
    let content_type = (!body.is_empty()).then_some("application/json");
    request(addr, method, path, key, content_type, body.as_bytes())
}

/// One HTTP/1.1 request with any body and content type.
pub(crate) fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
) -> (u16, Value) {
    let (status, _, value) = request_with_head(addr, method, path, key, content_type, body);
    (status, value)
}

/// [`request`], also returning the response head (status line and headers).
pub(crate) fn request_with_head(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
) -> (u16, String, Value) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: tvs\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(content_type) = content_type {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    if let Some(key) = key {
        head.push_str(&format!("Authorization: Bearer {key}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("send head");
    // A server may answer (413) before reading a big body; a failed body write is fine then.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read response");
    let text = String::from_utf8_lossy(&raw);
    let (head, payload) = text.split_once("\r\n\r\n").expect("a response head");
    let status: u16 = head.split_whitespace().nth(1).expect("status").parse().expect("number");
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    let payload = if chunked { dechunk(payload) } else { payload.to_owned() };
    let value = serde_json::from_str(&payload).unwrap_or(Value::String(payload));
    (status, head.to_owned(), value)
}

/// The value of header `name` (lower case) in a response head.
pub(crate) fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
    })
}

/// A `Transfer-Encoding: chunked` body's bytes (hyper sends bodies of unknown length so).
pub(crate) fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).expect("a chunk size");
        if size == 0 {
            break;
        }
        body.push_str(&after[..size]);
        rest = after[size..].strip_prefix("\r\n").expect("a chunk end");
    }
    body
}

/// Posts `body` and returns the raw response text, or `None` when the connection failed (the
/// server was killed).
fn post_raw(addr: SocketAddr, path: &str, key: &str, body: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: tvs\r\nConnection: close\r\nContent-Type: application/json\r\nAuthorization: Bearer {key}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    // A server may answer before reading all of the body; the answer is what counts.
    let _ = stream.write_all(body.as_bytes());
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    Some(raw)
}

pub(crate) fn create_tenant(addr: SocketAddr, id: &str, dims: usize) -> String {
    let (status, body) = call(
        addr,
        "POST",
        "/v1/tenants",
        Some(ADMIN),
        Some(&json!({"id": id, "dims": dims, "embedding_model": "none"}).to_string()),
    );
    assert_eq!(status, 201, "{body}");
    body["api_key"].as_str().expect("key").to_owned()
}

pub(crate) fn ingest(addr: SocketAddr, key: &str, docs: Value) -> (u16, Value) {
    call(
        addr,
        "POST",
        "/v1/documents",
        Some(key),
        Some(&json!({"documents": docs}).to_string()),
    )
}

#[test]
fn a_tenant_lives_through_create_ingest_search_get_delete_and_key_rotation() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(tmp.path(), &[], &[]);
    let addr = server.addr;
    assert_eq!(call(addr, "GET", "/healthz", None, None).0, 200);
    let (status, spec) = call(addr, "GET", "/openapi.json", None, None);
    assert_eq!(status, 200);
    for path in [
        "/v1/tenants",
        "/v1/documents",
        "/v1/search",
        "/v1/documents/{id}",
        "/v1/stats",
        "/v1/admin/pool",
    ] {
        assert!(spec["paths"][path].is_object(), "the spec describes {path}");
    }
    assert!(spec["components"]["schemas"]["SearchBody"].is_object());
    let key = create_tenant(addr, "alice", 4);
    let (status, body) = ingest(
        addr,
        &key,
        json!([
            {"id": "a", "text": "alpha", "metadata": {"kind": "x"}, "vector": [1, 0, 0, 0]},
            {"id": "b", "text": "beta", "metadata": {"kind": "y"}, "vector": [0, 1, 0, 0]},
            {"id": "c", "text": "gamma", "metadata": {"kind": "y"}, "vector": [0.7, 0.7, 0, 0]}
        ]),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ids"], json!(["a", "b", "c"]));
    let (status, body) = call(
        addr,
        "POST",
        "/v1/search",
        Some(&key),
        Some(r#"{"vector": [1, 0, 0, 0], "top_k": 2}"#),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["hits"][0]["id"], "a");
    assert_eq!(body["hits"][0]["metadata"]["kind"], "x");
    let (_, body) = call(
        addr,
        "POST",
        "/v1/search",
        Some(&key),
        Some(r#"{"vector": [1, 0, 0, 0], "filter": {"kind": "y"}}"#),
    );
    let ids: Vec<&str> = body["hits"]
        .as_array()
        .expect("hits")
        .iter()
        .map(|h| h["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["c", "b"]);
    let (status, body) = call(addr, "GET", "/v1/documents/b", Some(&key), None);
    assert_eq!((status, body["text"].as_str()), (200, Some("beta")));
    assert_eq!(call(addr, "DELETE", "/v1/documents/b", Some(&key), None).0, 200);
    assert_eq!(call(addr, "GET", "/v1/documents/b", Some(&key), None).0, 404);
    let (_, stats) = call(addr, "GET", "/v1/stats", Some(&key), None);
    assert_eq!(stats["count"], 2);
    let (_, list) = call(addr, "GET", "/v1/tenants", Some(ADMIN), None);
    assert_eq!(list["tenants"], json!(["alice"]));

    let (status, rotated) = call(addr, "POST", "/v1/tenants/alice/keys", Some(ADMIN), None);
    assert_eq!(status, 200);
    let new_key = rotated["api_key"].as_str().expect("key");
    assert_eq!(
        call(addr, "GET", "/v1/stats", Some(&key), None).0,
        401,
        "the old key is revoked"
    );
    assert_eq!(call(addr, "GET", "/v1/stats", Some(new_key), None).0, 200);

    let (status, metrics) = call(addr, "GET", "/metrics", None, None);
    let metrics = metrics.as_str().expect("prometheus text").to_owned();
    assert_eq!(status, 200);
    assert!(
        metrics.contains(r#"tvs_http_requests_total{route="/v1/search",status="200"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"tvs_http_requests_total{route="/v1/documents/{id}",status="404"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"tvs_http_request_duration_seconds_count{route="/v1/search"} 2"#),
        "{metrics}"
    );
    assert!(metrics.contains("tvs_pool_hit_rate"), "{metrics}");

    assert_eq!(call(addr, "DELETE", "/v1/tenants/alice", Some(ADMIN), None).0, 204);
    assert_eq!(
        call(addr, "GET", "/v1/stats", Some(new_key), None).0,
        401,
        "a deleted tenant's key is refused"
    );
    assert!(!tmp.path().join("alice").exists());
}

#[test]
fn one_tenants_key_never_reaches_another_tenants_documents() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(tmp.path(), &[], &[]);
    let addr = server.addr;
    let key_a = create_tenant(addr, "a", 4);
    let key_b = create_tenant(addr, "b", 4);
    ingest(
        addr,
        &key_a,
        json!([{"id": "secret", "text": "a's secret", "metadata": {"owner": "a"}, "vector": [1, 0, 0, 0]}]),
    );
    ingest(
        addr,
        &key_b,
        json!([{"id": "mine", "text": "b's own", "metadata": {"owner": "b"}, "vector": [0, 1, 0, 0]}]),
    );
    assert_eq!(call(addr, "GET", "/v1/documents/secret", Some(&key_b), None).0, 404);
    assert_eq!(call(addr, "DELETE", "/v1/documents/secret", Some(&key_b), None).0, 404);
    let (_, body) = call(
        addr,
        "POST",
        "/v1/search",
        Some(&key_b),
        Some(r#"{"vector": [1, 0, 0, 0], "top_k": 10, "filter": {"owner": "a"}}"#),
    );
    assert_eq!(body["hits"], json!([]));
    let (_, body) = call(
        addr,
        "POST",
        "/v1/documents/delete",
        Some(&key_b),
        Some(r#"{"filter": {"owner": "a"}, "ids": ["secret"]}"#),
    );
    assert_eq!(body["deleted"], 0);
    assert_eq!(
        call(addr, "GET", "/v1/documents/secret", Some(&key_a), None).0,
        200,
        "a's document is untouched"
    );
    // Admin routes refuse tenant keys; data routes refuse the admin key.
    assert_eq!(call(addr, "GET", "/v1/tenants", Some(&key_a), None).0, 403);
    assert_eq!(call(addr, "GET", "/v1/stats", Some(ADMIN), None).0, 401);
}

#[test]
fn bad_input_gets_a_4xx_with_the_reason_and_changes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(tmp.path(), &["--max-body-bytes", "200000"], &[]);
    let addr = server.addr;
    let key = create_tenant(addr, "t", 4);
    ingest(addr, &key, json!([{"id": "keep", "vector": [1, 0, 0, 0]}]));
    let big = json!({"documents": [{"id": "x", "text": "y".repeat(300_000), "vector": [1, 0, 0, 0]}]}).to_string();
    let fat_metadata =
        json!({"documents": [{"id": "x", "metadata": {"blob": "z".repeat(70_000)}, "vector": [1, 0, 0, 0]}]})
            .to_string();
    let long_id = "i".repeat(600);
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        ("POST", "/v1/documents", "{not json".into(), 400, "invalid_request"),
        (
            "POST",
            "/v1/documents",
            r#"{"documents": []}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/documents",
            r#"{"documents": [{"id": "n", "vector": [1, 2]}]}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/documents",
            r#"{"documents": [{"id": "n", "vector": [1e999, 0, 0, 0]}]}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/documents",
            r#"{"documents": [{"id": "n", "vector": [1, 0, 0, 0], "colour": 1}]}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/documents",
            r#"{"documents": [{"id": "n", "vector": [1, 0, 0, 0], "metadata": [1]}]}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/documents",
            format!(r#"{{"documents": [{{"id": "{long_id}", "vector": [1, 0, 0, 0]}}]}}"#),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/documents",
            r#"{"documents": [{"id": "n", "text": "needs an embedder"}]}"#.into(),
            400,
            "invalid_request",
        ),
        ("POST", "/v1/documents", big, 413, "body_too_large"),
        ("POST", "/v1/documents", fat_metadata, 400, "invalid_request"),
        (
            "POST",
            "/v1/search",
            r#"{"vector": [1, 0, 0, 0], "top_k": 0}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/search",
            r#"{"vector": [1, 0, 0, 0], "filter": {"a": {"$regex": "x"}}}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/search",
            r#"{"vector": [1, 0, 0]}"#.into(),
            400,
            "invalid_request",
        ),
        ("GET", "/v1/nope", String::new(), 404, "not_found"),
    ];
    for (method, path, body, status, code) in cases {
        let (got, reply) = call(addr, method, path, Some(&key), Some(&body));
        assert_eq!(got, status, "{path} {body:.80}: {reply}");
        assert_eq!(reply["error"]["code"], code, "{reply}");
        assert!(
            !reply["error"]["message"].as_str().unwrap_or_default().is_empty(),
            "{reply}"
        );
    }
    assert_eq!(call(addr, "GET", "/v1/stats", None, None).0, 401);
    assert_eq!(
        call(addr, "POST", "/v1/tenants", Some(ADMIN), Some(r#"{"id": "../evil"}"#)).0,
        400
    );
    let (_, stats) = call(addr, "GET", "/v1/stats", Some(&key), None);
    assert_eq!(stats["count"], 1, "nothing was written by the refused requests");
    assert_eq!(
        call(addr, "GET", "/healthz", None, None).0,
        200,
        "the server keeps serving"
    );
}

#[test]
fn every_acknowledged_write_survives_kill_9_of_the_server() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(tmp.path(), &[], &[]);
    let key = create_tenant(server.addr, "w", 4);
    let addr = server.addr;
    let writer = std::thread::spawn({
        let key = key.clone();
        move || {
            let mut acked = Vec::new();
            for n in 0..100_000u32 {
                let id = format!("w{n}");
                let body = json!({"documents": [{"id": id, "vector": [1.0, n as f32, 0.0, 1.0]}]}).to_string();
                match post_raw(addr, "/v1/documents", &key, &body) {
                    Some(raw) if raw.starts_with("HTTP/1.1 200") => {}
                    _ => break,
                }
                acked.push(id);
            }
            acked
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(1500));
    server.kill_9();
    let acked = writer.join().expect("writer");
    assert!(
        acked.len() > 10,
        "the writer made progress before the kill ({} acks)",
        acked.len()
    );
    let server = Server::start(tmp.path(), &[], &[]);
    for id in &acked {
        let (status, _) = call(server.addr, "GET", &format!("/v1/documents/{id}"), Some(&key), None);
        assert_eq!(status, 200, "{id} was acknowledged before the kill");
    }
}

#[test]
fn many_clients_over_more_tenants_than_the_pool_holds_see_no_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(tmp.path(), &[], &[("VECTOR_STORE_POOL_SIZE", "2")]);
    let addr = server.addr;
    let keys: Arc<Vec<String>> = Arc::new((0..6).map(|i| create_tenant(addr, &format!("t{i}"), 4)).collect());
    let clients: Vec<_> = (0..6usize)
        .map(|c| {
            let keys = keys.clone();
            std::thread::spawn(move || {
                let mut written = Vec::new();
                for n in 0..30usize {
                    let tenant = (c + n) % keys.len();
                    let id = format!("c{c}-{n}");
                    let (status, body) = ingest(
                        addr,
                        &keys[tenant],
                        json!([{"id": id, "vector": [1.0, c as f32, n as f32, 1.0]}]),
                    );
                    assert_eq!(status, 200, "{body}");
                    let (status, body) = call(
                        addr,
                        "POST",
                        "/v1/search",
                        Some(&keys[tenant]),
                        Some(r#"{"vector": [1, 0, 0, 1], "top_k": 3}"#),
                    );
                    assert_eq!(status, 200, "{body}");
                    written.push((tenant, id));
                }
                written
            })
        })
        .collect();
    let written: Vec<(usize, String)> = clients.into_iter().flat_map(|c| c.join().expect("client")).collect();
    for (tenant, id) in written {
        assert_eq!(
            call(addr, "GET", &format!("/v1/documents/{id}"), Some(&keys[tenant]), None).0,
            200,
            "{id}"
        );
    }
    let (_, pool) = call(addr, "GET", "/v1/admin/pool", Some(ADMIN), None);
    assert!(pool["evictions"].as_u64() > Some(0), "{pool}");
    assert!(pool["size"].as_u64() <= Some(2), "{pool}");
}

#[test]
fn a_saturated_server_answers_503_with_retry_after_and_loses_nothing_it_accepted() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(tmp.path(), &["--max-in-flight", "1"], &[]);
    let addr = server.addr;
    let key = Arc::new(create_tenant(addr, "busy", 384));
    let barrier = Arc::new(std::sync::Barrier::new(8));
    let clients: Vec<_> = (0..8usize)
        .map(|c| {
            let (key, barrier) = (key.clone(), barrier.clone());
            std::thread::spawn(move || {
                let docs: Vec<Value> = (0..500)
                    .map(|n| json!({"id": format!("c{c}-{n}"), "vector": (0..384).map(|i| ((i + n + c) % 7) as f32 + 1.0).collect::<Vec<f32>>()}))
                    .collect();
                let body = json!({"documents": docs}).to_string();
                barrier.wait();
                let raw = post_raw(addr, "/v1/documents", &key, &body).expect("the server answers");
                (c, raw)
            })
        })
        .collect();
    let results: Vec<(usize, String)> = clients.into_iter().map(|t| t.join().expect("client")).collect();
    let busy: Vec<&String> = results
        .iter()
        .map(|(_, r)| r)
        .filter(|r| r.starts_with("HTTP/1.1 503"))
        .collect();
    assert!(
        !busy.is_empty(),
        "eight simultaneous 500-document ingests with one slot: some must be refused"
    );
    assert!(
        busy.iter().all(|r| r.to_ascii_lowercase().contains("retry-after: 1")),
        "{busy:?}"
    );
    let accepted: Vec<usize> = results
        .iter()
        .filter(|(_, r)| r.starts_with("HTTP/1.1 200"))
        .map(|(c, _)| *c)
        .collect();
    let (_, stats) = call(addr, "GET", "/v1/stats", Some(&key), None);
    assert_eq!(
        stats["count"],
        json!(accepted.len() * 500),
        "exactly the accepted batches are stored"
    );
}

#[test]
fn sigterm_finishes_in_flight_work_and_flushes_every_open_store() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(tmp.path(), &[], &[]);
    let key = create_tenant(server.addr, "t", 4);
    let docs: Vec<Value> = (0..100)
        .map(|n| json!({"id": format!("d{n}"), "vector": [1.0, n as f32, 0.0, 1.0]}))
        .collect();
    assert_eq!(ingest(server.addr, &key, Value::Array(docs)).0, 200);
    assert!(
        !tmp.path().join("t/vector_store/manifest.json").exists(),
        "no snapshot before shutdown"
    );
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = server.child.try_wait().expect("try_wait") {
            break exit;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit}");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("t/vector_store/manifest.json")).expect("manifest"))
            .expect("json");
    assert_eq!(manifest["documents"], 100, "the open store was flushed on shutdown");
}

/// A small OpenAI-compatible `/v1/embeddings` server on loopback. The request's model picks
/// the behaviour: `letters` embeds each text as its letter counts in four groups (so texts about
/// the same letters are near), `broken` answers 500, `short` answers 3-dimensional vectors,
/// `flaky` answers 429 twice before each success.
fn embeddings_server() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut flaky_calls = 0u32;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let line = line.trim_end().to_ascii_lowercase();
                if line.is_empty() {
                    break;
                }
                if let Some(value) = line.strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let request: Value = serde_json::from_slice(&body).unwrap_or_default();
            let texts: Vec<String> = request["input"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect();
            let flaky = request["model"] == "flaky";
            if flaky {
                flaky_calls += 1;
            }
            let (status, reply) = match request["model"].as_str() {
                // Rate-limited twice, then served: the client's backoff must ride it out.
                Some("flaky") if !flaky_calls.is_multiple_of(3) => {
                    ("429 Too Many Requests", json!({"error": {"message": "slow down"}}))
                }
                Some("broken") => ("500 Internal Server Error", json!({"error": {"message": "down"}})),
                Some(model) => {
                    let dims = if model == "short" { 3 } else { 4 };
                    let data: Vec<Value> = texts
                        .iter()
                        .enumerate()
                        .map(|(index, text)| {
                            let mut v = vec![1.0f32; dims];
                            for c in text.to_ascii_lowercase().chars().filter(char::is_ascii_lowercase) {
                                v[((c as u8 - b'a') as usize * dims) / 26] += 1.0;
                            }
                            json!({"object": "embedding", "index": index, "embedding": v})
                        })
                        .collect();
                    ("200 OK", json!({"object": "list", "data": data, "model": model}))
                }
                None => ("400 Bad Request", json!({"error": {"message": "no model"}})),
            };
            let payload = reply.to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
                payload.len()
            );
        }
    });
    addr
}

#[test]
fn texts_are_chunked_and_embedded_through_an_openai_compatible_endpoint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let endpoint = format!("http://{}", embeddings_server());
    let server = Server::start(tmp.path(), &[], &[("TVS_OPENAI_BASE_URL", &endpoint)]);
    let addr = server.addr;
    let tenant = |id: &str, model: &str| -> String {
        let body = json!({"id": id, "dims": 4, "metric": "cos", "embedding_model": model}).to_string();
        let (status, reply) = call(addr, "POST", "/v1/tenants", Some(ADMIN), Some(&body));
        assert_eq!(status, 201, "{reply}");
        reply["api_key"].as_str().expect("key").to_owned()
    };
    let key = tenant("texts", "openai:letters");
    let doc = "Aaaa abba baba. Cab dab fab.\n\nZzz yyy xxx. Www vvv uuu sss.";
    let body = json!({"documents": [{"id": "doc", "text": doc, "metadata": {"source": "t"}}], "chunk": {"size": 30, "overlap": 0}});
    let (status, reply) = call(addr, "POST", "/v1/documents", Some(&key), Some(&body.to_string()));
    assert_eq!(status, 200, "{reply}");
    let ids: Vec<&str> = reply["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_str().expect("id"))
        .collect();
    assert!(
        ids.len() >= 2 && ids.iter().enumerate().all(|(n, id)| *id == format!("doc#{n}")),
        "{ids:?}"
    );
    assert_eq!(reply["embedded"], ids.len());
    let (_, first) = call(addr, "GET", "/v1/documents/doc%230", Some(&key), None);
    assert_eq!(
        (
            first["metadata"]["chunk"].as_u64(),
            first["metadata"]["parent_id"].as_str()
        ),
        (Some(0), Some("doc"))
    );
    assert_eq!(
        first["metadata"]["source"], "t",
        "the document's metadata is carried to every chunk"
    );
    // A text query is embedded by the same model: letters at the end of the alphabet find the
    // chunk made of them.
    let (status, hits) = call(
        addr,
        "POST",
        "/v1/search",
        Some(&key),
        Some(r#"{"query": "zzz yyy www", "top_k": 1}"#),
    );
    assert_eq!(status, 200, "{hits}");
    assert!(
        hits["hits"][0]["text"].as_str().expect("text").contains("Zzz"),
        "{hits}"
    );

    // Failure modes of the endpoint: refused clearly, nothing stored.
    for (model, needle) in [("openai:broken", "HTTP 500"), ("openai:short", "3 dimensions")] {
        let key = tenant(model.trim_start_matches("openai:"), model);
        let (status, reply) = call(
            addr,
            "POST",
            "/v1/documents",
            Some(&key),
            Some(r#"{"documents": [{"text": "hello"}]}"#),
        );
        assert_eq!(status, 500, "{reply}");
        assert!(
            reply["error"]["message"].as_str().expect("message").contains(needle),
            "{reply}"
        );
        let (_, stats) = call(addr, "GET", "/v1/stats", Some(&key), None);
        assert_eq!(stats["count"], 0);
    }
    // Rate limits are retried with backoff and the write goes through.
    let key = tenant("flaky", "openai:flaky");
    let (status, reply) = call(
        addr,
        "POST",
        "/v1/documents",
        Some(&key),
        Some(r#"{"documents": [{"id": "x", "text": "abc"}]}"#),
    );
    assert_eq!((status, reply["embedded"].as_u64()), (200, Some(1)), "{reply}");

    // An endpoint that is not there: a clear error after the retries, nothing stored.
    let down = Server::start(tmp.path(), &[], &[("TVS_OPENAI_BASE_URL", "http://127.0.0.1:9")]);
    let key = {
        let body = json!({"id": "down", "dims": 4, "embedding_model": "openai:letters"}).to_string();
        let (_, reply) = call(down.addr, "POST", "/v1/tenants", Some(ADMIN), Some(&body));
        reply["api_key"].as_str().expect("key").to_owned()
    };
    let (status, reply) = call(
        down.addr,
        "POST",
        "/v1/documents",
        Some(&key),
        Some(r#"{"documents": [{"text": "hello"}]}"#),
    );
    assert_eq!(status, 500, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .expect("message")
            .contains("after 4 attempts"),
        "{reply}"
    );
}

#[test]
fn the_local_model_embeds_searches_and_serves_v1_embeddings_like_openai() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(tmp.path(), &[], &[]);
    let addr = server.addr;
    // No dims and no model: the tenant gets all-MiniLM-L6-v2 and its 384 dimensions.
    let (status, reply) = call(addr, "POST", "/v1/tenants", Some(ADMIN), Some(r#"{"id": "kb"}"#));
    assert_eq!(status, 201, "{reply}");
    let key = reply["api_key"].as_str().expect("key").to_owned();
    let docs = json!([
        {"id": "recover", "text": "What are the steps to recover my account if I forgot my login credentials?"},
        {"id": "oven", "text": "I reset the oven timer and taped the wifi password to the fridge."},
        {"id": "rates", "text": "The central bank increased the cost of borrowing."},
        {"id": "river", "text": "We sat on the river bank at a high rate of speed."},
    ]);
    let (status, reply) = ingest(addr, &key, docs);
    assert_eq!((status, reply["embedded"].as_u64()), (200, Some(4)), "{reply}");
    let (_, stats) = call(addr, "GET", "/v1/stats", Some(&key), None);
    assert_eq!(
        (stats["dims"].as_u64(), stats["embedding_model"].as_str()),
        (Some(384), Some("all-MiniLM-L6-v2"))
    );
    // A paraphrase ranks above the text that shares the query's words.
    for (query, want) in [
        ("How do I reset my password?", "recover"),
        ("The bank raised interest rates", "rates"),
    ] {
        let body = json!({"query": query, "top_k": 2}).to_string();
        let (status, hits) = call(addr, "POST", "/v1/search", Some(&key), Some(&body));
        assert_eq!(status, 200, "{hits}");
        assert_eq!(hits["hits"][0]["id"], want, "{query}: {hits}");
    }

    // POST /v1/embeddings answers in OpenAI's shape with the vectors sentence-transformers makes.
    let (sentences, reference) = crate::support::minilm_reference();
    let body = json!({"model": "all-MiniLM-L6-v2", "input": &sentences[..3]}).to_string();
    let (status, reply) = call(addr, "POST", "/v1/embeddings", Some(&key), Some(&body));
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        (reply["object"].as_str(), reply["model"].as_str()),
        (Some("list"), Some("all-MiniLM-L6-v2"))
    );
    assert!(reply["usage"]["prompt_tokens"].as_u64().expect("usage") > 3);
    for (i, want) in reference[..3].iter().enumerate() {
        let item = &reply["data"][i];
        assert_eq!(
            (item["object"].as_str(), item["index"].as_u64()),
            (Some("embedding"), Some(i as u64))
        );
        let got: Vec<f32> = serde_json::from_value(item["embedding"].clone()).expect("floats");
        assert!(crate::support::cosine(&got, want) >= 0.9999, "{}", sentences[i]);
    }
    // A single string is accepted too; the model may be omitted.
    let (status, reply) = call(addr, "POST", "/v1/embeddings", Some(&key), Some(r#"{"input": "hi"}"#));
    assert_eq!(
        (status, reply["data"][0]["embedding"].as_array().map(Vec::len)),
        (200, Some(384))
    );

    // Requests that would mix models or cannot be served are refused with the reason.
    let none_key = create_tenant(addr, "vectors", 4);
    for (who, body, needle) in [
        (
            &key,
            r#"{"model": "text-embedding-3-small", "input": ["x"]}"#,
            "vectors of two models do not mix",
        ),
        (&key, r#"{"input": [[200000]]}"#, "200000 is not a cl100k_base token id"),
        (&key, r#"{"input": [[4294967296]]}"#, "not a cl100k_base token id"),
        (&key, r#"{"input": [[1, -2]]}"#, "whole numbers"),
        (&key, r#"{"input": [{"text": "x"}]}"#, "input[0] must be a text"),
        (&key, r#"{"input": []}"#, "empty"),
        (&key, r#"{"input": "x", "dimensions": 256}"#, "384"),
        (
            &key,
            r#"{"input": "x", "encoding_format": "int8"}"#,
            "\"float\" or \"base64\"",
        ),
        (&none_key, r#"{"input": "x"}"#, "no embedding model"),
    ] {
        let (status, reply) = call(addr, "POST", "/v1/embeddings", Some(who), Some(body));
        assert_eq!(status, 400, "{body}: {reply}");
        assert!(
            reply["error"]["message"].as_str().expect("message").contains(needle),
            "{body}: {reply}"
        );
    }
    // A text query against a tenant that stores client vectors says so.
    let (status, reply) = call(addr, "POST", "/v1/search", Some(&none_key), Some(r#"{"query": "x"}"#));
    assert_eq!(status, 400, "{reply}");
}
