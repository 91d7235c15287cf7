//! Exposure events: which value a unit was served, sent to a sink off the
//! evaluation path.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;

use crate::error::BoxError;
use crate::eval::Reason;

/// One exposure: a flag served a value to a unit (SPEC §1.5). Sent only for
/// flags with `track_exposure: true`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ExposureEvent {
    /// The flag key.
    pub flag_key: String,
    /// The value served.
    pub value: Value,
    /// The variant id, for multivariate flags.
    pub variant: Option<String>,
    /// Why this value.
    pub reason: Reason,
    /// The context's user id.
    pub user_id: Option<String>,
    /// The context's tenant id.
    pub tenant_id: Option<String>,
    /// The context's subscription tier.
    pub subscription_tier: Option<String>,
    /// The environment (`"production"` when the context names none).
    pub environment: String,
    /// When the evaluation happened (the engine's clock).
    pub timestamp: DateTime<Utc>,
}

/// Where exposure events go (an analytics pipeline, a message bus, a log).
///
/// Called from the buffer's background task with batches of up to
/// `max_batch` events; never from evaluation.
pub trait ExposureSink: Send + Sync + 'static {
    /// Exports one batch. An error is counted in [`ExposureStats::failed`]
    /// and the batch is dropped (exposures are telemetry, not a ledger).
    fn export(
        &self,
        batch: Vec<ExposureEvent>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// Counters of an [`ExposureBuffer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ExposureStats {
    /// Events accepted into the buffer.
    pub enqueued: u64,
    /// Events dropped because the buffer was full (or the task had stopped).
    pub dropped: u64,
    /// Events the sink accepted.
    pub exported: u64,
    /// Events in batches the sink failed.
    pub failed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    enqueued: AtomicU64,
    dropped: AtomicU64,
    exported: AtomicU64,
    failed: AtomicU64,
}

/// A bounded, non-blocking buffer in front of an [`ExposureSink`].
///
/// Evaluation offers an event with `try_send`: when the buffer holds
/// `capacity` events the new one is dropped and counted, so a slow sink
/// never slows evaluation. Memory: at most `capacity` events queued plus one
/// batch being exported. Cloning shares the buffer.
#[derive(Debug, Clone)]
pub struct ExposureBuffer {
    tx: mpsc::Sender<ExposureEvent>,
    counters: Arc<Counters>,
}

impl ExposureBuffer {
    /// Starts the export task on the current tokio runtime and returns the
    /// buffer to hand to [`FlagEngineBuilder::exposure`](crate::FlagEngineBuilder::exposure).
    /// The task ends when every clone of the buffer (and every engine holding
    /// one) is dropped, after exporting what was queued.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) when `capacity` or `max_batch`
    /// is zero or no tokio runtime is running.
    pub fn spawn<S: ExposureSink>(
        sink: S,
        capacity: usize,
        max_batch: usize,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), crate::Error> {
        if capacity == 0 || max_batch == 0 {
            return Err(crate::Error::Config(
                "exposure buffer capacity and max_batch must be at least 1".into(),
            ));
        }
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            crate::Error::Config("ExposureBuffer::spawn needs a running tokio runtime".into())
        })?;
        let (tx, mut rx) = mpsc::channel::<ExposureEvent>(capacity);
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let task = handle.spawn(async move {
            let mut batch = Vec::with_capacity(max_batch);
            while rx.recv_many(&mut batch, max_batch).await > 0 {
                let n = batch.len() as u64;
                let events = std::mem::replace(&mut batch, Vec::with_capacity(max_batch));
                match sink.export(events).await {
                    Ok(()) => {
                        c.exported.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => {
                        c.failed.fetch_add(n, Ordering::Relaxed);
                        tracing::warn!(error = %e, events = n, "finsight-flags: exposure sink failed; batch dropped");
                    }
                }
            }
        });
        Ok((Self { tx, counters }, task))
    }

    /// Offers an event; never blocks. Returns whether it was accepted.
    pub fn offer(&self, event: ExposureEvent) -> bool {
        match self.tx.try_send(event) {
            Ok(()) => {
                self.counters.enqueued.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => {
                let d = self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                if d.is_power_of_two() {
                    tracing::warn!(
                        dropped = d + 1,
                        "finsight-flags: exposure buffer full; events dropped"
                    );
                }
                false
            }
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> ExposureStats {
        ExposureStats {
            enqueued: self.counters.enqueued.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            exported: self.counters.exported.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
        }
    }
}
