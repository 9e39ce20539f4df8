//! The first layout of a tenant (before the clustered one), read once to carry a tenant over:
//! `tvs/t/head` = `{"generation": g, "segments": [names], "compacted": n}` naming segments
//! `tvs/t/log/{g}/{name}` of JSON lines, `{"op":"upsert","id","text","metadata","vector"}`
//! (vector as base64 of little-endian f32) or `{"op":"delete","ids":[...]}`, applied in order.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::{Document, KeyValue, KvError};

#[derive(Debug, Deserialize)]
pub(crate) struct Head {
    pub generation: u64,
    pub segments: Vec<String>,
}

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Record {
    Upsert {
        id: String,
        text: String,
        metadata: Map<String, Value>,
        vector: String,
    },
    Delete {
        ids: Vec<String>,
    },
}

fn decode_vector(text: &str) -> Option<Vec<f32>> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).ok()?;
    (bytes.len() % 4 == 0).then(|| {
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    })
}

/// The head, when `bytes` is a head of this layout.
pub(crate) fn parse_head(bytes: &[u8]) -> Option<Head> {
    serde_json::from_slice(bytes).ok()
}

/// Keys of the segments `head` names.
pub(crate) fn segment_keys(tenant: &str, head: &Head) -> Vec<String> {
    head.segments
        .iter()
        .map(|name| format!("tvs/{tenant}/log/{}/{name}", head.generation))
        .collect()
}

/// Every live document `head` names, by id. A segment that is gone means the head changed under
/// the reader: `None`, and the caller reads the head again.
pub(crate) fn documents(
    kv: &impl KeyValue,
    tenant: &str,
    head: &Head,
) -> Result<Option<BTreeMap<String, Document>>, KvError> {
    let corrupt = |reason: String| KvError::Corrupt {
        tenant: tenant.into(),
        reason,
    };
    let mut docs = BTreeMap::new();
    for key in segment_keys(tenant, head) {
        let Some(bytes) = kv.get(&key)? else {
            return Ok(None);
        };
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice(line).map_err(|e| corrupt(format!("segment {key}: {e}")))? {
                Record::Upsert {
                    id,
                    text,
                    metadata,
                    vector,
                } => {
                    let vector =
                        decode_vector(&vector).ok_or_else(|| corrupt("a vector is not base64 of f32s".into()))?;
                    docs.insert(
                        id.clone(),
                        Document {
                            id,
                            text,
                            metadata,
                            vector,
                        },
                    );
                }
                Record::Delete { ids } => {
                    for id in ids {
                        docs.remove(&id);
                    }
                }
            }
        }
    }
    Ok(Some(docs))
}
