//! The rule for tenant ids, shared by `tvs serve` (where an id names a directory) and tvs on
//! Spin (where it names keys): an id can never contain a separator or `..`.

/// The rule every tenant id must satisfy, quoted in errors.
pub const TENANT_ID_RULE: &str = "a tenant id is 1 to 64 characters from A-Z a-z 0-9 _ -, \
     starting with a letter or digit (pattern ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$)";

/// Whether `id` is a tenant id.
pub fn is_valid(id: &str) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
}

/// The error message for an id that is not valid (the id is cut to 100 characters).
pub fn invalid_message(id: &str) -> String {
    let shown: String = id.chars().take(100).collect();
    format!("invalid tenant id {shown:?}: {TENANT_ID_RULE}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ids_and_refuses_paths() {
        for good in ["a", "user_1", "A-b_c", &"x".repeat(64)] {
            assert!(is_valid(good), "{good}");
        }
        for bad in ["", "-a", "_a", "a/b", "..", "a.b", "a b", "é", &"x".repeat(65), "a\0"] {
            assert!(!is_valid(bad), "{bad:?}");
        }
    }
}
