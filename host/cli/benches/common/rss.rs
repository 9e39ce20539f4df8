//! Resident memory of this process, for the benches' memory figures.

/// Resident set size in bytes, from `/proc/self/statm` (0 where that file does not exist).
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}
