//! Message bus for FinSight services: an event [`Envelope`], a [`Router`] from
//! event type to handlers, retries, dead-lettering and one consumer engine over
//! in-memory, RabbitMQ (lapin) and Redis Streams backends, with the topology
//! the Python services share.
//!
//! ```
//! use finsight_bus::{Bus, Context, Envelope, HandlerError, MemoryBroker, Router, Topology};
//! use std::time::Duration;
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct OrderPlaced { id: u64 }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), finsight_bus::Error> {
//! let broker = MemoryBroker::new();
//! // SPEC §5 topology: finsight.events, finsight.dlx, finsight.dlq, plus queue `billing`.
//! let topology = Topology::finsight().consumer_queue("billing");
//! let bus = Bus::connect(broker.clone(), topology, "billing").await?;
//!
//! let router = Router::new().on_typed("order_placed", |ctx: Context, order: OrderPlaced| async move {
//!     // Follow-up events keep the inbound correlation id.
//!     ctx.publish("invoice_created", &serde_json::json!({ "order": order.id })).await?;
//!     Ok::<_, HandlerError>(())
//! })
//! .on("invoice_created", |_ctx: Context| async { Ok(()) });
//! let consumer = bus.consumer("billing", router).start()?;
//!
//! // Routing key `order_placed.billing` matches the binding `*.billing`.
//! let outcome = bus.publish(&Envelope::new("order_placed", &OrderPlaced { id: 7 })?).await?;
//! assert!(outcome.is_confirmed());
//! # for _ in 0..1000 { if consumer.stats().acked == 2 { break } tokio::task::yield_now().await; }
//! let stats = consumer.shutdown(Duration::from_secs(5)).await?;
//! assert_eq!(stats.acked, 2);
//! # Ok(()) }
//! ```
//!
//! # Overview
//!
//! * [`Envelope`]: event type, JSON payload (typed with [`Envelope::new`] /
//!   [`Envelope::decode`]), message id, timestamp, correlation id, causation
//!   id, routing key, headers; [`Envelope::to_cloudevent`] maps it to
//!   CloudEvents 1.0 JSON. On the wire: body = the JSON payload, persistent,
//!   headers `event_type`, `timestamp` (ISO 8601), `correlation_id` (SPEC §5).
//! * [`Topology`]: exchanges, queues, bindings and arguments as data, with the
//!   SPEC §5 defaults; declared at startup and compared with the broker (a
//!   mismatch is [`Error::TopologyMismatch`] naming the argument).
//! * [`Bus`]: publishing. [`Bus::send`] returns a [`PendingConfirm`] so
//!   confirms pipeline through the backend's bounded in-flight window;
//!   [`PublishOutcome`] tells confirmed, unroutable (`mandatory` is on by
//!   default), nacked, timed out or connection lost apart.
//! * [`Router`] + [`Bus::consumer`]: several handlers per event type,
//!   in-process [`RetryPolicy`] with backoff, handler timeout, panics caught,
//!   `tracing` span per message with the correlation id, optional duplicate
//!   filter ([`MemoryDedup`]; `RedisDedup` with `redis-dedup`), and
//!   dead-lettering with `x-dead-letter-reason`, `x-dead-letter-handler`,
//!   `x-dead-letter-attempts` headers. Invalid JSON and panics are
//!   dead-lettered; the consumer keeps running. Unknown event types follow
//!   [`UnknownEventPolicy`]; strict mode refuses to start when a binding has
//!   no handler. Re-subscribes after connection loss; drains on
//!   [`ConsumerHandle::shutdown`].
//! * Backends implement [`Transport`]: [`MemoryBroker`] (default), `RabbitMq`
//!   (`rabbitmq`), `RedisStreams` (`redis-streams`).
//!
//! # Feature flags
//!
//! | Feature | Enables | Default |
//! |---|---|---|
//! | *(none)* | envelope, router, consumer engine, [`MemoryBroker`], [`MemoryDedup`] | yes |
//! | `rabbitmq` | `rabbitmq::RabbitMq` on lapin 4 (confirms, reconnection, 406 diagnostics) | no |
//! | `redis-streams` | `redis_streams::RedisStreams` (consumer groups, XAUTOCLAIM, dead-letter stream) | no |
//! | `redis-dedup` | `RedisDedup`, a duplicate filter shared by replicas | no |
//! | `full` | all of the above | no |
//!
//! # Delivery guarantees
//!
//! At-least-once: a message is acknowledged only after every handler for its
//! type succeeded, or after the broker took its dead letter. A dead letter
//! the broker does not take (no queue bound for the dead-letter routing key,
//! nacked, not confirmed in time) leaves the original in its queue on every
//! backend, counted in [`Health::dead_letter_failures`] and
//! [`ConsumerStats::dead_letter_failures`]. (Messages RabbitMQ dead-letters
//! itself, e.g. on TTL expiry, are dropped by the broker when its DLX cannot
//! route them.) Redelivery after reconnects means handlers must be
//! idempotent (or use a duplicate filter).
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod bus;
mod consumer;
pub mod dedup;
mod envelope;
mod error;
pub mod memory;
mod router;
pub mod topology;
pub mod transport;

#[cfg(feature = "rabbitmq")]
#[cfg_attr(docsrs, doc(cfg(feature = "rabbitmq")))]
pub mod rabbitmq;

#[cfg(feature = "redis-streams")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis-streams")))]
pub mod redis_streams;

pub use bus::{Bus, Context};
pub use consumer::{ConsumerBuilder, ConsumerHandle, ConsumerStats, RetryPolicy};
#[cfg(feature = "redis-dedup")]
pub use dedup::RedisDedup;
pub use dedup::{Dedup, MemoryDedup};
pub use envelope::{
    Envelope, HEADER_CAUSATION_ID, HEADER_CORRELATION_ID, HEADER_DEAD_LETTER_ATTEMPTS,
    HEADER_DEAD_LETTER_HANDLER, HEADER_DEAD_LETTER_QUEUE, HEADER_DEAD_LETTER_REASON,
    HEADER_EVENT_TYPE, HEADER_MESSAGE_ID, HEADER_ORIGINAL_ROUTING_KEY, HEADER_TIMESTAMP, Headers,
    Message, format_timestamp, parse_timestamp,
};
pub use error::{BoxError, Error, Result};
pub use memory::{MemoryBroker, MemoryConfig};
pub use router::{Handler, HandlerError, Router, UnknownEventPolicy};
pub use topology::{ArgValue, ExchangeKind, ExchangeSpec, QueueSpec, Topology};
pub use transport::{
    Acker, ConnectionState, Delivery, DeliveryStream, Health, PendingConfirm, PublishOptions,
    PublishOutcome, QueueDepth, SubscribeOptions, Transport,
};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// `scheme://host:port/...` of a URL, without user and password (for errors and logs).
#[allow(dead_code)]
pub(crate) fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let rest = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            format!("{scheme}://{rest}")
        }
        None => url.to_owned(),
    }
}
