//! The circuit breaker: [`CircuitBreaker`], its builder, permits, metrics and
//! state-change events.
//!
//! # How it works
//! One `AtomicU64` holds the state, a generation number (bumped on every
//! transition) and, while half-open, the free probe slots and the probe
//! successes. Admitting a call in the closed state is one atomic load;
//! recording a success in consecutive-failure mode is one load and one
//! `fetch_add`. Transitions take a mutex, so at most one caller moves the
//! state and every transition is seen once. Rate mode records each outcome
//! into its sliding window under a short, uncontended-in-practice lock.
//!
//! A call is admitted through a [`Permit`]: recording an [`Outcome`] consumes
//! it; dropping it unrecorded (the caller's future was cancelled) records
//! *cancelled*, which never counts as a failure and gives a half-open probe
//! slot back. Each permit remembers the generation it was issued in, so a
//! call that started before a transition can never refill or trip a later
//! cycle.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::clock::{AnyClock, Clock, MonotonicClock, nanos};
use crate::error::{BreakerError, CircuitOpen, Error};

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum State {
    /// Calls pass; outcomes are counted.
    Closed,
    /// Calls are rejected until the open duration has elapsed.
    Open,
    /// A bounded number of probe calls pass; the rest are rejected.
    HalfOpen,
    /// Rejects every call until [`CircuitBreaker::reset`] or
    /// [`CircuitBreaker::force_closed`].
    ForcedOpen,
    /// Lets every call through and only counts (no transitions) until
    /// [`CircuitBreaker::reset`] or [`CircuitBreaker::force_open`].
    ForcedClosed,
}

impl State {
    fn code(self) -> u64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
            Self::ForcedOpen => 3,
            Self::ForcedClosed => 4,
        }
    }

    fn from_code(c: u64) -> Self {
        match c {
            1 => Self::Open,
            2 => Self::HalfOpen,
            3 => Self::ForcedOpen,
            4 => Self::ForcedClosed,
            _ => Self::Closed,
        }
    }

    /// `"closed"`, `"open"`, `"half_open"`, `"forced_open"` or `"forced_closed"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
            Self::ForcedOpen => "forced_open",
            Self::ForcedClosed => "forced_closed",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one call ended, as a [`Classifier`] decides from its `Result`.
/// (*Cancelled* is not a variant: it is what dropping a [`Permit`] records.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Counts as a success (and as a successful probe when half-open).
    Success,
    /// Counts as a failure toward opening (and re-opens when half-open).
    Failure,
    /// Counted in metrics only; neither success nor failure (e.g. a 404 or
    /// a validation error that says nothing about the downstream's health).
    Ignored,
}

/// Decides the [`Outcome`] of a call from its whole `Result`, so an `Ok`
/// value (an HTTP 503 response, say) can count as a failure and an `Err`
/// can be ignored. Implemented for every `Fn(&Result<T, E>) -> Outcome`.
pub trait Classifier<T, E> {
    /// The outcome of `result`.
    fn classify(&self, result: &Result<T, E>) -> Outcome;
}

impl<T, E, F> Classifier<T, E> for F
where
    F: Fn(&Result<T, E>) -> Outcome,
{
    #[inline]
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        self(result)
    }
}

/// The default classifier: `Ok` is a success, `Err` a failure.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultClassifier;

impl<T, E> Classifier<T, E> for DefaultClassifier {
    #[inline]
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        if result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        }
    }
}

/// The sliding window of rate mode. Recording into either kind takes the
/// window's lock once per call; a time window also reads the clock at the
/// start and end of every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The last `n` recorded calls (a ring of `n` bytes).
    Count(u32),
    /// The calls of the last `size`, in `buckets` buckets of `size / buckets`
    /// each (calls older than the oldest bucket are forgotten a bucket at a time).
    Time {
        /// Window length.
        size: Duration,
        /// Number of buckets (1..=3600); memory is 24 bytes per bucket.
        buckets: u32,
    },
}

/// How long the breaker stays open before it lets probes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenDuration {
    /// Always the same (the Python services: `recovery_timeout`, 60 s).
    Fixed(Duration),
    /// `min(base · 2^k, cap)` where `k` counts the re-openings since the
    /// breaker was last closed (a failed probe doubles the wait).
    Backoff {
        /// Open duration of the first opening.
        base: Duration,
        /// Upper bound.
        cap: Duration,
    },
}

impl OpenDuration {
    fn for_reopen(&self, k: u32) -> Duration {
        match *self {
            Self::Fixed(d) => d,
            Self::Backoff { base, cap } => base
                .checked_mul(1u32.checked_shl(k.min(31)).unwrap_or(u32::MAX))
                .unwrap_or(cap)
                .min(cap),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Trip {
    Consecutive(u32),
    Rate {
        window: Window,
        min_calls: u32,
        failure_rate: f64,
    },
}

#[derive(Debug, Clone, Copy)]
struct SlowCalls {
    threshold: Duration,
    rate: f64,
}

/// Builds a [`CircuitBreaker`]. Defaults: the Python services' 5 consecutive
/// failures and 60 s open duration, 1 half-open probe, 1 success to close,
/// the [`MonotonicClock`] (real time: it does not follow tokio's paused
/// clock; see [`clock`](Self::clock)), 64 buffered state-change events.
#[derive(Debug, Clone)]
#[must_use = "call .build() to obtain a breaker"]
pub struct CircuitBreakerBuilder {
    name: String,
    trip: Trip,
    slow: Option<SlowCalls>,
    open: OpenDuration,
    probes: u32,
    successes: u32,
    clock: Option<AnyClock>,
    events: usize,
}

const MAX_SLOTS: u32 = (1 << 14) - 1;

impl CircuitBreakerBuilder {
    fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            trip: Trip::Consecutive(5),
            slow: None,
            open: OpenDuration::Fixed(Duration::from_secs(60)),
            probes: 1,
            successes: 1,
            clock: None,
            events: 64,
        }
    }

    /// Consecutive-failure mode (the default, 5): open after `n` failures in
    /// a row; any success resets the count. Replaces rate mode.
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.trip = Trip::Consecutive(n);
        self
    }

    /// Rate mode: open when, over `window`, at least `min_calls` calls were
    /// recorded and the share of failures among successes + failures is at
    /// least `rate` (0.0..=1.0). Replaces consecutive mode.
    pub fn failure_rate(mut self, rate: f64, window: Window, min_calls: u32) -> Self {
        self.trip = Trip::Rate {
            window,
            min_calls,
            failure_rate: rate,
        };
        self
    }

    /// Also open when the share of calls that took at least `threshold` is at
    /// least `rate`, over the same window. Needs rate mode. Costs one clock
    /// read at the start and one at the end of each call.
    pub fn slow_calls(mut self, threshold: Duration, rate: f64) -> Self {
        self.slow = Some(SlowCalls { threshold, rate });
        self
    }

    /// How long to stay open (default fixed 60 s).
    pub fn open_duration(mut self, open: OpenDuration) -> Self {
        self.open = open;
        self
    }

    /// Probe calls admitted at once while half-open (default 1, max 16383).
    /// A probe that finishes (any outcome but failure) or is cancelled gives
    /// its slot back.
    pub fn half_open_probes(mut self, n: u32) -> Self {
        self.probes = n;
        self
    }

    /// Successful probes needed to close (default 1, max 16383). One failed
    /// probe re-opens.
    pub fn successes_to_close(mut self, n: u32) -> Self {
        self.successes = n;
        self
    }

    /// The clock the breaker measures its open duration, `retry_after`,
    /// time windows and slow calls with.
    ///
    /// Default: [`MonotonicClock`] (the CPU's time-stamp counter, the
    /// cheapest real-time read; an open breaker reads it on every
    /// rejection). It does **not** follow tokio's paused clock: for tests
    /// under `#[tokio::test(start_paused = true)]` that move time with
    /// `tokio::time::advance`, pass [`TokioClock::new()`](crate::TokioClock);
    /// to move time by hand, a [`ManualClock`](crate::ManualClock). The
    /// built-in clocks are called without dynamic dispatch; any other
    /// [`Clock`] is boxed once here (one allocation) and called through a
    /// vtable.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(AnyClock::new(clock));
        self
    }

    /// Capacity of the state-change event channel (default 64): a subscriber
    /// that falls further behind loses the oldest events (it is told how many).
    pub fn event_capacity(mut self, n: usize) -> Self {
        self.events = n;
        self
    }

    /// Validates the settings and builds the breaker. Allocates the shared
    /// state (and the rate window). The first breaker of a process built on
    /// the default [`MonotonicClock`] calibrates that clock once (a busy
    /// loop, typically under 5 ms, at most 200 ms; see its docs).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the setting: a zero threshold, window,
    /// probe or success count, a rate outside 0.0..=1.0, slow calls without a
    /// rate window, counts above 16383, a zero event capacity.
    pub fn build(self) -> Result<CircuitBreaker, Error> {
        let rate_ok = |r: f64| (0.0..=1.0).contains(&r) && r > 0.0;
        match self.trip {
            Trip::Consecutive(0) => {
                return Err(Error::config("consecutive_failures", "must be at least 1"));
            }
            Trip::Consecutive(_) => {
                if self.slow.is_some() {
                    return Err(Error::config(
                        "slow_calls",
                        "slow-call rate needs a sliding window: configure .failure_rate(..) too",
                    ));
                }
            }
            Trip::Rate {
                window,
                min_calls,
                failure_rate,
            } => {
                if !rate_ok(failure_rate) {
                    return Err(Error::config(
                        "failure_rate",
                        format!("rate {failure_rate} must be in (0.0, 1.0]"),
                    ));
                }
                if min_calls == 0 {
                    return Err(Error::config(
                        "failure_rate",
                        "min_calls must be at least 1",
                    ));
                }
                match window {
                    Window::Count(0) | Window::Count(1_000_001..) => {
                        return Err(Error::config(
                            "failure_rate",
                            "Window::Count must hold 1..=1_000_000 calls",
                        ));
                    }
                    Window::Time { size, buckets } => {
                        if !(1..=3600).contains(&buckets) || size.is_zero() {
                            return Err(Error::config(
                                "failure_rate",
                                "Window::Time needs a non-zero size and 1..=3600 buckets",
                            ));
                        }
                        if size / buckets < Duration::from_millis(1) {
                            return Err(Error::config(
                                "failure_rate",
                                "Window::Time buckets must be at least 1 ms wide",
                            ));
                        }
                    }
                    Window::Count(_) => {}
                }
            }
        }
        if let Some(s) = self.slow
            && !rate_ok(s.rate)
        {
            return Err(Error::config(
                "slow_calls",
                format!("rate {} must be in (0.0, 1.0]", s.rate),
            ));
        }
        if !(1..=MAX_SLOTS).contains(&self.probes) {
            return Err(Error::config("half_open_probes", "must be in 1..=16383"));
        }
        if !(1..=MAX_SLOTS).contains(&self.successes) {
            return Err(Error::config("successes_to_close", "must be in 1..=16383"));
        }
        if self.events == 0 {
            return Err(Error::config("event_capacity", "must be at least 1"));
        }
        if let OpenDuration::Backoff { base, cap } = self.open
            && (base.is_zero() || cap < base)
        {
            return Err(Error::config(
                "open_duration",
                "Backoff needs a non-zero base and cap >= base",
            ));
        }
        Ok(self.build_validated())
    }

    /// The same settings under another name (registry template).
    pub(crate) fn named(&self, name: &str) -> Self {
        let mut b = self.clone();
        name.clone_into(&mut b.name);
        b
    }

    /// Builds from settings `build` has already validated once.
    pub(crate) fn build_validated(self) -> CircuitBreaker {
        let window = match self.trip {
            Trip::Rate { window, .. } => Some(Mutex::new(RateWindow::new(window))),
            Trip::Consecutive(_) => None,
        };
        let needs_time =
            self.slow.is_some() || matches!(window_kind(&self.trip), Some(Window::Time { .. }));
        CircuitBreaker {
            inner: Arc::new(Inner {
                name: Arc::from(self.name),
                trip: self.trip,
                slow: self.slow,
                open: self.open,
                probes: u64::from(self.probes),
                successes_to_close: u64::from(self.successes),
                clock: self
                    .clock
                    .unwrap_or_else(|| AnyClock::Monotonic(MonotonicClock::new())),
                needs_time,
                fast_success: matches!(self.trip, Trip::Consecutive(_)) && self.slow.is_none(),
                word: AtomicU64::new(pack(0, State::Closed, 0, 0)),
                consecutive: AtomicU32::new(0),
                open_until: AtomicU64::new(0),
                reopens: AtomicU32::new(0),
                counters: Counters::default(),
                window,
                transition: Mutex::new(()),
                events: OnceLock::new(),
                event_capacity: self.events,
            }),
        }
    }
}

fn window_kind(t: &Trip) -> Option<Window> {
    match *t {
        Trip::Rate { window, .. } => Some(window),
        Trip::Consecutive(_) => None,
    }
}

// ---- state word: gen(32) | state(4) | free probe slots(14) | probe successes(14)
const SLOT_SHIFT: u64 = 14;
const STATE_SHIFT: u64 = 28;
const GEN_SHIFT: u64 = 32;
const MASK14: u64 = (1 << 14) - 1;

#[inline]
fn pack(gen_: u32, state: State, slots: u64, succ: u64) -> u64 {
    (u64::from(gen_) << GEN_SHIFT)
        | (state.code() << STATE_SHIFT)
        | ((slots & MASK14) << SLOT_SHIFT)
        | (succ & MASK14)
}
#[inline]
fn gen_of(w: u64) -> u32 {
    (w >> GEN_SHIFT) as u32
}
#[inline]
fn state_of(w: u64) -> State {
    State::from_code((w >> STATE_SHIFT) & 0xF)
}
#[inline]
fn slots_of(w: u64) -> u64 {
    (w >> SLOT_SHIFT) & MASK14
}
#[inline]
fn succ_of(w: u64) -> u64 {
    w & MASK14
}

#[derive(Debug, Default)]
struct Counters {
    successes: AtomicU64,
    failures: AtomicU64,
    ignored: AtomicU64,
    cancelled: AtomicU64,
    rejected: AtomicU64,
    slow: AtomicU64,
}

/// Why the state changed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
#[non_exhaustive]
pub enum Reason {
    /// This many failures in a row (consecutive mode).
    ConsecutiveFailures {
        /// The count that tripped.
        count: u32,
    },
    /// The window's failure rate reached the threshold.
    FailureRate {
        /// Observed rate.
        rate: f64,
        /// Calls in the window.
        calls: u64,
    },
    /// The window's slow-call rate reached the threshold.
    SlowCallRate {
        /// Observed rate.
        rate: f64,
        /// Calls in the window.
        calls: u64,
    },
    /// The open duration elapsed; probes may pass.
    OpenElapsed,
    /// A half-open probe failed.
    ProbeFailed,
    /// Enough probes succeeded.
    ProbesSucceeded,
    /// [`CircuitBreaker::force_open`] or [`CircuitBreaker::force_closed`].
    Forced,
    /// [`CircuitBreaker::reset`].
    Reset,
}

/// A state change, as sent to [`CircuitBreaker::subscribe`] receivers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StateChange {
    /// The breaker's name.
    pub name: Arc<str>,
    /// State before.
    pub from: State,
    /// State after.
    pub to: State,
    /// Why.
    pub reason: Reason,
    /// The breaker clock's reading at the change.
    pub at: Duration,
}

/// A point-in-time copy of the breaker's counters (since build or the last
/// [`CircuitBreaker::reset`]); serializable for dashboards and `/health`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    /// The breaker's name.
    pub name: Arc<str>,
    /// Current state.
    pub state: State,
    /// Calls that were admitted and finished or were cancelled
    /// (`successes + failures + ignored + cancelled`).
    pub calls: u64,
    /// Calls classified as success.
    pub successes: u64,
    /// Calls classified as failure.
    pub failures: u64,
    /// Calls classified as ignored.
    pub ignored: u64,
    /// Admitted calls whose permit was dropped unrecorded.
    pub cancelled: u64,
    /// Calls rejected without running.
    pub rejected: u64,
    /// Calls at or above the slow-call threshold (rate mode with slow calls).
    pub slow_calls: u64,
    /// Current run of failures (consecutive mode).
    pub consecutive_failures: u32,
    /// Rate mode: failures / (successes + failures) over the window;
    /// consecutive mode: the same over all counted calls. `None` before any.
    pub failure_rate: Option<f64>,
    /// Slow calls / calls over the window (rate mode with slow calls).
    pub slow_call_rate: Option<f64>,
    /// While open: time until the next probe may pass.
    pub retry_after: Option<Duration>,
}

#[derive(Debug)]
struct Inner {
    name: Arc<str>,
    trip: Trip,
    slow: Option<SlowCalls>,
    open: OpenDuration,
    probes: u64,
    successes_to_close: u64,
    clock: AnyClock,
    needs_time: bool,
    fast_success: bool,
    word: AtomicU64,
    consecutive: AtomicU32,
    open_until: AtomicU64,
    reopens: AtomicU32,
    counters: Counters,
    window: Option<Mutex<RateWindow>>,
    transition: Mutex<()>,
    /// Created by the first `subscribe()`: breakers nobody watches (most of
    /// a registry's) carry no event buffer.
    events: OnceLock<broadcast::Sender<StateChange>>,
    event_capacity: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Closed,
    Probe,
    Forced,
}

#[derive(Debug, Clone, Copy)]
struct Ticket {
    gen_: u32,
    kind: Kind,
    start: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recorded {
    Success,
    Failure,
    Ignored,
    Cancelled,
}

impl From<Outcome> for Recorded {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Success => Self::Success,
            Outcome::Failure => Self::Failure,
            Outcome::Ignored => Self::Ignored,
        }
    }
}

impl Inner {
    #[inline]
    fn now(&self) -> u64 {
        self.clock.now_nanos()
    }

    /// Admission. The closed, untimed case is inlined into the caller: one
    /// atomic load and a branch; everything else is out of line.
    #[inline(always)]
    fn acquire(&self) -> Result<Ticket, CircuitOpen> {
        let w = self.word.load(Ordering::Acquire);
        if state_of(w) == State::Closed && !self.needs_time {
            return Ok(Ticket {
                gen_: gen_of(w),
                kind: Kind::Closed,
                start: 0,
            });
        }
        self.acquire_slow(w)
    }

    /// Not closed (or timed). An open breaker whose open duration has not
    /// elapsed — the case that repeats at the caller's rate — is decided
    /// first and straight-line: one load of the probe deadline, one clock
    /// read, one compare, the rejection counter and a disabled-`tracing`
    /// check. Everything else goes through the state loop.
    #[inline(never)]
    fn acquire_slow(&self, w: u64) -> Result<Ticket, CircuitOpen> {
        if state_of(w) == State::Open {
            self.reject_if_still_open()?;
        }
        self.acquire_loop()
    }

    /// An open breaker's check: rejects (with the exact `retry_after`) while
    /// its open duration has not elapsed. One load, one clock read.
    #[inline(always)]
    fn reject_if_still_open(&self) -> Result<(), CircuitOpen> {
        let until = self.open_until.load(Ordering::Acquire);
        let now = self.now();
        if now < until {
            return Err(self.reject(State::Open, Some(Duration::from_nanos(until - now))));
        }
        Ok(())
    }

    #[inline(never)]
    fn acquire_loop(&self) -> Result<Ticket, CircuitOpen> {
        loop {
            let w = self.word.load(Ordering::Acquire);
            match state_of(w) {
                State::Closed => {
                    let start = if self.needs_time { self.now() } else { 0 };
                    return Ok(Ticket {
                        gen_: gen_of(w),
                        kind: Kind::Closed,
                        start,
                    });
                }
                State::ForcedClosed => {
                    return Ok(Ticket {
                        gen_: gen_of(w),
                        kind: Kind::Forced,
                        start: if self.slow.is_some() { self.now() } else { 0 },
                    });
                }
                State::ForcedOpen => return Err(self.reject(State::ForcedOpen, None)),
                State::Open => {
                    self.reject_if_still_open()?;
                    self.transition(gen_of(w), State::Open, State::HalfOpen, Reason::OpenElapsed);
                }
                State::HalfOpen => {
                    let slots = slots_of(w);
                    if slots == 0 {
                        return Err(self.reject(State::HalfOpen, None));
                    }
                    let next = pack(gen_of(w), State::HalfOpen, slots - 1, succ_of(w));
                    if self
                        .word
                        .compare_exchange_weak(w, next, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        tracing::debug!(breaker = %self.name, "half-open probe admitted");
                        return Ok(Ticket {
                            gen_: gen_of(w),
                            kind: Kind::Probe,
                            start: if self.needs_time { self.now() } else { 0 },
                        });
                    }
                }
            }
        }
    }

    /// Counts a rejection and emits its `trace` event (when no subscriber
    /// wants trace-level events: one load and one compare of tracing's
    /// global level filter).
    #[inline]
    fn reject(&self, state: State, retry_after: Option<Duration>) -> CircuitOpen {
        self.counters.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::trace!(breaker = %self.name, state = state.as_str(), "call rejected");
        CircuitOpen::new(state, retry_after)
    }

    /// Recording. A success in the closed state of consecutive mode (no
    /// slow-call timing) is inlined: one `fetch_add` and one load.
    #[inline(always)]
    fn record(&self, t: Ticket, outcome: Recorded) {
        if self.fast_success && t.kind == Kind::Closed && outcome == Recorded::Success {
            self.counters.successes.fetch_add(1, Ordering::Relaxed);
            self.end_failure_run();
            return;
        }
        self.record_slow(t, outcome);
    }

    /// A success ends the run of consecutive failures. The store is skipped
    /// when the run is already 0, so that successes in a row only read the
    /// shared cache line.
    #[inline(always)]
    fn end_failure_run(&self) {
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
    }

    #[inline(never)]
    fn record_slow(&self, t: Ticket, outcome: Recorded) {
        let c = &self.counters;
        match outcome {
            Recorded::Success => {
                c.successes.fetch_add(1, Ordering::Relaxed);
            }
            Recorded::Failure => {
                c.failures.fetch_add(1, Ordering::Relaxed);
            }
            Recorded::Ignored => {
                c.ignored.fetch_add(1, Ordering::Relaxed);
            }
            Recorded::Cancelled => {
                c.cancelled.fetch_add(1, Ordering::Relaxed);
            }
        }
        let slow = match self.slow {
            Some(s) if matches!(outcome, Recorded::Success | Recorded::Failure) => {
                let took = self.now().saturating_sub(t.start);
                let slow = took >= nanos(s.threshold);
                if slow {
                    c.slow.fetch_add(1, Ordering::Relaxed);
                }
                slow
            }
            _ => false,
        };
        match t.kind {
            Kind::Forced => {}
            Kind::Closed => self.record_closed(t, outcome, slow),
            Kind::Probe => self.record_probe(t, outcome),
        }
    }

    #[inline]
    fn record_closed(&self, t: Ticket, outcome: Recorded, slow: bool) {
        match self.trip {
            Trip::Consecutive(threshold) => match outcome {
                Recorded::Success => self.end_failure_run(),
                Recorded::Failure => {
                    let w = self.word.load(Ordering::Acquire);
                    if gen_of(w) != t.gen_ || state_of(w) != State::Closed {
                        return; // a call from an earlier cycle
                    }
                    let n = self.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
                    if n >= threshold {
                        self.transition(
                            t.gen_,
                            State::Closed,
                            State::Open,
                            Reason::ConsecutiveFailures { count: n },
                        );
                    }
                }
                Recorded::Ignored | Recorded::Cancelled => {}
            },
            Trip::Rate {
                min_calls,
                failure_rate,
                ..
            } => {
                let failure = match outcome {
                    Recorded::Success => false,
                    Recorded::Failure => true,
                    Recorded::Ignored | Recorded::Cancelled => return,
                };
                let Some(window) = &self.window else { return };
                let w = self.word.load(Ordering::Acquire);
                if gen_of(w) != t.gen_ || state_of(w) != State::Closed {
                    return;
                }
                let now = if self.needs_time { self.now() } else { 0 };
                let (calls, fails, slows) = window.lock().record(now, failure, slow);
                if calls < u64::from(min_calls) {
                    return;
                }
                let fr = fails as f64 / calls as f64;
                let reason = if fr >= failure_rate {
                    Reason::FailureRate { rate: fr, calls }
                } else if let Some(s) = self.slow {
                    let sr = slows as f64 / calls as f64;
                    if sr >= s.rate {
                        Reason::SlowCallRate { rate: sr, calls }
                    } else {
                        return;
                    }
                } else {
                    return;
                };
                self.transition(t.gen_, State::Closed, State::Open, reason);
            }
        }
    }

    fn record_probe(&self, t: Ticket, outcome: Recorded) {
        if outcome == Recorded::Failure {
            self.transition(t.gen_, State::HalfOpen, State::Open, Reason::ProbeFailed);
            return;
        }
        let success = u64::from(outcome == Recorded::Success);
        let mut w = self.word.load(Ordering::Acquire);
        loop {
            if gen_of(w) != t.gen_ || state_of(w) != State::HalfOpen {
                return; // stale probe: never refills a later cycle
            }
            let succ = (succ_of(w) + success).min(MASK14);
            let slots = (slots_of(w) + 1).min(self.probes);
            let next = pack(t.gen_, State::HalfOpen, slots, succ);
            match self
                .word
                .compare_exchange_weak(w, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    if success == 1 && succ >= self.successes_to_close {
                        self.transition(
                            t.gen_,
                            State::HalfOpen,
                            State::Closed,
                            Reason::ProbesSucceeded,
                        );
                    }
                    return;
                }
                Err(cur) => w = cur,
            }
        }
    }

    /// Moves `from` (in generation `gen_`) to `to`; `false` if another caller
    /// moved it first. Only this function changes state or generation, under
    /// the transition lock.
    fn transition(&self, gen_: u32, from: State, to: State, reason: Reason) -> bool {
        let _guard = self.transition.lock();
        let w = self.word.load(Ordering::Acquire);
        if gen_of(w) != gen_ || state_of(w) != from {
            return false;
        }
        self.enter(w, to, reason)
    }

    /// Under the transition lock: prepares `to`, publishes it, emits events.
    fn enter(&self, mut w: u64, to: State, reason: Reason) -> bool {
        let from = state_of(w);
        let now = self.now();
        match to {
            State::Open => {
                let k = if from == State::HalfOpen {
                    self.reopens
                        .fetch_add(1, Ordering::AcqRel)
                        .saturating_add(1)
                } else {
                    self.reopens.store(0, Ordering::Release);
                    0
                };
                let d = self.open.for_reopen(k);
                self.open_until
                    .store(now.saturating_add(nanos(d)), Ordering::Release);
            }
            State::Closed => {
                self.consecutive.store(0, Ordering::Release);
                self.reopens.store(0, Ordering::Release);
                if let Some(win) = &self.window {
                    win.lock().clear();
                }
            }
            State::HalfOpen | State::ForcedOpen | State::ForcedClosed => {}
        }
        let slots = if to == State::HalfOpen {
            self.probes
        } else {
            0
        };
        loop {
            let next = pack(gen_of(w).wrapping_add(1), to, slots, 0);
            match self
                .word
                .compare_exchange_weak(w, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                // Only slot/success counts change outside the lock: retry.
                Err(cur) => w = cur,
            }
        }
        match to {
            State::Open => tracing::warn!(
                breaker = %self.name, from = from.as_str(), ?reason,
                "circuit breaker opened"
            ),
            _ => tracing::info!(
                breaker = %self.name, from = from.as_str(), to = to.as_str(), ?reason,
                "circuit breaker state changed"
            ),
        }
        if let Some(tx) = self.events.get() {
            let _ = tx.send(StateChange {
                name: self.name.clone(),
                from,
                to,
                reason,
                at: Duration::from_nanos(now),
            });
        }
        true
    }

    fn force(&self, to: State, reason: Reason) {
        let _guard = self.transition.lock();
        let w = self.word.load(Ordering::Acquire);
        if reason == Reason::Reset {
            let c = &self.counters;
            for a in [
                &c.successes,
                &c.failures,
                &c.ignored,
                &c.cancelled,
                &c.rejected,
                &c.slow,
            ] {
                a.store(0, Ordering::Relaxed);
            }
            self.consecutive.store(0, Ordering::Release);
            if let Some(win) = &self.window {
                win.lock().clear();
            }
        }
        self.enter(w, to, reason);
    }
}

/// A circuit breaker. Cheap to clone (one `Arc`); clones share state.
///
/// Build one with [`CircuitBreaker::builder`], run calls through
/// [`call`](Self::call) / [`call_with`](Self::call_with), or hand it to a
/// [`CircuitBreakerLayer`](crate::CircuitBreakerLayer).
///
/// Memory: a fixed ~350 bytes, plus the rate window (1 byte per call of a
/// count window, 24 bytes per bucket of a time window) and, once someone has
/// called [`subscribe`](Self::subscribe), the event buffer (`event_capacity`
/// slots of about 100 bytes).
#[derive(Clone)]
pub struct CircuitBreaker {
    inner: Arc<Inner>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.inner.name)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl CircuitBreaker {
    /// A builder with the Python services' defaults (5 consecutive failures,
    /// 60 s open). `name` appears in events, metrics and traces.
    pub fn builder(name: impl Into<String>) -> CircuitBreakerBuilder {
        CircuitBreakerBuilder::new(name)
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Runs `f` if the breaker admits a call; `Ok` is a success and `Err` a
    /// failure ([`DefaultClassifier`]). Rejected calls return
    /// [`BreakerError::Open`] without calling `f`.
    ///
    /// Cost when closed: one atomic load before and one or two atomic
    /// operations after the call; no allocation, no lock. If the returned
    /// future is dropped while `f`'s future runs, the call is recorded as
    /// cancelled.
    ///
    /// # Errors
    /// [`BreakerError::Open`] when rejected, [`BreakerError::Inner`] with
    /// `f`'s error.
    #[inline]
    pub fn call<F, Fut, T, E>(&self, f: F) -> impl Future<Output = Result<T, BreakerError<E>>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_with(&DefaultClassifier, f)
    }

    /// Like [`call`](Self::call), with `classifier` deciding the outcome from
    /// the whole result (so an `Ok` can be a failure, an `Err` ignored).
    ///
    /// # Errors
    /// As [`call`](Self::call).
    #[inline]
    pub async fn call_with<C, F, Fut, T, E>(
        &self,
        classifier: &C,
        f: F,
    ) -> Result<T, BreakerError<E>>
    where
        C: Classifier<T, E> + ?Sized,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let permit = self.try_acquire().map_err(BreakerError::Open)?;
        let result = f().await;
        permit.record(classifier.classify(&result));
        result.map_err(BreakerError::Inner)
    }

    /// Asks for a permit to make one call, for code that cannot use
    /// [`call`](Self::call). Record the call's outcome with
    /// [`Permit::record`]; dropping the permit records *cancelled*.
    ///
    /// # Errors
    /// [`CircuitOpen`] when the breaker rejects the call.
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit<'_>, CircuitOpen> {
        let ticket = self.inner.acquire()?;
        Ok(Permit {
            inner: &self.inner,
            ticket,
        })
    }

    /// Like [`try_acquire`](Self::try_acquire), with a permit that owns a
    /// clone of the breaker (one `Arc` increment), for futures that must be
    /// `'static`.
    ///
    /// # Errors
    /// [`CircuitOpen`] when the breaker rejects the call.
    #[inline]
    pub fn try_acquire_owned(&self) -> Result<OwnedPermit, CircuitOpen> {
        let ticket = self.inner.acquire()?;
        Ok(OwnedPermit {
            inner: self.inner.clone(),
            ticket,
            done: false,
        })
    }

    /// The current state (one atomic load). An open breaker whose open
    /// duration has elapsed still reads [`State::Open`] until a call arrives.
    pub fn state(&self) -> State {
        state_of(self.inner.word.load(Ordering::Acquire))
    }

    /// While open: time until a probe may pass; otherwise `None`.
    pub fn retry_after(&self) -> Option<Duration> {
        if self.state() != State::Open {
            return None;
        }
        let until = self.inner.open_until.load(Ordering::Acquire);
        Some(Duration::from_nanos(until.saturating_sub(self.inner.now())))
    }

    /// Rejects every call until [`reset`](Self::reset) or
    /// [`force_closed`](Self::force_closed). Takes the transition lock.
    pub fn force_open(&self) {
        self.inner.force(State::ForcedOpen, Reason::Forced);
    }

    /// Lets every call through, counting only, until [`reset`](Self::reset)
    /// or [`force_open`](Self::force_open). Takes the transition lock.
    pub fn force_closed(&self) {
        self.inner.force(State::ForcedClosed, Reason::Forced);
    }

    /// Back to closed with every counter and the window cleared. Permits
    /// issued before the reset no longer affect the state.
    pub fn reset(&self) {
        self.inner.force(State::Closed, Reason::Reset);
    }

    /// A receiver of every later state change. Bounded by the builder's
    /// `event_capacity`; a slow receiver gets `RecvError::Lagged(n)` and
    /// loses the `n` oldest events. The first call allocates the buffer;
    /// events before it are not kept. No cost while nobody subscribes.
    pub fn subscribe(&self) -> broadcast::Receiver<StateChange> {
        self.inner
            .events
            .get_or_init(|| broadcast::channel(self.inner.event_capacity).0)
            .subscribe()
    }

    /// A snapshot of the counters (relaxed atomic loads; in rate mode it also
    /// takes the window lock once).
    pub fn metrics(&self) -> Metrics {
        let i = &self.inner;
        let c = &i.counters;
        let successes = c.successes.load(Ordering::Relaxed);
        let failures = c.failures.load(Ordering::Relaxed);
        let ignored = c.ignored.load(Ordering::Relaxed);
        let cancelled = c.cancelled.load(Ordering::Relaxed);
        let (failure_rate, slow_call_rate) = match &i.window {
            Some(w) => {
                let now = if i.needs_time { i.now() } else { 0 };
                let (calls, fails, slows) = w.lock().totals(now);
                if calls == 0 {
                    (None, None)
                } else {
                    (
                        Some(fails as f64 / calls as f64),
                        i.slow.map(|_| slows as f64 / calls as f64),
                    )
                }
            }
            None => {
                let n = successes + failures;
                ((n > 0).then(|| failures as f64 / n as f64), None)
            }
        };
        Metrics {
            name: i.name.clone(),
            state: self.state(),
            calls: successes + failures + ignored + cancelled,
            successes,
            failures,
            ignored,
            cancelled,
            rejected: c.rejected.load(Ordering::Relaxed),
            slow_calls: c.slow.load(Ordering::Relaxed),
            consecutive_failures: i.consecutive.load(Ordering::Relaxed),
            failure_rate,
            slow_call_rate,
            retry_after: self.retry_after(),
        }
    }
}

/// Leave to make one call, borrowed from a [`CircuitBreaker`]. Record the
/// outcome with [`record`](Self::record); dropping it unrecorded records
/// *cancelled* (never a failure) and gives a half-open probe slot back.
#[derive(Debug)]
#[must_use = "dropping a permit records the call as cancelled"]
pub struct Permit<'a> {
    inner: &'a Inner,
    ticket: Ticket,
}

impl Permit<'_> {
    /// Records how the call ended.
    #[inline]
    pub fn record(self, outcome: Outcome) {
        let (inner, ticket) = (self.inner, self.ticket);
        // Nothing to drop but the cancellation hook, which must not run.
        std::mem::forget(self);
        inner.record(ticket, outcome.into());
    }

    /// Whether this permit is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.ticket.kind == Kind::Probe
    }
}

impl Drop for Permit<'_> {
    #[inline]
    fn drop(&mut self) {
        self.inner.record(self.ticket, Recorded::Cancelled);
    }
}

/// An owned [`Permit`] (holds a clone of the breaker), for `'static` futures.
#[derive(Debug)]
#[must_use = "dropping a permit records the call as cancelled"]
pub struct OwnedPermit {
    inner: Arc<Inner>,
    ticket: Ticket,
    done: bool,
}

impl OwnedPermit {
    /// Records how the call ended.
    #[inline]
    pub fn record(mut self, outcome: Outcome) {
        self.done = true;
        self.inner.record(self.ticket, outcome.into());
    }

    /// Whether this permit is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.ticket.kind == Kind::Probe
    }
}

impl Drop for OwnedPermit {
    #[inline]
    fn drop(&mut self) {
        if !self.done {
            self.inner.record(self.ticket, Recorded::Cancelled);
        }
    }
}

// ---- sliding windows

#[derive(Debug)]
enum RateWindow {
    Count {
        ring: Box<[u8]>,
        pos: usize,
        len: usize,
        fails: u64,
        slows: u64,
    },
    Time {
        buckets: Box<[[u64; 3]]>,
        width: u64,
        head: u64,
        calls: u64,
        fails: u64,
        slows: u64,
    },
}

const FAIL: u8 = 1;
const SLOW: u8 = 2;

impl RateWindow {
    fn new(w: Window) -> Self {
        match w {
            Window::Count(n) => Self::Count {
                ring: vec![0u8; n as usize].into_boxed_slice(),
                pos: 0,
                len: 0,
                fails: 0,
                slows: 0,
            },
            Window::Time { size, buckets } => Self::Time {
                buckets: vec![[0u64; 3]; buckets as usize].into_boxed_slice(),
                width: nanos(size / buckets).max(1),
                head: 0,
                calls: 0,
                fails: 0,
                slows: 0,
            },
        }
    }

    fn clear(&mut self) {
        match self {
            Self::Count {
                ring,
                pos,
                len,
                fails,
                slows,
            } => {
                ring.fill(0);
                *pos = 0;
                *len = 0;
                *fails = 0;
                *slows = 0;
            }
            Self::Time {
                buckets,
                calls,
                fails,
                slows,
                ..
            } => {
                buckets.fill([0; 3]);
                *calls = 0;
                *fails = 0;
                *slows = 0;
            }
        }
    }

    /// Drops buckets older than the window (time window only).
    fn roll(&mut self, now: u64) {
        if let Self::Time {
            buckets,
            width,
            head,
            calls,
            fails,
            slows,
        } = self
        {
            let b = now / *width;
            if b <= *head {
                return;
            }
            let n = buckets.len() as u64;
            let steps = (b - *head).min(n);
            for i in 1..=steps {
                let idx = ((*head + i) % n) as usize;
                let [c, f, s] = buckets[idx];
                *calls -= c;
                *fails -= f;
                *slows -= s;
                buckets[idx] = [0; 3];
            }
            *head = b;
        }
    }

    fn record(&mut self, now: u64, failure: bool, slow: bool) -> (u64, u64, u64) {
        self.roll(now);
        match self {
            Self::Count {
                ring,
                pos,
                len,
                fails,
                slows,
            } => {
                let old = ring[*pos];
                if *len == ring.len() {
                    *fails -= u64::from(old & FAIL);
                    *slows -= u64::from((old & SLOW) >> 1);
                } else {
                    *len += 1;
                }
                let v = if failure { FAIL } else { 0 } | if slow { SLOW } else { 0 };
                ring[*pos] = v;
                *fails += u64::from(failure);
                *slows += u64::from(slow);
                *pos = (*pos + 1) % ring.len();
                (*len as u64, *fails, *slows)
            }
            Self::Time {
                buckets,
                head,
                calls,
                fails,
                slows,
                ..
            } => {
                let idx = (*head % buckets.len() as u64) as usize;
                let bucket = &mut buckets[idx];
                bucket[0] += 1;
                bucket[1] += u64::from(failure);
                bucket[2] += u64::from(slow);
                *calls += 1;
                *fails += u64::from(failure);
                *slows += u64::from(slow);
                (*calls, *fails, *slows)
            }
        }
    }

    fn totals(&mut self, now: u64) -> (u64, u64, u64) {
        self.roll(now);
        match self {
            Self::Count {
                len, fails, slows, ..
            } => (*len as u64, *fails, *slows),
            Self::Time {
                calls,
                fails,
                slows,
                ..
            } => (*calls, *fails, *slows),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_breaker_is_a_few_hundred_bytes_as_documented() {
        let fixed = std::mem::size_of::<Inner>();
        // Plus 16 bytes of `Arc` counts: the docs say ~350 bytes.
        assert!(fixed + 16 <= 360, "Inner is {fixed} bytes; update the docs");
    }
}
