//! File-system checks outside the storage seam ([`crate::storage`] has the data operations):
//! the lock file, and whether a path is a real directory.
//!
//! Invariant: no helper here follows a symlink in its last path component (`O_NOFOLLOW`), and
//! directory checks use `symlink_metadata`, so a symlink planted inside the data directory can
//! never redirect a read or write outside it.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Opens (creating if needed) a file for reading and appending, refusing symlinks.
pub fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| crate::storage::explain_symlink(e, path))
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
