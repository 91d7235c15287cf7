//! Redis backends (feature `redis`): a sticky store that never puts Redis
//! on the evaluation path, and a flag source shared by all instances with
//! change notification.
//!
//! Both use `redis`' `ConnectionManager` (reconnects by itself) with short
//! connection and response timeouts, so a Redis outage costs a failed,
//! counted background operation and never an evaluation.

use ::redis::aio::ConnectionManager;
use ::redis::{AsyncCommands, Client, aio::ConnectionManagerConfig};
use futures_util::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

use crate::error::Error;
use crate::eval::FlagEngine;
use crate::flagset::FlagSet;
use crate::model::FlagDefinition;
use crate::source::{ReloadStatus, SourceWatcher};
use crate::sticky::{
    Assignment, MemoryStickyStore, OwnedStickyKey, PreloadFuture, StickyKey, StickyStore,
};

/// The Python services' key prefix for stored buckets.
pub const DEFAULT_STICKY_PREFIX: &str = "user_buckets:";
/// The Python services' TTL for stored buckets: 24 hours.
pub const DEFAULT_STICKY_TTL: Duration = Duration::from_secs(24 * 60 * 60);

fn client(url: &str) -> Result<Client, Error> {
    Client::open(url).map_err(|e| Error::Config(format!("invalid Redis URL `{url}`: {e}")))
}

fn manager(client: Client, timeout: Duration) -> Result<ConnectionManager, Error> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_lazy_with_config(client, config)
        .map_err(|e| Error::backend("redis", "creating the connection manager", e))
}

/// Counters of a [`RedisStickyStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct StickyStats {
    /// Assignments loaded from Redis by preloads.
    pub preloaded: u64,
    /// Preloads that failed (evaluation then used computed buckets).
    pub preload_failures: u64,
    /// Values found by preloads that are not in this crate's format (e.g.
    /// the bare bucket number the Python services cache under the same
    /// prefix): treated as no stored assignment, and never overwritten.
    pub foreign_values: u64,
    /// Assignments written to Redis.
    pub written: u64,
    /// First assignments not written because Redis already held a value for
    /// the key (`SET … NX`): the stored one is kept, and a preload of the
    /// unit brings it into the local copy.
    pub already_stored: u64,
    /// Assignments whose write failed (Redis down or slow).
    pub write_failures: u64,
    /// Assignments not written because the write-behind queue was full.
    pub dropped_writes: u64,
}

#[derive(Debug, Default)]
struct Counters {
    preloaded: AtomicU64,
    preload_failures: AtomicU64,
    foreign_values: AtomicU64,
    written: AtomicU64,
    already_stored: AtomicU64,
    write_failures: AtomicU64,
    dropped_writes: AtomicU64,
}

/// Builds a [`RedisStickyStore`].
#[derive(Debug, Clone)]
#[must_use = "call .build() to get the store"]
pub struct RedisStickyStoreBuilder {
    url: String,
    prefix: String,
    ttl: Duration,
    local_capacity: usize,
    queue: usize,
    timeout: Duration,
    shared: Option<ConnectionManager>,
}

impl RedisStickyStoreBuilder {
    /// Key prefix (default `user_buckets:`). Keys are
    /// `<prefix><flag_key>:<user|tenant>:<id>`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Time to live of a stored assignment (default 24 h).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Assignments kept in process (default 100,000).
    pub fn local_capacity(mut self, n: usize) -> Self {
        self.local_capacity = n;
        self
    }

    /// Capacity of the write-behind queue (default 10,000); a full queue
    /// drops the write and counts it.
    pub fn write_queue(mut self, n: usize) -> Self {
        self.queue = n.max(1);
        self
    }

    /// Connection and response timeout of Redis operations (default 500 ms).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Uses `conn`, an existing `ConnectionManager` (for instance one shared
    /// with a cache and a rate limiter), for preloads and write-behind
    /// instead of a manager of the store's own; the builder's URL and
    /// [`timeout`](Self::timeout) are then not used (the manager's timeouts
    /// are its owner's). Free: a clone of a multiplexed connection, no I/O.
    pub fn connection_manager(mut self, conn: ConnectionManager) -> Self {
        self.shared = Some(conn);
        self
    }

    /// The store. Does not connect yet (the connection is made by the first
    /// preload or write), so it builds while Redis is down; starts the
    /// write-behind task on the current tokio runtime.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid URL or without a tokio runtime.
    pub fn build(self) -> Result<RedisStickyStore, Error> {
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Config("RedisStickyStore needs a running tokio runtime".into()))?;
        let conn = match self.shared {
            Some(conn) => conn,
            None => manager(client(&self.url)?, self.timeout)?,
        };
        let (tx, rx) = mpsc::channel(self.queue);
        let counters = Arc::new(Counters::default());
        rt.spawn(write_behind(conn.clone(), rx, self.ttl, counters.clone()));
        Ok(RedisStickyStore {
            inner: Arc::new(StoreInner {
                local: MemoryStickyStore::new(self.local_capacity),
                conn,
                prefix: self.prefix,
                tx,
                counters,
            }),
        })
    }
}

/// Sticky assignments in Redis, compatible with the Python services' key
/// prefix and TTL (`user_buckets:`, 24 h), without Redis on the evaluation
/// path.
///
/// * Evaluation reads and writes a bounded in-process copy
///   ([`MemoryStickyStore`], `local_capacity` entries).
/// * A first assignment is queued (bounded, `try_send`) and written behind
///   by a background task with `SET key value EX ttl NX`, in pipelines of up
///   to 128: a value already in Redis (written by another instance, perhaps
///   before a weight or rollout change) is never overwritten, so the first
///   assignment is the one kept (SPEC §1.4). An instance that evaluated a
///   unit without preloading it serves its computed assignment until a
///   [`preload`](FlagEngine::preload) of the unit brings the stored one in.
///   Only an assignment that no longer fits its flag (a removed variant) is
///   overwritten, with a plain `SET … EX ttl`.
/// * [`FlagEngine::preload`] fetches a unit's assignments for every sticky
///   flag with one `MGET` before evaluation.
/// * Any Redis failure is counted ([`RedisStickyStore::stats`]) and logged;
///   evaluation then serves the computed bucket. Never an error to the
///   evaluating caller.
///
/// Values are `in` / `out` (rollouts) or `variant:<id>`. A value in another
/// format — the Python services cache the bare bucket number (`"45"`) under
/// the same `user_buckets:` prefix — is treated as no stored assignment
/// (the unit gets its computed bucket, which is the same md5 bucket the
/// Python services compute), counted in [`StickyStats::foreign_values`],
/// and never overwritten (`NX`). Cloning shares the store.
#[derive(Debug, Clone)]
pub struct RedisStickyStore {
    inner: Arc<StoreInner>,
}

#[derive(Debug)]
struct StoreInner {
    local: MemoryStickyStore,
    conn: ConnectionManager,
    prefix: String,
    tx: mpsc::Sender<Write>,
    counters: Arc<Counters>,
}

/// One queued write-behind: key, value, and whether it may overwrite.
#[derive(Debug)]
struct Write {
    key: String,
    value: String,
    overwrite: bool,
}

impl RedisStickyStore {
    /// A builder for the Redis at `url` (e.g. `redis://127.0.0.1:6379`).
    pub fn builder(url: impl Into<String>) -> RedisStickyStoreBuilder {
        RedisStickyStoreBuilder {
            url: url.into(),
            prefix: DEFAULT_STICKY_PREFIX.to_owned(),
            ttl: DEFAULT_STICKY_TTL,
            local_capacity: 100_000,
            queue: 10_000,
            timeout: Duration::from_millis(500),
            shared: None,
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> StickyStats {
        let c = &self.inner.counters;
        StickyStats {
            preloaded: c.preloaded.load(Ordering::Relaxed),
            preload_failures: c.preload_failures.load(Ordering::Relaxed),
            foreign_values: c.foreign_values.load(Ordering::Relaxed),
            written: c.written.load(Ordering::Relaxed),
            already_stored: c.already_stored.load(Ordering::Relaxed),
            write_failures: c.write_failures.load(Ordering::Relaxed),
            dropped_writes: c.dropped_writes.load(Ordering::Relaxed),
        }
    }

    /// The Redis key of an assignment: `<prefix><flag_key>:<kind>:<id>`.
    pub fn redis_key(&self, key: &StickyKey<'_>) -> String {
        format!("{}{}", self.inner.prefix, key.bucketing_key())
    }

    async fn load(&self, keys: Vec<OwnedStickyKey>) -> Result<usize, Error> {
        let redis_keys: Vec<String> = keys.iter().map(|k| self.redis_key(&k.as_key())).collect();
        let mut conn = self.inner.conn.clone();
        let values: Result<Vec<Option<String>>, _> = ::redis::cmd("MGET")
            .arg(&redis_keys)
            .query_async(&mut conn)
            .await;
        match values {
            Ok(values) => {
                let mut found = 0;
                let mut foreign = 0u64;
                for (k, v) in keys.iter().zip(values) {
                    let Some(v) = v else { continue };
                    match Assignment::decode(&v) {
                        Some(a) => {
                            self.inner.local.put(&k.as_key(), a);
                            found += 1;
                        }
                        None => foreign += 1,
                    }
                }
                let c = &self.inner.counters;
                c.preloaded.fetch_add(found as u64, Ordering::Relaxed);
                if foreign > 0 {
                    let before = c.foreign_values.fetch_add(foreign, Ordering::Relaxed);
                    if before == 0 {
                        tracing::info!(
                            "finsight-flags: sticky keys in Redis hold values of another format \
                             (e.g. the Python services' bucket numbers); serving computed buckets \
                             for them and leaving them in place"
                        );
                    }
                }
                Ok(found)
            }
            Err(e) => {
                self.inner
                    .counters
                    .preload_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "finsight-flags: sticky preload from Redis failed; serving computed buckets");
                Err(Error::backend("redis", "loading sticky assignments", e))
            }
        }
    }
}

impl StickyStore for RedisStickyStore {
    fn get(&self, key: &StickyKey<'_>) -> Option<Assignment> {
        self.inner.local.get(key)
    }

    fn put(&self, key: &StickyKey<'_>, assignment: Assignment) {
        self.write(key, assignment, false);
    }

    fn replace(&self, key: &StickyKey<'_>, assignment: Assignment) {
        self.write(key, assignment, true);
    }

    fn preload<'a>(&'a self, keys: Vec<OwnedStickyKey>) -> PreloadFuture<'a> {
        Box::pin(self.load(keys))
    }
}

impl RedisStickyStore {
    fn write(&self, key: &StickyKey<'_>, assignment: Assignment, overwrite: bool) {
        let value = assignment.encode();
        self.inner.local.put(key, assignment);
        let write = Write {
            key: self.redis_key(key),
            value,
            overwrite,
        };
        if self.inner.tx.try_send(write).is_err() {
            let n = self
                .inner
                .counters
                .dropped_writes
                .fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n + 1,
                    "finsight-flags: sticky write-behind queue full; writes dropped"
                );
            }
        }
    }
}

async fn write_behind(
    mut conn: ConnectionManager,
    mut rx: mpsc::Receiver<Write>,
    ttl: Duration,
    counters: Arc<Counters>,
) {
    let ttl = ttl.as_secs().max(1);
    let mut batch = Vec::with_capacity(128);
    while rx.recv_many(&mut batch, 128).await > 0 {
        let mut pipe = ::redis::pipe();
        for w in &batch {
            let cmd = pipe.cmd("SET").arg(&w.key).arg(&w.value).arg("EX").arg(ttl);
            if !w.overwrite {
                // Keep whatever is stored: the first assignment, or a value of
                // another format (the Python services' bucket number).
                cmd.arg("NX");
            }
        }
        let n = batch.len() as u64;
        // `SET` replies `OK`, or nil when `NX` found the key taken.
        match pipe.query_async::<Vec<::redis::Value>>(&mut conn).await {
            Ok(replies) => {
                let kept = replies
                    .iter()
                    .filter(|r| matches!(r, ::redis::Value::Nil))
                    .count() as u64;
                counters
                    .written
                    .fetch_add(n - kept.min(n), Ordering::Relaxed);
                counters
                    .already_stored
                    .fetch_add(kept.min(n), Ordering::Relaxed);
            }
            Err(e) => {
                counters.write_failures.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(error = %e, writes = n, "finsight-flags: sticky write-behind to Redis failed");
            }
        }
        batch.clear();
    }
}

/// Flags shared by every instance through Redis, with change notification.
///
/// Layout: a hash (default `feature_flags`) with one field per flag key whose
/// value is the flag's JSON (SPEC §1.1), and a pub/sub channel (default
/// `feature_flags:changed`) on which writers publish after a change.
/// [`RedisFlagSource::publish`] and [`RedisFlagSource::remove`] do both.
///
/// [`RedisFlagSource::watch`] loads the hash, then reloads it on every
/// notification and every `resync_interval` (default 30 s, a safety net for
/// notifications lost while disconnected). Each reload is validated before
/// the swap: a flag whose JSON is bad keeps its last good definition, and a
/// failed read keeps the whole set. Readers never wait for a reload.
#[derive(Debug, Clone)]
pub struct RedisFlagSource {
    client: Client,
    conn: ConnectionManager,
    hash_key: String,
    channel: String,
    resync: Duration,
}

impl RedisFlagSource {
    /// A source on the Redis at `url`. Does not connect yet.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid URL.
    pub fn new(url: &str) -> Result<Self, Error> {
        let client = client(url)?;
        let conn = manager(client.clone(), Duration::from_secs(2))?;
        Ok(Self {
            client,
            conn,
            hash_key: "feature_flags".to_owned(),
            channel: "feature_flags:changed".to_owned(),
            resync: Duration::from_secs(30),
        })
    }

    /// A source whose reads and writes (`HGETALL`, `HSET`, `HDEL`,
    /// `PUBLISH`) go through `conn`, an existing `ConnectionManager` (for
    /// instance one shared with a cache and a rate limiter). Free: no I/O.
    ///
    /// `url` (the same server as `conn`) is used only by
    /// [`watch`](Self::watch) for its **dedicated** pub/sub connection: a
    /// subscribed connection cannot carry other commands, so it is never the
    /// shared one.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid URL.
    pub fn from_connection_manager(url: &str, conn: ConnectionManager) -> Result<Self, Error> {
        Ok(Self {
            client: client(url)?,
            conn,
            hash_key: "feature_flags".to_owned(),
            channel: "feature_flags:changed".to_owned(),
            resync: Duration::from_secs(30),
        })
    }

    /// The hash holding the flags (default `feature_flags`).
    #[must_use]
    pub fn hash_key(mut self, key: impl Into<String>) -> Self {
        self.hash_key = key.into();
        self
    }

    /// The change-notification channel (default `feature_flags:changed`).
    #[must_use]
    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = channel.into();
        self
    }

    /// How often the hash is re-read without a notification (default 30 s).
    #[must_use]
    pub fn resync_interval(mut self, every: Duration) -> Self {
        self.resync = every.max(Duration::from_millis(10));
        self
    }

    /// Writes one flag (`HSET`) and notifies every instance (`PUBLISH`).
    ///
    /// # Errors
    /// [`Error::Backend`] when Redis fails.
    pub async fn publish(&self, def: &FlagDefinition) -> Result<(), Error> {
        let json = serde_json::to_string(def).map_err(|e| Error::Config(e.to_string()))?;
        self.publish_raw(&def.key, &json).await
    }

    /// Writes one flag's JSON text as is (also invalid text, e.g. written by
    /// another tool) and notifies.
    ///
    /// # Errors
    /// [`Error::Backend`] when Redis fails.
    pub async fn publish_raw(&self, key: &str, json: &str) -> Result<(), Error> {
        let mut conn = self.conn.clone();
        let _: () = conn
            .hset(&self.hash_key, key, json)
            .await
            .map_err(|e| Error::backend("redis", "writing a flag", e))?;
        self.notify().await
    }

    /// Removes one flag (`HDEL`) and notifies.
    ///
    /// # Errors
    /// [`Error::Backend`] when Redis fails.
    pub async fn remove(&self, key: &str) -> Result<(), Error> {
        let mut conn = self.conn.clone();
        let _: () = conn
            .hdel(&self.hash_key, key)
            .await
            .map_err(|e| Error::backend("redis", "removing a flag", e))?;
        self.notify().await
    }

    async fn notify(&self) -> Result<(), Error> {
        let mut conn = self.conn.clone();
        let _: () = conn
            .publish(&self.channel, "changed")
            .await
            .map_err(|e| Error::backend("redis", "publishing a change notification", e))?;
        Ok(())
    }

    /// Reads and validates every flag in the hash (one `HGETALL`), keeping
    /// the definitions in `previous` of flags rejected now.
    ///
    /// # Errors
    /// [`Error::Backend`] when Redis fails.
    pub async fn load(&self, previous: Option<&FlagSet>) -> Result<crate::LoadReport, Error> {
        let mut conn = self.conn.clone();
        let all: Vec<(String, String)> = ::redis::cmd("HGETALL")
            .arg(&self.hash_key)
            .query_async(&mut conn)
            .await
            .map_err(|e| Error::backend("redis", "reading flags", e))?;
        Ok(FlagSet::from_raw(
            all.iter().map(|(_, v)| v.as_str()),
            previous,
        ))
    }

    /// Loads the flags into `engine`, then keeps them in sync from a tokio
    /// task until the watcher is dropped. While Redis is unreachable the
    /// engine keeps serving the last good set and the task retries (every
    /// second, then every `resync_interval`).
    ///
    /// # Errors
    /// The initial load's error (nothing is watched then).
    pub async fn watch(self, engine: FlagEngine) -> Result<SourceWatcher, Error> {
        let report = self.load(Some(&engine.flags())).await?;
        for e in &report.errors {
            tracing::warn!(error = %e, "finsight-flags: flag in Redis rejected");
        }
        let (tx, rx) = watch::channel(ReloadStatus {
            rejected: report.errors,
            ..ReloadStatus::default()
        });
        engine.replace(report.set);
        let task = tokio::spawn(self.sync_loop(engine, tx));
        Ok(SourceWatcher::new(rx, task))
    }

    async fn reload(&self, engine: &FlagEngine, tx: &watch::Sender<ReloadStatus>) {
        let result = self.load(Some(&engine.flags())).await;
        tx.send_modify(|s| {
            s.attempts += 1;
            match result {
                Ok(report) => {
                    for e in &report.errors {
                        tracing::warn!(error = %e, "finsight-flags: flag in Redis rejected");
                    }
                    engine.replace(report.set);
                    s.applied += 1;
                    s.last_error = None;
                    s.rejected = report.errors;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "finsight-flags: reading flags from Redis failed; keeping the last good set");
                    s.last_error = Some(e.to_string());
                }
            }
        });
    }

    async fn sync_loop(self, engine: FlagEngine, tx: watch::Sender<ReloadStatus>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if tx.is_closed() {
                return;
            }
            // (Re)subscribe; on failure retry with a bounded backoff.
            let pubsub = match self.client.get_async_pubsub().await {
                Ok(mut ps) => match ps.subscribe(&self.channel).await {
                    Ok(()) => Ok(ps),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            let Ok(pubsub) = pubsub.map_err(|e| {
                tracing::warn!(error = %e, "finsight-flags: subscribing to flag changes failed; keeping the last good set");
                tx.send_modify(|s| {
                    s.attempts += 1;
                    s.last_error = Some(format!("subscribing to `{}` failed: {e}", self.channel));
                });
            }) else {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(self.resync);
                continue;
            };
            backoff = Duration::from_millis(100);
            // Changes made while we were not subscribed.
            self.reload(&engine, &tx).await;
            let mut messages = pubsub.into_on_message();
            let mut tick = tokio::time::interval(self.resync);
            tick.tick().await;
            loop {
                tokio::select! {
                    msg = messages.next() => match msg {
                        Some(_) => self.reload(&engine, &tx).await,
                        None => {
                            tracing::warn!("finsight-flags: flag change subscription lost; reconnecting");
                            break;
                        }
                    },
                    _ = tick.tick() => {
                        if tx.is_closed() {
                            return;
                        }
                        self.reload(&engine, &tx).await;
                    }
                }
            }
        }
    }
}
