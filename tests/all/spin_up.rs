//! The real Spin: `spin up` (Spin 4.0.2, `../shared/tools/spin/spin` beside the checkout, or
//! `TVS_SPIN`) serving this repository's `spin.toml` after its build commands, with its own
//! SQLite key-value store and its own `generate-embeddings`, on loopback. Tests that need it
//! skip with a message naming what is missing, except under CI, where a missing Spin fails.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::spin_host::{repo_root, spin_build};

/// The Spin CLI, when there is one: `TVS_SPIN`, else `../shared/tools/spin/spin`.
pub fn spin_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("TVS_SPIN") {
        return Some(PathBuf::from(path));
    }
    let beside = repo_root().join("../shared/tools/spin/spin");
    beside.is_file().then_some(beside)
}

/// The Spin CLI for `test`, or `None` after saying why the test is skipped. Under CI (`CI` set)
/// a missing Spin fails the test instead: CI has it beside the checkout.
pub fn spin_or_skip(test: &str) -> Option<PathBuf> {
    let found = spin_binary();
    if found.is_none() {
        let why = "no Spin CLI: put Spin 4.0.2 at ../shared/tools/spin/spin (beside the checkout) or set TVS_SPIN";
        assert!(std::env::var_os("CI").is_none(), "{test}: {why}");
        eprintln!("skipping {test}: {why}");
    }
    found
}

/// A `spin up` child on loopback; stopped with SIGINT when dropped, as a user stops it.
#[derive(Debug)]
pub struct SpinUp {
    child: Child,
    pub addr: SocketAddr,
    state: PathBuf,
}

/// The files Spin's `generate-embeddings("all-minilm-l6-v2")` reads, under the state directory.
fn place_model(state: &Path) {
    let model = crate::support::local_model();
    let dir = state.join("ai-models/all-minilm-l6-v2");
    std::fs::create_dir_all(&dir).expect("ai-models dir");
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        let (from, to) = (model.join(file), dir.join(file));
        if !to.exists() && std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl SpinUp {
    /// `spin up` of the built `spin.toml` with its state (key-value, logs, models) in `state`
    /// and `variables` as `SPIN_VARIABLE_*`.
    pub fn start(spin: &Path, state: &Path, variables: &[(&str, &str)]) -> SpinUp {
        spin_build();
        place_model(state);
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
        let mut command = Command::new(spin);
        command
            .args(["up", "--listen", &addr.to_string(), "--state-dir"])
            .arg(state)
            .arg("--from")
            .arg(repo_root().join("spin.toml"))
            .current_dir(repo_root())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(state.join("spin-up.log")).expect("spin up's log"));
        for (name, value) in variables {
            command.env(format!("SPIN_VARIABLE_{}", name.to_uppercase()), value);
        }
        let mut child = command.spawn().expect("run spin up");
        let started = Instant::now();
        while TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                let stderr = std::fs::read_to_string(state.join("spin-up.log")).unwrap_or_default();
                panic!("spin up exited ({status}) before serving:\n{stderr}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "spin up did not listen on {addr} in 120 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        SpinUp {
            child,
            addr,
            state: state.to_owned(),
        }
    }

    /// What Spin and the component printed (`spin-up.log`, `state/logs/`), for failure messages.
    pub fn logs(&self) -> String {
        let mut out = std::fs::read_to_string(self.state.join("spin-up.log")).unwrap_or_default();
        if let Ok(entries) = std::fs::read_dir(self.state.join("logs")) {
            for entry in entries.flatten() {
                out.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        out
    }
}

impl Drop for SpinUp {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("spin up's logs:\n{}", self.logs());
        }
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
