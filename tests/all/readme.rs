//! The README is a contract: its first code block's serve command, run exactly as written,
//! starts the service, and the requests of "A session with curl", run as written against it,
//! each get the answer a newcomer expects. Editing the README so that either breaks fails here.
//!
//! The serve command is a release build (`cargo run --release`), so the first run of this test
//! on a clean checkout builds the release binary (reniced, so the other tests keep their CPU).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// The lines of the first fenced code block after `heading` (the file's start when `None`).
fn code_block(readme: &str, heading: Option<&str>) -> Vec<String> {
    let mut lines = readme.lines();
    if let Some(heading) = heading {
        lines
            .by_ref()
            .find(|line| line.trim() == heading)
            .unwrap_or_else(|| panic!("README.md has no heading {heading:?}"));
    }
    lines
        .by_ref()
        .find(|line| line.starts_with("```"))
        .expect("a code block");
    lines
        .take_while(|line| !line.starts_with("```"))
        .map(str::to_owned)
        .collect()
}

/// A shell line without its trailing `# comment`.
fn command_of(line: &str) -> &str {
    line.split(" #").next().unwrap_or(line).trim()
}

/// `bash -c line` in its own process group (cargo and the server under it go with it), at the
/// lowest priority.
struct Shell(Child);

impl Drop for Shell {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let _ = self.0.wait();
    }
}

/// One request the session made: its arguments and the response curl saw.
#[derive(Debug)]
struct Exchange {
    method: String,
    path: String,
    bearer: Option<String>,
    body: Option<Value>,
    status: u16,
    answer: Value,
}

impl Exchange {
    fn read(dir: &Path, cwd: &Path) -> Exchange {
        let args: Vec<String> = std::fs::read_to_string(dir.join("args"))
            .expect("args")
            .split_terminator('\0')
            .map(str::to_owned)
            .collect();
        let after = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        let url = args
            .iter()
            .find(|a| a.contains("localhost:"))
            .unwrap_or_else(|| panic!("a request without a URL: {args:?}"));
        let path = url[url.find('/').expect("a path in the URL")..].to_owned();
        let body = after("-d").map(|data| {
            let text = match data.strip_prefix('@') {
                Some(file) => std::fs::read_to_string(cwd.join(file)).expect("the body file"),
                None => data,
            };
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("the README sends bad JSON to {path}: {e}"))
        });
        let method = after("-X").unwrap_or_else(|| if body.is_some() { "POST" } else { "GET" }.to_owned());
        let bearer = args
            .iter()
            .find_map(|a| a.strip_prefix("Authorization: Bearer "))
            .map(str::to_owned);
        let head = std::fs::read_to_string(dir.join("head")).unwrap_or_default();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{method} {path}: no response ({head:?})"));
        let raw = std::fs::read_to_string(dir.join("body")).unwrap_or_default();
        let answer = serde_json::from_str(&raw).unwrap_or(Value::String(raw));
        Exchange {
            method,
            path,
            bearer,
            body,
            status,
            answer,
        }
    }
}

/// Checks a filter of equalities (`{"field": value}`) on a hit's metadata.
fn satisfies(metadata: &Value, filter: &Value) -> bool {
    filter.as_object().is_none_or(|fields| {
        fields
            .iter()
            .all(|(field, wanted)| wanted.is_object() || &metadata[field] == wanted)
    })
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() >= 4)
        .map(str::to_lowercase)
        .collect()
}

#[test]
fn the_readmes_serve_command_and_curl_session_work_as_written() {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");

    // The front door: two commands, the first serves, the second is what CI runs.
    let commands: Vec<String> = code_block(&readme, None)
        .iter()
        .map(|l| command_of(l).to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(
        commands.len(),
        2,
        "the README opens with exactly two commands: {commands:?}"
    );
    let serve = commands.iter().find(|c| c.contains(" serve")).expect("a serve command");
    let test = commands.iter().find(|c| *c != serve).expect("a test command");
    let test_cargo = test.rsplit("&& ").next().expect("the test command");
    let ci = std::fs::read_to_string(root.join(".ci/run")).expect(".ci/run");
    assert!(
        ci.lines().any(|line| line.trim() == test_cargo),
        ".ci/run must run the README's test command {test_cargo:?}"
    );
    assert!(
        readme.lines().count() <= 150,
        "the README is a front door of at most 150 lines; the reference lives in docs/"
    );

    // The model's files are fetched once for the whole test run, not by this server too.
    crate::support::local_model();
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("user_data");
    let stderr = std::fs::File::create(dir.path().join("serve.log")).expect("log");
    let mut child = Command::new("nice");
    child
        .args(["-n", "19", "bash", "-c", serve])
        .current_dir(&root)
        .env("TVS_DATA_DIR", &data)
        .env("TVS_ADDR", "127.0.0.1:0")
        .env_remove("TVS_ADMIN_KEY")
        .env_remove("VECTOR_STORE_POOL_SIZE")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .process_group(0);
    let mut shell = Shell(child.spawn().expect("run the serve command"));
    let mut line = String::new();
    BufReader::new(shell.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read the server's first line");
    let log = || std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
    let addr = line.trim().strip_prefix("listening on http://").unwrap_or_else(|| {
        let log = log();
        let tail: String = log
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        panic!("the README's serve command {serve:?} did not start the service: {line:?}\n{tail}")
    });
    let addr: std::net::SocketAddr = addr.parse().expect("address");
    assert_eq!(crate::http::call(addr, "GET", "/healthz", None, None).0, 200);

    // The session runs from a directory holding `user_data/` and the repository's examples, as
    // a second terminal in the checkout would, against the port this server took.
    std::os::unix::fs::symlink(root.join("examples"), dir.path().join("examples")).expect("examples");
    let session = code_block(&readme, Some("## A session with curl")).join("\n");
    let requests = session.matches("curl ").count();
    let session = session.replace("localhost:8080", &format!("localhost:{}", addr.port()));
    let exchanges = dir.path().join("exchanges");
    std::fs::create_dir(&exchanges).expect("exchanges dir");
    // Each curl call also leaves its arguments, status line and body in a directory of its own,
    // named by the time it started, so the answers can be checked in order.
    let recorder = format!(
        r#"curl() {{
    local d; d="{}/$(date +%s%N)"; mkdir "$d"
    printf '%s\0' "$@" > "$d/args"
    command curl -D "$d/head" "$@" | tee "$d/body"
}}
"#,
        exchanges.display()
    );
    let out = Command::new("bash")
        .args(["-c", &format!("{recorder}{session}")])
        .current_dir(dir.path())
        .env_remove("TVS_ADMIN_KEY")
        .output()
        .expect("run the session");
    assert!(
        out.status.success(),
        "the curl session failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        log()
    );

    let mut names: Vec<PathBuf> = std::fs::read_dir(&exchanges)
        .expect("exchanges")
        .map(|e| e.expect("entry").path())
        .collect();
    names.sort();
    let exchanges: Vec<Exchange> = names.iter().map(|d| Exchange::read(d, dir.path())).collect();
    assert_eq!(
        exchanges.len(),
        requests,
        "every curl of the session ran: {exchanges:#?}"
    );

    // What each answer must be, as a newcomer reading the README expects it.
    let mut stored: HashMap<String, usize> = HashMap::new();
    let mut checked = HashMap::<&str, usize>::new();
    for ex in &exchanges {
        let what = format!("{} {} answered {} {}", ex.method, ex.path, ex.status, ex.answer);
        assert!((200..300).contains(&ex.status), "{what}");
        let key = ex.bearer.clone().unwrap_or_default();
        let body = ex.body.clone().unwrap_or(Value::Null);
        match (ex.method.as_str(), ex.path.as_str()) {
            ("POST", "/v1/tenants") => {
                assert_eq!(ex.status, 201, "{what}");
                assert_eq!(ex.answer["id"], body["id"], "{what}");
                let api_key = ex.answer["api_key"].as_str().expect("an api_key");
                assert!(
                    api_key.starts_with(&format!("tvs.{}.", body["id"].as_str().unwrap_or_default())),
                    "{what}"
                );
            }
            ("POST", "/v1/documents") => {
                let sent = body["documents"].as_array().expect("documents").len();
                let ids = ex.answer["ids"].as_array().expect("ids");
                assert_eq!(ids.len(), sent, "{what}");
                *stored.entry(key).or_default() += sent;
            }
            ("POST", "/v1/search") => {
                let hits = ex.answer["hits"].as_array().expect("hits");
                let top_k = body["top_k"].as_u64().unwrap_or(5) as usize;
                assert!(!hits.is_empty() && hits.len() <= top_k, "{what}");
                assert!(
                    hits.len() == top_k.min(stored[&key]) || body.get("filter").is_some(),
                    "{what}"
                );
                let scores: Vec<f64> = hits.iter().map(|h| h["score"].as_f64().expect("score")).collect();
                assert!(scores.windows(2).all(|w| w[0] >= w[1]), "hits best first: {what}");
                for hit in hits {
                    assert!(
                        satisfies(&hit["metadata"], &body["filter"]),
                        "a hit outside the filter: {what}"
                    );
                }
                if let Some(query) = body["query"].as_str() {
                    let top = hits[0]["text"].as_str().expect("text");
                    assert!(
                        words(query).iter().any(|w| words(top).contains(w)),
                        "the best hit for {query:?} shares no word with it: {what}"
                    );
                }
            }
            ("GET", "/v1/stats") => {
                assert_eq!(ex.answer["count"].as_u64(), Some(stored[&key] as u64), "{what}");
            }
            ("POST", "/v1/embeddings") => {
                let inputs = body["input"].as_array().map_or(1, Vec::len);
                let data = ex.answer["data"].as_array().expect("data");
                assert_eq!(data.len(), inputs, "{what}");
                for item in data {
                    let v: Vec<f64> = serde_json::from_value(item["embedding"].clone()).expect("floats");
                    assert_eq!(v.len(), 384, "{what}");
                    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
                    assert!((norm - 1.0).abs() < 1e-3, "a unit vector: {what}");
                }
            }
            _ => panic!("the session makes a request this test does not know how to check: {what}"),
        }
        *checked
            .entry(match ex.path.as_str() {
                p if p.starts_with("/v1/tenants") => "tenants",
                p if p.starts_with("/v1/documents") => "documents",
                "/v1/search" => "search",
                "/v1/stats" => "stats",
                _ => "embeddings",
            })
            .or_default() += 1;
    }
    for route in ["tenants", "documents", "search", "stats", "embeddings"] {
        assert!(checked.contains_key(route), "the session shows {route}: {checked:?}");
    }
}
