//! Builds the guest components for `wasm32-wasip2` so that `cargo build`, `cargo run` and
//! `cargo test` need nothing else (the pattern of wasmtime's test-programs): each guest crate is
//! built by a nested cargo with its own target dir under `OUT_DIR`, and `guests.rs` records the
//! paths of the components for `include!`.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// (constant name, crate directory relative to the workspace root, artifact stem): the built-in
/// guest, and the test guests of `tests/guests/` (see its README).
const GUESTS: &[(&str, &str, &str)] = &[
    ("HANDLER", "guest/handler", "tvs_guest_handler"),
    ("HOSTILE", "tests/guests/hostile", "tvs_test_guest_hostile"),
    ("BAD_IMPORT", "tests/guests/bad-import", "tvs_test_guest_bad_import"),
    ("PLUGIN_PROBE", "tests/plugins/probe", "tvs_test_plugin_probe"),
    ("PLUGIN_REDACT", "tests/plugins/redact", "tvs_test_plugin_redact"),
    ("PLUGIN_ESCAPE", "tests/plugins/escape", "tvs_test_plugin_escape"),
    ("PLUGIN_FAT", "tests/plugins/fat", "tvs_test_plugin_fat"),
    (
        "PLUGIN_ASYNC",
        "tests/plugins/async-export",
        "tvs_test_plugin_async_export",
    ),
    (
        "EXAMPLE_RECENCY_RERANK",
        "examples/plugins/rust-recency-rerank",
        "recency_rerank",
    ),
];

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR")).join("../..");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    check_target_installed();

    for dir in [
        "wit",
        "wit/plugin",
        "wit/spin",
        "guest/core/src",
        "guest/core/Cargo.toml",
        "guest/kv/src",
        "guest/kv/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    let target_dir = out_dir.join("guest-target");
    let mut generated = String::from("// Paths of the guest components built by build.rs.\n");
    for (name, crate_dir, stem) in GUESTS {
        let crate_dir = root.join(crate_dir);
        // Only paths that exist: cargo counts a watched path that is missing as changed, and
        // rebuilt this crate and everything above it on every build (no guest has its own `wit`).
        for watched in ["src", "Cargo.toml", "Cargo.lock", "wit"] {
            let path = crate_dir.join(watched);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
        let status = Command::new(&cargo)
            .args([
                "build",
                "--release",
                "--locked",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(crate_dir.join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", &target_dir)
            // The host's flags (coverage, sanitizers, target-cpu) do not apply to wasm.
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("RUSTFLAGS")
            .status()
            .expect("running cargo to build a guest");
        assert!(
            status.success(),
            "building the guest component in {} failed",
            crate_dir.display()
        );
        let wasm = target_dir.join("wasm32-wasip2/release").join(format!("{stem}.wasm"));
        assert!(wasm.is_file(), "the guest build produced no {}", wasm.display());
        writeln!(generated, "pub const {name}: &str = {:?};", wasm.display().to_string()).expect("string");
    }
    std::fs::write(out_dir.join("guests.rs"), generated).expect("writing guests.rs");
}

/// Fails with the command that fixes it when the wasm target's standard library is missing.
fn check_target_installed() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let libdir = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", "wasm32-wasip2"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let installed = libdir.as_deref().is_some_and(has_std);
    assert!(
        installed,
        "\n\nThe guests of tvs are WebAssembly components and need the wasm32-wasip2 target.\n\
         Install it with:\n\n    rustup target add wasm32-wasip2\n\n"
    );
}

fn has_std(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("libstd-"))
    })
}
