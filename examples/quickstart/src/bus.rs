//! finsight-bus: publish events, route them to handlers, retry, dead-letter —
//! on the in-memory broker (enable `rabbitmq` or `redis-streams` for the real ones).

use finsight_bus::{
    Bus, Context, Envelope, HEADER_DEAD_LETTER_REASON, HandlerError, MemoryBroker, RetryPolicy,
    Router, Topology,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

#[derive(serde::Serialize, serde::Deserialize)]
struct NewsPublished {
    symbol: String,
    headline: String,
}

pub async fn run() -> crate::Result {
    println!("== finsight-bus");
    let broker = MemoryBroker::new();
    // SPEC §5: finsight.events (topic), finsight.dlx → finsight.dlq, queue
    // `sentiment` bound `*.sentiment` with TTL 300 s and the DLX arguments.
    let topology = Topology::finsight().consumer_queue("sentiment");
    let bus = Bus::connect(broker.clone(), topology, "sentiment").await?;

    let scored = Arc::new(AtomicU32::new(0));
    let s = scored.clone();
    let router = Router::new()
        .on_typed(
            "news_published",
            move |ctx: Context, news: NewsPublished| {
                let s = s.clone();
                async move {
                    s.fetch_add(1, Ordering::SeqCst);
                    // The follow-up keeps the correlation id of the news event.
                    ctx.publish(
                        "sentiment_scored",
                        &serde_json::json!({ "symbol": news.symbol, "score": 0.8 }),
                    )
                    .await?;
                    Ok::<_, HandlerError>(())
                }
            },
        )
        .on("sentiment_scored", |ctx: Context| async move {
            println!(
                "  sentiment_scored, correlation {} (caused by {})",
                ctx.envelope().correlation_id(),
                ctx.envelope().causation_id().unwrap_or("-")
            );
            Ok(())
        })
        .on("always_fails", |_ctx: Context| async {
            Err(HandlerError::msg("downstream unavailable"))
        });
    let consumer = bus
        .consumer("sentiment", router)
        .retry(RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(10),
            ..RetryPolicy::default()
        })
        .start()?;

    let news = Envelope::new(
        "news_published",
        &NewsPublished {
            symbol: "ACME".into(),
            headline: "ACME beats estimates".into(),
        },
    )?;
    println!("  published news, correlation {}", news.correlation_id());
    // Routing key `news_published.sentiment`; `mandatory` is on, so an
    // unbound key would come back as PublishOutcome::Unroutable.
    println!("  outcome: {:?}", bus.publish(&news).await?);
    bus.publish(&Envelope::new("always_fails", &serde_json::json!({}))?)
        .await?;

    for _ in 0..200 {
        let st = consumer.stats();
        if st.acked == 2 && st.dead_lettered == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = consumer.shutdown(Duration::from_secs(5)).await?;
    for dead in broker.take("finsight.dlq", 10) {
        println!("  dead letter: {}", dead.headers[HEADER_DEAD_LETTER_REASON]);
    }
    println!(
        "  handled {} news, acked {}, dead-lettered {}, retries {}",
        scored.load(Ordering::SeqCst),
        stats.acked,
        stats.dead_lettered,
        stats.retries
    );
    Ok(())
}
