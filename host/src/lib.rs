//! tvs: a multi-tenant vector store.
//!
//! Each tenant owns a directory under the data directory ([`tenant`]) holding a durable
//! [`store::TenantStore`]: an append-only document log ([`doclog`]), snapshots for fast opens
//! ([`snapshot`]) and an exact-scan or HNSW vector index ([`vectors`]). Open stores live in an
//! LRU/TTL [`pool::Pool`]. The on-disk layout and commit protocol are described in
//! `docs/design.md`.

pub mod auth;
pub mod config;
pub mod doclog;
pub mod embed;
pub mod filter;
pub mod fsutil;
pub mod http;
pub mod langchain;
pub mod metrics;
pub mod model;
pub mod packed;
pub mod pickle;
pub mod pool;
pub mod runtime;
pub mod snapshot;
pub mod store;
pub mod synth;
pub mod tenant;
pub mod vectors;
