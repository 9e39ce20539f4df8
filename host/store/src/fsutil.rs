//! File-system helpers that every on-disk write of tvs goes through.
//!
//! Invariants:
//! - No helper here follows a symlink in its last path component (`O_NOFOLLOW`), and directory
//!   checks use `symlink_metadata`, so a symlink planted inside the data directory can never
//!   redirect a read or write outside it.
//! - `write_atomic` makes a file appear whole or not at all: temp file, fsync, rename, fsync of
//!   the directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Opens a file for reading, refusing symlinks.
pub fn open_read(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| explain_symlink(e, path))
}

/// Opens (creating if needed) a file for reading and appending, refusing symlinks.
pub fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| explain_symlink(e, path))
}

/// Creates a new file that must not exist yet, refusing symlinks.
pub fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o644)
        .open(path)
}

fn explain_symlink(err: io::Error, path: &Path) -> io::Error {
    if err.raw_os_error() == Some(libc::ELOOP) {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is a symlink; tvs never follows symlinks in its data directory",
                path.display()
            ),
        )
    } else {
        err
    }
}

/// Fails unless `path` is a real directory (not a symlink to one).
pub fn ensure_real_dir(path: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is a symlink; tvs never follows symlinks in its data directory",
                path.display()
            ),
        ));
    }
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{} is not a directory", path.display()),
        ));
    }
    Ok(())
}

/// Creates `path` as a directory if missing; fails if it exists as anything but a real directory.
pub fn create_real_dir(path: &Path) -> io::Result<()> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => ensure_real_dir(path),
        Err(e) => Err(e),
    }
}

/// fsyncs a directory so that renames and creations inside it are durable.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Replaces `dir/name` with `bytes` atomically and durably.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut file = create_new(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, dir.join(name))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Reads a whole file, refusing symlinks.
pub fn read_all(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = open_read(path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}
