//! Compact in-memory form of a store's documents: one allocation per document and an id index
//! that stores slots, not copies of ids.
//!
//! A document's id, text and metadata (compact JSON) live in one boxed byte string,
//! `[id length: u32 LE][text length: u32 LE][id][text][metadata JSON]`; metadata is parsed only
//! when a hit returns it or a filter reads it, and then only the fields the filter names. Parsed
//! maps, a separate id string and per-field allocations cost ~700 bytes a document, about half
//! the 1,536 bytes of a 384-d f32 vector; packed, a short document costs ~100.
//!
//! Invariants: the id and text parts are valid UTF-8 (they are only ever built from `&str`);
//! the metadata part is a JSON object written by serde_json (from a request, the log or a
//! CRC-checked snapshot).

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;
use serde_json::{Map, Value};

const HEADER: usize = 8;

/// A document's id, text and metadata JSON in one allocation.
#[derive(Clone, PartialEq, Eq)]
pub struct PackedDoc(Box<[u8]>);

impl std::fmt::Debug for PackedDoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedDoc")
            .field("id", &self.id())
            .field("text_bytes", &self.text().len())
            .field("metadata_bytes", &self.metadata_json().len())
            .finish()
    }
}

impl PackedDoc {
    /// Packs a document. Fails when the id or text is longer than a u32 can count (4 GiB).
    pub fn new(id: &str, text: &str, metadata_json: &[u8]) -> Result<PackedDoc, String> {
        let id_len = u32::try_from(id.len()).map_err(|_| "id longer than 4 GiB".to_string())?;
        let text_len = u32::try_from(text.len()).map_err(|_| "text longer than 4 GiB".to_string())?;
        let mut bytes = Vec::with_capacity(HEADER + id.len() + text.len() + metadata_json.len());
        bytes.extend_from_slice(&id_len.to_le_bytes());
        bytes.extend_from_slice(&text_len.to_le_bytes());
        bytes.extend_from_slice(id.as_bytes());
        bytes.extend_from_slice(text.as_bytes());
        bytes.extend_from_slice(metadata_json);
        Ok(PackedDoc(bytes.into_boxed_slice()))
    }

    fn lens(&self) -> (usize, usize) {
        let word =
            |at: usize| u32::from_le_bytes([self.0[at], self.0[at + 1], self.0[at + 2], self.0[at + 3]]) as usize;
        (word(0), word(4))
    }

    pub fn id(&self) -> &str {
        // Built from a &str, so this never falls back.
        std::str::from_utf8(self.id_bytes()).unwrap_or_default()
    }

    /// The id's bytes, without the UTF-8 check `id` pays (the id index hashes and compares
    /// these on every lookup).
    pub fn id_bytes(&self) -> &[u8] {
        let (id_len, _) = self.lens();
        &self.0[HEADER..HEADER + id_len]
    }

    pub fn text(&self) -> &str {
        let (id_len, text_len) = self.lens();
        let start = HEADER + id_len;
        std::str::from_utf8(&self.0[start..start + text_len]).unwrap_or_default()
    }

    pub fn metadata_json(&self) -> &[u8] {
        let (id_len, text_len) = self.lens();
        &self.0[HEADER + id_len + text_len..]
    }

    /// The metadata, parsed.
    pub fn metadata(&self) -> Map<String, Value> {
        parse_metadata(self.metadata_json())
    }

    /// Heap bytes held, with malloc's per-allocation overhead.
    pub fn heap_bytes(&self) -> usize {
        self.0.len().next_multiple_of(16) + 16
    }
}

/// Parses metadata JSON written by tvs. Empty bytes are an empty map; anything else that is not
/// an object (which only a bug could produce) is logged and read as empty rather than failing
/// the request that returns it.
pub fn parse_metadata(json: &[u8]) -> Map<String, Value> {
    if json.is_empty() {
        return Map::new();
    }
    serde_json::from_slice(json).unwrap_or_else(|e| {
        tracing::error!(error = %e, "stored metadata is not a JSON object; returning it empty");
        Map::new()
    })
}

/// Maps document ids to slots. The table stores only slots; the ids are read from the packed
/// documents, so an id is held once.
#[derive(Debug, Default)]
pub struct IdIndex {
    table: HashTable<u64>,
    hasher: RandomState,
}

impl IdIndex {
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Heap bytes of the table (a slot and a control byte per bucket).
    pub fn heap_bytes(&self) -> usize {
        self.table.capacity() * (size_of::<u64>() + 1)
    }

    /// Makes room for `additional` more ids without rehashing on the way.
    pub fn reserve<'a>(&mut self, additional: usize, id_of: impl Fn(u64) -> &'a [u8]) {
        let hasher = &self.hasher;
        self.table.reserve(additional, |s| hasher.hash_one(id_of(*s)));
    }

    /// The slot of `id`; `id_of` reads the id stored at a slot.
    pub fn get<'a>(&self, id: &[u8], id_of: impl Fn(u64) -> &'a [u8]) -> Option<u64> {
        let hash = self.hasher.hash_one(id);
        self.table.find(hash, |slot| id_of(*slot) == id).copied()
    }

    /// Records that `id` lives at `slot`; returns the slot it had before, if any.
    pub fn insert<'a>(&mut self, id: &[u8], slot: u64, id_of: impl Fn(u64) -> &'a [u8]) -> Option<u64> {
        let hash = self.hasher.hash_one(id);
        let hasher = &self.hasher;
        match self
            .table
            .entry(hash, |s| id_of(*s) == id, |s| hasher.hash_one(id_of(*s)))
        {
            hashbrown::hash_table::Entry::Occupied(mut found) => Some(std::mem::replace(found.get_mut(), slot)),
            hashbrown::hash_table::Entry::Vacant(vacant) => {
                vacant.insert(slot);
                None
            }
        }
    }

    /// Forgets `id`; returns its slot.
    pub fn remove<'a>(&mut self, id: &[u8], id_of: impl Fn(u64) -> &'a [u8]) -> Option<u64> {
        let hash = self.hasher.hash_one(id);
        match self.table.find_entry(hash, |slot| id_of(*slot) == id) {
            Ok(found) => Some(found.remove().0),
            Err(_) => None,
        }
    }

    pub fn slots(&self) -> impl Iterator<Item = u64> + '_ {
        self.table.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_packed_document_gives_back_its_parts() {
        let Value::Object(meta) = json!({"source": "a.md", "page": 3, "tags": ["x", "é"]}) else {
            unreachable!()
        };
        let json = serde_json::to_vec(&meta).expect("json");
        let doc = PackedDoc::new("doc-1", "héllo wörld", &json).expect("pack");
        assert_eq!(doc.id(), "doc-1");
        assert_eq!(doc.text(), "héllo wörld");
        assert_eq!(doc.metadata(), meta);
        let empty = PackedDoc::new("", "", b"").expect("pack");
        assert_eq!((empty.id(), empty.text()), ("", ""));
        assert!(empty.metadata().is_empty());
    }

    #[test]
    fn the_id_index_finds_inserts_replaces_and_removes() {
        let ids: [&[u8]; 4] = [b"a", b"b", b"c", b"d"];
        let id_of = |slot: u64| ids[slot as usize];
        let mut index = IdIndex::default();
        for (slot, id) in ids.iter().enumerate() {
            assert_eq!(index.insert(id, slot as u64, id_of), None);
        }
        assert_eq!(index.len(), 4);
        assert_eq!(index.get(b"c", id_of), Some(2));
        assert_eq!(index.get(b"zz", id_of), None);
        assert_eq!(index.insert(b"c", 2, id_of), Some(2));
        assert_eq!(index.remove(b"b", id_of), Some(1));
        assert_eq!(index.get(b"b", id_of), None);
        assert_eq!(index.remove(b"b", id_of), None);
        let mut slots: Vec<u64> = index.slots().collect();
        slots.sort_unstable();
        assert_eq!(slots, [0, 2, 3]);
    }
}
