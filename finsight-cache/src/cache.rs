//! The typed two-level cache.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{CacheConfig, Capacity};
use crate::error::{BoxError, Error, Result, SharedError};
use crate::glob;
use crate::l1::{Entry, EntryExpiry, Generations, Stamp, TimeBase, Token, micros_u32};
use crate::stats::{Counters, Stats, inc};

type FlightResult<V> = std::result::Result<Option<V>, Arc<BoxError>>;
type Flight<V> = Shared<BoxFuture<'static, FlightResult<V>>>;

/// Which clock decides whether an L1 entry is fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Clock {
    /// Real time (the default). When the type has no stale window, no
    /// refresh-ahead and no early refresh, an entry is fresh exactly as long
    /// as moka keeps it (its per-entry expiry is set to the fresh span), so
    /// a hit reads no clock at all; otherwise a hit reads
    /// `tokio::time::Instant::now()` once. Negative entries likewise, unless
    /// early refresh is on.
    #[default]
    System,
    /// `tokio::time::Instant` on every hit, so tests on tokio's paused clock
    /// (`start_paused`, `tokio::time::advance`) see entries expire, refresh
    /// and go stale. Costs one clock read per hit.
    Tokio,
}

/// What a value type needs: JSON both ways (the wire format), cheap enough to
/// clone (a hit returns a clone; wrap large values in `Arc`), shareable.
pub trait Value: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> Value for T {}

/// A typed cache for one configuration ([`CacheConfig`]): L1 in process,
/// optionally Redis as L2 (feature `redis`).
///
/// Cloning is cheap (two `Arc`s); clones share layers and stats.
///
/// # Lifetime
/// Dropping the last clone stops everything the cache runs in the
/// background, at once: the invalidation listener closes its Redis
/// connections, background refreshes are cancelled (their loader futures
/// dropped; a lease they hold expires by itself), and loads nobody waits
/// for any more are dropped. The data connection closes with the last
/// reference to it (a shared `ConnectionManager` stays open for its other
/// owners).
///
/// # Consistency
/// * `set` / `delete` write through: Redis first, then L1.
/// * Every fill of L1 (a load, a refresh, a copy of an L2 hit) takes a
///   generation token before it reads its source and is dropped if its key
///   was invalidated meanwhile (locally or by a message from Redis), so an
///   invalidation is never undone by a slower fill.
/// * An L2 hit is kept in L1 for `min(l1_ttl, PTTL left in Redis)`.
pub struct Cache<V: Value> {
    inner: Arc<Inner<V>>,
    /// Held by the handles only (never by background tasks): its drop stops them.
    _life: Arc<Lifeline<V>>,
}

impl<V: Value> Clone for Cache<V> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            _life: Arc::clone(&self._life),
        }
    }
}

/// Dropped with the last [`Cache`] handle: closes the stop channel (the
/// listener and refresh tasks end at once) and drops the loads in flight,
/// whose futures hold the cache's `Arc<Inner>`.
struct Lifeline<V: Value> {
    _stop: watch::Sender<()>,
    inner: Weak<Inner<V>>,
}

impl<V: Value> Drop for Lifeline<V> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            // Dropped outside the lock: a loader future's drop may run user code.
            let flights = std::mem::take(&mut *inner.inflight.lock());
            drop(flights);
            tracing::debug!(cache = %inner.cfg.name, "last handle dropped; background tasks stopped");
        }
    }
}

/// One load in flight: its id (a later flight of the same key has another),
/// the shared future, and how many callers are waiting for it.
struct FlightSlot<V> {
    id: u64,
    flight: Flight<V>,
    waiters: usize,
}

/// A caller's share of a flight. Dropped after the flight finished
/// (`done`), it removes the slot; dropped before (the caller was
/// cancelled), it leaves, and the last one to leave removes the slot, so
/// the load is dropped rather than kept in the map forever.
struct Waiter<'a, V: Value> {
    inner: &'a Inner<V>,
    key: &'a str,
    id: u64,
    done: bool,
}

impl<V: Value> Drop for Waiter<'_, V> {
    fn drop(&mut self) {
        let removed = {
            let mut map = self.inner.inflight.lock();
            match map.get_mut(self.key) {
                Some(slot) if slot.id == self.id => {
                    slot.waiters = slot.waiters.saturating_sub(1);
                    if self.done || slot.waiters == 0 {
                        map.remove(self.key)
                    } else {
                        None
                    }
                }
                _ => None,
            }
        };
        drop(removed);
    }
}

impl<V: Value> std::fmt::Debug for Cache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("name", &self.inner.cfg.name)
            .field("prefix", &self.inner.cfg.prefix)
            .field("l2", &self.has_l2())
            .finish()
    }
}

pub(crate) struct Inner<V: Value> {
    pub(crate) cfg: CacheConfig,
    l1: Option<moka::future::Cache<String, Entry<V>>>,
    gens: Generations,
    inflight: Mutex<HashMap<String, FlightSlot<V>>>,
    next_flight: AtomicU64,
    /// Closed when the last handle is dropped ([`Lifeline`]).
    pub(crate) stop: watch::Receiver<()>,
    pub(crate) counters: Arc<Counters>,
    rng: Mutex<SmallRng>,
    /// `Clock::System` and no stale window, refresh trigger nor early
    /// refresh for values: a value entry is fresh exactly while moka returns it.
    fast_values: bool,
    /// The same for negative entries (no stale window nor refresh trigger).
    fast_negatives: bool,
    /// `refresh_ahead × ttl`: a value is refreshed once its remaining TTL
    /// falls under this (`None`: no refresh-ahead).
    refresh_threshold: Option<Duration>,
    /// Origin of the entries' [`Stamp`]s.
    time: TimeBase,
    #[cfg(feature = "redis")]
    pub(crate) l2: Option<crate::redis::L2>,
}

/// Builds a [`Cache`]; from [`Cache::builder`].
#[must_use]
pub struct CacheBuilder<V: Value> {
    cfg: CacheConfig,
    seed: Option<u64>,
    clock: Clock,
    #[cfg(feature = "redis")]
    redis: Option<crate::redis::RedisOptions>,
    _v: PhantomData<fn() -> V>,
}

impl<V: Value> std::fmt::Debug for CacheBuilder<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl<V: Value> CacheBuilder<V> {
    /// Chooses the clock that decides freshness (default [`Clock::System`];
    /// tests on tokio's paused clock use [`Clock::Tokio`]).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Seeds the random source of TTL jitter and early refresh (tests).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Uses Redis as L2 (and for cross-instance invalidation).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis(mut self, options: crate::redis::RedisOptions) -> Self {
        self.redis = Some(options);
        self
    }

    /// Builds the cache. With Redis, connects lazily (the cache works, L1
    /// only, while Redis is down) and waits up to the options'
    /// `connect_timeout` for the invalidation subscription to be active.
    ///
    /// # Errors
    /// [`Error::Config`] for an out-of-range configuration or a Redis URL
    /// that does not parse.
    pub async fn build(self) -> Result<Cache<V>> {
        self.cfg.validate()?;
        let counters = Arc::new(Counters::default());
        let time = TimeBase::new();
        let stale = self.cfg.stale_while_revalidate.max(self.cfg.stale_if_error);
        let l1 = self.cfg.uses_l1().then(|| {
            let evictions = Arc::clone(&counters);
            let builder = moka::future::Cache::builder()
                .name(&self.cfg.name)
                .expire_after(EntryExpiry { time, stale })
                .support_invalidation_closures()
                .eviction_listener(move |_k, _v, cause| {
                    if cause.was_evicted() {
                        inc(&evictions.l1_evictions);
                    }
                });
            match self.cfg.capacity {
                Capacity::Entries(n) => builder.max_capacity(n).build(),
                Capacity::Bytes(n) => builder
                    .max_capacity(n)
                    .weigher(|_k: &String, v: &Entry<V>| v.weight)
                    .build(),
            }
        });
        let seed = self.seed.unwrap_or_else(crate::random_u64);
        #[cfg(feature = "redis")]
        let l2 = match (&self.redis, self.cfg.uses_l2()) {
            (Some(opts), true) => Some(crate::redis::L2::new(opts, &self.cfg, &counters)?),
            _ => None,
        };
        let (stop_tx, stop) = watch::channel(());
        let fast_values = self.clock == Clock::System
            && stale.is_zero()
            && self.cfg.refresh_ahead.is_none()
            && self.cfg.early_refresh_beta.is_none();
        let fast_negatives = self.clock == Clock::System && self.cfg.early_refresh_beta.is_none();
        let refresh_threshold = self.cfg.refresh_ahead.map(|t| self.cfg.ttl.mul_f64(t));
        let inner = Arc::new(Inner {
            cfg: self.cfg,
            l1,
            gens: Generations::new(),
            inflight: Mutex::new(HashMap::new()),
            next_flight: AtomicU64::new(0),
            stop,
            counters,
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
            fast_values,
            fast_negatives,
            refresh_threshold,
            time,
            #[cfg(feature = "redis")]
            l2,
        });
        let life = Arc::new(Lifeline {
            _stop: stop_tx,
            inner: Arc::downgrade(&inner),
        });
        #[cfg(feature = "redis")]
        if let (Some(opts), true) = (&self.redis, inner.l1.is_some()) {
            crate::redis::invalidation::start(&inner, opts).await?;
        }
        Ok(Cache { inner, _life: life })
    }
}

impl<V: Value> Cache<V> {
    /// A builder for this configuration.
    pub fn builder(config: CacheConfig) -> CacheBuilder<V> {
        CacheBuilder {
            cfg: config,
            seed: None,
            clock: Clock::System,
            #[cfg(feature = "redis")]
            redis: None,
            _v: PhantomData,
        }
    }

    /// An in-memory (L1 only) cache for this configuration.
    ///
    /// # Errors
    /// [`Error::Config`] for an out-of-range configuration.
    pub async fn in_memory(config: CacheConfig) -> Result<Self> {
        Self::builder(config).build().await
    }

    /// The configuration.
    pub fn config(&self) -> &CacheConfig {
        &self.inner.cfg
    }

    /// A snapshot of the counters (a handful of relaxed atomic loads).
    pub fn stats(&self) -> Stats {
        self.inner.counters.snapshot()
    }

    fn has_l2(&self) -> bool {
        #[cfg(feature = "redis")]
        {
            self.inner.l2.is_some()
        }
        #[cfg(not(feature = "redis"))]
        {
            false
        }
    }

    /// Reads `key`: a fresh L1 entry, else Redis (one round trip fetching the
    /// value and its PTTL; the value is copied into L1 for at most that long).
    ///
    /// Cost of an L1 hit: one moka lookup (which clones the entry: the value
    /// plus 24 bytes), no allocation besides the value's clone, no lock, no
    /// `Arc` clone, no clock read when the type has no stale window nor
    /// refresh policy under [`Clock::System`] (one otherwise), and one
    /// unlocked counter increment on a cache line of the calling thread.
    /// Measured within ~1.1× of a raw moka `get` (`cache/l1_hit` in
    /// `BENCHMARKS.md`). Redis failures are counted and
    /// logged, never returned: the read then falls back to a stale L1 entry
    /// within `stale_if_error`, or `Ok(None)`.
    ///
    /// # Errors
    /// None today; the `Result` leaves room for strict modes.
    pub async fn get(&self, key: &str) -> Result<Option<V>> {
        let inner = &*self.inner;
        let stale = match &inner.l1 {
            Some(l1) => match l1.get(key).await {
                Some(e) if inner.is_fresh(&e) => return Ok(inner.hit(e)),
                found => {
                    inc(&inner.counters.l1_misses);
                    found
                }
            },
            None => None,
        };
        // Boxed, with the stale entry moved in: the L2 path's state (~1.4 KB)
        // stays out of this future, so an L1 hit moves no more than moka's own `get`.
        Box::pin(inner.get_from_l2(key, stale)).await
    }

    /// Stores `value` under `key` in Redis (`SET prefix+key json EX ttl`,
    /// TTL jittered) and then in L1. Cost: one JSON serialization (plus gzip
    /// when compressed) and one Redis round trip.
    ///
    /// # Errors
    /// [`Error::Serialize`] when the value has no JSON form; [`Error::Backend`]
    /// / [`Error::Timeout`] when Redis did not take the write (L1 then drops
    /// the key, so this instance does not serve a value Redis lacks).
    pub async fn set(&self, key: &str, value: &V) -> Result<()> {
        let inner = &self.inner;
        let ttl = inner.jittered_ttl();
        let json = inner
            .needs_json()
            .then(|| inner.to_json(key, value))
            .transpose()?;
        let token = inner.gens.bump(key);
        #[cfg(feature = "redis")]
        if let (Some(l2), Some(json)) = (&inner.l2, &json) {
            if let Err(e) = l2.store(key, json, ttl, false).await {
                inner.l1_remove(key).await;
                return Err(e);
            }
            l2.announce_key(key).await;
        }
        let weight = weight_of(key, json.as_deref());
        inner
            .fill_l1(key, Some(value.clone()), ttl, token, Duration::ZERO, weight)
            .await;
        Ok(())
    }

    /// Removes `key` from L1 and Redis (`UNLINK`); other instances drop it
    /// from their L1 through the invalidation channel.
    ///
    /// # Errors
    /// [`Error::Backend`] / [`Error::Timeout`] when Redis did not take the delete.
    pub async fn delete(&self, key: &str) -> Result<()> {
        let inner = &self.inner;
        inner.gens.bump(key);
        inner.l1_remove(key).await;
        #[cfg(feature = "redis")]
        if let Some(l2) = &inner.l2 {
            l2.delete(key).await?;
            l2.announce_key(key).await;
        }
        Ok(())
    }

    /// Removes every key matching the Redis glob `pattern` (matched against
    /// the key without prefix): an L1 predicate pass, then `SCAN MATCH
    /// prefix+pattern` + `UNLINK` in batches (never `KEYS`). Returns the
    /// number of Redis keys unlinked.
    ///
    /// Guarantee: every key that exists for the whole scan is removed. A key
    /// written while the scan runs may survive (that is `SCAN`'s contract);
    /// call again after such writers have finished if that matters. Fills in
    /// flight anywhere in this instance are dropped.
    ///
    /// Cost: O(keys in the database / 500) round trips.
    ///
    /// # Errors
    /// [`Error::Backend`] / [`Error::Timeout`] from Redis.
    pub async fn invalidate_pattern(&self, pattern: &str) -> Result<u64> {
        let inner = &self.inner;
        inner.invalidate_pattern_local(pattern);
        #[cfg(feature = "redis")]
        if let Some(l2) = &inner.l2 {
            let n = l2.scan_unlink(pattern).await?;
            l2.announce_pattern(pattern).await;
            return Ok(n);
        }
        Ok(0)
    }

    /// Read-through: the cached value, or `loader`'s.
    ///
    /// * Concurrent misses of one key in this process run `loader` once; the
    ///   others wait for its result (counted as coalesced waits).
    /// * On a miss, Redis is read first; with a `lease`, one instance loads
    ///   while the others poll Redis for its value (bounded by the lease).
    /// * `Ok(None)` from the loader is "not found": cached for `negative_ttl`
    ///   in L1 only (never in Redis). An `Err` is never cached.
    /// * Refresh-ahead / early refresh: a fresh hit whose remaining TTL is
    ///   under the threshold is served and reloaded in the background (one
    ///   refresh per key at a time).
    /// * Stale-while-revalidate: an expired value within the window is served
    ///   at once and reloaded in the background.
    /// * Stale-if-error: if the load fails, an expired value within the
    ///   window is served instead of the error.
    ///
    /// `loader` must read the source of truth (never this cache).
    ///
    /// Cancellation: a caller may drop this future at any time (e.g. under
    /// a `tokio::time::timeout`). The load goes on for the callers still
    /// waiting for it; when the last one is gone, the load (the loader's
    /// future) is dropped too, and the next caller starts a new one.
    ///
    /// # Errors
    /// [`Error::Load`] when the loader failed and no stale value could be served.
    pub async fn get_or_load<F, Fut, E>(&self, key: &str, loader: F) -> Result<Option<V>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let inner = &self.inner;
        let mut stale = None;
        let mut loader = Some(loader);
        if let Some(l1) = &inner.l1 {
            if let Some(e) = l1.get(key).await {
                if inner.is_fast(&e) {
                    return Ok(inner.hit(e));
                }
                let now = inner.time.now();
                if now < e.fresh_until {
                    if e.value.is_some()
                        && inner.should_refresh(&e, now)
                        && let Some(loader) = loader.take()
                    {
                        inner.spawn_refresh(key, loader);
                    }
                    return Ok(inner.hit(e));
                }
                if e.value.is_some() && now < e.fresh_until + inner.cfg.stale_while_revalidate {
                    inc(&inner.counters.l1_stale_served);
                    if let Some(loader) = loader.take() {
                        inner.spawn_refresh(key, loader);
                    }
                    return Ok(e.value);
                }
                stale = Some(e);
            }
            inc(&inner.counters.l1_misses);
        }
        let Some(loader) = loader else {
            return Ok(None);
        };
        let (id, flight, leader) = inner.join_or_lead(key, loader);
        if !leader {
            inc(&inner.counters.coalesced_waits);
        }
        let mut waiter = Waiter {
            inner,
            key,
            id,
            done: false,
        };
        let result = flight.await;
        waiter.done = true;
        drop(waiter);
        match result {
            Ok(v) => Ok(v),
            Err(source) => match inner.stale_if_error(stale.as_ref(), inner.time.now()) {
                Some(v) => Ok(Some(v)),
                None => Err(Error::Load {
                    cache: inner.cfg.name.clone(),
                    key: key.to_owned(),
                    source: Box::new(SharedError(source)),
                }),
            },
        }
    }

    /// Drops every L1 entry of this instance (Redis is untouched) and every
    /// fill in flight.
    pub fn clear_local(&self) {
        self.inner.flush_local();
    }

    /// Whether this instance's L1 holds a fresh entry (value or negative)
    /// for `key`, without touching Redis or the stats. One moka lookup.
    pub async fn contains_local(&self, key: &str) -> bool {
        let Some(l1) = &self.inner.l1 else {
            return false;
        };
        l1.get(key)
            .await
            .is_some_and(|e| self.inner.time.now() < e.fresh_until)
    }

    /// Runs moka's pending maintenance (evictions, expiry, counts) now
    /// instead of on a later write. Useful before reading
    /// [`Cache::l1_entry_count`]; costs O(pending writes).
    pub async fn run_pending_tasks(&self) {
        if let Some(l1) = &self.inner.l1 {
            l1.run_pending_tasks().await;
        }
    }

    /// Number of L1 entries (approximate: moka applies writes in batches).
    pub fn l1_entry_count(&self) -> u64 {
        self.inner.l1.as_ref().map_or(0, |l1| l1.entry_count())
    }

    /// Whether the cross-instance invalidation channel is active, and which
    /// transport it uses. `None` without Redis.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn invalidation_status(&self) -> Option<crate::redis::InvalidationStatus> {
        self.inner.l2.as_ref().map(|l2| l2.status())
    }
}

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
enum L2Read<V> {
    Hit(V),
    Miss,
    Failed,
}

fn weight_of(key: &str, json: Option<&[u8]>) -> u32 {
    u32::try_from(key.len() + json.map_or(0, <[u8]>::len)).unwrap_or(u32::MAX)
}

impl<V: Value> Inner<V> {
    /// Whether an L1 entry is fresh: without a clock read for a fast entry
    /// under [`Clock::System`] (moka's expiry already said so), else one.
    #[inline]
    fn is_fresh(&self, e: &Entry<V>) -> bool {
        self.is_fast(e) || self.time.now() < e.fresh_until
    }

    /// Whether `e` is fresh exactly while moka returns it (no clock read needed).
    #[inline]
    fn is_fast(&self, e: &Entry<V>) -> bool {
        if e.value.is_some() {
            self.fast_values
        } else {
            self.fast_negatives
        }
    }

    /// The L1 entry for `key` if it is still fresh (one moka lookup).
    async fn fresh_l1(&self, key: &str) -> Option<Entry<V>> {
        let e = self.l1.as_ref()?.get(key).await?;
        self.is_fresh(&e).then_some(e)
    }

    /// `get` past L1: Redis, else the stale entry within `stale_if_error`.
    async fn get_from_l2(&self, key: &str, stale: Option<Entry<V>>) -> Result<Option<V>> {
        let token = self.gens.token(key);
        match self.fill_from_l2(key, token, None).await {
            L2Read::Hit(v) => Ok(Some(v)),
            L2Read::Miss => Ok(None),
            L2Read::Failed => Ok(self.stale_if_error(stale.as_ref(), self.time.now())),
        }
    }

    fn hit(&self, e: Entry<V>) -> Option<V> {
        self.counters.l1_hits.record(e.value.is_some());
        e.value
    }

    fn stale_if_error(&self, stale: Option<&Entry<V>>, now: Stamp) -> Option<V> {
        let e = stale?;
        let v = e.value.as_ref()?;
        if now < e.fresh_until + self.cfg.stale_if_error {
            inc(&self.counters.l1_stale_served);
            tracing::debug!(cache = %self.cfg.name, "serving a stale value (stale-if-error)");
            Some(v.clone())
        } else {
            None
        }
    }

    fn needs_json(&self) -> bool {
        #[cfg(feature = "redis")]
        if self.l2.is_some() {
            return true;
        }
        matches!(self.cfg.capacity, Capacity::Bytes(_)) && self.l1.is_some()
    }

    fn to_json(&self, key: &str, value: &V) -> Result<Vec<u8>> {
        serde_json::to_vec(value).map_err(|source| Error::Serialize {
            cache: self.cfg.name.clone(),
            key: key.to_owned(),
            source,
        })
    }

    pub(crate) fn jittered_ttl(&self) -> Duration {
        let ttl = self.cfg.ttl;
        if self.cfg.jitter == 0.0 {
            return ttl;
        }
        let u: f64 = self.rng.lock().random_range(-1.0..=1.0);
        ttl.mul_f64((1.0 + u * self.cfg.jitter).max(0.0))
            .max(Duration::from_millis(1))
    }

    fn should_refresh(&self, e: &Entry<V>, now: Stamp) -> bool {
        if let Some(threshold) = self.refresh_threshold
            && now >= e.expires_at.saturating_sub(threshold)
        {
            return true;
        }
        if let Some(beta) = self.cfg.early_refresh_beta
            && e.delta_us != 0
        {
            let u: f64 = self.rng.lock().random_range(f64::MIN_POSITIVE..=1.0);
            // δ·β·(−ln u); a span too large to represent means "refresh now".
            return Duration::try_from_secs_f64(e.delta().as_secs_f64() * beta * -u.ln())
                .map_or(true, |ahead| now + ahead >= e.expires_at);
        }
        false
    }

    async fn l1_remove(&self, key: &str) {
        if let Some(l1) = &self.l1 {
            l1.invalidate(key).await;
        }
    }

    /// Stores an entry in L1 unless `token` died (an invalidation happened
    /// since the fill read its source). Checked after the insert too, so an
    /// invalidation racing the insert removes it.
    async fn fill_l1(
        &self,
        key: &str,
        value: Option<V>,
        remaining: Duration,
        token: Token,
        delta: Duration,
        weight: u32,
    ) {
        let Some(l1) = &self.l1 else { return };
        if !self.gens.is_valid(token) {
            inc(&self.counters.fills_dropped);
            tracing::debug!(cache = %self.cfg.name, key, "fill dropped: key invalidated meanwhile");
            return;
        }
        let now = self.time.now();
        let fresh = self.cfg.l1_ttl.map_or(remaining, |t| remaining.min(t));
        // moka's expiry (`EntryExpiry`) keeps it for `fresh` plus the stale window.
        let entry = Entry {
            value,
            fresh_until: now + fresh,
            expires_at: now + remaining,
            delta_us: micros_u32(delta),
            weight,
        };
        l1.insert(key.to_owned(), entry).await;
        if !self.gens.is_valid(token) {
            l1.invalidate(key).await;
            inc(&self.counters.fills_dropped);
            tracing::debug!(cache = %self.cfg.name, key, "fill removed: key invalidated during insert");
        }
    }

    /// Reads Redis (value + PTTL in one round trip) and copies a hit into L1.
    /// `min_remaining`: a hit with less TTL left counts as a miss (refreshes).
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    async fn fill_from_l2(
        &self,
        key: &str,
        token: Token,
        min_remaining: Option<Duration>,
    ) -> L2Read<V> {
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.l2 {
            return match l2.fetch(key).await {
                Err(e) => {
                    inc(&self.counters.l2_errors);
                    tracing::warn!(cache = %self.cfg.name, key, error = %e, "L2 read failed; serving from L1 / loader");
                    L2Read::Failed
                }
                Ok(None) => {
                    inc(&self.counters.l2_misses);
                    L2Read::Miss
                }
                Ok(Some((bytes, pttl))) => {
                    // Never longer in L1 than this type's longest TTL (a key
                    // another writer stored without or with a longer expiry).
                    let longest = self.cfg.ttl.mul_f64(1.0 + self.cfg.jitter);
                    let remaining = pttl.map_or(longest, |p| p.min(longest));
                    if min_remaining.is_some_and(|m| remaining <= m) {
                        return L2Read::Miss;
                    }
                    match l2.decode::<V>(key, &bytes) {
                        Err(e) => {
                            inc(&self.counters.l2_errors);
                            tracing::warn!(cache = %self.cfg.name, key, error = %e, "L2 value undecodable; treated as a miss");
                            L2Read::Failed
                        }
                        Ok(v) => {
                            inc(&self.counters.l2_hits);
                            let weight = weight_of(key, Some(&bytes));
                            self.fill_l1(
                                key,
                                Some(v.clone()),
                                remaining,
                                token,
                                Duration::ZERO,
                                weight,
                            )
                            .await;
                            L2Read::Hit(v)
                        }
                    }
                }
            };
        }
        L2Read::Miss
    }

    /// Joins the load of `key` in flight, or starts one; the caller counts
    /// as one waiter (pair with a [`Waiter`]). Returns whether it leads.
    fn join_or_lead<F, Fut, E>(self: &Arc<Self>, key: &str, loader: F) -> (u64, Flight<V>, bool)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let mut map = self.inflight.lock();
        if let Some(slot) = map.get_mut(key) {
            slot.waiters += 1;
            return (slot.id, slot.flight.clone(), false);
        }
        let (id, flight) = self.insert_flight(&mut map, key, loader, false);
        (id, flight, true)
    }

    fn insert_flight<F, Fut, E>(
        self: &Arc<Self>,
        map: &mut HashMap<String, FlightSlot<V>>,
        key: &str,
        loader: F,
        refresh: bool,
    ) -> (u64, Flight<V>)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let id = self.next_flight.fetch_add(1, Relaxed);
        let flight = Arc::clone(self)
            .load(key.to_owned(), loader, refresh)
            .boxed()
            .shared();
        map.insert(
            key.to_owned(),
            FlightSlot {
                id,
                flight: flight.clone(),
                waiters: 1,
            },
        );
        (id, flight)
    }

    /// Starts a background refresh of `key` unless a load of it is in
    /// flight. The task ends with the refresh, or at once when the last
    /// handle is dropped (the load is then dropped).
    fn spawn_refresh<F, Fut, E>(self: &Arc<Self>, key: &str, loader: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let (id, flight) = {
            let mut map = self.inflight.lock();
            if map.contains_key(key) {
                return;
            }
            self.insert_flight(&mut map, key, loader, true)
        };
        inc(&self.counters.refreshes);
        tracing::debug!(cache = %self.cfg.name, key, "background refresh");
        let inner = Arc::clone(self);
        let key = key.to_owned();
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            let mut waiter = Waiter {
                inner: &inner,
                key: &key,
                id,
                done: false,
            };
            tokio::select! {
                _ = flight => waiter.done = true,
                _ = stop.changed() => {}
            }
        });
    }

    /// The shared load: Redis first, then (optionally under a lease) the loader.
    fn load<F, Fut, E>(
        self: Arc<Self>,
        key: String,
        loader: F,
        refresh: bool,
    ) -> Pin<Box<dyn Future<Output = FlightResult<V>> + Send>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        Box::pin(async move {
            // A caller can miss L1 just before the previous flight's fill
            // lands and join only after that flight has finished; it then
            // leads a new flight. Such a flight serves the fresh fill instead
            // of loading again, so concurrent misses run the loader once.
            if !refresh && let Some(e) = self.fresh_l1(&key).await {
                return Ok(e.value);
            }
            let token = self.gens.token(&key);
            // A refresh accepts a Redis value only if another instance already
            // refreshed it (more TTL left than the refresh threshold).
            let min_remaining = refresh.then(|| {
                self.cfg
                    .refresh_ahead
                    .map_or(Duration::ZERO, |t| self.cfg.ttl.mul_f64(t))
            });
            if let L2Read::Hit(v) = self.fill_from_l2(&key, token, min_remaining).await {
                return Ok(Some(v));
            }
            #[cfg(feature = "redis")]
            let lease = match (&self.l2, self.cfg.lease) {
                (Some(l2), Some(d)) => match l2.acquire_lease(&key, d).await {
                    Ok(Some(lease)) => Some(lease),
                    Ok(None) => {
                        if let Some(v) = self.wait_for_leaseholder(&key, token, d).await {
                            return Ok(Some(v));
                        }
                        None
                    }
                    Err(e) => {
                        inc(&self.counters.l2_errors);
                        tracing::warn!(cache = %self.cfg.name, key, error = %e, "lease failed; loading without it");
                        None
                    }
                },
                _ => None,
            };
            inc(&self.counters.loads);
            let started = Instant::now();
            let loaded = loader().await;
            let delta = started.elapsed();
            let result = match loaded {
                Ok(Some(v)) => {
                    self.store_loaded(&key, &v, token, delta, !refresh).await;
                    Ok(Some(v))
                }
                Ok(None) => {
                    if let Some(nt) = self.cfg.negative_ttl {
                        self.fill_l1(&key, None, nt, token, delta, weight_of(&key, None))
                            .await;
                    }
                    Ok(None)
                }
                Err(e) => {
                    inc(&self.counters.load_errors);
                    let e: BoxError = e.into();
                    tracing::warn!(cache = %self.cfg.name, key, error = %e, refresh, "loader failed");
                    Err(Arc::new(e))
                }
            };
            #[cfg(feature = "redis")]
            if let (Some(l2), Some(lease)) = (&self.l2, lease) {
                l2.release_lease(lease).await;
            }
            result
        })
    }

    /// Writes a loaded value to Redis (`SET NX` for a miss, so a concurrent
    /// writer's newer value wins; plain `SET` for a refresh whose key was not
    /// invalidated meanwhile) and fills L1.
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    async fn store_loaded(
        &self,
        key: &str,
        v: &V,
        token: Token,
        delta: Duration,
        only_if_absent: bool,
    ) {
        let ttl = self.jittered_ttl();
        let json = if self.needs_json() {
            match self.to_json(key, v) {
                Ok(j) => Some(j),
                Err(e) => {
                    tracing::warn!(cache = %self.cfg.name, key, error = %e, "loaded value not cached");
                    return;
                }
            }
        } else {
            None
        };
        #[cfg(feature = "redis")]
        if let (Some(l2), Some(json)) = (&self.l2, &json) {
            if !self.gens.is_valid(token) {
                inc(&self.counters.fills_dropped);
                return;
            }
            match l2.store(key, json, ttl, only_if_absent).await {
                Ok(true) => {}
                Ok(false) => {
                    // Someone wrote the key while we loaded: theirs is newer.
                    inc(&self.counters.fills_dropped);
                    return;
                }
                Err(e) => {
                    inc(&self.counters.l2_errors);
                    tracing::warn!(cache = %self.cfg.name, key, error = %e, "L2 write of a loaded value failed");
                }
            }
        }
        let weight = weight_of(key, json.as_deref());
        self.fill_l1(key, Some(v.clone()), ttl, token, delta, weight)
            .await;
    }

    /// Another instance holds the lease: poll Redis for its value, up to
    /// 10 times over the lease's duration.
    #[cfg(feature = "redis")]
    async fn wait_for_leaseholder(&self, key: &str, token: Token, lease: Duration) -> Option<V> {
        let step = lease / 10;
        for _ in 0..10 {
            tokio::time::sleep(step).await;
            match self.fill_from_l2(key, token, None).await {
                L2Read::Hit(v) => return Some(v),
                L2Read::Failed => return None,
                L2Read::Miss => {}
            }
        }
        None
    }

    pub(crate) fn invalidate_pattern_local(&self, pattern: &str) {
        self.gens.bump_all();
        if let Some(l1) = &self.l1 {
            let p = pattern.as_bytes().to_vec();
            if let Err(e) = l1.invalidate_entries_if(move |k, _| glob::matches(&p, k.as_bytes())) {
                // Cannot happen: closures are enabled at build; be safe anyway.
                tracing::warn!(cache = %self.cfg.name, error = %e, "L1 pattern pass failed; flushing L1");
                l1.invalidate_all();
            }
        }
    }

    pub(crate) fn flush_local(&self) {
        self.gens.bump_all();
        if let Some(l1) = &self.l1 {
            l1.invalidate_all();
        }
    }

    /// An invalidation of `key` (without prefix) received from Redis.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) async fn invalidate_local(&self, key: &str) {
        self.gens.bump(key);
        self.l1_remove(key).await;
    }
}
