//! [`ServiceBuilderExt`]: this crate's layers as `tower::ServiceBuilder` methods.

use tower::ServiceBuilder;
use tower_layer::Stack;

use crate::breaker::CircuitBreaker;
use crate::faults::{FaultLayer, Faults};
use crate::layer::{CircuitBreakerLayer, RetryLayer};
use crate::retry::Retry;

mod sealed {
    pub trait Sealed {}
    impl<L> Sealed for tower::ServiceBuilder<L> {}
}

/// Adds `.circuit_breaker(..)`, `.retry_policy(..)` and
/// `.fault_injection(..)` to [`tower::ServiceBuilder`]. Sealed: implemented
/// for `ServiceBuilder` only.
///
/// Layers apply outside-in in the order written: put `.retry_policy(..)`
/// before `.circuit_breaker(..)` so retry sees the breaker's rejections and
/// waits for its probe time instead of burning attempts (under tokio's paused
/// clock only if the breaker is on a [`TokioClock`](crate::TokioClock), see
/// [`Retry::run_through`]).
pub trait ServiceBuilderExt<L>: sealed::Sealed + Sized {
    /// Adds a [`CircuitBreakerLayer`] over `breaker` (default classifier).
    fn circuit_breaker(
        self,
        breaker: CircuitBreaker,
    ) -> ServiceBuilder<Stack<CircuitBreakerLayer, L>>;
    /// Adds a [`RetryLayer`] applying `retry` (default classifier).
    fn retry_policy(self, retry: Retry) -> ServiceBuilder<Stack<RetryLayer, L>>;
    /// Adds a [`FaultLayer`] injecting `faults`.
    fn fault_injection(self, faults: Faults) -> ServiceBuilder<Stack<FaultLayer, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    fn circuit_breaker(
        self,
        breaker: CircuitBreaker,
    ) -> ServiceBuilder<Stack<CircuitBreakerLayer, L>> {
        self.layer(CircuitBreakerLayer::new(breaker))
    }

    fn retry_policy(self, retry: Retry) -> ServiceBuilder<Stack<RetryLayer, L>> {
        self.layer(RetryLayer::new(retry))
    }

    fn fault_injection(self, faults: Faults) -> ServiceBuilder<Stack<FaultLayer, L>> {
        self.layer(FaultLayer::new(faults))
    }
}
