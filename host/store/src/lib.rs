//! tvs-store: durable per-tenant vector stores.
//!
//! Each tenant owns a directory under the data directory ([`tenant`]) holding a durable
//! [`store::TenantStore`]: an append-only document log ([`doclog`]), snapshots for fast opens
//! ([`snapshot`]) and an exact-scan or HNSW vector index ([`vectors`]), with documents packed
//! one allocation each ([`packed`]). Open stores live in an LRU/TTL [`pool::Pool`];
//! [`config`] holds a store's fixed shape and the process-wide settings. The on-disk layout and
//! commit protocol are described in `docs/design.md`.
//!
//! With `TVS_STORAGE=s3://…` the tenants live in object storage behind [`remote`], and each
//! tenant's directory is a cache of it.
//!
//! Invariants: a write is acknowledged only after its log record is fsynced (or persisted by
//! the tenant's [`remote::TenantLog`]); every file
//! operation on a store's data goes through the [`storage`] seam and refuses symlinks inside the
//! data directory; one writer per tenant
//! directory (a lock file), so a store is never opened twice for writing.

pub mod config;
pub mod doclog;
pub mod fsutil;
pub mod packed;
pub mod pool;
pub mod remote;
pub mod slab;
pub mod snapshot;
pub mod storage;
pub mod store;
pub mod tenant;
pub mod vectors;
