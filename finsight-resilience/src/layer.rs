//! tower [`Layer`]s and [`Service`]s: [`CircuitBreakerLayer`] and [`RetryLayer`].
//!
//! Both services return [`BoxError`]; the leaf errors to downcast to are
//! [`CircuitOpen`] (rejection) and [`DeadlineExceeded`](crate::DeadlineExceeded).
//! Rejection happens in `call`, never in `poll_ready`: an `Err` from
//! `poll_ready` would tear down `Buffer`-style stacks. The state lives in the
//! breaker or retry handed to the layer, so a framework that calls
//! [`Layer::layer`] more than once still shares one breaker.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::breaker::{CircuitBreaker, Classifier, DefaultClassifier, OwnedPermit};
use crate::error::{BoxError, CircuitOpen, DeadlineExceeded};
use crate::retry::{Next, Progress, Retry, RetryBoxError, RetryClassifier};

/// Wraps services in a [`CircuitBreakerService`] sharing one breaker.
///
/// The classifier sees `Result<Response, BoxError>` (the inner error already
/// boxed); the default counts every `Err` as a failure.
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer<C = DefaultClassifier> {
    breaker: CircuitBreaker,
    classifier: C,
}

impl CircuitBreakerLayer {
    /// A layer over `breaker` with the [`DefaultClassifier`].
    pub fn new(breaker: CircuitBreaker) -> Self {
        Self {
            breaker,
            classifier: DefaultClassifier,
        }
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// The same layer with another classifier, e.g.
    /// `|r: &Result<Response, BoxError>| ...` returning an [`Outcome`](crate::Outcome).
    pub fn classifier<C2>(self, classifier: C2) -> CircuitBreakerLayer<C2> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            classifier,
        }
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreakerService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService {
            inner,
            breaker: self.breaker.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// A service behind a [`CircuitBreaker`]. Per call: one permit (an `Arc`
/// increment and the breaker's atomics) and a clone of the classifier; the
/// response future is not boxed.
#[derive(Debug, Clone)]
pub struct CircuitBreakerService<S, C = DefaultClassifier> {
    inner: S,
    breaker: CircuitBreaker,
    classifier: C,
}

impl<S, C> CircuitBreakerService<S, C> {
    /// The breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, C, Req> Service<Req> for CircuitBreakerService<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classifier<S::Response, BoxError> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BreakerFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.breaker.try_acquire_owned() {
            Err(open) => BreakerFuture {
                state: BreakerState::Rejected { open: Some(open) },
            },
            Ok(permit) => BreakerFuture {
                state: BreakerState::Admitted {
                    fut: self.inner.call(req),
                    permit: Some(permit),
                    classifier: self.classifier.clone(),
                },
            },
        }
    }
}

pin_project! {
    #[project = BreakerStateProj]
    enum BreakerState<F, C> {
        Rejected { open: Option<CircuitOpen> },
        Admitted { #[pin] fut: F, permit: Option<OwnedPermit>, classifier: C },
    }
}

pin_project! {
    /// The response future of [`CircuitBreakerService`]. Dropping it while
    /// the inner call runs records the call as cancelled.
    pub struct BreakerFuture<F, C> {
        #[pin]
        state: BreakerState<F, C>,
    }
}

impl<F, C> fmt::Debug for BreakerFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerFuture").finish_non_exhaustive()
    }
}

impl<F, C, T, E> Future for BreakerFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classifier<T, BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            BreakerStateProj::Rejected { open } => match open.take() {
                Some(o) => Poll::Ready(Err(Box::new(o))),
                None => Poll::Ready(Err(Box::new(PolledAfterCompletion))),
            },
            BreakerStateProj::Admitted {
                fut,
                permit,
                classifier,
            } => {
                let r = ready!(fut.poll(cx)).map_err(Into::into);
                if let Some(p) = permit.take() {
                    p.record(classifier.classify(&r));
                }
                Poll::Ready(r)
            }
        }
    }
}

/// A response future polled again after it completed.
#[derive(Debug, Clone, Copy)]
struct PolledAfterCompletion;

impl fmt::Display for PolledAfterCompletion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("response future polled after it completed")
    }
}

impl std::error::Error for PolledAfterCompletion {}

/// Wraps services in a [`RetryService`] sharing one [`Retry`] policy.
///
/// Requests must be `Clone` (one clone per call, kept for retries) and the
/// inner service `Clone` (a retry calls a clone made ready with `poll_ready`).
/// The classifier sees `Result<Response, BoxError>`; the default,
/// [`RetryBoxError`], retries errors and waits out [`CircuitOpen`] and
/// [`RetryAfterHint`](crate::RetryAfterHint) errors, so a
/// [`CircuitBreakerLayer`] *inside* the retry layer makes retry breaker-aware.
///
/// **Under tokio's paused clock, waiting out an open breaker works only if
/// the breaker was built with `.clock(TokioClock::new())`**
/// ([`TokioClock`](crate::TokioClock)): the wait is a `tokio::time` sleep,
/// and a breaker on its default real-time
/// [`MonotonicClock`](crate::MonotonicClock) is still open when it ends, so
/// retry gives up once `max_attempts` rejections have been waited out (see
/// [`Retry::run_through`]).
#[derive(Debug, Clone)]
pub struct RetryLayer<C = RetryBoxError> {
    retry: Retry,
    classifier: C,
}

impl RetryLayer {
    /// A layer applying `retry` with the [`RetryBoxError`] classifier.
    pub fn new(retry: Retry) -> Self {
        Self {
            retry,
            classifier: RetryBoxError,
        }
    }
}

impl<C> RetryLayer<C> {
    /// The same layer with another classifier.
    pub fn classifier<C2>(self, classifier: C2) -> RetryLayer<C2> {
        RetryLayer {
            retry: self.retry,
            classifier,
        }
    }
}

impl<S, C: Clone> Layer<S> for RetryLayer<C> {
    type Service = RetryService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryService {
            inner,
            retry: self.retry.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// A service retried by a [`Retry`] policy. Per call: one request clone, one
/// service clone, one `Arc` increment; the future is not boxed; a
/// first-attempt success takes no lock and starts no timer (unless a
/// deadline is set).
#[derive(Debug, Clone)]
pub struct RetryService<S, C = RetryBoxError> {
    inner: S,
    retry: Retry,
    classifier: C,
}

impl<S, C, Req> Service<Req> for RetryService<S, C>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    C: RetryClassifier<S::Response, BoxError> + Clone,
    Req: Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = RetryFuture<S, Req, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let deadline = self.retry.deadline().map(|d| {
            let t0 = tokio::time::Instant::now();
            (t0, tokio::time::sleep_until(t0 + d))
        });
        let (start, deadline) = match deadline {
            Some((t0, s)) => (Some(t0), Some(s)),
            None => (None, None),
        };
        let fut = ready.call(req.clone());
        let mut progress = Progress::default();
        progress.started();
        RetryFuture {
            state: RetryState::Calling { fut },
            deadline,
            service: ready,
            request: req,
            retry: self.retry.clone(),
            classifier: self.classifier.clone(),
            progress,
            start,
        }
    }
}

pin_project! {
    #[project = RetryStateProj]
    enum RetryState<F> {
        Calling { #[pin] fut: F },
        Sleeping { #[pin] sleep: tokio::time::Sleep },
        Ready,
    }
}

pin_project! {
    /// The response future of [`RetryService`].
    pub struct RetryFuture<S, Req, C>
    where
        S: Service<Req>,
    {
        #[pin]
        state: RetryState<S::Future>,
        #[pin]
        deadline: Option<tokio::time::Sleep>,
        service: S,
        request: Req,
        retry: Retry,
        classifier: C,
        progress: Progress,
        start: Option<tokio::time::Instant>,
    }
}

impl<S: Service<Req>, Req, C> fmt::Debug for RetryFuture<S, Req, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryFuture")
            .field("attempts", &self.progress.attempts)
            .finish_non_exhaustive()
    }
}

impl<S, Req, C> Future for RetryFuture<S, Req, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: RetryClassifier<S::Response, BoxError>,
    Req: Clone,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                RetryStateProj::Calling { fut } => {
                    if let Some(dl) = this.deadline.as_mut().as_pin_mut()
                        && dl.poll(cx).is_ready()
                    {
                        tracing::debug!(
                            attempts = this.progress.attempts,
                            "retry deadline exceeded during an attempt"
                        );
                        return Poll::Ready(Err(Box::new(DeadlineExceeded)));
                    }
                    let r = ready!(fut.poll(cx)).map_err(Into::into);
                    let action = this.classifier.classify(&r);
                    let elapsed = this.start.map_or(Duration::ZERO, |t0| t0.elapsed());
                    match this.retry.next(this.progress, action, r.is_ok(), elapsed) {
                        Next::Stop(_) => return Poll::Ready(r),
                        Next::Sleep(d) => this.state.set(RetryState::Sleeping {
                            sleep: tokio::time::sleep(d),
                        }),
                    }
                }
                RetryStateProj::Sleeping { sleep } => {
                    ready!(sleep.poll(cx));
                    this.state.set(RetryState::Ready);
                }
                RetryStateProj::Ready => {
                    ready!(this.service.poll_ready(cx)).map_err(Into::into)?;
                    this.progress.started();
                    let fut = this.service.call(this.request.clone());
                    this.state.set(RetryState::Calling { fut });
                }
            }
        }
    }
}
