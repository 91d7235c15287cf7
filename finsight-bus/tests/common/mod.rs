//! Helpers shared by the fault tests (`outage.rs`, `outage_redis_aof.rs`):
//! a recording router, a publisher that republishes until every message is
//! confirmed, a bounded wait until every confirmed message was handled, and
//! [`Run`], the scenario around them (bus, consumer, publisher, final checks).

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

/// One fault-test run: a bus with a recording consumer on a fresh queue, and
/// [`publish_all`] running with checkpoints at 2 000, 5 000 and 8 000.
pub struct Run {
    pub bus: Bus,
    pub handled: Handled,
    pub consumer: ConsumerHandle,
    /// Reports each checkpoint the publisher reached.
    pub at_checkpoint: mpsc::Receiver<u64>,
    /// Lets the publisher go on after a checkpoint.
    pub go: mpsc::Sender<()>,
    publisher: tokio::task::JoinHandle<HashSet<u64>>,
}

impl Run {
    /// Connects a bus on `transport` (queue and topology prefix made unique
    /// from `queue` and `topology`), starts the consumer and the publisher.
    pub async fn start(transport: impl Transport, queue: &str, topology: &str) -> Self {
        let queue = finsight_testkit::unique(queue);
        let topo = Topology::prefixed(&finsight_testkit::unique(topology)).consumer_queue(&queue);
        let bus = Bus::connect(transport, topo, queue.clone()).await.unwrap();
        let handled: Handled = Arc::default();
        let consumer = bus
            .consumer(&queue, recording_router(&handled))
            .prefetch(200)
            .concurrency(16)
            .resubscribe_backoff(Duration::from_millis(100), Duration::from_millis(500))
            .start()
            .unwrap();
        let (cp_tx, at_checkpoint) = mpsc::channel(1);
        let (go, go_rx) = mpsc::channel(1);
        let publisher = tokio::spawn(publish_all(
            bus.clone(),
            vec![2000, 5000, 8000],
            cp_tx,
            go_rx,
        ));
        Self {
            bus,
            handled,
            consumer,
            at_checkpoint,
            go,
            publisher,
        }
    }

    /// Waits, bounded, until the consumer subscribed again since
    /// `subscribed` and `reconnected()` holds, so that the next stop is a
    /// separate outage. Not a catch-up: the backlog stays. Checks nothing.
    // Not used by `outage.rs` without the `rabbitmq` feature.
    #[allow(dead_code)]
    pub async fn wait_restart_noticed(&self, subscribed: u64, reconnected: impl Fn() -> bool) {
        for _ in 0..300 {
            if self.consumer.stats().subscriptions > subscribed && reconnected() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (bounded) for the publisher, checks that every message was
    /// confirmed, waits until every one was handled, shuts the consumer down
    /// and checks that it re-subscribed after each of the three outages.
    /// Returns the bus and the handled set for the test's own checks.
    pub async fn finish(self) -> (Bus, Handled) {
        let confirmed = tokio::time::timeout(Duration::from_secs(600), self.publisher)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(confirmed.len() as u64, TOTAL);
        wait_all_handled(&self.handled, &confirmed, &self.consumer, &self.bus).await;
        let st = self
            .consumer
            .shutdown(Duration::from_secs(10))
            .await
            .unwrap();
        assert!(
            st.subscriptions >= 4,
            "consumer did not re-subscribe after each outage: {st:?}"
        );
        (self.bus, self.handled)
    }
}
