//! Sharded in-memory key → state map with automatic idle eviction and a hard bound.

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use dashmap::mapref::one::RefMut;

/// Default bound on keys per store.
pub(crate) const DEFAULT_MAX_KEYS: usize = 1_000_000;

/// A sharded map (dashmap: one `RwLock` per shard) of per-key state.
///
/// Idle keys (back at full capacity, so forgetting them changes nothing) are
/// swept when a *new* key arrives and at least `sweep_every_us` passed since
/// the last sweep, or when the map is full. A full map after a sweep rejects
/// new keys (`None`), so memory never exceeds `max_keys` entries.
pub(crate) struct Store<K, V, S> {
    map: DashMap<K, V, S>,
    max_keys: usize,
    sweep_every_us: u64,
    next_sweep: AtomicU64,
}

impl<K: Eq + Hash + Clone, V, S: BuildHasher + Clone> Store<K, V, S> {
    pub(crate) fn new(max_keys: usize, sweep_every_us: u64, hasher: S) -> Self {
        Self {
            map: DashMap::with_hasher(hasher),
            max_keys: max_keys.max(1),
            sweep_every_us: sweep_every_us.max(1),
            next_sweep: AtomicU64::new(0),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// Removes every idle entry. Cost: O(keys), each shard write-locked in turn.
    pub(crate) fn sweep(&self, now: u64, idle: impl Fn(&V, u64) -> bool) -> usize {
        let before = self.map.len();
        self.map.retain(|_, v| !idle(v, now));
        let removed = before.saturating_sub(self.map.len());
        if removed > 0 {
            tracing::debug!(
                removed,
                left = self.map.len(),
                "rate-limit store swept idle keys"
            );
        }
        removed
    }

    /// The entry for `key`, created with `init` if absent. `None` when the map
    /// is full of active keys. The guard write-locks one shard: do not call
    /// into the same store while holding it.
    #[inline]
    pub(crate) fn entry(
        &self,
        key: &K,
        now: u64,
        init: impl FnOnce() -> V,
        idle: impl Fn(&V, u64) -> bool,
    ) -> Option<RefMut<'_, K, V>> {
        if let Some(e) = self.map.get_mut(key) {
            return Some(e);
        }
        self.slow_entry(key, now, init, idle)
    }

    #[cold]
    fn slow_entry(
        &self,
        key: &K,
        now: u64,
        init: impl FnOnce() -> V,
        idle: impl Fn(&V, u64) -> bool,
    ) -> Option<RefMut<'_, K, V>> {
        let due = self.next_sweep.load(Ordering::Relaxed);
        if now >= due
            && self
                .next_sweep
                .compare_exchange(
                    due,
                    now + self.sweep_every_us,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
            && due != 0
        {
            self.sweep(now, &idle);
        }
        if self.map.len() >= self.max_keys {
            self.sweep(now, &idle);
            if self.map.len() >= self.max_keys {
                tracing::warn!(
                    max_keys = self.max_keys,
                    "rate-limit store full; new key rejected"
                );
                return None;
            }
        }
        Some(self.map.entry(key.clone()).or_insert_with(init))
    }

    /// Read access without creating the key.
    pub(crate) fn get_mut(&self, key: &K) -> Option<RefMut<'_, K, V>> {
        self.map.get_mut(key)
    }
}

/// Hasher for keys that already are uniformly distributed 64-bit values
/// (SHA-256 prefixes): passes them through, mixing anything else.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

pub(crate) type IdBuild = std::hash::BuildHasherDefault<IdHasher>;
