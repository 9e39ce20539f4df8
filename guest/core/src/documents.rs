//! The rules every collection applies to a document before storing it, with the messages
//! clients see: `tvs serve`'s store and the key-value store of tvs on Spin refuse the same
//! documents with the same words.

/// Longest document id, in bytes.
pub const MAX_ID_BYTES: usize = 512;
/// Largest metadata object, in bytes of JSON.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;

/// Why an id cannot be stored, if it cannot.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(format!("id must be 1 to {MAX_ID_BYTES} bytes"));
    }
    Ok(())
}

/// Why a vector does not fit a collection of `dims` dimensions (`cosine`: of the cosine
/// metric, where a zero vector has no direction), if it does not.
pub fn check_vector(vector: &[f32], dims: usize, cosine: bool) -> Result<(), String> {
    if vector.len() != dims {
        return Err(format!("vector has {} dimensions, this store has {dims}", vector.len()));
    }
    if let Some(i) = vector.iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "vector component {i} is {} (only finite numbers are allowed)",
            vector[i]
        ));
    }
    if cosine && vector.iter().all(|v| *v == 0.0) {
        return Err("vector is all zeros, which has no cosine direction".into());
    }
    Ok(())
}

/// Why metadata of `json_bytes` bytes cannot be stored, if it cannot.
pub fn check_metadata_size(json_bytes: usize) -> Result<(), String> {
    if json_bytes > MAX_METADATA_BYTES {
        return Err(format!(
            "metadata is {json_bytes} bytes of JSON; at most {MAX_METADATA_BYTES} are accepted"
        ));
    }
    Ok(())
}

/// The message for document `index` of a batch (with its id when the client gave one).
pub fn invalid_document(index: usize, id: Option<&str>, reason: &str) -> String {
    match id {
        Some(id) => format!("document {index} (id {id:?}): {reason}"),
        None => format!("document {index}: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_no_collection_stores() {
        assert!(check_vector(&[1.0, 0.0], 2, true).is_ok());
        assert_eq!(
            check_vector(&[1.0], 2, false).expect_err("short"),
            "vector has 1 dimensions, this store has 2"
        );
        assert!(
            check_vector(&[f32::NAN, 0.0], 2, false)
                .expect_err("NaN")
                .contains("component 0 is NaN")
        );
        assert!(check_vector(&[0.0, 0.0], 2, true).is_err());
        assert!(check_vector(&[0.0, 0.0], 2, false).is_ok());
        assert!(check_id("").is_err() && check_id(&"x".repeat(513)).is_err() && check_id("a#1").is_ok());
        assert!(check_metadata_size(MAX_METADATA_BYTES + 1).is_err());
        assert_eq!(invalid_document(2, Some("a"), "why"), "document 2 (id \"a\"): why");
    }
}
