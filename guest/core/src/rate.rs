//! Per-tenant rate limits as token buckets, shared by `tvs serve` (buckets in memory) and the
//! Spin front (buckets in key-value, since an instance lives one request): requests per second
//! and ingest bytes per second, each bucket holding one second of its rate (a burst of that size
//! passes at once, then requests pass at the rate).
//!
//! Invariants: a refused request takes no tokens from either bucket, and its refusal names the
//! limit and when a retry can pass; a request costing more than a second's worth passes from a
//! full bucket and leaves it in debt, so it is delayed, never refused forever.

use serde::{Deserialize, Serialize};

/// A tenant's rate limits; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest_bytes_per_second: Option<f64>,
}

impl Limits {
    /// Checks values an admin sent: each set one positive and finite.
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

    pub fn is_unlimited(&self) -> bool {
        self.requests_per_second.is_none() && self.ingest_bytes_per_second.is_none()
    }
}

/// One token bucket: its tokens (negative: in debt) when last refilled, at `at_ms` (any clock
/// in milliseconds that does not go back: monotonic on the server, the wall clock on Spin).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub tokens: f64,
    pub at_ms: u64,
}

impl Bucket {
    /// A full bucket of `rate` (one second's worth).
    pub fn full(rate: f64, now_ms: u64) -> Self {
        Bucket {
            tokens: rate,
            at_ms: now_ms,
        }
    }

    /// Adds what `rate` a second earned since the last refill (capacity: one second of it).
    pub fn refill(&mut self, rate: f64, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.at_ms = self.at_ms.max(now_ms);
    }

    /// Seconds until `cost` can pass, `None` if it can now.
    pub fn wait(&self, rate: f64, cost: f64) -> Option<f64> {
        let needed = cost.min(rate);
        (self.tokens < needed).then(|| (needed - self.tokens) / rate)
    }
}

/// The buckets of one tenant: requests, then ingest bytes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Buckets {
    pub requests: Bucket,
    pub ingest: Bucket,
}

impl Buckets {
    /// Full buckets for `limits`.
    pub fn full(limits: &Limits, now_ms: u64) -> Self {
        Buckets {
            requests: Bucket::full(limits.requests_per_second.unwrap_or(0.0), now_ms),
            ingest: Bucket::full(limits.ingest_bytes_per_second.unwrap_or(0.0), now_ms),
        }
    }
}

/// Which limit refused a request, and when a retry can pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// `requests_per_second` or `ingest_bytes_per_second`.
    pub limit: &'static str,
    pub per_second: f64,
    pub retry_after_secs: f64,
}

impl Refusal {
    /// What a client is told (a 429), as both servers word it.
    pub fn message(&self, tenant: &str) -> String {
        let unit = match self.limit {
            "requests_per_second" => "requests",
            _ => "ingest bytes",
        };
        format!(
            "tenant {tenant} is limited to {} {unit} per second ({}); retry after {:.2} s",
            self.per_second, self.limit, self.retry_after_secs
        )
    }

    /// The `Retry-After` header: whole seconds, at least 1.
    pub fn retry_after_header(&self) -> u64 {
        self.retry_after_secs.ceil().max(1.0) as u64
    }
}

/// Admits one request carrying `ingest_bytes` of documents at `now_ms`, taking its tokens, or
/// says which limit refuses it (taking none).
pub fn admit(limits: &Limits, buckets: &mut Buckets, ingest_bytes: u64, now_ms: u64) -> Result<(), Refusal> {
    let charges = [
        (
            "requests_per_second",
            limits.requests_per_second,
            &mut buckets.requests,
            1.0,
        ),
        (
            "ingest_bytes_per_second",
            limits.ingest_bytes_per_second,
            &mut buckets.ingest,
            ingest_bytes as f64,
        ),
    ];
    let mut charged: Vec<(&mut Bucket, f64)> = Vec::with_capacity(2);
    for (limit, rate, bucket, cost) in charges {
        let Some(rate) = rate.filter(|_| cost > 0.0) else {
            continue;
        };
        bucket.refill(rate, now_ms);
        if let Some(retry_after_secs) = bucket.wait(rate, cost) {
            return Err(Refusal {
                limit,
                per_second: rate,
                retry_after_secs,
            });
        }
        charged.push((bucket, cost));
    }
    for (bucket, cost) in charged {
        bucket.tokens -= cost;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_passes_a_second_of_its_rate_then_the_rate() {
        let mut bucket = Bucket::full(5.0, 0);
        for _ in 0..5 {
            assert_eq!(bucket.wait(5.0, 1.0), None);
            bucket.tokens -= 1.0;
        }
        let wait = bucket.wait(5.0, 1.0).expect("the sixth at once waits");
        assert!((wait - 0.2).abs() < 1e-9, "{wait}");
        bucket.refill(5.0, 200);
        assert_eq!(bucket.wait(5.0, 1.0), None);
        // A request bigger than a second's worth passes from a full bucket and leaves a debt.
        let mut bytes = Bucket::full(100.0, 0);
        assert_eq!(bytes.wait(100.0, 250.0), None);
        bytes.tokens -= 250.0;
        let wait = bytes.wait(100.0, 10.0).expect("in debt");
        assert!((wait - 1.6).abs() < 1e-9, "{wait}");
    }

    #[test]
    fn a_refused_request_takes_no_tokens_and_names_its_limit() {
        let limits = Limits {
            requests_per_second: Some(10.0),
            ingest_bytes_per_second: Some(100.0),
        };
        let mut buckets = Buckets::full(&limits, 0);
        admit(&limits, &mut buckets, 150, 0).expect("a full bucket takes a big request");
        let refused = admit(&limits, &mut buckets, 10, 0).expect_err("ingest in debt");
        assert_eq!(refused.limit, "ingest_bytes_per_second");
        assert_eq!(refused.retry_after_header(), 1);
        assert_eq!(
            buckets.requests.tokens, 9.0,
            "the refused request took no request token"
        );
        assert!(refused.message("t").contains("100 ingest bytes per second"));
        assert_eq!(
            admit(&limits, &mut buckets, 0, 0),
            Ok(()),
            "reads pass the ingest limit"
        );
        assert!(
            Limits {
                requests_per_second: Some(0.0),
                ..Limits::default()
            }
            .validate()
            .is_err()
        );
    }
}
