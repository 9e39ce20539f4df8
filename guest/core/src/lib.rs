//! Pure logic of the tvs data-plane guests: text chunking and maximal marginal relevance.
//! No I/O and no WIT types, so it builds for `wasm32-wasip2` inside the guest component and
//! natively for the host and for unit tests.

pub mod chunk;
pub mod mmr;
