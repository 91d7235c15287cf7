//! Publish outcomes and health counters that only a real RabbitMQ can
//! produce: a nack from a full `reject-publish` queue, and confirms that
//! never come while the broker blocks publishers (memory alarm); dead
//! letters the broker cannot route; topology recovery after the broker
//! closes the connection.
#![cfg(feature = "rabbitmq")]

use finsight_bus::rabbitmq::{RabbitConfig, RabbitMq};
use finsight_bus::*;
use std::time::Duration;

async fn bus(cfg: RabbitConfig, max_length: Option<u64>) -> (RabbitMq, Bus, String) {
    let t = RabbitMq::connect(cfg)
        .await
        .expect("RabbitMQ at FINSIGHT_AMQP_URL");
    let queue = finsight_testkit::unique("outcomes");
    let mut topo = Topology::prefixed(&finsight_testkit::unique("oc")).consumer_queue(&queue);
    topo.queue_mut(&queue).unwrap().max_length = max_length;
    // Unused test queues expire (see `x-expires` in tests/conformance).
    for q in topo
        .queues
        .iter_mut()
        .chain(std::iter::once(&mut topo.dead_letter_queue))
    {
        q.arguments
            .insert("x-expires".into(), ArgValue::Int(600_000));
    }
    let bus = Bus::connect(t.clone(), topo, queue.clone()).await.unwrap();
    (t, bus, queue)
}

#[tokio::test]
async fn a_full_reject_publish_queue_nacks() {
    let cfg = RabbitConfig::new(finsight_testkit::amqp_url());
    let (_t, bus, _q) = bus(cfg, Some(2)).await;
    for n in 0..2 {
        let env = Envelope::new("e", &n).unwrap();
        assert_eq!(bus.publish(&env).await.unwrap(), PublishOutcome::Confirmed);
    }
    let env = Envelope::new("e", &2).unwrap();
    assert_eq!(bus.publish(&env).await.unwrap(), PublishOutcome::Nacked);
    let h = bus.health().await;
    assert_eq!(h.queues[0].depth, Some(2), "{h:?}");
    assert_eq!(h.unconfirmed, 0);
}

/// Bounds every wait of the blocked-broker test: it fails (and its guard
/// clears the alarm) instead of hanging.
async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 60 s"))
}

/// Named `outage_*`: it blocks every publisher on the broker, so it runs
/// alone, after the other tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_rabbitmq_blocked_broker_times_out_confirms_and_counts_them() {
    let mut cfg = RabbitConfig::new(finsight_testkit::amqp_url());
    cfg.confirm_timeout = Duration::from_secs(3);
    cfg.health_timeout = Duration::from_secs(1);
    // The alarm blocks publishing only: connecting and declaring still work.
    let blocked = tokio::task::spawn_blocking(finsight_testkit::RabbitBlocked::block)
        .await
        .unwrap()
        .expect("raise RabbitMQ's memory alarm");
    let (_t, bus, _q) = within("connect", bus(cfg, None)).await;
    let sends: Vec<_> = (0..10)
        .map(|n| {
            let bus = bus.clone();
            tokio::spawn(async move {
                let p = bus.send(&Envelope::new("e", &n).unwrap()).await.unwrap();
                p.await
            })
        })
        .collect();
    // While the broker blocks, all ten are in flight, the snapshot says so
    // (and comes back, depths unknown, instead of hanging).
    let mut h = within("health", bus.health()).await;
    for _ in 0..100 {
        if h.unconfirmed == 10 && h.state == ConnectionState::Blocked {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        h = within("health", bus.health()).await;
    }
    assert_eq!(h.unconfirmed, 10, "{h:?}");
    assert_eq!(h.state, ConnectionState::Blocked, "{h:?}");
    let mut outcomes = Vec::new();
    for s in sends {
        outcomes.push(within("send", s).await.unwrap());
    }
    assert!(
        outcomes.iter().all(|o| *o == PublishOutcome::TimedOut),
        "{outcomes:?}"
    );
    assert_eq!(within("health", bus.health()).await.unconfirmed, 0);
    tokio::task::spawn_blocking(move || blocked.restore())
        .await
        .unwrap()
        .expect("clear RabbitMQ's memory alarm");
    // Unblocked: publishing works again on the same connection.
    let env = Envelope::new("e", &10).unwrap();
    assert!(
        within("publish", bus.publish(&env))
            .await
            .unwrap()
            .is_confirmed()
    );
}

/// A channel on a connection of its own, to change the broker behind the
/// bus's back (as an operator or another service would).
async fn admin_channel() -> (lapin::Connection, lapin::Channel) {
    let conn = lapin::Connection::connect(
        &finsight_testkit::amqp_url(),
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("RabbitMQ at FINSIGHT_AMQP_URL");
    let ch = conn.create_channel().await.unwrap();
    (conn, ch)
}

/// Polls `cond` every 20 ms for at most `secs` seconds.
async fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..secs * 50 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// The dead-letter queue lost its binding on the broker (the topology was
/// declared correctly, then changed by hand). A dead letter is then
/// unroutable; with `mandatory` the broker returns it instead of confirming
/// it, so the original is not acked but requeued (after the retry delay)
/// and counted, and it reaches the dead-letter queue once the binding is
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_queue_without_its_binding_loses_no_message() {
    let mut cfg = RabbitConfig::new(finsight_testkit::amqp_url());
    cfg.dead_letter_retry_delay = Duration::from_millis(200);
    let (t, bus, queue) = bus(cfg, None).await;
    let topology = bus.topology().clone();
    let (_admin, ch) = admin_channel().await;
    ch.queue_unbind(
        topology.dead_letter_queue.name.as_str().into(),
        topology.dead_letter_exchange.name.as_str().into(),
        topology.dead_letter_queue.bindings[0].as_str().into(),
        lapin::types::FieldTable::default(),
    )
    .await
    .unwrap();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let c2 = calls.clone();
    let router = Router::new().on("boom", move |_ctx: Context| {
        c2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async { Err(HandlerError::msg("always fails")) }
    });
    let consumer = bus
        .consumer(&queue, router)
        .retry(RetryPolicy::none())
        .start()
        .unwrap();
    let env = Envelope::new("boom", &1).unwrap();
    assert!(bus.publish(&env).await.unwrap().is_confirmed());
    // Handled, not dead-lettered, requeued, handled again: not lost.
    assert!(
        eventually(30, || t.dead_letter_failures() >= 2
            && calls.load(std::sync::atomic::Ordering::SeqCst) >= 2)
        .await,
        "failures {}, calls {:?}, {:?}",
        t.dead_letter_failures(),
        calls,
        consumer.stats()
    );
    let st = consumer.stats();
    assert_eq!((st.acked, st.dead_lettered), (0, 0), "{st:?}");
    assert!(st.dead_letter_failures >= 1, "{st:?}");
    let h = bus.health().await;
    assert_eq!(h.dead_letter_depth, Some(0), "{h:?}");
    assert!(h.dead_letter_failures >= 2, "{h:?}");
    // The consumer's default settle timeout lies above this backend's own
    // bound of a dead-letter settle (confirm timeout + retry delay + 1 s).
    assert_eq!(
        t.settle_bound(),
        Some(Duration::from_secs(30) + Duration::from_millis(200) + Duration::from_secs(1))
    );
    // The binding is back (as on the next start): the message lands in the
    // dead-letter queue.
    t.declare(&topology).await.unwrap();
    assert!(
        eventually(30, || consumer.stats().dead_lettered == 1).await,
        "{:?}",
        consumer.stats()
    );
    let mut depth = None;
    for _ in 0..100 {
        depth = bus.health().await.dead_letter_depth;
        if depth == Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(depth, Some(1));
    let st = consumer.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(st.acked, 0, "{st:?}");
}

/// The lock the testkit's outage guards take (`$TMPDIR/finsight-outage.lock`):
/// no other fault test runs while this one cuts connections.
fn outage_lock() -> std::fs::File {
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("finsight-outage.lock"))
        .unwrap();
    file.lock().unwrap();
    file
}

/// Closes the broker side of the connection named `name`
/// (`rabbitmqctl close_connection`).
fn force_close(name: &str) {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["list_connections", "pid", "client_properties", "--quiet"])
        .args(["--no-table-headers"])
        .output()
        .expect("rabbitmqctl");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let pid = text
        .lines()
        .find(|l| l.contains(&format!("\"{name}\"")))
        .and_then(|l| l.split('\t').next())
        .unwrap_or_else(|| panic!("no connection named {name} in {text}"));
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "close_connection",
            pid.trim(),
            "finsight-bus reconnect test",
        ])
        .output()
        .expect("rabbitmqctl");
    assert!(out.status.success(), "{out:?}");
}

/// After the broker closes the bus's connection, the next use reconnects
/// and re-declares the topology before anything else: the consumer queue,
/// deleted meanwhile, exists again with its binding, publishing is routed
/// and the consumer re-subscribes. Named `outage_*`: it uses `rabbitmqctl`
/// and runs alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_rabbitmq_forced_close_redeclares_topology_and_resubscribes() {
    let _lock = tokio::task::spawn_blocking(outage_lock).await.unwrap();
    let name = finsight_testkit::unique("finsight-bus-reconnect");
    let mut cfg = RabbitConfig::new(finsight_testkit::amqp_url());
    cfg.connection_name = name.clone();
    let (t, bus, queue) = bus(cfg, None).await;
    let handled = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let h2 = handled.clone();
    let router = Router::new().on("e", move |_ctx: Context| {
        h2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async { Ok(()) }
    });
    let consumer = bus
        .consumer(&queue, router)
        .resubscribe_backoff(Duration::from_millis(50), Duration::from_millis(500))
        .start()
        .unwrap();
    let handled_now = || handled.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        bus.publish(&Envelope::new("e", &0).unwrap())
            .await
            .unwrap()
            .is_confirmed()
    );
    assert!(eventually(30, || handled_now() == 1).await);
    // The queue goes away while the connection is up: publishing is
    // unroutable now.
    let (_admin, ch) = admin_channel().await;
    ch.queue_delete(
        queue.as_str().into(),
        lapin::options::QueueDeleteOptions::default(),
    )
    .await
    .unwrap();
    let env = Envelope::new("e", &1).unwrap();
    assert!(
        matches!(
            bus.publish(&env).await.unwrap(),
            PublishOutcome::Unroutable { .. }
        ),
        "queue not deleted"
    );
    let reconnects = bus.health().await.reconnects;
    tokio::task::spawn_blocking(move || force_close(&name))
        .await
        .unwrap();
    // Publish until confirmed: the first attempts may still meet the
    // closing connection.
    let mut last = None;
    for _ in 0..300 {
        match bus.publish(&env).await {
            Ok(PublishOutcome::Confirmed) => {
                last = None;
                break;
            }
            other => last = Some(other),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        last.is_none(),
        "never confirmed after reconnecting: {last:?}"
    );
    assert!(
        eventually(60, || handled_now() >= 2).await,
        "not consumed after reconnecting: {:?}",
        consumer.stats()
    );
    let h = bus.health().await;
    assert!(h.reconnects > reconnects, "{h:?}");
    assert_eq!(h.state, ConnectionState::Connected, "{h:?}");
    let st = consumer.shutdown(Duration::from_secs(5)).await.unwrap();
    assert!(st.subscriptions >= 2, "{st:?}");
    assert_eq!(t.reconnects(), h.reconnects);
}
