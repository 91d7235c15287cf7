//! L1 entries, their physical expiry in moka, and the generation counters
//! that keep stale fills out of L1.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use tokio::time::Instant;

/// A point in time on the cache's clock: nanoseconds since the cache's
/// [`TimeBase`]. 8 bytes instead of an `Instant`'s 16, which keeps
/// [`Entry`] — cloned by moka on every hit — small.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Stamp(u64);

impl Stamp {
    /// `self − d`, or the origin.
    pub(crate) fn saturating_sub(self, d: Duration) -> Stamp {
        Stamp(self.0.saturating_sub(nanos(d)))
    }
}

impl std::ops::Add<Duration> for Stamp {
    type Output = Stamp;
    fn add(self, d: Duration) -> Stamp {
        Stamp(self.0.saturating_add(nanos(d)))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The origin of a cache's [`Stamp`]s: a `tokio::time::Instant` (so tests
/// can run on tokio's paused clock).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TimeBase(Instant);

impl TimeBase {
    pub(crate) fn new() -> Self {
        Self(Instant::now())
    }

    /// One clock read.
    pub(crate) fn now(&self) -> Stamp {
        Stamp(nanos(Instant::now().saturating_duration_since(self.0)))
    }
}

/// One L1 entry: the value and, in 24 bytes, what decides its freshness.
///
/// moka clones the entry on every hit and the hit path moves it a few
/// times, so everything derivable is left out: the refresh-ahead trigger is
/// `expires_at − threshold`, whether the entry is "fast" (fresh exactly
/// while moka keeps it) follows from the configuration, and moka's expiry
/// span is computed at insert time by [`EntryExpiry`].
#[derive(Debug, Clone)]
pub(crate) struct Entry<V> {
    /// `None` is a negative entry ("not found").
    pub(crate) value: Option<V>,
    /// Served as fresh before this instant.
    pub(crate) fresh_until: Stamp,
    /// When the value expires in its source layer (Redis' PTTL, or the write's TTL).
    pub(crate) expires_at: Stamp,
    /// How long the load that produced the value took (XFetch's δ), in µs
    /// (saturating at ~71 minutes).
    pub(crate) delta_us: u32,
    /// Weight for a byte-bounded L1.
    pub(crate) weight: u32,
}

impl<V> Entry<V> {
    pub(crate) fn delta(&self) -> Duration {
        Duration::from_micros(u64::from(self.delta_us))
    }
}

pub(crate) fn micros_u32(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// moka's per-entry expiry: an entry is dropped physically once it is no
/// longer fresh nor within its stale window (`stale` for values, none for
/// negative entries), in real time. Called by moka synchronously inside
/// `insert`, so "now" is the fill's time.
pub(crate) struct EntryExpiry {
    pub(crate) time: TimeBase,
    pub(crate) stale: Duration,
}

impl EntryExpiry {
    fn span<V>(&self, e: &Entry<V>) -> Duration {
        let fresh = Duration::from_nanos(e.fresh_until.0.saturating_sub(self.time.now().0));
        if e.value.is_some() {
            fresh.saturating_add(self.stale)
        } else {
            fresh
        }
    }
}

impl<V> moka::Expiry<String, Entry<V>> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Entry<V>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(self.span(value))
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Entry<V>,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.span(value))
    }
}

/// Number of generation stripes: memory is fixed (8 KiB) whatever the key count.
const STRIPES: usize = 1024;

/// Generation counters: every invalidation of a key bumps its stripe, every
/// flush or pattern invalidation bumps the epoch. A fill takes a [`Token`]
/// before it reads its source and stores only while the token is still valid.
/// Two keys sharing a stripe can only cause a fill to be dropped needlessly,
/// never a stale value to be kept.
#[derive(Debug)]
pub(crate) struct Generations {
    stripes: Box<[AtomicU64]>,
    epoch: AtomicU64,
    hasher: std::collections::hash_map::RandomState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token {
    stripe: usize,
    generation: u64,
    epoch: u64,
}

impl Generations {
    pub(crate) fn new() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            epoch: AtomicU64::new(0),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    fn stripe(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) % STRIPES
    }

    /// The current token of `key` (take it before reading the source).
    pub(crate) fn token(&self, key: &str) -> Token {
        let stripe = self.stripe(key);
        Token {
            stripe,
            epoch: self.epoch.load(SeqCst),
            generation: self.stripes[stripe].load(SeqCst),
        }
    }

    /// Invalidates every token of `key` taken so far; returns the new token.
    pub(crate) fn bump(&self, key: &str) -> Token {
        let stripe = self.stripe(key);
        let generation = self.stripes[stripe].fetch_add(1, SeqCst) + 1;
        Token {
            stripe,
            epoch: self.epoch.load(SeqCst),
            generation,
        }
    }

    /// Invalidates every token taken so far.
    pub(crate) fn bump_all(&self) {
        self.epoch.fetch_add(1, SeqCst);
    }

    pub(crate) fn is_valid(&self, t: Token) -> bool {
        self.epoch.load(SeqCst) == t.epoch && self.stripes[t.stripe].load(SeqCst) == t.generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_stay_small() {
        // moka clones the entry on every hit: metadata is 24 bytes beside the value.
        assert_eq!(std::mem::size_of::<Entry<u64>>(), 16 + 24);
        assert_eq!(std::mem::size_of::<Entry<String>>(), 24 + 24);
    }

    #[test]
    fn stamps_saturate() {
        assert_eq!(
            Stamp(u64::MAX - 1) + Duration::from_secs(1),
            Stamp(u64::MAX)
        );
        assert_eq!(Stamp(5).saturating_sub(Duration::from_secs(1)), Stamp(0));
        assert!(Stamp(5) + Duration::from_nanos(1) > Stamp(5));
    }

    #[test]
    fn tokens_die_on_bump_and_epoch() {
        let g = Generations::new();
        let t = g.token("a");
        assert!(g.is_valid(t));
        let t2 = g.bump("a");
        assert!(!g.is_valid(t));
        assert!(g.is_valid(t2));
        g.bump_all();
        assert!(!g.is_valid(t2));
        assert!(g.is_valid(g.token("a")));
    }
}
