//! Flag exposure events published on the FinSight bus (feature `flags-bus`).

use std::future::Future;

use finsight_bus::{Bus, Envelope};
use finsight_flags::{BoxError, ExposureEvent, ExposureSink};

/// The event type [`BusExposureSink`] publishes by default.
pub const DEFAULT_EVENT_TYPE: &str = "flag_exposure";

/// An [`ExposureSink`] that publishes every exposure event on a [`Bus`].
///
/// Hand it to [`finsight_flags::ExposureBuffer::spawn`]: evaluation only
/// offers events to the bounded buffer (never blocks, drops and counts when
/// full), and the buffer's background task calls [`export`](ExposureSink::export)
/// with batches. Each event becomes one [`Envelope`] of type
/// [`event_type`](Self::event_type) whose payload is the event's JSON
/// (`flag_key`, `value`, `variant`, `reason`, `user_id`, `tenant_id`,
/// `subscription_tier`, `environment`, `timestamp`), routed with the bus'
/// `<event_type>.<service>` key.
///
/// Cost per batch: one JSON serialisation and one publish per event, all
/// sent before any confirm is awaited (pipelined through the backend's
/// in-flight window), then one wait for the batch's confirms. A batch with
/// any event the broker did not confirm (nacked, unroutable, timed out,
/// connection lost) is reported as failed, which the buffer counts in
/// `ExposureStats::failed`; events are telemetry and are not retried.
#[derive(Debug, Clone)]
pub struct BusExposureSink {
    bus: Bus,
    event_type: String,
}

impl BusExposureSink {
    /// A sink publishing `flag_exposure` events on `bus`.
    pub fn new(bus: Bus) -> Self {
        Self {
            bus,
            event_type: DEFAULT_EVENT_TYPE.to_owned(),
        }
    }

    /// Publishes under `event_type` instead of `flag_exposure`.
    #[must_use]
    pub fn event_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_type = event_type.into();
        self
    }
}

impl ExposureSink for BusExposureSink {
    fn export(
        &self,
        batch: Vec<ExposureEvent>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        let bus = self.bus.clone();
        let event_type = self.event_type.clone();
        async move {
            let total = batch.len();
            let mut pending = Vec::with_capacity(total);
            for event in &batch {
                let envelope = Envelope::new(event_type.as_str(), event)?;
                pending.push(bus.send(&envelope).await?);
            }
            let mut unconfirmed = 0usize;
            for p in pending {
                let outcome = p.await;
                if !outcome.is_confirmed() {
                    unconfirmed += 1;
                    tracing::debug!(?outcome, "flag exposure event not confirmed");
                }
            }
            if unconfirmed > 0 {
                return Err(format!(
                    "{unconfirmed} of {total} flag exposure events were not confirmed by the broker \
                     (is a queue bound for `{event_type}.{}`?)",
                    bus.service()
                )
                .into());
            }
            Ok(())
        }
    }
}
