//! The backend traits: what a broker must do for the [`crate::Bus`].
//!
//! The traits are object-safe (boxed futures: one allocation per call) so a
//! [`crate::Bus`] holds any backend as `Arc<dyn Transport>`. Implement them to
//! add a broker; the consumer engine, router and middleware stay the same.

use crate::envelope::Message;
use crate::error::{Error, Result};
use crate::topology::Topology;
use futures_util::future::BoxFuture;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// The broker's answer to one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishOutcome {
    /// The broker took responsibility for the message (AMQP `basic.ack`
    /// after it was routed; Redis `XADD` succeeded on every matching stream).
    Confirmed,
    /// No queue is bound for the routing key (`mandatory` publish returned).
    Unroutable {
        /// Broker reply code (AMQP 312 NO_ROUTE).
        code: u16,
        /// Broker reply text.
        text: String,
    },
    /// The broker refused the message (AMQP `basic.nack`, a full queue with
    /// `reject-publish`).
    Nacked,
    /// No confirm arrived within the configured confirm timeout — also when
    /// the broker blocked publishers and the message could not even be
    /// written in that time; the message may or may not be stored (a blocked
    /// one is still sent once the broker unblocks) — republish (consumers
    /// deduplicate).
    TimedOut,
    /// The connection dropped before the confirm arrived; republish.
    ConnectionLost,
}

impl PublishOutcome {
    /// `true` for [`PublishOutcome::Confirmed`].
    pub fn is_confirmed(&self) -> bool {
        matches!(self, Self::Confirmed)
    }
}

/// Publish options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishOptions {
    /// Return unroutable messages ([`PublishOutcome::Unroutable`]) instead of
    /// dropping them. Default `true`.
    pub mandatory: bool,
}

impl Default for PublishOptions {
    fn default() -> Self {
        Self { mandatory: true }
    }
}

/// A sent message waiting for its confirm. Await it (or collect many and
/// await them together) to get the [`PublishOutcome`]; the message counts
/// against the backend's in-flight window until it resolves or is dropped.
#[must_use = "the confirm says whether the broker took the message"]
pub struct PendingConfirm {
    inner: PendingInner,
}

enum PendingInner {
    Ready(Option<PublishOutcome>),
    Waiting(BoxFuture<'static, PublishOutcome>),
}

impl fmt::Debug for PendingConfirm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            PendingInner::Ready(o) => f.debug_tuple("PendingConfirm::Ready").field(o).finish(),
            PendingInner::Waiting(_) => f.write_str("PendingConfirm::Waiting"),
        }
    }
}

impl PendingConfirm {
    /// An already-known outcome (no allocation).
    pub fn ready(outcome: PublishOutcome) -> Self {
        Self {
            inner: PendingInner::Ready(Some(outcome)),
        }
    }
    /// An outcome that a future will produce.
    pub fn waiting(fut: impl Future<Output = PublishOutcome> + Send + 'static) -> Self {
        Self {
            inner: PendingInner::Waiting(Box::pin(fut)),
        }
    }
}

impl Future for PendingConfirm {
    type Output = PublishOutcome;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<PublishOutcome> {
        match &mut self.get_mut().inner {
            PendingInner::Ready(o) => {
                Poll::Ready(o.take().unwrap_or(PublishOutcome::ConnectionLost))
            }
            PendingInner::Waiting(f) => f.as_mut().poll(cx),
        }
    }
}

/// Subscription options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Unacknowledged deliveries the broker may push before waiting for acks
    /// (AMQP `basic.qos`, Redis `COUNT`). Bounds consumer memory.
    pub prefetch: u16,
    /// Consumer name (AMQP consumer tag prefix, Redis consumer name).
    pub consumer_name: String,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self {
            prefetch: 100,
            consumer_name: format!("finsight-{}", std::process::id()),
        }
    }
}

/// One delivered message with its acknowledgement handle.
pub struct Delivery {
    /// The message.
    pub message: Message,
    /// The broker says it delivered this message before.
    pub redelivered: bool,
    /// How many times it was delivered, this time included, when the broker
    /// counts (in-memory, Redis PEL, quorum queues); otherwise 1, or 2 when
    /// `redelivered`.
    pub delivery_count: u32,
    /// Acknowledges, rejects or dead-letters it.
    pub acker: Box<dyn Acker>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .field("redelivered", &self.redelivered)
            .field("delivery_count", &self.delivery_count)
            .finish_non_exhaustive()
    }
}

/// Settles one delivery. Exactly one method is called, once.
pub trait Acker: Send + 'static {
    /// Removes the message from the queue (AMQP `basic.ack`, Redis `XACK`).
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<()>>;
    /// Puts it back for redelivery (AMQP `basic.nack requeue=true`; Redis:
    /// left pending, reclaimed later).
    fn requeue(self: Box<Self>) -> BoxFuture<'static, Result<()>>;
    /// Sends `message` (the original with dead-letter headers added) to the
    /// queue's dead-letter exchange / stream and removes the original once
    /// the broker took the dead letter. If the broker did not take it
    /// (unroutable: no queue bound for the dead-letter routing key; nacked;
    /// timed out), the original must not be removed: the backend keeps it
    /// for redelivery (after a delay, so a broken route does not spin hot)
    /// and fails with [`Error::DeadLetterNotStored`]. Count such failures
    /// for [`Health::dead_letter_failures`].
    fn dead_letter(self: Box<Self>, message: Message) -> BoxFuture<'static, Result<()>>;
}

/// A stream of deliveries from one queue.
pub trait DeliveryStream: Send + 'static {
    /// The next delivery; `None` when the subscription ended (cancelled), an
    /// error when the connection dropped (subscribe again to resume).
    /// Cancel-safe: dropping the future loses no message.
    fn next(&mut self) -> BoxFuture<'_, Option<Result<Delivery>>>;
    /// Stops the broker from sending more (AMQP `basic.cancel`); deliveries
    /// already received can still be settled.
    fn cancel(&mut self) -> BoxFuture<'_, Result<()>>;
}

/// Connection state in a [`Health`] snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Connected and usable.
    Connected,
    /// Connected, but the broker blocks publishing (a RabbitMQ memory or
    /// disk alarm, AMQP `connection.blocked`): publishes wait and end
    /// [`PublishOutcome::TimedOut`]; consuming goes on.
    Blocked,
    /// Connecting or reconnecting.
    Reconnecting,
    /// Not connected (never connected, or closed).
    Disconnected,
}

/// Depth of one queue (or stream) in a [`Health`] snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDepth {
    /// Queue name.
    pub queue: String,
    /// Messages ready (AMQP) or entries not yet delivered to the group (Redis
    /// lag), `None` when it could not be read.
    pub depth: Option<u64>,
    /// Delivered but not acknowledged (Redis PEL; `None` where the broker does not tell).
    pub pending: Option<u64>,
}

/// A health snapshot for a `/health` endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Connection state.
    pub state: ConnectionState,
    /// Successful reconnects since start.
    pub reconnects: u64,
    /// Publishes sent but not yet confirmed.
    pub unconfirmed: u64,
    /// Depth per consumer queue.
    pub queues: Vec<QueueDepth>,
    /// Depth of the dead-letter queue / stream.
    pub dead_letter_depth: Option<u64>,
    /// Dead letters the broker did not take since start (no queue or stream
    /// bound for the dead-letter routing key, nacked or refused, not
    /// confirmed in time, connection lost). Each one kept its original for
    /// redelivery instead of acknowledging it away, so nothing was lost, but
    /// a value that keeps growing means the dead-letter route is broken. The
    /// same number as the backend's `dead_letter_failures()`; counted by the
    /// transport, so it covers every consumer on it. Free (an atomic load).
    pub dead_letter_failures: u64,
}

/// A broker backend. See the module docs.
pub trait Transport: Send + Sync + fmt::Debug + 'static {
    /// Declares `topology` (exchanges, queues, bindings, arguments) and
    /// remembers it, to re-declare after reconnects.
    ///
    /// # Errors
    /// [`Error::TopologyMismatch`] when the broker has an object with other
    /// arguments; connection errors.
    fn declare<'a>(&'a self, topology: &'a Topology) -> BoxFuture<'a, Result<()>>;

    /// Sends `message` to `exchange`. Resolves once the message is handed to
    /// the broker (waiting for a free slot in the in-flight window); the
    /// returned [`PendingConfirm`] resolves with the broker's answer.
    ///
    /// # Errors
    /// Connection errors before the message was sent (nothing was sent).
    fn send<'a>(
        &'a self,
        exchange: &'a str,
        message: Message,
        options: PublishOptions,
    ) -> BoxFuture<'a, Result<PendingConfirm>>;

    /// Starts consuming `queue`.
    ///
    /// # Errors
    /// [`Error::NotDeclared`] for an unknown queue; connection errors.
    fn subscribe<'a>(
        &'a self,
        queue: &'a str,
        options: SubscribeOptions,
    ) -> BoxFuture<'a, Result<Box<dyn DeliveryStream>>>;

    /// A health snapshot of the declared topology. May do I/O (one round trip
    /// per queue on RabbitMQ and Redis).
    fn health(&self) -> BoxFuture<'_, Health>;

    /// The longest one settle ([`Acker`] call) can take by this backend's
    /// own timeouts and delays, when the backend bounds it — e.g. RabbitMQ's
    /// dead-letter publish waits up to its confirm timeout and then holds the
    /// original for its dead-letter retry delay before requeueing it. The
    /// consumer's default settle timeout is set above this value, so the
    /// backend's own recovery runs to its end instead of being cut off (see
    /// [`crate::ConsumerBuilder::settle_timeout`]). `None` (the default): no
    /// settle of this backend is meant to take longer than the consumer's
    /// default of 30 s. Read once when a consumer starts; must be cheap.
    fn settle_bound(&self) -> Option<Duration> {
        None
    }

    /// Waits (up to `deadline`) for outstanding confirms, then closes the
    /// connection.
    ///
    /// # Errors
    /// Backend errors while closing.
    fn close(&self, deadline: Duration) -> BoxFuture<'_, Result<()>>;
}

pub(crate) fn _assert_object_safe(_: &dyn Transport, _: &dyn DeliveryStream, _: &dyn Acker) {}

impl From<tokio::sync::AcquireError> for Error {
    fn from(_: tokio::sync::AcquireError) -> Self {
        Error::Closed
    }
}
