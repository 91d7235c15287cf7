//! The evaluation clock (injectable, for expiry checks).

use chrono::{DateTime, Duration, Utc};
use std::fmt::Debug;
use std::sync::atomic::{AtomicI64, Ordering};

/// Where evaluation reads "now" from (only for flags with `expires_at`).
pub trait Clock: Send + Sync + Debug + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock ([`Utc::now`]); one `clock_gettime` per read.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to: for tests, replays and the
/// conformance runner (whose vectors fix "now"). Reads are one atomic load.
#[derive(Debug)]
pub struct ManualClock {
    millis: AtomicI64,
}

impl ManualClock {
    /// A clock stopped at `now` (millisecond resolution).
    pub fn new(now: DateTime<Utc>) -> Self {
        Self {
            millis: AtomicI64::new(now.timestamp_millis()),
        }
    }

    /// Sets the time.
    pub fn set(&self, now: DateTime<Utc>) {
        self.millis.store(now.timestamp_millis(), Ordering::Release);
    }

    /// Moves the time forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.millis
            .fetch_add(by.num_milliseconds(), Ordering::AcqRel);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.millis.load(Ordering::Acquire)).unwrap_or_default()
    }
}

impl<C: Clock> Clock for std::sync::Arc<C> {
    fn now(&self) -> DateTime<Utc> {
        (**self).now()
    }
}
