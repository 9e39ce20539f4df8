//! Writing LangChain `FAISS.save_local` folders, so a tenant can leave tvs for the design it
//! replaced (no lock-in): `index.faiss` as `IndexFlatL2` or `IndexFlatIP`, and `index.pkl` as
//! LangChain pickles it, `(InMemoryDocstore, {row: docstore_id})` with pydantic-v2 `Document`s.
//!
//! The pickle is protocol 4 and names exactly three callables, the ones LangChain's own file
//! names: `InMemoryDocstore` and `Document` (rebuilt through `copyreg.__newobj__`-style
//! `NEWOBJ` + `BUILD`, as Python pickles them) and nothing else; metadata becomes plain dicts,
//! lists, strings, numbers, bools and None. [`crate::read_folder`] reads what this writes, and
//! real LangChain's `FAISS.load_local` opens it (tested in `tests/all/langchain.rs`).
//!
//! Invariant: a folder is written whole or not at all: both files go to temporary names in
//! the folder, are fsynced, then renamed over `index.faiss` and `index.pkl`, `index.pkl` last.

use std::io::{self, Write};
use std::path::Path;

use serde_json::{Map, Value as Json};

use crate::{FlatIndex, StoredDocument};
use tvs_store::config::Metric;

/// Writes an `IndexFlatL2` (`IxF2`, metric type 1) or `IndexFlatIP` (`IxFI`, metric type 0)
/// file, the layout FAISS's `write_index` produces for them: header with `ntotal` and two
/// `1 << 20` dummies, `is_trained`, then the count of f32 values and the row-major vectors.
pub fn write_faiss(out: &mut impl Write, index: &FlatIndex) -> io::Result<()> {
    let (fourcc, metric_type): (&[u8; 4], i32) = match index.metric {
        Metric::L2 => (b"IxF2", 1),
        Metric::Ip => (b"IxFI", 0),
        Metric::Cos => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "FAISS has no cosine flat index; write unit vectors as IndexFlatIP",
            ));
        }
    };
    let dims = i32::try_from(index.dims).map_err(|_| io::Error::other("too many dimensions"))?;
    let rows = index.rows() as i64;
    out.write_all(fourcc)?;
    out.write_all(&dims.to_le_bytes())?;
    out.write_all(&rows.to_le_bytes())?;
    let dummy: i64 = 1 << 20;
    out.write_all(&dummy.to_le_bytes())?;
    out.write_all(&dummy.to_le_bytes())?;
    out.write_all(&[1])?;
    out.write_all(&metric_type.to_le_bytes())?;
    out.write_all(&(index.values.len() as u64).to_le_bytes())?;
    let mut buf = Vec::with_capacity(index.values.len().min(1 << 16) * 4);
    for chunk in index.values.chunks(1 << 16) {
        buf.clear();
        for v in chunk {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        out.write_all(&buf)?;
    }
    Ok(())
}

/// Pickle opcodes of protocol 4 that the writer uses.
mod op {
    pub const PROTO: u8 = 0x80;
    pub const STOP: u8 = b'.';
    pub const MARK: u8 = b'(';
    pub const NONE: u8 = b'N';
    pub const TRUE: u8 = 0x88;
    pub const FALSE: u8 = 0x89;
    pub const BININT: u8 = b'J';
    pub const LONG1: u8 = 0x8a;
    pub const BINFLOAT: u8 = b'G';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE: u8 = b'X';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const EMPTY_LIST: u8 = b']';
    pub const EMPTY_DICT: u8 = b'}';
    pub const EMPTY_SET: u8 = 0x8f;
    pub const APPENDS: u8 = b'e';
    pub const SETITEM: u8 = b's';
    pub const SETITEMS: u8 = b'u';
    pub const POP: u8 = b'0';
    pub const ADDITEMS: u8 = 0x90;
    pub const TUPLE2: u8 = 0x86;
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const MEMOIZE: u8 = 0x94;
    pub const LONG_BINGET: u8 = b'j';
    pub const NEWOBJ: u8 = 0x81;
    pub const BUILD: u8 = b'b';
}

/// Items per MARK … SETITEMS/APPENDS group, as Python's pickler batches them.
const BATCH: usize = 1000;

/// A protocol-4 pickle being written.
struct Pickler<W> {
    out: W,
    memo: u32,
}

impl<W: Write> Pickler<W> {
    fn byte(&mut self, b: u8) -> io::Result<()> {
        self.out.write_all(&[b])
    }

    fn str(&mut self, s: &str) -> io::Result<()> {
        if let Ok(len) = u8::try_from(s.len()) {
            self.out.write_all(&[op::SHORT_BINUNICODE, len])?;
        } else {
            let len = u32::try_from(s.len()).map_err(|_| io::Error::other("a string over 4 GiB"))?;
            self.byte(op::BINUNICODE)?;
            self.out.write_all(&len.to_le_bytes())?;
        }
        self.out.write_all(s.as_bytes())
    }

    fn int(&mut self, value: i128) -> io::Result<()> {
        if let Ok(small) = i32::try_from(value) {
            self.byte(op::BININT)?;
            return self.out.write_all(&small.to_le_bytes());
        }
        // LONG1: little-endian two's complement, the fewest bytes that keep the sign.
        let bytes = value.to_le_bytes();
        let mut len = bytes.len();
        while len > 1 {
            let (top, next) = (bytes[len - 1], bytes[len - 2]);
            let redundant = (top == 0 && next & 0x80 == 0) || (top == 0xff && next & 0x80 != 0);
            if !redundant {
                break;
            }
            len -= 1;
        }
        self.out.write_all(&[op::LONG1, len as u8])?;
        self.out.write_all(&bytes[..len])
    }

    /// Pushes a class (`STACK_GLOBAL`), memoized so later uses fetch it; returns its memo slot.
    fn class(&mut self, module: &str, name: &str) -> io::Result<u32> {
        self.str(module)?;
        self.str(name)?;
        self.byte(op::STACK_GLOBAL)?;
        self.byte(op::MEMOIZE)?;
        self.memo += 1;
        Ok(self.memo - 1)
    }

    fn get(&mut self, slot: u32) -> io::Result<()> {
        self.byte(op::LONG_BINGET)?;
        self.out.write_all(&slot.to_le_bytes())
    }

    fn json(&mut self, value: &Json, depth: usize) -> io::Result<()> {
        if depth > 64 {
            return Err(io::Error::other("metadata nested deeper than 64 levels"));
        }
        match value {
            Json::Null => self.byte(op::NONE),
            Json::Bool(b) => self.byte(if *b { op::TRUE } else { op::FALSE }),
            Json::Number(n) => {
                if let Some(i) = n.as_i64() {
                    self.int(i128::from(i))
                } else if let Some(u) = n.as_u64() {
                    self.int(i128::from(u))
                } else {
                    let f = n.as_f64().unwrap_or(f64::NAN);
                    self.byte(op::BINFLOAT)?;
                    self.out.write_all(&f.to_be_bytes())
                }
            }
            Json::String(s) => self.str(s),
            Json::Array(items) => {
                self.byte(op::EMPTY_LIST)?;
                for batch in items.chunks(BATCH) {
                    self.byte(op::MARK)?;
                    for item in batch {
                        self.json(item, depth + 1)?;
                    }
                    self.byte(op::APPENDS)?;
                }
                Ok(())
            }
            Json::Object(map) => self.dict(map, depth),
        }
    }

    fn dict(&mut self, map: &Map<String, Json>, depth: usize) -> io::Result<()> {
        self.byte(op::EMPTY_DICT)?;
        let items: Vec<(&String, &Json)> = map.iter().collect();
        for batch in items.chunks(BATCH) {
            self.byte(op::MARK)?;
            for (key, value) in batch {
                self.str(key)?;
                self.json(value, depth + 1)?;
            }
            self.byte(op::SETITEMS)?;
        }
        Ok(())
    }

    /// A pydantic-v2 `Document` as `Document.__getstate__` gives it: its fields in `__dict__`
    /// (`id`, `metadata`, `page_content`, `type`), the fields set, no extras, no privates.
    fn document(&mut self, class: u32, doc: &StoredDocument) -> io::Result<()> {
        self.get(class)?;
        self.byte(op::EMPTY_TUPLE)?;
        self.byte(op::NEWOBJ)?;
        self.byte(op::EMPTY_DICT)?;
        self.byte(op::MARK)?;
        self.str("__dict__")?;
        self.byte(op::EMPTY_DICT)?;
        self.byte(op::MARK)?;
        self.str("id")?;
        self.str(&doc.id)?;
        self.str("metadata")?;
        self.dict(&doc.metadata, 0)?;
        self.str("page_content")?;
        self.str(&doc.text)?;
        self.str("type")?;
        self.str("Document")?;
        self.byte(op::SETITEMS)?;
        self.str("__pydantic_extra__")?;
        self.byte(op::NONE)?;
        self.str("__pydantic_fields_set__")?;
        self.byte(op::EMPTY_SET)?;
        self.byte(op::MARK)?;
        for field in ["id", "metadata", "page_content"] {
            self.str(field)?;
        }
        self.byte(op::ADDITEMS)?;
        self.str("__pydantic_private__")?;
        self.byte(op::NONE)?;
        self.byte(op::SETITEMS)?;
        self.byte(op::BUILD)
    }
}

/// Writes `index.pkl`: `(InMemoryDocstore({id: Document}), {row: id})`, rows in `documents`'
/// order (the order of the vectors in `index.faiss`).
pub fn write_docstore(out: impl Write, documents: &[StoredDocument]) -> io::Result<()> {
    let mut p = Pickler { out, memo: 0 };
    p.out.write_all(&[op::PROTO, 4])?;
    p.class("langchain_community.docstore.in_memory", "InMemoryDocstore")?;
    p.byte(op::EMPTY_TUPLE)?;
    p.byte(op::NEWOBJ)?;
    p.byte(op::EMPTY_DICT)?;
    p.str("_dict")?;
    p.byte(op::EMPTY_DICT)?;
    // Memoized for the documents to fetch; off the stack, which SETITEMS consumes.
    let document = p.class("langchain_core.documents.base", "Document")?;
    p.byte(op::POP)?;
    for batch in documents.chunks(BATCH) {
        p.byte(op::MARK)?;
        for doc in batch {
            p.str(&doc.id)?;
            p.document(document, doc)?;
        }
        p.byte(op::SETITEMS)?;
    }
    // `{"_dict": docs}` is the docstore's state.
    p.byte(op::SETITEM)?;
    p.byte(op::BUILD)?;
    p.byte(op::EMPTY_DICT)?;
    for (start, batch) in (0..).step_by(BATCH).zip(documents.chunks(BATCH)) {
        p.byte(op::MARK)?;
        for (row, doc) in (start..).zip(batch) {
            p.int(row)?;
            p.str(&doc.id)?;
        }
        p.byte(op::SETITEMS)?;
    }
    p.byte(op::TUPLE2)?;
    p.byte(op::STOP)?;
    p.out.flush()
}

/// Writes a whole `save_local` folder (created if missing), replacing the two files atomically
/// one after the other.
pub fn write_folder(dir: &Path, index: &FlatIndex, documents: &[StoredDocument]) -> io::Result<()> {
    if documents.len() != index.rows() {
        return Err(io::Error::other(format!(
            "{} documents for {} vectors",
            documents.len(),
            index.rows()
        )));
    }
    std::fs::create_dir_all(dir)?;
    let write = |name: &str, body: &dyn Fn(&mut io::BufWriter<&std::fs::File>) -> io::Result<()>| {
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let file = std::fs::File::create(&tmp)?;
        let mut out = io::BufWriter::new(&file);
        body(&mut out)?;
        out.flush()?;
        drop(out);
        file.sync_all()?;
        std::fs::rename(&tmp, dir.join(name))
    };
    write("index.faiss", &|out| write_faiss(out, index))?;
    write("index.pkl", &|out| write_docstore(out, documents))?;
    std::fs::File::open(dir)?.sync_all()
}
