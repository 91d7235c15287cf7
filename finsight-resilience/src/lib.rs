//! Resilience for async Rust: circuit breaker, retry with backoff and jitter, retry budgets, fault injection and health aggregation.
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backoff;
mod breaker;
mod budget;
#[cfg(feature = "tower-builder")]
mod builder;
mod clock;
mod error;
mod faults;
mod health;
mod layer;
mod registry;
mod retry;

pub use backoff::{Backoff, Jitter};
pub use breaker::{
    CircuitBreaker, CircuitBreakerBuilder, Classifier, DefaultClassifier, Metrics, OpenDuration,
    Outcome, OwnedPermit, Permit, Reason, State, StateChange, Window,
};
pub use budget::RetryBudget;
#[cfg(feature = "tower-builder")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower-builder")))]
pub use builder::ServiceBuilderExt;
pub use clock::{Clock, ManualClock, TokioClock};
pub use error::{
    BoxError, BreakerError, CircuitOpen, DeadlineExceeded, Error, RetryError, StopReason,
};
pub use faults::{
    Decision, FaultError, FaultFuture, FaultLayer, FaultService, Faults, FaultsBuilder,
    InjectedFault,
};
pub use health::{BreakerReport, CheckReport, Health, HealthReport, HealthStatus};
pub use layer::{
    BreakerFuture, CircuitBreakerLayer, CircuitBreakerService, RetryFuture, RetryLayer,
    RetryService,
};
pub use registry::{BreakerRegistry, BreakerRegistryBuilder};
pub use retry::{
    OnCircuitOpen, Retry, RetryAction, RetryAfterHint, RetryBoxError, RetryBuilder,
    RetryClassifier, RetryOnError, parse_retry_after,
};
