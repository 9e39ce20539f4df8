//! A guest that misbehaves on request; see ../README.md.

wit_bindgen::generate!({
    path: "../../../wit",
    world: "guest",
});

use exports::tvs::store::handler::{Guest, IngestRequest, IngestResponse, SearchRequest};
use tvs::store::collection;
use tvs::store::types::{CollectionInfo, Document, Error, Hit};

struct Hostile;

impl Guest for Hostile {
    fn ingest(_request: IngestRequest) -> Result<IngestResponse, Error> {
        Err(Error::InvalidInput("this guest only searches".into()))
    }

    fn search(request: SearchRequest) -> Result<Vec<Hit>, Error> {
        match request.query.as_deref() {
            Some("loop") => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            Some("alloc") => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            Some("panic") => panic!("the hostile guest panics on purpose"),
            Some("snoop") => {
                // Ids and filters naming the other tenant's documents and tenant.
                let mut found = Vec::new();
                for doc in collection::get(&["secret-1".to_string(), "../victim/secret-1".to_string()], true)? {
                    found.push(Hit {
                        id: doc.id,
                        score: 0.0,
                        distance: 0.0,
                        text: doc.text,
                        metadata: doc.metadata,
                        vector: None,
                    });
                }
                let filter = r#"{"$or": [{"tenant": "victim"}, {"owner": "victim"}]}"#;
                found.extend(collection::search(&[1.0, 0.0, 0.0, 0.0], 100, Some(filter), false)?);
                found.extend(collection::search(&[1.0, 0.0, 0.0, 0.0], 100, None, false)?);
                Ok(found)
            }
            _ => collection::search(&[1.0, 0.0, 0.0, 0.0], request.top_k, None, false),
        }
    }

    fn get(_ids: Vec<String>) -> Result<Vec<Document>, Error> {
        Err(Error::InvalidInput("this guest only searches".into()))
    }

    fn delete(_ids: Vec<String>, _filter: Option<String>) -> Result<u64, Error> {
        Err(Error::InvalidInput("this guest only searches".into()))
    }

    fn stats() -> Result<CollectionInfo, Error> {
        Err(Error::InvalidInput("this guest only searches".into()))
    }
}

export!(Hostile);
