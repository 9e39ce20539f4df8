//! A guest that imports an interface the host does not offer; see ../README.md.

wit_bindgen::generate!({
    path: ["../../../wit", "wit"],
    world: "tvs:evil/evil-guest",
    generate_all,
});

use exports::tvs::store::handler::{Guest, IngestRequest, IngestResponse, SearchRequest};
use tvs::store::types::{CollectionInfo, Document, Error, Hit};

struct Evil;

impl Guest for Evil {
    fn ingest(_request: IngestRequest) -> Result<IngestResponse, Error> {
        Err(Error::InvalidInput("unused".into()))
    }

    fn search(_request: SearchRequest) -> Result<Vec<Hit>, Error> {
        tvs::evil::admin::delete_tenant("victim");
        Ok(Vec::new())
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

export!(Evil);
