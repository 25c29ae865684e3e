//! Retry budget and backoff for Kamatera calls.

use std::time::Duration;

/// Which retries a call may make, decided by what a repeated request could do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// Reads and status polls: repeat freely on transport errors, 429, 5xx, non-JSON bodies.
    Read,
    /// Power and terminate: repeat only when the request provably was not accepted (connection
    /// never established, or 429).
    Mutating,
    /// Create: never repeated, since a repeat could buy a second server.
    Create,
}

/// Bounded exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Delay before the first retry; doubled for each further one.
    pub base_delay: Duration,
    /// Cap on one delay.
    pub max_delay: Duration,
    /// No retry starts once this much time has passed since the first attempt.
    pub max_total: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(8),
            max_total: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    /// A policy that never waits, for tests.
    pub fn immediate(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts,
            base_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
            max_total: Duration::from_secs(60),
        }
    }

    /// The delay before retry number `retry` (1-based), with "equal jitter": between half and
    /// all of the exponential step, so concurrent clients spread out but never retry instantly.
    pub fn delay(&self, retry: u32) -> Duration {
        let step = self
            .base_delay
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
            .min(self.max_delay);
        let half = step / 2;
        let jitter_ns = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        let extra = if jitter_ns == 0 {
            0
        } else {
            rand::random::<u64>() % (jitter_ns + 1)
        };
        half + Duration::from_nanos(extra)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_are_capped() {
        let p = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(400),
            max_total: Duration::from_secs(10),
        };
        for _ in 0..50 {
            let d1 = p.delay(1);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
            let d3 = p.delay(3);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
            let d9 = p.delay(9);
            assert!(d9 >= Duration::from_millis(200) && d9 <= Duration::from_millis(400));
        }
        assert_eq!(RetryPolicy::immediate(3).delay(2), Duration::ZERO);
    }
}
