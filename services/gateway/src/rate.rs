//! Per-key rate limits: a token bucket in memory per API key, holding up to a minute's
//! worth of requests and refilled continuously.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use uuid::Uuid;

#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<Uuid, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// Takes one request from the key's bucket; `Err(seconds)` to wait when it is empty.
    pub fn take(&self, key: Uuid, per_minute: u32) -> Result<(), u64> {
        self.take_at(key, per_minute, Instant::now())
    }

    fn take_at(&self, key: Uuid, per_minute: u32, now: Instant) -> Result<(), u64> {
        let capacity = f64::from(per_minute.max(1));
        let per_second = capacity / 60.0;
        let mut buckets = self.buckets.lock().expect("rate limiter lock");
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / per_second).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_allows_its_capacity_then_refills() {
        let limiter = RateLimiter::default();
        let key = Uuid::new_v4();
        let t0 = Instant::now();
        for _ in 0..60 {
            assert!(limiter.take_at(key, 60, t0).is_ok());
        }
        // 60 per minute: one token a second.
        assert_eq!(limiter.take_at(key, 60, t0), Err(1));
        assert!(
            limiter
                .take_at(key, 60, t0 + Duration::from_secs(1))
                .is_ok()
        );
        assert_eq!(
            limiter.take_at(key, 60, t0 + Duration::from_secs(1)),
            Err(1)
        );
        // Another key has its own bucket.
        assert!(limiter.take_at(Uuid::new_v4(), 60, t0).is_ok());
    }
}
