//! Redis Streams backend (feature `redis-streams`).
//!
//! Mapping of the topology onto Redis:
//!
//! * a queue is a stream `<prefix>q:<queue>` with one consumer group
//!   ([`RedisStreamsConfig::group`]); every replica of a service reads with
//!   its own consumer name (`XREADGROUP`), so each entry goes to one replica;
//! * an exchange is a set of bindings `<prefix>b:<exchange>` (`pattern\nqueue`)
//!   plus its kind in `<prefix>x:<exchange>`; publishing routes the routing
//!   key through the bindings (topic `*` / `#`) and `XADD`s to every matching
//!   stream with `MAXLEN ~` [`RedisStreamsConfig::max_len`] (bounded memory);
//!   no match is [`PublishOutcome::Unroutable`]; an `XADD` that Redis refuses
//!   (`OOM`, `WRONGTYPE`, …) is [`PublishOutcome::Nacked`] for that message
//!   only, the others of the same pipelined batch keep their own outcome;
//! * queue arguments live in `<prefix>qa:<queue>`, so declaring a queue with
//!   other arguments is [`Error::TopologyMismatch`] naming the argument;
//! * dead-lettering `XADD`s the message to the stream bound to the queue's
//!   dead-letter exchange with its dead-letter routing key and `XACK`s the
//!   original only once that write is confirmed. If it is not (no stream
//!   bound for the key, the key is not a stream, `OOM`, connection lost),
//!   the original stays pending — it is delivered again after
//!   [`RedisStreamsConfig::claim_min_idle`] or when its consumer subscribes
//!   again — and the failure is logged at `error` level and counted in
//!   [`RedisStreams::dead_letter_failures`] and [`Health::dead_letter_failures`]
//!   (consumer dead letters on RabbitMQ and in memory are kept the same way).
//!   `x-message-ttl` is honoured at read time (entry id time older than the
//!   TTL → dead-letter with `x-first-death-reason: expired`, through the same
//!   path, so an expired entry whose dead letter cannot be written stays
//!   pending too — where RabbitMQ drops an expired message its DLX cannot
//!   route);
//! * every redelivery reports the real delivery count from the pending list
//!   (`XPENDING`), and an entry delivered more than
//!   [`RedisStreamsConfig::delivery_limit`] times is dead-lettered with reason
//!   `delivery-limit` instead of delivered — both when it is taken over from
//!   a stuck consumer (idle longer than [`RedisStreamsConfig::claim_min_idle`],
//!   `XAUTOCLAIM`) and when a consumer re-reads its own pending entries on
//!   subscribe (a process that crashes on a message and restarts under the
//!   same consumer name, e.g. the default `finsight-<pid>` in a container,
//!   where the pid is always 1);
//! * `XAUTOCLAIM` continues from the cursor Redis returned in the previous
//!   round (one call looks at no more than ten times its `COUNT` entries), so
//!   a long pending list is scanned through instead of from its head every
//!   [`RedisStreamsConfig::claim_interval`];
//! * the pending list is bounded: a consumer reads only as many entries as
//!   it has free prefetch slots, so the group's pending entries never exceed
//!   the sum of its consumers' prefetch.
//!
//! Publishing goes through one writer task that pipelines up to
//! [`RedisStreamsConfig::publish_window`] `XADD`s per round trip, in order.
//!
//! # Durability
//!
//! A confirmed publish means Redis accepted the entry **in memory**. It
//! survives a Redis restart only if the server persists every write before
//! answering (`appendonly yes` with `appendfsync always`); with the default
//! `appendfsync everysec` up to about a second of confirmed entries can be
//! lost on a crash, and without persistence a restart loses every stream
//! (entries not yet consumed included) and the topology, which is then
//! declared again (see below).
//!
//! # Connections and `Health`
//!
//! Publishing, acks and health use one shared connection (redis-rs
//! `ConnectionManager`, named `finsight-bus:<key_prefix>` in `CLIENT LIST`),
//! which reconnects by itself after an error. [`Health::reconnects`] counts
//! how often that connection was re-established: after a connection error
//! the transport probes it (`CLIENT GETNAME`, every 50 ms to 2 s) and counts
//! one reconnect when the probe answers on a new connection — so several
//! failed commands during one outage count once, and an error that did not
//! replace the connection counts nothing. Where `CLIENT` commands are not
//! allowed (ACL, renamed), it counts each outage that ended instead. Each
//! subscription reads on a connection of its own, opened on every
//! (re)subscribe; those are counted by the consumer
//! ([`crate::ConsumerStats::subscriptions`]), not here. [`Health::state`] is
//! the result of that probe. After a reconnect the consumer re-reads its own
//! pending entries first (`XREADGROUP … 0`), and the topology (groups,
//! bindings) is re-declared if the server lost it (a restart without
//! persistence; counted in [`RedisStreams::topology_redeclares`]).

use crate::envelope::{Headers, Message};
use crate::error::{Error, Result};
use crate::memory::mark_expired;
use crate::topology::{ArgValue, ExchangeKind, QueueSpec, Topology};
use crate::transport::{
    Acker, ConnectionState, Delivery, DeliveryStream, Health, PendingConfirm, PublishOptions,
    PublishOutcome, QueueDepth, SubscribeOptions, Transport,
};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use redis::aio::ConnectionManager;
use redis::streams::{
    StreamAutoClaimReply, StreamId, StreamInfoGroupsReply, StreamPendingCountReply, StreamReadReply,
};
use redis::{AsyncCommands, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::{debug, error, info, warn};

/// Redis Streams backend settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisStreamsConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// Prefix of every key (default `finsight:`).
    pub key_prefix: String,
    /// Consumer group (default `finsight`).
    pub group: String,
    /// Approximate bound of each stream (`XADD MAXLEN ~`, default 100 000).
    pub max_len: usize,
    /// How long one `XREADGROUP` blocks (default 1 s).
    pub block: Duration,
    /// Pending entries idle this long are reclaimed (default 30 s). Keep it
    /// above the longest time a message can take to handle (handler timeout
    /// × attempts plus backoff): an entry idle this long is taken over even
    /// from the consumer still handling it, and then handled twice.
    pub claim_min_idle: Duration,
    /// How often a consumer looks for stuck entries (default 5 s).
    pub claim_interval: Duration,
    /// Deliveries an entry may have (default 5): one delivered more often
    /// (taken over from a stuck consumer, or re-read by its own consumer on
    /// subscribe) is dead-lettered with reason `delivery-limit` instead of
    /// delivered again.
    pub delivery_limit: u32,
    /// Publishes in flight at most (default 256).
    pub publish_window: usize,
    /// How long a publisher reuses the bindings it read for an exchange
    /// before reading them again (default 1 s): bindings declared by other
    /// processes become visible within this time.
    pub binding_refresh: Duration,
}

impl RedisStreamsConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            key_prefix: "finsight:".into(),
            group: "finsight".into(),
            max_len: 100_000,
            block: Duration::from_secs(1),
            claim_min_idle: Duration::from_secs(30),
            claim_interval: Duration::from_secs(5),
            delivery_limit: 5,
            publish_window: 256,
            binding_refresh: Duration::from_secs(1),
        }
    }
}

/// The Redis Streams transport. Cheap to clone.
#[derive(Clone)]
pub struct RedisStreams {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStreams")
            .field("endpoint", &crate::redact(&self.inner.config.url))
            .field("prefix", &self.inner.config.key_prefix)
            .finish()
    }
}

struct Inner {
    config: RedisStreamsConfig,
    client: redis::Client,
    conn: ConnectionManager,
    topology: parking_lot::Mutex<Option<Topology>>,
    window: Arc<Semaphore>,
    writer: mpsc::Sender<Write>,
    unconfirmed: AtomicU64,
    redeclares: AtomicU64,
    /// Times the shared connection was re-established (see the module docs).
    reconnects: AtomicU64,
    /// A probe task watches the shared connection after an error.
    probing: AtomicBool,
    /// One probe at a time, so a new connection is counted once.
    probe_lock: tokio::sync::Mutex<()>,
    /// `CLIENT SETNAME` of the shared connection.
    client_name: String,
    /// Dead letters that could not be written (original left pending).
    dead_letter_failures: AtomicU64,
    /// Bindings per exchange, re-read after `binding_refresh`; one entry per
    /// exchange published to.
    bindings: parking_lot::Mutex<HashMap<String, Bindings>>,
}

#[derive(Clone)]
struct Bindings {
    read_at: tokio::time::Instant,
    kind: ExchangeKind,
    /// (pattern, stream key)
    routes: Arc<Vec<(String, String)>>,
}

struct Write {
    streams: Vec<String>,
    message: Message,
    done: oneshot::Sender<PublishOutcome>,
    /// Window slot, freed when the write is answered.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// `finsight-bus:<key_prefix>`, with what `CLIENT SETNAME` refuses (spaces,
/// control characters, non-ASCII) replaced by `_`.
fn connection_name(prefix: &str) -> String {
    let prefix: String = prefix
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    format!("finsight-bus:{prefix}")
}

/// An error after which redis-rs replaces the connection.
fn breaks_connection(e: &redis::RedisError) -> bool {
    e.is_unrecoverable_error() || e.is_io_error()
}

/// What a probe of the shared connection found.
enum Probe {
    /// The named connection answered.
    Same,
    /// A new connection answered (and is named now): one reconnect.
    New,
    /// `CLIENT` is not allowed; `PING` answered.
    Unknown,
}

/// Asks the shared connection who it is; a connection without our name is
/// a new one: counted in `reconnects`.
async fn probe(inner: &Inner) -> redis::RedisResult<Probe> {
    let _one = inner.probe_lock.lock().await;
    let mut c = inner.conn.clone();
    let name: redis::RedisResult<Option<String>> = redis::cmd("CLIENT")
        .arg("GETNAME")
        .query_async(&mut c)
        .await;
    match name {
        Ok(Some(_)) => Ok(Probe::Same),
        Ok(None) => {
            let () = redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(&inner.client_name)
                .query_async(&mut c)
                .await?;
            let n = inner.reconnects.fetch_add(1, Ordering::Relaxed) + 1;
            info!(reconnects = n, "redis connection re-established");
            Ok(Probe::New)
        }
        Err(e) if breaks_connection(&e) => Err(e),
        Err(_) => {
            let _: String = redis::cmd("PING").query_async(&mut c).await?;
            Ok(Probe::Unknown)
        }
    }
}

/// Notes an error of the shared connection: if it replaces the connection,
/// one task probes it until it answers (see the module docs).
fn note_error(inner: &Arc<Inner>, e: &redis::RedisError) {
    if breaks_connection(e) && !inner.probing.swap(true, Ordering::AcqRel) {
        tokio::spawn(watch_reconnect(Arc::downgrade(inner)));
    }
}

async fn watch_reconnect(inner: std::sync::Weak<Inner>) {
    let mut delay = Duration::from_millis(50);
    loop {
        tokio::time::sleep(delay).await;
        let Some(i) = inner.upgrade() else { return };
        match probe(&i).await {
            Ok(p) => {
                if matches!(p, Probe::Unknown) {
                    let n = i.reconnects.fetch_add(1, Ordering::Relaxed) + 1;
                    info!(reconnects = n, "redis connection answers again");
                }
                i.probing.store(false, Ordering::Release);
                return;
            }
            Err(e) if breaks_connection(&e) => {
                debug!(error = %e, retry_in = ?delay, "redis still unreachable");
            }
            Err(e) => {
                debug!(error = %e, "redis probe failed");
                i.probing.store(false, Ordering::Release);
                return;
            }
        }
        drop(i);
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

fn lost(op: &str, e: &redis::RedisError) -> Error {
    debug!(op, error = %e, "redis operation failed");
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
        Error::ConnectionLost
    } else {
        Error::backend(op.to_owned(), e.to_string())
    }
}

impl RedisStreams {
    /// Connects to `config.url` (one multiplexed connection for publishing
    /// and acks; one more per subscription for blocking reads).
    ///
    /// # Errors
    /// [`Error::Connect`] when Redis cannot be reached.
    pub async fn connect(config: RedisStreamsConfig) -> Result<Self> {
        if config.publish_window == 0 {
            return Err(Error::Config("publish_window must be at least 1".into()));
        }
        let connect = |e: redis::RedisError| Error::Connect {
            endpoint: crate::redact(&config.url),
            source: Box::new(e),
        };
        let client = redis::Client::open(config.url.as_str()).map_err(connect)?;
        let conn = ConnectionManager::new(client.clone())
            .await
            .map_err(connect)?;
        let (tx, rx) = mpsc::channel(config.publish_window);
        let client_name = connection_name(&config.key_prefix);
        let inner = Arc::new(Inner {
            window: Arc::new(Semaphore::new(config.publish_window)),
            config,
            client,
            conn: conn.clone(),
            topology: parking_lot::Mutex::new(None),
            writer: tx,
            unconfirmed: AtomicU64::new(0),
            redeclares: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            probe_lock: tokio::sync::Mutex::new(()),
            client_name,
            dead_letter_failures: AtomicU64::new(0),
            bindings: parking_lot::Mutex::new(HashMap::new()),
        });
        // Names the connection, so a probe can tell a new one (no name) from it.
        let named: redis::RedisResult<()> = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(&inner.client_name)
            .query_async(&mut inner.conn.clone())
            .await;
        if let Err(e) = named {
            debug!(error = %e, "CLIENT SETNAME refused; reconnects are counted per outage");
        }
        tokio::spawn(writer(
            conn,
            rx,
            inner.config.max_len,
            Arc::downgrade(&inner),
        ));
        Ok(Self { inner })
    }

    /// The error for a failed command on the shared connection; starts the
    /// reconnect probe when the connection broke.
    fn failed(&self, op: &str, e: &redis::RedisError) -> Error {
        note_error(&self.inner, e);
        lost(op, e)
    }

    /// How often the shared connection was re-established (the same number
    /// as [`Health::reconnects`]; see the module docs). Free: one atomic load.
    pub fn reconnects(&self) -> u64 {
        self.inner.reconnects.load(Ordering::Relaxed)
    }

    /// How often the topology was declared again because Redis had lost it
    /// (a restart without persistence). Free: one atomic load.
    pub fn topology_redeclares(&self) -> u64 {
        self.inner.redeclares.load(Ordering::Relaxed)
    }

    /// Dead letters that could not be written (no stream bound for the
    /// dead-letter routing key, the key is not a stream, `OOM`, connection
    /// lost); each left its original pending, to be tried again. Free: one
    /// atomic load.
    pub fn dead_letter_failures(&self) -> u64 {
        self.inner.dead_letter_failures.load(Ordering::Relaxed)
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}{kind}:{name}", self.inner.config.key_prefix)
    }

    fn stream(&self, queue: &str) -> String {
        self.key("q", queue)
    }

    async fn declare_topology(&self, t: &Topology) -> Result<()> {
        let mut c = self.inner.conn.clone();
        for ex in [&t.exchange, &t.dead_letter_exchange] {
            let key = self.key("x", &ex.name);
            let _: () = c
                .hset_nx(&key, "kind", ex.kind.as_str())
                .await
                .map_err(|e| self.failed("HSETNX", &e))?;
            let have: Option<String> = c
                .hget(&key, "kind")
                .await
                .map_err(|e| self.failed("HGET", &e))?;
            if have.as_deref().is_some_and(|k| k != ex.kind.as_str()) {
                return Err(Error::TopologyMismatch {
                    object: format!("exchange `{}`", ex.name),
                    argument: "type".into(),
                    detail: format!("declared as {}", have.unwrap_or_default()),
                });
            }
        }
        for (ex, q) in t.bound_queues() {
            let key = self.key("qa", &q.name);
            let want = queue_args(q);
            let have: HashMap<String, String> = c
                .hgetall(&key)
                .await
                .map_err(|e| self.failed("HGETALL", &e))?;
            if have.is_empty() {
                let _: () = c
                    .hset_multiple(&key, &want)
                    .await
                    .map_err(|e| self.failed("HSET", &e))?;
            } else {
                for (k, v) in &want {
                    if have.get(k) != Some(v) {
                        return Err(Error::TopologyMismatch {
                            object: format!("queue `{}`", q.name),
                            argument: k.clone(),
                            detail: format!("stored {:?}, declared {v:?}", have.get(k)),
                        });
                    }
                }
            }
            let r: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(self.stream(&q.name))
                .arg(&self.inner.config.group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut c)
                .await;
            if let Err(e) = r
                && e.code() != Some("BUSYGROUP")
            {
                return Err(self.failed("XGROUP CREATE", &e));
            }
            let members: Vec<String> = q
                .bindings
                .iter()
                .map(|b| format!("{b}\n{}", q.name))
                .collect();
            if !members.is_empty() {
                let _: () = c
                    .sadd(self.key("b", &ex.name), members)
                    .await
                    .map_err(|e| self.failed("SADD", &e))?;
            }
        }
        Ok(())
    }

    /// Re-declares the topology when the server lost it (restart without
    /// persistence): checked through the main exchange's kind key.
    async fn ensure_declared(&self) -> Result<()> {
        let Some(t) = self.inner.topology.lock().clone() else {
            return Ok(());
        };
        let mut c = self.inner.conn.clone();
        let exists: bool = c
            .exists(self.key("x", &t.exchange.name))
            .await
            .map_err(|e| self.failed("EXISTS", &e))?;
        if !exists {
            warn!("redis lost the bus topology (restart?); re-declaring it");
            self.inner.redeclares.fetch_add(1, Ordering::Relaxed);
            self.declare_topology(&t).await?;
        }
        Ok(())
    }

    async fn routes(&self, exchange: &str, routing_key: &str) -> Result<Vec<String>> {
        let cached = self.inner.bindings.lock().get(exchange).cloned();
        let b = match cached {
            Some(b) if b.read_at.elapsed() < self.inner.config.binding_refresh => b,
            _ => {
                let b = self.read_bindings(exchange).await?;
                self.inner
                    .bindings
                    .lock()
                    .insert(exchange.to_owned(), b.clone());
                b
            }
        };
        let mut out: Vec<String> = Vec::new();
        for (pattern, stream) in b.routes.iter() {
            if b.kind.matches(pattern, routing_key) && !out.contains(stream) {
                out.push(stream.clone());
            }
        }
        Ok(out)
    }

    async fn read_bindings(&self, exchange: &str) -> Result<Bindings> {
        let mut c = self.inner.conn.clone();
        let kind: Option<String> = c
            .hget(self.key("x", exchange), "kind")
            .await
            .map_err(|e| self.failed("HGET", &e))?;
        let kind = match kind.as_deref() {
            Some("topic") => ExchangeKind::Topic,
            Some("direct") => ExchangeKind::Direct,
            Some("fanout") => ExchangeKind::Fanout,
            _ => {
                // Lost on the server? Re-declare what we know, else it is undeclared.
                let known = self
                    .inner
                    .topology
                    .lock()
                    .as_ref()
                    .is_some_and(|t| t.exchange_named(exchange).is_some());
                if known {
                    self.ensure_declared().await?;
                    return Box::pin(self.read_bindings(exchange)).await;
                }
                return Err(Error::NotDeclared {
                    kind: "exchange",
                    name: exchange.to_owned(),
                });
            }
        };
        let members: Vec<String> = c
            .smembers(self.key("b", exchange))
            .await
            .map_err(|e| self.failed("SMEMBERS", &e))?;
        let routes = members
            .iter()
            .filter_map(|m| m.split_once('\n'))
            .map(|(p, q)| (p.to_owned(), self.stream(q)))
            .collect();
        Ok(Bindings {
            read_at: tokio::time::Instant::now(),
            kind,
            routes: Arc::new(routes),
        })
    }

    async fn publish_routed(
        &self,
        exchange: &str,
        message: Message,
        options: PublishOptions,
    ) -> Result<PendingConfirm> {
        let permit = self.inner.window.clone().acquire_owned().await?;
        let streams = self.routes(exchange, &message.routing_key).await?;
        if streams.is_empty() {
            return Ok(PendingConfirm::ready(if options.mandatory {
                PublishOutcome::Unroutable {
                    code: 312,
                    text: format!(
                        "NO_ROUTE: no stream bound on `{exchange}` for `{}`",
                        message.routing_key
                    ),
                }
            } else {
                PublishOutcome::Confirmed
            }));
        }
        let (tx, rx) = oneshot::channel();
        self.inner.unconfirmed.fetch_add(1, Ordering::Relaxed);
        let w = Write {
            streams,
            message,
            done: tx,
            _permit: permit,
        };
        if self.inner.writer.send(w).await.is_err() {
            self.inner.unconfirmed.fetch_sub(1, Ordering::Relaxed);
            return Err(Error::Closed);
        }
        Ok(PendingConfirm::waiting(async move {
            rx.await.unwrap_or(PublishOutcome::ConnectionLost)
        }))
    }
}

fn queue_args(q: &QueueSpec) -> Vec<(String, String)> {
    let mut v = vec![
        ("durable".to_owned(), q.durable.to_string()),
        (
            "x-dead-letter-exchange".to_owned(),
            q.dead_letter_exchange.clone().unwrap_or_default(),
        ),
        (
            "x-dead-letter-routing-key".to_owned(),
            q.dead_letter_routing_key.clone().unwrap_or_default(),
        ),
        (
            "x-message-ttl".to_owned(),
            q.message_ttl
                .map(|t| t.as_millis().to_string())
                .unwrap_or_default(),
        ),
        (
            "x-max-length".to_owned(),
            q.max_length.map(|m| m.to_string()).unwrap_or_default(),
        ),
    ];
    for (k, a) in &q.arguments {
        let s = match a {
            ArgValue::Int(i) => i.to_string(),
            ArgValue::Str(s) => s.clone(),
        };
        v.push((k.clone(), s));
    }
    v
}

fn entry_fields(m: &Message) -> Vec<(String, Vec<u8>)> {
    let mut f = Vec::with_capacity(m.headers.len() + 4);
    f.push(("body".to_owned(), m.body.to_vec()));
    f.push(("rk".to_owned(), m.routing_key.clone().into_bytes()));
    f.push((
        "p".to_owned(),
        if m.persistent {
            b"1".to_vec()
        } else {
            b"0".to_vec()
        },
    ));
    if let Some(id) = &m.message_id {
        f.push(("id".to_owned(), id.clone().into_bytes()));
    }
    for (k, v) in m.headers.iter() {
        f.push((format!("h:{k}"), v.clone().into_bytes()));
    }
    f
}

fn value_bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        _ => None,
    }
}

fn entry_message(e: &StreamId) -> Message {
    let mut headers = Headers::new();
    let mut body = Bytes::new();
    let mut routing_key = String::new();
    let mut message_id = None;
    let mut persistent = true;
    for (k, v) in &e.map {
        let Some(b) = value_bytes(v) else { continue };
        match k.as_str() {
            "body" => body = Bytes::from(b),
            "rk" => routing_key = String::from_utf8_lossy(&b).into_owned(),
            "id" => message_id = Some(String::from_utf8_lossy(&b).into_owned()),
            "p" => persistent = b != b"0",
            _ => {
                if let Some(h) = k.strip_prefix("h:") {
                    headers.insert(h.to_owned(), String::from_utf8_lossy(&b).into_owned());
                }
            }
        }
    }
    Message {
        body,
        headers: Arc::new(headers),
        routing_key,
        message_id,
        persistent,
    }
}

/// Milliseconds part of a stream entry id (`<ms>-<seq>`).
fn entry_ms(id: &str) -> Option<u64> {
    id.split_once('-').and_then(|(ms, _)| ms.parse().ok())
}

async fn writer(
    mut conn: ConnectionManager,
    mut rx: mpsc::Receiver<Write>,
    max_len: usize,
    inner: std::sync::Weak<Inner>,
) {
    let mut batch = Vec::with_capacity(256);
    while rx.recv_many(&mut batch, 256).await > 0 {
        let mut pipe = redis::pipe();
        // One reply per XADD: a refused one fails its own message only.
        pipe.ignore_errors();
        for w in &batch {
            let fields = entry_fields(&w.message);
            for s in &w.streams {
                pipe.cmd("XADD")
                    .arg(s)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(max_len)
                    .arg("*");
                for (k, v) in &fields {
                    pipe.arg(k).arg(v.as_slice());
                }
            }
        }
        let r: redis::RedisResult<Vec<redis::RedisResult<Value>>> =
            pipe.query_async(&mut conn).await;
        let strong = inner.upgrade();
        if let Some(i) = &strong {
            i.unconfirmed
                .fetch_sub(batch.len() as u64, Ordering::Relaxed);
        }
        match r {
            Ok(replies) => {
                let mut replies = replies.into_iter();
                for w in batch.drain(..) {
                    let mut outcome = PublishOutcome::Confirmed;
                    for s in &w.streams {
                        match replies.next() {
                            Some(Ok(_)) => {}
                            Some(Err(e)) => {
                                warn!(stream = %s, error = %e, "XADD refused");
                                if breaks_connection(&e)
                                    && let Some(i) = &strong
                                {
                                    note_error(i, &e);
                                }
                                outcome = PublishOutcome::Nacked;
                            }
                            None => outcome = PublishOutcome::ConnectionLost,
                        }
                    }
                    let _ = w.done.send(outcome);
                }
            }
            Err(e) => {
                warn!(error = %e, n = batch.len(), "XADD batch failed");
                if let Some(i) = &strong {
                    note_error(i, &e);
                }
                for w in batch.drain(..) {
                    let _ = w.done.send(PublishOutcome::ConnectionLost);
                }
            }
        }
    }
}

impl Transport for RedisStreams {
    fn declare<'a>(&'a self, topology: &'a Topology) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.declare_topology(topology).await?;
            *self.inner.topology.lock() = Some(topology.clone());
            self.inner.bindings.lock().clear();
            Ok(())
        })
    }

    fn send<'a>(
        &'a self,
        exchange: &'a str,
        message: Message,
        options: PublishOptions,
    ) -> BoxFuture<'a, Result<PendingConfirm>> {
        Box::pin(self.publish_routed(exchange, message, options))
    }

    fn subscribe<'a>(
        &'a self,
        queue: &'a str,
        options: SubscribeOptions,
    ) -> BoxFuture<'a, Result<Box<dyn DeliveryStream>>> {
        Box::pin(async move {
            let spec =
                Topology::require_declared_queue(self.inner.topology.lock().as_ref(), queue)?;
            self.ensure_declared().await?;
            // A dedicated connection: XREADGROUP BLOCK would stall the shared one.
            let reader = self
                .inner
                .client
                .get_multiplexed_async_connection_with_config(
                    &redis::AsyncConnectionConfig::new().set_response_timeout(Some(
                        self.inner.config.block + Duration::from_secs(5),
                    )),
                )
                .await
                .map_err(|e| lost("connect", &e))?;
            let prefetch = usize::from(options.prefetch.max(1));
            let (tx, rx) = mpsc::channel(prefetch);
            let slots = Arc::new(Semaphore::new(prefetch));
            let shared = Arc::new(Sub {
                transport: self.clone(),
                stream: self.stream(queue),
                consumer: options.consumer_name.clone(),
                spec,
            });
            let task = tokio::spawn(read_loop(shared, reader, tx, slots));
            let s: Box<dyn DeliveryStream> = Box::new(RedisStream { rx, task });
            Ok(s)
        })
    }

    fn health(&self) -> BoxFuture<'_, Health> {
        Box::pin(async move {
            let c = self.inner.conn.clone();
            let state = match probe(&self.inner).await {
                Ok(_) => ConnectionState::Connected,
                Err(e) => {
                    note_error(&self.inner, &e);
                    ConnectionState::Reconnecting
                }
            };
            let topology = self.inner.topology.lock().clone();
            let mut queues = Vec::new();
            let mut dlq = None;
            if let Some(t) = topology {
                let group = self.inner.config.group.clone();
                let info = |q: String| {
                    let mut c = c.clone();
                    let group = group.clone();
                    let key = self.stream(&q);
                    async move {
                        let r: StreamInfoGroupsReply = redis::cmd("XINFO")
                            .arg("GROUPS")
                            .arg(key)
                            .query_async(&mut c)
                            .await
                            .ok()?;
                        r.groups
                            .into_iter()
                            .find(|g| g.name == group)
                            .map(|g| (g.lag.map(|l| l as u64), g.pending as u64))
                    }
                };
                for q in &t.queues {
                    let i = info(q.name.clone()).await;
                    queues.push(QueueDepth {
                        queue: q.name.clone(),
                        depth: i.and_then(|(l, _)| l),
                        pending: i.map(|(_, p)| p),
                    });
                }
                dlq = info(t.dead_letter_queue.name.clone())
                    .await
                    .and_then(|(l, _)| l);
            }
            Health {
                state,
                reconnects: self.inner.reconnects.load(Ordering::Relaxed),
                unconfirmed: self.inner.unconfirmed.load(Ordering::Relaxed),
                queues,
                dead_letter_depth: dlq,
                dead_letter_failures: self.dead_letter_failures(),
            }
        })
    }

    fn close(&self, deadline: Duration) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let all = u32::try_from(self.inner.config.publish_window).unwrap_or(u32::MAX);
            if tokio::time::timeout(deadline, self.inner.window.acquire_many(all))
                .await
                .is_err()
            {
                warn!(
                    unconfirmed = self.inner.unconfirmed.load(Ordering::Relaxed),
                    "closing with unconfirmed publishes"
                );
            }
            self.inner.window.close();
            Ok(())
        })
    }
}

struct Sub {
    transport: RedisStreams,
    stream: String,
    consumer: String,
    spec: QueueSpec,
}

impl Sub {
    /// Dead-letters `m` (the message of entry `id` of this queue) through
    /// the queue's DLX with `mandatory` on. `Ok` when the original may be
    /// acked: the dead letter was written, or the queue has no DLX (dropped,
    /// as RabbitMQ does). `Err(outcome)` when it was not written
    /// (unroutable, refused by Redis, connection lost): logged at `error`,
    /// counted, and the original must stay pending to be tried again.
    async fn dead_letter(&self, id: &str, mut m: Message) -> std::result::Result<(), String> {
        let Some(dlx) = self.spec.dead_letter_target(&mut m) else {
            warn!(queue = %self.spec.name, "no dead-letter exchange: message dropped");
            return Ok(());
        };
        let routing_key = m.routing_key.clone();
        let why = match self
            .transport
            .publish_routed(dlx, m, PublishOptions { mandatory: true })
            .await
        {
            Ok(p) => match p.await {
                PublishOutcome::Confirmed => return Ok(()),
                other => format!("{other:?}"),
            },
            Err(e) => e.to_string(),
        };
        let failures = self
            .transport
            .inner
            .dead_letter_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        error!(
            queue = %self.spec.name,
            id,
            dead_letter_exchange = %dlx,
            %routing_key,
            outcome = %why,
            failures,
            "dead letter not written; the entry stays pending and is delivered again later"
        );
        Err(why)
    }

    async fn xack(&self, id: &str) -> Result<()> {
        let mut c = self.transport.inner.conn.clone();
        let _: i64 = c
            .xack(&self.stream, &self.transport.inner.config.group, &[id])
            .await
            .map_err(|e| self.transport.failed("XACK", &e))?;
        Ok(())
    }
}

async fn read_loop(
    sub: Arc<Sub>,
    mut reader: redis::aio::MultiplexedConnection,
    tx: mpsc::Sender<Result<Delivery>>,
    slots: Arc<Semaphore>,
) {
    let cfg = sub.transport.inner.config.clone();
    // First our own pending entries (after a reconnect or a restart under
    // the same consumer name), then new ones.
    let mut cursor = "0".to_owned();
    let mut last_claim = tokio::time::Instant::now();
    // Where the next `XAUTOCLAIM` continues in the group's pending list.
    let mut claim_from = CLAIM_START.to_owned();
    let r: Result<()> = async {
        loop {
            let Ok(mut permit) = slots.clone().acquire_owned().await else {
                return Ok(());
            };
            let extra = slots.available_permits();
            if extra > 0
                && let Ok(p) = slots
                    .clone()
                    .try_acquire_many_owned(u32::try_from(extra).unwrap_or(u32::MAX))
            {
                permit.merge(p);
            }
            let count = permit.num_permits();
            let mut entries: Vec<(StreamId, bool, u32)> = Vec::new();
            if last_claim.elapsed() >= cfg.claim_interval {
                last_claim = tokio::time::Instant::now();
                entries.extend(reclaim(&sub, &mut reader, count, &mut claim_from).await?);
            }
            if entries.is_empty() {
                let mut cmd = redis::cmd("XREADGROUP");
                cmd.arg("GROUP")
                    .arg(&cfg.group)
                    .arg(&sub.consumer)
                    .arg("COUNT")
                    .arg(count);
                if cursor == ">" {
                    cmd.arg("BLOCK")
                        .arg(u64::try_from(cfg.block.as_millis()).unwrap_or(1000));
                }
                cmd.arg("STREAMS").arg(&sub.stream).arg(&cursor);
                let reply: Option<StreamReadReply> = match cmd.query_async(&mut reader).await {
                    Ok(r) => r,
                    Err(e) if e.code() == Some("NOGROUP") => {
                        recreate_group(&sub, &mut reader).await?;
                        continue;
                    }
                    Err(e) => return Err(lost("XREADGROUP", &e)),
                };
                let ids: Vec<StreamId> = reply
                    .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
                    .unwrap_or_default();
                if cursor != ">" {
                    if ids.is_empty() {
                        cursor = ">".into();
                    } else if let Some(last) = ids.last() {
                        cursor = last.id.clone();
                    }
                    // Re-read from our own pending list: delivered before.
                    entries.extend(redeliveries(&sub, &mut reader, ids).await?);
                } else {
                    entries.extend(ids.into_iter().map(|i| (i, false, 1)));
                }
            }
            let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
            for (entry, redelivered, count) in entries {
                let message = entry_message(&entry);
                if let (Some(ttl), Some(ms)) = (sub.spec.message_ttl, entry_ms(&entry.id))
                    && now_ms.saturating_sub(ms)
                        >= u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
                {
                    let mut m = message;
                    mark_expired(&mut m, &sub.spec.name);
                    if sub.dead_letter(&entry.id, m).await.is_ok() {
                        sub.xack(&entry.id).await?;
                    }
                    continue;
                }
                let Some(one) = permit.split(1) else { break };
                let d = Delivery {
                    message,
                    redelivered,
                    delivery_count: count,
                    acker: Box::new(RedisAcker {
                        sub: sub.clone(),
                        id: entry.id,
                        _slot: one,
                    }),
                };
                if tx.send(Ok(d)).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
    .await;
    if let Err(e) = r {
        let _ = tx.send(Err(e)).await;
    }
}

/// Start of the pending list for `XAUTOCLAIM`.
const CLAIM_START: &str = "0-0";

/// `XAUTOCLAIM`s entries idle longer than `claim_min_idle`, starting at
/// `from` (see [`redeliveries`] for what happens to them). One call claims
/// at most `count` entries and looks at no more than ten times that many
/// (Redis 7), so `from` is set to the cursor Redis returns: the next round
/// goes on where this one stopped, and a pending list longer than one call
/// covers is scanned through instead of from its start every time (where
/// entries still in progress at its head would hide stuck ones behind them).
/// Redis returns `0-0` at the end of the list: the next round starts over.
async fn reclaim(
    sub: &Sub,
    conn: &mut redis::aio::MultiplexedConnection,
    count: usize,
    from: &mut String,
) -> Result<Vec<(StreamId, bool, u32)>> {
    let cfg = &sub.transport.inner.config;
    let idle = u64::try_from(cfg.claim_min_idle.as_millis()).unwrap_or(u64::MAX);
    let reply: StreamAutoClaimReply = match redis::cmd("XAUTOCLAIM")
        .arg(&sub.stream)
        .arg(&cfg.group)
        .arg(&sub.consumer)
        .arg(idle)
        .arg(from.as_str())
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await
    {
        Ok(r) => r,
        Err(e) if e.code() == Some("NOGROUP") => {
            CLAIM_START.clone_into(from);
            recreate_group(sub, conn).await?;
            return Ok(Vec::new());
        }
        Err(e) => return Err(lost("XAUTOCLAIM", &e)),
    };
    // An empty cursor (not seen from Redis) would be a syntax error next time.
    if reply.next_stream_id.is_empty() {
        CLAIM_START.clone_into(from);
    } else {
        from.clone_from(&reply.next_stream_id);
    }
    let claimed = reply.claimed.len();
    let out = redeliveries(sub, conn, reply.claimed).await?;
    if claimed > 0 {
        debug!(stream = %sub.stream, claimed, delivering = out.len(), next = %from, "reclaimed stuck entries");
    }
    Ok(out)
}

/// The stream or its group is gone while the topology is still there (the
/// key was deleted or evicted, or `XADD` created it again without a group):
/// creates the group from the start of the stream, so entries added since
/// are delivered.
async fn recreate_group(sub: &Sub, conn: &mut redis::aio::MultiplexedConnection) -> Result<()> {
    warn!(stream = %sub.stream, group = %sub.transport.inner.config.group, "consumer group missing; creating it");
    let r: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&sub.stream)
        .arg(&sub.transport.inner.config.group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match r {
        Err(e) if e.code() != Some("BUSYGROUP") => Err(lost("XGROUP CREATE", &e)),
        _ => Ok(()),
    }
}

/// Entries this consumer got again (taken over with `XAUTOCLAIM`, or re-read
/// from its own pending list): each is returned with its real delivery
/// count, read from the pending list (`XPENDING` per entry, one pipelined
/// round trip), except
/// * entries past [`RedisStreamsConfig::delivery_limit`]: dead-lettered with
///   reason `delivery-limit` (acked once the dead letter is written, else
///   left pending);
/// * entries no longer pending (acked meanwhile by a handler of an earlier
///   subscription): skipped;
/// * entries deleted from the stream while pending (trimmed by `MAXLEN`):
///   nothing left to deliver, acked and skipped.
async fn redeliveries(
    sub: &Sub,
    conn: &mut redis::aio::MultiplexedConnection,
    entries: Vec<StreamId>,
) -> Result<Vec<(StreamId, bool, u32)>> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let cfg = &sub.transport.inner.config;
    let mut pipe = redis::pipe();
    for e in &entries {
        pipe.cmd("XPENDING")
            .arg(&sub.stream)
            .arg(&cfg.group)
            .arg(&e.id)
            .arg(&e.id)
            .arg(1);
    }
    let pending: Vec<StreamPendingCountReply> = pipe
        .query_async(conn)
        .await
        .map_err(|e| lost("XPENDING", &e))?;
    let mut out = Vec::with_capacity(entries.len());
    for (e, p) in entries.into_iter().zip(pending) {
        let Some(n) = p.ids.first().map(|p| p.times_delivered) else {
            debug!(stream = %sub.stream, id = %e.id, "no longer pending; skipped");
            continue;
        };
        if e.map.is_empty() {
            warn!(stream = %sub.stream, id = %e.id, "pending entry was trimmed from the stream; acknowledging it");
            sub.xack(&e.id).await?;
            continue;
        }
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        if n > cfg.delivery_limit {
            warn!(stream = %sub.stream, id = %e.id, deliveries = n, "delivery limit reached; dead-lettering");
            let mut m = entry_message(&e);
            let h = Arc::make_mut(&mut m.headers);
            h.insert(
                crate::HEADER_DEAD_LETTER_REASON.into(),
                format!("delivery-limit: delivered {n} times"),
            );
            h.insert(
                crate::HEADER_DEAD_LETTER_QUEUE.into(),
                sub.spec.name.clone(),
            );
            h.insert(crate::HEADER_DEAD_LETTER_ATTEMPTS.into(), n.to_string());
            if sub.dead_letter(&e.id, m).await.is_ok() {
                sub.xack(&e.id).await?;
            }
        } else {
            out.push((e, true, n));
        }
    }
    Ok(out)
}

struct RedisStream {
    rx: mpsc::Receiver<Result<Delivery>>,
    task: tokio::task::JoinHandle<()>,
}

impl DeliveryStream for RedisStream {
    fn next(&mut self) -> BoxFuture<'_, Option<Result<Delivery>>> {
        Box::pin(self.rx.recv())
    }
    fn cancel(&mut self) -> BoxFuture<'_, Result<()>> {
        self.task.abort();
        Box::pin(std::future::ready(Ok(())))
    }
}

impl Drop for RedisStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct RedisAcker {
    sub: Arc<Sub>,
    id: String,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Acker for RedisAcker {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move { self.sub.xack(&self.id).await })
    }
    /// Left pending: another read of this consumer after a reconnect, or
    /// `XAUTOCLAIM` after `claim_min_idle`, delivers it again.
    fn requeue(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }
    /// Acked only once the dead letter is written; otherwise (logged,
    /// counted in [`RedisStreams::dead_letter_failures`]) left pending — it
    /// comes back after [`RedisStreamsConfig::claim_min_idle`] or when this
    /// consumer subscribes again — and this returns
    /// [`Error::DeadLetterNotStored`].
    fn dead_letter(self: Box<Self>, message: Message) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            match self.sub.dead_letter(&self.id, message).await {
                Ok(()) => self.sub.xack(&self.id).await,
                Err(outcome) => Err(Error::DeadLetterNotStored {
                    queue: self.sub.spec.name.clone(),
                    outcome,
                }),
            }
        })
    }
}
