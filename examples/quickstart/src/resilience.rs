//! finsight-resilience: a breaker that opens and rejects, a jittered retry
//! through it, fault injection and a health report.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use finsight_resilience::{
    Backoff, BreakerError, CircuitBreaker, Faults, Health, Jitter, OpenDuration, Retry,
    RetryOnError,
};

pub async fn run() -> crate::Result {
    println!("\n== finsight-resilience");

    // A breaker like the Python services' (here 3 failures, 200 ms open).
    let breaker = CircuitBreaker::builder("quotes-api")
        .consecutive_failures(3)
        .open_duration(OpenDuration::Fixed(Duration::from_millis(200)))
        .build()?;
    let mut events = breaker.subscribe();
    for _ in 0..3 {
        let r = breaker
            .call(|| async { Err::<f64, _>("503 from quotes-api") })
            .await;
        println!("call: {r:?}");
    }
    match breaker.call(|| async { Ok::<f64, &str>(1.0) }).await {
        Err(BreakerError::Open(open)) => println!("rejected without calling: {open}"),
        other => println!("unexpected: {other:?}"),
    }

    // A retry through the breaker waits for its probe time, then succeeds
    // after one transient failure.
    let retry = Retry::builder()
        .max_attempts(4)
        .backoff(
            Backoff::exponential(Duration::from_millis(20), Duration::from_millis(200))
                .jitter(Jitter::Full),
        )
        .deadline(Duration::from_secs(2))
        .seed(7)
        .build()?;
    let attempts = AtomicU32::new(0);
    let price = retry
        .run_through(&breaker, &RetryOnError, || {
            let n = attempts.fetch_add(1, Ordering::SeqCst);
            async move { if n == 0 { Err("timeout") } else { Ok(101.5) } }
        })
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "price {price} after {} attempt(s); breaker {}",
        attempts.load(Ordering::SeqCst),
        breaker.state()
    );
    while let Ok(e) = events.try_recv() {
        println!("event: {} -> {} ({:?})", e.from, e.to, e.reason);
    }
    let m = breaker.metrics();
    println!(
        "metrics: {} calls, {} failures, {} rejected, state {}",
        m.calls, m.failures, m.rejected, m.state
    );

    // Fault injection: a seeded 30 % error rate, switchable.
    let faults = Faults::builder().error_rate(0.3).seed(42).build()?;
    let mut failed = 0;
    for _ in 0..100 {
        if faults.run(|| async { Ok::<(), ()>(()) }).await.is_err() {
            failed += 1;
        }
    }
    faults.set_enabled(false);
    println!("fault injection: {failed} of 100 calls failed (30 % asked); switched off now");

    // Health: checks with timeouts plus the breaker's state.
    let health = Health::new()
        .check("redis", true, Duration::from_millis(100), || async {
            Ok::<(), String>(())
        })
        .check("search", false, Duration::from_millis(100), || async {
            Err::<(), _>("index rebuilding")
        })
        .breaker(&breaker, false);
    let report = health.report().await;
    println!(
        "health: {:?} (HTTP {})",
        report.status,
        report.status.http_status()
    );
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
