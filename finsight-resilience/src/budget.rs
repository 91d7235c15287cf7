//! [`RetryBudget`]: retries limited to a share of recent successful calls plus a floor.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::clock::{AnyClock, Clock, TokioClock, nanos};
use crate::error::Error;

const SLOTS: usize = 10;
const UNIT: i64 = 1000;

/// A retry budget in the Finagle / tower `TpsBudget` design: every
/// successful call deposits `ratio` of a retry, every retry withdraws one,
/// deposits expire after `ttl`, and a floor of `min_per_sec` retries per
/// second is always allowed. [`Retry`](crate::Retry) deposits only when a
/// call succeeds (once per logical call, not per attempt): failed calls
/// deposit nothing, so during a total outage retries are bounded by the
/// floor alone. When the budget is empty, retries stop (the call fails with
/// [`StopReason::BudgetExhausted`](crate::StopReason::BudgetExhausted))
/// instead of multiplying load during an outage.
///
/// Cheap to clone (one `Arc`); clones share the balance, so several
/// [`Retry`](crate::Retry) policies (or services) can draw on one budget.
/// Memory: fixed, 10 counters. Cost: a deposit or withdrawal is one clock
/// read and one or two atomic operations; once per `ttl / 10` one caller
/// rotates the window under a lock.
#[derive(Clone)]
pub struct RetryBudget {
    inner: Arc<Inner>,
}

struct Inner {
    slots: [AtomicI64; SLOTS],
    writer: AtomicI64,
    rotate: Mutex<usize>,
    window_start: AtomicU64,
    width: u64,
    reserve: i64,
    deposit: i64,
    withdraw: i64,
    clock: AnyClock,
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("balance", &self.balance())
            .finish_non_exhaustive()
    }
}

impl Default for RetryBudget {
    /// 10 s ttl, 10 retries per second floor, 20 % of successful calls
    /// (tower's default).
    fn default() -> Self {
        Self::build(
            Duration::from_secs(10),
            10,
            0.2,
            AnyClock::Tokio(TokioClock::new()),
        )
    }
}

impl RetryBudget {
    /// A budget allowing retries of `ratio` (0.0..=1000.0) of the successful
    /// calls of the last `ttl` (1..=60 s), plus `min_per_sec` retries per
    /// second.
    /// Reads time with a [`TokioClock`], so the budget follows tokio's paused
    /// test clock; [`with_clock`](Self::with_clock) takes another.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a ttl outside 1..=60 s or a ratio outside
    /// 0.0..=1000.0.
    pub fn new(ttl: Duration, min_per_sec: u32, ratio: f64) -> Result<Self, Error> {
        Self::validate(ttl, ratio)?;
        Ok(Self::build(
            ttl,
            min_per_sec,
            ratio,
            AnyClock::Tokio(TokioClock::new()),
        ))
    }

    fn validate(ttl: Duration, ratio: f64) -> Result<(), Error> {
        if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(60) {
            return Err(Error::config("retry budget ttl", "must be within 1..=60 s"));
        }
        if !(0.0..=1000.0).contains(&ratio) {
            return Err(Error::config(
                "retry budget ratio",
                "must be within 0.0..=1000.0",
            ));
        }
        Ok(())
    }

    /// Like [`new`](Self::new), on the given clock.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn with_clock(
        ttl: Duration,
        min_per_sec: u32,
        ratio: f64,
        clock: impl Clock,
    ) -> Result<Self, Error> {
        Self::validate(ttl, ratio)?;
        Ok(Self::build(ttl, min_per_sec, ratio, AnyClock::new(clock)))
    }

    fn build(ttl: Duration, min_per_sec: u32, ratio: f64, clock: AnyClock) -> Self {
        // Units: one retry = UNIT; one successful call deposits ratio * UNIT.
        let deposit = (ratio * UNIT as f64).round() as i64;
        let reserve = i64::from(min_per_sec)
            .saturating_mul(ttl.as_secs() as i64)
            .saturating_mul(UNIT);
        let now = clock.now_nanos();
        Self {
            inner: Arc::new(Inner {
                slots: Default::default(),
                writer: AtomicI64::new(0),
                rotate: Mutex::new(0),
                window_start: AtomicU64::new(now),
                width: nanos(ttl / SLOTS as u32).max(1),
                reserve,
                deposit,
                withdraw: UNIT,
                clock,
            }),
        }
    }

    /// Records one successful call (once per logical request, not per
    /// attempt). [`Retry`](crate::Retry) calls this when a call succeeds;
    /// call it yourself only for successes a `Retry` did not see.
    #[inline]
    pub fn deposit(&self) {
        self.inner.expire();
        self.inner
            .writer
            .fetch_add(self.inner.deposit, Ordering::AcqRel);
    }

    /// Takes one retry from the budget; `false` (and nothing taken) if the
    /// balance is below one retry. The check and the withdrawal are two
    /// atomic steps, so simultaneous withdrawals may overdraw by at most one
    /// retry each (as tower's `TpsBudget`).
    pub fn try_withdraw(&self) -> bool {
        let i = &self.inner;
        i.expire();
        if i.sum() >= i.withdraw {
            i.writer.fetch_sub(i.withdraw, Ordering::AcqRel);
            true
        } else {
            false
        }
    }

    /// Retries currently available (whole retries, rounded down).
    pub fn balance(&self) -> i64 {
        self.inner.expire();
        self.inner.sum() / UNIT
    }
}

impl Inner {
    #[inline]
    fn expire(&self) {
        let now = self.clock.now_nanos();
        if now.saturating_sub(self.window_start.load(Ordering::Acquire)) < self.width {
            return;
        }
        self.rotate_slow(now);
    }

    #[cold]
    fn rotate_slow(&self, now: u64) {
        let mut index = self.rotate.lock();
        let start = self.window_start.load(Ordering::Acquire);
        let mut diff = now.saturating_sub(start);
        if diff < self.width {
            return;
        }
        let committed = self.writer.swap(0, Ordering::AcqRel);
        self.slots[*index].store(committed, Ordering::Release);
        let mut idx = (*index + 1) % SLOTS;
        let mut cleared = 0;
        while diff >= self.width * 2 && cleared < SLOTS {
            self.slots[idx].store(0, Ordering::Release);
            diff -= self.width;
            idx = (idx + 1) % SLOTS;
            cleared += 1;
        }
        // The slot we move into is the oldest: its deposits expire now.
        self.slots[idx].store(0, Ordering::Release);
        *index = idx;
        self.window_start.store(now, Ordering::Release);
    }

    fn sum(&self) -> i64 {
        let windowed = self
            .slots
            .iter()
            .map(|s| s.load(Ordering::Acquire))
            .fold(0i64, i64::saturating_add);
        windowed
            .saturating_add(self.writer.load(Ordering::Acquire))
            .saturating_add(self.reserve)
    }
}
