//! Publish outcomes and health counters that only a real RabbitMQ can
//! produce: a nack from a full `reject-publish` queue, and confirms that
//! never come while the broker blocks publishers (memory alarm).
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
