//! Pure logic that the host and the Wasm guests share: Mongo-style metadata filters, text
//! chunking, maximal marginal relevance, the canonical names of embedding models, rate limits,
//! tenant tokens and a seeded random generator. No I/O and no WIT types, so it builds for `wasm32-wasip2` inside guest components and natively for the
//! host and for unit tests: a filter means the same wherever it is evaluated.

pub mod chunk;
pub mod documents;
pub mod filter;
pub mod mmr;
pub mod models;
pub mod openai;
pub mod rate;
pub mod rng;
pub mod tenant_id;
#[cfg(feature = "token")]
pub mod token;
