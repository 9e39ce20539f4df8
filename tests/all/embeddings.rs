//! The local all-MiniLM-L6-v2 model: its vectors match sentence-transformers' (a committed
//! fixture), texts are searchable from the CLI with no vectors supplied, and a missing or
//! damaged model is an error that names the command fixing it, with nothing written.

use serde_json::Value;
use tvs_embed::LocalEmbedder;

use crate::support::{cosine, local_model, minilm_reference, stderr, stdout, tvs};

#[test]
fn local_model_matches_sentence_transformers_at_cosine_0_9999() {
    let embedder = LocalEmbedder::load(local_model()).expect("load the model");
    let (sentences, reference) = minilm_reference();
    // One call: texts of very different lengths share padded batches, the longest is truncated.
    let together = embedder.embed_texts(&sentences).expect("embed");
    for ((sentence, got), want) in sentences.iter().zip(&together).zip(&reference) {
        assert_eq!(got.len(), 384);
        let similarity = cosine(got, want);
        assert!(similarity >= 0.9999, "{sentence:?}: cosine {similarity}");
    }
    // Alone, each text gives the same vector as in the batch: padding changes nothing.
    for (sentence, batched) in sentences.iter().zip(&together) {
        let alone = embedder.embed_texts(std::slice::from_ref(sentence)).expect("embed one");
        assert!(cosine(&alone[0], batched) >= 0.99999, "{sentence:?}");
    }
}

#[test]
fn a_question_finds_its_answer_from_the_cli_with_no_vectors_supplied() {
    local_model();
    let tmp = tempfile::tempdir().expect("tempdir");
    assert!(tvs(tmp.path(), &["tenant", "create", "kb"], &[]).status.success());
    let docs = tmp.path().join("faq.jsonl");
    std::fs::write(
        &docs,
        concat!(
            r#"{"id": "password", "text": "What are the steps to recover my account if I forgot my login credentials?"}"#,
            "\n",
            r#"{"id": "oven", "text": "I reset the oven timer and taped the wifi password to the fridge."}"#,
            "\n",
            r#"{"id": "rates", "text": "The central bank increased the cost of borrowing."}"#,
            "\n",
        ),
    )
    .expect("write");
    let notes = tmp.path().join("notes.md");
    std::fs::write(&notes, "# Garden\n\nTomatoes need full sun and regular watering.\n").expect("write");
    let ingest = tvs(
        tmp.path(),
        &[
            "ingest",
            "--tenant",
            "kb",
            docs.to_str().expect("utf8"),
            notes.to_str().expect("utf8"),
        ],
        &[],
    );
    assert!(ingest.status.success(), "{}", stderr(&ingest));

    let top = |query: &str| -> String {
        let out = tvs(tmp.path(), &["search", "--tenant", "kb", query, "-k", "1"], &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        let hit: Value = serde_json::from_str(stdout(&out).lines().next().expect("a hit")).expect("JSON");
        hit["id"].as_str().expect("id").to_owned()
    };
    // The paraphrase wins over the text that shares the question's words.
    assert_eq!(top("How do I reset my password?"), "password");
    assert_eq!(top("the bank raised interest rates"), "rates");
    // The Markdown file became a chunk whose id derives from its path.
    assert!(top("how much water do tomato plants need").starts_with(notes.to_str().expect("utf8")));
}

#[test]
fn a_missing_or_damaged_model_names_tvs_model_fetch_and_nothing_is_written() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let docs = tmp.path().join("docs.jsonl");
    std::fs::write(&docs, "{\"id\": \"a\", \"text\": \"hello\"}\n").expect("write");
    let missing = tmp.path().join("no-model");
    let damaged = tmp.path().join("damaged-model");
    std::fs::create_dir(&damaged).expect("mkdir");
    for (name, _) in tvs_embed::model::MODEL_FILES {
        std::fs::write(damaged.join(name), b"{}").expect("write");
    }
    assert!(tvs(tmp.path(), &["tenant", "create", "t"], &[]).status.success());
    for (model_dir, needle) in [(&missing, "is not in"), (&damaged, "damaged")] {
        let env = [("TVS_MODEL_DIR", model_dir.to_str().expect("utf8"))];
        let ingest = tvs(
            tmp.path(),
            &["ingest", "--tenant", "t", docs.to_str().expect("utf8")],
            &env,
        );
        assert_eq!(ingest.status.code(), Some(2));
        let message = stderr(&ingest);
        assert!(
            message.contains(needle) && message.contains("tvs model fetch"),
            "{message}"
        );
        let search = tvs(tmp.path(), &["search", "--tenant", "t", "hello"], &env);
        assert_eq!(search.status.code(), Some(2));
        assert!(stderr(&search).contains("tvs model fetch"), "{}", stderr(&search));
        assert!(!missing.exists(), "only `tvs serve` and `tvs model fetch` download");
    }
    let stats = tvs(tmp.path(), &["stats", "--tenant", "t"], &[]);
    let info: Value = serde_json::from_str(&stdout(&stats)).expect("stats JSON");
    assert_eq!(info["count"], 0);
}

#[test]
fn a_tenant_of_the_local_model_must_have_its_384_dimensions() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tvs(tmp.path(), &["tenant", "create", "t", "--dims", "8"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("384"), "{}", stderr(&out));
    let out = tvs(
        tmp.path(),
        &["tenant", "create", "t", "--dims", "8", "--model", "none"],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The `tiktoken-rs` crate's copy of OpenAI's `cl100k_base` table (the crate tvs decodes token
/// ids with), in cargo's registry sources, where building tvs unpacked it.
fn cl100k_file() -> std::path::PathBuf {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| std::path::Path::new(&home).join(".cargo")))
        .expect("CARGO_HOME or HOME");
    let registries = std::fs::read_dir(cargo_home.join("registry/src")).expect("cargo's registry sources");
    registries
        .filter_map(Result::ok)
        .map(|registry| registry.path().join("tiktoken-rs-0.12.1/assets/cl100k_base.tiktoken"))
        .find(|path| path.is_file())
        .expect("tiktoken-rs 0.12.1 unpacked by the build (its version is pinned in the workspace Cargo.toml)")
}

#[test]
fn the_openai_and_langchain_openai_clients_work_with_their_defaults() {
    local_model();
    let tests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/openai");
    let out = std::process::Command::new(crate::support::langchain_python())
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(&tests)
        .env("TVS_BIN", env!("CARGO_BIN_EXE_tvs"))
        .env("TVS_CL100K_FILE", cl100k_file())
        .output()
        .expect("run pytest");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("13 passed"), "{report}");
}
