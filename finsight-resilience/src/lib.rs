//! Resilience for async Rust: circuit breaker, retry with backoff and jitter,
//! retry budgets, fault injection and health aggregation — around async
//! closures and as tower Layers.
//!
//! ```
//! use std::time::Duration;
//! use finsight_resilience::{Backoff, CircuitBreaker, Jitter, Retry, RetryOnError};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // The Python services' breaker: open after 5 consecutive failures, probe after 60 s.
//! let breaker = CircuitBreaker::builder("quotes-api").build()?;
//! let retry = Retry::builder()
//!     .max_attempts(3)
//!     .backoff(Backoff::exponential(Duration::from_millis(100), Duration::from_secs(2)).jitter(Jitter::Full))
//!     .deadline(Duration::from_secs(5))
//!     .build()?;
//!
//! // Retries through the breaker: an open breaker is waited out (or given up
//! // on), never hammered; one classifier decides for both.
//! let price = retry
//!     .run_through(&breaker, &RetryOnError, || async { Ok::<f64, std::io::Error>(101.5) })
//!     .await?;
//! assert_eq!(price, 101.5);
//! assert_eq!(breaker.metrics().successes, 1);
//! # Ok(()) }
//! ```
//!
//! # Overview
//!
//! * [`CircuitBreaker`]: closed → open → half-open → closed/open.
//!   Consecutive-failure mode (default 5 failures, 60 s open: the Python
//!   services' behaviour) or failure-rate mode over a count- or time-based
//!   [`Window`] with a minimum number of calls, plus a slow-call rate. The
//!   open duration is fixed or backs off ([`OpenDuration`]). Half-open admits a
//!   bounded number of probes through [`Permit`]s: a permit dropped
//!   unrecorded (the caller was cancelled) records *cancelled*, never a
//!   failure, and gives its slot back; permits from an earlier cycle can't
//!   affect a later one. One [`Classifier`] sees the whole `Result`, so `Ok`
//!   values can fail and errors can be ignored. Force-open, force-closed,
//!   reset, [`Metrics`] snapshots, [`StateChange`] events
//!   ([`CircuitBreaker::subscribe`]) and `tracing` events. Rejection is a
//!   `Copy` [`CircuitOpen`] value saying when the next probe may pass; the
//!   operation is not called.
//! * [`BreakerRegistry`]: one breaker per downstream name or key, bounded
//!   (LRU + idle eviction, via moka).
//! * [`Retry`]: max attempts, [`Backoff`] `min(base·2^n, cap)` with every
//!   [`Jitter`] kind (none, full, equal, decorrelated, the Python services'
//!   +0..10 %) and the cap applied after jitter; retry on chosen errors and
//!   chosen `Ok` results ([`RetryClassifier`]); retry-after hints honoured and
//!   never undercut ([`parse_retry_after`] reads HTTP `Retry-After`); an
//!   overall deadline; a shared [`RetryBudget`] (retries limited to a ratio
//!   of recent successful calls plus a per-second floor); breaker awareness
//!   ([`OnCircuitOpen`]).
//! * tower: [`CircuitBreakerLayer`], [`RetryLayer`], [`FaultLayer`], and with
//!   the `tower-builder` feature the `ServiceBuilderExt` methods
//!   `.circuit_breaker(..)`, `.retry_policy(..)`, `.fault_injection(..)`.
//!   Services return [`BoxError`]; downcast to [`CircuitOpen`],
//!   [`DeadlineExceeded`] or [`InjectedFault`].
//! * [`Faults`]: latency, error and abort injection with probabilities, an
//!   on/off switch and a seeded RNG, around closures and as a Layer.
//! * [`Health`]: named async checks with timeouts plus breaker states, rolled
//!   up into a serializable [`HealthReport`] (healthy / degraded / unhealthy).
//!
//! # Cost
//!
//! A call through a closed breaker in consecutive mode is one atomic load
//! before and one `fetch_add` (plus one load) after: no lock, no allocation
//! (a counting-allocator test checks the closure API). A rejection reads
//! the clock (so that `retry_after` is exact and the breaker half-opens on
//! time without a timer task) and bumps one counter. The default
//! [`MonotonicClock`] reads the CPU's time-stamp counter (no system call);
//! with a [`CoarseClock`] that read is one atomic load. Transitions take a
//! mutex. Rate mode adds one short lock per call to record into the window.
//! A retry whose first attempt succeeds allocates nothing and takes no lock.
//!
//! # Time and randomness
//!
//! Breakers and budgets read time through the [`Clock`] trait.
//!
//! | Clock | Reads | Follows tokio's paused clock | Default of |
//! |---|---|---|---|
//! | [`MonotonicClock`] | the CPU's time-stamp counter via `quanta` (OS clock where there is none) | **no** | [`CircuitBreaker`] |
//! | [`TokioClock`] | `tokio::time::Instant` (`clock_gettime`) | yes | [`RetryBudget`] |
//! | [`ManualClock`] | an atomic, moved by the test | — | — |
//! | [`CoarseClock`] | an atomic ticked by a tokio task (accurate to its resolution) | yes | — |
//!
//! **Breakers do not follow tokio's paused clock by default**: the open
//! duration is measured on the [`MonotonicClock`], because an open breaker
//! reads its clock on every rejection and that read is the biggest part of
//! a rejection's cost. In tests under `#[tokio::test(start_paused = true)]`
//! that expect `tokio::time::advance` to end an open duration, build the
//! breaker with `.clock(TokioClock::new())` (or use a [`ManualClock`]):
//!
//! ```
//! # use std::time::Duration;
//! # use finsight_resilience::{CircuitBreaker, State, TokioClock};
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), finsight_resilience::Error> {
//! let breaker = CircuitBreaker::builder("paused")
//!     .consecutive_failures(1)
//!     .open_duration(finsight_resilience::OpenDuration::Fixed(Duration::from_secs(5)))
//!     .clock(TokioClock::new())
//!     .build()?;
//! let _ = breaker.call(|| async { Err::<(), ()>(()) }).await;
//! tokio::time::advance(Duration::from_secs(5)).await;
//! assert!(breaker.call(|| async { Ok::<(), ()>(()) }).await.is_ok());
//! assert_eq!(breaker.state(), State::Closed);
//! # Ok(()) }
//! ```
//!
//! Retry and fault injection sleep with `tokio::time` and draw jitter from a
//! seedable RNG, so tests under `#[tokio::test(start_paused = true)]` are
//! deterministic. **Breaker-aware retry ([`Retry::run_through`], a
//! [`RetryLayer`] over a [`CircuitBreakerLayer`]) waits for an open
//! breaker's probe time with a `tokio::time` sleep, so under the paused
//! clock it works only with breakers on a [`TokioClock`]**: a breaker on the
//! default [`MonotonicClock`] stays open through the sleep and retry gives up
//! with [`StopReason::CircuitOpen`]. Sleeping (retry waits, injected
//! latency, health timeouts, a retry deadline) needs a tokio runtime with
//! the time driver.
//!
//! # Feature flags
//!
//! | Feature | Description | Default |
//! |---|---|---|
//! | `tower-builder` | `ServiceBuilderExt` on `tower::ServiceBuilder` (adds a `tower` dependency without default features; the Layers themselves need only `tower-layer`/`tower-service`) | no |
//! | `full` | every feature | no |
//!
//! # Links
//!
//! Behaviour contract: the FinSight SDK's `SPEC.md` §2. Benchmarks next to
//! failsafe and tower's `Retry`: the repository's `BENCHMARKS.md`.
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(attr(deny(warnings))))]

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

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use backoff::{Backoff, Jitter};
pub use breaker::{
    CircuitBreaker, CircuitBreakerBuilder, Classifier, DefaultClassifier, Metrics, OpenDuration,
    Outcome, OwnedPermit, Permit, Reason, State, StateChange, Window,
};
pub use budget::RetryBudget;
#[cfg(feature = "tower-builder")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower-builder")))]
pub use builder::ServiceBuilderExt;
pub use clock::{Clock, CoarseClock, ManualClock, MonotonicClock, TokioClock};
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
