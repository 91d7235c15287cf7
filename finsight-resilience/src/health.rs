//! Health aggregation: named async checks with timeouts, plus breaker
//! states, rolled up into healthy / degraded / unhealthy for a `/health`
//! endpoint.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::breaker::{CircuitBreaker, State};
use crate::registry::BreakerRegistry;

/// Overall or per-component health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Everything works.
    Healthy,
    /// Works with reduced capability (a non-critical check failed, a breaker is open).
    Degraded,
    /// A critical check failed.
    Unhealthy,
}

impl HealthStatus {
    /// The HTTP status a `/health` endpoint would usually answer: 200 for
    /// healthy and degraded, 503 for unhealthy.
    pub fn http_status(self) -> u16 {
        match self {
            Self::Healthy | Self::Degraded => 200,
            Self::Unhealthy => 503,
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckReport {
    /// The check's name.
    pub name: String,
    /// Healthy, or what its failure means for the whole (critical → unhealthy,
    /// otherwise degraded).
    pub status: HealthStatus,
    /// Whether the check is critical.
    pub critical: bool,
    /// The error, or `"timed out after N ms"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One breaker's state in the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BreakerReport {
    /// The breaker's name.
    pub name: String,
    /// Its state.
    pub state: State,
    /// Healthy when closed (or forced closed); otherwise degraded, or
    /// unhealthy if the breaker was added as critical.
    pub status: HealthStatus,
}

/// The aggregated report, serializable as the body of `/health`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthReport {
    /// The worst status of all checks and breakers.
    pub status: HealthStatus,
    /// Every check, in the order they were added.
    pub checks: Vec<CheckReport>,
    /// Every breaker (registry breakers sorted by name).
    pub breakers: Vec<BreakerReport>,
}

type CheckFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

#[derive(Clone)]
struct Check {
    name: String,
    timeout: Duration,
    critical: bool,
    run: CheckFn,
}

/// Named health checks and breakers, rolled up by [`Health::report`].
///
/// Cheap to clone (the checks are shared). A report runs every check at once,
/// each under its own timeout, and allocates one boxed future per check plus
/// the report; memory is bounded by the checks and breakers added.
#[derive(Clone, Default)]
pub struct Health {
    checks: Vec<Check>,
    breakers: Vec<(CircuitBreaker, bool)>,
    registries: Vec<BreakerRegistry>,
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health")
            .field(
                "checks",
                &self.checks.iter().map(|c| &c.name).collect::<Vec<_>>(),
            )
            .field("breakers", &self.breakers.len())
            .field("registries", &self.registries.len())
            .finish()
    }
}

impl Health {
    /// No checks yet (reports healthy).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a check: `check()` must resolve within `timeout`; an `Err` or a
    /// timeout makes the whole report unhealthy if `critical`, degraded
    /// otherwise.
    pub fn check<F, Fut, E>(
        mut self,
        name: impl Into<String>,
        critical: bool,
        timeout: Duration,
        check: F,
    ) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display,
    {
        let run: CheckFn = Arc::new(move || {
            let fut = check();
            Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
        });
        self.checks.push(Check {
            name: name.into(),
            timeout,
            critical,
            run,
        });
        self
    }

    /// Adds a breaker: open or half-open makes the report degraded
    /// (unhealthy if `critical`).
    pub fn breaker(mut self, breaker: &CircuitBreaker, critical: bool) -> Self {
        self.breakers.push((breaker.clone(), critical));
        self
    }

    /// Adds every breaker a registry holds at report time (non-critical).
    pub fn registry(mut self, registry: &BreakerRegistry) -> Self {
        self.registries.push(registry.clone());
        self
    }

    /// Runs every check concurrently and rolls up the result.
    pub async fn report(&self) -> HealthReport {
        let runs = self.checks.iter().map(|c| {
            let fut = (c.run)();
            async move {
                let error = match tokio::time::timeout(c.timeout, fut).await {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e),
                    Err(_) => Some(format!("timed out after {} ms", c.timeout.as_millis())),
                };
                let status = match (&error, c.critical) {
                    (None, _) => HealthStatus::Healthy,
                    (Some(_), true) => HealthStatus::Unhealthy,
                    (Some(_), false) => HealthStatus::Degraded,
                };
                if let Some(e) = &error {
                    tracing::warn!(check = %c.name, critical = c.critical, error = %e, "health check failed");
                }
                CheckReport {
                    name: c.name.clone(),
                    status,
                    critical: c.critical,
                    error,
                }
            }
        });
        let checks = futures_util::future::join_all(runs).await;
        let mut breakers: Vec<BreakerReport> = self
            .breakers
            .iter()
            .map(|(b, critical)| breaker_report(b, *critical))
            .collect();
        for r in &self.registries {
            breakers.extend(r.breakers().iter().map(|b| breaker_report(b, false)));
        }
        let status = checks
            .iter()
            .map(|c| c.status)
            .chain(breakers.iter().map(|b| b.status))
            .max()
            .unwrap_or(HealthStatus::Healthy);
        HealthReport {
            status,
            checks,
            breakers,
        }
    }
}

fn breaker_report(b: &CircuitBreaker, critical: bool) -> BreakerReport {
    let state = b.state();
    let status = match state {
        State::Closed | State::ForcedClosed => HealthStatus::Healthy,
        _ if critical => HealthStatus::Unhealthy,
        _ => HealthStatus::Degraded,
    };
    BreakerReport {
        name: b.name().to_owned(),
        state,
        status,
    }
}
