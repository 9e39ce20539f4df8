//! tvs-server: `tvs serve`, the HTTP API over the pool of tenant stores and the Wasm runtime.
//!
//! [`http`] holds the routes (a module per resource), limits and OpenAPI document; [`auth`] the admin key and tenant
//! API keys (stored only as hashes); [`metrics`] the Prometheus text. The tenant of a data
//! request comes from its key, never from the URL or the body.

pub mod auth;
pub mod http;
pub mod metrics;
pub mod rates;
pub mod tokens;
