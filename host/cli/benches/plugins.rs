//! Tenant plugin costs, beside the built-in guest in the same run: a fresh plugin instance +
//! call + drop (Rust; and Python and JavaScript when their builds are there), compile (upload)
//! time per language, and built-in search latency with and without another tenant flooding its
//! plugin. Prints a table; `cargo bench -p tvs --bench plugins`.
//!
//! The Python and JavaScript components are the examples the tests build; run
//! `cargo test -p tvs --test all plugins::the_` first (it makes the venv and npm tools under
//! `target/`), or their rows say they were skipped and why.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tvs_runtime::plugins::{Compiler, PluginLimits, Plugins};
use tvs_runtime::{IngestDocument, Runtime, RuntimeLimits, SearchRequest, guest_paths};
use tvs_store::config::{Metric, ScalarKind, StoreConfig};
use tvs_store::store::{NewDocument, TenantStore};
use tvs_store::tenant::StoreDir;
use tvs_synth::EmbeddingLike;

const ROUNDS: usize = 2000;

#[path = "common/timing.rs"]
mod timing;
use timing::time;

fn us(d: (Duration, Duration)) -> String {
    format!("{:.1} µs / {:.1} µs", d.0.as_secs_f64() * 1e6, d.1.as_secs_f64() * 1e6)
}

fn store(root: &Path, name: &str, vectors: &mut EmbeddingLike) -> Arc<TenantStore> {
    let store = TenantStore::create(
        &StoreDir::new(root.join(name)),
        &StoreConfig::new(384, Metric::Cos, ScalarKind::default(), "none"),
    )
    .unwrap();
    let docs = (0..1000)
        .map(|i| NewDocument {
            id: Some(format!("d{i}")),
            text: format!("document {i}"),
            vector: vectors.next_vector(),
            ..Default::default()
        })
        .collect();
    store.upsert(docs).unwrap();
    store
}

/// The Python example built with the tests' componentize-py, if that venv exists.
fn python_component(out: &Path) -> Result<PathBuf, String> {
    let tool = Path::new(env!("CARGO_TARGET_TMPDIR")).join("langchain-venv/bin/componentize-py");
    if !tool.is_file() {
        return Err("no componentize-py under target/ (run the plugin tests first)".into());
    }
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/plugins/python-redact");
    let wasm = out.join("redact.wasm");
    let status = Command::new(tool)
        .current_dir(example)
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
        .status()
        .map_err(|e| e.to_string())?;
    if status.success() {
        Ok(wasm)
    } else {
        Err("componentize-py failed".into())
    }
}

/// The JavaScript example built with the tests' componentize-js, if it was installed.
fn javascript_component(out: &Path) -> Result<PathBuf, String> {
    let tool = Path::new(env!("CARGO_TARGET_TMPDIR")).join("js-tools/node_modules/.bin/componentize-js");
    if !tool.is_file() {
        return Err("no componentize-js under target/ (run the plugin tests first)".into());
    }
    let build = out.join("js");
    tvs_runtime::plugins::write_plugin_wit(&build.join("wit")).unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/plugins/js-related/related.js");
    std::fs::copy(example, build.join("related.js")).unwrap();
    let status = Command::new(tool)
        .current_dir(&build)
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
        .status()
        .map_err(|e| e.to_string())?;
    if status.success() {
        Ok(build.join("related.wasm"))
    } else {
        Err("componentize-js failed".into())
    }
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let mut vectors = EmbeddingLike::new(384, 1);
    let alice = store(tmp.path(), "alice", &mut vectors);
    let mallory = store(tmp.path(), "mallory", &mut vectors);
    let query = vectors.next_vector();
    let mut rows: Vec<(String, String)> = Vec::new();

    let runtime = Runtime::new(RuntimeLimits::default()).unwrap();
    let plugins = Arc::new(Plugins::new(PluginLimits::default(), Compiler::InProcess).unwrap());

    // The built-in guest: a request refused inside the guest before any host call.
    let refused = SearchRequest {
        query: None,
        vector: Some(query.clone()),
        top_k: 0,
        filter: None,
        mmr: None,
    };
    let builtin = time(ROUNDS, || {
        runtime.search(alice.clone(), &refused).unwrap_err();
    });
    rows.push((
        "built-in guest: fresh instance + call + drop, median / p99".into(),
        us(builtin),
    ));

    let rust = std::fs::read(guest_paths::PLUGIN_PROBE).unwrap();
    let started = Instant::now();
    plugins.upload(alice.dir(), "probe", &rust).unwrap();
    let compile = started.elapsed();
    let rust_call = time(ROUNDS, || {
        plugins
            .call_function(alice.clone(), "probe", r#"{"op": "echo", "value": 1}"#)
            .0
            .unwrap();
    });
    rows.push((
        format!("Rust function plugin ({} KB): upload (compile)", rust.len() / 1024),
        format!("{:.0} ms", compile.as_secs_f64() * 1e3),
    ));
    rows.push((
        "Rust function plugin: fresh instance + call + drop, median / p99".into(),
        us(rust_call),
    ));
    rows.push((
        "  ratio to the built-in guest (target ≤ 2×), median".into(),
        format!("{:.2}×", rust_call.0.as_secs_f64() / builtin.0.as_secs_f64()),
    ));

    match python_component(tmp.path()) {
        Ok(path) => {
            let bytes = std::fs::read(path).unwrap();
            let started = Instant::now();
            plugins.upload(alice.dir(), "redact", &bytes).unwrap();
            let compile = started.elapsed();
            let docs = vec![IngestDocument {
                id: Some("x".into()),
                text: Some("mail bob@example.com".into()),
                metadata: None,
                vector: None,
            }];
            let call = time(ROUNDS / 10, || {
                plugins.call_transform(alice.clone(), "redact", &docs).0.unwrap();
            });
            rows.push((
                format!(
                    "Python transform ({:.1} MB): upload (compile)",
                    bytes.len() as f64 / 1e6
                ),
                format!("{:.1} s", compile.as_secs_f64()),
            ));
            rows.push((
                "Python transform: fresh instance + call + drop, median / p99".into(),
                us(call),
            ));
        }
        Err(why) => rows.push(("Python plugin".into(), format!("skipped: {why}"))),
    }
    match javascript_component(tmp.path()) {
        Ok(path) => {
            let bytes = std::fs::read(path).unwrap();
            let started = Instant::now();
            plugins.upload(alice.dir(), "related", &bytes).unwrap();
            let compile = started.elapsed();
            let call = time(ROUNDS / 10, || {
                plugins
                    .call_function(alice.clone(), "related", r#"{"id": "d1", "k": 3}"#)
                    .0
                    .unwrap();
            });
            rows.push((
                format!(
                    "JavaScript function ({:.1} MB): upload (compile)",
                    bytes.len() as f64 / 1e6
                ),
                format!("{:.1} s", compile.as_secs_f64()),
            ));
            rows.push((
                "JavaScript function: fresh instance + call + drop, median / p99".into(),
                us(call),
            ));
        }
        Err(why) => rows.push(("JavaScript plugin".into(), format!("skipped: {why}"))),
    }

    // Another tenant floods its plugin with calls that spin until their deadline, from as many
    // threads as there are plugin slots; alice's searches go through the built-in guest.
    let search = SearchRequest {
        top_k: 10,
        ..refused.clone()
    };
    let quiet = time(ROUNDS, || {
        runtime.search(alice.clone(), &search).unwrap();
    });
    plugins.upload(mallory.dir(), "probe", &rust).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flood_threads = PluginLimits::default().max_instances as usize;
    let flooders: Vec<_> = (0..flood_threads)
        .map(|_| {
            let (plugins, mallory, stop) = (plugins.clone(), mallory.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut calls = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let _ = plugins.call_function(mallory.clone(), "probe", r#"{"op": "loop"}"#);
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let flooded = time(ROUNDS, || {
        runtime.search(alice.clone(), &search).unwrap();
    });
    stop.store(true, Ordering::Relaxed);
    let calls: u64 = flooders.into_iter().map(|t| t.join().unwrap()).sum();
    rows.push((
        "built-in search k=10 of 1,000 docs, quiet, median / p99".into(),
        us(quiet),
    ));
    rows.push((
        format!("same while another tenant floods its plugin ({flood_threads} threads, {calls} spinning calls)"),
        us(flooded),
    ));

    let width = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
    println!("\n{:width$}  value", "measure");
    println!("{}  -----", "-".repeat(width));
    for (k, v) in rows {
        println!("{k:width$}  {v}");
    }
}
