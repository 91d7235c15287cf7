//! One breaker per market-data provider from a bounded registry, a retry
//! that honours HTTP `Retry-After`, and the `/health` body they produce.
//!
//! `cargo run -p finsight-resilience --example per_provider`

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use finsight_resilience::{
    Backoff, BreakerRegistry, CircuitBreaker, Health, Jitter, Retry, RetryAction, parse_retry_after,
};

/// A provider's reply: a status and an optional `Retry-After` header.
#[derive(Debug)]
struct Reply {
    status: u16,
    retry_after: Option<&'static str>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let registry =
        BreakerRegistry::builder(CircuitBreaker::builder("provider").consecutive_failures(2))
            .max_breakers(1_000)
            .idle_timeout(Duration::from_secs(300))
            .build()?;
    let retry = Retry::builder()
        .max_attempts(3)
        .backoff(
            Backoff::exponential(Duration::from_millis(50), Duration::from_secs(1))
                .jitter(Jitter::Decorrelated),
        )
        .max_retry_after(Duration::from_secs(2))
        .build()?;
    // 429 and 503 are retried, waiting at least what Retry-After says.
    let classify = |r: &Result<Reply, String>| match r {
        Ok(Reply {
            status: 429 | 503,
            retry_after,
        }) => match retry_after.and_then(|v| parse_retry_after(v, SystemTime::now()).ok()) {
            Some(hint) => RetryAction::RetryAfter(hint),
            None => RetryAction::Retry,
        },
        Ok(_) => RetryAction::Return,
        Err(_) => RetryAction::Retry,
    };

    // "alpha" throttles once, then answers.
    let calls = AtomicU32::new(0);
    let alpha = registry.get("alpha");
    let reply = retry
        .run_through(&alpha, &classify, || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                Ok::<_, String>(if n == 0 {
                    Reply {
                        status: 429,
                        retry_after: Some("1"),
                    }
                } else {
                    Reply {
                        status: 200,
                        retry_after: None,
                    }
                })
            }
        })
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "alpha: {} after {} call(s)",
        reply.status,
        calls.load(Ordering::SeqCst)
    );

    // "beta" is down: its breaker opens and later calls are rejected at once.
    let beta = registry.get("beta");
    for _ in 0..3 {
        let r = beta
            .call(|| async { Err::<Reply, _>("connection refused") })
            .await;
        println!("beta: {:?}", r.map(|r| r.status));
    }

    let report = Health::new().registry(&registry).report().await;
    println!(
        "health {:?}: {} breakers",
        report.status,
        report.breakers.len()
    );
    for b in &report.breakers {
        println!("  {} is {}", b.name, b.state);
    }
    Ok(())
}
