//! Helpers shared by the fault tests (`outage.rs`, `outage_redis_aof.rs`):
//! a recording router, a publisher that republishes until every message is
//! confirmed, and a bounded wait until every confirmed message was handled.

use finsight_bus::*;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, mpsc};

pub const TOTAL: u64 = 10_000;
pub const BATCH: u64 = 250;

pub type Handled = Arc<Mutex<HashSet<u64>>>;

/// `RUST_LOG=finsight_bus=debug` shows the consumer's decisions when a run
/// fails.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub fn recording_router(handled: &Handled) -> Router {
    let h = handled.clone();
    Router::new().on_typed("tick", move |_c: Context, n: u64| {
        let h = h.clone();
        async move {
            h.lock().await.insert(n);
            Ok(())
        }
    })
}

/// Publishes `0..TOTAL` in pipelined batches; every message is republished
/// until the broker confirms it. At each checkpoint it reports and waits
/// for `go` before continuing. Returns the confirmed set.
pub async fn publish_all(
    bus: Bus,
    checkpoints: Vec<u64>,
    at_checkpoint: mpsc::Sender<u64>,
    mut go: mpsc::Receiver<()>,
) -> HashSet<u64> {
    let mut confirmed = HashSet::new();
    let mut next = 0;
    let mut errors = 0u32;
    while next < TOTAL {
        if checkpoints.contains(&next) {
            at_checkpoint.send(next).await.unwrap();
            go.recv().await.unwrap();
        }
        let mut todo: Vec<u64> = (next..(next + BATCH).min(TOTAL)).collect();
        // Bounded: at most 2 000 rounds of (re)publishing for one batch.
        for _round in 0..2000 {
            if todo.is_empty() {
                break;
            }
            let mut pending = Vec::new();
            for &n in &todo {
                let env = Envelope::new("tick", &n)
                    .unwrap()
                    .with_message_id(format!("tick-{n}"));
                match bus.send(&env).await {
                    Ok(p) => pending.push((n, p)),
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
            let mut retry: Vec<u64> = todo[pending.len()..].to_vec();
            for (n, p) in pending {
                if p.await.is_confirmed() {
                    confirmed.insert(n);
                } else {
                    retry.push(n);
                }
            }
            if !retry.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            todo = retry;
        }
        assert!(
            todo.is_empty(),
            "batch at {next} never confirmed ({errors} send errors)"
        );
        next += BATCH;
    }
    confirmed
}

pub async fn wait_all_handled(
    handled: &Handled,
    confirmed: &HashSet<u64>,
    consumer: &ConsumerHandle,
    bus: &Bus,
) {
    for _ in 0..1800 {
        if confirmed
            .iter()
            .all(|n| handled.try_lock().map(|h| h.contains(n)).unwrap_or(false))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let h = handled.lock().await;
    let missing: Vec<_> = confirmed
        .iter()
        .filter(|n| !h.contains(n))
        .take(20)
        .collect();
    panic!(
        "{} confirmed messages never handled, e.g. {missing:?}; consumer: {:?}; health: {:?}",
        confirmed.iter().filter(|n| !h.contains(n)).count(),
        consumer.stats(),
        bus.health().await,
    );
}
