//! Injectable time: the [`Clock`] trait, the breaker's default
//! [`MonotonicClock`], the [`TokioClock`] that follows tokio's paused test
//! clock, the [`ManualClock`] for tests and the [`CoarseClock`].

use std::any::Any;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
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

/// The [`CircuitBreaker`](crate::CircuitBreaker)'s default clock: the CPU's
/// time-stamp counter, read through [`quanta`](https://docs.rs/quanta)
/// (`rdtsc` on x86-64 with an invariant TSC, the virtual counter on
/// AArch64) and scaled to nanoseconds with one multiply and one shift;
/// where no such counter exists it falls back to the operating system's
/// monotonic clock (`clock_gettime`, as `std::time::Instant`).
///
/// **It does not follow tokio's paused clock**: under
/// `#[tokio::test(start_paused = true)]` or `tokio::time::pause()`, a breaker
/// on this clock still measures real time, so `tokio::time::advance` does
/// not end its open duration. Build such breakers with
/// `.clock(TokioClock::new())` (see [`TokioClock`]) or drive them with a
/// [`ManualClock`].
///
/// Cost: a read is one counter read plus a multiply and a shift, no system
/// call, no lock, no allocation: about 11 ns on the KVM guest the
/// benchmarks run on, against about 30 ns for `std::time::Instant::now()`
/// or [`TokioClock`] (the benchmark `resilience/open_rejection` measures a
/// whole rejection). The first `MonotonicClock` of the process calibrates
/// the counter against the system clock: a busy loop of at least 0.5 ms and
/// at most 200 ms (0.6–5 ms measured on the benchmarks' guest), shared with
/// every other user of `quanta` in the process; later ones reuse it.
///
/// Readings are monotonic as far as the counter is synchronised across
/// cores (an invariant TSC is; Linux checks it before using the TSC as its
/// own clock source). A reading is never before the clock's origin, and the
/// breaker compares readings with saturating arithmetic, so a reading a few
/// nanoseconds behind an earlier one taken on another core does no harm.
/// Memory: 16 bytes.
#[derive(Clone, Copy)]
pub struct MonotonicClock {
    clock: &'static quanta::Clock,
    origin: u64,
}

impl MonotonicClock {
    /// A clock whose origin is now. Calibrates the counter if this is the
    /// process's first `MonotonicClock` (see the type's docs).
    pub fn new() -> Self {
        static CLOCK: OnceLock<quanta::Clock> = OnceLock::new();
        let clock = CLOCK.get_or_init(quanta::Clock::new);
        Self {
            clock,
            origin: clock.raw(),
        }
    }

    /// Nanoseconds since the origin.
    #[inline]
    pub(crate) fn now_nanos(&self) -> u64 {
        self.clock.delta_as_nanos(self.origin, self.clock.raw())
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MonotonicClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MonotonicClock")
            .field("elapsed", &self.now())
            .finish()
    }
}

impl Clock for MonotonicClock {
    #[inline]
    fn now(&self) -> Duration {
        Duration::from_nanos(self.now_nanos())
    }
}

/// [`tokio::time::Instant`] as a clock: it follows tokio's paused test clock
/// (`#[tokio::test(start_paused = true)]`, `tokio::time::pause`,
/// `tokio::time::advance`) and is the system's monotonic clock otherwise.
///
/// The default clock of [`RetryBudget`](crate::RetryBudget). A
/// [`CircuitBreaker`](crate::CircuitBreaker) uses the faster
/// [`MonotonicClock`] unless given this one, so a breaker whose open
/// duration should elapse with `tokio::time::advance` is built like this:
///
/// ```
/// use std::time::Duration;
/// use finsight_resilience::{CircuitBreaker, State, TokioClock};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), finsight_resilience::Error> {
/// let breaker = CircuitBreaker::builder("paused")
///     .consecutive_failures(1)
///     .clock(TokioClock::new()) // follow tokio's paused clock
///     .build()?;
/// let _ = breaker.call(|| async { Err::<(), ()>(()) }).await;
/// assert_eq!(breaker.state(), State::Open);
/// tokio::time::advance(Duration::from_secs(60)).await;
/// assert!(breaker.call(|| async { Ok::<(), ()>(()) }).await.is_ok());
/// assert_eq!(breaker.state(), State::Closed);
/// # Ok(()) }
/// ```
///
/// Cost: one `clock_gettime` per read (about 30 ns on the benchmarks' KVM
/// guest) plus the conversion to a `Duration`; no allocation. With tokio's `test-util`
/// feature, once any runtime of the process has paused time, every read
/// also looks up the current runtime in a thread-local and locks its clock.
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

/// The clock a breaker or budget holds: the built-in clocks without dynamic
/// dispatch, any other clock behind an `Arc<dyn Clock>`.
#[derive(Debug, Clone)]
pub(crate) enum AnyClock {
    Monotonic(MonotonicClock),
    Tokio(TokioClock),
    Dyn(Arc<dyn Clock>),
}

impl AnyClock {
    /// Wraps `clock`, recognising the built-in clocks (one type-id compare
    /// each) so that reading them needs no virtual call.
    pub(crate) fn new(clock: impl Clock) -> Self {
        let any: &dyn Any = &clock;
        if let Some(c) = any.downcast_ref::<MonotonicClock>() {
            Self::Monotonic(*c)
        } else if let Some(c) = any.downcast_ref::<TokioClock>() {
            Self::Tokio(*c)
        } else {
            Self::Dyn(Arc::new(clock))
        }
    }

    /// Nanoseconds since the clock's origin (saturating).
    #[inline]
    pub(crate) fn now_nanos(&self) -> u64 {
        match self {
            Self::Monotonic(c) => c.now_nanos(),
            Self::Tokio(c) => nanos(c.now()),
            Self::Dyn(c) => nanos(c.now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_clocks_are_held_without_dynamic_dispatch() {
        assert!(matches!(
            AnyClock::new(MonotonicClock::new()),
            AnyClock::Monotonic(_)
        ));
        assert!(matches!(
            AnyClock::new(TokioClock::new()),
            AnyClock::Tokio(_)
        ));
        assert!(matches!(
            AnyClock::new(ManualClock::new()),
            AnyClock::Dyn(_)
        ));
    }

    #[test]
    fn the_monotonic_clock_counts_nanoseconds_and_never_goes_back() {
        let clock = MonotonicClock::new();
        let mut last = clock.now_nanos();
        for _ in 0..10_000 {
            let now = clock.now_nanos();
            assert!(now >= last, "{now} < {last}");
            last = now;
        }
        // Scaled to nanoseconds: a sleep of 5 ms (at least 5 ms of real
        // time) reads as at least 4 ms even with a 20 % calibration error.
        let before = clock.now();
        std::thread::sleep(Duration::from_millis(5));
        let slept = clock.now() - before;
        assert!(slept >= Duration::from_millis(4), "{slept:?}");
    }
}
