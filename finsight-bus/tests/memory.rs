//! In-memory broker behaviour that the real brokers have too: TTL →
//! dead-letter, wildcards, prefetch, delivery count, redelivery after a
//! (scripted) connection loss, bounded queues, handler timeout, retry
//! backoff on the paused clock.

use finsight_bus::*;
use futures_util::future::BoxFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

async fn bus_with(broker: &MemoryBroker, topology: Topology, service: &str) -> Bus {
    Bus::connect(broker.clone(), topology, service)
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn ttl_expiry_dead_letters_with_reason() {
    let broker = MemoryBroker::new();
    let bus = bus_with(&broker, Topology::finsight().consumer_queue("q"), "q").await;
    bus.publish(&Envelope::new("e", &1).unwrap()).await.unwrap();
    assert_eq!(broker.queue_len("q"), Some(1));
    tokio::time::advance(Duration::from_millis(299_999)).await;
    assert_eq!(broker.queue_len("q"), Some(1));
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(broker.queue_len("q"), Some(0));
    let dead = broker.take("finsight.dlq", 10);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].headers["x-first-death-reason"], "expired");
    assert_eq!(dead[0].headers["x-first-death-queue"], "q");
    assert_eq!(dead[0].routing_key, "dead.letter");
    assert_eq!(dead[0].headers["event_type"], "e");
}

#[tokio::test]
async fn topic_wildcards_route_like_rabbitmq() {
    let broker = MemoryBroker::new();
    let mut t = Topology::finsight()
        .consumer_queue("all")
        .consumer_queue("orders");
    t.queue_mut("all").unwrap().bindings = vec!["#".into()];
    t.queue_mut("orders").unwrap().bindings = vec!["order.*.eu".into(), "order.#.us".into()];
    let bus = bus_with(&broker, t, "svc").await;
    for key in [
        "order.placed.eu",
        "order.placed.x.us",
        "order.us",
        "order.placed.asia",
        "x",
    ] {
        let env = Envelope::new("e", &1).unwrap().with_routing_key(key);
        assert!(bus.publish(&env).await.unwrap().is_confirmed());
    }
    assert_eq!(broker.queue_len("all"), Some(5));
    assert_eq!(broker.queue_len("orders"), Some(3));
}

#[tokio::test]
async fn prefetch_bounds_unacked_deliveries() {
    let broker = MemoryBroker::new();
    let bus = bus_with(&broker, Topology::finsight().consumer_queue("q"), "q").await;
    for i in 0..10 {
        bus.publish(&Envelope::new("e", &i).unwrap()).await.unwrap();
    }
    let mut sub = broker
        .subscribe(
            "q",
            SubscribeOptions {
                prefetch: 3,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(sub.next().await.unwrap().unwrap());
    }
    let fourth = tokio::time::timeout(Duration::from_millis(50), sub.next()).await;
    assert!(fourth.is_err(), "a 4th delivery arrived beyond prefetch 3");
    held.pop().unwrap().acker.ack().await.unwrap();
    assert!(sub.next().await.unwrap().is_ok());
}

#[tokio::test]
async fn requeue_counts_deliveries_and_marks_redelivered() {
    let broker = MemoryBroker::new();
    let bus = bus_with(&broker, Topology::finsight().consumer_queue("q"), "q").await;
    bus.publish(&Envelope::new("e", &1).unwrap()).await.unwrap();
    let mut sub = broker
        .subscribe("q", SubscribeOptions::default())
        .await
        .unwrap();
    let d = sub.next().await.unwrap().unwrap();
    assert_eq!((d.delivery_count, d.redelivered), (1, false));
    d.acker.requeue().await.unwrap();
    let d = sub.next().await.unwrap().unwrap();
    assert_eq!((d.delivery_count, d.redelivered), (2, true));
    drop(d); // unsettled and dropped: back to the queue, like a closed channel
    let d = sub.next().await.unwrap().unwrap();
    assert_eq!(d.delivery_count, 3);
    d.acker.ack().await.unwrap();
    assert_eq!(broker.queue_len("q"), Some(0));
}

#[tokio::test]
async fn scripted_disconnect_redelivers_and_consumer_resubscribes() {
    let broker = MemoryBroker::new();
    let bus = bus_with(&broker, Topology::finsight().consumer_queue("q"), "q").await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let calls = Arc::new(AtomicU32::new(0));
    let (g, c) = (gate.clone(), calls.clone());
    let router = Router::new().on("e", move |ctx: Context| {
        let (g, c) = (g.clone(), c.clone());
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            if !ctx.redelivered() {
                // Hold the first delivery until the connection is gone.
                let _p = g.acquire().await;
            }
            Ok(())
        }
    });
    let consumer = bus
        .consumer("q", router)
        .resubscribe_backoff(Duration::from_millis(1), Duration::from_millis(5))
        .start()
        .unwrap();
    bus.publish(&Envelope::new("e", &1).unwrap()).await.unwrap();
    for _ in 0..500 {
        if calls.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    broker.disconnect();
    gate.add_permits(1);
    // The ack fails (connection lost), the message comes back redelivered.
    for _ in 0..500 {
        if consumer.stats().acked == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let st = consumer.shutdown(Duration::from_secs(1)).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!((st.acked, st.settle_errors), (1, 1));
    assert!(st.subscriptions >= 2, "{st:?}");
    assert_eq!(broker.reconnects(), 1);
}

#[tokio::test]
async fn offline_broker_fails_publish_and_nack_script() {
    let broker = MemoryBroker::new();
    let bus = bus_with(&broker, Topology::finsight().consumer_queue("q"), "q").await;
    broker.set_offline(true);
    assert!(matches!(
        bus.publish(&Envelope::new("e", &1).unwrap()).await,
        Err(Error::ConnectionLost)
    ));
    assert_eq!(bus.health().await.state, ConnectionState::Disconnected);
    broker.set_offline(false);
    broker.nack_next(1);
    assert_eq!(
        bus.publish(&Envelope::new("e", &1).unwrap()).await.unwrap(),
        PublishOutcome::Nacked
    );
    assert!(
        bus.publish(&Envelope::new("e", &1).unwrap())
            .await
            .unwrap()
            .is_confirmed()
    );
}

#[tokio::test]
async fn full_queue_nacks_publish() {
    let broker = MemoryBroker::with_config(MemoryConfig {
        default_max_length: 2,
    });
    let bus = bus_with(&broker, Topology::finsight().consumer_queue("q"), "q").await;
    for _ in 0..2 {
        assert!(
            bus.publish(&Envelope::new("e", &1).unwrap())
                .await
                .unwrap()
                .is_confirmed()
        );
    }
    assert_eq!(
        bus.publish(&Envelope::new("e", &1).unwrap()).await.unwrap(),
        PublishOutcome::Nacked
    );
    assert_eq!(broker.queue_len("q"), Some(2));
}

#[tokio::test(start_paused = true)]
async fn handler_timeout_is_retried_then_dead_lettered() {
    let broker = MemoryBroker::new();
    let bus = bus_with(&broker, Topology::finsight().consumer_queue("q"), "q").await;
    let router = Router::new().on("slow", |_c: Context| async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(())
    });
    let consumer = bus
        .consumer("q", router)
        .handler_timeout(Some(Duration::from_secs(1)))
        .retry(RetryPolicy {
            max_attempts: 2,
            ..RetryPolicy::default()
        })
        .start()
        .unwrap();
    bus.publish(&Envelope::new("slow", &1).unwrap())
        .await
        .unwrap();
    for _ in 0..100 {
        if consumer.stats().dead_lettered == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let dead = broker.take("finsight.dlq", 10);
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].headers[HEADER_DEAD_LETTER_REASON],
        "handler-timeout"
    );
    assert_eq!(dead[0].headers[HEADER_DEAD_LETTER_ATTEMPTS], "2");
    assert_eq!(consumer.stats().retries, 1);
}

#[tokio::test(start_paused = true)]
async fn retry_waits_the_backoff_between_attempts() {
    let broker = MemoryBroker::new();
    let bus = bus_with(&broker, Topology::finsight().consumer_queue("q"), "q").await;
    let times = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let t2 = times.clone();
    let start = tokio::time::Instant::now();
    let router = Router::new().on("e", move |_c: Context| {
        let t = t2.clone();
        async move {
            t.lock().push(start.elapsed());
            if t.lock().len() < 3 {
                Err(HandlerError::msg("not yet"))
            } else {
                Ok(())
            }
        }
    });
    let policy = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        multiplier: 3,
    };
    let consumer = bus.consumer("q", router).retry(policy).start().unwrap();
    bus.publish(&Envelope::new("e", &1).unwrap()).await.unwrap();
    for _ in 0..100 {
        if consumer.stats().acked == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t = times.lock().clone();
    assert_eq!(t.len(), 3);
    assert_eq!(t[1] - t[0], Duration::from_millis(100));
    assert_eq!(t[2] - t[1], Duration::from_millis(300));
}

#[tokio::test]
async fn typed_handler_dead_letters_undecodable_payload_without_retry() {
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Order {
        id: u64,
    }
    let broker = MemoryBroker::new();
    let bus = bus_with(&broker, Topology::finsight().consumer_queue("q"), "q").await;
    let router = Router::new().on_typed("order", |_c: Context, _o: Order| async { Ok(()) });
    let consumer = bus.consumer("q", router).start().unwrap();
    bus.publish(&Envelope::new("order", &serde_json::json!({"id": "not a number"})).unwrap())
        .await
        .unwrap();
    for _ in 0..500 {
        if consumer.stats().dead_lettered == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(consumer.stats().retries, 0);
    let dead = broker.take("finsight.dlq", 1);
    assert_eq!(dead[0].headers[HEADER_DEAD_LETTER_ATTEMPTS], "1");
    assert!(dead[0].headers[HEADER_DEAD_LETTER_REASON].contains("not valid for this type"));
}

#[test]
fn public_types_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Bus>();
    assert_send_sync::<Error>();
    assert_send_sync::<Envelope>();
    assert_send_sync::<MemoryBroker>();
    assert_send_sync::<Router>();
    assert_send_sync::<ConsumerHandle>();
}

/// A broker that accepts work and never answers: the first `subscribes`
/// subscriptions and the first `acks` acknowledgements stay pending
/// forever, as on a half-dead connection during a broker restart.
#[derive(Debug)]
struct Stalling {
    inner: MemoryBroker,
    subscribes: Arc<AtomicU32>,
    acks: Arc<AtomicU32>,
}

fn take_one(n: &AtomicU32) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
        .is_ok()
}

struct StallingStream {
    inner: Box<dyn DeliveryStream>,
    acks: Arc<AtomicU32>,
}

struct StallingAcker {
    inner: Box<dyn Acker>,
    stall: bool,
}

impl Acker for StallingAcker {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        if self.stall {
            // Holds the delivery while it hangs, as a real half-dead
            // channel does; dropping it requeues the message.
            return Box::pin(async move {
                let _held = self;
                std::future::pending::<Result<()>>().await
            });
        }
        self.inner.ack()
    }
    fn requeue(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        self.inner.requeue()
    }
    fn dead_letter(self: Box<Self>, message: Message) -> BoxFuture<'static, Result<()>> {
        self.inner.dead_letter(message)
    }
}

impl DeliveryStream for StallingStream {
    fn next(&mut self) -> BoxFuture<'_, Option<Result<Delivery>>> {
        Box::pin(async move {
            let mut d = self.inner.next().await?;
            if let Ok(d) = &mut d {
                let inner = std::mem::replace(&mut d.acker, Box::new(NoAcker));
                d.acker = Box::new(StallingAcker {
                    inner,
                    stall: take_one(&self.acks),
                });
            }
            Some(d)
        })
    }
    fn cancel(&mut self) -> BoxFuture<'_, Result<()>> {
        self.inner.cancel()
    }
}

struct NoAcker;
impl Acker for NoAcker {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async { Ok(()) })
    }
    fn requeue(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async { Ok(()) })
    }
    fn dead_letter(self: Box<Self>, _: Message) -> BoxFuture<'static, Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

impl Transport for Stalling {
    fn declare<'a>(&'a self, topology: &'a Topology) -> BoxFuture<'a, Result<()>> {
        self.inner.declare(topology)
    }
    fn send<'a>(
        &'a self,
        exchange: &'a str,
        message: Message,
        options: PublishOptions,
    ) -> BoxFuture<'a, Result<PendingConfirm>> {
        self.inner.send(exchange, message, options)
    }
    fn subscribe<'a>(
        &'a self,
        queue: &'a str,
        options: SubscribeOptions,
    ) -> BoxFuture<'a, Result<Box<dyn DeliveryStream>>> {
        if take_one(&self.subscribes) {
            return Box::pin(std::future::pending());
        }
        let acks = self.acks.clone();
        Box::pin(async move {
            let inner = self.inner.subscribe(queue, options).await?;
            let s: Box<dyn DeliveryStream> = Box::new(StallingStream { inner, acks });
            Ok(s)
        })
    }
    fn health(&self) -> BoxFuture<'_, Health> {
        self.inner.health()
    }
    fn close(&self, deadline: Duration) -> BoxFuture<'_, Result<()>> {
        self.inner.close(deadline)
    }
}

async fn stalling_bus(subscribes: u32, acks: u32) -> Bus {
    let t = Stalling {
        inner: MemoryBroker::new(),
        subscribes: Arc::new(AtomicU32::new(subscribes)),
        acks: Arc::new(AtomicU32::new(acks)),
    };
    Bus::connect(t, Topology::finsight().consumer_queue("q"), "q")
        .await
        .unwrap()
}

fn counting_router(calls: &Arc<AtomicU32>) -> Router {
    let c = calls.clone();
    Router::new().on("e", move |_ctx: Context| {
        let c = c.clone();
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_subscribe_that_never_answers_is_abandoned_and_retried() {
    let bus = stalling_bus(1, 0).await;
    let calls = Arc::new(AtomicU32::new(0));
    let consumer = bus
        .consumer("q", counting_router(&calls))
        .subscribe_timeout(Duration::from_secs(5))
        .resubscribe_backoff(Duration::from_millis(10), Duration::from_millis(10))
        .start()
        .unwrap();
    bus.publish(&Envelope::new("e", &1).unwrap()).await.unwrap();
    // Bounded wait on the paused clock (10 virtual minutes).
    for _ in 0..600 {
        if consumer.stats().acked == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let st = consumer.shutdown(Duration::from_secs(1)).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!((st.acked, st.subscriptions), (1, 1), "{st:?}");
}

#[tokio::test(start_paused = true)]
async fn an_ack_that_never_answers_frees_its_slot_after_the_settle_timeout() {
    let bus = stalling_bus(0, 1).await;
    let calls = Arc::new(AtomicU32::new(0));
    let consumer = bus
        .consumer("q", counting_router(&calls))
        .concurrency(1)
        .settle_timeout(Duration::from_secs(2))
        .start()
        .unwrap();
    for n in 0..2 {
        bus.publish(&Envelope::new("e", &n).unwrap()).await.unwrap();
    }
    for _ in 0..600 {
        if consumer.stats().acked == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let st = consumer.shutdown(Duration::from_secs(1)).await.unwrap();
    // With one slot, the second message is handled only because the
    // stalled ack of the first gave its slot back; the first comes back
    // (redelivered, at least once) and is handled again.
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!((st.acked, st.settle_errors), (2, 1), "{st:?}");
}

/// A dead letter with no route (the queue's dead-letter routing key is not
/// bound) is not acknowledged away: the original is held for the retry
/// delay, then requeued and handled again; no hot loop in between.
#[tokio::test(start_paused = true)]
async fn unroutable_dead_letter_requeues_after_the_retry_delay() {
    let broker = MemoryBroker::new();
    broker.set_dead_letter_retry_delay(Duration::from_secs(5));
    let (bus, consumer, calls) = unroutable_dead_letters(&broker, None).await;
    tokio::time::sleep(Duration::from_millis(4_900)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "redelivered before the delay"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let st = consumer.stats();
    assert_eq!((st.acked, st.dead_lettered), (0, 0), "{st:?}");
    assert_eq!(st.dead_letter_failures, 1, "{st:?}");
    assert_eq!(broker.queue_len("finsight.dlq"), Some(0));
    assert_eq!(bus.health().await.dead_letter_failures, 2);
    drop(consumer);
}

/// A consumer on queue `q` whose handler always fails (no retries) and
/// whose dead letters have no route; counts handler calls.
async fn unroutable_dead_letters(
    broker: &MemoryBroker,
    settle_timeout: Option<Duration>,
) -> (Bus, ConsumerHandle, Arc<AtomicU32>) {
    let mut topology = Topology::finsight().consumer_queue("q");
    topology.queue_mut("q").unwrap().dead_letter_routing_key = Some("nowhere".into());
    let bus = bus_with(broker, topology, "q").await;
    let calls = Arc::new(AtomicU32::new(0));
    let c2 = calls.clone();
    let router = Router::new().on("e", move |_ctx: Context| {
        c2.fetch_add(1, Ordering::SeqCst);
        async { Err(HandlerError::msg("no")) }
    });
    let mut builder = bus.consumer("q", router).retry(RetryPolicy::none());
    if let Some(t) = settle_timeout {
        builder = builder.settle_timeout(t);
    }
    let consumer = builder.start().unwrap();
    bus.publish(&Envelope::new("e", &1).unwrap()).await.unwrap();
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(broker.dead_letter_failures(), 1);
    (bus, consumer, calls)
}

/// The consumer's default settle timeout is derived from the backend's own
/// bound of a settle (`Transport::settle_bound`; here the dead-letter retry
/// delay, 45 s, longer than the 30 s default): the held dead-letter settle
/// runs to its requeue and counts as a dead-letter failure, instead of
/// being cut off by the settle timeout at 30 s (a settle error). On
/// RabbitMQ the same derivation covers `confirm_timeout +
/// dead_letter_retry_delay`, where a cut-off settle would leave the
/// original unacknowledged until its channel closes.
#[tokio::test(start_paused = true)]
async fn default_settle_timeout_outlasts_the_backends_own_bound() {
    let broker = MemoryBroker::new();
    broker.set_dead_letter_retry_delay(Duration::from_secs(45));
    assert_eq!(broker.settle_bound(), Some(Duration::from_secs(45)));
    let (bus, consumer, calls) = unroutable_dead_letters(&broker, None).await;
    tokio::time::sleep(Duration::from_millis(44_900)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "settle cut off early");
    let st = consumer.stats();
    assert_eq!(
        (st.settle_errors, st.dead_letter_failures),
        (0, 0),
        "{st:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let st = consumer.stats();
    assert_eq!(
        (st.settle_errors, st.dead_letter_failures),
        (0, 1),
        "{st:?}"
    );
    assert_eq!((st.acked, st.dead_lettered), (0, 0), "{st:?}");
    // The second delivery's dead letter failed too (and is being held).
    let h = bus.health().await;
    assert_eq!(h.dead_letter_failures, 2, "{h:?}");
    assert_eq!(h.dead_letter_failures, broker.dead_letter_failures());
    drop(consumer);
}

/// An explicit settle timeout at or below the backend's bound wins (and is
/// logged at `warn`): the held dead-letter settle is abandoned at the
/// timeout — a settle error; the in-memory broker requeues the dropped
/// delivery at once, as RabbitMQ would only when the channel closes.
#[tokio::test(start_paused = true)]
async fn explicit_settle_timeout_below_the_bound_cuts_the_settle_off() {
    let broker = MemoryBroker::new();
    broker.set_dead_letter_retry_delay(Duration::from_secs(45));
    let (_bus, consumer, calls) =
        unroutable_dead_letters(&broker, Some(Duration::from_secs(20))).await;
    tokio::time::sleep(Duration::from_millis(19_900)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "abandoned settle not requeued"
    );
    let st = consumer.stats();
    assert_eq!(
        (st.settle_errors, st.dead_letter_failures),
        (1, 0),
        "{st:?}"
    );
    drop(consumer);
}

/// A `tracing` layer that records, for every event with target
/// `handler_probe`, the `correlation_id` field of the enclosing `bus.handle`
/// span (`None` when the event is outside such a span).
mod span_probe {
    use std::sync::{Arc, Mutex};
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id};
    use tracing::{Event, Subscriber};
    use tracing_subscriber::layer::{Context, Layer};
    use tracing_subscriber::registry::LookupSpan;

    #[derive(Default)]
    struct Fields(Vec<(&'static str, String)>);

    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.push((field.name(), format!("{value:?}")));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.push((field.name(), value.to_owned()));
        }
    }

    pub type Seen = Arc<Mutex<Vec<Option<String>>>>;

    pub struct Probe(pub Seen);

    impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Probe {
        fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
            let mut fields = Fields::default();
            attrs.record(&mut fields);
            if let Some(span) = ctx.span(id) {
                span.extensions_mut().insert(fields);
            }
        }

        fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
            if event.metadata().target() != "handler_probe" {
                return;
            }
            let found = ctx.event_scope(event).and_then(|scope| {
                scope.filter(|s| s.name() == "bus.handle").find_map(|s| {
                    let ext = s.extensions();
                    ext.get::<Fields>()?
                        .0
                        .iter()
                        .find(|(k, _)| *k == "correlation_id")
                        .map(|(_, v)| v.clone())
                })
            });
            self.0.lock().unwrap().push(found);
        }
    }
}

/// Handlers run inside the `bus.handle` span whose `correlation_id` is the
/// envelope's: one that finishes on its first poll (the inline path) and
/// one that has to wait (the boxed path).
#[tokio::test]
async fn handlers_run_in_a_span_with_the_correlation_id() {
    use tracing_subscriber::layer::SubscriberExt;
    let seen: span_probe::Seen = Arc::default();
    let subscriber = tracing_subscriber::registry().with(span_probe::Probe(seen.clone()));
    let _guard = tracing::subscriber::set_default(subscriber);
    tracing::info!(target: "handler_probe", "outside any handler");

    let broker = MemoryBroker::new();
    let bus = bus_with(&broker, Topology::finsight().consumer_queue("q"), "q").await;
    let router = Router::new()
        .on("now", |_ctx: Context| async {
            tracing::info!(target: "handler_probe", "inline");
            Ok(())
        })
        .on("later", |_ctx: Context| async {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
            tracing::info!(target: "handler_probe", "after waiting");
            Ok(())
        });
    let consumer = bus.consumer("q", router).start().unwrap();
    let now = Envelope::new("now", &1)
        .unwrap()
        .with_correlation_id("corr-inline-1");
    let later = Envelope::new("later", &2)
        .unwrap()
        .with_correlation_id("corr-waiting-2");
    assert!(bus.publish(&now).await.unwrap().is_confirmed());
    assert!(bus.publish(&later).await.unwrap().is_confirmed());
    for _ in 0..500 {
        if consumer.stats().acked == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(consumer.stats().acked, 2);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            None,
            Some("corr-inline-1".to_owned()),
            Some("corr-waiting-2".to_owned())
        ]
    );
    drop(consumer);
}
