//! The names of embedding models, one canonical spelling each, so that every place a model is
//! named (tenant creation, `EMBEDDING_MODEL`, `/v1/embeddings`, the guests) agrees whichever
//! spelling a client or config uses. Pure: shared by the host and the Wasm components.

/// The local model's canonical name: what `user_config.json` stores and every response reports.
pub const LOCAL_MODEL: &str = "all-MiniLM-L6-v2";
/// The prefix of the old stack's (and the model hub's) spelling of the same model.
const HUB_PREFIX: &str = "sentence-transformers/";
/// The prefix of models served by an OpenAI-compatible endpoint.
pub const OPENAI_PREFIX: &str = "openai:";
/// Dimensions of the local model's vectors.
pub const LOCAL_MODEL_DIMS: usize = 384;

/// The one name of the model a user's spelling means, so that `EMBEDDING_MODEL`, tenant
/// creation and `/v1/embeddings` agree whichever spelling a client or config uses.
///
/// The local model is named case-insensitively, with or without the `sentence-transformers/`
/// prefix (`all-minilm-l6-v2` is Spin's and many LangChain examples' spelling); `none` is
/// case-insensitive; `openai:<model>` keeps the remote model's name as given, because the remote
/// endpoint decides what its names mean. Anything else is returned trimmed and unchanged.
pub fn canonical_model_name(name: &str) -> String {
    let name = name.trim();
    let unprefixed = match name.get(..HUB_PREFIX.len()) {
        Some(prefix) if prefix.eq_ignore_ascii_case(HUB_PREFIX) => &name[HUB_PREFIX.len()..],
        _ => name,
    };
    if unprefixed.eq_ignore_ascii_case(LOCAL_MODEL) {
        return LOCAL_MODEL.to_owned();
    }
    if name.eq_ignore_ascii_case("none") {
        return "none".to_owned();
    }
    match name.get(..OPENAI_PREFIX.len()) {
        Some(prefix) if prefix.eq_ignore_ascii_case(OPENAI_PREFIX) => {
            format!("{OPENAI_PREFIX}{}", name[OPENAI_PREFIX.len()..].trim())
        }
        _ => name.to_owned(),
    }
}

/// Whether a model name, in any of its spellings, means the local model.
pub fn is_local_model(name: &str) -> bool {
    canonical_model_name(name) == LOCAL_MODEL
}

/// Why a canonical model name cannot be given to a new tenant, if it cannot.
pub fn check_known_model(canonical: &str) -> Result<(), String> {
    let known = canonical == "none"
        || canonical == LOCAL_MODEL
        || canonical
            .strip_prefix(OPENAI_PREFIX)
            .is_some_and(|remote| !remote.is_empty());
    if known {
        Ok(())
    } else {
        Err(format!(
            "unknown embedding model {canonical:?}: use {LOCAL_MODEL} (local), {OPENAI_PREFIX}<model> (an OpenAI-compatible endpoint) or none (client vectors)"
        ))
    }
}

/// Whether a client's model name means the tenant's (canonical) model: any spelling of it, and
/// for an `openai:<model>` tenant also `<model>`.
pub fn names_tenant_model(asked: &str, tenant_model: &str) -> bool {
    let asked = canonical_model_name(asked);
    asked == tenant_model || tenant_model.strip_prefix(OPENAI_PREFIX) == Some(asked.as_str())
}

/// Why `dims` does not fit `model` (canonical), if it does not: the local model makes
/// [`LOCAL_MODEL_DIMS`]-dimensional vectors.
pub fn check_model_dims(model: &str, dims: usize) -> Result<(), String> {
    if is_local_model(model) && dims != LOCAL_MODEL_DIMS {
        return Err(format!(
            "{model} makes {LOCAL_MODEL_DIMS}-dimensional vectors, so dims must be {LOCAL_MODEL_DIMS} (got {dims}); use embedding_model \"none\" to store client vectors of other sizes"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_the_local_model_has_one_canonical_name() {
        for spelling in [
            "all-MiniLM-L6-v2",
            "all-minilm-l6-v2",
            "ALL-MINILM-L6-V2",
            " sentence-transformers/all-MiniLM-L6-v2 ",
            "Sentence-Transformers/all-minilm-l6-v2",
        ] {
            assert_eq!(canonical_model_name(spelling), LOCAL_MODEL, "{spelling:?}");
            assert!(is_local_model(spelling), "{spelling:?}");
        }
        assert!(!is_local_model("all-MiniLM-L12-v2"));
        assert!(!is_local_model("sentence-transformers/"));
        assert!(!is_local_model("openai:text-embedding-3-small"));
        assert!(!is_local_model("none"));
    }

    #[test]
    fn none_and_remote_models_keep_their_meaning() {
        assert_eq!(canonical_model_name("None"), "none");
        assert_eq!(
            canonical_model_name("OpenAI: text-embedding-3-small"),
            "openai:text-embedding-3-small"
        );
        // The remote endpoint decides what its names mean: their case is kept.
        assert_eq!(canonical_model_name("openai:My-Model"), "openai:My-Model");
        assert!(check_known_model("openai:x").is_ok());
        assert!(check_known_model(LOCAL_MODEL).is_ok());
        let unknown = check_known_model("all-mpnet-base-v2").expect_err("unknown");
        assert!(
            unknown.contains("all-mpnet-base-v2") && unknown.contains("openai:<model>"),
            "{unknown}"
        );
        assert!(check_known_model("openai:").is_err());
    }
}
