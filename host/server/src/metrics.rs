//! Prometheus metrics of the HTTP service: requests by route and status, latency histograms by
//! route, guest failures by kind, plus the pool's counters, rendered as Prometheus text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use tvs_store::pool::PoolStats;

/// Upper bounds (seconds) of the latency buckets.
const BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: [u64; BOUNDS.len()],
    count: u64,
    sum: f64,
}

#[derive(Debug, Default)]
struct Inner {
    requests: BTreeMap<(String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    guest_failures: BTreeMap<&'static str, u64>,
    auth_refused: BTreeMap<&'static str, u64>,
    rate_limited: BTreeMap<&'static str, u64>,
    quota_exceeded: BTreeMap<&'static str, u64>,
    rejected_busy: u64,
}

/// The service's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records one answered request.
    pub fn observe(&self, route: &str, status: u16, seconds: f64) {
        let mut inner = self.lock();
        *inner.requests.entry((route.to_owned(), status)).or_default() += 1;
        let histogram = inner.latency.entry(route.to_owned()).or_default();
        histogram.count += 1;
        histogram.sum += seconds;
        for (bucket, bound) in histogram.buckets.iter_mut().zip(BOUNDS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
    }

    /// Records a request refused because too many were in flight.
    pub fn rejected_busy(&self) {
        self.lock().rejected_busy += 1;
    }

    /// Records a guest failure: `deadline`, `memory`, `trap` or `busy`.
    pub fn guest_failure(&self, kind: &'static str) {
        *self.lock().guest_failures.entry(kind).or_default() += 1;
    }

    /// Records a tenant credential refused: `key`, `token` (not valid) or `scope` (valid, not
    /// allowed on the route).
    pub fn auth_refused(&self, reason: &'static str) {
        *self.lock().auth_refused.entry(reason).or_default() += 1;
    }

    /// Records a request refused by a tenant's rate limit (`requests_per_second`,
    /// `ingest_bytes_per_second`).
    pub fn rate_limited(&self, limit: &'static str) {
        *self.lock().rate_limited.entry(limit).or_default() += 1;
    }

    /// Records a write refused by a tenant's quota (`max_documents`, `max_bytes`).
    pub fn quota_exceeded(&self, quota: &'static str) {
        *self.lock().quota_exceeded.entry(quota).or_default() += 1;
    }

    /// Prometheus text exposition.
    pub fn render(&self, pool: &PoolStats) -> String {
        let inner = self.lock();
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(
            w,
            "# HELP tvs_http_requests_total HTTP requests answered, by route and status."
        );
        let _ = writeln!(w, "# TYPE tvs_http_requests_total counter");
        for ((route, status), n) in &inner.requests {
            let _ = writeln!(
                w,
                "tvs_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(w, "# HELP tvs_http_request_duration_seconds Time to answer, by route.");
        let _ = writeln!(w, "# TYPE tvs_http_request_duration_seconds histogram");
        for (route, h) in &inner.latency {
            for (bound, n) in BOUNDS.iter().zip(h.buckets) {
                let _ = writeln!(
                    w,
                    "tvs_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                w,
                "tvs_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                w,
                "tvs_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                w,
                "tvs_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count
            );
        }
        let _ = writeln!(
            w,
            "# HELP tvs_http_rejected_busy_total Requests refused with 503 at the in-flight limit."
        );
        let _ = writeln!(w, "# TYPE tvs_http_rejected_busy_total counter");
        let _ = writeln!(w, "tvs_http_rejected_busy_total {}", inner.rejected_busy);
        // Counters by one label, every known label value shown (0 until it happens).
        for (name, help, label, values, counts) in [
            (
                "tvs_guest_failures_total",
                "Guest instances stopped, by kind.",
                "kind",
                &["deadline", "memory", "trap", "busy"][..],
                &inner.guest_failures,
            ),
            (
                "tvs_auth_refused_total",
                "Tenant credentials refused, by reason.",
                "reason",
                &["key", "token", "scope"][..],
                &inner.auth_refused,
            ),
            (
                "tvs_rate_limited_total",
                "Requests refused 429 by a tenant's rate limit, by limit.",
                "limit",
                &["requests_per_second", "ingest_bytes_per_second"][..],
                &inner.rate_limited,
            ),
            (
                "tvs_quota_exceeded_total",
                "Writes refused 413 by a tenant's quota, by quota.",
                "quota",
                &["max_documents", "max_bytes"][..],
                &inner.quota_exceeded,
            ),
        ] {
            let _ = writeln!(w, "# HELP {name} {help}");
            let _ = writeln!(w, "# TYPE {name} counter");
            for value in values {
                let n = counts.get(value).copied().unwrap_or(0);
                let _ = writeln!(w, "{name}{{{label}=\"{value}\"}} {n}");
            }
        }
        for (name, kind, help, value) in [
            (
                "tvs_pool_hits_total",
                "counter",
                "Pool lookups that found the store open.",
                pool.hits as f64,
            ),
            (
                "tvs_pool_misses_total",
                "counter",
                "Pool lookups that did not.",
                pool.misses as f64,
            ),
            (
                "tvs_pool_loads_total",
                "counter",
                "Stores opened from disk.",
                pool.loads as f64,
            ),
            (
                "tvs_pool_evictions_total",
                "counter",
                "Stores evicted by the count or byte bound.",
                pool.evictions as f64,
            ),
            (
                "tvs_pool_expirations_total",
                "counter",
                "Stores dropped by the TTL.",
                pool.expirations as f64,
            ),
            ("tvs_pool_size", "gauge", "Stores in the pool.", pool.size as f64),
            (
                "tvs_pool_bytes",
                "gauge",
                "Estimated bytes of the stores in the pool.",
                pool.bytes as f64,
            ),
            ("tvs_pool_hit_rate", "gauge", "hits / (hits + misses).", pool.hit_rate),
        ] {
            let _ = writeln!(w, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        }
        out
    }
}
