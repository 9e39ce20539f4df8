//! Snapshots of a store in `vector_store/`: what lets a store open without parsing its log.
//!
//! Files: `manifest.json` names the snapshot files and the log generation and offset they
//! cover; `snap-{generation}-{offset}.docs` holds every live document except its vector;
//! `.vectors` holds the exact-mode slab as raw little-endian f32 rows, or `.usearch` the HNSW
//! graph and, for a graph that quantises, `.slab` the f32 rows beside it (same format as
//! `.vectors`). Every data file ends with a CRC-32 of its contents.
//!
//! Commit protocol: data files are written and fsynced under fresh names, then the manifest is
//! replaced atomically (temp, fsync, rename, fsync dir), then files of older snapshots are
//! removed. A crash at any point leaves the previous manifest and its files intact. A snapshot
//! that fails its checksum is ignored and the store replays its whole log instead.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::packed::PackedDoc;
use crate::slab::{self, Slab};
use crate::storage::{self, FileReader, FileWriter, OpenMode, Storage};

pub const MANIFEST: &str = "manifest.json";
const DOCS_MAGIC: &[u8; 8] = b"TVSDOCS1";

/// Contents of `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// Generation of the log this snapshot was taken against.
    pub log_generation: u64,
    /// Log offset up to which records are reflected in the snapshot.
    pub log_offset: u64,
    pub docs_file: String,
    /// `vectors` (raw slab) or `usearch` (graph).
    pub vectors_kind: String,
    pub vectors_file: String,
    /// Graph node key the next vector gets (graph snapshots; 0 otherwise).
    #[serde(default)]
    pub next_node: u64,
    pub documents: u64,
    /// How the graph's search breadth was calibrated (graph snapshots of calibrated graphs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<crate::vectors::Calibration>,
    /// The scale of an i8 graph's codes ([`crate::vectors::Codes::Scaled`]); absent: usearch
    /// cast the vectors itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_scale: Option<f32>,
    /// The f32 slab kept beside a quantising graph (same format as a `vectors` file). A
    /// quantising graph's snapshot without one (written by an older tvs) has its rows read back
    /// from the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slab_file: Option<String>,
    /// A graph's parts after the first (`vectors_file`), in order; only with the `usearch-parts`
    /// kind, which a tvs that knows one part only refuses (it then replays its log).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_graph_files: Vec<String>,
}

/// `vectors_kind` of a graph in one file.
pub const KIND_GRAPH: &str = "usearch";
/// `vectors_kind` of a graph in parts: `vectors_file` then `more_graph_files`.
pub const KIND_GRAPH_PARTS: &str = "usearch-parts";
/// `vectors_kind` of f32 rows for an exact scan.
pub const KIND_ROWS: &str = "vectors";

impl Manifest {
    /// The data files the manifest names.
    pub fn files(&self) -> impl Iterator<Item = &String> {
        [&self.docs_file, &self.vectors_file]
            .into_iter()
            .chain(&self.more_graph_files)
            .chain(&self.slab_file)
    }

    /// The graph's files, first part first (none for a snapshot of rows).
    pub fn graph_files(&self) -> Vec<&String> {
        match self.vectors_kind.as_str() {
            KIND_GRAPH | KIND_GRAPH_PARTS => std::iter::once(&self.vectors_file)
                .chain(&self.more_graph_files)
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// One document of a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapDoc {
    pub slot: u64,
    /// Graph node holding the document's vector (`u64::MAX` for slab snapshots).
    pub node: u64,
    pub offset: u64,
    /// Id, text and metadata JSON.
    pub doc: PackedDoc,
}

/// Writes a data file with a trailing CRC; the file is fsynced before returning.
pub fn write_data_file(
    storage: &dyn Storage,
    path: &Path,
    body: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    struct Crc<W> {
        inner: W,
        hasher: crc32fast::Hasher,
    }
    impl<W: Write> Write for Crc<W> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = self.inner.write(buf)?;
            self.hasher.update(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.inner.flush()
        }
    }
    let file = storage.open(path, OpenMode::CreateNew)?;
    let mut out = Crc {
        inner: BufWriter::with_capacity(1 << 20, FileWriter(&*file)),
        hasher: crc32fast::Hasher::new(),
    };
    body(&mut out)?;
    let Crc { mut inner, hasher } = out;
    inner.write_all(&hasher.finalize().to_le_bytes())?;
    inner.flush()?;
    drop(inner);
    file.sync_all()
}

/// Reads a data file and checks its CRC, returning the contents without it.
pub fn read_data_file(storage: &dyn Storage, path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = storage::read_all(storage, path)?;
    let body_len = body_len(bytes.len() as u64)? as usize;
    let stored = bytes[body_len..].try_into().expect("4 bytes");
    check_crc(path, crc32fast::hash(&bytes[..body_len]), stored)?;
    bytes.truncate(body_len);
    Ok(bytes)
}

/// Length of a data file's body: all but its 4-byte CRC trailer.
fn body_len(file_len: u64) -> io::Result<u64> {
    file_len
        .checked_sub(4)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "snapshot file too short"))
}

/// Compares a body's CRC with the little-endian trailer stored after it.
fn check_crc(path: &Path, computed: u32, stored: [u8; 4]) -> io::Result<()> {
    if computed != u32::from_le_bytes(stored) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} fails its checksum", path.display()),
        ));
    }
    Ok(())
}

/// Checks a data file's CRC by streaming it through a small buffer, for files a library then
/// reads itself (the HNSW graph): reading it whole into memory first would cost a second copy
/// of hundreds of megabytes and their page faults.
pub fn verify_data_file(storage: &dyn Storage, path: &Path) -> io::Result<()> {
    use std::io::Read;
    let handle = storage.open(path, OpenMode::Read)?;
    let mut body_left = body_len(handle.size()?)?;
    let mut file = FileReader::new(&*handle, 0);
    let mut hasher = crc32fast::Hasher::new();
    let mut chunk = vec![0u8; 1 << 20];
    while body_left > 0 {
        let n = body_left.min(chunk.len() as u64) as usize;
        file.read_exact(&mut chunk[..n])?;
        hasher.update(&chunk[..n]);
        body_left -= n as u64;
    }
    let mut stored = [0u8; 4];
    file.read_exact(&mut stored)?;
    check_crc(path, hasher.finalize(), stored)
}

/// Encodes documents: magic, count, then per document slot, graph node, log offset and three
/// length-prefixed byte strings (id, text, metadata JSON).
pub fn encode_docs<'a>(
    out: &mut dyn Write,
    count: u64,
    docs: impl Iterator<Item = (u64, u64, u64, &'a PackedDoc)>,
) -> io::Result<()> {
    out.write_all(DOCS_MAGIC)?;
    out.write_all(&count.to_le_bytes())?;
    for (slot, node, offset, doc) in docs {
        out.write_all(&slot.to_le_bytes())?;
        out.write_all(&node.to_le_bytes())?;
        out.write_all(&offset.to_le_bytes())?;
        for field in [doc.id().as_bytes(), doc.text().as_bytes(), doc.metadata_json()] {
            out.write_all(&(field.len() as u64).to_le_bytes())?;
            out.write_all(field)?;
        }
    }
    Ok(())
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("snapshot documents: {msg}"))
}

/// Decodes what [`encode_docs`] wrote. Metadata stays JSON text, parsed when it is read (the
/// file's CRC, checked before this, vouches for it).
pub fn decode_docs(bytes: &[u8]) -> io::Result<Vec<SnapDoc>> {
    let mut pos = 0usize;
    let mut take = |n: usize| -> io::Result<&[u8]> {
        let end = pos
            .checked_add(n)
            .filter(|e| *e <= bytes.len())
            .ok_or_else(|| bad("truncated"))?;
        let slice = &bytes[pos..end];
        pos = end;
        Ok(slice)
    };
    if take(8)? != DOCS_MAGIC {
        return Err(bad("bad magic"));
    }
    let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    let count = u64_of(take(8)?);
    let mut docs = Vec::with_capacity(count.min(1 << 24) as usize);
    for _ in 0..count {
        let slot = u64_of(take(8)?);
        let node = u64_of(take(8)?);
        let offset = u64_of(take(8)?);
        let mut field = || -> io::Result<&[u8]> {
            let len = u64_of(take(8)?) as usize;
            take(len)
        };
        let id = std::str::from_utf8(field()?).map_err(|_| bad("id not UTF-8"))?;
        let text = std::str::from_utf8(field()?).map_err(|_| bad("text not UTF-8"))?;
        let metadata = field()?;
        if metadata.first() != Some(&b'{') {
            return Err(bad("metadata is not a JSON object"));
        }
        let doc = PackedDoc::new(id, text, metadata).map_err(|e| bad(&e))?;
        docs.push(SnapDoc {
            slot,
            node,
            offset,
            doc,
        });
    }
    Ok(docs)
}

/// Encodes f32 values little-endian.
pub fn encode_f32s(out: &mut dyn Write, values: &[f32]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(values.len().min(1 << 18) * 4);
    for chunk in values.chunks(1 << 18) {
        buf.clear();
        for v in chunk {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        out.write_all(&buf)?;
    }
    Ok(())
}

/// Reads a data file of little-endian f32 values (a vector slab) straight into the vector that
/// holds them, checking its CRC: no intermediate byte buffer, no second copy.
pub fn read_f32_file(storage: &dyn Storage, path: &Path) -> io::Result<Vec<f32>> {
    use std::io::Read;
    let handle = storage.open(path, OpenMode::Read)?;
    let body_len = body_len(handle.size()?)?;
    let mut file = FileReader::new(&*handle, 0);
    if body_len % 4 != 0 {
        return Err(bad("vector file length is not a multiple of 4"));
    }
    let mut values = vec![0f32; (body_len / 4) as usize];
    file.read_exact(bytemuck::cast_slice_mut(&mut values))?;
    let mut stored = [0u8; 4];
    file.read_exact(&mut stored)?;
    check_crc(path, crc32fast::hash(bytemuck::cast_slice(&values)), stored)?;
    // The file is little-endian; this compiles to nothing on little-endian machines.
    for value in &mut values {
        *value = f32::from_bits(u32::from_le(value.to_bits()));
    }
    Ok(values)
}

/// CRC-32 of `bytes`, the halves of a big input on two threads (combined as crc32fast allows):
/// checking a mapped snapshot is most of what opening a big tenant costs.
pub fn crc_of(bytes: &[u8]) -> u32 {
    const PARALLEL_FROM: usize = 16 << 20;
    if bytes.len() < PARALLEL_FROM {
        return crc32fast::hash(bytes);
    }
    let hash = |part: &[u8]| {
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(part);
        hasher
    };
    let (first, second) = bytes.split_at(bytes.len() / 2);
    let (mut head, tail) = std::thread::scope(|scope| {
        let tail = scope.spawn(|| hash(second));
        let head = hash(first);
        (head, tail.join())
    });
    match tail {
        Ok(tail) => {
            head.combine(&tail);
            head.finalize()
        }
        Err(_) => crc32fast::hash(bytes),
    }
}

/// A data file mapped copy-on-write with its CRC checked: the mapping (trailer included) and
/// the body's length. `None` where the storage cannot map files.
pub fn map_data_file(storage: &dyn Storage, path: &Path) -> io::Result<Option<(memmap2::MmapMut, usize)>> {
    let handle = storage.open(path, OpenMode::Read)?;
    let file_len = handle.size()?;
    let body_len = body_len(file_len)? as usize;
    let Some(map) = handle.map_private(file_len as usize)? else {
        return Ok(None);
    };
    let stored = map[body_len..].try_into().expect("4 bytes");
    check_crc(path, crc_of(&map[..body_len]), stored)?;
    Ok(Some((map, body_len)))
}

/// A vector file's rows as a [`Slab`]: mapped where the storage allows, read otherwise; the
/// CRC is checked either way before a row is used.
pub fn read_slab(storage: &dyn Storage, path: &Path, dims: usize) -> io::Result<Slab> {
    let row_bytes = dims * 4;
    if let Some((map, body_len)) = map_data_file(storage, path)? {
        if body_len % row_bytes != 0 {
            return Err(bad("vector file length is not a whole number of rows"));
        }
        if let Some(slab) = Slab::from_map(dims, map, body_len / row_bytes, None) {
            return Ok(slab);
        }
    }
    let values = read_f32_file(storage, path)?;
    if values.len() % dims != 0 {
        return Err(bad("vector file length is not a whole number of rows"));
    }
    Ok(Slab::from_vec(dims, values))
}

/// Writes the rows beside a graph (`.slab`): the first `rows` rows of `slab`, a CRC per
/// block of them ([`slab::block_bytes_for`]), the block size and the rows' byte length (u64 LE
/// each), a CRC of that table, and the usual trailer over everything. [`open_slab_file`] checks
/// the table at open and each block when a row from it is first used.
pub fn write_slab_file(storage: &dyn Storage, path: &Path, slab: &Slab, rows: usize) -> io::Result<()> {
    write_slab_file_in_blocks(storage, path, slab, rows, slab::block_bytes_for(slab.dims()))
}

/// [`write_slab_file`] with a given block size (older tvs wrote 16 KiB blocks).
pub fn write_slab_file_in_blocks(
    storage: &dyn Storage,
    path: &Path,
    slab: &Slab,
    rows: usize,
    block_bytes: usize,
) -> io::Result<()> {
    struct Blocks<'a> {
        block_bytes: usize,
        inner: &'a mut dyn Write,
        hasher: crc32fast::Hasher,
        in_block: usize,
        crcs: Vec<u32>,
        total: u64,
    }
    impl Write for Blocks<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.block_bytes - self.in_block);
            self.inner.write_all(&buf[..n])?;
            self.hasher.update(&buf[..n]);
            self.in_block += n;
            self.total += n as u64;
            if self.in_block == self.block_bytes {
                let full = std::mem::take(&mut self.hasher);
                self.crcs.push(full.finalize());
                self.in_block = 0;
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.inner.flush()
        }
    }
    write_data_file(storage, path, |out| {
        let mut blocks = Blocks {
            block_bytes,
            inner: out,
            hasher: crc32fast::Hasher::new(),
            in_block: 0,
            crcs: Vec::new(),
            total: 0,
        };
        slab.write_rows(&mut blocks, rows)?;
        let Blocks {
            block_bytes: _,
            inner,
            hasher,
            in_block,
            mut crcs,
            total,
        } = blocks;
        if in_block > 0 {
            crcs.push(hasher.finalize());
        }
        let mut table: Vec<u8> = crcs.iter().flat_map(|c| c.to_le_bytes()).collect();
        table.extend_from_slice(&(block_bytes as u64).to_le_bytes());
        table.extend_from_slice(&total.to_le_bytes());
        table.extend_from_slice(&crc32fast::hash(&table).to_le_bytes());
        inner.write_all(&table)
    })
}

/// Opens a `.slab` file ([`write_slab_file`]): mapped with its block CRCs checked lazily where
/// the storage maps files, else read whole and checked.
pub fn open_slab_file(storage: &dyn Storage, path: &Path, dims: usize) -> io::Result<Slab> {
    let damaged = || io::Error::new(io::ErrorKind::InvalidData, format!("{} is damaged", path.display()));
    // (rows' byte length, block size, block CRCs) from the end of the body.
    let table_of = |body: &[u8]| -> io::Result<(usize, usize, Vec<u32>)> {
        let tail = body.len().checked_sub(20).ok_or_else(damaged)?;
        let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
        let (block_bytes, rows_bytes) = (u64_at(tail), u64_at(tail + 8));
        let stored_crc = u32::from_le_bytes(body[tail + 16..].try_into().expect("4 bytes"));
        if block_bytes == 0 || block_bytes > slab::MAX_BLOCK_BYTES as u64 {
            return Err(damaged());
        }
        let blocks = usize::try_from(rows_bytes.div_ceil(block_bytes)).map_err(|_| damaged())?;
        let rows_bytes = usize::try_from(rows_bytes).map_err(|_| damaged())?;
        let table_start = tail
            .checked_sub(blocks.checked_mul(4).ok_or_else(damaged)?)
            .ok_or_else(damaged)?;
        if table_start != rows_bytes
            || rows_bytes % (dims * 4) != 0
            || crc32fast::hash(&body[table_start..tail + 16]) != stored_crc
        {
            return Err(damaged());
        }
        let crcs = body[table_start..tail]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        Ok((rows_bytes, block_bytes as usize, crcs))
    };
    let handle = storage.open(path, OpenMode::Read)?;
    let file_len = handle.size()?;
    let body_len = body_len(file_len)? as usize;
    if let Some(map) = handle.map_private(file_len as usize)? {
        let (rows_bytes, block_bytes, crcs) = table_of(&map[..body_len])?;
        if let Some(slab) = Slab::from_map(dims, map, rows_bytes / (dims * 4), Some((block_bytes, crcs))) {
            return Ok(slab);
        }
    }
    let body = read_data_file(storage, path)?;
    let (rows_bytes, _, _) = table_of(&body)?;
    let values = body[..rows_bytes]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
        .collect();
    Ok(Slab::from_vec(dims, values))
}

/// Reads the manifest, if any.
pub fn read_manifest(storage: &dyn Storage, dir: &Path) -> io::Result<Option<Manifest>> {
    match storage::read_all(storage, &dir.join(MANIFEST)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| bad(&e.to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Commits `manifest` and removes files of older snapshots.
pub fn commit_manifest(storage: &dyn Storage, dir: &Path, manifest: &Manifest) -> io::Result<()> {
    let json = serde_json::to_vec_pretty(manifest).map_err(io::Error::other)?;
    storage::write_atomic(storage, dir, MANIFEST, &json)?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let stale_snapshot = name.starts_with("snap-") && manifest.files().all(|f| f != name);
        // Leftovers of an interrupted write_atomic.
        let stale_temp = name.starts_with('.') && name.contains(".tmp-");
        if stale_snapshot || stale_temp {
            let _ = storage.remove_file(&entry.path());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StdStorage;
    use serde_json::{Value, json};

    #[test]
    fn documents_round_trip_and_corruption_is_caught() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("snap-1-10.docs");
        let Value::Object(meta) = json!({"a": [1, {"b": null}], "c": "é"}) else {
            unreachable!()
        };
        let meta_json = serde_json::to_vec(&meta).expect("json");
        let x = PackedDoc::new("x", "hello", &meta_json).expect("pack");
        let y = PackedDoc::new("y", "", b"{}").expect("pack");
        write_data_file(&StdStorage, &path, |out| {
            encode_docs(out, 2, [(0u64, 3u64, 10u64, &x), (5, u64::MAX, 99, &y)].into_iter())
        })
        .expect("write");
        let docs = decode_docs(&read_data_file(&StdStorage, &path).expect("read")).expect("decode");
        assert_eq!(docs.len(), 2);
        assert_eq!((docs[1].slot, docs[1].offset, docs[1].doc.id()), (5, 99, "y"));
        assert_eq!((docs[0].node, docs[0].doc.text()), (3, "hello"));
        assert_eq!(docs[0].doc.metadata(), meta);

        let mut bytes = fs::read(&path).expect("raw");
        bytes[20] ^= 0xff;
        assert!(verify_data_file(&StdStorage, &path).is_ok());
        fs::write(&path, bytes).expect("corrupt");
        assert!(read_data_file(&StdStorage, &path).is_err());
        assert!(verify_data_file(&StdStorage, &path).is_err());
    }

    #[test]
    fn a_vector_slab_round_trips_and_a_flipped_bit_is_caught() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("snap-1-10.vectors");
        let values: Vec<f32> = (0..1000).map(|i| (i as f32).sin()).collect();
        write_data_file(&StdStorage, &path, |out| encode_f32s(out, &values)).expect("write");
        assert_eq!(read_f32_file(&StdStorage, &path).expect("read"), values);
        let mut bytes = fs::read(&path).expect("raw");
        bytes[1234] ^= 0x01;
        fs::write(&path, &bytes).expect("corrupt");
        let err = read_f32_file(&StdStorage, &path).expect_err("checksum");
        assert!(err.to_string().contains("checksum"), "{err}");
        fs::write(&path, &bytes[..bytes.len() - 3]).expect("truncate");
        assert!(read_f32_file(&StdStorage, &path).is_err());
    }

    #[test]
    fn slab_files_in_row_blocks_and_in_the_older_16_kib_blocks_read_back_and_catch_damage() {
        let dims = 96; // 384-byte rows: the new blocks hold three
        assert_eq!(slab::block_bytes_for(dims), 1152);
        assert_eq!(slab::block_bytes_for(384), 1536);
        let rows = 200;
        let values: Vec<f32> = (0..rows * dims).map(|i| (i as f32).cos()).collect();
        let source = Slab::from_vec(dims, values.clone());
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, block) in [("rows", slab::block_bytes_for(dims)), ("older", 16 << 10)] {
            let path = dir.path().join(format!("snap-{name}.slab"));
            write_slab_file_in_blocks(&StdStorage, &path, &source, rows, block).expect("write");
            let read = open_slab_file(&StdStorage, &path, dims).expect("open");
            for row in [0, 57, rows - 1] {
                assert_eq!(
                    read.row(row as u64),
                    Some(&values[row * dims..(row + 1) * dims]),
                    "{name}"
                );
            }
            drop(read);
            // A flipped bit in row 100 withholds the rows of its block and no others.
            let mut bytes = fs::read(&path).expect("raw");
            bytes[100 * dims * 4 + 7] ^= 0x10;
            fs::write(&path, &bytes).expect("corrupt");
            let read = open_slab_file(&StdStorage, &path, dims).expect("the open checks the table only");
            assert_eq!(read.row(100), None, "{name}");
            assert!(read.is_damaged(), "{name}");
            let rows_a_block = block / (dims * 4);
            let outside = if name == "rows" { 100 + rows_a_block } else { 0 };
            assert!(read.row(outside as u64).is_some(), "{name}: another block is intact");
        }
    }
}
