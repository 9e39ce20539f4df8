//! The storage seam: every file operation a store makes on its data (create, open, read, write,
//! append, `set_len`, `fsync`, `fdatasync`, rename, directory `fsync`, remove) goes through
//! [`Storage`] and [`StorageFile`].
//!
//! Production uses [`StdStorage`], a thin layer over `std::fs` that refuses symlinks in the last
//! path component (`O_NOFOLLOW`). Tests put other implementations here: one that records every
//! operation to cut crash images at each sync point (what a power cut can leave), and one that
//! injects faults (`fsync` failing, `ENOSPC`, `EIO`, a failed rename).
//!
//! What is deliberately not behind the seam: the store's lock file (advisory locking, no data),
//! metadata reads (`symlink_metadata`, `read_dir`), and usearch reading a graph snapshot by path
//! after tvs has checked its CRC through the seam.
//!
//! Snapshot files may be memory-mapped ([`StorageFile::map_private`]): they are written once
//! under fresh names and never modified, only removed (which leaves a mapping intact). A file
//! truncated behind tvs's back would fault the process, as with any mapped database file.
//!
//! Assumptions about the disk, which the crash images model: data written to a file is durable
//! only after that file's `fsync`/`fdatasync`; a created, renamed or removed name is durable only
//! after its directory's `fsync`; unsynced writes may be lost, kept, or kept in part.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

/// How a file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// An existing file, for reading.
    Read,
    /// Reading, and appending at the end (created if missing): the document log.
    Append,
    /// A new file that must not exist yet, written from its start.
    CreateNew,
    /// An existing file, for positional writes (`write_at`) and reads.
    Write,
}

/// A file system as a store sees it.
pub trait Storage: Send + Sync + fmt::Debug {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn StorageFile>>;
    /// Creates one directory (its parent must exist).
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Makes the names created, renamed or removed in directory `path` durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
}

/// An open file. Methods take `&self`: the log is appended to, read and synced from several
/// threads at once, as `&File` allows.
pub trait StorageFile: Send + Sync + fmt::Debug {
    /// The file's length in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Reads at `offset`; fewer bytes than asked only at the end of the file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` where this handle writes sequentially: the end for
    /// [`OpenMode::Append`], after the previous write for [`OpenMode::CreateNew`].
    fn write_all(&self, buf: &[u8]) -> io::Result<()>;
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// `fsync`: data and metadata.
    fn sync_all(&self) -> io::Result<()>;
    /// `fdatasync`: data and what is needed to read it back (the length).
    fn sync_data(&self) -> io::Result<()>;
    /// The file's first `len` bytes mapped copy-on-write (writes to the map stay in memory),
    /// or `None` where files cannot be mapped and must be read.
    fn map_private(&self, len: usize) -> io::Result<Option<memmap2::MmapMut>> {
        let _ = len;
        Ok(None)
    }
}

/// The production storage: `std::fs`, never following a symlink in the last path component.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdStorage;

impl StdStorage {
    /// The shared handle most callers want.
    pub fn shared() -> Arc<dyn Storage> {
        Arc::new(StdStorage)
    }
}

/// Turns the kernel's "too many symlinks" for `O_NOFOLLOW` into an error that says why.
pub(crate) fn explain_symlink(err: io::Error, path: &Path) -> io::Error {
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

impl Storage for StdStorage {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn StorageFile>> {
        let mut options = OpenOptions::new();
        options.read(true).custom_flags(libc::O_NOFOLLOW);
        match mode {
            OpenMode::Read => {}
            OpenMode::Append => {
                options.append(true).create(true);
            }
            OpenMode::CreateNew => {
                options.write(true).create_new(true).mode(0o644);
            }
            OpenMode::Write => {
                options.write(true);
            }
        }
        let file = options.open(path).map_err(|e| explain_symlink(e, path))?;
        Ok(Box::new(StdFile(file)))
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        fs::create_dir(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir_all(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
}

/// A `std::fs::File` behind [`StorageFile`].
#[derive(Debug)]
pub struct StdFile(pub File);

impl StorageFile for StdFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        // A short read before the end is retried, so callers see short reads only at the end.
        let mut done = 0;
        while done < buf.len() {
            match self.0.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
    fn write_all(&self, buf: &[u8]) -> io::Result<()> {
        (&self.0).write_all(buf)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    #[allow(unsafe_code)]
    fn map_private(&self, len: usize) -> io::Result<Option<memmap2::MmapMut>> {
        if len == 0 {
            return Ok(None);
        }
        // SAFETY: only immutable snapshot files are mapped (see the module's note); the map is
        // private, so nothing written to it reaches the file.
        let map = unsafe { memmap2::MmapOptions::new().len(len).map_copy(&self.0)? };
        Ok(Some(map))
    }
}

/// Reads a [`StorageFile`] sequentially from an offset (for `BufReader`).
#[derive(Debug)]
pub struct FileReader<'f> {
    file: &'f dyn StorageFile,
    position: u64,
}

impl<'f> FileReader<'f> {
    pub fn new(file: &'f dyn StorageFile, position: u64) -> Self {
        Self { file, position }
    }
}

impl Read for FileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.position)?;
        self.position += n as u64;
        Ok(n)
    }
}

/// Writes to a [`StorageFile`] sequentially (for `BufWriter`).
#[derive(Debug)]
pub struct FileWriter<'f>(pub &'f dyn StorageFile);

impl Write for FileWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads a whole file, refusing symlinks.
pub fn read_all(storage: &dyn Storage, path: &Path) -> io::Result<Vec<u8>> {
    let file = storage.open(path, OpenMode::Read)?;
    let mut bytes = Vec::with_capacity(file.size()? as usize);
    FileReader::new(&*file, 0).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Replaces `dir/name` with `bytes` atomically and durably: temp file, fsync, rename, fsync of
/// the directory. The file appears whole or not at all.
pub fn write_atomic(storage: &dyn Storage, dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let file = storage.open(&tmp, OpenMode::CreateNew)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        storage.rename(&tmp, &dir.join(name))?;
        storage.sync_dir(dir)
    })();
    if result.is_err() {
        let _ = storage.remove_file(&tmp);
    }
    result
}

/// Creates `path` as a directory if missing; fails if it exists as anything but a real
/// directory.
pub fn create_real_dir(storage: &dyn Storage, path: &Path) -> io::Result<()> {
    match storage.create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => crate::fsutil::ensure_real_dir(path),
        Err(e) => Err(e),
    }
}
