//! The built-in data-plane guest of tvs, compiled to a `wasm32-wasip2` component.
//!
//! The host instantiates it afresh for every ingest or search request. It sees the calling
//! tenant's data only through the imported `collection` and `embedder` interfaces of
//! `wit/`, which take no tenant parameter: this code cannot name another tenant.
//!
//! The pure parts (chunking, MMR) live in `tvs-guest-core`, unit-tested natively.

use tvs_guest_core::{chunk, mmr};

wit_bindgen::generate!({
    path: "../../wit",
    world: "guest",
});

use exports::tvs::store::handler::{Guest, IngestRequest, IngestResponse, SearchRequest};
use tvs::store::collection;
use tvs::store::embedder;
use tvs::store::types::{CollectionInfo, Document, Error, Hit, NewDocument};

/// Texts per call to the embedder: bounds the size of one boundary crossing.
const EMBED_BATCH: usize = 64;

struct Handler;

impl Guest for Handler {
    fn ingest(request: IngestRequest) -> Result<IngestResponse, Error> {
        let mut pending: Vec<(NewDocument, Option<String>)> = Vec::new();
        for (index, doc) in request.documents.into_iter().enumerate() {
            let invalid = |reason: &str| Error::InvalidInput(format!("document {index}: {reason}"));
            let metadata = match doc.metadata.as_deref() {
                None => serde_json::Map::new(),
                Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
                    Ok(serde_json::Value::Object(map)) => map,
                    Ok(_) => return Err(invalid("metadata must be a JSON object")),
                    Err(e) => return Err(invalid(&format!("metadata is not JSON: {e}"))),
                },
            };
            let text = doc.text.unwrap_or_default();
            match (doc.vector, &request.chunk) {
                (Some(vector), _) => {
                    pending.push((new_document(doc.id, text, &metadata, vector), None));
                }
                (None, _) if text.trim().is_empty() => {
                    return Err(invalid("has neither a vector nor text to embed"));
                }
                (None, Some(chunking)) => {
                    let parent = doc.id.unwrap_or_else(|| content_id(&text));
                    let pieces = chunk::split(&text, chunking.size as usize, chunking.overlap as usize)
                        .map_err(|e| invalid(&e))?;
                    for (n, piece) in pieces.into_iter().enumerate() {
                        let mut meta = metadata.clone();
                        meta.insert("chunk".into(), n.into());
                        meta.insert("parent_id".into(), parent.clone().into());
                        let id = Some(format!("{parent}#{n}"));
                        pending.push((new_document(id, piece.clone(), &meta, Vec::new()), Some(piece)));
                    }
                }
                (None, None) => {
                    let embed = Some(text.clone());
                    pending.push((new_document(doc.id, text, &metadata, Vec::new()), embed));
                }
            }
        }
        let texts: Vec<String> = pending.iter().filter_map(|(_, t)| t.clone()).collect();
        let embedded = texts.len() as u32;
        let mut vectors = embed_all(texts)?.into_iter();
        let documents: Vec<NewDocument> = pending
            .into_iter()
            .map(|(mut doc, needs_vector)| {
                if needs_vector.is_some() {
                    doc.vector = vectors.next().unwrap_or_default();
                }
                doc
            })
            .collect();
        let ids = collection::upsert(&documents)?;
        Ok(IngestResponse { ids, embedded })
    }

    fn search(request: SearchRequest) -> Result<Vec<Hit>, Error> {
        let vector = match (request.query, request.vector) {
            (Some(query), None) => embed_all(vec![query])?
                .pop()
                .ok_or_else(|| Error::Internal("the embedder returned nothing".into()))?,
            (None, Some(vector)) => vector,
            _ => return Err(Error::InvalidInput("give exactly one of `query` and `vector`".into())),
        };
        if request.top_k == 0 {
            return Err(Error::InvalidInput("top_k must be at least 1".into()));
        }
        let filter = request.filter.as_deref();
        let Some(mmr) = request.mmr else {
            return collection::search(&vector, request.top_k, filter, false);
        };
        if !(0.0..=1.0).contains(&mmr.lambda_mult) {
            return Err(Error::InvalidInput("mmr.lambda_mult must be between 0 and 1".into()));
        }
        let fetch_k = mmr.fetch_k.max(request.top_k);
        let candidates = collection::search(&vector, fetch_k, filter, true)?;
        let embeddings: Vec<&[f32]> = candidates.iter().map(|h| h.vector.as_deref().unwrap_or(&[])).collect();
        let picked = mmr::select(&vector, &embeddings, request.top_k as usize, mmr.lambda_mult);
        let mut candidates: Vec<Option<Hit>> = candidates.into_iter().map(Some).collect();
        Ok(picked
            .into_iter()
            .filter_map(|i| candidates[i].take())
            .map(|mut hit| {
                hit.vector = None;
                hit
            })
            .collect())
    }

    fn get(ids: Vec<String>) -> Result<Vec<Document>, Error> {
        collection::get(&ids, false)
    }

    fn delete(ids: Vec<String>, filter: Option<String>) -> Result<u64, Error> {
        let mut deleted = if ids.is_empty() { 0 } else { collection::delete(&ids)? };
        if let Some(filter) = filter {
            deleted += collection::delete_where(&filter)?;
        }
        Ok(deleted)
    }

    fn stats() -> Result<CollectionInfo, Error> {
        Ok(collection::info())
    }
}

fn new_document(
    id: Option<String>,
    text: String,
    metadata: &serde_json::Map<String, serde_json::Value>,
    vector: Vec<f32>,
) -> NewDocument {
    NewDocument {
        id,
        text,
        metadata: serde_json::Value::Object(metadata.clone()).to_string(),
        vector,
    }
}

/// A stable id for a text without one, so re-ingesting the same text replaces its chunks.
fn content_id(text: &str) -> String {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("doc-{hash:016x}")
}

fn embed_all(texts: Vec<String>) -> Result<Vec<Vec<f32>>, Error> {
    let mut vectors = Vec::with_capacity(texts.len());
    for batch in texts.chunks(EMBED_BATCH) {
        let got = embedder::embed(batch)?;
        if got.len() != batch.len() {
            return Err(Error::Internal(format!(
                "the embedder returned {} vectors for {} texts",
                got.len(),
                batch.len()
            )));
        }
        vectors.extend(got);
    }
    Ok(vectors)
}

export!(Handler);
