//! A FinSight bus consumer: the analytics side of the gateway example.
//!
//! It consumes the `analytics` queue (SPEC §5: bound with `*.analytics`,
//! dead-lettering to `finsight.dlx` → `finsight.dlq`) and aggregates what the
//! gateway publishes:
//!
//! * `api_request` ([`RequestEvent`]): requests, server errors and
//!   rate-limited requests per tenant;
//! * `flag_exposure` ([`ExposureRecord`]): exposures per flag and value;
//! * `circuit_state_changed` ([`BreakerChange`]): breaker transitions per
//!   breaker and target state.
//!
//! What cannot be handled is dead-lettered with the reason in the
//! `x-dead-letter-reason` header, and the consumer keeps running: a payload
//! that does not fit the event's type (permanent, no retry), an event type
//! with no handler, a body that is not JSON. A handler error that may pass on
//! retry is retried in process ([`RetryPolicy`]) before it is dead-lettered.
//!
//! Memory: the aggregates keep at most [`MAX_KEYS`] tenants and flag/value
//! pairs each; later ones are counted under [`OTHER`].

#![deny(missing_docs)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use finsight_bus::{
    Bus, ConsumerHandle, Context, HandlerError, Result, RetryPolicy, Router, UnknownEventPolicy,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Most tenants (and flag/value pairs) tracked one by one.
pub const MAX_KEYS: usize = 10_000;
/// The key that counts everything beyond [`MAX_KEYS`], and events without a tenant.
pub const OTHER: &str = "_other";

/// The gateway's per-request event (the JSON of event type `api_request`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RequestEvent {
    /// HTTP method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// Response status.
    pub status: u16,
    /// Caller's user id.
    pub user_id: Option<String>,
    /// Caller's tenant id.
    pub tenant_id: Option<String>,
    /// Caller's tier.
    pub tier: Option<String>,
    /// Handling time in microseconds.
    pub latency_us: u64,
}

/// The fields of a flag exposure event (event type `flag_exposure`) the worker reads.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExposureRecord {
    /// The flag key.
    pub flag_key: String,
    /// The value served.
    pub value: serde_json::Value,
}

/// The fields of a breaker state change (event type `circuit_state_changed`) the worker reads.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BreakerChange {
    /// The breaker's name.
    pub name: String,
    /// State before.
    pub from: String,
    /// State after.
    pub to: String,
}

/// Totals of one tenant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TenantTotals {
    /// Requests seen.
    pub requests: u64,
    /// Requests answered 5xx.
    pub server_errors: u64,
    /// Requests answered 429.
    pub rate_limited: u64,
}

/// What the worker has aggregated so far. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct Aggregates {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    tenants: HashMap<String, TenantTotals>,
    exposures: HashMap<String, u64>,
    transitions: HashMap<String, u64>,
}

fn bounded_entry<'a, V: Default>(map: &'a mut HashMap<String, V>, key: &str) -> &'a mut V {
    let key = if map.contains_key(key) || map.len() < MAX_KEYS {
        key
    } else {
        OTHER
    };
    map.entry(key.to_owned()).or_default()
}

impl Aggregates {
    /// Empty aggregates.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one request event.
    pub fn record_request(&self, e: &RequestEvent) {
        let mut g = self.inner.lock();
        let t = bounded_entry(&mut g.tenants, e.tenant_id.as_deref().unwrap_or(OTHER));
        t.requests += 1;
        if e.status >= 500 {
            t.server_errors += 1;
        }
        if e.status == 429 {
            t.rate_limited += 1;
        }
    }

    /// Records one exposure.
    pub fn record_exposure(&self, e: &ExposureRecord) {
        let mut g = self.inner.lock();
        *bounded_entry(&mut g.exposures, &format!("{}={}", e.flag_key, e.value)) += 1;
    }

    /// Records one breaker transition.
    pub fn record_transition(&self, e: &BreakerChange) {
        let mut g = self.inner.lock();
        *bounded_entry(&mut g.transitions, &format!("{}->{}", e.name, e.to)) += 1;
    }

    /// How often breaker `name` went to state `to` (`open`, `half_open`, `closed`, …).
    pub fn transitions(&self, name: &str, to: &str) -> u64 {
        self.inner
            .lock()
            .transitions
            .get(&format!("{name}->{to}"))
            .copied()
            .unwrap_or(0)
    }

    /// The totals of `tenant` (or of [`OTHER`]).
    pub fn tenant(&self, tenant: &str) -> TenantTotals {
        self.inner
            .lock()
            .tenants
            .get(tenant)
            .copied()
            .unwrap_or_default()
    }

    /// Exposures of `flag_key` with `value` (as JSON text, e.g. `true`).
    pub fn exposures(&self, flag_key: &str, value: &str) -> u64 {
        self.inner
            .lock()
            .exposures
            .get(&format!("{flag_key}={value}"))
            .copied()
            .unwrap_or(0)
    }

    /// Requests seen over all tenants.
    pub fn total_requests(&self) -> u64 {
        self.inner.lock().tenants.values().map(|t| t.requests).sum()
    }
}

/// The worker's handlers: `api_request`, `flag_exposure` and
/// `circuit_state_changed`; unknown event types are dead-lettered.
pub fn router(aggregates: Aggregates) -> Router {
    let requests = aggregates.clone();
    let exposures = aggregates.clone();
    let transitions = aggregates;
    Router::new()
        .on_typed("api_request", move |ctx: Context, e: RequestEvent| {
            let agg = requests.clone();
            async move {
                if e.method.is_empty() || !e.path.starts_with('/') {
                    // Retrying cannot make it valid.
                    return Err(HandlerError::permanent(format!(
                        "api_request {}: method and an absolute path are required",
                        ctx.envelope().message_id()
                    )));
                }
                agg.record_request(&e);
                tracing::debug!(path = %e.path, status = e.status, "request recorded");
                Ok(())
            }
        })
        .on_typed("flag_exposure", move |_ctx: Context, e: ExposureRecord| {
            let agg = exposures.clone();
            async move {
                agg.record_exposure(&e);
                Ok::<_, HandlerError>(())
            }
        })
        .on_typed(
            "circuit_state_changed",
            move |_ctx: Context, e: BreakerChange| {
                let agg = transitions.clone();
                async move {
                    tracing::info!(breaker = %e.name, from = %e.from, to = %e.to, "breaker transition");
                    agg.record_transition(&e);
                    Ok::<_, HandlerError>(())
                }
            },
        )
        .unknown_events(UnknownEventPolicy::DeadLetter)
}

/// Starts consuming `queue` on `bus` with [`router`]: 3 attempts per handler
/// (50 ms, then 100 ms apart), 10 s handler timeout, 8 messages at a time.
///
/// # Errors
/// [`finsight_bus::Error::NotDeclared`] when `queue` is not in the bus' topology.
pub fn start(bus: &Bus, queue: &str, aggregates: Aggregates) -> Result<ConsumerHandle> {
    bus.consumer(queue, router(aggregates))
        .retry(RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            multiplier: 2,
        })
        .handler_timeout(Some(Duration::from_secs(10)))
        .concurrency(8)
        .prefetch(64)
        .consumer_name("worker")
        .start()
}
