//! Topology as data: exchanges, queues, bindings and their arguments, with
//! the SPEC §5 defaults shared with the Python services.

use std::collections::BTreeMap;
use std::time::Duration;

/// Exchange kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ExchangeKind {
    /// Routing key matched against binding patterns with `*` (one word) and `#` (zero or more words).
    Topic,
    /// Routing key equal to the binding key.
    Direct,
    /// Every bound queue.
    Fanout,
}

impl ExchangeKind {
    /// The AMQP name (`topic`, `direct`, `fanout`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Topic => "topic",
            Self::Direct => "direct",
            Self::Fanout => "fanout",
        }
    }

    /// Whether `routing_key` matches `binding` for this kind.
    pub fn matches(self, binding: &str, routing_key: &str) -> bool {
        match self {
            Self::Topic => topic_matches(binding, routing_key),
            Self::Direct => binding == routing_key,
            Self::Fanout => true,
        }
    }
}

/// An exchange declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeSpec {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: ExchangeKind,
    /// Survives a broker restart.
    pub durable: bool,
}

/// A queue declaration with its bindings on the topology's main exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    /// Name.
    pub name: String,
    /// Survives a broker restart.
    pub durable: bool,
    /// Binding keys on [`Topology::exchange`] (or, for the dead-letter queue,
    /// on [`Topology::dead_letter_exchange`]).
    pub bindings: Vec<String>,
    /// `x-dead-letter-exchange`.
    pub dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key`.
    pub dead_letter_routing_key: Option<String>,
    /// `x-message-ttl`: expired messages are dead-lettered with reason `expired`.
    pub message_ttl: Option<Duration>,
    /// `x-max-length` (with `x-overflow=reject-publish`): publishing to a full
    /// queue is nacked. `None` leaves it unbounded on RabbitMQ; the in-memory
    /// broker always bounds (see [`crate::memory::MemoryConfig::default_max_length`]).
    pub max_length: Option<u64>,
    /// Further `x-` arguments, as integers or strings.
    pub arguments: BTreeMap<String, ArgValue>,
}

impl QueueSpec {
    /// Where a dead letter of this queue goes: its dead-letter exchange,
    /// with `message`'s routing key set to the dead-letter routing key when
    /// one is configured. `None`, `message` untouched, when the queue has no
    /// dead-letter exchange. Costs one string copy when the key is replaced.
    pub(crate) fn dead_letter_target(&self, message: &mut crate::Message) -> Option<&str> {
        let dlx = self.dead_letter_exchange.as_deref()?;
        if let Some(k) = &self.dead_letter_routing_key {
            message.routing_key.clone_from(k);
        }
        Some(dlx)
    }
}

/// An extra queue argument value.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ArgValue {
    /// An integer argument.
    Int(i64),
    /// A string argument.
    Str(String),
}

/// SPEC §5 defaults.
pub mod defaults {
    /// Main topic exchange.
    pub const EXCHANGE: &str = "finsight.events";
    /// Dead-letter exchange (direct).
    pub const DEAD_LETTER_EXCHANGE: &str = "finsight.dlx";
    /// Dead-letter queue.
    pub const DEAD_LETTER_QUEUE: &str = "finsight.dlq";
    /// Dead-letter routing key.
    pub const DEAD_LETTER_ROUTING_KEY: &str = "dead.letter";
    /// Consumer queue message TTL: 300 000 ms.
    pub const MESSAGE_TTL_MS: u64 = 300_000;
}

/// The whole topology: main exchange, dead-letter exchange and queue,
/// consumer queues. Declared at startup, compared with the broker, and
/// re-applied after every reconnect.
///
/// ```
/// use finsight_bus::Topology;
/// let t = Topology::finsight().consumer_queue("sentiment");
/// assert_eq!(t.exchange.name, "finsight.events");
/// let q = t.queue("sentiment").unwrap();
/// assert_eq!(q.bindings, ["*.sentiment"]);
/// assert_eq!(q.dead_letter_routing_key.as_deref(), Some("dead.letter"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// The topic exchange events are published to.
    pub exchange: ExchangeSpec,
    /// The dead-letter exchange.
    pub dead_letter_exchange: ExchangeSpec,
    /// The dead-letter queue, bound to the dead-letter exchange.
    pub dead_letter_queue: QueueSpec,
    /// Consumer queues, bound to the main exchange.
    pub queues: Vec<QueueSpec>,
}

impl Default for Topology {
    fn default() -> Self {
        Self::finsight()
    }
}

impl Topology {
    /// The SPEC §5 topology without consumer queues: topic exchange
    /// `finsight.events` (durable), DLX `finsight.dlx` (direct, durable),
    /// queue `finsight.dlq` bound with `dead.letter`.
    pub fn finsight() -> Self {
        Self::with_names(
            defaults::EXCHANGE,
            defaults::DEAD_LETTER_EXCHANGE,
            defaults::DEAD_LETTER_QUEUE,
            defaults::DEAD_LETTER_ROUTING_KEY,
        )
    }

    /// The SPEC §5 shape with every name prefixed by `<prefix>.` (for tests,
    /// or several environments on one broker).
    pub fn prefixed(prefix: &str) -> Self {
        Self::with_names(
            &format!("{prefix}.{}", defaults::EXCHANGE),
            &format!("{prefix}.{}", defaults::DEAD_LETTER_EXCHANGE),
            &format!("{prefix}.{}", defaults::DEAD_LETTER_QUEUE),
            defaults::DEAD_LETTER_ROUTING_KEY,
        )
    }

    /// The SPEC §5 shape with the given names.
    pub fn with_names(exchange: &str, dlx: &str, dlq: &str, dead_letter_routing_key: &str) -> Self {
        Self {
            exchange: ExchangeSpec {
                name: exchange.into(),
                kind: ExchangeKind::Topic,
                durable: true,
            },
            dead_letter_exchange: ExchangeSpec {
                name: dlx.into(),
                kind: ExchangeKind::Direct,
                durable: true,
            },
            dead_letter_queue: QueueSpec {
                name: dlq.into(),
                durable: true,
                bindings: vec![dead_letter_routing_key.into()],
                dead_letter_exchange: None,
                dead_letter_routing_key: None,
                message_ttl: None,
                max_length: None,
                arguments: BTreeMap::new(),
            },
            queues: Vec::new(),
        }
    }

    /// Adds a consumer queue with the SPEC §5 arguments: durable,
    /// `x-dead-letter-exchange` = the DLX, `x-dead-letter-routing-key` = the
    /// dead-letter queue's binding, `x-message-ttl` = 300 000 ms, bound with
    /// `*.<name>`. Change the returned spec through [`Topology::queue_mut`].
    #[must_use]
    pub fn consumer_queue(mut self, name: &str) -> Self {
        let spec = QueueSpec {
            name: name.into(),
            durable: true,
            bindings: vec![format!("*.{name}")],
            dead_letter_exchange: Some(self.dead_letter_exchange.name.clone()),
            dead_letter_routing_key: self.dead_letter_queue.bindings.first().cloned(),
            message_ttl: Some(Duration::from_millis(defaults::MESSAGE_TTL_MS)),
            max_length: None,
            arguments: BTreeMap::new(),
        };
        self.queues.retain(|q| q.name != name);
        self.queues.push(spec);
        self
    }

    /// Adds a fully specified queue.
    #[must_use]
    pub fn queue_spec(mut self, spec: QueueSpec) -> Self {
        self.queues.retain(|q| q.name != spec.name);
        self.queues.push(spec);
        self
    }

    /// The queue named `name` (consumer queues and the dead-letter queue).
    pub fn queue(&self, name: &str) -> Option<&QueueSpec> {
        self.queues
            .iter()
            .chain(std::iter::once(&self.dead_letter_queue))
            .find(|q| q.name == name)
    }

    /// The queue named `name`, or [`Error::NotDeclared`](crate::Error::NotDeclared)
    /// naming it. A linear scan of the queues; allocates only on the error.
    pub(crate) fn require_queue(&self, name: &str) -> crate::Result<&QueueSpec> {
        self.queue(name).ok_or_else(|| crate::Error::NotDeclared {
            kind: "queue",
            name: name.to_owned(),
        })
    }

    /// [`Topology::require_queue`] on a transport's declared topology, which
    /// is `None` before the first declare.
    #[cfg_attr(
        not(any(feature = "rabbitmq", feature = "redis-streams")),
        allow(dead_code)
    )]
    pub(crate) fn require_declared_queue(
        declared: Option<&Self>,
        name: &str,
    ) -> crate::Result<QueueSpec> {
        match declared {
            Some(t) => t.require_queue(name).cloned(),
            None => Err(crate::Error::NotDeclared {
                kind: "queue",
                name: name.to_owned(),
            }),
        }
    }

    /// Mutable access to a consumer queue, to change its arguments.
    pub fn queue_mut(&mut self, name: &str) -> Option<&mut QueueSpec> {
        self.queues.iter_mut().find(|q| q.name == name)
    }

    /// Every queue with the exchange it is bound to: consumer queues on the
    /// main exchange, the dead-letter queue on the DLX.
    pub fn bound_queues(&self) -> impl Iterator<Item = (&ExchangeSpec, &QueueSpec)> {
        self.queues
            .iter()
            .map(move |q| (&self.exchange, q))
            .chain(std::iter::once((
                &self.dead_letter_exchange,
                &self.dead_letter_queue,
            )))
    }

    /// The exchange spec named `name`, if it is one of the two.
    pub fn exchange_named(&self, name: &str) -> Option<&ExchangeSpec> {
        [&self.exchange, &self.dead_letter_exchange]
            .into_iter()
            .find(|e| e.name == name)
    }
}

/// AMQP topic matching: words split on `.`, `*` matches exactly one word,
/// `#` zero or more. Allocation-free.
///
/// ```
/// use finsight_bus::topology::topic_matches;
/// assert!(topic_matches("*.billing", "order_placed.billing"));
/// assert!(topic_matches("order.#", "order"));
/// assert!(!topic_matches("*.billing", "a.b.billing"));
/// ```
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    let p: smallvec_words::Words<'_> = smallvec_words::Words::new(pattern);
    let k: smallvec_words::Words<'_> = smallvec_words::Words::new(key);
    match_words(p.as_slice(), k.as_slice(), None)
}

/// Whether a binding pattern can match some routing key `<event_type>.<word>`
/// (the SPEC §5 routing key shape) — used by strict mode.
pub(crate) fn binding_routes_event_type(pattern: &str, event_type: &str) -> bool {
    let p = smallvec_words::Words::new(pattern);
    let k = smallvec_words::Words::new(event_type);
    // The final service word is "any word": model it with a wildcard marker.
    match_words(p.as_slice(), k.as_slice(), Some(()))
}

fn match_words(p: &[&str], k: &[&str], any_tail: Option<()>) -> bool {
    match p.split_first() {
        None => k.is_empty() && any_tail.is_none(),
        Some((&"#", rest)) => {
            (0..=k.len()).any(|i| match_words(rest, &k[i..], any_tail))
                || (any_tail.is_some() && match_words(rest, &[], None))
        }
        Some((w, rest)) => match k.split_first() {
            Some((kw, krest)) => (*w == "*" || w == kw) && match_words(rest, krest, any_tail),
            None => any_tail.is_some() && match_words(rest, &[], None),
        },
    }
}

mod smallvec_words {
    /// Words of a dotted key, on the stack for up to 16 words.
    pub(super) struct Words<'a> {
        buf: [&'a str; 16],
        len: usize,
        heap: Option<Vec<&'a str>>,
    }
    impl<'a> Words<'a> {
        pub(super) fn new(s: &'a str) -> Self {
            let mut w = Words {
                buf: [""; 16],
                len: 0,
                heap: None,
            };
            if s.is_empty() {
                return w;
            }
            for part in s.split('.') {
                if let Some(h) = &mut w.heap {
                    h.push(part);
                } else if w.len < 16 {
                    w.buf[w.len] = part;
                    w.len += 1;
                } else {
                    let mut h = w.buf.to_vec();
                    h.push(part);
                    w.heap = Some(h);
                }
            }
            w
        }
        pub(super) fn as_slice(&self) -> &[&'a str] {
            match &self.heap {
                Some(h) => h,
                None => &self.buf[..self.len],
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_wildcards() {
        assert!(topic_matches("a.*.c", "a.b.c"));
        assert!(!topic_matches("a.*.c", "a.c"));
        assert!(topic_matches("#", ""));
        assert!(topic_matches("#", "a.b"));
        assert!(topic_matches("a.#.c", "a.c"));
        assert!(topic_matches("a.#.c", "a.x.y.c"));
        assert!(!topic_matches("a.#.c", "a.x.y.d"));
        assert!(topic_matches("*.q", "evt.q"));
        assert!(!topic_matches("*.q", "evt.other"));
        let long = vec!["w"; 20].join(".");
        assert!(topic_matches("#.w", &long));
    }

    #[test]
    fn strict_mode_matching() {
        assert!(binding_routes_event_type("*.q", "order_placed"));
        assert!(binding_routes_event_type("order_placed.*", "order_placed"));
        assert!(binding_routes_event_type("order_placed.q", "order_placed"));
        assert!(!binding_routes_event_type("order_placed.q", "other"));
        assert!(binding_routes_event_type("#", "x"));
        assert!(binding_routes_event_type("a.#", "a"));
        assert!(!binding_routes_event_type("a.b.*", "a"));
    }

    #[test]
    fn spec_defaults() {
        let t = Topology::finsight().consumer_queue("q");
        assert_eq!(t.dead_letter_exchange.name, "finsight.dlx");
        assert_eq!(t.dead_letter_exchange.kind, ExchangeKind::Direct);
        assert_eq!(t.dead_letter_queue.name, "finsight.dlq");
        assert_eq!(t.dead_letter_queue.bindings, ["dead.letter"]);
        let q = t.queue("q").unwrap();
        assert_eq!(q.message_ttl, Some(Duration::from_millis(300_000)));
        assert_eq!(q.dead_letter_exchange.as_deref(), Some("finsight.dlx"));
        let p = Topology::prefixed("t1").consumer_queue("q");
        assert_eq!(p.exchange.name, "t1.finsight.events");
        assert_eq!(
            p.queue("q").unwrap().dead_letter_exchange.as_deref(),
            Some("t1.finsight.dlx")
        );
    }
}
