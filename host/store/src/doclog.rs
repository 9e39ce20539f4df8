//! The append-only document log, `docs.jsonl`.
//!
//! Format: one JSON object per line. The first line is a header naming the format and the log's
//! generation (bumped by every compaction, so a snapshot taken against an older log is never
//! replayed against a newer one). Every other line is an `upsert` or a `delete` record.
//!
//! An upsert's vector is written as base64 of its little-endian f32s (version 2): exact, 1.33×
//! the raw bytes, and encoded at memory speed, where decimal text was 2.5× the raw bytes and
//! formatting it was half the cost of an ingest. Version-1 lines (a JSON array of numbers) stay
//! readable; opening a version-1 log rewrites its header to version 2 in place before anything
//! new is appended, so an older tvs refuses the log instead of misreading it.
//!
//! Invariants:
//! - A record is appended with a single `write` call and is acknowledged only after an fsync
//!   covering its last byte; concurrent writers share fsyncs (group commit).
//! - A failed append is cut off again (`set_len`), so the log never holds a partial record
//!   followed by good ones. After a crash, a torn or unparsable *last* line is dropped and
//!   logged; an unparsable line followed by good ones is corruption and refuses to open.
//! - After an fsync fails the log is poisoned: every later write fails until the store is
//!   reopened, because the kernel may have dropped the dirty pages (see PostgreSQL's
//!   "fsyncgate").
//! - With a remote sink ([`DocLog::set_sink`]) the group commit hands the sink the bytes
//!   appended since the last commit instead of fsyncing; the file is then a cache. A sink that
//!   fails poisons the log the same way, and one that reports a takeover fences it.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::remote::{RemoteError, TenantLog};
use crate::storage::{FileReader, FileWriter, OpenMode, Storage, StorageFile};

/// Name written in the header line.
pub const LOG_FORMAT: &str = "tvs-doclog";
/// Version of the record format written.
pub const LOG_VERSION: u32 = 2;
/// Oldest record format this tvs reads (vectors as JSON arrays).
pub const LOG_VERSION_OLDEST: u32 = 1;

/// A record as read back from the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Record {
    Header {
        format: String,
        version: u32,
        generation: u64,
    },
    Upsert {
        id: String,
        #[serde(default)]
        text: String,
        #[serde(default)]
        metadata: Map<String, Value>,
        #[serde(deserialize_with = "vector_codec::deserialize")]
        vector: Vec<f32>,
    },
    Delete {
        ids: Vec<String>,
    },
}

/// Appends an upsert record as one line to `buf`, the same JSON as serialising
/// [`Record::Upsert`] with the vector as base64. Written by hand because serde_json would scan
/// the 2 KB base64 string for characters to escape, which it never has (8 % of an ingest).
/// `metadata_json` is the metadata as compact JSON (an object), as the store already holds it.
pub fn encode_upsert(buf: &mut Vec<u8>, id: &str, text: &str, metadata_json: &[u8], vector: &[f32]) {
    debug_assert!(metadata_json.starts_with(b"{") && !metadata_json.contains(&b'\n'));
    use base64::Engine as _;
    let json = "strings serialise";
    buf.extend_from_slice(br#"{"op":"upsert","id":"#);
    serde_json::to_writer(&mut *buf, id).expect(json);
    buf.extend_from_slice(br#","text":"#);
    serde_json::to_writer(&mut *buf, text).expect(json);
    buf.extend_from_slice(br#","metadata":"#);
    buf.extend_from_slice(metadata_json);
    buf.extend_from_slice(br#","vector":""#);
    let raw: std::borrow::Cow<[u8]> = if cfg!(target_endian = "little") {
        std::borrow::Cow::Borrowed(bytemuck::cast_slice(vector))
    } else {
        std::borrow::Cow::Owned(vector.iter().flat_map(|x| x.to_le_bytes()).collect())
    };
    let start = buf.len();
    buf.resize(
        start + base64::encoded_len(raw.len(), true).expect("a vector's base64 fits in memory"),
        0,
    );
    base64::engine::general_purpose::STANDARD
        .encode_slice(&raw, &mut buf[start..])
        .expect("sized above");
    buf.extend_from_slice(b"\"}\n");
}

/// Vectors in log lines: written as base64 of little-endian f32 ([`encode_upsert`]), read from
/// that or from a JSON array of numbers (version 1).
mod vector_codec {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::Deserializer;
    use serde::de::{self, SeqAccess, Visitor};
    use std::fmt;

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<f32>, D::Error> {
        deserializer.deserialize_any(VectorVisitor)
    }

    struct VectorVisitor;

    impl<'de> Visitor<'de> for VectorVisitor {
        type Value = Vec<f32>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a vector: base64 of little-endian f32, or an array of numbers")
        }

        fn visit_str<E: de::Error>(self, encoded: &str) -> Result<Vec<f32>, E> {
            let raw = STANDARD
                .decode(encoded)
                .map_err(|e| E::custom(format!("vector is not valid base64: {e}")))?;
            if raw.len() % 4 != 0 {
                return Err(E::custom(format!(
                    "vector has {} bytes, not a whole number of f32s",
                    raw.len()
                )));
            }
            Ok(raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<f32>, A::Error> {
            let mut vector = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(x) = seq.next_element::<f32>()? {
                vector.push(x);
            }
            Ok(vector)
        }
    }
}

/// Appends `record` as one line to `buf`.
pub fn encode_line(buf: &mut Vec<u8>, record: &impl Serialize) {
    serde_json::to_writer(&mut *buf, record).expect("records serialise: keys are strings, floats finite");
    buf.push(b'\n');
}

/// The header line a log of `generation` starts with.
pub fn header_line(generation: u64) -> Vec<u8> {
    let mut line = Vec::new();
    encode_line(
        &mut line,
        &Record::Header {
            format: LOG_FORMAT.into(),
            version: LOG_VERSION,
            generation,
        },
    );
    line
}

/// Errors opening or replaying a log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    #[error("I/O error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} line {line} (byte {offset}) is corrupt and is followed by further records: {reason}. Restore the file from a backup or cut it at that line"
    )]
    Corrupt {
        path: PathBuf,
        line: u64,
        offset: u64,
        reason: String,
    },
    #[error("{path} does not start with a tvs log header; it is not a tvs document log")]
    NoHeader { path: PathBuf },
    #[error("{path} has format version {found}; this tvs reads versions {LOG_VERSION_OLDEST} to {LOG_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("an earlier fsync of {path} failed ({reason}); writes are refused until the store is reopened")]
    Poisoned { path: PathBuf, reason: String },
    #[error("{0}; this node no longer writes the tenant")]
    Fenced(String),
}

/// What replay found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// Records applied.
    pub records: u64,
    /// Bytes of a torn tail that were cut off (0 when the log ended cleanly).
    pub torn_bytes: u64,
    /// Offset where the next record goes.
    pub end: u64,
}

#[derive(Debug, Default)]
struct SyncState {
    synced: u64,
    syncing: bool,
    failed: Option<String>,
    /// The sink reported that another node took the tenant over.
    fenced: bool,
}

/// An open document log.
#[derive(Debug)]
pub struct DocLog {
    path: PathBuf,
    file: Box<dyn StorageFile>,
    generation: u64,
    /// Serialises appends so that `written` always marks whole records.
    append_lock: Mutex<()>,
    written: AtomicU64,
    /// fsyncs issued for appends (group commit makes this smaller than the appends).
    syncs: AtomicU64,
    sync: Mutex<SyncState>,
    synced_cv: Condvar,
    /// Where commits are made durable instead of by fsync, when the tenant lives remotely.
    sink: OnceLock<Arc<dyn TenantLog>>,
}

impl DocLog {
    /// Creates a new log at `path` (which must not exist) with a header of `generation`.
    pub fn create(storage: &dyn Storage, path: &Path, generation: u64) -> Result<DocLog, LogError> {
        let io_err = |source| LogError::Io {
            path: path.to_owned(),
            source,
        };
        let file = storage.open(path, OpenMode::CreateNew).map_err(io_err)?;
        let header = header_line(generation);
        file.write_all(&header).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        drop(file);
        let file = storage.open(path, OpenMode::Append).map_err(io_err)?;
        Ok(Self::from_parts(path, file, generation, header.len() as u64))
    }

    fn from_parts(path: &Path, file: Box<dyn StorageFile>, generation: u64, end: u64) -> DocLog {
        DocLog {
            path: path.to_owned(),
            file,
            generation,
            append_lock: Mutex::new(()),
            written: AtomicU64::new(end),
            syncs: AtomicU64::new(0),
            sync: Mutex::new(SyncState {
                synced: end,
                ..Default::default()
            }),
            synced_cv: Condvar::new(),
            sink: OnceLock::new(),
        }
    }

    /// Makes commits durable through `sink` from now on (the log must be fully synced).
    pub fn set_sink(&self, sink: Arc<dyn TenantLog>) {
        debug_assert_eq!(self.sync.lock().unwrap_or_else(|p| p.into_inner()).synced, self.end());
        let _ = self.sink.set(sink);
    }

    /// The remote sink, if the tenant lives remotely.
    pub fn sink(&self) -> Option<&Arc<dyn TenantLog>> {
        self.sink.get()
    }

    /// Whether the sink reported that another node took the tenant over.
    pub fn is_fenced(&self) -> bool {
        self.sync.lock().unwrap_or_else(|p| p.into_inner()).fenced
    }

    /// Opens an existing log, replaying records from `from` (a record boundary recorded by a
    /// snapshot of this generation; `None` replays everything). A torn tail is cut off.
    pub fn open(
        storage: &dyn Storage,
        path: &Path,
        from: Option<u64>,
        mut apply: impl FnMut(u64, Record) -> Result<(), String>,
    ) -> Result<(DocLog, ReplayReport), LogError> {
        let io_err = |source| LogError::Io {
            path: path.to_owned(),
            source,
        };
        let file = storage.open(path, OpenMode::Append).map_err(io_err)?;
        let len = file.size().map_err(io_err)?;
        if len == 0 {
            // An empty file only arises from an interrupted legacy create; start it afresh.
            drop(file);
            storage.remove_file(path).map_err(io_err)?;
            let log = DocLog::create(storage, path, 1)?;
            let end = log.written.load(Ordering::Acquire);
            return Ok((
                log,
                ReplayReport {
                    records: 0,
                    torn_bytes: 0,
                    end,
                },
            ));
        }
        // The header is short; a large buffer here would copy the log's first megabyte on every
        // open, even when a snapshot covers all of it.
        let mut reader = BufReader::with_capacity(4096, FileReader::new(&*file, 0).take(len));
        let mut line = Vec::new();
        reader.read_until(b'\n', &mut line).map_err(io_err)?;
        let generation = match serde_json::from_slice::<Record>(&line) {
            Ok(Record::Header {
                format,
                version,
                generation,
            }) if format == LOG_FORMAT => {
                if !(LOG_VERSION_OLDEST..=LOG_VERSION).contains(&version) {
                    return Err(LogError::Version {
                        path: path.to_owned(),
                        found: version,
                    });
                }
                if version < LOG_VERSION {
                    upgrade_header(storage, path, &line, generation).map_err(io_err)?;
                }
                generation
            }
            _ => return Err(LogError::NoHeader { path: path.to_owned() }),
        };
        let header_end = line.len() as u64;
        let start = from.filter(|o| *o >= header_end && *o <= len).unwrap_or(header_end);
        let mut reader = BufReader::with_capacity(
            (len - start).clamp(1, 1 << 20) as usize,
            FileReader::new(&*file, start).take(len - start),
        );
        let mut offset = start;
        let mut records = 0u64;
        let mut line_no = 0u64;
        let mut pending_bad: Option<(u64, u64, String)> = None;
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line).map_err(io_err)? as u64;
            if n == 0 {
                break;
            }
            line_no += 1;
            if let Some((bad_line, bad_offset, reason)) = pending_bad.take() {
                return Err(LogError::Corrupt {
                    path: path.to_owned(),
                    line: bad_line,
                    offset: bad_offset,
                    reason,
                });
            }
            let complete = line.last() == Some(&b'\n');
            match serde_json::from_slice::<Record>(&line) {
                Ok(Record::Header { .. }) => {
                    pending_bad = Some((line_no, offset, "a second header".into()));
                }
                Ok(record) if complete => {
                    if let Err(reason) = apply(offset, record) {
                        return Err(LogError::Corrupt {
                            path: path.to_owned(),
                            line: line_no,
                            offset,
                            reason,
                        });
                    }
                    records += 1;
                    offset += n;
                }
                Ok(_) => pending_bad = Some((line_no, offset, "no line terminator".into())),
                Err(e) => pending_bad = Some((line_no, offset, e.to_string())),
            }
        }
        let mut torn_bytes = 0;
        if let Some((bad_line, bad_offset, reason)) = pending_bad {
            torn_bytes = len - bad_offset;
            tracing::warn!(
                log = %path.display(), line = bad_line, offset = bad_offset, bytes = torn_bytes, %reason,
                "dropping a torn last record (a write interrupted by a crash; it was never acknowledged)"
            );
            file.set_len(bad_offset).map_err(io_err)?;
            file.sync_all().map_err(io_err)?;
            offset = bad_offset;
        }
        let log = Self::from_parts(path, file, generation, offset);
        Ok((
            log,
            ReplayReport {
                records,
                torn_bytes,
                end: offset,
            },
        ))
    }

    /// Reads the generation from a log's header line, and the log's length.
    pub fn read_generation(storage: &dyn Storage, path: &Path) -> Result<(u64, u64), LogError> {
        let io_err = |source| LogError::Io {
            path: path.to_owned(),
            source,
        };
        let file = storage.open(path, OpenMode::Read).map_err(io_err)?;
        let len = file.size().map_err(io_err)?;
        let mut line = Vec::new();
        BufReader::new(FileReader::new(&*file, 0).take(64 * 1024))
            .read_until(b'\n', &mut line)
            .map_err(io_err)?;
        match serde_json::from_slice::<Record>(&line) {
            Ok(Record::Header { format, generation, .. }) if format == LOG_FORMAT => Ok((generation, len)),
            _ => Err(LogError::NoHeader { path: path.to_owned() }),
        }
    }

    /// Atomically replaces the log at `path` with a new one of `generation` whose body
    /// `write_body` produces (compaction). The new log is durable before it replaces the old.
    pub fn replace(
        storage: &dyn Storage,
        path: &Path,
        generation: u64,
        write_body: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<DocLog, LogError> {
        let io_err = |source| LogError::Io {
            path: path.to_owned(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(".docs.jsonl.compact-{}", uuid::Uuid::new_v4().simple()));
        let result = (|| {
            let file = storage.open(&tmp, OpenMode::CreateNew)?;
            let mut out = io::BufWriter::with_capacity(1 << 20, FileWriter(&*file));
            let header = header_line(generation);
            out.write_all(&header)?;
            write_body(&mut out)?;
            out.flush()?;
            drop(out);
            file.sync_all()?;
            drop(file);
            storage.rename(&tmp, path)?;
            storage.sync_dir(dir)
        })();
        if let Err(e) = result {
            let _ = storage.remove_file(&tmp);
            return Err(io_err(e));
        }
        let file = storage.open(path, OpenMode::Append).map_err(io_err)?;
        let end = file.size().map_err(io_err)?;
        Ok(Self::from_parts(path, file, generation, end))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// fsyncs issued since the log was opened.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Offset one past the last appended byte.
    pub fn end(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Whether an fsync failed, so that no write is trusted to this log until it is reopened.
    pub fn is_poisoned(&self) -> bool {
        self.check_poison().is_err()
    }

    pub(crate) fn check_poison(&self) -> Result<(), LogError> {
        let state = self.sync.lock().unwrap_or_else(|p| p.into_inner());
        self.failure(&state)
    }

    fn failure(&self, state: &SyncState) -> Result<(), LogError> {
        match &state.failed {
            Some(reason) if state.fenced => Err(LogError::Fenced(reason.clone())),
            Some(reason) => Err(LogError::Poisoned {
                path: self.path.clone(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Appends whole lines (not yet durable). Returns the offset of their first byte and of the
    /// byte after them. On failure nothing of `lines` stays in the log.
    pub fn append(&self, lines: &[u8]) -> Result<(u64, u64), LogError> {
        debug_assert!(lines.is_empty() || lines.last() == Some(&b'\n'));
        self.check_poison()?;
        let _guard = self.append_lock.lock().unwrap_or_else(|p| p.into_inner());
        let start = self.written.load(Ordering::Acquire);
        if let Err(source) = self.file.write_all(lines) {
            if let Err(cut) = self.file.set_len(start) {
                self.poison(format!("cutting off a failed append failed: {cut}"));
            }
            return Err(LogError::Io {
                path: self.path.clone(),
                source,
            });
        }
        let end = start + lines.len() as u64;
        self.written.store(end, Ordering::Release);
        Ok((start, end))
    }

    fn poison(&self, reason: String) {
        let mut state = self.sync.lock().unwrap_or_else(|p| p.into_inner());
        state.failed.get_or_insert(reason);
        self.synced_cv.notify_all();
    }

    /// Blocks until every byte before `offset` is on disk. One caller fsyncs for all waiters.
    pub fn sync_to(&self, offset: u64) -> Result<(), LogError> {
        let mut state = self.sync.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            self.failure(&state)?;
            if state.synced >= offset {
                return Ok(());
            }
            if state.syncing {
                state = self.synced_cv.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            state.syncing = true;
            let upto = self.written.load(Ordering::Acquire);
            let from = state.synced;
            drop(state);
            let result = match self.sink.get() {
                Some(sink) => self.persist(sink, from, upto),
                None => self
                    .file
                    .sync_data()
                    .map_err(|e| RemoteError::Unavailable(e.to_string())),
            };
            self.syncs.fetch_add(1, Ordering::Relaxed);
            state = self.sync.lock().unwrap_or_else(|p| p.into_inner());
            state.syncing = false;
            match result {
                Ok(()) => state.synced = state.synced.max(upto),
                Err(RemoteError::Fenced(reason)) => {
                    state.fenced = true;
                    state.failed = Some(RemoteError::Fenced(reason).to_string());
                }
                Err(RemoteError::Unavailable(reason) | RemoteError::Corrupt(reason)) => {
                    state.failed.get_or_insert(reason);
                }
            }
            self.synced_cv.notify_all();
        }
    }

    /// Hands the bytes `from..upto` to the sink (the group commit's share of the log).
    fn persist(&self, sink: &Arc<dyn TenantLog>, from: u64, upto: u64) -> Result<(), RemoteError> {
        let mut bytes = vec![0u8; (upto - from) as usize];
        let mut filled = 0;
        while filled < bytes.len() {
            match self.file.read_at(&mut bytes[filled..], from + filled as u64) {
                Ok(0) => {
                    return Err(RemoteError::Unavailable(
                        "the log ended before its appended bytes".into(),
                    ));
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(RemoteError::Unavailable(format!("reading the log to persist it: {e}"))),
            }
        }
        sink.persist(&bytes)
    }

    /// Reads the record line starting at `offset` (used by compaction to copy live records
    /// verbatim, keeping full-precision vectors).
    pub fn read_line_at(&self, offset: u64, buf: &mut Vec<u8>) -> io::Result<()> {
        read_line_at(&*self.file, offset, buf)
    }
}

/// Rewrites an older log's header line to the current version, in place, before records of the
/// current version are appended after it. The new line has the same length (only the version
/// digit differs), so the one-sector write cannot tear into the records after it. A header
/// written by hand in another layout is left as it is: this tvs reads either version.
fn upgrade_header(storage: &dyn Storage, path: &Path, old_line: &[u8], generation: u64) -> io::Result<()> {
    let new_line = header_line(generation);
    if new_line.len() != old_line.len() {
        tracing::warn!(log = %path.display(), "log header of an older version left as written: its layout is not tvs's");
        return Ok(());
    }
    // Not the append handle: Linux ignores the offset of `pwrite` on an O_APPEND file.
    let file = storage.open(path, OpenMode::Write)?;
    file.write_all_at(&new_line, 0)?;
    file.sync_data()?;
    tracing::info!(log = %path.display(), from = LOG_VERSION_OLDEST, to = LOG_VERSION, "log header upgraded");
    Ok(())
}

/// Reads the line starting at `offset` of `file` into `buf` (newline included).
pub fn read_line_at(file: &dyn StorageFile, offset: u64, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.clear();
    let mut chunk = [0u8; 64 * 1024];
    let mut pos = offset;
    loop {
        let n = file.read_at(&mut chunk, pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "record runs past the end of the log",
            ));
        }
        if let Some(i) = chunk[..n].iter().position(|b| *b == b'\n') {
            buf.extend_from_slice(&chunk[..=i]);
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        pos += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StdStorage;

    fn upsert_line(id: &str) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_upsert(&mut buf, id, "t", b"{}", &[1.0, 2.0]);
        buf
    }

    fn replay_ids(path: &Path) -> (Vec<String>, ReplayReport) {
        let mut ids = Vec::new();
        let (_, report) = DocLog::open(&StdStorage, path, None, |_, r| {
            if let Record::Upsert { id, .. } = r {
                ids.push(id)
            }
            Ok(())
        })
        .expect("open");
        (ids, report)
    }

    #[test]
    fn appended_records_replay_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("docs.jsonl");
        let log = DocLog::create(&StdStorage, &path, 1).expect("create");
        for id in ["a", "b", "c"] {
            let (_, end) = log.append(&upsert_line(id)).expect("append");
            log.sync_to(end).expect("sync");
        }
        drop(log);
        let (ids, report) = replay_ids(&path);
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(report.torn_bytes, 0);
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_the_log_stays_appendable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("docs.jsonl");
        let log = DocLog::create(&StdStorage, &path, 1).expect("create");
        log.append(&upsert_line("a")).expect("append");
        drop(log);
        let torn = upsert_line("b");
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).expect("open");
        file.write_all(&torn[..torn.len() / 2]).expect("write half a record");
        drop(file);
        let (ids, report) = replay_ids(&path);
        assert_eq!(ids, ["a"]);
        assert_eq!(report.torn_bytes as usize, torn.len() / 2);
        let (log, _) = DocLog::open(&StdStorage, &path, None, |_, _| Ok(())).expect("reopen");
        log.append(&upsert_line("c")).expect("append after repair");
        drop(log);
        assert_eq!(replay_ids(&path).0, ["a", "c"]);
    }

    #[test]
    fn corruption_before_good_records_refuses_to_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("docs.jsonl");
        let log = DocLog::create(&StdStorage, &path, 1).expect("create");
        log.append(&upsert_line("a")).expect("append");
        log.append(b"{not json}\n").expect("append garbage");
        log.append(&upsert_line("b")).expect("append");
        drop(log);
        let err = DocLog::open(&StdStorage, &path, None, |_, _| Ok(())).expect_err("corrupt");
        assert!(matches!(err, LogError::Corrupt { line: 2, .. }), "{err}");
    }

    #[test]
    fn vectors_round_trip_bit_exact_as_base64() {
        let vector = [0.1f32, -3.5e-38, f32::MIN_POSITIVE, 1.0 / 3.0, -0.0, 7.25e12];
        let Value::Object(metadata) = serde_json::json!({"q": "say \"hi\"\n", "n": [1, 2.5]}) else {
            unreachable!()
        };
        let mut line = Vec::new();
        let metadata_json = serde_json::to_vec(&metadata).expect("json");
        encode_upsert(&mut line, "a\"b", "line one\nline two", &metadata_json, &vector);
        let text = std::str::from_utf8(&line).expect("utf-8");
        assert!(text.contains(r#""vector":""#), "vector is a base64 string: {text}");
        assert_eq!(text.matches('\n').count(), 1, "one line: {text}");
        let Ok(Record::Upsert {
            id,
            text: doc_text,
            metadata: read_metadata,
            vector: read,
        }) = serde_json::from_slice::<Record>(&line)
        else {
            panic!("parses: {text}");
        };
        assert_eq!((id.as_str(), doc_text.as_str()), ("a\"b", "line one\nline two"));
        assert_eq!(read_metadata, metadata);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&read), bits(&vector));
        let truncated = br#"{"op":"upsert","id":"a","vector":"AACAPw=="}"#;
        assert!(serde_json::from_slice::<Record>(truncated).is_ok(), "one whole f32");
        let ragged = br#"{"op":"upsert","id":"a","vector":"AACA"}"#;
        let err = serde_json::from_slice::<Record>(ragged).expect_err("3 bytes is not an f32");
        assert!(err.to_string().contains("whole number of f32s"), "{err}");
    }

    #[test]
    fn a_version_1_log_replays_and_is_upgraded_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("docs.jsonl");
        let v1 = concat!(
            r#"{"op":"header","format":"tvs-doclog","version":1,"generation":4}"#,
            "\n",
            r#"{"op":"upsert","id":"old","text":"t","metadata":{},"vector":[0.5,-2.0]}"#,
            "\n",
        );
        std::fs::write(&path, v1).expect("write v1 log");
        let mut vectors = Vec::new();
        let (log, report) = DocLog::open(&StdStorage, &path, None, |_, r| {
            if let Record::Upsert { vector, .. } = r {
                vectors.push(vector)
            }
            Ok(())
        })
        .expect("a version-1 log opens");
        assert_eq!(vectors, [vec![0.5, -2.0]]);
        assert_eq!((report.records, report.end), (1, v1.len() as u64));
        log.append(&upsert_line("new")).expect("append");
        drop(log);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(
            text.starts_with(r#"{"op":"header","format":"tvs-doclog","version":2,"generation":4}"#),
            "{text}"
        );
        assert!(
            text.contains(r#""vector":[0.5,-2.0]"#),
            "old records kept verbatim: {text}"
        );
        assert_eq!(replay_ids(&path).0, ["old", "new"]);
    }

    #[test]
    fn a_log_of_a_newer_version_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("docs.jsonl");
        std::fs::write(
            &path,
            "{\"op\":\"header\",\"format\":\"tvs-doclog\",\"version\":9,\"generation\":1}\n",
        )
        .expect("write");
        let err = DocLog::open(&StdStorage, &path, None, |_, _| Ok(())).expect_err("newer version");
        assert!(matches!(err, LogError::Version { found: 9, .. }), "{err}");
        assert!(err.to_string().contains("reads versions 1 to 2"), "{err}");
    }

    #[test]
    fn a_file_without_header_is_not_taken_for_a_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("docs.jsonl");
        std::fs::write(&path, b"{\"page_content\":\"x\"}\n").expect("write");
        assert!(matches!(
            DocLog::open(&StdStorage, &path, None, |_, _| Ok(())),
            Err(LogError::NoHeader { .. })
        ));
    }
}
