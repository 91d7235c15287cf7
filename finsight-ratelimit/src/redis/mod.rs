//! The Redis backend: many instances share one limit exactly.
//!
//! Every check is one `EVALSHA` of one Lua script (reloaded automatically on
//! `NOSCRIPT`) that decides **all** applicable rules atomically with the
//! Redis server's `TIME` as the clock and writes only when all admit. Keys
//! look like `{<tag>}:<rule id>:<16 hex chars>`; the `{tag}` puts all keys of
//! a limiter in one Redis Cluster hash slot, which the atomic multi-rule
//! script requires. Every write sets a `PX` expiry equal to the time until the
//! key is back to full capacity, so idle keys disappear by themselves.
//!
//! Faults: every call has a timeout (default 50 ms). When Redis fails or
//! times out, the [`FailureMode`] decides, and Redis is not asked again for
//! `retry_interval` (default 1 s), so an outage never adds latency to every
//! request. Memory on Redis per idle key: none (expired); per active key one
//! string of about 30 bytes (plus Redis's per-key overhead, ~50-100 bytes), or
//! for the sliding-window log a list of at most `limit + burst` entries.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::algorithm::{Algorithm, Policy, Verdict};
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::limiter::{Item, Op};

pub use ::redis as client;

/// The Lua source of the decision script (mirrors [`crate::algorithm`]).
pub const SCRIPT: &str = include_str!("script.lua");

/// What a check answers when Redis is down, slow or failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailureMode {
    /// Fail open through a local fallback limiter: the same rules, enforced
    /// per instance in memory, until Redis answers again (the default).
    #[default]
    Local,
    /// Fail open: admit everything (marked [`fallback`](crate::Decision::fallback)).
    Open,
    /// Fail closed: reject everything, with `Retry-After` = the retry interval.
    Closed,
}

/// A hook consulted before each of the limiter's Redis calls (for instance
/// a circuit breaker), set with [`RedisConfig::call_guard`].
///
/// [`admit`](Self::admit) runs before every check's `EVALSHA` (not while
/// Redis is already marked down after a failure, see
/// [`RedisConfig::retry_interval`]). `None` skips Redis: the check is
/// decided by the configured [`FailureMode`], exactly as when Redis fails,
/// but Redis is not marked down (the guard decides when to try again).
/// `Some(permit)` makes the call, then reports its outcome on the permit (a
/// Redis error or a timeout is a failure). A permit dropped without a report
/// (the check's future was cancelled) is the implementation's to treat as
/// cancelled.
///
/// Cost: one `admit` per check plus whatever the permit costs (a `Box`
/// allocation per check for a permit with state).
pub trait RedisCallGuard: Send + Sync + 'static {
    /// A permit for one Redis call, or `None` to skip Redis for this check.
    fn admit(&self) -> Option<Box<dyn RedisCallPermit>>;
}

/// Leave for one Redis call, from [`RedisCallGuard::admit`].
pub trait RedisCallPermit: Send + Sync {
    /// Reports how the call ended: `true` when Redis answered, `false` on a
    /// Redis error or a timeout.
    fn record(self: Box<Self>, ok: bool);
}

/// Settings of a [`RedisBackend`].
#[derive(Clone)]
#[must_use]
pub struct RedisConfig {
    url: String,
    tag: String,
    timeout: Duration,
    retry_interval: Duration,
    failure: FailureMode,
    clock: Option<Arc<dyn Clock>>,
    guard: Option<Arc<dyn RedisCallGuard>>,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("tag", &self.tag)
            .field("timeout", &self.timeout)
            .field("retry_interval", &self.retry_interval)
            .field("failure", &self.failure)
            .field("call_guard", &self.guard.is_some())
            .finish_non_exhaustive()
    }
}

impl RedisConfig {
    /// Settings for the Redis at `url` (`redis://host:port/db`).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            tag: "finsight-rl".into(),
            timeout: Duration::from_millis(50),
            retry_interval: Duration::from_secs(1),
            failure: FailureMode::Local,
            clock: None,
            guard: None,
        }
    }

    /// Consults `guard` before each check's Redis call and reports each
    /// call's outcome to it (see [`RedisCallGuard`]); for instance a circuit
    /// breaker that keeps the limiter off a failing Redis. Default: none.
    pub fn call_guard(mut self, guard: impl RedisCallGuard) -> Self {
        self.guard = Some(Arc::new(guard));
        self
    }

    /// The hash tag and key prefix (default `finsight-rl`): keys are
    /// `{tag}:<rule>:<key>`. Limiters that must share limits use the same tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = tag.into();
        self
    }

    /// Longest wait for one check's round trip (default 50 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// After a failure, how long checks skip Redis and use the failure mode (default 1 s).
    pub fn retry_interval(mut self, interval: Duration) -> Self {
        self.retry_interval = interval;
        self
    }

    /// What checks answer while Redis fails (default [`FailureMode::Local`]).
    pub fn failure_mode(mut self, mode: FailureMode) -> Self {
        self.failure = mode;
        self
    }

    /// Uses `clock` instead of the Redis server's `TIME`. For deterministic
    /// tests only: in production every instance must use the server's clock
    /// (the default), or skewed instances over-admit. Redis still expires
    /// keys by its own clock, so with a test clock keys live at least a
    /// minute (decisions are the same; expiry only frees memory).
    pub fn clock_for_tests(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }
}

/// A connection to Redis for [`LimiterBuilder::redis`](crate::LimiterBuilder::redis).
///
/// Holds a multiplexed, auto-reconnecting `ConnectionManager` (one TCP
/// connection, shared by clones and concurrent checks).
pub struct RedisBackend {
    conn: ConnectionManager,
    script: redis::Script,
    cfg: RedisConfig,
    mono: SystemClock,
    down_until: AtomicU64,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// The one period the script needs of a policy: the emission interval for
/// the buckets and GCRA, the window for the window algorithms.
fn span_us(p: &Policy) -> u64 {
    match p.algorithm {
        Algorithm::TokenBucket | Algorithm::LeakyBucket | Algorithm::Gcra => p.interval_us,
        Algorithm::FixedWindow | Algorithm::SlidingWindowLog | Algorithm::SlidingWindowCounter => {
            p.window_us
        }
    }
}

fn backend_err(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Backend {
        source: Box::new(e),
    }
}

impl RedisBackend {
    /// Connects (bounded by the configured timeout, at least 1 s) and loads the script.
    ///
    /// # Errors
    /// [`Error::Backend`] when the URL is invalid or Redis cannot be reached;
    /// [`Error::Timeout`] when connecting takes too long.
    pub async fn connect(cfg: RedisConfig) -> Result<Self> {
        let client = redis::Client::open(cfg.url.as_str()).map_err(backend_err)?;
        let limit = cfg.timeout.max(Duration::from_secs(1));
        let mc = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(limit))
            // One timer per call is enough: `decide` bounds each call itself.
            .set_response_timeout(None)
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = tokio::time::timeout(limit, ConnectionManager::new_with_config(client, mc))
            .await
            .map_err(|_| Error::Timeout(limit))?
            .map_err(backend_err)?;
        Self::with_manager(conn, cfg, limit).await
    }

    /// A backend on an existing `ConnectionManager` (for instance one shared
    /// with a cache and flags), instead of a connection of its own; loads the
    /// script (one `SCRIPT LOAD` round trip, bounded by the configured
    /// timeout, at least 1 s). The URL in `cfg` is not used; every other
    /// setting is. Checks are multiplexed on `conn` with the other users'
    /// commands and each is still bounded by the configured timeout; the
    /// manager's own reconnect policy is its owner's.
    ///
    /// # Errors
    /// [`Error::Backend`] when Redis cannot be reached;
    /// [`Error::Timeout`] when loading the script takes too long.
    pub async fn from_connection_manager(
        conn: ConnectionManager,
        cfg: RedisConfig,
    ) -> Result<Self> {
        let limit = cfg.timeout.max(Duration::from_secs(1));
        Self::with_manager(conn, cfg, limit).await
    }

    async fn with_manager(
        mut conn: ConnectionManager,
        cfg: RedisConfig,
        limit: Duration,
    ) -> Result<Self> {
        let script = redis::Script::new(SCRIPT);
        tokio::time::timeout(limit, script.load_async(&mut conn))
            .await
            .map_err(|_| Error::Timeout(limit))?
            .map_err(backend_err)?;
        Ok(Self {
            conn,
            script,
            cfg,
            mono: SystemClock::new(),
            down_until: AtomicU64::new(0),
        })
    }

    pub(crate) fn failure_mode(&self) -> FailureMode {
        self.cfg.failure
    }

    pub(crate) fn retry_interval_us(&self) -> u64 {
        u64::try_from(self.cfg.retry_interval.as_micros())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Appends the Redis key of `item`, `{tag}:<rule id>:<16 hex chars>`, to `out`.
    fn write_key(&self, out: &mut Vec<u8>, item: &Item<'_>) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        out.push(b'{');
        out.extend_from_slice(self.cfg.tag.as_bytes());
        out.extend_from_slice(b"}:");
        out.extend_from_slice(item.rule.id.as_bytes());
        out.push(b':');
        let k = item.key.0;
        out.extend((0..16).rev().map(|i| HEX[((k >> (4 * i)) & 0xf) as usize]));
    }

    /// The `EVALSHA` of one check (arguments as described at the head of
    /// `script.lua`): one command buffer, no per-argument allocation, and
    /// as few arguments as the script needs, as Redis pays for each one.
    fn command(&self, items: &[Item<'_>], op: Op) -> redis::Cmd {
        let mut cmd = redis::Cmd::with_capacity(4 + 5 * items.len(), 64 + 96 * items.len());
        cmd.arg("EVALSHA")
            .arg(self.script.get_hash())
            .arg(items.len());
        let mut key = Vec::with_capacity(self.cfg.tag.len() + 48);
        for it in items {
            key.clear();
            self.write_key(&mut key, it);
            cmd.arg(&key[..]);
        }
        for it in items {
            let code = b'0' + it.policy.algorithm.code();
            let kind: &[u8] = if it.rule.rule.shadow {
                &[code, b's']
            } else {
                &[code]
            };
            cmd.arg(kind)
                .arg(it.policy.capacity)
                .arg(span_us(&it.policy))
                .arg(it.cost);
        }
        match &self.cfg.clock {
            Some(c) => {
                cmd.arg(op.code()).arg(c.now_micros());
            }
            None if op != Op::Consume => {
                cmd.arg(op.code());
            }
            None => {}
        }
        cmd
    }

    /// Runs `cmd`; on `NOSCRIPT` (the server's script cache was flushed)
    /// loads the script and runs it once more.
    async fn call(&self, cmd: &redis::Cmd) -> redis::RedisResult<Vec<i64>> {
        let mut conn = self.conn.clone();
        match cmd.query_async(&mut conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.script.load_async(&mut conn).await?;
                cmd.query_async(&mut conn).await
            }
            res => res,
        }
    }

    /// One round trip deciding all `items`.
    pub(crate) async fn decide(&self, items: &[Item<'_>], op: Op) -> Result<Vec<Verdict>> {
        let now_mono = self.mono.now_micros();
        if now_mono < self.down_until.load(Ordering::Relaxed) {
            return Err(Error::Backend {
                source: "redis marked down after a recent failure".into(),
            });
        }
        let cmd = self.command(items, op);
        let permit = match &self.cfg.guard {
            None => None,
            Some(guard) => match guard.admit() {
                Some(permit) => Some(permit),
                None => {
                    tracing::debug!(mode = ?self.cfg.failure, "rate-limit Redis call not admitted by the call guard");
                    return Err(Error::Backend {
                        source:
                            "Redis call not admitted by the call guard (e.g. circuit breaker open)"
                                .into(),
                    });
                }
            },
        };
        let res: Result<Vec<i64>> =
            match tokio::time::timeout(self.cfg.timeout, self.call(&cmd)).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(backend_err(e)),
                Err(_) => Err(Error::Timeout(self.cfg.timeout)),
            };
        if let Some(permit) = permit {
            permit.record(res.is_ok());
        }
        let raw = match res {
            Ok(v) => v,
            Err(e) => {
                self.down_until
                    .store(now_mono + self.retry_interval_us(), Ordering::Relaxed);
                tracing::warn!(error = %e, mode = ?self.cfg.failure, "rate-limit Redis check failed");
                return Err(e);
            }
        };
        if op == Op::Refund {
            return Ok(Vec::new());
        }
        if raw.len() != 4 * items.len() {
            return Err(Error::Backend {
                source: format!(
                    "unexpected script reply of {} values for {} rules",
                    raw.len(),
                    items.len()
                )
                .into(),
            });
        }
        let u = |x: i64| u64::try_from(x).unwrap_or(0);
        Ok(raw
            .chunks_exact(4)
            .map(|c| Verdict {
                allowed: c[0] == 1,
                remaining: u(c[1]),
                reset_us: u(c[2]),
                retry_us: (c[3] >= 0).then(|| u(c[3]).max(1)),
            })
            .collect())
    }
}
