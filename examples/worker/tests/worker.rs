//! The worker: handled events are aggregated, bad ones dead-lettered with a
//! reason, in memory and on the real RabbitMQ.

use std::time::Duration;

use finsight_bus::rabbitmq::{RabbitConfig, RabbitMq};
use finsight_bus::{
    Bus, ConsumerHandle, Envelope, HEADER_DEAD_LETTER_REASON, MemoryBroker, SubscribeOptions,
    Topology,
};
use worker::{Aggregates, RequestEvent};

fn request(tenant: &str, status: u16) -> Envelope {
    Envelope::new(
        "api_request",
        &RequestEvent {
            method: "GET".into(),
            path: "/api/v1/quotes/AAPL".into(),
            status,
            user_id: Some("u-1".into()),
            tenant_id: Some(tenant.into()),
            tier: Some("free".into()),
            latency_us: 900,
        },
    )
    .unwrap()
}

/// Publishes 4 good requests, 1 exposure, 1 breaker transition, 1 malformed
/// request, 1 invalid request (empty method), 1 unknown event type.
async fn publish_mix(bus: &Bus, tenant: &str) {
    for status in [200, 200, 429, 503] {
        assert!(
            bus.publish(&request(tenant, status))
                .await
                .unwrap()
                .is_confirmed()
        );
    }
    let exposure =
        serde_json::json!({"flag_key": "analytics-api", "value": true, "reason": "enabled"});
    let bad_shape = serde_json::json!({"status": "not a number"});
    let mut invalid = serde_json::to_value(RequestEvent {
        method: String::new(),
        path: "/x".into(),
        status: 200,
        user_id: None,
        tenant_id: Some(tenant.into()),
        tier: None,
        latency_us: 1,
    })
    .unwrap();
    invalid["method"] = "".into();
    for env in [
        Envelope::new("flag_exposure", &exposure).unwrap(),
        Envelope::new(
            "circuit_state_changed",
            &serde_json::json!({"name": "downstream", "from": "closed", "to": "open", "reason": "failure_threshold", "at": {"secs": 1, "nanos": 0}}),
        )
        .unwrap(),
        Envelope::new("api_request", &bad_shape).unwrap(),
        Envelope::new("api_request", &invalid).unwrap(),
        Envelope::new("order_placed", &serde_json::json!({"id": 1})).unwrap(),
    ] {
        assert!(bus.publish(&env).await.unwrap().is_confirmed());
    }
}

async fn settle(consumer: &ConsumerHandle, n: u64) {
    for _ in 0..1_000 {
        let s = consumer.stats();
        if s.acked + s.dead_lettered >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "consumer did not settle {n} messages: {:?}",
        consumer.stats()
    );
}

fn check_aggregates(agg: &Aggregates, tenant: &str) {
    let t = agg.tenant(tenant);
    assert_eq!(t.requests, 4);
    assert_eq!(t.rate_limited, 1);
    assert_eq!(t.server_errors, 1);
    assert_eq!(agg.exposures("analytics-api", "true"), 1);
    assert_eq!(agg.transitions("downstream", "open"), 1);
}

#[tokio::test]
async fn handles_events_and_dead_letters_bad_ones_in_memory() {
    let broker = MemoryBroker::new();
    let topology = Topology::finsight().consumer_queue("analytics");
    let bus = Bus::connect(broker.clone(), topology, "analytics")
        .await
        .unwrap();
    let agg = Aggregates::new();
    let consumer = worker::start(&bus, "analytics", agg.clone()).unwrap();
    publish_mix(&bus, "acme").await;
    settle(&consumer, 9).await;
    let stats = consumer.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(stats.acked, 6);
    assert_eq!(stats.dead_lettered, 3);
    assert_eq!(stats.retries, 0, "permanent failures are not retried");
    check_aggregates(&agg, "acme");

    let dead = broker.take("finsight.dlq", 10);
    assert_eq!(dead.len(), 3);
    let mut reasons: Vec<(String, String)> = dead
        .iter()
        .map(|m| {
            (
                m.headers["event_type"].clone(),
                m.headers
                    .get(HEADER_DEAD_LETTER_REASON)
                    .cloned()
                    .unwrap_or_default(),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons[2].0, "order_placed");
    assert!(reasons[2].1.contains("unknown"), "{reasons:?}");
    assert!(
        reasons.iter().any(|(_, r)| r.contains("absolute path")),
        "{reasons:?}"
    );
    assert!(reasons.iter().all(|(_, r)| !r.is_empty()), "{reasons:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_events_and_dead_letters_bad_ones_on_rabbitmq() {
    let prefix = finsight_testkit::unique("worker");
    let queue = finsight_testkit::unique("analytics");
    let topology = Topology::prefixed(&prefix).consumer_queue(&queue);
    let dlq = topology.dead_letter_queue.name.clone();
    let rabbit = RabbitMq::connect(RabbitConfig::new(finsight_testkit::amqp_url()))
        .await
        .unwrap();
    let bus = Bus::connect(rabbit, topology, queue.as_str())
        .await
        .unwrap();
    let agg = Aggregates::new();
    let consumer = worker::start(&bus, &queue, agg.clone()).unwrap();
    publish_mix(&bus, "globex").await;
    settle(&consumer, 9).await;
    let stats = consumer.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!((stats.acked, stats.dead_lettered), (6, 3));
    check_aggregates(&agg, "globex");

    // The three dead letters are in the (prefixed) dead-letter queue, with reasons.
    let mut stream = bus
        .transport()
        .subscribe(&dlq, SubscribeOptions::default())
        .await
        .unwrap();
    let mut types = Vec::new();
    for _ in 0..3 {
        let d = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("dead letter within 10 s")
            .unwrap()
            .unwrap();
        assert!(d.message.headers.contains_key(HEADER_DEAD_LETTER_REASON));
        types.push(d.message.headers["event_type"].clone());
        d.acker.ack().await.unwrap();
    }
    types.sort();
    assert_eq!(types, ["api_request", "api_request", "order_placed"]);
    stream.cancel().await.unwrap();
    bus.close(Duration::from_secs(5)).await.unwrap();
}
