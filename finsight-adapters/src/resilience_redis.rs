//! A `finsight-resilience` circuit breaker guarding the cache's and the rate
//! limiter's Redis calls (feature `resilience-redis`).
//!
//! [`BreakerGuard`] implements both crates' call-guard hooks
//! (`finsight_cache::redis::RedisCallGuard`, `finsight_ratelimit::RedisCallGuard`)
//! for a [`CircuitBreaker`]:
//!
//! * before each Redis call it asks the breaker for a permit
//!   ([`CircuitBreaker::try_acquire_owned`]); while the breaker is open (or
//!   its half-open probes are taken) the call is skipped and the crate
//!   falls back as it does when Redis fails: the cache serves L1 / a miss /
//!   the loader and reports writes as failed, the limiter decides by its
//!   `FailureMode` (local limits, fail open or fail closed);
//! * after the call it records a success (Redis answered) or a failure
//!   (Redis error or timeout) on the permit. A permit whose call was
//!   cancelled is dropped unrecorded, which the breaker counts as cancelled
//!   (never a failure) and which gives a half-open probe slot back: no
//!   permit leaks.
//!
//! One breaker may guard both (one `BreakerGuard` cloned into each), so a
//! Redis outage seen by the limiter also keeps the cache off Redis.
//!
//! Cost per guarded call: one permit acquisition (atomic operations, no
//! lock in the closed state), one `Arc` increment and one `Box` allocation
//! for the permit, one record.

use finsight_resilience::{CircuitBreaker, Outcome, OwnedPermit};

/// A [`CircuitBreaker`] as the cache's and the rate limiter's Redis call
/// guard. Cloning shares the breaker.
#[derive(Debug, Clone)]
pub struct BreakerGuard {
    breaker: CircuitBreaker,
}

impl BreakerGuard {
    /// Guards Redis calls with `breaker` (keep a clone of it for its state,
    /// metrics, `force_open` / `force_closed`, or a health check). Free.
    #[must_use]
    pub fn new(breaker: CircuitBreaker) -> Self {
        Self { breaker }
    }

    /// The guarding breaker.
    #[must_use]
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    fn permit(&self) -> Option<BreakerPermit> {
        match self.breaker.try_acquire_owned() {
            Ok(permit) => Some(BreakerPermit(permit)),
            Err(_) => {
                tracing::debug!(breaker = %self.breaker.name(), "Redis call skipped: circuit open");
                None
            }
        }
    }
}

/// A breaker permit held for the duration of one Redis call.
struct BreakerPermit(OwnedPermit);

impl BreakerPermit {
    fn finish(self, ok: bool) {
        self.0.record(if ok {
            Outcome::Success
        } else {
            Outcome::Failure
        });
    }
}

impl finsight_cache::redis::RedisCallGuard for BreakerGuard {
    fn admit(&self) -> Option<Box<dyn finsight_cache::redis::RedisCallPermit>> {
        self.permit()
            .map(|p| Box::new(p) as Box<dyn finsight_cache::redis::RedisCallPermit>)
    }
}

impl finsight_cache::redis::RedisCallPermit for BreakerPermit {
    fn record(self: Box<Self>, ok: bool) {
        self.finish(ok);
    }
}

impl finsight_ratelimit::RedisCallGuard for BreakerGuard {
    fn admit(&self) -> Option<Box<dyn finsight_ratelimit::RedisCallPermit>> {
        self.permit()
            .map(|p| Box::new(p) as Box<dyn finsight_ratelimit::RedisCallPermit>)
    }
}

impl finsight_ratelimit::RedisCallPermit for BreakerPermit {
    fn record(self: Box<Self>, ok: bool) {
        self.finish(ok);
    }
}
