//! Two-level cache: a bounded in-process L1 in front of a shared Redis L2,
//! with the Redis wire format of the Python services.
//!
//! ```
//! use finsight_cache::{Cache, CacheConfig};
//!
//! #[derive(Clone, serde::Serialize, serde::Deserialize)]
//! struct Quote {
//!     symbol: String,
//!     price: f64,
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), finsight_cache::Error> {
//! // The Python services' `trading_data` type: prefix `trade:`, 60 s, refresh-ahead.
//! let quotes: Cache<Quote> = Cache::in_memory(CacheConfig::trading_data()).await?;
//!
//! // Read-through: concurrent misses of one key run the loader once.
//! let q = quotes
//!     .get_or_load("AAPL", || async {
//!         // read the source of truth here
//!         Ok::<_, std::io::Error>(Some(Quote { symbol: "AAPL".into(), price: 187.25 }))
//!     })
//!     .await?;
//! assert_eq!(q.map(|q| q.price), Some(187.25));
//!
//! quotes.set("MSFT", &Quote { symbol: "MSFT".into(), price: 411.0 }).await?;
//! assert!(quotes.get("MSFT").await?.is_some());
//! println!("L1 hit rate: {:.2}", quotes.stats().l1.hit_rate());
//! # Ok(()) }
//! ```
//!
//! With Redis as L2 (feature `redis`), the same cache is shared with every
//! other instance, Rust or Python:
//!
//! ```no_run
//! # #[cfg(not(feature = "redis"))]
//! # fn main() {}
//! # #[cfg(feature = "redis")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), finsight_cache::Error> {
//! use finsight_cache::redis::RedisOptions;
//! use finsight_cache::{Cache, CacheConfig};
//!
//! let sessions: Cache<serde_json::Value> = Cache::builder(CacheConfig::user_session())
//!     .redis(RedisOptions::new("redis://127.0.0.1:6379")?)
//!     .build()
//!     .await?;
//! sessions.set("u42", &serde_json::json!({"user_id": 42})).await?; // SET session:u42 … PX 1800000
//! # Ok(()) }
//! ```
//!
//! # Overview
//!
//! One [`Cache<V>`] per value type and [`CacheConfig`] (prefix, TTL, layers,
//! compression, refresh policy; serde data, with the Python services'
//! presets: [`CacheConfig::user_session`], [`CacheConfig::feature_flags`],
//! [`CacheConfig::api_response`], [`CacheConfig::trading_data`]).
//!
//! | operation | what it does | cost |
//! |---|---|---|
//! | [`Cache::get`] | fresh L1 entry, else Redis (value + PTTL in one `EVALSHA`), copied into L1 for ≤ the PTTL left | L1 hit: a moka lookup + a clone; L2: one round trip + JSON decode |
//! | [`Cache::set`] | write-through: `SET prefix+key json PX ttl`, then L1 | one round trip |
//! | [`Cache::delete`] | L1 + `UNLINK`; other instances evict through the invalidation channel | one round trip |
//! | [`Cache::invalidate_pattern`] | L1 predicate pass + `SCAN MATCH` + `UNLINK` (never `KEYS`) | keys/500 round trips |
//! | [`Cache::get_or_load`] | read-through with single-flight, negative caching, refresh-ahead, XFetch early refresh, stale-while-revalidate, stale-if-error, optional Redis lease | as `get`, plus the loader on a miss |
//!
//! # Consistency
//!
//! * **No stale fills.** Every fill of L1 (a load, a background refresh, a
//!   copy of an L2 hit) takes a generation token before reading its source
//!   and is dropped when its key was invalidated meanwhile (checked before
//!   and after the insert). A loaded value is written to Redis with `SET NX`,
//!   so a newer write by someone else wins; a refresh writes only if its key
//!   was not invalidated while it ran.
//! * **Cross-instance invalidation** ([`redis::Invalidation`]): by default
//!   Redis client tracking in broadcast mode on the type's prefix, redirected
//!   (RESP2) to a pub/sub connection on `__redis__:invalidate`, so writes by
//!   *any* client — the Python services included — evict L1 (measured:
//!   ~0.2 ms from the write to the eviction on localhost). Falls back to
//!   explicit pub/sub when the server refuses tracking: the listener sends
//!   `CLIENT TRACKING ON …` on every (re)connection, and any error reply (an
//!   ACL user without `client|tracking`, Redis < 6, a proxy without the
//!   command) makes it subscribe to the pub/sub channel instead, until the
//!   next reconnection; `Cache::invalidation_status` tells which is active
//!   (`tests/redis.rs`, `tracking_refused_by_redis_falls_back_to_pubsub`,
//!   runs it with such an ACL user). This instance's own
//!   writes go through the tracking connection with `NOLOOP`, so they do not
//!   evict its own fresh copy (pub/sub messages carry a source id instead).
//! * **Lost invalidations.** Both invalidation connections are pinged every
//!   heartbeat. While the channel is down, L1 keeps serving (bounded by
//!   `l1_ttl` / `ttl`) so a Redis outage does not take the service down;
//!   once resubscribed, L1 is flushed, because messages may have been lost.
//!
//! # Faults
//!
//! Every Redis call is bounded by [`CacheConfig::l2_timeout`]. Reads never
//! fail because of Redis: errors are counted ([`LayerStats::errors`] of
//! `l2`), logged with `tracing`, and the read falls back to L1 (a stale
//! entry within `stale_if_error`), or the loader. Writes report the failure
//! ([`Error::Backend`] / [`Error::Timeout`]). Reconnection is automatic.
//!
//! # Memory bounds
//!
//! * L1: [`Capacity::Entries`] or [`Capacity::Bytes`] (key + JSON length), evicted by moka's TinyLFU.
//!   An entry is the value plus 24 bytes of metadata.
//! * Loads in flight: one entry per key being loaded (at most the number of
//!   concurrent callers); a load whose every caller was cancelled is dropped
//!   with the last of them.
//! * Generation counters: 1 024 stripes (8 KiB) per cache, whatever the number of keys.
//! * Hit counters: 65 cache lines (4 KiB) per cache, one per thread for the
//!   first 64 threads of the process, shared by the others.
//! * Gzip bodies from Redis are decompressed up to 64 MiB ([`redis::MAX_DECOMPRESSED_BYTES`]).
//!
//! # Lifetime
//!
//! Dropping the last clone of a [`Cache`] stops everything it runs in the
//! background, at once and without waiting for a heartbeat: the
//! invalidation listener ends and closes its tracking and pub/sub
//! connections, background refreshes are cancelled (their loaders'
//! futures dropped; a lease they hold expires by itself), and the data
//! connection closes with its last user (a manager given with
//! `RedisOptions::connection_manager` stays open for its other owners). An L1-only cache runs no
//! task outside refreshes. `tests/lifecycle.rs` checks it against Redis
//! (`CLIENT LIST`, tokio's task count).
//!
//! # Runtime
//!
//! The cache runs on tokio. With Redis, calls use `tokio::time::timeout`,
//! so the runtime needs its time driver (`enable_all()` / `#[tokio::main]`);
//! background refreshes are `tokio::spawn`ed.
//!
//! # Time and randomness
//!
//! Freshness, refresh and stale windows are measured on
//! `tokio::time::Instant`, and moka's per-entry expiry is set to the same
//! spans. With the default [`Clock::System`] and a type without stale
//! windows, refresh-ahead or early refresh, an entry is fresh exactly while
//! moka returns it, so an L1 hit reads no clock of its own (a clock read
//! costs 20-140 ns depending on the machine — as much as half of moka's
//! `get`). Tests on tokio's paused clock
//! (`#[tokio::test(start_paused = true)]`, `tokio::time::advance`) build the
//! cache with [`CacheBuilder::clock`]`(`[`Clock::Tokio`]`)`: every hit then
//! checks tokio's clock. Jitter and early refresh draw from a seeded
//! generator: [`CacheBuilder::seed`].
//!
//! # Why moka for L1
//!
//! moka gives per-entry expiry (its `Expiry` trait: the entry's own span,
//! including stale windows), an eviction listener (the eviction counter),
//! predicate invalidation (the pattern pass) and a weigher (byte bounds).
//! quick_cache is faster on raw reads but has no expiry; we would have to
//! hand-write expiry and the pattern pass on top. `BENCHMARKS.md`
//! (`cache/l1_hit`) shows both peers next to this crate's `get`.
//!
//! # Feature flags
//!
//! | feature | what it adds | default |
//! |---|---|---|
//! | `redis` | Redis L2 (redis-rs 1.8, `ConnectionManager`, tokio), gzip (flate2), cross-instance invalidation, lease | no |
//! | `full` | everything (docs.rs, CI) | no |
//!
//! Without features the crate is a typed in-memory cache with the same API.
//!
//! # Python compatibility
//!
//! In Redis a value is exactly `json.dumps(v)` in UTF-8, or its gzip when the
//! type is compressed, under `prefix + key`, with the TTL set with the value.
//! No envelope and no metadata: the freshness data lives in L1 and in Redis'
//! own TTL. A Python `redis` client reads what Rust wrote and the reverse
//! (`tests/python_compat.rs`). Negative entries are never written to Redis.
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(attr(deny(warnings))))]

mod cache;
mod config;
mod error;
mod glob;
mod l1;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
mod stats;

pub use cache::{Cache, CacheBuilder, Clock, Value};
pub use config::{CacheConfig, Capacity, Layers, MAX_DURATION};
pub use error::{BoxError, Error, Result};
pub use stats::{LayerStats, Stats};

/// A random `u64` from the standard library's randomly keyed hasher (seeds
/// and lease tokens; not for cryptography).
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x9e37_79b9_7f4a_7c15);
    h.finish()
}
