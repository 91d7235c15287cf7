//! `BusExposureSink`: exposure events reach the bus, in memory and on the real RabbitMQ.
#![cfg(feature = "flags-bus")]

use std::time::Duration;

use finsight_adapters::flags_bus::BusExposureSink;
use finsight_bus::rabbitmq::{RabbitConfig, RabbitMq};
use finsight_bus::{Bus, Context, MemoryBroker, Router, Topology};
use finsight_flags::{EvaluationContext, ExposureBuffer, FlagEngine, FlagSet};

const FLAGS: &str = r#"[
  {"key": "tracked", "flag_type": "boolean", "status": "active", "default_value": false,
   "rollout_percentage": 100, "track_exposure": true},
  {"key": "untracked", "flag_type": "boolean", "status": "active", "default_value": false,
   "rollout_percentage": 100}
]"#;

fn engine(buffer: ExposureBuffer) -> FlagEngine {
    let report = FlagSet::from_json(FLAGS).unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    FlagEngine::builder()
        .flags(report.set)
        .exposure(buffer)
        .build()
}

#[tokio::test]
async fn exposures_of_tracked_flags_are_published_in_memory() {
    let broker = MemoryBroker::new();
    let bus = Bus::connect(
        broker.clone(),
        Topology::finsight().consumer_queue("analytics"),
        "analytics",
    )
    .await
    .unwrap();
    let (buffer, task) =
        ExposureBuffer::spawn(BusExposureSink::new(bus).event_type("exposure"), 64, 8).unwrap();
    let engine = engine(buffer.clone());
    let ctx = EvaluationContext::new()
        .user_id("u-7")
        .tenant_id("t-1")
        .subscription_tier("enterprise");
    for _ in 0..3 {
        assert!(engine.is_enabled("tracked", &ctx));
        assert!(engine.is_enabled("untracked", &ctx));
    }
    drop(engine);
    drop(buffer);
    task.await.unwrap();
    let messages = broker.take("analytics", 100);
    assert_eq!(
        messages.len(),
        3,
        "one event per evaluation of the tracked flag"
    );
    for m in &messages {
        let env = finsight_bus::Envelope::from_message(m).unwrap();
        assert_eq!(env.event_type(), "exposure");
        assert_eq!(env.routing_key(), Some("exposure.analytics"));
        let json = env.json().unwrap();
        assert_eq!(json["flag_key"], "tracked");
        assert_eq!(json["value"], true);
        assert_eq!(json["user_id"], "u-7");
        assert_eq!(json["tenant_id"], "t-1");
        assert_eq!(json["subscription_tier"], "enterprise");
        assert_eq!(json["reason"], "enabled");
    }
}

#[tokio::test]
async fn unroutable_exposures_are_counted_as_failed() {
    let broker = MemoryBroker::new();
    // No queue bound: mandatory publishes come back unroutable.
    let bus = Bus::connect(broker.clone(), Topology::finsight(), "nobody")
        .await
        .unwrap();
    let (buffer, task) = ExposureBuffer::spawn(BusExposureSink::new(bus), 64, 8).unwrap();
    let engine = engine(buffer.clone());
    assert!(engine.is_enabled("tracked", &EvaluationContext::new().user_id("u-1")));
    drop(engine);
    // The buffer handle keeps the export task alive: poll its counters (bounded).
    let mut stats = buffer.stats();
    for _ in 0..500 {
        if stats.failed + stats.exported > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        stats = buffer.stats();
    }
    drop(buffer);
    task.await.unwrap();
    assert_eq!(stats.enqueued, 1);
    assert_eq!(stats.failed, 1);
    assert_eq!(stats.exported, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposures_arrive_in_rabbitmq() {
    let prefix = finsight_testkit::unique("adapters-exposure");
    let queue = finsight_testkit::unique("analytics");
    let topology = Topology::prefixed(&prefix).consumer_queue(&queue);
    let rabbit = RabbitMq::connect(RabbitConfig::new(finsight_testkit::amqp_url()))
        .await
        .unwrap();
    let bus = Bus::connect(rabbit, topology, queue.as_str())
        .await
        .unwrap();

    let (tx, mut rx) = tokio::sync::mpsc::channel::<serde_json::Value>(16);
    let router = Router::new().on("flag_exposure", move |ctx: Context| {
        let tx = tx.clone();
        async move {
            tx.send(ctx.envelope().json()?).await.ok();
            Ok(())
        }
    });
    let consumer = bus.consumer(&queue, router).start().unwrap();

    let (buffer, task) = ExposureBuffer::spawn(BusExposureSink::new(bus.clone()), 64, 8).unwrap();
    let engine = engine(buffer.clone());
    assert!(engine.is_enabled("tracked", &EvaluationContext::new().tenant_id("t-9")));
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("exposure event within 10 s")
        .unwrap();
    assert_eq!(got["flag_key"], "tracked");
    assert_eq!(got["tenant_id"], "t-9");
    drop(engine);
    drop(buffer);
    task.await.unwrap();
    consumer.shutdown(Duration::from_secs(5)).await.unwrap();
    bus.close(Duration::from_secs(5)).await.unwrap();
}
