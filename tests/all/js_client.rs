//! The TypeScript client (`clients/js`, npm `tvs-client`) works against the real server: its own
//! suite (`npm test`: a build with tsc, then `node --test`) spawns this build's `tvs serve` per
//! test file and checks every method of `TvsAdmin` and `TvsClient`, tenant tokens minted with
//! WebCrypto, typed errors, retries of 429 and timeouts, the LangChain.js vector store, OpenAI's JS
//! client on `/v1/embeddings`, the plugins built here, `examples/serverless-rag`, and the packed
//! tarball as a user installs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The client's directory.
fn client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/js")
}

/// Whether `program --version` runs.
fn runs(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success())
}

fn output_text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Installs the client's dev dependencies (TypeScript, @langchain/core, openai) into
/// `clients/js/node_modules` once: `npm ci` from the committed lockfile. The marker holds the
/// lockfile it was installed from, so a changed lockfile reinstalls.
fn installed_dependencies(dir: &Path) {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let lockfile = dir.join("package-lock.json");
        let marker = dir.join("node_modules/.tvs-package-lock.json");
        let wanted = std::fs::read_to_string(&lockfile).ok();
        if wanted.is_some() && std::fs::read_to_string(&marker).ok() == wanted {
            return;
        }
        let command = if wanted.is_some() { "ci" } else { "install" };
        let out = Command::new("npm")
            .args([command, "--no-audit", "--no-fund"])
            .current_dir(dir)
            .output()
            .expect("run npm");
        assert!(
            out.status.success(),
            "npm {command} in {}:\n{}",
            dir.display(),
            output_text(&out)
        );
        if let Ok(lock) = std::fs::read_to_string(&lockfile) {
            std::fs::write(&marker, lock).expect("write the install marker");
        }
    });
}

#[test]
fn the_typescript_client_passes_its_tests_against_a_real_tvs_serve() {
    if !(runs("node") && runs("npm")) {
        let why = "Node.js and npm are needed for the TypeScript client's tests: apt-get install nodejs npm";
        if std::env::var_os("CI").is_some() {
            panic!("{why}");
        }
        eprintln!("skipped: {why}");
        return;
    }
    crate::support::local_model();
    let dir = client_dir();
    installed_dependencies(&dir);
    let out = Command::new("npm")
        .arg("test")
        .current_dir(&dir)
        .env("TVS_BIN", env!("CARGO_BIN_EXE_tvs"))
        .env("TVS_PROBE_PLUGIN", tvs_runtime::guest_paths::PLUGIN_PROBE)
        .env("TVS_REDACT_PLUGIN", tvs_runtime::guest_paths::PLUGIN_REDACT)
        .env("TVS_RECENCY_PLUGIN", tvs_runtime::guest_paths::EXAMPLE_RECENCY_RERANK)
        .output()
        .expect("run npm test");
    let report = output_text(&out);
    assert!(out.status.success(), "npm test failed:\n{report}");
    assert!(report.contains("# fail 0"), "{report}");
    // The plugins built here are given, so no test is skipped.
    assert!(report.contains("# skipped 0"), "{report}");
}
