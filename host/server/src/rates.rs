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

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use tvs_store::storage::{self, StdStorage};
use tvs_store::tenant::{DataDir, TenantId};

/// File holding a tenant's rate limits, in its config directory.
pub const RATE_LIMITS_FILE: &str = "rate_limits.json";
/// How long a node trusts rate limits it read from object storage.
pub const SHARED_LIMITS_TTL: Duration = Duration::from_secs(5);

/// A tenant's rate limits; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest_bytes_per_second: Option<f64>,
}

impl RateLimits {
    /// Checks the values an admin sent.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("requests_per_second", self.requests_per_second),
            ("ingest_bytes_per_second", self.ingest_bytes_per_second),
        ] {
            if let Some(v) = value
                && !(v.is_finite() && v > 0.0)
            {
                return Err(format!("{name} must be a positive number, got {v}"));
            }
        }
        Ok(())
    }
}

/// Which limit refused a request, and when a retry can pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub limit: &'static str,
    pub per_second: f64,
    pub retry_after: Duration,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(rate: f64) -> Self {
        Bucket {
            tokens: rate,
            last: Instant::now(),
        }
    }

    /// Adds what `rate` a second earned since the last refill (capacity: one second of it).
    fn refill(&mut self, rate: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.last = now;
    }

    /// How long until `cost` can pass, `None` if it can now. A cost above the capacity passes
    /// from a full bucket and leaves it in debt, so a big request is delayed, never refused
    /// forever.
    fn wait(&self, rate: f64, cost: f64) -> Option<Duration> {
        let needed = cost.min(rate);
        (self.tokens < needed).then(|| Duration::from_secs_f64((needed - self.tokens) / rate))
    }
}

#[derive(Debug)]
struct TenantRates {
    limits: RateLimits,
    read_at: Instant,
    requests: Bucket,
    ingest: Bucket,
}

impl TenantRates {
    fn new(limits: RateLimits) -> Self {
        TenantRates {
            limits,
            read_at: Instant::now(),
            requests: Bucket::full(limits.requests_per_second.unwrap_or(0.0)),
            ingest: Bucket::full(limits.ingest_bytes_per_second.unwrap_or(0.0)),
        }
    }

    /// Takes limits read again; the buckets stay as they are unless their rate changed.
    fn renew(&mut self, limits: RateLimits) {
        if limits != self.limits {
            *self = TenantRates::new(limits);
        }
        self.read_at = Instant::now();
    }
}

/// The rate limits of every tenant this server has served.
#[derive(Debug)]
pub struct Rates {
    data: DataDir,
    defaults: RateLimits,
    tenants: Mutex<HashMap<TenantId, TenantRates>>,
}

impl Rates {
    pub fn new(data: DataDir, defaults: RateLimits) -> Self {
        Rates {
            data,
            defaults,
            tenants: Mutex::default(),
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
        let rates = match tenants.entry(tenant.clone()) {
            std::collections::hash_map::Entry::Occupied(entry) => {
                let rates = entry.into_mut();
                match fresh {
                    Some(limits) => rates.renew(limits),
                    // Unreachable: the limits last read hold until the next try, a TTL from now,
                    // so that requests do not each wait on the bucket's timeouts.
                    None if stale => rates.read_at = Instant::now(),
                    None => {}
                }
                rates
            }
            // Object storage unreachable at the first request: the server's defaults until it
            // answers (read again at the next request).
            std::collections::hash_map::Entry::Vacant(entry) => {
                let mut rates = TenantRates::new(fresh.unwrap_or(self.defaults));
                if fresh.is_none() {
                    rates.read_at = Instant::now().checked_sub(SHARED_LIMITS_TTL).unwrap_or(rates.read_at);
                }
                entry.insert(rates)
            }
        };
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
            .insert(tenant.clone(), TenantRates::new(limits));
        Ok(())
    }

    /// Forgets a deleted tenant.
    pub fn forget(&self, tenant: &TenantId) {
        self.tenants.lock().unwrap_or_else(|p| p.into_inner()).remove(tenant);
    }

    /// Admits one request of `tenant` carrying `ingest_bytes` of documents, or says which limit
    /// refuses it. A refused request takes no tokens.
    pub fn admit(&self, tenant: &TenantId, ingest_bytes: u64) -> Result<(), Refusal> {
        let now = Instant::now();
        self.with_rates(tenant, |rates| {
            let charges = [
                (
                    "requests_per_second",
                    rates.limits.requests_per_second,
                    &mut rates.requests,
                    1.0,
                ),
                (
                    "ingest_bytes_per_second",
                    rates.limits.ingest_bytes_per_second,
                    &mut rates.ingest,
                    ingest_bytes as f64,
                ),
            ];
            let mut limited: Vec<(f64, &mut Bucket, f64)> = Vec::with_capacity(2);
            for (limit, rate, bucket, cost) in charges {
                let Some(rate) = rate.filter(|_| cost > 0.0) else {
                    continue;
                };
                bucket.refill(rate, now);
                if let Some(retry_after) = bucket.wait(rate, cost) {
                    return Err(Refusal {
                        limit,
                        per_second: rate,
                        retry_after,
                    });
                }
                limited.push((rate, bucket, cost));
            }
            for (_, bucket, cost) in limited {
                bucket.tokens -= cost;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_passes_a_second_of_its_rate_then_the_rate() {
        let start = Instant::now();
        let mut bucket = Bucket::full(5.0);
        bucket.last = start;
        for _ in 0..5 {
            assert_eq!(bucket.wait(5.0, 1.0), None);
            bucket.tokens -= 1.0;
        }
        let wait = bucket.wait(5.0, 1.0).expect("the sixth at once waits");
        assert!((wait.as_secs_f64() - 0.2).abs() < 1e-9, "{wait:?}");
        bucket.refill(5.0, start + Duration::from_millis(200));
        assert_eq!(bucket.wait(5.0, 1.0), None);
        // A request bigger than a second's worth passes from a full bucket and leaves a debt.
        let mut bytes = Bucket::full(100.0);
        bytes.last = start;
        assert_eq!(bytes.wait(100.0, 250.0), None);
        bytes.tokens -= 250.0;
        let wait = bytes.wait(100.0, 10.0).expect("in debt");
        assert!((wait.as_secs_f64() - 1.6).abs() < 1e-9, "{wait:?}");
    }
}
