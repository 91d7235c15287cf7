//! The in-memory broker: the default backend and a broker-faithful test double.
//!
//! It emulates what the real brokers do: topic / direct / fanout exchanges
//! with `*` and `#`, queue arguments (TTL → dead-letter with reason
//! `expired`, dead-letter exchange and routing key, max length with
//! `reject-publish`), `mandatory` returns, prefetch, delivery count,
//! `redelivered`, requeue, and redelivery of unsettled messages after a
//! connection loss. Scripted faults ([`MemoryBroker::disconnect`],
//! [`MemoryBroker::set_offline`], [`MemoryBroker::nack_next`]) let your tests
//! exercise reconnect and failure paths without a broker.
//!
//! TTL uses `tokio::time`, so tests under `start_paused = true` control it.
//! Expiry happens at the queue head (as on RabbitMQ classic queues): when a
//! consumer reads, a message is published to the queue, or
//! [`MemoryBroker::queue_len`] / [`crate::Bus::health`] looks at it.
//!
//! Memory: every queue holds at most its `max_length` (or
//! [`MemoryConfig::default_max_length`]) messages; publishing to a full
//! queue is [`PublishOutcome::Nacked`]. Each exchange caches which queues a
//! routing key reaches (at most 1024 keys, emptied when full or when a
//! binding is added), so a publish matches the bindings once per key.
//!
//! Acknowledged messages are freed by a later publish to their queue (in
//! batches of 64; at most 256 wait per queue, and a consumer with nothing
//! to do frees them): see `Queue::retire` for why.
//!
//! Cost: a publish takes a read lock on the broker state, the route-cache
//! mutex and one mutex per target queue; once its routing key is cached it
//! allocates only the boxed future the [`Transport`] trait returns (the
//! message itself is moved in). A delivery that finds a message ready takes
//! the queue mutex once and registers no wake-up; it copies the message's
//! routing key and id (the broker keeps the original until the ack) and
//! allocates its acknowledgement handle.

use crate::envelope::Message;
use crate::error::{Error, Result};
use crate::topology::{ExchangeKind, QueueSpec, Topology};
use crate::transport::{
    Acker, ConnectionState, Delivery, DeliveryStream, Health, PendingConfirm, PublishOptions,
    PublishOutcome, QueueDepth, SubscribeOptions, Transport,
};
use futures_util::future::BoxFuture;
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::time::Instant;
use tracing::{debug, warn};

/// Header the in-memory broker sets when it dead-letters an expired message
/// (RabbitMQ sets the same one).
pub const HEADER_FIRST_DEATH_REASON: &str = "x-first-death-reason";
/// Header with the queue a message was dead-lettered from (as RabbitMQ).
pub const HEADER_FIRST_DEATH_QUEUE: &str = "x-first-death-queue";

/// Marks `m` as expired in `queue` for its dead letter (first-death reason
/// `expired` and queue, unless it already has a first death), as RabbitMQ
/// does. Copies the headers when they are shared.
pub(crate) fn mark_expired(m: &mut Message, queue: &str) {
    let h = Arc::make_mut(&mut m.headers);
    h.entry(HEADER_FIRST_DEATH_REASON.into())
        .or_insert_with(|| "expired".into());
    h.entry(HEADER_FIRST_DEATH_QUEUE.into())
        .or_insert_with(|| queue.to_owned());
}

/// In-memory broker settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Bound of a queue declared without `max_length` (default 1 000 000 messages).
    pub default_max_length: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            default_max_length: 1_000_000,
        }
    }
}

/// The in-memory broker. Cheap to clone; clones share the broker, so give
/// one clone to the [`crate::Bus`] and keep one to script faults and look
/// into queues.
#[derive(Clone)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

impl Default for MemoryBroker {
    /// [`MemoryBroker::new`].
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.inner.state.read();
        f.debug_struct("MemoryBroker")
            .field("exchanges", &s.exchanges.len())
            .field("queues", &s.queues.len())
            .field("online", &self.inner.online.load(Ordering::Relaxed))
            .finish()
    }
}

#[derive(Default)]
struct Inner {
    config: MemoryConfig,
    state: RwLock<State>,
    offline: AtomicBool,
    online: AtomicBool,
    epoch: AtomicU64,
    reconnects: AtomicU64,
    nack_next: AtomicU64,
    lost: Notify,
    declared: Mutex<Option<Topology>>,
    /// [`MemoryBroker::set_dead_letter_retry_delay`], in nanoseconds.
    dead_letter_retry_ns: AtomicU64,
    dead_letter_failures: AtomicU64,
}

/// Default of [`MemoryBroker::set_dead_letter_retry_delay`] (and of the
/// RabbitMQ backend's `dead_letter_retry_delay`).
pub const DEAD_LETTER_RETRY_DELAY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct State {
    exchanges: HashMap<String, Exchange>,
    queues: HashMap<String, Arc<Queue>>,
}

struct Exchange {
    kind: ExchangeKind,
    durable: bool,
    bindings: Vec<(String, Arc<Queue>)>,
    /// The queues each routing key reaches; see [`Exchange::targets`].
    routes: Mutex<HashMap<String, Arc<[Arc<Queue>]>>>,
}

/// Routing keys remembered per exchange; the cache is emptied when full.
const ROUTE_CACHE_KEYS: usize = 1024;

impl Exchange {
    fn new(kind: ExchangeKind, durable: bool) -> Self {
        Self {
            kind,
            durable,
            bindings: Vec::new(),
            routes: Mutex::new(HashMap::new()),
        }
    }

    /// The distinct queues `routing_key` reaches, in binding order: from
    /// the cache, or matched against every binding and cached.
    fn targets(&self, routing_key: &str) -> Arc<[Arc<Queue>]> {
        {
            let cache = self.routes.lock();
            // A few keys: comparing them is cheaper than hashing one.
            let hit = if cache.len() <= 8 {
                cache
                    .iter()
                    .find(|(k, _)| k.as_str() == routing_key)
                    .map(|(_, t)| t)
            } else {
                cache.get(routing_key)
            };
            if let Some(t) = hit {
                return t.clone();
            }
        }
        let mut found: Vec<Arc<Queue>> = Vec::new();
        for (b, q) in &self.bindings {
            if self.kind.matches(b, routing_key) && !found.iter().any(|t| Arc::ptr_eq(t, q)) {
                found.push(q.clone());
            }
        }
        let found: Arc<[Arc<Queue>]> = found.into();
        let mut cache = self.routes.lock();
        if cache.len() >= ROUTE_CACHE_KEYS {
            cache.clear();
        }
        cache.insert(routing_key.to_owned(), found.clone());
        found
    }
}

struct Queue {
    spec: QueueSpec,
    max_len: usize,
    ready: Mutex<VecDeque<Stored>>,
    notify: Notify,
    /// Acknowledged messages waiting to be freed by a publisher; see
    /// [`Queue::retire`].
    retired: Mutex<Retired>,
    /// `retired.full.len()`, readable without the lock.
    retired_len: AtomicUsize,
}

/// Acknowledged messages (`full`) and an empty buffer to swap in (`spare`).
#[derive(Default)]
struct Retired {
    full: Vec<Message>,
    spare: Vec<Message>,
}

/// Retired messages a publish frees at once.
const RETIRED_BATCH: usize = 64;
/// Retired messages kept at most per queue; beyond, an ack frees at once.
const RETIRED_MAX: usize = 256;

struct Stored {
    message: Message,
    /// When the queue's TTL runs out for it (`None`: no TTL); kept when
    /// requeued, as on RabbitMQ.
    expires: Option<Instant>,
    delivery_count: u32,
    redelivered: bool,
}

impl Queue {
    fn new(spec: QueueSpec, max_len: usize) -> Self {
        Self {
            spec,
            max_len,
            ready: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            retired: Mutex::new(Retired::default()),
            retired_len: AtomicUsize::new(0),
        }
    }

    /// Keeps an acknowledged message for a later publish to this queue to
    /// free. A message is usually built on the publishing thread and
    /// acknowledged on the consumer's; freed there, each of its allocations
    /// goes back to the publisher's heap, and with glibc's allocator both
    /// threads then contend for that heap's lock (in the bus benchmark:
    /// 40k–90k futex calls per 100k messages; 25k–35k, and ~1.5× the
    /// throughput, with this). Freed by the publisher, its memory is reused
    /// by its next messages. At most [`RETIRED_MAX`] wait (plus two buffers
    /// of that many `Message` slots); a consumer with nothing to do frees
    /// them itself.
    fn retire(&self, message: Message) {
        let overflow = {
            let mut r = self.retired.lock();
            if r.full.len() < RETIRED_MAX {
                r.full.push(message);
                self.retired_len.store(r.full.len(), Ordering::Relaxed);
                None
            } else {
                Some(message)
            }
        };
        drop(overflow);
    }

    /// Frees the retired messages on this thread, if there are at least `min`.
    fn free_retired(&self, min: usize) {
        if self.retired_len.load(Ordering::Relaxed) < min.max(1) {
            return;
        }
        let mut batch = {
            let mut r = self.retired.lock();
            let spare = std::mem::take(&mut r.spare);
            self.retired_len.store(0, Ordering::Relaxed);
            std::mem::replace(&mut r.full, spare)
        };
        batch.clear();
        let mut r = self.retired.lock();
        if r.spare.capacity() < batch.capacity() {
            r.spare = batch;
        }
    }

    fn expired(&self, s: &Stored, now: Instant) -> bool {
        s.expires.is_some_and(|at| now >= at)
    }

    /// Pops expired messages at the head into `out`.
    fn expire_head(&self, q: &mut VecDeque<Stored>, now: Instant, out: &mut Vec<Stored>) {
        if self.spec.message_ttl.is_none() {
            return;
        }
        while q.front().is_some_and(|s| self.expired(s, now)) {
            if let Some(s) = q.pop_front() {
                out.push(s);
            }
        }
    }
}

impl MemoryBroker {
    /// A broker with default settings.
    pub fn new() -> Self {
        Self::with_config(MemoryConfig::default())
    }

    /// A broker with `config`.
    pub fn with_config(config: MemoryConfig) -> Self {
        let inner = Inner {
            config,
            online: AtomicBool::new(true),
            dead_letter_retry_ns: AtomicU64::new(nanos(DEAD_LETTER_RETRY_DELAY)),
            ..Inner::default()
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Scripted fault: cuts every connection now. Open subscriptions end with
    /// [`Error::ConnectionLost`]; unsettled deliveries are requeued with
    /// `redelivered` (when their acker is settled or dropped; settling fails
    /// with [`Error::ConnectionLost`]). The next subscribe reconnects.
    pub fn disconnect(&self) {
        self.inner.epoch.fetch_add(1, Ordering::SeqCst);
        self.inner.online.store(false, Ordering::SeqCst);
        self.inner.lost.notify_waiters();
        debug!("memory broker: scripted disconnect");
    }

    /// Scripted fault: while `true`, publishing and subscribing fail with
    /// [`Error::ConnectionLost`] (the broker is down). Setting it implies a
    /// [`MemoryBroker::disconnect`].
    pub fn set_offline(&self, offline: bool) {
        if offline {
            self.disconnect();
        }
        self.inner.offline.store(offline, Ordering::SeqCst);
    }

    /// Scripted fault: the next `n` publishes are answered
    /// [`PublishOutcome::Nacked`].
    pub fn nack_next(&self, n: u64) {
        self.inner.nack_next.store(n, Ordering::SeqCst);
    }

    /// How long a delivery whose dead letter the broker did not take (no
    /// queue bound for the dead-letter routing key, or the dead-letter queue
    /// full) is held before it is requeued (default
    /// [`DEAD_LETTER_RETRY_DELAY`], 1 s). The original is never dropped in
    /// that case: it is requeued and redelivered, and the settle fails with
    /// [`Error::DeadLetterNotStored`]. The delay keeps a broken dead-letter
    /// route from turning into a hot redelivery loop; the held delivery keeps
    /// its prefetch and concurrency slot meanwhile. A consumer started
    /// afterwards with the default settle timeout waits at least this long
    /// plus 10 s for a settle ([`Transport::settle_bound`]); one started
    /// before, or with a shorter explicit settle timeout, may abandon the
    /// held settle (the original is then requeued at once, counted in
    /// `ConsumerStats::settle_errors`).
    pub fn set_dead_letter_retry_delay(&self, delay: Duration) {
        self.inner
            .dead_letter_retry_ns
            .store(nanos(delay), Ordering::Relaxed);
    }

    /// Dead letters the broker did not take (see
    /// [`MemoryBroker::set_dead_letter_retry_delay`]) since start.
    pub fn dead_letter_failures(&self) -> u64 {
        self.inner.dead_letter_failures.load(Ordering::Relaxed)
    }

    /// Successful reconnects after scripted disconnects.
    pub fn reconnects(&self) -> u64 {
        self.inner.reconnects.load(Ordering::Relaxed)
    }

    /// Ready messages in `queue` (after expiring its head), `None` if undeclared.
    pub fn queue_len(&self, queue: &str) -> Option<usize> {
        let q = self.inner.state.read().queues.get(queue).cloned()?;
        let mut expired = Vec::new();
        let len = {
            let mut r = q.ready.lock();
            q.expire_head(&mut r, Instant::now(), &mut expired);
            r.len()
        };
        self.inner.dead_letter_expired(&q, expired);
        Some(len)
    }

    /// Removes and returns up to `max` ready messages of `queue` (e.g. to
    /// look at the dead-letter queue in a test).
    pub fn take(&self, queue: &str, max: usize) -> Vec<Message> {
        let Some(q) = self.inner.state.read().queues.get(queue).cloned() else {
            return Vec::new();
        };
        let mut r = q.ready.lock();
        let n = max.min(r.len());
        r.drain(..n).map(|s| s.message).collect()
    }

    fn check_online(&self) -> Result<()> {
        if self.inner.offline.load(Ordering::SeqCst) {
            return Err(Error::ConnectionLost);
        }
        // A load first: the common case writes nothing shared.
        if !self.inner.online.load(Ordering::SeqCst)
            && !self.inner.online.swap(true, Ordering::SeqCst)
        {
            self.inner.reconnects.fetch_add(1, Ordering::Relaxed);
            debug!("memory broker: reconnected");
        }
        Ok(())
    }

    fn declare_sync(&self, topology: &Topology) -> Result<()> {
        self.check_online()?;
        let mut st = self.inner.state.write();
        for ex in [&topology.exchange, &topology.dead_letter_exchange] {
            match st.exchanges.get(&ex.name) {
                Some(e) if e.kind != ex.kind || e.durable != ex.durable => {
                    return Err(Error::TopologyMismatch {
                        object: format!("exchange `{}`", ex.name),
                        argument: if e.kind != ex.kind { "type" } else { "durable" }.into(),
                        detail: format!("declared as {} durable={}", e.kind.as_str(), e.durable),
                    });
                }
                Some(_) => {}
                None => {
                    st.exchanges
                        .insert(ex.name.clone(), Exchange::new(ex.kind, ex.durable));
                }
            }
        }
        for (ex, spec) in topology.bound_queues() {
            let q = match st.queues.get(&spec.name) {
                Some(q) => {
                    if let Some(arg) = differing_argument(&q.spec, spec) {
                        return Err(Error::TopologyMismatch {
                            object: format!("queue `{}`", spec.name),
                            argument: arg.into(),
                            detail: "the queue exists with another value".into(),
                        });
                    }
                    q.clone()
                }
                None => {
                    let max_len = spec
                        .max_length
                        .map_or(self.inner.config.default_max_length, |m| {
                            usize::try_from(m).unwrap_or(usize::MAX)
                        });
                    let q = Arc::new(Queue::new(spec.clone(), max_len));
                    st.queues.insert(spec.name.clone(), q.clone());
                    q
                }
            };
            if let Some(e) = st.exchanges.get_mut(&ex.name) {
                for b in &spec.bindings {
                    if !e
                        .bindings
                        .iter()
                        .any(|(k, bq)| k == b && Arc::ptr_eq(bq, &q))
                    {
                        e.bindings.push((b.clone(), q.clone()));
                        e.routes.get_mut().clear();
                    }
                }
            }
        }
        *self.inner.declared.lock() = Some(topology.clone());
        Ok(())
    }
}

fn differing_argument(have: &QueueSpec, want: &QueueSpec) -> Option<&'static str> {
    if have.durable != want.durable {
        Some("durable")
    } else if have.dead_letter_exchange != want.dead_letter_exchange {
        Some("x-dead-letter-exchange")
    } else if have.dead_letter_routing_key != want.dead_letter_routing_key {
        Some("x-dead-letter-routing-key")
    } else if have.message_ttl != want.message_ttl {
        Some("x-message-ttl")
    } else if have.max_length != want.max_length {
        Some("x-max-length")
    } else if have.arguments != want.arguments {
        Some("arguments")
    } else {
        None
    }
}

impl Inner {
    /// Routes `message` through `exchange`; returns the outcome and the
    /// messages that expired at the heads of the target queues.
    fn route(
        &self,
        exchange: &str,
        message: Message,
        options: PublishOptions,
        delivery_count: u32,
    ) -> Result<PublishOutcome> {
        let mut expired: Vec<(Arc<Queue>, Vec<Stored>)> = Vec::new();
        let outcome = {
            let st = self.state.read();
            let ex = st
                .exchanges
                .get(exchange)
                .ok_or_else(|| Error::NotDeclared {
                    kind: "exchange",
                    name: exchange.to_owned(),
                })?;
            let targets = ex.targets(&message.routing_key);
            if targets.is_empty() {
                if options.mandatory {
                    PublishOutcome::Unroutable {
                        code: 312,
                        text: format!(
                            "NO_ROUTE: exchange `{exchange}` has no queue bound for `{}`",
                            message.routing_key
                        ),
                    }
                } else {
                    PublishOutcome::Confirmed
                }
            } else {
                let now = Instant::now();
                let mut outcome = PublishOutcome::Confirmed;
                let last = targets.len() - 1;
                let mut message = Some(message);
                for (i, q) in targets.iter().enumerate() {
                    let m = if i == last {
                        message.take()
                    } else {
                        message.clone()
                    };
                    let Some(m) = m else { break };
                    let mut out = Vec::new();
                    {
                        let mut r = q.ready.lock();
                        q.expire_head(&mut r, now, &mut out);
                        if r.len() >= q.max_len {
                            outcome = PublishOutcome::Nacked;
                        } else {
                            r.push_back(Stored {
                                message: m,
                                expires: q.spec.message_ttl.and_then(|ttl| now.checked_add(ttl)),
                                delivery_count,
                                redelivered: false,
                            });
                        }
                    }
                    q.notify.notify_one();
                    q.free_retired(RETIRED_BATCH);
                    if !out.is_empty() {
                        expired.push((q.clone(), out));
                    }
                }
                outcome
            }
        };
        for (q, out) in expired {
            self.dead_letter_expired(&q, out);
        }
        Ok(outcome)
    }

    fn dead_letter_expired(&self, q: &Queue, expired: Vec<Stored>) {
        for s in expired {
            let mut m = s.message;
            mark_expired(&mut m, &q.spec.name);
            debug!(queue = %q.spec.name, "message expired");
            self.dead_letter(q, m);
        }
    }

    /// Publishes `m` to `q`'s dead-letter exchange; dropped (as RabbitMQ
    /// does) when the queue has none.
    fn dead_letter(&self, q: &Queue, mut m: Message) {
        let Some(dlx) = q.spec.dead_letter_target(&mut m) else {
            warn!(queue = %q.spec.name, "no dead-letter exchange: message dropped");
            return;
        };
        let opts = PublishOptions { mandatory: false };
        if let Err(e) = self.route(dlx, m, opts, 0) {
            warn!(queue = %q.spec.name, error = %e, "dead-lettering failed: message dropped");
        }
    }
}

impl Transport for MemoryBroker {
    fn declare<'a>(&'a self, topology: &'a Topology) -> BoxFuture<'a, Result<()>> {
        Box::pin(std::future::ready(self.declare_sync(topology)))
    }

    fn send<'a>(
        &'a self,
        exchange: &'a str,
        message: Message,
        options: PublishOptions,
    ) -> BoxFuture<'a, Result<PendingConfirm>> {
        let r = (|| {
            self.check_online()?;
            if self.inner.nack_next.load(Ordering::SeqCst) > 0
                && self
                    .inner
                    .nack_next
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
            {
                return Ok(PublishOutcome::Nacked);
            }
            self.inner.route(exchange, message, options, 0)
        })();
        match r {
            Ok(PublishOutcome::Confirmed) => Box::pin(Confirmed),
            r => Box::pin(std::future::ready(r.map(PendingConfirm::ready))),
        }
    }

    fn subscribe<'a>(
        &'a self,
        queue: &'a str,
        options: SubscribeOptions,
    ) -> BoxFuture<'a, Result<Box<dyn DeliveryStream>>> {
        let r = (|| {
            self.check_online()?;
            let q = self
                .inner
                .state
                .read()
                .queues
                .get(queue)
                .cloned()
                .ok_or_else(|| Error::NotDeclared {
                    kind: "queue",
                    name: queue.to_owned(),
                })?;
            let s: Box<dyn DeliveryStream> = Box::new(MemStream {
                broker: self.inner.clone(),
                queue: q,
                epoch: self.inner.epoch.load(Ordering::SeqCst),
                prefetch: Arc::new(Semaphore::new(usize::from(options.prefetch.max(1)))),
                cancelled: false,
            });
            Ok(s)
        })();
        Box::pin(std::future::ready(r))
    }

    fn health(&self) -> BoxFuture<'_, Health> {
        let topology = self.inner.declared.lock().clone();
        let mut queues = Vec::new();
        let mut dlq = None;
        if let Some(t) = &topology {
            for q in &t.queues {
                queues.push(QueueDepth {
                    queue: q.name.clone(),
                    depth: self.queue_len(&q.name).map(|n| n as u64),
                    pending: None,
                });
            }
            dlq = self.queue_len(&t.dead_letter_queue.name).map(|n| n as u64);
        }
        let state = if self.inner.offline.load(Ordering::SeqCst) {
            ConnectionState::Disconnected
        } else {
            ConnectionState::Connected
        };
        Box::pin(std::future::ready(Health {
            state,
            reconnects: self.reconnects(),
            unconfirmed: 0,
            queues,
            dead_letter_depth: dlq,
            dead_letter_failures: self.dead_letter_failures(),
        }))
    }

    /// The dead-letter retry delay: an unstored dead letter holds its
    /// original that long (see [`MemoryBroker::set_dead_letter_retry_delay`]).
    fn settle_bound(&self) -> Option<Duration> {
        Some(Duration::from_nanos(
            self.inner.dead_letter_retry_ns.load(Ordering::Relaxed),
        ))
    }

    fn close(&self, _deadline: Duration) -> BoxFuture<'_, Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

struct MemStream {
    broker: Arc<Inner>,
    queue: Arc<Queue>,
    epoch: u64,
    prefetch: Arc<Semaphore>,
    cancelled: bool,
}

impl MemStream {
    fn alive(&self) -> bool {
        self.broker.epoch.load(Ordering::SeqCst) == self.epoch
    }

    /// Pops the next live message (dead-lettering expired ones at the head).
    fn pop(&self) -> Option<Stored> {
        let mut expired = Vec::new();
        let got = {
            let mut r = self.queue.ready.lock();
            if self.queue.spec.message_ttl.is_some() {
                self.queue.expire_head(&mut r, Instant::now(), &mut expired);
            }
            r.pop_front()
        };
        if !expired.is_empty() {
            self.broker.dead_letter_expired(&self.queue, expired);
        }
        got
    }

    fn deliver(&self, mut s: Stored, permit: OwnedSemaphorePermit) -> Delivery {
        s.delivery_count += 1;
        Delivery {
            message: s.message.clone(),
            redelivered: s.redelivered,
            delivery_count: s.delivery_count,
            acker: Box::new(MemAcker {
                broker: self.broker.clone(),
                queue: self.queue.clone(),
                stored: Some(s),
                epoch: self.epoch,
                _permit: permit,
            }),
        }
    }

    /// The next delivery. Fast path (a prefetch slot free and a message
    /// ready): no wake-up registration at all; only when it has to wait does
    /// it register for the queue and for a connection loss.
    async fn next_delivery(&mut self) -> Option<Result<Delivery>> {
        if self.cancelled {
            return None;
        }
        if !self.alive() {
            return Some(Err(Error::ConnectionLost));
        }
        let permit = match self.prefetch.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(TryAcquireError::Closed) => return None,
            Err(TryAcquireError::NoPermits) => {
                let lost = self.broker.lost.notified();
                tokio::pin!(lost);
                lost.as_mut().enable();
                if !self.alive() {
                    return Some(Err(Error::ConnectionLost));
                }
                tokio::select! {
                    p = self.prefetch.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => return None,
                    },
                    () = &mut lost => return Some(Err(Error::ConnectionLost)),
                }
            }
        };
        if let Some(s) = self.pop() {
            return Some(Ok(self.deliver(s, permit)));
        }
        loop {
            // Register first, then look again: a publish in between wakes us.
            let notified = self.queue.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let lost = self.broker.lost.notified();
            tokio::pin!(lost);
            lost.as_mut().enable();
            if !self.alive() {
                return Some(Err(Error::ConnectionLost));
            }
            if let Some(s) = self.pop() {
                return Some(Ok(self.deliver(s, permit)));
            }
            // About to wait: free what no publish has freed yet.
            self.queue.free_retired(1);
            tokio::select! {
                () = &mut notified => {}
                () = &mut lost => return Some(Err(Error::ConnectionLost)),
            }
        }
    }
}

impl DeliveryStream for MemStream {
    fn next(&mut self) -> BoxFuture<'_, Option<Result<Delivery>>> {
        Box::pin(self.next_delivery())
    }
    fn cancel(&mut self) -> BoxFuture<'_, Result<()>> {
        self.cancelled = true;
        Box::pin(std::future::ready(Ok(())))
    }
}

impl Drop for MemStream {
    fn drop(&mut self) {
        // Pass on a wake-up this consumer may have taken.
        self.queue.notify.notify_one();
    }
}

struct MemAcker {
    broker: Arc<Inner>,
    queue: Arc<Queue>,
    stored: Option<Stored>,
    epoch: u64,
    _permit: OwnedSemaphorePermit,
}

impl MemAcker {
    fn alive(&self) -> bool {
        self.broker.epoch.load(Ordering::SeqCst) == self.epoch
    }
    fn requeue_now(&mut self) {
        if let Some(mut s) = self.stored.take() {
            s.redelivered = true;
            self.queue.ready.lock().push_front(s);
            self.queue.notify.notify_one();
        }
    }
    fn settle(mut self, f: impl FnOnce(&Inner, &Queue, Stored)) -> Result<()> {
        if !self.alive() {
            self.requeue_now();
            return Err(Error::ConnectionLost);
        }
        if let Some(s) = self.stored.take() {
            f(&self.broker, &self.queue, s);
        }
        Ok(())
    }
}

impl Acker for MemAcker {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        settled((*self).settle(|_, q, s| q.retire(s.message)))
    }
    fn requeue(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        self.requeue_now();
        settled(Ok(()))
    }
    /// Routes `message` to the queue's dead-letter exchange with
    /// `mandatory` and acknowledges the original only when it was stored;
    /// otherwise requeues the original after the dead-letter retry delay.
    fn dead_letter(mut self: Box<Self>, mut message: Message) -> BoxFuture<'static, Result<()>> {
        if !self.alive() {
            return settled((*self).settle(|_, _, _| ()));
        }
        let Some(dlx) = self.queue.spec.dead_letter_target(&mut message) else {
            // As RabbitMQ: no dead-letter exchange configured, the reject drops it.
            return settled((*self).settle(|b, q, _| b.dead_letter(q, message)));
        };
        let outcome = self
            .broker
            .route(dlx, message, PublishOptions { mandatory: true }, 0)
            .unwrap_or_else(|e| PublishOutcome::Unroutable {
                code: 404,
                text: e.to_string(),
            });
        if outcome.is_confirmed() {
            return settled((*self).settle(|_, q, s| q.retire(s.message)));
        }
        self.broker
            .dead_letter_failures
            .fetch_add(1, Ordering::Relaxed);
        let delay = Duration::from_nanos(self.broker.dead_letter_retry_ns.load(Ordering::Relaxed));
        let queue = self.queue.spec.name.clone();
        warn!(%queue, %dlx, ?outcome, retry_in = ?delay, "dead letter not stored; requeueing the original");
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            // Requeued on drop too, should this future be dropped first.
            self.requeue_now();
            Err(Error::DeadLetterNotStored {
                queue,
                outcome: format!("{outcome:?}"),
            })
        })
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The answer of a settle that is already done; a success is boxed without
/// allocating (see [`Settled`]).
fn settled(r: Result<()>) -> BoxFuture<'static, Result<()>> {
    match r {
        Ok(()) => Box::pin(Settled),
        Err(e) => Box::pin(std::future::ready(Err(e))),
    }
}

/// A successful settle. Zero-sized: boxing it allocates nothing.
struct Settled;

impl std::future::Future for Settled {
    type Output = Result<()>;
    fn poll(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// A publish the broker confirmed at once. Zero-sized: boxing it allocates
/// nothing.
struct Confirmed;

impl std::future::Future for Confirmed {
    type Output = Result<PendingConfirm>;
    fn poll(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<PendingConfirm>> {
        std::task::Poll::Ready(Ok(PendingConfirm::ready(PublishOutcome::Confirmed)))
    }
}

impl Drop for MemAcker {
    fn drop(&mut self) {
        // Unsettled: back to the queue, as a broker does when a channel closes.
        self.requeue_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Headers;
    use bytes::Bytes;
    use futures_util::FutureExt;

    /// A body that records when its memory is freed.
    struct Owned(Arc<AtomicU64>, Vec<u8>);
    impl AsRef<[u8]> for Owned {
        fn as_ref(&self) -> &[u8] {
            &self.1
        }
    }
    impl Drop for Owned {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn message(freed: &Arc<AtomicU64>) -> Message {
        Message {
            body: Bytes::from_owner(Owned(freed.clone(), b"{}".to_vec())),
            headers: Arc::new(Headers::new()),
            routing_key: "e.q".into(),
            message_id: None,
            persistent: true,
        }
    }

    /// A broker with queue `q` and one subscription to it (prefetch 1000).
    async fn broker_with_consumer() -> (MemoryBroker, Box<dyn DeliveryStream>) {
        let broker = MemoryBroker::new();
        broker
            .declare_sync(&Topology::finsight().consumer_queue("q"))
            .unwrap();
        let sub = broker
            .subscribe(
                "q",
                SubscribeOptions {
                    prefetch: 1000,
                    ..SubscribeOptions::default()
                },
            )
            .await
            .unwrap();
        (broker, sub)
    }

    #[tokio::test]
    async fn acknowledged_messages_are_freed_by_a_publish_or_an_idle_consumer() {
        let (broker, mut sub) = broker_with_consumer().await;
        let freed = Arc::new(AtomicU64::new(0));
        let n = u64::try_from(RETIRED_BATCH).unwrap();
        for _ in 0..n {
            let sent = broker.send(
                "finsight.events",
                message(&freed),
                PublishOptions::default(),
            );
            assert!(sent.await.unwrap().await.is_confirmed());
        }
        for _ in 0..n {
            let d = sub.next().await.unwrap().unwrap();
            drop(d.message);
            d.acker.ack().await.unwrap();
        }
        // Acknowledged, not freed yet: kept for the publishing side.
        assert_eq!(freed.load(Ordering::SeqCst), 0);
        // The next publish frees the batch.
        let sent = broker.send(
            "finsight.events",
            message(&freed),
            PublishOptions::default(),
        );
        assert!(sent.await.unwrap().await.is_confirmed());
        assert_eq!(freed.load(Ordering::SeqCst), n);
        // A consumer that finds nothing to do frees the rest.
        let d = sub.next().await.unwrap().unwrap();
        drop(d.message);
        d.acker.ack().await.unwrap();
        assert_eq!(freed.load(Ordering::SeqCst), n);
        assert!(sub.next().now_or_never().is_none());
        assert_eq!(freed.load(Ordering::SeqCst), n + 1);
    }

    #[tokio::test]
    async fn retired_messages_are_bounded() {
        let (broker, mut sub) = broker_with_consumer().await;
        let freed = Arc::new(AtomicU64::new(0));
        let extra = 10u64;
        let max = u64::try_from(RETIRED_MAX).unwrap();
        // All published first: no publish runs while they are acknowledged.
        for _ in 0..max + extra {
            let sent = broker.send(
                "finsight.events",
                message(&freed),
                PublishOptions::default(),
            );
            assert!(sent.await.unwrap().await.is_confirmed());
        }
        for _ in 0..max + extra {
            let d = sub.next().await.unwrap().unwrap();
            drop(d.message);
            d.acker.ack().await.unwrap();
        }
        // Beyond the bound, an ack frees at once.
        assert_eq!(freed.load(Ordering::SeqCst), extra);
    }
}
