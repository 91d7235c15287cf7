//! [`BreakerRegistry`]: one breaker per downstream name or key, bounded.

use std::fmt;
use std::time::Duration;

use moka::sync::Cache;

use crate::breaker::{CircuitBreaker, CircuitBreakerBuilder, Metrics};
use crate::error::Error;

/// One [`CircuitBreaker`] per key (a downstream name, a data provider, a
/// symbol, an endpoint), created on first use from a template builder.
///
/// Memory is bounded: at most `max_breakers` breakers are kept (least
/// recently used go first) and a breaker unused for `idle_timeout` is
/// dropped, so per-key state cannot grow without limit. A new key is always
/// admitted, evicting the least recently used breaker when the registry is
/// full (strict LRU, not moka's default TinyLFU, which may refuse a new key
/// in favour of frequently used ones and would leave that key with a fresh,
/// unstored breaker on every lookup, one that could never trip). A dropped breaker's
/// state is forgotten; callers still holding a clone keep using it. Backed
/// by [`moka::sync::Cache`]: a lookup of an existing key is a concurrent
/// hash-map read and does not allocate; the first lookup of a key allocates
/// the key and the breaker. Eviction uses moka's own clock, not the
/// breakers' [`Clock`](crate::Clock).
#[derive(Clone)]
pub struct BreakerRegistry {
    template: CircuitBreakerBuilder,
    cache: Cache<String, CircuitBreaker>,
    max: u64,
}

impl fmt::Debug for BreakerRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerRegistry")
            .field("max_breakers", &self.max)
            .field("len", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

/// Builds a [`BreakerRegistry`]. Defaults: 10 000 breakers, 10 minutes idle.
#[derive(Debug, Clone)]
#[must_use = "call .build() to obtain a registry"]
pub struct BreakerRegistryBuilder {
    template: CircuitBreakerBuilder,
    max: u64,
    idle: Duration,
}

impl BreakerRegistryBuilder {
    /// Most breakers kept at once (default 10 000).
    pub fn max_breakers(mut self, n: u64) -> Self {
        self.max = n;
        self
    }

    /// A breaker not used for this long is dropped (default 10 minutes).
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle = d;
        self
    }

    /// Validates the template and the bounds.
    ///
    /// # Errors
    /// The template's own [`Error::InvalidConfig`], or a zero bound.
    pub fn build(self) -> Result<BreakerRegistry, Error> {
        if self.max == 0 {
            return Err(Error::config("max_breakers", "must be at least 1"));
        }
        if self.idle.is_zero() {
            return Err(Error::config("idle_timeout", "must be non-zero"));
        }
        // Validate once; later breakers reuse the validated settings.
        self.template.clone().build()?;
        Ok(BreakerRegistry {
            template: self.template,
            cache: Cache::builder()
                .max_capacity(self.max)
                // Strict LRU: every new key is admitted (TinyLFU may reject
                // it, and a rejected key's breaker would be rebuilt closed
                // on every lookup).
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .time_to_idle(self.idle)
                .build(),
            max: self.max,
        })
    }
}

impl BreakerRegistry {
    /// A registry whose breakers are built like `template` (its name is
    /// replaced by the key).
    pub fn builder(template: CircuitBreakerBuilder) -> BreakerRegistryBuilder {
        BreakerRegistryBuilder {
            template,
            max: 10_000,
            idle: Duration::from_secs(600),
        }
    }

    /// The breaker for `key`, created on first use.
    pub fn get(&self, key: &str) -> CircuitBreaker {
        self.cache
            .get_with_by_ref(key, || self.template.named(key).build_validated())
    }

    /// The breaker for `key` if it exists (does not create one).
    pub fn get_existing(&self, key: &str) -> Option<CircuitBreaker> {
        self.cache.get(key)
    }

    /// Forgets `key`'s breaker.
    pub fn remove(&self, key: &str) {
        self.cache.invalidate(key);
    }

    /// Breakers currently kept (approximate until pending evictions run).
    pub fn len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    /// Whether no breaker is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The metrics of every kept breaker (allocates a `Vec`), sorted by name.
    pub fn metrics(&self) -> Vec<Metrics> {
        let mut v: Vec<Metrics> = self.cache.iter().map(|(_, b)| b.metrics()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Every kept breaker (clones), sorted by name.
    pub fn breakers(&self) -> Vec<CircuitBreaker> {
        let mut v: Vec<CircuitBreaker> = self.cache.iter().map(|(_, b)| b).collect();
        v.sort_by(|a, b| a.name().cmp(b.name()));
        v
    }
}
