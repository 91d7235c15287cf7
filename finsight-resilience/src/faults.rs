//! Fault injection for tests and game days: [`Faults`], around closures and
//! as the [`FaultLayer`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use parking_lot::Mutex;
use pin_project_lite::pin_project;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tower_layer::Layer;
use tower_service::Service;

use crate::error::{BoxError, Error};

/// The fault that was injected (the leaf error inside [`FaultError::Injected`]
/// or, from [`FaultService`], inside a [`BoxError`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InjectedFault {
    /// The operation ran, and its result was replaced by this error (as if
    /// the response was lost after the work was done).
    Error,
    /// The operation was not run at all (as if the connection was refused).
    Abort,
}

impl fmt::Display for InjectedFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Error => "injected fault: the call ran and its result was replaced by an error",
            Self::Abort => "injected fault: the call was aborted before it ran",
        })
    }
}

impl std::error::Error for InjectedFault {}

/// The error of [`Faults::run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultError<E> {
    /// A fault was injected.
    Injected(InjectedFault),
    /// The operation's own error.
    Inner(E),
}

impl<E: fmt::Display> fmt::Display for FaultError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Injected(i) => i.fmt(f),
            Self::Inner(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for FaultError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Injected(i) => Some(i),
            Self::Inner(e) => Some(e),
        }
    }
}

/// What to do to one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Decision {
    /// Added latency before the call.
    pub delay: Option<Duration>,
    /// The fault to inject, if any.
    pub fault: Option<InjectedFault>,
}

/// Builds [`Faults`]. Every fault starts at probability 0; the switch starts on.
#[derive(Debug, Clone)]
#[must_use = "call .build() to obtain the fault injector"]
pub struct FaultsBuilder {
    latency: Option<(f64, Duration)>,
    error: f64,
    abort: f64,
    seed: Option<u64>,
    enabled: bool,
}

impl FaultsBuilder {
    /// Delay a share `probability` (0.0..=1.0) of calls by `delay`.
    pub fn latency(mut self, probability: f64, delay: Duration) -> Self {
        self.latency = Some((probability, delay));
        self
    }

    /// Replace the result of a share `probability` of calls by
    /// [`InjectedFault::Error`] (the call still runs).
    pub fn error_rate(mut self, probability: f64) -> Self {
        self.error = probability;
        self
    }

    /// Fail a share `probability` of calls with [`InjectedFault::Abort`]
    /// without running them. Checked before the error rate.
    pub fn abort_rate(mut self, probability: f64) -> Self {
        self.abort = probability;
        self
    }

    /// Seeds the RNG (reproducible fault sequences).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Whether injection starts switched on (default `true`).
    pub fn enabled(mut self, on: bool) -> Self {
        self.enabled = on;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a probability outside 0.0..=1.0.
    pub fn build(self) -> Result<Faults, Error> {
        let ok = |p: f64| (0.0..=1.0).contains(&p);
        if let Some((p, _)) = self.latency
            && !ok(p)
        {
            return Err(Error::config(
                "latency",
                format!("probability {p} must be in 0.0..=1.0"),
            ));
        }
        if !ok(self.error) {
            return Err(Error::config(
                "error_rate",
                format!("probability {} must be in 0.0..=1.0", self.error),
            ));
        }
        if !ok(self.abort) {
            return Err(Error::config(
                "abort_rate",
                format!("probability {} must be in 0.0..=1.0", self.abort),
            ));
        }
        let rng = match self.seed {
            Some(s) => SmallRng::seed_from_u64(s),
            None => SmallRng::from_os_rng(),
        };
        Ok(Faults {
            inner: Arc::new(Inner {
                enabled: AtomicBool::new(self.enabled),
                latency: self.latency,
                error: self.error,
                abort: self.abort,
                rng: Mutex::new(rng),
                injected: AtomicU64::new(0),
                delayed: AtomicU64::new(0),
            }),
        })
    }
}

#[derive(Debug)]
struct Inner {
    enabled: AtomicBool,
    latency: Option<(f64, Duration)>,
    error: f64,
    abort: f64,
    rng: Mutex<SmallRng>,
    injected: AtomicU64,
    delayed: AtomicU64,
}

/// A fault injector: added latency, injected errors and aborts, each with a
/// probability, behind an on/off switch, drawn from one (seedable) RNG.
///
/// Cheap to clone (one `Arc`); clones share the switch and the RNG. Cost per
/// call: one atomic load when switched off; one short lock and up to three
/// RNG draws when on. Latency sleeps with `tokio::time` (paused-clock friendly).
#[derive(Debug, Clone)]
pub struct Faults {
    inner: Arc<Inner>,
}

impl Faults {
    /// A builder with every probability at 0, switched on.
    pub fn builder() -> FaultsBuilder {
        FaultsBuilder {
            latency: None,
            error: 0.0,
            abort: 0.0,
            seed: None,
            enabled: true,
        }
    }

    /// Switches injection on or off (takes effect for the next call).
    pub fn set_enabled(&self, on: bool) {
        self.inner.enabled.store(on, Ordering::Release);
        tracing::info!(enabled = on, "fault injection switched");
    }

    /// Whether injection is on.
    pub fn is_enabled(&self) -> bool {
        self.inner.enabled.load(Ordering::Acquire)
    }

    /// Faults injected so far (errors and aborts).
    pub fn injected(&self) -> u64 {
        self.inner.injected.load(Ordering::Relaxed)
    }

    /// Calls delayed so far.
    pub fn delayed(&self) -> u64 {
        self.inner.delayed.load(Ordering::Relaxed)
    }

    /// Draws the decision for one call (nothing when switched off).
    pub fn decide(&self) -> Decision {
        let i = &*self.inner;
        if !i.enabled.load(Ordering::Acquire) {
            return Decision::default();
        }
        let mut rng = i.rng.lock();
        let delay = match i.latency {
            Some((p, d)) if rng.random_bool(p) => Some(d),
            _ => None,
        };
        let fault = if rng.random_bool(i.abort) {
            Some(InjectedFault::Abort)
        } else if rng.random_bool(i.error) {
            Some(InjectedFault::Error)
        } else {
            None
        };
        drop(rng);
        if delay.is_some() {
            i.delayed.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(f) = fault {
            i.injected.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(fault = ?f, "fault injected");
        }
        Decision { delay, fault }
    }

    /// Runs `op` with faults injected as drawn by [`decide`](Self::decide).
    ///
    /// # Errors
    /// [`FaultError::Injected`] for an injected fault, [`FaultError::Inner`]
    /// for `op`'s own error.
    pub async fn run<F, Fut, T, E>(&self, op: F) -> Result<T, FaultError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let d = self.decide();
        if let Some(delay) = d.delay {
            tokio::time::sleep(delay).await;
        }
        if d.fault == Some(InjectedFault::Abort) {
            return Err(FaultError::Injected(InjectedFault::Abort));
        }
        let r = op().await;
        if d.fault == Some(InjectedFault::Error) {
            return Err(FaultError::Injected(InjectedFault::Error));
        }
        r.map_err(FaultError::Inner)
    }
}

/// Wraps services in a [`FaultService`] sharing one [`Faults`].
#[derive(Debug, Clone)]
pub struct FaultLayer {
    faults: Faults,
}

impl FaultLayer {
    /// A layer injecting `faults`.
    pub fn new(faults: Faults) -> Self {
        Self { faults }
    }
}

impl<S> Layer<S> for FaultLayer {
    type Service = FaultService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FaultService {
            inner,
            faults: self.faults.clone(),
        }
    }
}

/// A service with faults injected; errors are [`BoxError`] with
/// [`InjectedFault`] as the leaf for injected ones. A delayed call keeps
/// the ready service and calls it after the delay (a clone replaces it), so
/// the inner service must be `Clone`.
#[derive(Debug, Clone)]
pub struct FaultService<S> {
    inner: S,
    faults: Faults,
}

impl<S, Req> Service<Req> for FaultService<S>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = FaultFuture<S, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let d = self.faults.decide();
        let state = match (d.delay, d.fault) {
            (None, Some(InjectedFault::Abort)) => FaultState::Done {
                fault: Some(InjectedFault::Abort),
            },
            (None, fault) => FaultState::Calling {
                fut: self.inner.call(req),
                fault,
            },
            (Some(delay), fault) => {
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                FaultState::Delayed {
                    sleep: tokio::time::sleep(delay),
                    next: Some((ready, req)),
                    fault,
                }
            }
        };
        FaultFuture { state }
    }
}

pin_project! {
    #[project = FaultStateProj]
    enum FaultState<S, Req, F> {
        Delayed { #[pin] sleep: tokio::time::Sleep, next: Option<(S, Req)>, fault: Option<InjectedFault> },
        Calling { #[pin] fut: F, fault: Option<InjectedFault> },
        Done { fault: Option<InjectedFault> },
    }
}

pin_project! {
    /// The response future of [`FaultService`].
    pub struct FaultFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: FaultState<S, Req, S::Future>,
    }
}

impl<S: Service<Req>, Req> fmt::Debug for FaultFuture<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultFuture").finish_non_exhaustive()
    }
}

impl<S, Req> Future for FaultFuture<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                FaultStateProj::Delayed { sleep, next, fault } => {
                    ready!(sleep.poll(cx));
                    let fault = *fault;
                    if fault == Some(InjectedFault::Abort) {
                        this.state.set(FaultState::Done { fault });
                        continue;
                    }
                    let Some((mut svc, req)) = next.take() else {
                        return Poll::Ready(Err(Box::new(InjectedFault::Abort)));
                    };
                    let fut = svc.call(req);
                    this.state.set(FaultState::Calling { fut, fault });
                }
                FaultStateProj::Calling { fut, fault } => {
                    let r = ready!(fut.poll(cx));
                    return Poll::Ready(match fault {
                        Some(f) => Err(Box::new(*f)),
                        None => r.map_err(Into::into),
                    });
                }
                FaultStateProj::Done { fault } => {
                    return Poll::Ready(Err(Box::new(fault.unwrap_or(InjectedFault::Abort))));
                }
            }
        }
    }
}
