//! An `ingest-transform` plugin for the tests: replaces e-mail addresses in texts with
//! `[email]`, drops documents whose metadata says `"skip": true`, and refuses an ingest whose
//! text contains `REFUSE`.

wit_bindgen::generate!({
    path: "../../../wit/plugin",
    world: "tvs:plugin/ingest-transform",
    generate_all,
});

use exports::tvs::plugin::transform::Guest;
use tvs::store::types::IngestDocument;

struct Redact;

fn redact(text: &str) -> String {
    text.split(' ')
        .map(|word| {
            let bare = word.trim_matches(|c: char| !c.is_alphanumeric() && c != '@' && c != '.');
            match bare.split_once('@') {
                Some((user, host)) if !user.is_empty() && host.contains('.') => word.replace(bare, "[email]"),
                _ => word.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Guest for Redact {
    fn transform(documents: Vec<IngestDocument>) -> Result<Vec<IngestDocument>, String> {
        let mut kept = Vec::with_capacity(documents.len());
        for mut doc in documents {
            if doc.text.as_deref().is_some_and(|t| t.contains("REFUSE")) {
                return Err(format!("document {:?} may not be stored", doc.id.unwrap_or_default()));
            }
            let skip = doc
                .metadata
                .as_deref()
                .and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok())
                .is_some_and(|m| m["skip"] == serde_json::Value::Bool(true));
            if skip {
                continue;
            }
            doc.text = doc.text.map(|t| redact(&t));
            kept.push(doc);
        }
        Ok(kept)
    }
}

export!(Redact);
