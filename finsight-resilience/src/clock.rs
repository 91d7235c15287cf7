//! Injectable time: the [`Clock`] trait, the default [`TokioClock`] and the
//! [`ManualClock`] for tests.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A monotonic clock, read as the time elapsed since an arbitrary origin.
///
/// The breaker, the registry and the retry budget read time only through this
/// trait, so tests can drive them with a [`ManualClock`] (or with tokio's
/// paused clock through [`TokioClock`]). Implementations must be cheap: the
/// breaker reads the clock on every call while open, on every call in a
/// time-based window and when slow calls are measured.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Time elapsed since this clock's origin. Must never go backwards.
    fn now(&self) -> Duration;
}

/// The default clock: [`tokio::time::Instant`], so it follows tokio's paused
/// test clock (`#[tokio::test(start_paused = true)]`, `tokio::time::advance`)
/// and is the system's monotonic clock otherwise. One `clock_gettime` per read
/// (about 20 ns), no allocation.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    #[inline]
    fn now(&self) -> Duration {
        tokio::time::Instant::now().saturating_duration_since(self.origin)
    }
}

/// A clock that only moves when told to: [`ManualClock::advance`]. Clones share
/// the same time, so a test keeps one clone and hands another to the breaker.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at time zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward by `by` (saturating at `u64::MAX` ns).
    pub fn advance(&self, by: Duration) {
        let add = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .nanos
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_add(add))
            });
    }

    /// Sets the clock to `to` if that is later than now (it never goes back).
    pub fn set(&self, to: Duration) {
        let to = u64::try_from(to.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_max(to, Ordering::AcqRel);
    }
}

impl Clock for ManualClock {
    #[inline]
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Acquire))
    }
}

/// A clock read with one atomic load (about 1 ns instead of a
/// `clock_gettime`), advanced by a tokio task every `resolution`.
///
/// For breakers that reject at very high rates: an open breaker reads the
/// clock on every rejection, and on some machines (VMs especially) the
/// system clock costs 20–50 ns. A reading is up to `resolution` behind real
/// time (plus any delay of the tokio runtime in running the task), so
/// durations measured with it — the open duration, a rejection's
/// `retry_after`, slow-call times — are accurate to ± one resolution: pick a
/// resolution small next to them (1 ms for second-scale open durations).
/// Follows tokio's paused test clock. The task stops when the last clone of
/// the clock is dropped. Memory: one `Arc<AtomicU64>` and one task.
#[derive(Debug, Clone)]
pub struct CoarseClock {
    nanos: Arc<AtomicU64>,
}

impl CoarseClock {
    /// Starts the ticking task on the current tokio runtime.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) outside a tokio
    /// runtime or for a zero resolution.
    pub fn start(resolution: Duration) -> Result<Self, crate::Error> {
        if resolution.is_zero() {
            return Err(crate::Error::config(
                "CoarseClock resolution",
                "must be non-zero, e.g. 1 ms",
            ));
        }
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            crate::Error::config(
                "CoarseClock",
                "must be started inside a tokio runtime (it spawns its ticking task there)",
            )
        })?;
        let shared = Arc::new(AtomicU64::new(0));
        let weak = Arc::downgrade(&shared);
        let origin = tokio::time::Instant::now();
        handle.spawn(async move {
            let mut tick = tokio::time::interval(resolution);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(n) = weak.upgrade() else { break };
                n.fetch_max(nanos(origin.elapsed()), Ordering::AcqRel);
            }
        });
        Ok(Self { nanos: shared })
    }
}

impl Clock for CoarseClock {
    #[inline]
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Acquire))
    }
}

/// Converts a duration to saturating nanoseconds.
#[inline]
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The clock a breaker holds: the default [`TokioClock`] without dynamic
/// dispatch, or any other clock behind an `Arc<dyn Clock>`.
#[derive(Debug, Clone)]
pub(crate) enum AnyClock {
    Tokio(TokioClock),
    Dyn(Arc<dyn Clock>),
}

impl AnyClock {
    #[inline]
    pub(crate) fn now(&self) -> Duration {
        match self {
            Self::Tokio(c) => c.now(),
            Self::Dyn(c) => c.now(),
        }
    }
}
