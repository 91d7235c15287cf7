//! One Redis `ConnectionManager` for the cache, the rate limiter and flags
//! (feature `shared-redis`).
//!
//! [`SharedRedis`] creates one multiplexed, auto-reconnecting
//! `redis::aio::ConnectionManager` and hands clones of it to each crate's
//! Redis backend, so their data commands share one TCP connection instead of
//! one per component:
//!
//! | Component | Built by | Data commands on the shared connection | Dedicated connections it keeps |
//! |---|---|---|---|
//! | `finsight_cache` L2 | [`SharedRedis::cache_options`] | `GET`/`SET`/`DEL`, fetch and lease scripts, `SCAN` | with `Invalidation::Tracking`/`PubSub`: the tracking and pub/sub connections (per-connection state); the instance's own writes then go through the tracking connection (`NOLOOP`) |
//! | `finsight_ratelimit` | [`SharedRedis::rate_limit_backend`] | every check (`EVALSHA`) | none |
//! | `finsight_flags` sticky store | [`SharedRedis::sticky_store`] | preload `MGET`, write-behind `SET … EX … NX` (first assignment kept; a stale one replaced with `SET`) | none |
//! | `finsight_flags` flag source | [`SharedRedis::flag_source`] | `HGETALL`, `HSET`, `HDEL`, `PUBLISH` | the `watch` pub/sub listener |
//!
//! A subscribed or tracking connection cannot carry other commands, which is
//! why those stay dedicated.
//!
//! Cost: the manager is lazy (no I/O until the first command); cloning it is
//! an `Arc` clone. Every component keeps its own per-call timeout; the shared
//! manager's connection and response timeouts ([`SharedRedis::new`]) are the
//! outer bound.

use std::fmt;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Why [`SharedRedis::new`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SharedRedisError {
    /// The URL does not parse, or the manager cannot be created for it.
    #[error("Redis URL `{url}` cannot be used for a shared connection: {source}")]
    Config {
        /// The URL as given.
        url: String,
        /// The Redis client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// One Redis `ConnectionManager` shared by the FinSight crates' Redis
/// backends. Cloning shares it.
#[derive(Clone)]
pub struct SharedRedis {
    url: String,
    conn: ConnectionManager,
}

impl fmt::Debug for SharedRedis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedRedis").finish_non_exhaustive()
    }
}

impl SharedRedis {
    /// A lazy manager for the Redis at `url` (`redis://[user:pass@]host:port/db`)
    /// with 1 s connection and response timeouts, one retry per reconnect
    /// and at most 500 ms between reconnect attempts. No I/O: it connects on
    /// first use, so it can be created while Redis is down (the components
    /// then fall back as each documents). Needs a tokio runtime when first used.
    ///
    /// # Errors
    /// [`SharedRedisError::Config`] when the URL does not parse.
    pub fn new(url: &str) -> Result<Self, SharedRedisError> {
        Self::with_timeout(url, Duration::from_secs(1))
    }

    /// As [`new`](Self::new), with `timeout` as the connection and response
    /// timeout of the shared connection.
    ///
    /// # Errors
    /// [`SharedRedisError::Config`] when the URL does not parse.
    pub fn with_timeout(url: &str, timeout: Duration) -> Result<Self, SharedRedisError> {
        let err = |e: redis::RedisError| SharedRedisError::Config {
            url: url.to_owned(),
            source: Box::new(e),
        };
        let client = redis::Client::open(url).map_err(err)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(err)?;
        Ok(Self {
            url: url.to_owned(),
            conn,
        })
    }

    /// A clone of the shared manager, for your own commands. Cost: an `Arc` clone.
    #[must_use]
    pub fn connection_manager(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Cache options on the shared manager
    /// (`RedisOptions::new(url)?.connection_manager(..)`); chain the usual
    /// options (`invalidation`, `heartbeat`, …) and pass them to
    /// `CacheBuilder::redis`. No I/O.
    ///
    /// # Errors
    /// `finsight_cache::Error::Config` when the URL does not parse (it parsed here already).
    pub fn cache_options(&self) -> finsight_cache::Result<finsight_cache::redis::RedisOptions> {
        Ok(finsight_cache::redis::RedisOptions::new(&self.url)?
            .connection_manager(self.conn.clone()))
    }

    /// A rate-limiter backend on the shared manager
    /// (`RedisBackend::from_connection_manager`); `cfg`'s URL is not used.
    /// One round trip (`SCRIPT LOAD`), bounded by `cfg`'s timeout (at least 1 s).
    ///
    /// # Errors
    /// `finsight_ratelimit::Error::Backend` / `Timeout` when Redis cannot be reached.
    pub async fn rate_limit_backend(
        &self,
        cfg: finsight_ratelimit::RedisConfig,
    ) -> finsight_ratelimit::Result<finsight_ratelimit::RedisBackend> {
        finsight_ratelimit::RedisBackend::from_connection_manager(self.conn.clone(), cfg).await
    }

    /// A sticky-store builder on the shared manager; chain `prefix`, `ttl`, …
    /// and `build()`. No I/O.
    pub fn sticky_store(&self) -> finsight_flags::redis::RedisStickyStoreBuilder {
        finsight_flags::redis::RedisStickyStore::builder(self.url.clone())
            .connection_manager(self.conn.clone())
    }

    /// A flag source on the shared manager; its `watch` listener opens a
    /// dedicated pub/sub connection to the same URL. No I/O.
    ///
    /// # Errors
    /// `finsight_flags::Error::Config` when the URL does not parse (it parsed here already).
    pub fn flag_source(
        &self,
    ) -> Result<finsight_flags::redis::RedisFlagSource, finsight_flags::Error> {
        finsight_flags::redis::RedisFlagSource::from_connection_manager(
            &self.url,
            self.conn.clone(),
        )
    }
}
