//! Single-quota limiters: one state ([`RateLimiter`]) or one state per key
//! ([`KeyedRateLimiter`]), the building blocks below [`Limiter`](crate::Limiter)'s rules.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::algorithm::{Algorithm, Cell, Log, Policy, Quota, Verdict};
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::store::{DEFAULT_MAX_KEYS, Store};

enum Direct {
    /// GCRA: the theoretical arrival time, updated with compare-and-swap.
    Atomic(AtomicU64),
    Cell(Mutex<Cell>),
    Log(Mutex<Log>),
}

/// One quota, one state: "this process may call the API 100 times a minute".
///
/// Cost per check: one clock read plus, for GCRA, one atomic compare-and-swap
/// (lock-free); for the other algorithms one uncontended `parking_lot` mutex.
/// Memory: 8 bytes of state (GCRA), 16 bytes (others), or at most
/// `limit + burst` × 16 bytes (sliding-window log).
///
/// ```
/// use std::time::Duration;
/// use finsight_ratelimit::{ManualClock, Quota, RateLimiter};
/// let clock = ManualClock::new(0);
/// let rl = RateLimiter::with_clock(Quota::per(2, Duration::from_secs(1)), clock.clone())?;
/// assert!(rl.check().allowed);
/// assert!(rl.check().allowed);
/// let v = rl.check();
/// assert!(!v.allowed);
/// assert_eq!(v.retry_us, Some(500_000)); // one request per 500 ms
/// clock.advance(Duration::from_millis(500));
/// assert!(rl.check().allowed);
/// # Ok::<(), finsight_ratelimit::Error>(())
/// ```
pub struct RateLimiter<C = SystemClock> {
    policy: Policy,
    clock: C,
    state: Direct,
}

impl<C> fmt::Debug for RateLimiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl RateLimiter<SystemClock> {
    /// A limiter on the system clock.
    ///
    /// # Errors
    /// [`Error::Config`] when the quota is invalid (see [`Policy::new`]).
    pub fn new(quota: Quota) -> Result<Self> {
        Self::with_clock(quota, SystemClock::new())
    }
}

impl<C: Clock> RateLimiter<C> {
    /// A limiter on `clock`.
    ///
    /// # Errors
    /// [`Error::Config`] when the quota is invalid (see [`Policy::new`]).
    pub fn with_clock(quota: Quota, clock: C) -> Result<Self> {
        let policy = Policy::new(quota)?;
        let now = clock.now_micros();
        let state = match policy.algorithm {
            Algorithm::Gcra => Direct::Atomic(AtomicU64::new(now)),
            Algorithm::SlidingWindowLog => Direct::Log(Mutex::new(Log::default())),
            _ => Direct::Cell(Mutex::new(policy.fresh_cell(now))),
        };
        Ok(Self {
            policy,
            clock,
            state,
        })
    }

    /// The validated quota.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Checks and consumes one unit.
    #[inline]
    pub fn check(&self) -> Verdict {
        self.check_n(1)
    }

    /// Checks and consumes `cost` units (all or nothing).
    #[inline]
    pub fn check_n(&self, cost: u64) -> Verdict {
        self.run(cost, true)
    }

    /// The verdict of [`check_n`](Self::check_n) without consuming.
    pub fn peek(&self, cost: u64) -> Verdict {
        self.run(cost, false)
    }

    /// Gives back `cost` units.
    pub fn refund(&self, cost: u64) {
        let now = self.clock.now_micros();
        match &self.state {
            Direct::Atomic(a) => {
                let t = cost * self.policy.interval_us;
                let _ = a.fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                    Some(tat.saturating_sub(t).max(now.min(tat)))
                });
            }
            Direct::Cell(m) => {
                let mut c = m.lock();
                *c = self.policy.cell_refund(&c, now, cost);
            }
            Direct::Log(m) => self.policy.log_refund(&mut m.lock(), now, cost),
        }
    }

    #[inline]
    fn run(&self, cost: u64, commit: bool) -> Verdict {
        let now = self.clock.now_micros();
        match &self.state {
            Direct::Atomic(a) => {
                let mut cur = a.load(Ordering::Acquire);
                loop {
                    let (v, next) = self.policy.gcra(cur, now, cost);
                    if !commit || !v.allowed || next == cur {
                        return v;
                    }
                    match a.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                        Ok(_) => return v,
                        Err(actual) => cur = actual,
                    }
                }
            }
            Direct::Cell(m) => {
                let mut c = m.lock();
                let (v, next) = self.policy.cell_decide(&c, now, cost);
                if commit && v.allowed {
                    *c = next;
                }
                v
            }
            Direct::Log(m) => self.policy.log_decide(&mut m.lock(), now, cost, commit),
        }
    }
}

enum Slots<K, S> {
    Cells(Store<K, Cell, S>),
    Logs(Store<K, Log, S>),
}

/// One quota, one state per key (`K` = user id, IP, ...), with bounded memory.
///
/// Backed by a sharded map (dashmap). Idle keys (back at full capacity) are
/// evicted automatically: when a new key arrives at least one window after
/// the last sweep, and whenever the map is full; at most `max_keys` keys
/// (default 1 000 000) are held, and a new key beyond that gets
/// [`Error::StoreFull`]. Memory per key: `size_of::<K>() + 16` bytes plus the
/// hash table's ~1 control byte and spare capacity: measured 27 B per idle
/// `u64` key (RSS growth over 1 000 000 keys; governor's keyed limiter: 39 B
/// in the same run), or for the sliding-window log up to `limit + burst` × 16
/// bytes more.
///
/// Cost per check of an existing key: one hash, one shard write lock, one
/// clock read.
pub struct KeyedRateLimiter<K, C = SystemClock, S = RandomState> {
    policy: Policy,
    clock: C,
    slots: Slots<K, S>,
}

impl<K, C, S> fmt::Debug for KeyedRateLimiter<K, C, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimiter")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<K: Eq + Hash + Clone> KeyedRateLimiter<K, SystemClock, RandomState> {
    /// A keyed limiter on the system clock, at most 1 000 000 keys.
    ///
    /// # Errors
    /// [`Error::Config`] when the quota is invalid.
    pub fn new(quota: Quota) -> Result<Self> {
        Self::with_options(
            quota,
            SystemClock::new(),
            DEFAULT_MAX_KEYS,
            RandomState::new(),
        )
    }
}

impl<K: Eq + Hash + Clone, C: Clock, S: BuildHasher + Clone> KeyedRateLimiter<K, C, S> {
    /// A keyed limiter on `clock`, holding at most `max_keys` keys, hashing with `hasher`.
    ///
    /// # Errors
    /// [`Error::Config`] when the quota is invalid.
    pub fn with_options(quota: Quota, clock: C, max_keys: usize, hasher: S) -> Result<Self> {
        let policy = Policy::new(quota)?;
        let sweep = policy.window_us.max(1_000_000);
        let slots = if policy.algorithm == Algorithm::SlidingWindowLog {
            Slots::Logs(Store::new(max_keys, sweep, hasher))
        } else {
            Slots::Cells(Store::new(max_keys, sweep, hasher))
        };
        Ok(Self {
            policy,
            clock,
            slots,
        })
    }

    /// Checks and consumes `cost` units for `key`.
    ///
    /// # Errors
    /// [`Error::StoreFull`] when `key` is new and `max_keys` active keys exist.
    #[inline]
    pub fn check(&self, key: &K, cost: u64) -> Result<Verdict> {
        let now = self.clock.now_micros();
        let p = &self.policy;
        match &self.slots {
            Slots::Cells(s) => {
                let mut e = s
                    .entry(key, now, || p.fresh_cell(now), |c, n| p.cell_idle(c, n))
                    .ok_or_else(|| self.full(s.max_keys()))?;
                let (v, next) = p.cell_decide(&e, now, cost);
                if v.allowed {
                    *e = next;
                }
                Ok(v)
            }
            Slots::Logs(s) => {
                let mut e = s
                    .entry(key, now, Log::default, |l, n| p.log_idle(l, n))
                    .ok_or_else(|| self.full(s.max_keys()))?;
                Ok(p.log_decide(&mut e, now, cost, true))
            }
        }
    }

    /// The verdict of [`check`](Self::check) without consuming or creating the key.
    pub fn peek(&self, key: &K, cost: u64) -> Verdict {
        let now = self.clock.now_micros();
        let p = &self.policy;
        match &self.slots {
            Slots::Cells(s) => {
                let c = s.get_mut(key).map_or_else(|| p.fresh_cell(now), |e| *e);
                p.cell_decide(&c, now, cost).0
            }
            Slots::Logs(s) => {
                let mut l = s.get_mut(key).map(|e| e.clone()).unwrap_or_default();
                p.log_decide(&mut l, now, cost, false)
            }
        }
    }

    /// Gives back `cost` units to `key` (no effect on an unknown key).
    pub fn refund(&self, key: &K, cost: u64) {
        let now = self.clock.now_micros();
        match &self.slots {
            Slots::Cells(s) => {
                if let Some(mut e) = s.get_mut(key) {
                    *e = self.policy.cell_refund(&e, now, cost);
                }
            }
            Slots::Logs(s) => {
                if let Some(mut e) = s.get_mut(key) {
                    self.policy.log_refund(&mut e, now, cost);
                }
            }
        }
    }

    /// Number of keys held (active or not yet swept). Cost: locks each shard briefly.
    pub fn len(&self) -> usize {
        match &self.slots {
            Slots::Cells(s) => s.len(),
            Slots::Logs(s) => s.len(),
        }
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Evicts every idle key now; returns how many. Cost: O(keys).
    pub fn sweep(&self) -> usize {
        let now = self.clock.now_micros();
        let p = &self.policy;
        match &self.slots {
            Slots::Cells(s) => s.sweep(now, |c, n| p.cell_idle(c, n)),
            Slots::Logs(s) => s.sweep(now, |l, n| p.log_idle(l, n)),
        }
    }

    fn full(&self, max_keys: usize) -> Error {
        Error::StoreFull {
            rule: "keyed".into(),
            max_keys,
        }
    }
}
