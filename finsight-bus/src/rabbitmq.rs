//! RabbitMQ backend on lapin 4 (feature `rabbitmq`).
//!
//! * Publishing: persistent messages, publisher confirms on a dedicated
//!   channel, `mandatory` by default; confirms are pipelined through a
//!   bounded in-flight window ([`RabbitConfig::confirm_window`]), each with
//!   a timeout ([`RabbitConfig::confirm_timeout`]). The outcome is typed:
//!   confirmed, unroutable (returned), nacked, timed out, connection lost.
//! * Consuming: one channel per subscription with `basic.qos` = prefetch,
//!   manual acks; dead-lettering publishes the message with its
//!   `x-dead-letter-*` headers to the queue's dead-letter exchange
//!   (`mandatory`, with a confirm) and acks the original only once the
//!   broker confirmed the dead letter. If it was returned unroutable (no
//!   queue bound for the dead-letter routing key), nacked or not confirmed
//!   in time, the original is not acked: it is logged (`error`), counted
//!   ([`RabbitMq::dead_letter_failures`], `ConsumerStats::dead_letter_failures`)
//!   and requeued (`basic.nack requeue=true`) after
//!   [`RabbitConfig::dead_letter_retry_delay`], so a broken dead-letter
//!   route loses no message and does not spin hot.
//! * Reconnection: the connection is re-established on demand (next publish
//!   or subscribe) with the topology re-declared before use; the consumer
//!   engine re-subscribes with backoff. Unacked deliveries of the lost
//!   connection are redelivered by the broker; in-flight confirms resolve
//!   as [`PublishOutcome::ConnectionLost`] — republish them.
//! * Declaring against an existing object with other arguments (AMQP 406
//!   PRECONDITION_FAILED) is [`Error::TopologyMismatch`] naming the argument.

use crate::envelope::{
    HEADER_CORRELATION_ID, HEADER_EVENT_TYPE, HEADER_MESSAGE_ID, Headers, Message,
};
use crate::error::{Error, Result};
use crate::topology::{ArgValue, ExchangeKind as Kind, QueueSpec, Topology};
use crate::transport::{
    Acker, ConnectionState, Delivery, DeliveryStream, Health, PendingConfirm, PublishOptions,
    PublishOutcome, QueueDepth, SubscribeOptions, Transport,
};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use lapin::Confirmation;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, error, info, warn};

/// RabbitMQ backend settings: start from [`RabbitConfig::new`] and set the
/// fields to change.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RabbitConfig {
    /// `amqp://user:pass@host:port/vhost`.
    pub url: String,
    /// Publishes awaiting their confirm at most (default 256). Bounds memory
    /// and is the pipelining depth; RabbitMQ's guidance is 100–1 000.
    pub confirm_window: usize,
    /// How long to wait for one confirm (default 30 s) before
    /// [`PublishOutcome::TimedOut`]. Also bounds a consumer's dead-letter
    /// publish (window slot and reconnect included); see
    /// [`RabbitConfig::dead_letter_retry_delay`] for how it sets the
    /// consumer's default settle timeout.
    pub confirm_timeout: Duration,
    /// Bound of one connection attempt, and separately of the set-up after it
    /// (topology declaration, publish channel) (default 10 s).
    pub connect_timeout: Duration,
    /// Bound of the queue-depth queries of one health snapshot (default
    /// 5 s). A blocked or half-dead broker answers none; the snapshot then
    /// reports the depths as unknown instead of hanging the `/health`
    /// endpoint.
    pub health_timeout: Duration,
    /// Connection name shown in the management UI.
    pub connection_name: String,
    /// How long a delivery whose dead letter the broker did not take
    /// (unroutable, nacked, timed out) is held before it is requeued with
    /// `basic.nack requeue=true` (default 1 s). It bounds the redelivery
    /// loop of a message that cannot be dead-lettered; the held delivery
    /// keeps its prefetch and concurrency slot meanwhile.
    ///
    /// A dead-letter settle thus takes up to `confirm_timeout +
    /// dead_letter_retry_delay` + 1 s ([`Transport::settle_bound`]); a
    /// consumer's default settle timeout is that plus 10 s (42 s with the
    /// defaults), so the requeue always runs. An explicit
    /// `ConsumerBuilder::settle_timeout` at or below the bound is logged at
    /// `warn`: it may abandon a dead letter whose confirm is late and leave
    /// the original unacknowledged until its channel closes.
    pub dead_letter_retry_delay: Duration,
}

impl RabbitConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            confirm_window: 256,
            confirm_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            health_timeout: Duration::from_secs(5),
            connection_name: format!("finsight-bus-{}", std::process::id()),
            dead_letter_retry_delay: crate::memory::DEAD_LETTER_RETRY_DELAY,
        }
    }
}

/// The RabbitMQ transport. Cheap to clone (one `Arc`); clones share the
/// connection.
#[derive(Clone)]
pub struct RabbitMq {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RabbitMq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMq")
            .field("endpoint", &crate::redact(&self.inner.config.url))
            .field("reconnects", &self.inner.reconnects.load(Ordering::Relaxed))
            .finish()
    }
}

#[derive(Clone)]
struct Live {
    conn: Arc<Connection>,
    publish: Channel,
}

impl Live {
    fn usable(&self) -> bool {
        self.conn.status().connected() && self.publish.status().connected()
    }
}

struct Inner {
    config: RabbitConfig,
    live: parking_lot::RwLock<Option<Live>>,
    connecting: tokio::sync::Mutex<()>,
    topology: parking_lot::Mutex<Option<Topology>>,
    window: Arc<Semaphore>,
    unconfirmed: AtomicU64,
    reconnects: AtomicU64,
    dead_letter_failures: AtomicU64,
    connected_once: AtomicBool,
    /// Pending confirms, in publish order; at most `confirm_window` items
    /// (each holds a window slot).
    reaper: tokio::sync::mpsc::UnboundedSender<Reap>,
}

struct Reap {
    confirm: lapin::PublisherConfirm,
    deadline: tokio::time::Instant,
    _guard: InFlight,
    done: tokio::sync::oneshot::Sender<PublishOutcome>,
}

async fn reaper(mut rx: tokio::sync::mpsc::UnboundedReceiver<Reap>) {
    while let Some(r) = rx.recv().await {
        let outcome = match tokio::time::timeout_at(r.deadline, r.confirm).await {
            Err(_) => PublishOutcome::TimedOut,
            Ok(Err(e)) => {
                debug!(error = %e, "confirm lost with the connection");
                PublishOutcome::ConnectionLost
            }
            Ok(Ok(Confirmation::Ack(Some(ret)))) => PublishOutcome::Unroutable {
                code: ret.reply_code,
                text: ret.reply_text.to_string(),
            },
            Ok(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => {
                PublishOutcome::Confirmed
            }
            Ok(Ok(Confirmation::Nack(_))) => PublishOutcome::Nacked,
        };
        drop(r._guard);
        let _ = r.done.send(outcome);
    }
}

fn lost(e: &lapin::Error) -> Error {
    debug!(error = %e, "amqp operation failed");
    Error::ConnectionLost
}

impl RabbitMq {
    /// Connects to `config.url`.
    ///
    /// # Errors
    /// [`Error::Connect`] when the broker cannot be reached.
    pub async fn connect(config: RabbitConfig) -> Result<Self> {
        if config.confirm_window == 0 {
            return Err(Error::Config("confirm_window must be at least 1".into()));
        }
        let (reap_tx, reap_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(reaper(reap_rx));
        let inner = Arc::new(Inner {
            reaper: reap_tx,
            window: Arc::new(Semaphore::new(config.confirm_window)),
            config,
            live: parking_lot::RwLock::new(None),
            connecting: tokio::sync::Mutex::new(()),
            topology: parking_lot::Mutex::new(None),
            unconfirmed: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            dead_letter_failures: AtomicU64::new(0),
            connected_once: AtomicBool::new(false),
        });
        let me = Self { inner };
        me.ensure().await?;
        Ok(me)
    }

    /// Successful reconnects since start.
    pub fn reconnects(&self) -> u64 {
        self.inner.reconnects.load(Ordering::Relaxed)
    }

    /// Dead letters the broker did not take (returned unroutable, nacked,
    /// not confirmed in time) since start; each original was requeued
    /// instead of acknowledged (see the module docs).
    pub fn dead_letter_failures(&self) -> u64 {
        self.inner.dead_letter_failures.load(Ordering::Relaxed)
    }

    fn current(&self) -> Option<Live> {
        self.inner
            .live
            .read()
            .as_ref()
            .filter(|l| l.usable())
            .cloned()
    }

    /// The live connection, reconnecting (and re-declaring the topology) if
    /// it was lost.
    async fn ensure(&self) -> Result<Live> {
        if let Some(l) = self.current() {
            return Ok(l);
        }
        let _guard = self.inner.connecting.lock().await;
        if let Some(l) = self.current() {
            return Ok(l);
        }
        let cfg = &self.inner.config;
        let props = ConnectionProperties::default()
            .with_connection_name(cfg.connection_name.clone().into());
        let connect_err = |source: crate::BoxError| Error::Connect {
            endpoint: crate::redact(&cfg.url),
            source,
        };
        let conn = tokio::time::timeout(cfg.connect_timeout, Connection::connect(&cfg.url, props))
            .await
            .map_err(|_| connect_err("connection attempt timed out".into()))?
            .map_err(|e| connect_err(Box::new(e)))?;
        let conn = Arc::new(conn);
        let topology = self.inner.topology.lock().clone();
        // The set-up after connecting is bounded too: a broker that is
        // starting or stopping can accept the connection and then never
        // answer, and this runs under the `connecting` lock.
        let setup = async {
            if let Some(t) = &topology {
                declare_on(&conn, t).await?;
            }
            let publish = conn
                .create_channel()
                .await
                .map_err(|e| connect_err(Box::new(e)))?;
            publish
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| connect_err(Box::new(e)))?;
            Ok::<_, Error>(publish)
        };
        let publish = tokio::time::timeout(cfg.connect_timeout, setup)
            .await
            .map_err(|_| {
                connect_err("topology declaration or channel set-up timed out".into())
            })??;
        let live = Live { conn, publish };
        *self.inner.live.write() = Some(live.clone());
        if self.inner.connected_once.swap(true, Ordering::SeqCst) {
            self.inner.reconnects.fetch_add(1, Ordering::Relaxed);
            info!(endpoint = %crate::redact(&cfg.url), "reconnected to RabbitMQ; topology re-declared");
        }
        Ok(live)
    }

    async fn publish_raw(
        &self,
        exchange: &str,
        message: Message,
        options: PublishOptions,
    ) -> Result<PendingConfirm> {
        let permit = self.inner.window.clone().acquire_owned().await?;
        let live = self.ensure().await?;
        let props = properties(&message);
        let deadline = tokio::time::Instant::now() + self.inner.config.confirm_timeout;
        // Counted from here: a publish the broker does not let us write yet
        // (connection blocked by a resource alarm) is unconfirmed too.
        let guard = InFlight::new(&self.inner, permit);
        let write = live.publish.basic_publish(
            exchange.into(),
            message.routing_key.as_str().into(),
            BasicPublishOptions {
                mandatory: options.mandatory,
                immediate: false,
            },
            &message.body,
            props,
        );
        let confirm = match tokio::time::timeout_at(deadline, write).await {
            Ok(r) => r.map_err(|e| lost(&e))?,
            Err(_) => {
                warn!(
                    blocked = live.conn.status().blocked(),
                    "publish not written within confirm_timeout (broker blocking publishers?)"
                );
                return Ok(PendingConfirm::ready(PublishOutcome::TimedOut));
            }
        };
        // One reaper task awaits the confirms in publish order (the broker
        // confirms in order), so a window slot frees as soon as the broker
        // answers even if the caller polls its pending confirms late.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let reap = Reap {
            confirm,
            deadline,
            _guard: guard,
            done: tx,
        };
        if let Err(e) = self.inner.reaper.send(reap) {
            let _ = e.0.done.send(PublishOutcome::ConnectionLost);
        }
        Ok(PendingConfirm::waiting(async move {
            rx.await.unwrap_or(PublishOutcome::ConnectionLost)
        }))
    }
}

/// Counts a publish as unconfirmed and holds its window slot until dropped.
struct InFlight {
    inner: Arc<Inner>,
    _permit: OwnedSemaphorePermit,
}

impl InFlight {
    fn new(inner: &Arc<Inner>, permit: OwnedSemaphorePermit) -> Self {
        inner.unconfirmed.fetch_add(1, Ordering::Relaxed);
        Self {
            inner: inner.clone(),
            _permit: permit,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.inner.unconfirmed.fetch_sub(1, Ordering::Relaxed);
    }
}

fn properties(m: &Message) -> BasicProperties {
    let mut table = FieldTable::default();
    for (k, v) in m.headers.iter() {
        table.insert(k.as_str().into(), AMQPValue::LongString(v.as_str().into()));
    }
    let mut p = BasicProperties::default()
        .with_delivery_mode(if m.persistent { 2 } else { 1 })
        .with_content_type("application/json".into())
        .with_headers(table);
    if let Some(id) = &m.message_id {
        p = p.with_message_id(id.as_str().into());
    }
    if let Some(c) = m.headers.get(HEADER_CORRELATION_ID) {
        p = p.with_correlation_id(c.as_str().into());
    }
    if let Some(t) = m.headers.get(HEADER_EVENT_TYPE) {
        p = p.with_type(t.as_str().into());
    }
    p
}

fn header_string(v: &AMQPValue) -> Option<String> {
    Some(match v {
        AMQPValue::LongString(s) => s.to_string(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(i) => i.to_string(),
        AMQPValue::ShortShortUInt(i) => i.to_string(),
        AMQPValue::ShortInt(i) => i.to_string(),
        AMQPValue::ShortUInt(i) => i.to_string(),
        AMQPValue::LongInt(i) => i.to_string(),
        AMQPValue::LongUInt(i) => i.to_string(),
        AMQPValue::LongLongInt(i) => i.to_string(),
        AMQPValue::Timestamp(t) => t.to_string(),
        _ => return None,
    })
}

fn message_from(d: &lapin::message::Delivery) -> Message {
    let mut headers = Headers::new();
    if let Some(t) = d.properties.headers() {
        for (k, v) in t.inner() {
            if let Some(s) = header_string(v) {
                headers.insert(k.to_string(), s);
            }
        }
    }
    let p = &d.properties;
    if let Some(c) = p.correlation_id() {
        headers
            .entry(HEADER_CORRELATION_ID.into())
            .or_insert_with(|| c.to_string());
    }
    if let Some(t) = p.kind() {
        headers
            .entry(HEADER_EVENT_TYPE.into())
            .or_insert_with(|| t.to_string());
    }
    let message_id = p
        .message_id()
        .as_ref()
        .map(|m| m.to_string())
        .or_else(|| headers.get(HEADER_MESSAGE_ID).cloned());
    Message {
        body: Bytes::copy_from_slice(&d.data),
        headers: Arc::new(headers),
        routing_key: d.routing_key.to_string(),
        message_id,
        persistent: p.delivery_mode().is_some_and(|m| m == 2),
    }
}

fn kind(k: Kind) -> ExchangeKind {
    match k {
        Kind::Topic => ExchangeKind::Topic,
        Kind::Direct => ExchangeKind::Direct,
        Kind::Fanout => ExchangeKind::Fanout,
    }
}

/// The queue's `x-` arguments, typed as Python's pika sends them (integers
/// that fit 32 bits as signed 32-bit), so both sides declare equal queues.
fn queue_arguments(q: &QueueSpec) -> FieldTable {
    let mut t = FieldTable::default();
    let int = |v: i64| match i32::try_from(v) {
        Ok(i) => AMQPValue::LongInt(i),
        Err(_) => AMQPValue::LongLongInt(v),
    };
    if let Some(x) = &q.dead_letter_exchange {
        t.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(x.as_str().into()),
        );
    }
    if let Some(x) = &q.dead_letter_routing_key {
        t.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(x.as_str().into()),
        );
    }
    if let Some(ttl) = q.message_ttl {
        t.insert(
            "x-message-ttl".into(),
            int(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)),
        );
    }
    if let Some(m) = q.max_length {
        t.insert(
            "x-max-length".into(),
            int(i64::try_from(m).unwrap_or(i64::MAX)),
        );
        t.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
    }
    for (k, v) in &q.arguments {
        let v = match v {
            ArgValue::Int(i) => int(*i),
            ArgValue::Str(s) => AMQPValue::LongString(s.as_str().into()),
        };
        t.insert(k.as_str().into(), v);
    }
    t
}

/// Turns a declare failure into a readable error: 406 → [`Error::TopologyMismatch`].
fn declare_error(object: String, e: lapin::Error) -> Error {
    let text = e.to_string();
    if text.contains("PRECONDITION_FAILED") {
        let argument = text
            .split_once("inequivalent arg '")
            .and_then(|(_, rest)| rest.split_once('\''))
            .map_or_else(|| "unknown".to_owned(), |(a, _)| a.to_owned());
        return Error::TopologyMismatch {
            object,
            argument,
            detail: text,
        };
    }
    if e.is_io_error() || !e.is_amqp_soft_error() {
        return Error::ConnectionLost;
    }
    Error::backend(format!("declare {object}"), e)
}

async fn declare_on(conn: &Connection, t: &Topology) -> Result<()> {
    let ch = conn.create_channel().await.map_err(|e| lost(&e))?;
    for ex in [&t.exchange, &t.dead_letter_exchange] {
        ch.exchange_declare(
            ex.name.as_str().into(),
            kind(ex.kind),
            ExchangeDeclareOptions {
                durable: ex.durable,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| declare_error(format!("exchange `{}`", ex.name), e))?;
    }
    for (ex, q) in t.bound_queues() {
        ch.queue_declare(
            q.name.as_str().into(),
            QueueDeclareOptions {
                durable: q.durable,
                ..QueueDeclareOptions::default()
            },
            queue_arguments(q),
        )
        .await
        .map_err(|e| declare_error(format!("queue `{}`", q.name), e))?;
        for b in &q.bindings {
            ch.queue_bind(
                q.name.as_str().into(),
                ex.name.as_str().into(),
                b.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| declare_error(format!("binding `{b}` of queue `{}`", q.name), e))?;
        }
    }
    let _ = ch.close(200, "declared".into()).await;
    Ok(())
}

impl Transport for RabbitMq {
    fn declare<'a>(&'a self, topology: &'a Topology) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let live = self.ensure().await?;
            declare_on(&live.conn, topology).await?;
            *self.inner.topology.lock() = Some(topology.clone());
            Ok(())
        })
    }

    fn send<'a>(
        &'a self,
        exchange: &'a str,
        message: Message,
        options: PublishOptions,
    ) -> BoxFuture<'a, Result<PendingConfirm>> {
        Box::pin(self.publish_raw(exchange, message, options))
    }

    fn subscribe<'a>(
        &'a self,
        queue: &'a str,
        options: SubscribeOptions,
    ) -> BoxFuture<'a, Result<Box<dyn DeliveryStream>>> {
        Box::pin(async move {
            let spec =
                Topology::require_declared_queue(self.inner.topology.lock().as_ref(), queue)?;
            let live = self.ensure().await?;
            let ch = live.conn.create_channel().await.map_err(|e| lost(&e))?;
            ch.basic_qos(options.prefetch.max(1), BasicQosOptions::default())
                .await
                .map_err(|e| lost(&e))?;
            let tag = format!("{}-{}", options.consumer_name, uuid::Uuid::new_v4());
            let consumer = ch
                .basic_consume(
                    queue.into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| declare_error(format!("queue `{queue}`"), e))?;
            let s: Box<dyn DeliveryStream> = Box::new(RabbitStream {
                transport: self.clone(),
                link: Arc::new(Link {
                    channel: ch,
                    conn: live.conn.clone(),
                }),
                watchdog: Box::pin(tokio::time::sleep(LIVENESS_CHECK)),
                consumer,
                tag,
                spec: Arc::new(spec),
            });
            Ok(s)
        })
    }

    fn health(&self) -> BoxFuture<'_, Health> {
        Box::pin(async move {
            let live = self.current();
            let state = match (&live, self.inner.connected_once.load(Ordering::SeqCst)) {
                (Some(l), _) if l.conn.status().blocked() => ConnectionState::Blocked,
                (Some(_), _) => ConnectionState::Connected,
                (None, true) => ConnectionState::Reconnecting,
                (None, false) => ConnectionState::Disconnected,
            };
            let topology = self.inner.topology.lock().clone();
            let mut queues = Vec::new();
            let mut dlq = None;
            if let Some(t) = topology {
                queues = t
                    .queues
                    .iter()
                    .map(|q| QueueDepth {
                        queue: q.name.clone(),
                        depth: None,
                        pending: None,
                    })
                    .collect();
                if let Some(l) = &live {
                    let probe = queue_depths(&l.conn, &t);
                    match tokio::time::timeout(self.inner.config.health_timeout, probe).await {
                        Ok((depths, d)) => {
                            for (q, depth) in queues.iter_mut().zip(depths) {
                                q.depth = depth;
                            }
                            dlq = d;
                        }
                        Err(_) => warn!(
                            after = ?self.inner.config.health_timeout,
                            "queue depths not answered in time (broker blocked?); reported as unknown"
                        ),
                    }
                }
            }
            Health {
                state,
                reconnects: self.reconnects(),
                unconfirmed: self.inner.unconfirmed.load(Ordering::Relaxed),
                queues,
                dead_letter_depth: dlq,
                dead_letter_failures: self.dead_letter_failures(),
            }
        })
    }

    /// `confirm_timeout + dead_letter_retry_delay` plus the liveness check
    /// (1 s): the longest a dead-letter settle takes by this backend's own
    /// timeouts — its publish is bounded by `confirm_timeout`, an unstored
    /// dead letter holds the original for the retry delay, and the ack or
    /// requeue after it fails within a second once the channel closed.
    fn settle_bound(&self) -> Option<Duration> {
        let c = &self.inner.config;
        Some(
            c.confirm_timeout
                .saturating_add(c.dead_letter_retry_delay)
                .saturating_add(LIVENESS_CHECK),
        )
    }

    fn close(&self, deadline: Duration) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let all = u32::try_from(self.inner.config.confirm_window).unwrap_or(u32::MAX);
            // Every window slot free = every confirm arrived (or timed out).
            let flushed = tokio::time::timeout(deadline, self.inner.window.acquire_many(all)).await;
            if flushed.is_err() {
                warn!(
                    unconfirmed = self.inner.unconfirmed.load(Ordering::Relaxed),
                    "closing with unconfirmed publishes"
                );
            }
            let live = self.inner.live.write().take();
            if let Some(l) = live {
                l.conn
                    .close(200, "bye".into())
                    .await
                    .map_err(|e| Error::backend("connection.close", e))?;
            }
            self.inner.window.close();
            Ok(())
        })
    }
}

/// Message counts of the topology's queues and of its dead-letter queue
/// (passive declares on one short-lived channel); `None` where the broker
/// did not answer.
async fn queue_depths(conn: &Connection, t: &Topology) -> (Vec<Option<u64>>, Option<u64>) {
    let ch = conn.create_channel().await.ok();
    let depth = |name: &str| {
        let ch = ch.clone();
        let name = name.to_owned();
        async move {
            let q = ch?
                .queue_declare(
                    name.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .ok()?;
            Some(u64::from(q.message_count()))
        }
    };
    let mut depths = Vec::with_capacity(t.queues.len());
    for q in &t.queues {
        depths.push(depth(&q.name).await);
    }
    let dlq = depth(&t.dead_letter_queue.name).await;
    if let Some(ch) = ch {
        let _ = ch.close(200, "health".into()).await;
    }
    (depths, dlq)
}

/// How often an idle subscription checks that its channel and connection
/// are still open.
const LIVENESS_CHECK: Duration = Duration::from_secs(1);

/// The channel a subscription consumes on, and its connection.
struct Link {
    channel: Channel,
    conn: Arc<Connection>,
}

impl Link {
    fn open(&self) -> bool {
        self.channel.status().connected() && self.conn.status().connected()
    }

    /// `op`, unless the channel or connection closes first. lapin has been
    /// seen to leave an operation on a channel that died during a broker
    /// restart pending forever (acks, in the outage test); the channel's
    /// state is checked every [`LIVENESS_CHECK`] while `op` is pending.
    async fn unless_closed<T>(
        &self,
        op: impl std::future::Future<Output = lapin::Result<T>>,
    ) -> Result<T> {
        let mut op = std::pin::pin!(op);
        loop {
            match tokio::time::timeout(LIVENESS_CHECK, op.as_mut()).await {
                Ok(r) => return r.map_err(|e| lost(&e)),
                Err(_) if !self.open() => {
                    debug!("channel closed while an operation on it was pending");
                    return Err(Error::ConnectionLost);
                }
                Err(_) => {}
            }
        }
    }
}

struct RabbitStream {
    transport: RabbitMq,
    link: Arc<Link>,
    /// Fires every [`LIVENESS_CHECK`] while no delivery arrives. lapin has
    /// been seen to leave a consumer stream pending after its connection
    /// died during a broker restart; the check turns that into an error so
    /// the consumer subscribes again instead of waiting forever.
    watchdog: std::pin::Pin<Box<tokio::time::Sleep>>,
    consumer: lapin::Consumer,
    tag: String,
    spec: Arc<QueueSpec>,
}

impl DeliveryStream for RabbitStream {
    fn next(&mut self) -> BoxFuture<'_, Option<Result<Delivery>>> {
        Box::pin(async move {
            let next = loop {
                tokio::select! {
                    biased;
                    d = self.consumer.next() => break d?,
                    () = self.watchdog.as_mut() => {
                        if !self.link.open() {
                            warn!(
                                consumer_tag = %self.tag,
                                "subscription channel closed but its stream did not end; re-subscribing"
                            );
                            return Some(Err(Error::ConnectionLost));
                        }
                        self.watchdog
                            .as_mut()
                            .reset(tokio::time::Instant::now() + LIVENESS_CHECK);
                    }
                }
            };
            match next {
                Err(e) => Some(Err(lost(&e))),
                Ok(d) => {
                    let message = message_from(&d);
                    let delivery_count = message
                        .headers
                        .get("x-delivery-count")
                        .and_then(|c| c.parse::<u32>().ok())
                        .map(|c| c + 1)
                        .unwrap_or(if d.redelivered { 2 } else { 1 });
                    Some(Ok(Delivery {
                        message,
                        redelivered: d.redelivered,
                        delivery_count,
                        acker: Box::new(RabbitAcker {
                            acker: d.acker,
                            link: self.link.clone(),
                            transport: self.transport.clone(),
                            spec: self.spec.clone(),
                        }),
                    }))
                }
            }
        })
    }

    fn cancel(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let cancel = self
                .link
                .channel
                .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default());
            self.link.unless_closed(cancel).await
        })
    }
}

impl Drop for RabbitStream {
    fn drop(&mut self) {
        // Closing the channel returns its unacked deliveries to the queue.
        let ch = self.link.channel.clone();
        if ch.status().connected() {
            tokio::spawn(async move {
                let _ = ch.close(200, "consumer stopped".into()).await;
            });
        }
    }
}

struct RabbitAcker {
    acker: lapin::Acker,
    link: Arc<Link>,
    transport: RabbitMq,
    spec: Arc<QueueSpec>,
}

impl Acker for RabbitAcker {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            self.link
                .unless_closed(self.acker.ack(BasicAckOptions::default()))
                .await
                .map(|_| ())
        })
    }

    fn requeue(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            let requeue = BasicNackOptions {
                requeue: true,
                multiple: false,
            };
            self.link
                .unless_closed(self.acker.nack(requeue))
                .await
                .map(|_| ())
        })
    }

    fn dead_letter(self: Box<Self>, mut message: Message) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            let Some(dlx) = self.spec.dead_letter_target(&mut message) else {
                // No dead-letter exchange configured: the reject drops it, as
                // the topology says.
                warn!(queue = %self.spec.name, "no dead-letter exchange: message dropped");
                return self
                    .link
                    .unless_closed(self.acker.reject(BasicRejectOptions { requeue: false }))
                    .await
                    .map(|_| ());
            };
            let routing_key = message.routing_key.clone();
            // Mandatory: a dead letter no queue takes is returned, not
            // silently confirmed.
            let opts = PublishOptions { mandatory: true };
            // The whole publish — waiting for a window slot or a reconnect
            // included — is bounded by `confirm_timeout`, so this settle ends
            // within `settle_bound` and the consumer's settle timeout (set
            // above it) does not cut it off before the requeue below.
            let publish = async {
                match self.transport.publish_raw(dlx, message, opts).await {
                    Ok(p) => p.await,
                    Err(e) => {
                        debug!(error = %e, "publishing the dead letter failed");
                        PublishOutcome::ConnectionLost
                    }
                }
            };
            let confirm_timeout = self.transport.inner.config.confirm_timeout;
            let outcome = tokio::time::timeout(confirm_timeout, publish)
                .await
                .unwrap_or(PublishOutcome::TimedOut);
            if outcome.is_confirmed() {
                return self
                    .link
                    .unless_closed(self.acker.ack(BasicAckOptions::default()))
                    .await
                    .map(|_| ());
            }
            let inner = &self.transport.inner;
            inner.dead_letter_failures.fetch_add(1, Ordering::Relaxed);
            let delay = inner.config.dead_letter_retry_delay;
            error!(
                queue = %self.spec.name,
                dead_letter_exchange = %dlx,
                %routing_key,
                ?outcome,
                retry_in = ?delay,
                "dead letter not stored by the broker; the original is requeued, not acked"
            );
            // Held for the delay (unless the channel closes: then the broker
            // requeues it anyway), so a broken route does not spin hot.
            if self.link.open() {
                let hold = async {
                    tokio::time::sleep(delay).await;
                    Ok::<_, lapin::Error>(())
                };
                let _ = self.link.unless_closed(hold).await;
            }
            let requeue = BasicNackOptions {
                requeue: true,
                multiple: false,
            };
            self.link.unless_closed(self.acker.nack(requeue)).await?;
            Err(Error::DeadLetterNotStored {
                queue: self.spec.name.clone(),
                outcome: format!("{outcome:?}"),
            })
        })
    }
}
