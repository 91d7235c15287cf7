//! The crate's error type.

/// A boxed error from a backend client (lapin, redis), kept as the source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in `finsight-bus`.
///
/// Backend failures keep the client's error as [`std::error::Error::source`];
/// no lapin or redis type appears in the public shape.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Connecting to the broker failed. Check the URL, credentials and that the
    /// broker is running; the consumer and publisher retry on their own.
    #[error("cannot connect to the broker at {endpoint}: {source}")]
    Connect {
        /// The endpoint without credentials.
        endpoint: String,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// The connection to the broker was lost (or, for the in-memory broker, a
    /// scripted fault cut it). Unacknowledged deliveries are redelivered.
    #[error("connection to the broker lost")]
    ConnectionLost,
    /// The broker already has `object` with a different `argument`: the
    /// topology in code and the one on the broker disagree (AMQP 406
    /// PRECONDITION_FAILED). Change the code or delete/migrate the object.
    #[error(
        "topology mismatch on {object}: argument `{argument}` differs from what the broker has ({detail})"
    )]
    TopologyMismatch {
        /// The queue or exchange, e.g. ``queue `orders` ``.
        object: String,
        /// The argument that differs, e.g. `x-message-ttl`.
        argument: String,
        /// The broker's own text.
        detail: String,
    },
    /// Strict mode: a routing key the queue is bound with has no handler.
    #[error(
        "strict mode: queue `{queue}` is bound with `{binding}` but the router has no handler for any event type it routes; register one with Router::on or disable strict mode"
    )]
    MissingHandler {
        /// Queue name.
        queue: String,
        /// The binding key without a handler.
        binding: String,
    },
    /// A name used before it was declared (exchange, queue, stream).
    #[error("{kind} `{name}` is not declared; declare it in the Topology first")]
    NotDeclared {
        /// `"exchange"` or `"queue"`.
        kind: &'static str,
        /// The missing name.
        name: String,
    },
    /// A configuration value is invalid; the message names it.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A payload could not be serialised or deserialised as JSON.
    #[error("payload of event `{event_type}` is not valid for this type: {source}")]
    Payload {
        /// The event type.
        event_type: String,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },
    /// An inbound message is not a valid envelope (missing header, invalid JSON).
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// A broker operation failed.
    #[error("{operation} failed: {source}")]
    Backend {
        /// What was being done, e.g. `"queue.declare orders"`.
        operation: String,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// A broker operation did not finish in time (a subscribe, an ack). The
    /// connection is probably half-dead; the consumer drops the subscription
    /// and subscribes again. Raise the timeout if the broker is just slow.
    #[error("{operation} did not finish within {after:?}")]
    TimedOut {
        /// What was being done, e.g. `"subscribe orders"`.
        operation: String,
        /// The timeout that passed.
        after: std::time::Duration,
    },
    /// The broker did not take the dead letter of a message from `queue`
    /// (no queue bound for the dead-letter routing key, a nack, no confirm in
    /// time): the original was **not** acknowledged but kept for redelivery,
    /// so it is not lost — requeued after the backend's dead-letter retry
    /// delay (RabbitMQ, in memory) or left pending (Redis Streams: delivered
    /// again after `claim_min_idle` or on re-subscribe). Fix the dead-letter
    /// topology; counted in
    /// [`ConsumerStats::dead_letter_failures`](crate::ConsumerStats::dead_letter_failures)
    /// and [`Health::dead_letter_failures`](crate::Health::dead_letter_failures).
    #[error(
        "dead letter of a message from queue `{queue}` not stored by the broker ({outcome}); the original was kept for redelivery, not acknowledged"
    )]
    DeadLetterNotStored {
        /// The queue the original came from.
        queue: String,
        /// The broker's answer to the dead-letter publish, e.g.
        /// `Unroutable { code: 312, .. }`.
        outcome: String,
    },
    /// The bus or consumer was closed.
    #[error("the bus is closed")]
    Closed,
}

impl Error {
    #[cfg_attr(
        not(any(
            feature = "rabbitmq",
            feature = "redis-streams",
            feature = "redis-dedup"
        )),
        allow(dead_code)
    )]
    pub(crate) fn backend(operation: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Backend {
            operation: operation.into(),
            source: source.into(),
        }
    }

    /// True for errors a retry after reconnecting can fix (connection lost,
    /// connect failed, backend I/O, timed out).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. }
                | Self::ConnectionLost
                | Self::Backend { .. }
                | Self::TimedOut { .. }
        )
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
