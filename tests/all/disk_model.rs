//! A recording [`Storage`] and a model of what a disk keeps across a power cut.
//!
//! [`Recorder`] passes every operation to the real file system and records it. [`Disk`] replays
//! the record up to any point and writes the *crash image* there: what a disk that honours
//! `fsync` and nothing more may hold after power is lost at that point. The rules (the same as
//! `tvs_store::storage` states it assumes):
//! - a file's bytes and length are durable up to its last `fsync`/`fdatasync`; later writes and
//!   `set_len`s may be lost, kept, or kept in part (a prefix of them, the last one torn at any
//!   byte);
//! - a name created, renamed or removed in a directory is durable only once that directory is
//!   fsynced; until then the directory holds its previous names, pointing at the same files;
//! - what existed before recording started is durable.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rand::Rng;
use tvs_store::storage::{OpenMode, StdStorage, Storage, StorageFile};

/// One operation that changes what is on disk, in the order the store made it.
#[derive(Debug, Clone)]
pub enum Op {
    /// A handle that can write; `created` when the open made the file.
    Open {
        handle: u64,
        path: PathBuf,
        created: bool,
    },
    Write {
        handle: u64,
        offset: u64,
        bytes: Vec<u8>,
    },
    SetLen {
        handle: u64,
        len: u64,
    },
    /// `fsync` or `fdatasync` of a file: a sync point.
    Sync {
        handle: u64,
    },
    CreateDir(PathBuf),
    Rename {
        from: PathBuf,
        to: PathBuf,
    },
    RemoveFile(PathBuf),
    RemoveDirAll(PathBuf),
    /// `fsync` of a directory: a sync point.
    SyncDir(PathBuf),
}

impl Op {
    pub fn is_sync(&self) -> bool {
        matches!(self, Op::Sync { .. } | Op::SyncDir(_))
    }
}

/// Records every operation while doing it on the real file system.
#[derive(Debug, Default)]
pub struct Recorder {
    ops: OpLog,
    next_handle: AtomicU64,
}

/// The record, shared by the recorder and the handles it opened.
#[derive(Debug, Default, Clone)]
struct OpLog(Arc<Mutex<Vec<Op>>>);

impl OpLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Op>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn record(&self, op: Op) {
        self.lock().push(op);
    }
}

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder::default())
    }

    /// Operations recorded so far.
    pub fn len(&self) -> usize {
        self.ops.lock().len()
    }

    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().clone()
    }

    fn record(&self, op: Op) {
        self.ops.record(op);
    }
}

impl Storage for Recorder {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn StorageFile>> {
        let existed = fs::symlink_metadata(path).is_ok();
        let inner = StdStorage.open(path, mode)?;
        if mode == OpenMode::Read {
            return Ok(inner);
        }
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.record(Op::Open {
            handle,
            path: path.to_owned(),
            created: !existed,
        });
        Ok(Box::new(RecordedFile {
            inner,
            handle,
            append: mode == OpenMode::Append,
            position: Mutex::new(0),
            ops: self.ops.clone(),
        }))
    }
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        StdStorage.create_dir(path)?;
        self.record(Op::CreateDir(path.to_owned()));
        Ok(())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        StdStorage.rename(from, to)?;
        self.record(Op::Rename {
            from: from.to_owned(),
            to: to.to_owned(),
        });
        Ok(())
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        StdStorage.remove_file(path)?;
        self.record(Op::RemoveFile(path.to_owned()));
        Ok(())
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        StdStorage.remove_dir_all(path)?;
        self.record(Op::RemoveDirAll(path.to_owned()));
        Ok(())
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        StdStorage.sync_dir(path)?;
        self.record(Op::SyncDir(path.to_owned()));
        Ok(())
    }
}

/// A file handle of a [`Recorder`]: writes are recorded with the offset they landed at.
#[derive(Debug)]
struct RecordedFile {
    inner: Box<dyn StorageFile>,
    handle: u64,
    append: bool,
    /// Where the next sequential write of a non-append handle lands.
    position: Mutex<u64>,
    ops: OpLog,
}

impl StorageFile for RecordedFile {
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_all(&self, buf: &[u8]) -> io::Result<()> {
        // The log serialises its appends, so the length read here is where the bytes land.
        let mut position = self.position.lock().unwrap_or_else(|p| p.into_inner());
        let offset = if self.append { self.inner.size()? } else { *position };
        self.inner.write_all(buf)?;
        *position = offset + buf.len() as u64;
        self.ops.record(Op::Write {
            handle: self.handle,
            offset,
            bytes: buf.to_vec(),
        });
        Ok(())
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, offset)?;
        self.ops.record(Op::Write {
            handle: self.handle,
            offset,
            bytes: buf.to_vec(),
        });
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)?;
        self.ops.record(Op::SetLen {
            handle: self.handle,
            len,
        });
        Ok(())
    }
    fn sync_all(&self) -> io::Result<()> {
        self.inner.sync_all()?;
        self.ops.record(Op::Sync { handle: self.handle });
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()?;
        self.ops.record(Op::Sync { handle: self.handle });
        Ok(())
    }
}

/// A change to a file not yet made durable.
#[derive(Debug, Clone)]
enum Pending {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

fn apply(content: &mut Vec<u8>, change: &Pending) {
    match change {
        Pending::Write { offset, bytes } => {
            let end = *offset as usize + bytes.len();
            if content.len() < end {
                content.resize(end, 0);
            }
            content[*offset as usize..end].copy_from_slice(bytes);
        }
        Pending::SetLen(len) => content.resize(*len as usize, 0),
    }
}

#[derive(Debug, Clone)]
enum Node {
    Dir {
        durable: BTreeMap<String, usize>,
        current: BTreeMap<String, usize>,
    },
    File {
        durable: Vec<u8>,
        current: Vec<u8>,
        pending: Vec<Pending>,
    },
}

/// How the unsynced changes of each file survive in an image.
#[derive(Debug, Clone, Copy)]
pub enum Survival {
    /// Every unsynced change is lost.
    Lost,
    /// Every unsynced change is kept.
    Kept,
    /// Each file keeps a random prefix of its unsynced changes, the last one torn at a random
    /// byte (seeded).
    Torn(u64),
}

/// The disk as the model sees it: a tree of nodes, each name durable or not.
#[derive(Debug, Clone)]
pub struct Disk {
    root: PathBuf,
    nodes: Vec<Node>,
    handles: HashMap<u64, usize>,
}

impl Disk {
    /// The tree under `root` as it is now, all of it durable. Files whose names `skip` accepts
    /// (lock files, which are outside the seam) are left out.
    pub fn scan(root: &Path, skip: &dyn Fn(&str) -> bool) -> Disk {
        let mut disk = Disk {
            root: root.to_owned(),
            nodes: Vec::new(),
            handles: HashMap::new(),
        };
        disk.scan_dir(root, skip);
        disk
    }

    fn scan_dir(&mut self, dir: &Path, skip: &dyn Fn(&str) -> bool) -> usize {
        let id = self.nodes.len();
        self.nodes.push(Node::Dir {
            durable: BTreeMap::new(),
            current: BTreeMap::new(),
        });
        let mut entries = BTreeMap::new();
        for entry in fs::read_dir(dir).expect("read_dir") {
            let entry = entry.expect("entry");
            let name = entry.file_name().into_string().expect("utf-8 name");
            if skip(&name) {
                continue;
            }
            let child = if entry.file_type().expect("type").is_dir() {
                self.scan_dir(&entry.path(), skip)
            } else {
                let bytes = fs::read(entry.path()).expect("read");
                self.nodes.push(Node::File {
                    durable: bytes.clone(),
                    current: bytes,
                    pending: Vec::new(),
                });
                self.nodes.len() - 1
            };
            entries.insert(name, child);
        }
        self.nodes[id] = Node::Dir {
            durable: entries.clone(),
            current: entries,
        };
        id
    }

    /// The components of `path` below the root.
    fn components(&self, path: &Path) -> Vec<String> {
        path.strip_prefix(&self.root)
            .unwrap_or_else(|_| panic!("{} is outside {}", path.display(), self.root.display()))
            .components()
            .map(|c| c.as_os_str().to_str().expect("utf-8").to_owned())
            .collect()
    }

    fn lookup(&self, parts: &[String]) -> usize {
        let mut node = 0;
        for part in parts {
            match &self.nodes[node] {
                Node::Dir { current, .. } => {
                    node = *current.get(part).unwrap_or_else(|| panic!("no {part} in the model"))
                }
                Node::File { .. } => panic!("{part} under a file"),
            }
        }
        node
    }

    /// The directory holding `path` and the last component's name.
    fn parent(&self, path: &Path) -> (usize, String) {
        let mut parts = self.components(path);
        let name = parts.pop().expect("a path below the root");
        (self.lookup(&parts), name)
    }

    fn entries(&mut self, dir: usize) -> &mut BTreeMap<String, usize> {
        match &mut self.nodes[dir] {
            Node::Dir { current, .. } => current,
            Node::File { .. } => panic!("not a directory"),
        }
    }

    fn file(&mut self, handle: u64) -> (&mut Vec<u8>, &mut Vec<Pending>, &mut Vec<u8>) {
        let node = self.handles[&handle];
        match &mut self.nodes[node] {
            Node::File {
                current,
                pending,
                durable,
            } => (current, pending, durable),
            Node::Dir { .. } => panic!("a handle on a directory"),
        }
    }

    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::Open { handle, path, created } => {
                let node = if *created {
                    let (dir, name) = self.parent(path);
                    self.nodes.push(Node::File {
                        durable: Vec::new(),
                        current: Vec::new(),
                        pending: Vec::new(),
                    });
                    let node = self.nodes.len() - 1;
                    self.entries(dir).insert(name, node);
                    node
                } else {
                    self.lookup(&self.components(path))
                };
                self.handles.insert(*handle, node);
            }
            Op::Write { handle, offset, bytes } => {
                let change = Pending::Write {
                    offset: *offset,
                    bytes: bytes.clone(),
                };
                let (current, pending, _) = self.file(*handle);
                apply(current, &change);
                pending.push(change);
            }
            Op::SetLen { handle, len } => {
                let (current, pending, _) = self.file(*handle);
                apply(current, &Pending::SetLen(*len));
                pending.push(Pending::SetLen(*len));
            }
            Op::Sync { handle } => {
                let (current, pending, durable) = self.file(*handle);
                *durable = current.clone();
                pending.clear();
            }
            Op::CreateDir(path) => {
                let (dir, name) = self.parent(path);
                self.nodes.push(Node::Dir {
                    durable: BTreeMap::new(),
                    current: BTreeMap::new(),
                });
                let node = self.nodes.len() - 1;
                self.entries(dir).insert(name, node);
            }
            Op::Rename { from, to } => {
                let (from_dir, from_name) = self.parent(from);
                let node = self.entries(from_dir).remove(&from_name).expect("renamed name");
                let (to_dir, to_name) = self.parent(to);
                self.entries(to_dir).insert(to_name, node);
            }
            Op::RemoveFile(path) | Op::RemoveDirAll(path) => {
                let (dir, name) = self.parent(path);
                self.entries(dir).remove(&name);
            }
            Op::SyncDir(path) => {
                let node = self.lookup(&self.components(path));
                if let Node::Dir { durable, current } = &mut self.nodes[node] {
                    *durable = current.clone();
                }
            }
        }
    }

    /// Writes the crash image into `to` (an empty directory).
    pub fn write_image(&self, to: &Path, survival: Survival) {
        let mut rng = match survival {
            Survival::Torn(seed) => Some(<rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed)),
            _ => None,
        };
        self.write_node(0, to, survival, &mut rng);
    }

    fn write_node(&self, node: usize, path: &Path, survival: Survival, rng: &mut Option<rand::rngs::StdRng>) {
        match &self.nodes[node] {
            Node::Dir { durable, .. } => {
                fs::create_dir_all(path).expect("image dir");
                for (name, child) in durable {
                    self.write_node(*child, &path.join(name), survival, rng);
                }
            }
            Node::File { durable, pending, .. } => {
                let mut content = durable.clone();
                let kept = match (survival, rng.as_mut()) {
                    (Survival::Lost, _) => 0,
                    (Survival::Kept, _) => pending.len(),
                    (Survival::Torn(_), Some(rng)) => rng.random_range(0..=pending.len()),
                    (Survival::Torn(_), None) => unreachable!(),
                };
                for change in &pending[..kept] {
                    apply(&mut content, change);
                }
                if let (Some(Pending::Write { offset, bytes }), Some(rng)) = (pending.get(kept), rng.as_mut()) {
                    let torn = rng.random_range(0..=bytes.len());
                    apply(
                        &mut content,
                        &Pending::Write {
                            offset: *offset,
                            bytes: bytes[..torn].to_vec(),
                        },
                    );
                }
                fs::write(path, content).expect("image file");
            }
        }
    }

    /// Every file under the model's current names with its current bytes, by relative path.
    pub fn current_files(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        self.collect(0, Path::new(""), &mut out);
        out
    }

    fn collect(&self, node: usize, path: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        match &self.nodes[node] {
            Node::Dir { current, .. } => {
                for (name, child) in current {
                    self.collect(*child, &path.join(name), out);
                }
            }
            Node::File { current, .. } => {
                out.insert(path.to_owned(), current.clone());
            }
        }
    }
}

/// Every file under `root` by relative path, skipping names `skip` accepts.
pub fn real_files(root: &Path, skip: &dyn Fn(&str) -> bool) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, skip: &dyn Fn(&str) -> bool, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in fs::read_dir(dir).expect("read_dir") {
            let entry = entry.expect("entry");
            let name = entry.file_name().into_string().expect("utf-8");
            if skip(&name) {
                continue;
            }
            if entry.file_type().expect("type").is_dir() {
                walk(root, &entry.path(), skip, out);
            } else {
                let rel = entry.path().strip_prefix(root).expect("below root").to_owned();
                out.insert(rel, fs::read(entry.path()).expect("read"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, skip, &mut out);
    out
}
