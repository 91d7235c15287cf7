//! `cargo run -p worker` — consumes the gateway's events.
//!
//! With `FINSIGHT_AMQP_URL` it consumes the `analytics` queue (or
//! `WORKER_QUEUE`) on RabbitMQ until Ctrl-C. Without it, it runs an in-memory
//! demo: publishes a few events, one of them malformed and one of an unknown
//! type, and shows what was aggregated and what was dead-lettered.

use std::time::Duration;

use finsight_bus::rabbitmq::{RabbitConfig, RabbitMq};
use finsight_bus::{Bus, Envelope, HEADER_DEAD_LETTER_REASON, MemoryBroker, Topology};
use worker::{Aggregates, RequestEvent};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[tokio::main]
async fn main() -> Result {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let queue = std::env::var("WORKER_QUEUE").unwrap_or_else(|_| "analytics".to_owned());
    let topology = Topology::finsight().consumer_queue(&queue);
    let aggregates = Aggregates::new();
    match std::env::var("FINSIGHT_AMQP_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        Some(url) => {
            let bus = Bus::connect(
                RabbitMq::connect(RabbitConfig::new(url)).await?,
                topology,
                queue.as_str(),
            )
            .await?;
            let consumer = worker::start(&bus, &queue, aggregates.clone())?;
            println!("worker: consuming `{queue}` on RabbitMQ; Ctrl-C to stop");
            tokio::signal::ctrl_c().await?;
            let stats = consumer.shutdown(Duration::from_secs(10)).await?;
            println!(
                "worker: {stats:?}; {} requests aggregated",
                aggregates.total_requests()
            );
            bus.close(Duration::from_secs(5)).await?;
        }
        None => demo(topology, &queue, aggregates).await?,
    }
    Ok(())
}

async fn demo(topology: Topology, queue: &str, aggregates: Aggregates) -> Result {
    let broker = MemoryBroker::new();
    let dlq = topology.dead_letter_queue.name.clone();
    let bus = Bus::connect(broker.clone(), topology, queue).await?;
    let consumer = worker::start(&bus, queue, aggregates.clone())?;
    for status in [200, 200, 429, 502] {
        let e = RequestEvent {
            method: "GET".into(),
            path: "/api/v1/quotes/AAPL".into(),
            status,
            user_id: Some("u-1".into()),
            tenant_id: Some("acme".into()),
            tier: Some("free".into()),
            latency_us: 850,
        };
        bus.publish(&Envelope::new("api_request", &e)?).await?;
    }
    bus.publish(&Envelope::new(
        "api_request",
        &serde_json::json!({ "status": "oops" }),
    )?)
    .await?;
    bus.publish(&Envelope::new(
        "order_placed",
        &serde_json::json!({ "id": 1 }),
    )?)
    .await?;
    for _ in 0..200 {
        let s = consumer.stats();
        if s.acked + s.dead_lettered >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = consumer.shutdown(Duration::from_secs(5)).await?;
    println!(
        "consumer: acked {}, dead-lettered {}",
        stats.acked, stats.dead_lettered
    );
    println!("tenant acme: {:?}", aggregates.tenant("acme"));
    for m in broker.take(&dlq, 10) {
        println!(
            "dead letter: {} ({})",
            m.headers.get("event_type").map_or("?", String::as_str),
            m.headers
                .get(HEADER_DEAD_LETTER_REASON)
                .map_or("?", String::as_str),
        );
    }
    Ok(())
}
