//! One conformance suite for every backend. Each backend's test file calls
//! `conformance_suite!(fixture)` with an async fn returning a fresh
//! transport; every test uses its own topology prefix and queue names
//! (`finsight_testkit::unique`), so tests run in parallel on a shared broker.
#![allow(dead_code)]

use finsight_bus::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;

pub type Transport_ = Arc<dyn Transport>;

/// Polls `cond` every 10 ms for at most `secs` seconds.
pub async fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..secs * 100 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

pub struct Setup {
    pub bus: Bus,
    pub queue: String,
    pub dlq: String,
    pub service: String,
}

/// Test queues expire on RabbitMQ once unused for 10 minutes
/// (`x-expires`). Every test declares durable queues under fresh names; a
/// broker that restarts (the outage tests) recovers every queue left
/// behind, and with ~1 800 of them from repeated runs RabbitMQ 3.10's
/// recovery ran short of file handles and hung for 20 minutes. The other
/// backends keep the argument as data.
pub fn expiring(mut t: Topology) -> Topology {
    for q in t
        .queues
        .iter_mut()
        .chain(std::iter::once(&mut t.dead_letter_queue))
    {
        q.arguments
            .insert("x-expires".into(), ArgValue::Int(600_000));
    }
    t
}

/// A bus on a fresh topology with one consumer queue; the bus's service is
/// the queue name, so `<event>.<service>` routes to the queue.
pub async fn setup(transport: Transport_) -> Setup {
    let prefix = finsight_testkit::unique("conf");
    let queue = finsight_testkit::unique("q");
    let topology = expiring(Topology::prefixed(&prefix).consumer_queue(&queue));
    let dlq = topology.dead_letter_queue.name.clone();
    let bus = Bus::connect_shared(transport, topology, queue.clone())
        .await
        .expect("declare");
    Setup {
        bus,
        queue: queue.clone(),
        dlq,
        service: queue,
    }
}

pub fn fast_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts: attempts,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        multiplier: 2,
    }
}

type Seen = Arc<Mutex<Vec<Envelope>>>;

fn capture(seen: &Seen) -> impl Handler + use<> {
    let seen = seen.clone();
    move |ctx: Context| {
        let seen = seen.clone();
        async move {
            seen.lock().await.push(ctx.envelope().clone());
            Ok(())
        }
    }
}

/// A handler that counts its calls in `calls` and always fails with
/// `reason`.
fn always_failing(calls: &Arc<AtomicU32>, reason: &'static str) -> impl Handler + use<> {
    let calls = calls.clone();
    move |_ctx: Context| {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(HandlerError::msg(reason))
        }
    }
}

pub type Dead = Arc<Mutex<Vec<Message>>>;

/// A raw subscriber of the dead-letter queue that records every message
/// (also ones that are not valid envelopes) and acks it.
pub fn dlq_consumer(s: &Setup, _event_types: &[&str]) -> (tokio::task::JoinHandle<()>, Dead) {
    let dead: Dead = Arc::default();
    let d = dead.clone();
    let t = s.bus.transport().clone();
    let q = s.dlq.clone();
    let h = tokio::spawn(async move {
        let mut sub = t
            .subscribe(&q, SubscribeOptions::default())
            .await
            .expect("subscribe dlq");
        while let Some(Ok(del)) = sub.next().await {
            d.lock().await.push(del.message.clone());
            del.acker.ack().await.expect("ack dlq");
        }
    });
    (h, dead)
}

async fn dead_len(d: &Dead) -> usize {
    d.lock().await.len()
}

async fn wait_dead(d: &Dead, n: usize) -> bool {
    wait_dead_for(d, n, 15).await
}

async fn wait_dead_for(d: &Dead, n: usize, secs: u64) -> bool {
    for _ in 0..secs * 100 {
        if dead_len(d).await >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

async fn len(seen: &Seen) -> usize {
    seen.lock().await.len()
}

/// The integer payloads seen so far, in ascending order.
async fn sorted_payloads(seen: &Seen) -> Vec<i64> {
    let mut ns: Vec<i64> = seen
        .lock()
        .await
        .iter()
        .map(|e| e.decode::<i64>().unwrap())
        .collect();
    ns.sort_unstable();
    ns
}

async fn wait_len(seen: &Seen, n: usize) -> bool {
    for _ in 0..1500 {
        if len(seen).await >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

pub async fn publish_consume_round_trip(t: Transport_) {
    let s = setup(t).await;
    let seen: Seen = Arc::default();
    let c = s
        .bus
        .consumer(&s.queue, Router::new().on("order_placed", capture(&seen)))
        .start()
        .unwrap();
    let env = Envelope::new(
        "order_placed",
        &serde_json::json!({"id": 42, "sym": "ACME"}),
    )
    .unwrap()
    .with_header("tenant", "acme");
    assert_eq!(
        s.bus.publish(&env).await.unwrap(),
        PublishOutcome::Confirmed
    );
    assert!(wait_len(&seen, 1).await, "message not handled");
    let got = seen.lock().await[0].clone();
    assert_eq!(got.event_type(), "order_placed");
    assert_eq!(got.message_id(), env.message_id());
    assert_eq!(got.correlation_id(), env.correlation_id());
    assert_eq!(
        got.json().unwrap(),
        serde_json::json!({"id": 42, "sym": "ACME"})
    );
    assert_eq!(
        got.routing_key(),
        Some(format!("order_placed.{}", s.service).as_str())
    );
    assert_eq!(
        got.headers().get("tenant").map(String::as_str),
        Some("acme")
    );
    assert_eq!(
        got.timestamp().timestamp_millis(),
        env.timestamp().timestamp_millis()
    );
    assert!(eventually(10, || c.stats().acked == 1).await);
    let stats = c.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(stats.dead_lettered, 0);
}

pub async fn follow_up_keeps_correlation_id(t: Transport_) {
    let s = setup(t).await;
    let seen: Seen = Arc::default();
    let router = Router::new()
        .on("a", |ctx: Context| async move {
            let o = ctx.publish("b", &serde_json::json!({"from": "a"})).await?;
            if !o.is_confirmed() {
                return Err(HandlerError::msg(format!("{o:?}")));
            }
            Ok(())
        })
        .on("b", capture(&seen));
    let c = s.bus.consumer(&s.queue, router).start().unwrap();
    let first = Envelope::new("a", &1).unwrap();
    assert!(s.bus.publish(&first).await.unwrap().is_confirmed());
    assert!(wait_len(&seen, 1).await);
    let b = seen.lock().await[0].clone();
    assert_eq!(b.correlation_id(), first.correlation_id());
    assert_eq!(b.causation_id(), Some(first.message_id()));
    assert_ne!(b.message_id(), first.message_id());
    c.shutdown(Duration::from_secs(5)).await.unwrap();
}

pub async fn unroutable_is_reported(t: Transport_) {
    let s = setup(t).await;
    let env = Envelope::new("x", &1)
        .unwrap()
        .with_routing_key("x.nobody-listens");
    match s.bus.publish(&env).await.unwrap() {
        PublishOutcome::Unroutable { code, .. } => assert_eq!(code, 312),
        other => panic!("expected Unroutable, got {other:?}"),
    }
    let relaxed = s
        .bus
        .with_publish_options(PublishOptions { mandatory: false });
    assert_eq!(
        relaxed.publish(&env).await.unwrap(),
        PublishOutcome::Confirmed
    );
}

pub async fn failing_handler_is_retried_then_dead_lettered(t: Transport_) {
    let s = setup(t).await;
    let calls = Arc::new(AtomicU32::new(0));
    let router = Router::new().on_named(
        "boom",
        "boom-handler",
        always_failing(&calls, "downstream unavailable"),
    );
    let c = s
        .bus
        .consumer(&s.queue, router)
        .retry(fast_retry(3))
        .start()
        .unwrap();
    let (d, dead) = dlq_consumer(&s, &["boom"]);
    let env = Envelope::new("boom", &serde_json::json!({"n": 1})).unwrap();
    assert!(s.bus.publish(&env).await.unwrap().is_confirmed());
    assert!(wait_dead(&dead, 1).await, "not dead-lettered");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let raw = dead.lock().await[0].clone();
    let h = &raw.headers;
    let m = Envelope::from_message(&raw).unwrap();
    assert_eq!(m.message_id(), env.message_id());
    assert_eq!(m.correlation_id(), env.correlation_id());
    assert_eq!(h[HEADER_DEAD_LETTER_HANDLER], "boom-handler");
    assert_eq!(h[HEADER_DEAD_LETTER_ATTEMPTS], "3");
    assert_eq!(h[HEADER_DEAD_LETTER_QUEUE], s.queue);
    assert!(
        h[HEADER_DEAD_LETTER_REASON].contains("downstream unavailable"),
        "{h:?}"
    );
    assert_eq!(
        h[HEADER_ORIGINAL_ROUTING_KEY],
        format!("boom.{}", s.service)
    );
    assert_eq!(m.json().unwrap(), serde_json::json!({"n": 1}));
    let st = c.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!((st.dead_lettered, st.retries, st.acked), (1, 2, 0));
    assert_eq!(s.bus.health().await.dead_letter_failures, 0);
    d.abort();
}

pub async fn invalid_json_and_panics_are_dead_lettered_and_consumer_survives(t: Transport_) {
    let s = setup(t).await;
    let seen: Seen = Arc::default();
    let router = Router::new()
        .on("ok", capture(&seen))
        .on("panics", |ctx: Context| async move {
            if ctx.envelope().event_type() == "panics" {
                panic!("handler bug");
            }
            Ok(())
        });
    let c = s
        .bus
        .consumer(&s.queue, router)
        .retry(fast_retry(3))
        .start()
        .unwrap();
    let (d, dead) = dlq_consumer(&s, &["ok", "panics"]);
    // A hand-crafted message with a body that is not JSON.
    let mut bad = Envelope::new("ok", &1)
        .unwrap()
        .to_message(|| format!("ok.{}", s.service));
    bad.body = bytes::Bytes::from_static(b"{definitely not json");
    let exchange = s.bus.topology().exchange.name.clone();
    let sent = s
        .bus
        .transport()
        .send(&exchange, bad, PublishOptions::default())
        .await
        .unwrap();
    assert!(sent.await.is_confirmed());
    assert!(
        s.bus
            .publish(&Envelope::new("panics", &1).unwrap())
            .await
            .unwrap()
            .is_confirmed()
    );
    assert!(
        s.bus
            .publish(&Envelope::new("ok", &2).unwrap())
            .await
            .unwrap()
            .is_confirmed()
    );
    assert!(wait_dead(&dead, 2).await, "expected 2 dead letters");
    assert!(
        wait_len(&seen, 1).await,
        "consumer stopped after a bad message"
    );
    let dead = dead.lock().await.clone();
    let reasons: Vec<_> = dead
        .iter()
        .map(|m| m.headers[HEADER_DEAD_LETTER_REASON].clone())
        .collect();
    assert!(
        reasons.iter().any(|r| r.starts_with("invalid-message")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("handler-panicked: handler bug")),
        "{reasons:?}"
    );
    let st = c.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(st.panics, 1, "a panic is not retried");
    assert_eq!(st.acked, 1);
    d.abort();
}

pub async fn unknown_event_types_follow_policy(t: Transport_) {
    let s = setup(t).await;
    let (d, dead) = dlq_consumer(&s, &["mystery"]);
    let c = s
        .bus
        .consumer(
            &s.queue,
            Router::new().on("known", |_c: Context| async { Ok(()) }),
        )
        .start()
        .unwrap();
    assert!(
        s.bus
            .publish(&Envelope::new("mystery", &1).unwrap())
            .await
            .unwrap()
            .is_confirmed()
    );
    assert!(wait_dead(&dead, 1).await);
    assert!(dead.lock().await[0].headers[HEADER_DEAD_LETTER_REASON].contains("unknown-event-type"));
    c.shutdown(Duration::from_secs(5)).await.unwrap();

    let c = s
        .bus
        .consumer(
            &s.queue,
            Router::new().unknown_events(UnknownEventPolicy::AckAndWarn),
        )
        .start()
        .unwrap();
    assert!(
        s.bus
            .publish(&Envelope::new("mystery", &2).unwrap())
            .await
            .unwrap()
            .is_confirmed()
    );
    assert!(eventually(10, || c.stats().unknown_acked == 1).await);
    assert_eq!(dead_len(&dead).await, 1);
    c.shutdown(Duration::from_secs(5)).await.unwrap();
    d.abort();
}

pub async fn several_handlers_per_type_all_run(t: Transport_) {
    let s = setup(t).await;
    let a: Seen = Arc::default();
    let b: Seen = Arc::default();
    let router = Router::new().on("e", capture(&a)).on("e", capture(&b));
    let c = s.bus.consumer(&s.queue, router).start().unwrap();
    for i in 0..5 {
        assert!(
            s.bus
                .publish(&Envelope::new("e", &i).unwrap())
                .await
                .unwrap()
                .is_confirmed()
        );
    }
    assert!(wait_len(&a, 5).await && wait_len(&b, 5).await);
    assert!(eventually(10, || c.stats().acked == 5).await);
    c.shutdown(Duration::from_secs(5)).await.unwrap();
}

pub async fn strict_mode_refuses_unhandled_binding(t: Transport_) {
    let s = setup(t).await;
    let err = s
        .bus
        .consumer(&s.queue, Router::new().strict(true))
        .start()
        .unwrap_err();
    assert!(matches!(err, Error::MissingHandler { .. }), "{err}");
    assert!(err.to_string().contains(&format!("*.{}", s.queue)));
    let ok = s
        .bus
        .consumer(
            &s.queue,
            Router::new()
                .strict(true)
                .on("e", |_c: Context| async { Ok(()) }),
        )
        .start();
    assert!(ok.is_ok());
    let err = s
        .bus
        .consumer("no-such-queue", Router::new())
        .start()
        .unwrap_err();
    assert!(matches!(err, Error::NotDeclared { .. }));
}

pub async fn redeclare_with_other_arguments_names_the_argument(t: Transport_) {
    let s = setup(t.clone()).await;
    let mut changed = s.bus.topology().clone();
    changed.queue_mut(&s.queue).unwrap().message_ttl = Some(Duration::from_secs(60));
    let err = t.declare(&changed).await.unwrap_err();
    match &err {
        Error::TopologyMismatch {
            argument, object, ..
        } => {
            assert_eq!(argument, "x-message-ttl", "{err}");
            assert!(object.contains(&s.queue), "{err}");
        }
        other => panic!("expected TopologyMismatch, got {other}"),
    }
    // The same topology again is fine (idempotent, as after a reconnect).
    t.declare(s.bus.topology()).await.unwrap();
}

pub async fn duplicate_filter_skips_seen_ids(t: Transport_) {
    let s = setup(t).await;
    let seen: Seen = Arc::default();
    let c = s
        .bus
        .consumer(&s.queue, Router::new().on("e", capture(&seen)))
        .dedup(MemoryDedup::new(1000, Duration::from_secs(60)))
        .concurrency(1)
        .start()
        .unwrap();
    let env = Envelope::new("e", &1).unwrap();
    assert!(s.bus.publish(&env).await.unwrap().is_confirmed());
    assert!(eventually(10, || c.stats().acked == 1).await);
    assert!(s.bus.publish(&env).await.unwrap().is_confirmed());
    assert!(eventually(10, || c.stats().duplicates == 1).await);
    assert_eq!(len(&seen).await, 1);
    c.shutdown(Duration::from_secs(5)).await.unwrap();
}

pub async fn health_reports_depths(t: Transport_) {
    let s = setup(t).await;
    for i in 0..3 {
        assert!(
            s.bus
                .publish(&Envelope::new("e", &i).unwrap())
                .await
                .unwrap()
                .is_confirmed()
        );
    }
    let mut ok = false;
    for _ in 0..100 {
        let h = s.bus.health().await;
        assert_eq!(h.state, ConnectionState::Connected);
        let q = h.queues.iter().find(|q| q.queue == s.queue).unwrap();
        if q.depth == Some(3) && h.dead_letter_depth == Some(0) {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "{:?}", s.bus.health().await);
}

pub async fn graceful_shutdown_finishes_in_flight(t: Transport_) {
    let s = setup(t).await;
    let done = Arc::new(AtomicU32::new(0));
    let d2 = done.clone();
    let router = Router::new().on("slow", move |_c: Context| {
        let d = d2.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            d.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    });
    let c = s
        .bus
        .consumer(&s.queue, router)
        .concurrency(4)
        .start()
        .unwrap();
    for i in 0..4 {
        assert!(
            s.bus
                .publish(&Envelope::new("slow", &i).unwrap())
                .await
                .unwrap()
                .is_confirmed()
        );
    }
    assert!(eventually(10, || c.stats().delivered == 4).await);
    let st = c.shutdown(Duration::from_secs(10)).await.unwrap();
    assert_eq!(done.load(Ordering::SeqCst), 4);
    assert_eq!(st.acked, 4);
}

pub async fn pipelined_sends_all_confirm(t: Transport_) {
    let s = setup(t).await;
    let mut pending = Vec::new();
    for i in 0..500 {
        pending.push(s.bus.send(&Envelope::new("e", &i).unwrap()).await.unwrap());
    }
    for p in pending {
        assert_eq!(p.await, PublishOutcome::Confirmed);
    }
    let seen: Seen = Arc::default();
    let c = s
        .bus
        .consumer(&s.queue, Router::new().on("e", capture(&seen)))
        .prefetch(50)
        .start()
        .unwrap();
    assert!(wait_len(&seen, 500).await);
    let ns = sorted_payloads(&seen).await;
    assert_eq!(ns, (0..500).collect::<Vec<_>>());
    c.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// A dead letter the broker cannot route (the queue's dead-letter routing
/// key has no binding on the dead-letter exchange) must not cost the
/// message: the original is not acknowledged, the failure is counted, and
/// once the binding exists the message reaches the dead-letter queue.
pub async fn unroutable_dead_letter_keeps_the_message(t: Transport_) {
    let prefix = finsight_testkit::unique("conf");
    let queue = finsight_testkit::unique("q");
    let mut topology = expiring(Topology::prefixed(&prefix).consumer_queue(&queue));
    topology.queue_mut(&queue).unwrap().dead_letter_routing_key = Some("dead.unbound".into());
    let bus = Bus::connect_shared(t.clone(), topology.clone(), queue.clone())
        .await
        .expect("declare");
    let s = Setup {
        dlq: topology.dead_letter_queue.name.clone(),
        bus,
        queue: queue.clone(),
        service: queue.clone(),
    };
    let calls = Arc::new(AtomicU32::new(0));
    let router = Router::new().on("boom", always_failing(&calls, "always fails"));
    let c = s
        .bus
        .consumer(&s.queue, router)
        .retry(RetryPolicy::none())
        .start()
        .unwrap();
    let (d, dead) = dlq_consumer(&s, &["boom"]);
    let env = Envelope::new("boom", &1).unwrap();
    assert!(s.bus.publish(&env).await.unwrap().is_confirmed());
    // The dead letter has nowhere to go: the failure is counted and the
    // original is neither acknowledged nor counted as dead-lettered.
    assert!(
        eventually(30, || {
            let st = c.stats();
            st.dead_letter_failures + st.settle_errors >= 1
        })
        .await,
        "{:?}",
        c.stats()
    );
    let st = c.stats();
    assert_eq!((st.acked, st.dead_lettered), (0, 0), "{st:?}");
    assert_eq!(dead_len(&dead).await, 0);
    // Counted by the transport too, on every backend.
    let h = s.bus.health().await;
    assert!(h.dead_letter_failures >= 1, "{h:?}");
    // Repair the route: the kept message is handled again and now lands in
    // the dead-letter queue.
    let mut fixed = topology.clone();
    fixed.dead_letter_queue.bindings.push("dead.unbound".into());
    t.declare(&fixed)
        .await
        .expect("declare the missing binding");
    assert!(
        wait_dead_for(&dead, 1, 90).await,
        "message lost: {:?}",
        c.stats()
    );
    let raw = dead.lock().await[0].clone();
    let m = Envelope::from_message(&raw).unwrap();
    assert_eq!(m.message_id(), env.message_id());
    assert!(raw.headers[HEADER_DEAD_LETTER_REASON].contains("always fails"));
    assert!(calls.load(Ordering::SeqCst) >= 2);
    assert!(eventually(10, || c.stats().dead_lettered == 1).await);
    let st = c.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(st.acked, 0, "{st:?}");
    d.abort();
}

/// `close` flushes what was sent but not yet confirmed: every pending
/// confirm resolves `Confirmed`, nothing stays unconfirmed, and every
/// message is in the queue for the next consumer.
pub async fn close_flushes_pending_confirms(t: Transport_) {
    const N: i64 = 400;
    let s = setup(t).await;
    let mut pending = Vec::new();
    for i in 0..N {
        // Not awaited: with a confirm window below N, many are in flight
        // when `close` starts.
        pending.push(s.bus.send(&Envelope::new("e", &i).unwrap()).await.unwrap());
    }
    s.bus.close(Duration::from_secs(60)).await.unwrap();
    assert_eq!(s.bus.health().await.unconfirmed, 0);
    for p in pending {
        assert_eq!(p.await, PublishOutcome::Confirmed);
    }
    // A fresh consumer (on a networked backend, a new connection) gets all.
    let seen: Seen = Arc::default();
    let c = s
        .bus
        .consumer(&s.queue, Router::new().on("e", capture(&seen)))
        .start()
        .unwrap();
    assert!(wait_len(&seen, N as usize).await, "{}", len(&seen).await);
    let mut ns = sorted_payloads(&seen).await;
    ns.dedup();
    assert_eq!(ns, (0..N).collect::<Vec<_>>());
    c.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[macro_export]
macro_rules! conformance_suite {
    ($transport:expr) => {
        conformance_suite!(@tests $transport;
            publish_consume_round_trip,
            follow_up_keeps_correlation_id,
            unroutable_is_reported,
            failing_handler_is_retried_then_dead_lettered,
            invalid_json_and_panics_are_dead_lettered_and_consumer_survives,
            unknown_event_types_follow_policy,
            several_handlers_per_type_all_run,
            strict_mode_refuses_unhandled_binding,
            redeclare_with_other_arguments_names_the_argument,
            duplicate_filter_skips_seen_ids,
            health_reports_depths,
            graceful_shutdown_finishes_in_flight,
            pipelined_sends_all_confirm,
            unroutable_dead_letter_keeps_the_message,
            close_flushes_pending_confirms
        );
    };
    (@tests $transport:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let t: std::sync::Arc<dyn finsight_bus::Transport> = $transport.await;
                conformance::$name(t).await;
            }
        )*
    };
}
