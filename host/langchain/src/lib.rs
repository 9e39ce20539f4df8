//! tvs-langchain: reading LangChain `FAISS.save_local` folders (`index.faiss` + `index.pkl`) without Python,
//! so the stores of the design tvs replaces can be imported document for document.
//!
//! - `index.faiss`: flat indexes only (`IxF2`, L2; `IxFI`, inner product), the kinds LangChain's
//!   FAISS store creates. Layout, all little-endian: fourcc, `d` i32, `ntotal` i64, two i64
//!   dummies, `is_trained` u8, `metric_type` i32, then a u64 count of f32 values and the
//!   row-major vectors. Any other index type is refused by name.
//! - `index.pkl`: `(InMemoryDocstore, {row: docstore_id})` read by [`crate::pickle`], which
//!   executes nothing. Documents in pydantic-v2 state (`__dict__` with id, metadata,
//!   page_content, type; `__pydantic_fields_set__`) and pydantic-v1 state (`__fields_set__`, no
//!   id) are both understood.
//!
//! Invariant: a folder reads whole or not at all: every row of the index has a docstore id and
//! a document, every metadata value converts to JSON, else the error names the row.

pub mod export;
pub mod pickle;

use std::path::Path;

use serde_json::{Map, Value as Json};

use crate::pickle::Value;
use tvs_store::config::Metric;

/// Why a folder could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("index.faiss: {0}")]
    Faiss(String),
    #[error("index.pkl: {0}")]
    Pickle(#[from] pickle::PickleError),
    #[error("index.pkl: {0}")]
    Docstore(String),
}

/// The vectors of a flat FAISS index.
#[derive(Debug, Clone, PartialEq)]
pub struct FlatIndex {
    pub metric: Metric,
    pub dims: usize,
    /// Row-major, `dims` values per row.
    pub values: Vec<f32>,
}

impl FlatIndex {
    pub fn rows(&self) -> usize {
        self.values.len() / self.dims.max(1)
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.dims..(i + 1) * self.dims]
    }
}

/// Parses an `IndexFlatL2` / `IndexFlatIP` file.
pub fn read_faiss(bytes: &[u8]) -> Result<FlatIndex, ImportError> {
    let err = |what: String| ImportError::Faiss(what);
    let fourcc = bytes
        .get(..4)
        .ok_or_else(|| err("the file is shorter than its header".into()))?;
    let header_metric = match fourcc {
        b"IxF2" => Metric::L2,
        b"IxFI" => Metric::Ip,
        other => {
            let name = String::from_utf8_lossy(other);
            return Err(err(format!(
                "index type {name:?} is not a flat index; tvs imports IndexFlatL2 (IxF2) and IndexFlatIP (IxFI), the kinds LangChain's FAISS store creates"
            )));
        }
    };
    let mut pos = 4;
    let mut take = |n: usize| -> Result<&[u8], ImportError> {
        let slice = bytes
            .get(pos..pos + n)
            .ok_or_else(|| err(format!("the file ends at byte {} inside its header", bytes.len())))?;
        pos += n;
        Ok(slice)
    };
    let dims = i32::from_le_bytes(take(4)?.try_into().unwrap_or_default());
    let ntotal = i64::from_le_bytes(take(8)?.try_into().unwrap_or_default());
    take(16)?; // two dummies
    take(1)?; // is_trained
    let metric_type = i32::from_le_bytes(take(4)?.try_into().unwrap_or_default());
    let count = u64::from_le_bytes(take(8)?.try_into().unwrap_or_default());
    let metric = match metric_type {
        0 => Metric::Ip,
        1 => Metric::L2,
        other => {
            return Err(err(format!(
                "metric type {other} is neither inner product (0) nor L2 (1)"
            )));
        }
    };
    if metric != header_metric {
        return Err(err(format!(
            "the header says {header_metric:?} but the metric type says {metric:?}"
        )));
    }
    if dims <= 0 || ntotal < 0 {
        return Err(err(format!("impossible shape: d = {dims}, ntotal = {ntotal}")));
    }
    let (dims, ntotal) = (dims as usize, ntotal as u64);
    if count != ntotal.saturating_mul(dims as u64) {
        return Err(err(format!(
            "{count} values stored for {ntotal} vectors of {dims} dimensions"
        )));
    }
    let data_len = usize::try_from(count)
        .ok()
        .and_then(|c| c.checked_mul(4))
        .ok_or_else(|| err("the index is too large".into()))?;
    let data = bytes.get(pos..pos + data_len).ok_or_else(|| {
        err(format!(
            "the file is truncated: {} of {data_len} vector bytes",
            bytes.len() - pos
        ))
    })?;
    let values: Vec<f32> = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(err(format!("vector {} holds a value that is not finite", i / dims)));
    }
    Ok(FlatIndex { metric, dims, values })
}

/// One document of the docstore.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDocument {
    /// The docstore id (LangChain's document id).
    pub id: String,
    pub text: String,
    pub metadata: Map<String, Json>,
}

/// The classes a LangChain docstore pickle may name.
const DOCSTORE_CLASSES: [(&str, &str); 5] = [
    ("langchain_community.docstore.in_memory", "InMemoryDocstore"),
    ("langchain.docstore.in_memory", "InMemoryDocstore"),
    ("langchain_core.documents.base", "Document"),
    ("langchain.schema.document", "Document"),
    ("langchain.docstore.document", "Document"),
];

/// Parses `index.pkl`: the documents in index-row order.
pub fn read_docstore(bytes: &[u8]) -> Result<Vec<StoredDocument>, ImportError> {
    let bad = |what: String| ImportError::Docstore(what);
    let root = pickle::parse(bytes, &DOCSTORE_CLASSES)?;
    let Value::Tuple(parts) = &root else {
        return Err(bad(format!(
            "expected (docstore, index_to_docstore_id), found a {}",
            root.kind()
        )));
    };
    let [docstore, mapping] = parts.as_slice() else {
        return Err(bad(format!("expected a pair, found a tuple of {}", parts.len())));
    };
    let Value::Object(docstore) = docstore else {
        return Err(bad(format!(
            "expected an InMemoryDocstore, found a {}",
            docstore.kind()
        )));
    };
    let docs = docstore
        .borrow()
        .state
        .as_ref()
        .and_then(|state| state.get("_dict"))
        .ok_or_else(|| bad("the docstore has no _dict".into()))?;
    let Value::Dict(docs) = docs else {
        return Err(bad("the docstore's _dict is not a dict".into()));
    };
    let Value::Dict(mapping) = mapping else {
        return Err(bad(format!("index_to_docstore_id is a {}, not a dict", mapping.kind())));
    };
    let docs = docs.borrow();
    let mut rows: Vec<(i64, String)> = Vec::new();
    for (row, id) in mapping.borrow().iter() {
        let (Value::Int(row), Value::Str(id)) = (row, id) else {
            return Err(bad(format!(
                "index_to_docstore_id maps a {} to a {}",
                row.kind(),
                id.kind()
            )));
        };
        rows.push((*row, id.clone()));
    }
    rows.sort_by_key(|(row, _)| *row);
    if rows.iter().enumerate().any(|(i, (row, _))| *row != i as i64) {
        return Err(bad("index_to_docstore_id does not cover rows 0..n exactly once".into()));
    }
    rows.into_iter()
        .map(|(row, id)| {
            let doc = docs
                .iter()
                .find(|(k, _)| k.as_str() == Some(id.as_str()))
                .map(|(_, v)| v.clone())
                .ok_or_else(|| bad(format!("row {row}: docstore id {id:?} has no document")))?;
            document(&id, &doc).map_err(|e| bad(format!("row {row} ({id}): {e}")))
        })
        .collect()
}

fn document(id: &str, value: &Value) -> Result<StoredDocument, String> {
    let Value::Object(object) = value else {
        return Err(format!("expected a Document, found a {}", value.kind()));
    };
    let object = object.borrow();
    let state = object.state.as_ref().ok_or("the Document has no state")?;
    // pydantic v2 and v1 both keep the fields in `__dict__`; a bare dict is older still.
    let fields = state.get("__dict__").unwrap_or_else(|| state.clone());
    let text = match fields.get("page_content") {
        Some(Value::Str(text)) => text,
        Some(other) => return Err(format!("page_content is a {}", other.kind())),
        None => return Err("the Document has no page_content".into()),
    };
    let metadata = match fields.get("metadata") {
        None | Some(Value::None) => Map::new(),
        Some(value) => match to_json(&value, 0)? {
            Json::Object(map) => map,
            other => return Err(format!("metadata is not a dict but {other}")),
        },
    };
    Ok(StoredDocument {
        id: id.to_owned(),
        text,
        metadata,
    })
}

/// Converts metadata to JSON: dicts with string keys, lists, tuples and sets (as arrays),
/// strings, numbers, bools and None.
fn to_json(value: &Value, depth: usize) -> Result<Json, String> {
    if depth > 64 {
        return Err("metadata nested deeper than 64 levels".into());
    }
    Ok(match value {
        Value::None => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::UInt(u) => Json::from(*u),
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Json::Number)
            .ok_or_else(|| format!("metadata holds {f}, which JSON cannot"))?,
        Value::Str(s) => Json::String(s.clone()),
        Value::Tuple(items) => Json::Array(items.iter().map(|v| to_json(v, depth + 1)).collect::<Result<_, _>>()?),
        Value::List(items) | Value::Set(items) => Json::Array(
            items
                .borrow()
                .iter()
                .map(|v| to_json(v, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Value::Dict(items) => {
            let mut map = Map::new();
            for (k, v) in items.borrow().iter() {
                let key = match k {
                    Value::Str(s) => s.clone(),
                    Value::Int(i) => i.to_string(),
                    other => return Err(format!("a metadata key is a {}", other.kind())),
                };
                map.insert(key, to_json(v, depth + 1)?);
            }
            Json::Object(map)
        }
        other => return Err(format!("metadata holds a {}, which is not JSON", other.kind())),
    })
}

/// A whole `FAISS.save_local` folder.
#[derive(Debug)]
pub struct SavedStore {
    pub index: FlatIndex,
    pub documents: Vec<StoredDocument>,
}

/// Reads `dir/index.faiss` and `dir/index.pkl` and checks they agree.
pub fn read_folder(dir: &Path) -> Result<SavedStore, ImportError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|source| ImportError::Io {
            path: path.display().to_string(),
            source,
        })
    };
    let index = read_faiss(&read("index.faiss")?)?;
    let documents = read_docstore(&read("index.pkl")?)?;
    if documents.len() != index.rows() {
        return Err(ImportError::Docstore(format!(
            "{} documents for {} vectors in index.faiss",
            documents.len(),
            index.rows()
        )));
    }
    Ok(SavedStore { index, documents })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(fourcc: &[u8; 4], metric_type: i32, dims: i32, rows: &[&[f32]]) -> Vec<u8> {
        let mut out = fourcc.to_vec();
        out.extend(dims.to_le_bytes());
        out.extend((rows.len() as i64).to_le_bytes());
        out.extend([0u8; 16]);
        out.push(1);
        out.extend(metric_type.to_le_bytes());
        let values: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        out.extend((values.len() as u64).to_le_bytes());
        for v in values {
            out.extend(v.to_le_bytes());
        }
        out
    }

    #[test]
    fn what_the_writer_writes_reads_back_exactly() {
        let index = FlatIndex {
            metric: Metric::Ip,
            dims: 3,
            values: vec![1.0, -2.5, 3.25, f32::MIN_POSITIVE, 0.0, -0.0],
        };
        let mut faiss = Vec::new();
        export::write_faiss(&mut faiss, &index).expect("write");
        assert_eq!(read_faiss(&faiss).expect("read"), index);

        let metadata = |v: Json| match v {
            Json::Object(map) => map,
            _ => Map::new(),
        };
        let documents = vec![
            StoredDocument {
                id: "a".into(),
                text: "Grüße, 世界 🚀".into(),
                metadata: metadata(serde_json::json!({
                    "small": 7, "i32_edge": 2147483648_i64, "neg": -2147483649_i64,
                    "big": 1_099_511_627_776_i64, "huge": 18_446_744_073_709_551_615_u64,
                    "min": i64::MIN, "float": -0.5, "none": null, "yes": true, "no": false,
                    "nested": {"tags": ["x", 1, [2.5, null]], "deep": {"k": "v"}},
                    "long_text": "z".repeat(300),
                })),
            },
            StoredDocument {
                id: "b".repeat(260),
                text: String::new(),
                metadata: Map::new(),
            },
        ];
        let many: Vec<StoredDocument> = (0..2500)
            .map(|i| StoredDocument {
                id: format!("d{i}"),
                text: format!("text {i}"),
                metadata: metadata(serde_json::json!({"i": i, "list": (0..i % 5).collect::<Vec<_>>()})),
            })
            .collect();
        for docs in [documents, many] {
            let mut pkl = Vec::new();
            export::write_docstore(&mut pkl, &docs).expect("write");
            assert_eq!(read_docstore(&pkl).expect("read"), docs);
        }
    }

    #[test]
    fn flat_indexes_read_and_other_kinds_are_named() {
        let index = read_faiss(&flat(b"IxFI", 0, 2, &[&[1.0, 2.0], &[3.0, 4.0]])).expect("read");
        assert_eq!((index.metric, index.dims, index.rows()), (Metric::Ip, 2, 2));
        assert_eq!(index.row(1), &[3.0, 4.0]);

        let hnsw = read_faiss(b"IHNf\x02\x00\x00\x00").expect_err("hnsw");
        assert!(hnsw.to_string().contains("\"IHNf\""), "{hnsw}");
        let mut truncated = flat(b"IxF2", 1, 2, &[&[1.0, 2.0]]);
        truncated.truncate(truncated.len() - 2);
        assert!(
            read_faiss(&truncated)
                .expect_err("short")
                .to_string()
                .contains("truncated")
        );
        let mixed = read_faiss(&flat(b"IxF2", 0, 2, &[])).expect_err("metric");
        assert!(mixed.to_string().contains("metric type"), "{mixed}");
    }
}
