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
    let (_t, bus, _q) = bus(cfg, None).await;
    let mut pending = Vec::new();
    for n in 0..10 {
        pending.push(bus.send(&Envelope::new("e", &n).unwrap()).await.unwrap());
    }
    // Nothing is confirmed while the broker blocks: all ten are in flight,
    // and the snapshot comes back (depths unknown) instead of hanging.
    let h = bus.health().await;
    assert_eq!(h.unconfirmed, 10, "{h:?}");
    let mut outcomes = Vec::new();
    for p in pending {
        outcomes.push(p.await);
    }
    assert!(
        outcomes.iter().all(|o| *o == PublishOutcome::TimedOut),
        "{outcomes:?}"
    );
    assert_eq!(bus.health().await.unconfirmed, 0);
    tokio::task::spawn_blocking(move || blocked.restore())
        .await
        .unwrap()
        .expect("clear RabbitMQ's memory alarm");
}
