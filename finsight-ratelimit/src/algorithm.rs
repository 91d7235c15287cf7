//! The six algorithms as pure decision functions.
//!
//! Each algorithm is a function `(policy, state, now, cost) -> (verdict, new state)`
//! over integer microseconds; nothing here reads a clock, allocates (except the
//! sliding-window log's bounded buffer) or locks. The Redis backend runs the
//! same arithmetic in Lua (`src/redis/script.lua`), with every intermediate
//! value below 2^53 so Lua's doubles compute exactly what Rust computes.
//!
//! # One meaning of `limit`, `window` and `burst`
//!
//! Every algorithm admits at most **`limit + burst`** (the *capacity*) at once
//! and refills or slides at `limit` per `window`:
//!
//! | algorithm | state per key | guarantee (for any arrival pattern) |
//! |---|---|---|
//! | [`Gcra`](Algorithm::Gcra) | 8 B (theoretical arrival time) | any interval of length `d` admits ≤ capacity + ⌊d / interval⌋ |
//! | [`TokenBucket`](Algorithm::TokenBucket) | 16 B (time, tokens) | same as GCRA (the two are equivalent) |
//! | [`LeakyBucket`](Algorithm::LeakyBucket) | 16 B (time, level) | same as GCRA (a leaky bucket *as a meter*) |
//! | [`FixedWindow`](Algorithm::FixedWindow) | 16 B (window, count) | each window aligned to the Unix epoch admits ≤ capacity |
//! | [`SlidingWindowLog`](Algorithm::SlidingWindowLog) | 16 B per logged request, ≤ capacity entries | any interval of length `window` admits ≤ capacity (exact) |
//! | [`SlidingWindowCounter`](Algorithm::SlidingWindowCounter) | 16 B (window, two counts) | each aligned window admits ≤ capacity; the weighted estimate `prev·(1-elapsed/window) + current` never exceeds capacity |
//!
//! `interval` is `⌈window / limit⌉` microseconds: the rate is rounded *down*
//! to a whole microsecond per request, so it is never more generous than
//! asked. A request may cost more than 1 (`cost`); a cost above the capacity
//! can never be admitted and is reported as such instead of a retry time.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Largest integer every value in the arithmetic stays below (Lua's doubles are exact up to 2^53).
pub(crate) const EXACT: u64 = 1 << 53;
/// Largest window: 2^42 µs, about 50.9 days.
const MAX_WINDOW_US: u64 = 1 << 42;

/// A rate-limiting algorithm. See the [module docs](self) for what each guarantees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Token bucket: capacity `limit + burst` tokens, refilled at `limit` per `window`.
    TokenBucket,
    /// Leaky bucket as a meter: a bucket of size `limit + burst` draining at `limit` per `window`.
    LeakyBucket,
    /// Fixed window: at most `limit + burst` per window aligned to the Unix epoch.
    FixedWindow,
    /// Sliding-window log: exact; stores one entry per admitted request (bounded by the capacity).
    SlidingWindowLog,
    /// Sliding-window counter: the previous window's count weighted by its overlap plus the current one.
    SlidingWindowCounter,
    /// Generic cell rate algorithm: one timestamp per key, equivalent to the token bucket.
    Gcra,
}

impl Algorithm {
    /// All six, in a fixed order.
    pub const ALL: [Algorithm; 6] = [
        Algorithm::TokenBucket,
        Algorithm::LeakyBucket,
        Algorithm::FixedWindow,
        Algorithm::SlidingWindowLog,
        Algorithm::SlidingWindowCounter,
        Algorithm::Gcra,
    ];

    /// The code the Redis script uses for this algorithm.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn code(self) -> u8 {
        match self {
            Algorithm::TokenBucket => 1,
            Algorithm::LeakyBucket => 2,
            Algorithm::FixedWindow => 3,
            Algorithm::SlidingWindowLog => 4,
            Algorithm::SlidingWindowCounter => 5,
            Algorithm::Gcra => 6,
        }
    }

    /// Name as written in rule files (`"token_bucket"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::TokenBucket => "token_bucket",
            Algorithm::LeakyBucket => "leaky_bucket",
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingWindowLog => "sliding_window_log",
            Algorithm::SlidingWindowCounter => "sliding_window_counter",
            Algorithm::Gcra => "gcra",
        }
    }
}

/// How much an algorithm admits: `limit` per `window`, plus `burst`.
///
/// ```
/// use std::time::Duration;
/// use finsight_ratelimit::{Algorithm, Quota};
/// // 100 requests per minute, 20 more at once, as a token bucket.
/// let q = Quota::per(100, Duration::from_secs(60)).burst(20).algorithm(Algorithm::TokenBucket);
/// assert_eq!(q.capacity(), 120);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// The algorithm (default [`Algorithm::Gcra`]).
    pub algorithm: Algorithm,
    /// Requests (cost units) per window.
    pub limit: u64,
    /// The window.
    pub window: Duration,
    /// Extra allowance on top of `limit` (default 0).
    pub burst: u64,
}

impl Quota {
    /// `limit` per `window`, GCRA, no extra burst. Validated by [`Policy::new`].
    pub const fn per(limit: u64, window: Duration) -> Self {
        Self {
            algorithm: Algorithm::Gcra,
            limit,
            window,
            burst: 0,
        }
    }

    /// Sets the extra allowance on top of `limit`.
    pub const fn burst(mut self, burst: u64) -> Self {
        self.burst = burst;
        self
    }

    /// Sets the algorithm.
    pub const fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// `limit + burst`: the most admitted at once.
    pub const fn capacity(&self) -> u64 {
        self.limit.saturating_add(self.burst)
    }
}

/// A validated [`Quota`] in the integer form the decision functions use.
///
/// Cheap to copy (48 bytes). Build with [`Policy::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub(crate) algorithm: Algorithm,
    pub(crate) limit: u64,
    pub(crate) capacity: u64,
    pub(crate) window_us: u64,
    pub(crate) interval_us: u64,
    /// `⌊(2^64 - 1) / interval_us⌋` and `⌊(2^64 - 1) / window_us⌋`: division by
    /// multiplication on the hot path (a 64-bit `div` costs ~10 ns).
    recip_interval: u64,
    recip_window: u64,
}

/// `x / d` given `recip = u64::MAX / d`: the estimate is at most 2 low.
#[inline]
fn fast_div(x: u64, d: u64, recip: u64) -> u64 {
    #[allow(clippy::cast_possible_truncation)]
    let mut q = ((u128::from(x) * u128::from(recip)) >> 64) as u64;
    while x - q * d >= d {
        q += 1;
    }
    q
}

/// The answer of one algorithm for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the request is admitted.
    pub allowed: bool,
    /// What is left after this decision (admitted cost already subtracted), in cost units.
    pub remaining: u64,
    /// Microseconds until the key is back to full capacity if nothing else arrives.
    pub reset_us: u64,
    /// When rejected: microseconds until the same request would be admitted
    /// (always ≥ 1). `None` when allowed, or when the cost exceeds the
    /// capacity and no wait can help.
    pub retry_us: Option<u64>,
}

/// Per-key state of one algorithm. Create with [`Policy::new_state`].
///
/// Size: 16 bytes for every algorithm but the sliding-window log, which holds
/// at most `capacity` entries of 16 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State(pub(crate) StateRepr);

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StateRepr {
    Cell(Cell),
    Log(Log),
}

/// Two words of state, read per algorithm:
/// GCRA `(tat, -)`, token bucket `(last, tokens·interval)`, leaky bucket
/// `(last, level·interval)`, fixed window `(window index, count)`,
/// sliding counter `(window index, current << 32 | previous)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Cell {
    pub(crate) a: u64,
    pub(crate) b: u64,
}

/// The sliding-window log: `(timestamp, cost)` in arrival order, total cost ≤ capacity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Log {
    pub(crate) entries: VecDeque<(u64, u64)>,
}

fn div_ceil(a: u64, b: u64) -> u64 {
    a.div_ceil(b)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Policy {
    /// Validates `quota` and precomputes the integers of its algorithm.
    ///
    /// # Errors
    /// [`Error::Config`] when the limit is 0, the window is shorter than 1 µs
    /// per request or longer than ~50 days, the capacity exceeds 2^32 - 1, or
    /// (sliding-window counter) `capacity × window in µs` is 2^53 or more
    /// (the exact-arithmetic bound shared with the Redis script).
    pub fn new(quota: Quota) -> Result<Self> {
        Self::named(quota, None)
    }

    pub(crate) fn named(quota: Quota, rule: Option<&str>) -> Result<Self> {
        let window_us = micros(quota.window);
        let err = |m: String| Err(Error::config(rule, m));
        if quota.limit == 0 {
            return err("limit must be at least 1 (to block everything, use a rule with a tiny limit and the reject action)".into());
        }
        if window_us == 0 || window_us > MAX_WINDOW_US {
            return err(format!(
                "window {:?} is out of range: use 1 µs .. {} days",
                quota.window,
                MAX_WINDOW_US / 86_400_000_000
            ));
        }
        if window_us < quota.limit {
            return err(format!(
                "limit {} per {:?} is faster than one request per microsecond; use a longer window",
                quota.limit, quota.window
            ));
        }
        let capacity = quota.capacity();
        if capacity > u64::from(u32::MAX) {
            return err(format!("limit + burst = {capacity} exceeds {}", u32::MAX));
        }
        let interval_us = div_ceil(window_us, quota.limit);
        if (u128::from(capacity) + 1) * u128::from(window_us) >= u128::from(EXACT)
            && quota.algorithm == Algorithm::SlidingWindowCounter
        {
            return err(format!(
                "sliding_window_counter needs (limit + burst) × window in µs below 2^53; {capacity} × {window_us} is not: shorten the window or use gcra/token_bucket"
            ));
        }
        if u128::from(capacity) * u128::from(interval_us) >= u128::from(EXACT / 4) {
            return err(format!(
                "(limit + burst) × interval = {capacity} × {interval_us} µs is too large: lower the burst"
            ));
        }
        Ok(Self {
            algorithm: quota.algorithm,
            limit: quota.limit,
            capacity,
            window_us,
            interval_us,
            recip_interval: u64::MAX / interval_us,
            recip_window: u64::MAX / window_us,
        })
    }

    #[inline]
    fn div_t(&self, x: u64) -> u64 {
        fast_div(x, self.interval_us, self.recip_interval)
    }

    #[inline]
    fn div_w(&self, x: u64) -> u64 {
        fast_div(x, self.window_us, self.recip_window)
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// `limit + burst`.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The limit per window.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The window.
    pub fn window(&self) -> Duration {
        Duration::from_micros(self.window_us)
    }

    /// Microseconds per request at the steady rate: `⌈window / limit⌉`.
    pub fn interval_us(&self) -> u64 {
        self.interval_us
    }

    /// A fresh state (full capacity) for a key first seen at `now_us`.
    pub fn new_state(&self, now_us: u64) -> State {
        State(match self.algorithm {
            Algorithm::SlidingWindowLog => StateRepr::Log(Log::default()),
            _ => StateRepr::Cell(self.fresh_cell(now_us)),
        })
    }

    /// Decides whether `cost` is admitted at `now_us` and, if so, consumes it
    /// from `state`. Pure: the result depends only on the arguments.
    pub fn decide(&self, state: &mut State, now_us: u64, cost: u64) -> Verdict {
        self.apply(state, now_us, cost, true)
    }

    /// The verdict [`decide`](Self::decide) would give, without consuming.
    pub fn peek(&self, state: &State, now_us: u64, cost: u64) -> Verdict {
        match &state.0 {
            StateRepr::Cell(c) => self.cell_decide(c, now_us, cost).0,
            StateRepr::Log(l) => self.log_decide(&mut l.clone(), now_us, cost, false),
        }
    }

    /// Gives back `cost` previously consumed (e.g. the real cost was lower).
    /// Never raises the state above full capacity.
    pub fn refund(&self, state: &mut State, now_us: u64, cost: u64) {
        match &mut state.0 {
            StateRepr::Cell(c) => *c = self.cell_refund(c, now_us, cost),
            StateRepr::Log(l) => self.log_refund(l, now_us, cost),
        }
    }

    /// Whether `state` is back to full capacity at `now_us`, so dropping it
    /// changes no future decision (used for idle-key eviction).
    pub fn is_idle(&self, state: &State, now_us: u64) -> bool {
        match &state.0 {
            StateRepr::Cell(c) => self.cell_idle(c, now_us),
            StateRepr::Log(l) => self.log_idle(l, now_us),
        }
    }

    fn apply(&self, state: &mut State, now_us: u64, cost: u64, commit: bool) -> Verdict {
        match &mut state.0 {
            StateRepr::Cell(c) => {
                let (v, next) = self.cell_decide(c, now_us, cost);
                if commit && v.allowed {
                    *c = next;
                }
                v
            }
            StateRepr::Log(l) => self.log_decide(l, now_us, cost, commit),
        }
    }

    pub(crate) fn fresh_cell(&self, now: u64) -> Cell {
        match self.algorithm {
            Algorithm::Gcra => Cell { a: now, b: 0 },
            Algorithm::TokenBucket => Cell {
                a: now,
                b: self.capacity * self.interval_us,
            },
            Algorithm::LeakyBucket => Cell { a: now, b: 0 },
            Algorithm::FixedWindow | Algorithm::SlidingWindowCounter => Cell {
                a: self.div_w(now),
                b: 0,
            },
            Algorithm::SlidingWindowLog => Cell::default(),
        }
    }

    /// GCRA on a bare theoretical arrival time: the lock-free hot path of
    /// [`RateLimiter`](crate::RateLimiter). Returns the verdict and the TAT to
    /// store if admitted.
    #[inline]
    pub(crate) fn gcra(&self, tat: u64, now: u64, cost: u64) -> (Verdict, u64) {
        let t = self.interval_us;
        let full = self.capacity * t;
        let used = tat.max(now) - now;
        let new_used = used + cost * t;
        if new_used <= full {
            (
                Verdict {
                    allowed: true,
                    remaining: self.div_t(full - new_used),
                    reset_us: new_used,
                    retry_us: None,
                },
                now + new_used,
            )
        } else {
            (
                Verdict {
                    allowed: false,
                    remaining: self.div_t(full - used.min(full)),
                    reset_us: used,
                    retry_us: (cost <= self.capacity).then(|| new_used - full),
                },
                tat,
            )
        }
    }

    /// The decision for a two-word state. Returns the verdict and the state to
    /// store if the request is committed.
    pub(crate) fn cell_decide(&self, c: &Cell, now: u64, cost: u64) -> (Verdict, Cell) {
        let cap = self.capacity;
        let t = self.interval_us;
        let never = cost > cap;
        match self.algorithm {
            Algorithm::Gcra => {
                // tat: the theoretical arrival time; the bucket is full when tat <= now.
                let tat = c.a.max(now);
                let full = cap * t;
                let used = tat - now;
                let new_used = used + cost * t;
                if new_used <= full {
                    let v = Verdict {
                        allowed: true,
                        remaining: self.div_t(full - new_used),
                        reset_us: new_used,
                        retry_us: None,
                    };
                    (
                        v,
                        Cell {
                            a: now + new_used,
                            b: 0,
                        },
                    )
                } else {
                    let v = Verdict {
                        allowed: false,
                        remaining: self.div_t(full - used.min(full)),
                        reset_us: used,
                        retry_us: (!never).then(|| new_used - full),
                    };
                    (v, Cell { a: tat, b: 0 })
                }
            }
            Algorithm::TokenBucket | Algorithm::LeakyBucket => {
                // Both keep "used" capacity in µs (interval units); the token
                // bucket stores what is left, the leaky bucket the water level.
                let full = cap * t;
                let elapsed = now.saturating_sub(c.a);
                let used = if self.algorithm == Algorithm::TokenBucket {
                    full - c.b.min(full).saturating_add(elapsed).min(full)
                } else {
                    c.b.saturating_sub(elapsed)
                };
                let new_used = used + cost * t;
                let store = |u: u64| {
                    if self.algorithm == Algorithm::TokenBucket {
                        Cell {
                            a: now.max(c.a),
                            b: full - u,
                        }
                    } else {
                        Cell {
                            a: now.max(c.a),
                            b: u,
                        }
                    }
                };
                if new_used <= full {
                    let v = Verdict {
                        allowed: true,
                        remaining: self.div_t(full - new_used),
                        reset_us: new_used,
                        retry_us: None,
                    };
                    (v, store(new_used))
                } else {
                    let v = Verdict {
                        allowed: false,
                        remaining: self.div_t(full - used),
                        reset_us: used,
                        retry_us: (!never).then(|| new_used - full),
                    };
                    (v, store(used))
                }
            }
            Algorithm::FixedWindow => {
                let w = self.window_us;
                let idx = self.div_w(now);
                let count = if c.a == idx { c.b } else { 0 };
                let end = (idx + 1) * w - now;
                if count + cost <= cap {
                    let v = Verdict {
                        allowed: true,
                        remaining: cap - count - cost,
                        reset_us: end,
                        retry_us: None,
                    };
                    (
                        v,
                        Cell {
                            a: idx,
                            b: count + cost,
                        },
                    )
                } else {
                    let v = Verdict {
                        allowed: false,
                        remaining: cap.saturating_sub(count),
                        reset_us: if count == 0 { 0 } else { end },
                        retry_us: (!never).then_some(end),
                    };
                    (v, Cell { a: idx, b: count })
                }
            }
            Algorithm::SlidingWindowCounter => {
                let w = self.window_us;
                let idx = self.div_w(now);
                let e = now - idx * w;
                let (cur, prev) = if c.a == idx {
                    (c.b >> 32, c.b & 0xffff_ffff)
                } else if c.a + 1 == idx {
                    (0, c.b >> 32)
                } else {
                    (0, 0)
                };
                let weighted = prev * (w - e) / w;
                let reset_of = |cur: u64| {
                    if cur > 0 {
                        (idx + 2) * w - now
                    } else if prev > 0 {
                        (idx + 1) * w - now
                    } else {
                        0
                    }
                };
                if weighted + cur + cost <= cap {
                    let v = Verdict {
                        allowed: true,
                        remaining: cap - weighted - cur - cost,
                        reset_us: reset_of(cur + cost),
                        retry_us: None,
                    };
                    (
                        v,
                        Cell {
                            a: idx,
                            b: ((cur + cost) << 32) | prev,
                        },
                    )
                } else {
                    let retry = if never {
                        None
                    } else {
                        Some(counter_retry(w, cap, idx, now, e, cur, prev, cost))
                    };
                    let v = Verdict {
                        allowed: false,
                        remaining: cap.saturating_sub(weighted + cur),
                        reset_us: reset_of(cur),
                        retry_us: retry,
                    };
                    (
                        v,
                        Cell {
                            a: idx,
                            b: (cur << 32) | prev,
                        },
                    )
                }
            }
            Algorithm::SlidingWindowLog => (
                Verdict {
                    allowed: false,
                    remaining: 0,
                    reset_us: 0,
                    retry_us: None,
                },
                *c,
            ),
        }
    }

    pub(crate) fn cell_refund(&self, c: &Cell, now: u64, cost: u64) -> Cell {
        let t = self.interval_us;
        let full = self.capacity * t;
        match self.algorithm {
            Algorithm::Gcra => Cell {
                a: c.a.saturating_sub(cost * t).max(now.min(c.a)),
                b: 0,
            },
            Algorithm::TokenBucket => Cell {
                a: c.a,
                b: c.b.saturating_add(cost * t).min(full),
            },
            Algorithm::LeakyBucket => Cell {
                a: c.a,
                b: c.b.saturating_sub(cost * t),
            },
            Algorithm::FixedWindow => {
                if c.a == self.div_w(now) {
                    Cell {
                        a: c.a,
                        b: c.b.saturating_sub(cost),
                    }
                } else {
                    *c
                }
            }
            Algorithm::SlidingWindowCounter => {
                if c.a == self.div_w(now) {
                    let cur = (c.b >> 32).saturating_sub(cost);
                    Cell {
                        a: c.a,
                        b: (cur << 32) | (c.b & 0xffff_ffff),
                    }
                } else {
                    *c
                }
            }
            Algorithm::SlidingWindowLog => *c,
        }
    }

    pub(crate) fn cell_idle(&self, c: &Cell, now: u64) -> bool {
        let t = self.interval_us;
        match self.algorithm {
            Algorithm::Gcra => c.a <= now,
            Algorithm::TokenBucket => {
                c.b.saturating_add(now.saturating_sub(c.a)) >= self.capacity * t
            }
            Algorithm::LeakyBucket => c.b <= now.saturating_sub(c.a),
            Algorithm::FixedWindow => c.a < self.div_w(now) || c.b == 0,
            Algorithm::SlidingWindowCounter => c.a + 1 < self.div_w(now) || c.b == 0,
            Algorithm::SlidingWindowLog => true,
        }
    }

    /// Sliding-window log decision; `commit` appends the request when admitted.
    /// Expired entries are always dropped (that changes no decision).
    pub(crate) fn log_decide(&self, l: &mut Log, now: u64, cost: u64, commit: bool) -> Verdict {
        let w = self.window_us;
        let cap = self.capacity;
        while l.entries.front().is_some_and(|&(ts, _)| ts + w <= now) {
            l.entries.pop_front();
        }
        let sum: u64 = l.entries.iter().map(|&(_, c)| c).sum();
        if sum + cost <= cap {
            if commit && cost > 0 {
                match l.entries.back_mut() {
                    Some((ts, c)) if *ts >= now => *c += cost,
                    _ => l.entries.push_back((now, cost)),
                }
            }
            let newest = if cost > 0 {
                Some(now)
            } else {
                l.entries.back().map(|&(ts, _)| ts)
            };
            Verdict {
                allowed: true,
                remaining: cap - sum - cost,
                reset_us: newest.map_or(0, |ts| (ts + w).saturating_sub(now)),
                retry_us: None,
            }
        } else {
            let retry = if cost > cap {
                None
            } else {
                let mut left = sum;
                let mut at = None;
                for &(ts, c) in &l.entries {
                    left -= c;
                    if left + cost <= cap {
                        at = Some((ts + w).saturating_sub(now).max(1));
                        break;
                    }
                }
                at
            };
            Verdict {
                allowed: false,
                remaining: cap.saturating_sub(sum),
                reset_us: l
                    .entries
                    .back()
                    .map_or(0, |&(ts, _)| (ts + w).saturating_sub(now)),
                retry_us: retry,
            }
        }
    }

    pub(crate) fn log_refund(&self, l: &mut Log, now: u64, mut cost: u64) {
        let w = self.window_us;
        while cost > 0 {
            match l.entries.back_mut() {
                Some((ts, c)) if *ts + w > now => {
                    let take = (*c).min(cost);
                    *c -= take;
                    cost -= take;
                    if *c == 0 {
                        l.entries.pop_back();
                    }
                }
                _ => break,
            }
        }
    }

    pub(crate) fn log_idle(&self, l: &Log, now: u64) -> bool {
        l.entries
            .back()
            .is_none_or(|&(ts, _)| ts + self.window_us <= now)
    }
}

/// The earliest time the sliding-window counter admits `cost`, as µs from now.
#[allow(clippy::too_many_arguments)]
fn counter_retry(
    w: u64,
    cap: u64,
    idx: u64,
    now: u64,
    e: u64,
    cur: u64,
    prev: u64,
    cost: u64,
) -> u64 {
    // Within this window: need ⌊prev·(w-e')/w⌋ ≤ room, i.e. prev·(w-e') ≤ (room+1)·w - 1.
    if cur + cost <= cap && prev > 0 {
        let room = cap - cur - cost;
        let e2 = w.saturating_sub(((room + 1) * w - 1) / prev);
        if e2 < w && e2 > e {
            return idx * w + e2 - now;
        }
    }
    // Next window: the current count becomes the previous one.
    let room = cap - cost;
    let e3 = (((room + 1) * w - 1).checked_div(cur)).map_or(0, |q| w.saturating_sub(q).min(w));
    ((idx + 1) * w + e3).saturating_sub(now).max(1)
}
