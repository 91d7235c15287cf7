//! L1 entries, their physical expiry in moka, and the generation counters
//! that keep stale fills out of L1.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use tokio::time::Instant;

/// One L1 entry. Logical times use `tokio::time::Instant` (so tests can run
/// on tokio's paused clock); moka removes the entry physically after
/// `physical_ttl` of real time (the same span, so memory is bounded in time too).
#[derive(Debug, Clone)]
pub(crate) struct Entry<V> {
    /// `None` is a negative entry ("not found").
    pub(crate) value: Option<V>,
    /// Served as fresh before this instant.
    pub(crate) fresh_until: Instant,
    /// When the value expires in its source layer (Redis' PTTL, or the write's TTL).
    pub(crate) expires_at: Instant,
    /// Refresh-ahead trigger.
    pub(crate) refresh_at: Option<Instant>,
    /// How long the load that produced the value took (XFetch's δ).
    pub(crate) delta: Duration,
    /// Weight for a byte-bounded L1.
    pub(crate) weight: u32,
    /// Real-time span after which moka drops the entry.
    pub(crate) physical_ttl: Duration,
    /// No stale window and no refresh trigger: fresh exactly while moka keeps it.
    pub(crate) fast: bool,
}

pub(crate) struct EntryExpiry;

impl<V> moka::Expiry<String, Entry<V>> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Entry<V>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.physical_ttl)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Entry<V>,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.physical_ttl)
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
