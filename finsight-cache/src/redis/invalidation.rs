//! The cross-instance invalidation listener.
//!
//! One task per cache with Redis: a RESP2 pub/sub connection subscribed to
//! `__redis__:invalidate`, and a tracking connection that ran
//! `CLIENT TRACKING ON REDIRECT <pub/sub id> BCAST PREFIX <prefix> NOLOOP`.
//! While it is up, this instance's writes go through the tracking connection,
//! so NOLOOP keeps them from evicting this instance's own L1 copy; writes by
//! every other client (other instances, the Python services) arrive.
//! Both are pinged every heartbeat; when either fails, the task reconnects
//! with backoff (50 ms doubling to 2 s) and, once subscribed again, flushes
//! L1 because invalidations may have been lost meanwhile.
//!
//! The task holds only a `Weak` reference to the cache and ends — closing
//! both connections — as soon as the last `Cache` handle is dropped (the
//! cache's stop channel closes), whatever it is doing: connecting, backing
//! off or listening.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::PubSub;
use redis::{ConnectionAddr, Msg};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::{Invalidation, InvalidationStatus, RedisOptions};
use crate::cache::{Inner, Value};
use crate::error::{BoxError, Result};
use crate::stats::inc;

/// The channel Redis uses for RESP2 tracking redirects.
const TRACKING_CHANNEL: &str = "__redis__:invalidate";

pub(crate) fn channel(prefix: &str) -> String {
    format!("finsight:cache:invalidate:{prefix}")
}

/// Spawns the listener and waits (bounded by `connect_timeout`) for the
/// first subscription. Never fails because Redis is down.
pub(crate) async fn start<V: Value>(inner: &Arc<Inner<V>>, opts: &RedisOptions) -> Result<()> {
    let Some(l2) = inner.l2.as_ref() else {
        return Ok(());
    };
    if opts.invalidation == Invalidation::Off {
        return Ok(());
    }
    let (ready_tx, mut ready_rx) = watch::channel(false);
    let listener = Listener {
        cache: Arc::downgrade(inner),
        client: opts.client.clone(),
        prefix: inner.cfg.prefix.clone(),
        name: inner.cfg.name.clone(),
        channel: channel(&inner.cfg.prefix),
        source: l2.source.clone(),
        want_tracking: opts.invalidation == Invalidation::Tracking,
        heartbeat: opts.heartbeat,
        timeout: opts.connect_timeout,
        status: Arc::clone(&l2.status),
        writer: Arc::clone(&l2.tracker),
        ready: ready_tx,
    };
    let mut stop = inner.stop.clone();
    let writer = Arc::clone(&l2.tracker);
    let name = inner.cfg.name.clone();
    tokio::spawn(async move {
        tokio::select! {
            biased;
            _ = stop.changed() => {}
            () = listener.run() => {}
        }
        // The tracking connection is closed with its last handle.
        *writer.lock() = None;
        tracing::debug!(cache = %name, "invalidation listener stopped");
    });
    let _ = tokio::time::timeout(opts.connect_timeout, ready_rx.wait_for(|r| *r)).await;
    Ok(())
}

struct Listener<V: Value> {
    cache: Weak<Inner<V>>,
    client: redis::Client,
    prefix: String,
    name: String,
    channel: String,
    source: String,
    want_tracking: bool,
    heartbeat: Duration,
    timeout: Duration,
    status: Arc<std::sync::atomic::AtomicU8>,
    /// Where this instance's writes go while tracking (NOLOOP) is active.
    writer: Arc<parking_lot::Mutex<Option<redis::aio::MultiplexedConnection>>>,
    ready: watch::Sender<bool>,
}

enum End {
    CacheDropped,
    Lost(BoxError),
}

impl<V: Value> Listener<V> {
    async fn run(self) {
        let mut backoff = Duration::from_millis(50);
        loop {
            if self.cache.strong_count() == 0 {
                return;
            }
            let ended = self.session().await;
            *self.writer.lock() = None;
            match ended {
                (_, End::CacheDropped) => return,
                (subscribed, End::Lost(e)) => {
                    self.status
                        .store(InvalidationStatus::Connecting.as_u8(), Relaxed);
                    if subscribed {
                        backoff = Duration::from_millis(50);
                        tracing::warn!(cache = %self.name, error = %e,
                            "invalidation channel lost; L1 keeps serving and is flushed once resubscribed");
                    } else {
                        tracing::debug!(cache = %self.name, error = %e, "invalidation channel: connect failed");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// One connection lifetime. Returns whether it got subscribed.
    ///
    /// L1 is flushed on every subscription: entries cached while no channel
    /// was listening (before the first subscription, or since a loss) may
    /// have missed their invalidation. At build time L1 is empty, so the
    /// first flush costs nothing.
    async fn session(&self) -> (bool, End) {
        let setup = tokio::time::timeout(self.timeout, self.connect()).await;
        let (mut tracker, pubsub, tracking) = match setup {
            Ok(Ok(parts)) => parts,
            Ok(Err(e)) => return (false, End::Lost(e)),
            Err(_) => return (false, End::Lost("connect timed out".into())),
        };
        let Some(cache) = self.cache.upgrade() else {
            return (true, End::CacheDropped);
        };
        if tracking {
            *self.writer.lock() = Some(tracker.clone());
        }
        cache.flush_local();
        tracing::debug!(cache = %self.name, "invalidation channel subscribed; L1 flushed");
        drop(cache);
        let status = if tracking {
            InvalidationStatus::Tracking
        } else {
            InvalidationStatus::PubSub
        };
        self.status.store(status.as_u8(), Relaxed);
        let _ = self.ready.send(true);
        tracing::debug!(cache = %self.name, ?status, "invalidation channel subscribed");

        let (mut sink, mut stream) = pubsub.split();
        let mut tick = tokio::time::interval(self.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        return (true, End::Lost("pub/sub connection closed".into()));
                    };
                    let Some(cache) = self.cache.upgrade() else {
                        return (true, End::CacheDropped);
                    };
                    self.handle(&cache, &msg).await;
                }
                _ = tick.tick() => {
                    if self.cache.strong_count() == 0 {
                        return (true, End::CacheDropped);
                    }
                    let ping = redis::cmd("PING").clone();
                    match tokio::time::timeout(self.timeout, ping.query_async::<String>(&mut tracker)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return (true, End::Lost(Box::new(e))),
                        Err(_) => return (true, End::Lost("tracking connection: PING timed out".into())),
                    }
                    match tokio::time::timeout(self.timeout, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return (true, End::Lost(Box::new(e))),
                        Err(_) => return (true, End::Lost("pub/sub connection: PING timed out".into())),
                    }
                }
            }
        }
    }

    async fn connect(
        &self,
    ) -> std::result::Result<(redis::aio::MultiplexedConnection, PubSub, bool), BoxError> {
        let (id, mut pubsub) = open_pubsub(&self.client).await?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let mut tracker = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let mut tracking = false;
        if self.want_tracking {
            let cmd = redis::cmd("CLIENT")
                .arg("TRACKING")
                .arg("ON")
                .arg("REDIRECT")
                .arg(id)
                .arg("BCAST")
                .arg("PREFIX")
                .arg(&self.prefix)
                .arg("NOLOOP")
                .clone();
            match cmd.query_async::<()>(&mut tracker).await {
                Ok(()) => tracking = true,
                Err(e) => tracing::warn!(cache = %self.name, error = %e,
                    "Redis refused client tracking; falling back to pub/sub invalidation"),
            }
        }
        if tracking {
            pubsub.subscribe(TRACKING_CHANNEL).await?;
        } else {
            pubsub.subscribe(&self.channel).await?;
        }
        Ok((tracker, pubsub, tracking))
    }

    async fn handle(&self, cache: &Inner<V>, msg: &Msg) {
        let channel = msg.get_channel_name();
        if channel == TRACKING_CHANNEL {
            match msg.get_payload::<Option<Vec<Vec<u8>>>>() {
                Ok(None) => {
                    inc(&cache.counters.invalidations_received);
                    tracing::debug!(cache = %self.name, "FLUSHDB/FLUSHALL seen; L1 flushed");
                    cache.flush_local();
                }
                Ok(Some(keys)) => {
                    for full in keys {
                        let Some(rest) = full.strip_prefix(self.prefix.as_bytes()) else {
                            continue;
                        };
                        inc(&cache.counters.invalidations_received);
                        match std::str::from_utf8(rest) {
                            Ok(key) => cache.invalidate_local(key).await,
                            // A non-UTF-8 key cannot be in L1 (keys are `&str`).
                            Err(_) => continue,
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(cache = %self.name, error = %e, "unreadable invalidation; L1 flushed");
                    cache.flush_local();
                }
            }
        } else if channel == self.channel {
            let payload = msg.get_payload_bytes();
            let text = String::from_utf8_lossy(payload);
            let mut parts = text.splitn(3, '\n');
            let (Some(kind), Some(source), Some(what)) = (parts.next(), parts.next(), parts.next())
            else {
                tracing::warn!(cache = %self.name, "malformed invalidation message ignored");
                return;
            };
            if source == self.source {
                return;
            }
            inc(&cache.counters.invalidations_received);
            match kind {
                "k" => cache.invalidate_local(what).await,
                "p" => cache.invalidate_pattern_local(what),
                _ => tracing::warn!(cache = %self.name, kind, "unknown invalidation kind ignored"),
            }
        }
    }
}

/// Opens a RESP2 pub/sub connection and learns its `CLIENT ID` first (the
/// tracking connection redirects to that id). TCP only.
async fn open_pubsub(client: &redis::Client) -> std::result::Result<(i64, PubSub), BoxError> {
    let info = client.get_connection_info();
    let (host, port) = match info.addr() {
        ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
        other => {
            return Err(
                format!("client tracking needs a plain TCP Redis address, not {other:?}").into(),
            );
        }
    };
    let mut stream = TcpStream::connect((host.as_str(), port)).await?;
    stream.set_nodelay(true)?;
    let settings = info.redis_settings();
    if let Some(password) = settings.password() {
        let mut auth = redis::cmd("AUTH");
        if let Some(user) = settings.username() {
            auth.arg(user);
        }
        auth.arg(password);
        stream.write_all(&auth.get_packed_command()).await?;
        let line = read_line(&mut stream).await?;
        if !line.starts_with('+') {
            return Err(format!("AUTH refused: {line}").into());
        }
    }
    stream
        .write_all(&redis::cmd("CLIENT").arg("ID").get_packed_command())
        .await?;
    let line = read_line(&mut stream).await?;
    let id: i64 = line
        .strip_prefix(':')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("unexpected reply to CLIENT ID: {line}"))?;
    let pubsub = PubSub::new(settings, stream).await?;
    Ok((id, pubsub))
}

/// Reads one RESP line (without `\r\n`), at most 1 KiB.
async fn read_line(stream: &mut TcpStream) -> std::result::Result<String, BoxError> {
    let mut line = Vec::with_capacity(16);
    while line.len() < 1024 {
        let b = stream.read_u8().await?;
        if b == b'\n' && line.last() == Some(&b'\r') {
            line.pop();
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(b);
    }
    Err("reply line longer than 1 KiB".into())
}
