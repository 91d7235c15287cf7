//! Redis as L2: the wire format shared with the Python services, and
//! cross-instance invalidation.
//!
//! # Wire format (SPEC §3)
//! * key: `prefix + key`;
//! * value: the UTF-8 JSON of the value, or the gzip of that JSON when the
//!   type is compressed; nothing else (no envelope, no metadata);
//! * TTL: set with the value (`SET key value PX ttl`).
//!
//! A read accepts both plain and gzip bodies (gzip is recognised by its
//! magic bytes `1f 8b`, which JSON never starts with), so a reader with a
//! different `compress` setting than the writer still decodes the value.

pub(crate) mod invalidation;

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};

use crate::cache::Value;
use crate::config::CacheConfig;
use crate::error::{Error, Result};
use crate::glob;
use crate::stats::{Counters, inc};

/// Largest decompressed value accepted from Redis (guards against gzip bombs).
pub const MAX_DECOMPRESSED_BYTES: u64 = 64 * 1024 * 1024;

/// How other instances learn that a key changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Invalidation {
    /// Redis client tracking in broadcast mode on the type's prefix
    /// (`CLIENT TRACKING ON REDIRECT <id> BCAST PREFIX <prefix> NOLOOP`, RESP2
    /// redirect to a pub/sub connection on `__redis__:invalidate`): writes by
    /// *any* client, the Python services included, evict L1. Falls back to
    /// [`Invalidation::PubSub`] when the server refuses tracking: any error
    /// reply to `CLIENT TRACKING` on a (re)connection (an ACL user without
    /// `client|tracking`, Redis < 6, a proxy) subscribes to the pub/sub
    /// channel instead, until the next reconnection (logged as a warning;
    /// [`crate::Cache::invalidation_status`] says
    /// [`InvalidationStatus::PubSub`]).
    ///
    /// Mixed fleets: an instance in tracking mode does not publish, so an
    /// instance that fell back to pub/sub does not see its writes (staleness
    /// there is bounded by `l1_ttl`); the other direction works (tracking
    /// sees every write). Give every instance of a type the same Redis
    /// permissions.
    Tracking,
    /// Explicit messages on `finsight:cache:invalidate:<prefix>`, published by
    /// this crate's writes only (writes by other clients are not seen; L1
    /// staleness is then bounded by `l1_ttl`).
    PubSub,
    /// No cross-instance invalidation (staleness bounded by `l1_ttl`).
    Off,
}

/// State of the invalidation channel ([`crate::Cache::invalidation_status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidationStatus {
    /// Not (yet, or no longer) subscribed; reconnecting with backoff.
    Connecting,
    /// Subscribed through client tracking.
    Tracking,
    /// Subscribed to the pub/sub fallback channel.
    PubSub,
    /// Disabled by configuration.
    Off,
}

impl InvalidationStatus {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Tracking,
            2 => Self::PubSub,
            3 => Self::Off,
            _ => Self::Connecting,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            Self::Connecting => 0,
            Self::Tracking => 1,
            Self::PubSub => 2,
            Self::Off => 3,
        }
    }
}

/// A hook consulted before each of the cache's Redis data calls (for
/// instance a circuit breaker), set with [`RedisOptions::call_guard`].
///
/// [`admit`](Self::admit) runs before every call (`GET`+`PTTL` script,
/// `SET`, `UNLINK`, `SCAN`, lease `SET NX` and release, invalidation
/// `PUBLISH`). `None` skips Redis: the call fails with [`Error::Backend`]
/// and the cache does exactly what it does when Redis fails (a read falls
/// back to L1 / a miss / the loader and counts an L2 error, a write returns
/// the error). `Some(permit)` makes the call and then reports its outcome
/// on the permit (a Redis error or a timeout is a failure; a value that
/// does not decode is not a Redis failure, so it is reported as a success).
/// A permit dropped without a report (the caller's future was cancelled)
/// is the implementation's to treat as cancelled. Not consulted by the
/// invalidation channel's dedicated connections.
///
/// Cost: one `admit` per Redis call plus whatever the permit costs (a
/// `Box` allocation per call for a permit with state).
pub trait RedisCallGuard: Send + Sync + 'static {
    /// A permit for one Redis call, or `None` to skip Redis for this call.
    fn admit(&self) -> Option<Box<dyn RedisCallPermit>>;
}

/// Leave for one Redis call, from [`RedisCallGuard::admit`].
pub trait RedisCallPermit: Send + Sync {
    /// Reports how the call ended: `true` when Redis answered, `false` on a
    /// Redis error or a timeout.
    fn record(self: Box<Self>, ok: bool);
}

/// Where Redis is and how to use it; pass to [`crate::CacheBuilder::redis`].
#[derive(Debug, Clone)]
pub struct RedisOptions {
    client: redis::Client,
    invalidation: Invalidation,
    heartbeat: Duration,
    connect_timeout: Duration,
    shared: Option<ConnectionManager>,
    guard: Option<GuardSlot>,
}

#[derive(Clone)]
struct GuardSlot(Arc<dyn RedisCallGuard>);

impl std::fmt::Debug for GuardSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisCallGuard")
    }
}

impl RedisOptions {
    /// Options for the Redis at `url` (`redis://[user:pass@]host:port/db`).
    /// Nothing connects before the cache is built.
    ///
    /// # Errors
    /// [`Error::Config`] when the URL does not parse.
    pub fn new(url: &str) -> Result<Self> {
        let client = redis::Client::open(url).map_err(|e| Error::Config {
            cache: String::new(),
            message: format!("Redis URL `{url}` is invalid: {e}"),
        })?;
        Ok(Self {
            client,
            invalidation: Invalidation::Tracking,
            heartbeat: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(2),
            shared: None,
            guard: None,
        })
    }

    /// Consults `guard` before each Redis data call and reports each call's
    /// outcome to it (see [`RedisCallGuard`]); for instance a circuit
    /// breaker that keeps the cache off a failing Redis. Default: none.
    #[must_use]
    pub fn call_guard(mut self, guard: impl RedisCallGuard) -> Self {
        self.guard = Some(GuardSlot(Arc::new(guard)));
        self
    }

    /// Sends the cache's data commands (`GET`/`SET`/`DEL`, the fetch and
    /// lease scripts, `SCAN`) through `conn`, an existing
    /// `ConnectionManager` (for instance one shared with a rate limiter and
    /// flags), instead of a manager of the cache's own. Free: the manager is
    /// a cheap clone of a multiplexed connection; no I/O until used.
    ///
    /// `conn` should be to the same server as this options' URL. Its
    /// connection and response timeouts are the owner's; the cache still
    /// bounds each call with its own `l2_timeout`.
    ///
    /// The invalidation channel keeps its **dedicated** connections (made
    /// from the URL): client tracking (`CLIENT TRACKING … REDIRECT`) and the
    /// pub/sub subscription are per-connection state that cannot live on a
    /// shared multiplexed connection. While tracking is up, this instance's
    /// writes go through the tracking connection (`NOLOOP`), as without a
    /// shared manager; with [`Invalidation::Off`] every command uses `conn`.
    #[must_use]
    pub fn connection_manager(mut self, conn: ConnectionManager) -> Self {
        self.shared = Some(conn);
        self
    }

    /// Chooses the invalidation transport (default [`Invalidation::Tracking`]).
    #[must_use]
    pub fn invalidation(mut self, invalidation: Invalidation) -> Self {
        self.invalidation = invalidation;
        self
    }

    /// How often the invalidation connections are pinged to detect a dead
    /// link (default 1 s). A lost link is detected within about two heartbeats.
    #[must_use]
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every.max(Duration::from_millis(10));
        self
    }

    /// How long `build()` waits for the invalidation subscription, and the
    /// connect timeout of each connection attempt (default 2 s).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
}

const FETCH_LUA: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return false end
return {v, redis.call('PTTL', KEYS[1])}
";

const RELEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// A held lease, released with [`L2::release_lease`].
#[derive(Debug)]
pub(crate) struct Lease {
    key: String,
    token: String,
}

pub(crate) struct L2 {
    conn: ConnectionManager,
    /// The connection that holds `CLIENT TRACKING … NOLOOP` while the
    /// invalidation channel is up: this instance's writes go through it, so
    /// they do not come back as invalidations of its own L1.
    pub(crate) tracker: Arc<parking_lot::Mutex<Option<MultiplexedConnection>>>,
    name: String,
    prefix: String,
    compress: bool,
    timeout: Duration,
    fetch: redis::Script,
    release: redis::Script,
    status: Arc<AtomicU8>,
    source: String,
    channel: String,
    counters: Arc<Counters>,
    guard: Option<GuardSlot>,
}

impl L2 {
    pub(crate) fn new(
        opts: &RedisOptions,
        cfg: &CacheConfig,
        counters: &Arc<Counters>,
    ) -> Result<Self> {
        let conn = if let Some(shared) = &opts.shared {
            shared.clone()
        } else {
            let config = ConnectionManagerConfig::new()
                .set_response_timeout(Some(cfg.l2_timeout))
                .set_connection_timeout(Some(cfg.l2_timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            ConnectionManager::new_lazy_with_config(opts.client.clone(), config).map_err(|e| {
                Error::Config {
                    cache: cfg.name.clone(),
                    message: format!("cannot create the Redis connection manager: {e}"),
                }
            })?
        };
        let initial = if opts.invalidation == Invalidation::Off {
            InvalidationStatus::Off
        } else {
            InvalidationStatus::Connecting
        };
        Ok(Self {
            conn,
            tracker: Arc::new(parking_lot::Mutex::new(None)),
            name: cfg.name.clone(),
            prefix: cfg.prefix.clone(),
            compress: cfg.compress,
            timeout: cfg.l2_timeout,
            fetch: redis::Script::new(FETCH_LUA),
            release: redis::Script::new(RELEASE_LUA),
            status: Arc::new(AtomicU8::new(initial.as_u8())),
            source: format!("{:016x}", crate::random_u64()),
            channel: invalidation::channel(&cfg.prefix),
            counters: Arc::clone(counters),
            guard: opts.guard.clone(),
        })
    }

    pub(crate) fn status(&self) -> InvalidationStatus {
        InvalidationStatus::from_u8(self.status.load(Relaxed))
    }

    fn full_key(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + key.len());
        k.push_str(&self.prefix);
        k.push_str(key);
        k
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        let permit = match &self.guard {
            None => None,
            Some(GuardSlot(guard)) => match guard.admit() {
                Some(permit) => Some(permit),
                None => {
                    tracing::debug!(cache = %self.name, op, "Redis call not admitted by the call guard");
                    return Err(Error::Backend {
                        cache: self.name.clone(),
                        op,
                        source:
                            "Redis call not admitted by the call guard (e.g. circuit breaker open)"
                                .into(),
                    });
                }
            },
        };
        let result = tokio::time::timeout(self.timeout, fut).await;
        if let Some(permit) = permit {
            permit.record(matches!(result, Ok(Ok(_))));
        }
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Error::Backend {
                cache: self.name.clone(),
                op,
                source: Box::new(e),
            }),
            Err(_) => Err(Error::Timeout {
                cache: self.name.clone(),
                op,
                after: self.timeout,
            }),
        }
    }

    /// Runs a write on the tracking connection (NOLOOP) when the channel is
    /// up, else on the data connection.
    async fn write<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T> {
        let tracker = self.tracker.lock().clone();
        match tracker {
            Some(mut conn) => self.timed(op, cmd.query_async(&mut conn)).await,
            None => {
                let mut conn = self.conn.clone();
                self.timed(op, cmd.query_async(&mut conn)).await
            }
        }
    }

    /// Value and PTTL in one round trip (one `EVALSHA`). `None` PTTL: no expiry.
    pub(crate) async fn fetch(&self, key: &str) -> Result<Option<(Vec<u8>, Option<Duration>)>> {
        let mut conn = self.conn.clone();
        let full = self.full_key(key);
        let inv = self.fetch.key(&full);
        let reply: Option<(Vec<u8>, i64)> =
            self.timed("GET+PTTL", inv.invoke_async(&mut conn)).await?;
        Ok(reply.map(|(v, pttl)| {
            let ttl = u64::try_from(pttl).ok().map(Duration::from_millis);
            (v, ttl)
        }))
    }

    /// `SET prefix+key body PX ttl [NX]`; `Ok(false)` when NX found the key.
    pub(crate) async fn store(
        &self,
        key: &str,
        json: &[u8],
        ttl: Duration,
        only_if_absent: bool,
    ) -> Result<bool> {
        let body = self.encode(key, json)?;
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.full_key(key))
            .arg(body)
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
        if only_if_absent {
            cmd.arg("NX");
        }
        let reply: Option<String> = self.write("SET", &cmd).await?;
        Ok(reply.is_some())
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<()> {
        let cmd = redis::cmd("UNLINK").arg(self.full_key(key)).clone();
        let _: i64 = self.write("UNLINK", &cmd).await?;
        Ok(())
    }

    /// `SCAN MATCH escaped(prefix)+pattern COUNT 500` and `UNLINK` per batch.
    pub(crate) async fn scan_unlink(&self, pattern: &str) -> Result<u64> {
        let full = format!("{}{}", glob::escape(&self.prefix), pattern);
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut removed = 0u64;
        loop {
            let scan = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&full)
                .arg("COUNT")
                .arg(500)
                .clone();
            let (next, keys): (u64, Vec<Vec<u8>>) =
                self.timed("SCAN", scan.query_async(&mut conn)).await?;
            if !keys.is_empty() {
                let unlink = redis::cmd("UNLINK").arg(&keys).clone();
                let n: u64 = self.write("UNLINK", &unlink).await?;
                removed += n;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    pub(crate) async fn acquire_lease(&self, key: &str, lease: Duration) -> Result<Option<Lease>> {
        let lease_key = format!("finsight:lease:{}", self.full_key(key));
        let token = format!("{}:{:016x}", self.source, crate::random_u64());
        let cmd = redis::cmd("SET")
            .arg(&lease_key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1))
            .clone();
        let mut conn = self.conn.clone();
        let reply: Option<String> = self
            .timed("SET NX (lease)", cmd.query_async(&mut conn))
            .await?;
        Ok(reply.map(|_| Lease {
            key: lease_key,
            token,
        }))
    }

    pub(crate) async fn release_lease(&self, lease: Lease) {
        let mut conn = self.conn.clone();
        let mut inv = self.release.key(&lease.key);
        inv.arg(&lease.token);
        if let Err(e) = self
            .timed::<i64>("lease release", inv.invoke_async(&mut conn))
            .await
        {
            inc(&self.counters.l2_errors);
            tracing::warn!(cache = %self.name, error = %e, "lease release failed; it expires by itself");
        }
    }

    /// In pub/sub mode, tells the other instances that `key` changed.
    pub(crate) async fn announce_key(&self, key: &str) {
        self.announce('k', key).await;
    }

    pub(crate) async fn announce_pattern(&self, pattern: &str) {
        self.announce('p', pattern).await;
    }

    async fn announce(&self, kind: char, what: &str) {
        if self.status() != InvalidationStatus::PubSub {
            return;
        }
        let msg = format!("{kind}\n{}\n{what}", self.source);
        let cmd = redis::cmd("PUBLISH").arg(&self.channel).arg(msg).clone();
        let mut conn = self.conn.clone();
        match self
            .timed::<i64>("PUBLISH", cmd.query_async(&mut conn))
            .await
        {
            Ok(_) => inc(&self.counters.invalidations_sent),
            Err(e) => {
                inc(&self.counters.l2_errors);
                tracing::warn!(cache = %self.name, error = %e, "invalidation publish failed");
            }
        }
    }

    pub(crate) fn encode(&self, key: &str, json: &[u8]) -> Result<Vec<u8>> {
        if !self.compress {
            return Ok(json.to_vec());
        }
        let mut enc = flate2::write::GzEncoder::new(
            Vec::with_capacity(json.len() / 2 + 32),
            flate2::Compression::default(),
        );
        enc.write_all(json)
            .and_then(|()| enc.finish())
            .map_err(|e| Error::Decode {
                cache: self.name.clone(),
                key: key.to_owned(),
                what: "gzip (while compressing)",
                source: Box::new(e),
            })
    }

    pub(crate) fn decode<V: Value>(&self, key: &str, body: &[u8]) -> Result<V> {
        decode(&self.name, key, body)
    }
}

/// JSON or gzip(JSON) → value.
pub(crate) fn decode<V: Value>(name: &str, key: &str, body: &[u8]) -> Result<V> {
    let err = |what, source: Box<dyn std::error::Error + Send + Sync>| Error::Decode {
        cache: name.to_owned(),
        key: key.to_owned(),
        what,
        source,
    };
    if body.starts_with(&[0x1f, 0x8b]) {
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(body)
            .take(MAX_DECOMPRESSED_BYTES)
            .read_to_end(&mut json)
            .map_err(|e| err("gzip", Box::new(e)))?;
        serde_json::from_slice(&json).map_err(|e| err("JSON for the value type", Box::new(e)))
    } else {
        serde_json::from_slice(body).map_err(|e| err("JSON for the value type", Box::new(e)))
    }
}
