//! Per-tenant rate limits: requests per second and ingest bytes per second, each a token bucket
//! holding one second of its rate (a burst of that size passes at once, then requests pass at
//! the rate). Set by the admin (`PATCH /v1/tenants/{id}`) and kept in the tenant's
//! `config/rate_limits.json`; a server's defaults (`--default-requests-per-second`,
//! `--default-ingest-bytes-per-second`) are written there when a tenant is created, so changing
//! a default later leaves existing tenants as they were. No file: no limit.
//!
//! With tenants in object storage the limits are the bucket's `tenants/{id}/rate_limits.json`,
//! which every node reads again after [`SHARED_LIMITS_TTL`]; each node keeps its own buckets
//! (the proxy sends a tenant's requests to one node, so they are the tenant's rate).
//!
//! Invariant: a refused request did nothing (it is refused before its store is touched) and its
//! refusal says which limit and when to retry.

use std::collections::HashMap;
use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tvs_store::remote::{Replace, SharedObject};

use tvs_guest_core::rate::{self, Buckets};

use tvs_store::storage::{self, StdStorage};
use tvs_store::tenant::{DataDir, TenantId};

/// File holding a tenant's rate limits, in its config directory.
pub const RATE_LIMITS_FILE: &str = "rate_limits.json";
/// How long a node trusts rate limits it read from object storage.
pub const SHARED_LIMITS_TTL: Duration = Duration::from_secs(5);

/// A tenant's rate limits; `None` is unlimited. The bucket arithmetic is
/// [`tvs_guest_core::rate`]'s, shared with the Spin front.
pub type RateLimits = rate::Limits;
pub use rate::Refusal;

#[derive(Debug)]
struct TenantRates {
    limits: RateLimits,
    read_at: Instant,
    buckets: Buckets,
}

impl TenantRates {
    fn new(limits: RateLimits, clock: Instant) -> Self {
        TenantRates {
            limits,
            read_at: Instant::now(),
            buckets: Buckets::full(&limits, now_ms(clock)),
        }
    }

    /// Takes limits read again; the buckets stay as they are unless their rate changed.
    fn renew(&mut self, limits: RateLimits, clock: Instant) {
        if limits != self.limits {
            *self = TenantRates::new(limits, clock);
        }
        self.read_at = Instant::now();
    }
}

/// Milliseconds since `clock`: the buckets' monotonic time.
fn now_ms(clock: Instant) -> u64 {
    clock.elapsed().as_millis() as u64
}

/// The rate limits of every tenant this server has served.
#[derive(Debug)]
pub struct Rates {
    data: DataDir,
    defaults: RateLimits,
    tenants: Mutex<HashMap<TenantId, TenantRates>>,
    /// The buckets' clock.
    clock: Instant,
}

impl Rates {
    pub fn new(data: DataDir, defaults: RateLimits) -> Self {
        Rates {
            data,
            defaults,
            tenants: Mutex::default(),
            clock: Instant::now(),
        }
    }

    /// The limits new tenants get.
    pub fn defaults(&self) -> RateLimits {
        self.defaults
    }

    fn path(&self, tenant: &TenantId) -> std::path::PathBuf {
        self.data
            .store_dir(tenant)
            .config_file()
            .with_file_name(RATE_LIMITS_FILE)
    }

    fn parse(&self, tenant: &TenantId, bytes: &[u8]) -> RateLimits {
        serde_json::from_slice(bytes).unwrap_or_else(|e| {
            // A damaged file must not lift the limits silently, nor stop the tenant: it counts
            // as the server's defaults until the admin sets them again.
            tracing::error!(tenant = %tenant, error = %e, "unreadable rate limits; using the defaults");
            self.defaults
        })
    }

    /// The tenant's limits where they are kept; `None` when object storage cannot say now.
    fn read(&self, tenant: &TenantId) -> Option<RateLimits> {
        if let Some(catalog) = self.data.catalog() {
            return match catalog.read_shared(&SharedObject::RateLimits(tenant.clone())) {
                Ok(Some((bytes, _))) => Some(self.parse(tenant, &bytes)),
                Ok(None) => Some(RateLimits::default()),
                Err(e) => {
                    tracing::warn!(tenant = %tenant, error = %e, "cannot read rate limits from object storage");
                    None
                }
            };
        }
        Some(match storage::read_all(&StdStorage, &self.path(tenant)) {
            Ok(bytes) => self.parse(tenant, &bytes),
            Err(_) => RateLimits::default(),
        })
    }

    /// A tenant's limits, read from its file the first time.
    pub fn limits(&self, tenant: &TenantId) -> RateLimits {
        self.with_rates(tenant, |rates| rates.limits)
    }

    fn with_rates<T>(&self, tenant: &TenantId, f: impl FnOnce(&mut TenantRates) -> T) -> T {
        let lock = || self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        let stale = match lock().get(tenant) {
            None => true,
            // Limits in a file change only through this server; the bucket's through any node.
            Some(rates) => self.data.catalog().is_some() && rates.read_at.elapsed() >= SHARED_LIMITS_TTL,
        };
        // Read without the lock, which every tenant's requests take.
        let fresh = if stale { self.read(tenant) } else { None };
        let mut tenants = lock();
        // Object storage unreachable at a tenant's first request: the server's defaults.
        let rates = tenants
            .entry(tenant.clone())
            .or_insert_with(|| TenantRates::new(fresh.unwrap_or(self.defaults), self.clock));
        match fresh {
            Some(limits) => rates.renew(limits, self.clock),
            // Unreachable: what is held stays until the next try, a TTL from now, so that
            // requests do not each wait on the bucket's timeouts.
            None if stale => rates.read_at = Instant::now(),
            None => {}
        }
        f(rates)
    }

    /// Sets a tenant's limits (durably: the file is written atomically, or the bucket's object
    /// replaced, first).
    pub fn set(&self, tenant: &TenantId, limits: RateLimits) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(&limits).map_err(io::Error::other)?;
        if let Some(catalog) = self.data.catalog() {
            catalog
                .write_shared(&SharedObject::RateLimits(tenant.clone()), &json, Replace::Any)
                .map_err(io::Error::other)?;
        } else {
            let path = self.path(tenant);
            let dir = path
                .parent()
                .ok_or_else(|| io::Error::other("a config file has a directory"))?;
            storage::write_atomic(&StdStorage, dir, RATE_LIMITS_FILE, &json)?;
        }
        self.tenants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tenant.clone(), TenantRates::new(limits, self.clock));
        Ok(())
    }

    /// Forgets a deleted tenant.
    pub fn forget(&self, tenant: &TenantId) {
        self.tenants.lock().unwrap_or_else(|p| p.into_inner()).remove(tenant);
    }

    /// Admits one request of `tenant` carrying `ingest_bytes` of documents, or says which limit
    /// refuses it. A refused request takes no tokens.
    pub fn admit(&self, tenant: &TenantId, ingest_bytes: u64) -> Result<(), Refusal> {
        let now = now_ms(self.clock);
        self.with_rates(tenant, |rates| {
            rate::admit(&rates.limits, &mut rates.buckets, ingest_bytes, now)
        })
    }
}
