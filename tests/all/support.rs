//! Shared helpers: temp stores, deterministic documents, the `tvs` binary.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tvs_store::config::{Metric, ScalarKind, StoreConfig};
use tvs_store::store::{NewDocument, TenantStore};
use tvs_store::tenant::StoreDir;
use tvs_synth::EmbeddingLike;

/// A store config with the defaults a new tenant gets.
pub fn config(dims: usize, metric: Metric) -> StoreConfig {
    StoreConfig::new(dims, metric, ScalarKind::default(), "none")
}

/// A fresh store in a temp dir; keep the `TempDir` alive as long as the store.
pub fn temp_store(config: &StoreConfig) -> (tempfile::TempDir, StoreDir, Arc<TenantStore>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store_dir = StoreDir::new(dir.path().join("store"));
    let store = TenantStore::create(&store_dir, config).expect("create store");
    (dir, store_dir, store)
}

pub fn obj(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("expected an object, got {other}"),
    }
}

/// `n` documents `doc-{i}` with embedding-like vectors and a little metadata.
pub fn documents(n: usize, dims: usize, seed: u64) -> Vec<NewDocument> {
    let mut generator = EmbeddingLike::new(dims, seed);
    (0..n)
        .map(|i| NewDocument {
            id: Some(format!("doc-{i}")),
            text: format!("text of document {i}"),
            metadata: obj(json!({"i": i, "parity": if i % 2 == 0 { "even" } else { "odd" }, "bucket": i % 10})),
            vector: generator.next_vector(),
        })
        .collect()
}

/// Runs the `tvs` binary with `args` in `cwd`, with a clean tvs environment plus `env`.
pub fn tvs(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tvs"));
    cmd.current_dir(cwd).args(args);
    for var in [
        "TVS_DATA_DIR",
        "VECTOR_STORE_FOLDER",
        "VECTOR_STORE_POOL_SIZE",
        "VECTOR_STORE_TTL_SECONDS",
        "DEFAULT_TOP_K",
        "EMBEDDING_MODEL",
        "TVS_LOG",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run tvs")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exact top-k ids by brute force, the reference every index is checked against.
pub fn brute_force(docs: &[(String, Vec<f32>)], query: &[f32], metric: Metric, k: usize) -> Vec<String> {
    let mut scored: Vec<(f32, &String)> = docs
        .iter()
        .map(|(id, v)| (tvs_store::vectors::distance(metric, query, v), id))
        .collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1)));
    scored.into_iter().take(k).map(|(_, id)| id.clone()).collect()
}

/// The local embedding model's directory (`TVS_MODEL_DIR` or the user cache), fetched once per
/// test run if missing, so `cargo test` works on a fresh machine like `tvs serve` does.
pub fn local_model() -> &'static Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tvs_embed::model::model_dir();
        tvs_embed::model::ensure(&dir, &mut |line| eprintln!("{line}")).expect("fetching the local model");
        dir
    })
}

/// The committed sentence-transformers reference: (sentences, vectors).
pub fn minilm_reference() -> (Vec<String>, Vec<Vec<f32>>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/minilm_reference.json");
    let raw = std::fs::read_to_string(&path).expect("reference fixture");
    let value: Value = serde_json::from_str(&raw).expect("fixture JSON");
    let sentences = serde_json::from_value(value["sentences"].clone()).expect("sentences");
    let vectors = serde_json::from_value(value["vectors"].clone()).expect("vectors");
    (sentences, vectors)
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

/// A Python with the LangChain stack of `tests/langchain/requirements.txt`, in a venv under
/// `target/` made on first use (so `cargo test` needs no set-up step beyond Python with pip).
pub fn langchain_python() -> &'static Path {
    static PYTHON: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PYTHON.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let requirements = root.join("tests/langchain/requirements.txt");
        let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("langchain-venv");
        let python = venv.join("bin/python");
        // The marker holds the requirements it was made from: a changed pin rebuilds the venv.
        let marker = venv.join("tvs-requirements.txt");
        let wanted = std::fs::read_to_string(&requirements).expect("requirements");
        if std::fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str()) {
            return python;
        }
        let _ = std::fs::remove_dir_all(&venv);
        let run = |cmd: &mut Command| {
            let out = cmd.output().expect("run python");
            assert!(
                out.status.success(),
                "{cmd:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv));
        run(Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&requirements));
        std::fs::write(&marker, wanted).expect("marker");
        python
    })
}
