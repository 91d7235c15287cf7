//! [`Retry`]: bounded, jittered, budgeted, deadline-aware retries that know
//! about open breakers and honour retry-after hints.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use rand::SeedableRng;
use rand::rngs::SmallRng;

use crate::backoff::Backoff;
use crate::breaker::{CircuitBreaker, Outcome};
use crate::budget::RetryBudget;
use crate::error::{BoxError, BreakerError, CircuitOpen, Error, RetryError, StopReason};

/// What to do after an attempt, as a [`RetryClassifier`] decides from its
/// whole `Result` (so an `Ok` value can ask for a retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAction {
    /// Final: return this result.
    Return,
    /// Retry after the backoff delay.
    Retry,
    /// Retry, waiting at least this long (a server's retry-after hint; the
    /// wait is `max(backoff, hint)`, never less than the hint).
    RetryAfter(Duration),
    /// A breaker rejected the call: wait for its probe time or give up, as
    /// [`OnCircuitOpen`] says. Does not count as an attempt.
    CircuitOpen(CircuitOpen),
}

/// Decides the [`RetryAction`] for an attempt's result. Implemented for
/// every `Fn(&Result<T, E>) -> RetryAction`.
pub trait RetryClassifier<T, E> {
    /// The action for `result`.
    fn classify(&self, result: &Result<T, E>) -> RetryAction;
}

impl<T, E, F> RetryClassifier<T, E> for F
where
    F: Fn(&Result<T, E>) -> RetryAction,
{
    #[inline]
    fn classify(&self, result: &Result<T, E>) -> RetryAction {
        self(result)
    }
}

/// The default classifier: every `Err` is retried, every `Ok` returned.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryOnError;

impl<T, E> RetryClassifier<T, E> for RetryOnError {
    #[inline]
    fn classify(&self, result: &Result<T, E>) -> RetryAction {
        if result.is_ok() {
            RetryAction::Return
        } else {
            RetryAction::Retry
        }
    }
}

/// The tower retry layer's default classifier over `Result<T, BoxError>`:
/// a [`CircuitOpen`] inside the error becomes [`RetryAction::CircuitOpen`],
/// a [`RetryAfterHint`] becomes [`RetryAction::RetryAfter`], any other
/// error is retried; `Ok` is returned.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryBoxError;

impl<T> RetryClassifier<T, BoxError> for RetryBoxError {
    fn classify(&self, result: &Result<T, BoxError>) -> RetryAction {
        match result {
            Ok(_) => RetryAction::Return,
            Err(e) => RetryAction::for_error(e.as_ref()),
        }
    }
}

impl RetryAction {
    /// The action for an error that may be (or wrap, via `source()`) a
    /// [`CircuitOpen`] or a [`RetryAfterHint`]; otherwise [`RetryAction::Retry`].
    pub fn for_error(err: &(dyn std::error::Error + 'static)) -> Self {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
        let mut depth = 0;
        while let Some(e) = cur {
            if let Some(open) = e.downcast_ref::<CircuitOpen>() {
                return Self::CircuitOpen(*open);
            }
            if let Some(h) = e.downcast_ref::<RetryAfterHint>() {
                return Self::RetryAfter(h.0);
            }
            depth += 1;
            if depth > 16 {
                break;
            }
            cur = e.source();
        }
        Self::Retry
    }
}

/// An error carrying a server's retry-after hint, for services whose errors
/// travel as [`BoxError`]: return it (or wrap it as a `source()`) and the
/// default [`RetryBoxError`] classifier waits at least that long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfterHint(pub Duration);

impl fmt::Display for RetryAfterHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "server asked to retry after {:.3} s",
            self.0.as_secs_f64()
        )
    }
}

impl std::error::Error for RetryAfterHint {}

/// Parses an HTTP `Retry-After` value: delta-seconds (`"120"`) or an
/// HTTP-date (`"Wed, 21 Oct 2015 07:28:00 GMT"`, via `httpdate`), relative to
/// `now`. A date in the past gives zero. The result is never shorter than the
/// header says (HTTP-dates have whole-second resolution and are rounded up).
///
/// # Errors
/// [`Error::InvalidRetryAfter`] for anything else (negative or fractional
/// seconds, malformed dates).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Result<Duration, Error> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return v
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| Error::InvalidRetryAfter {
                value: value.to_owned(),
            });
    }
    let at = httpdate::parse_http_date(v).map_err(|_| Error::InvalidRetryAfter {
        value: value.to_owned(),
    })?;
    Ok(match at.duration_since(now) {
        Ok(d) if d.subsec_nanos() > 0 => Duration::from_secs(d.as_secs() + 1),
        Ok(d) => d,
        Err(_) => Duration::ZERO,
    })
}

/// What retry does when a breaker rejects a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnCircuitOpen {
    /// Sleep until the breaker's probe time (or the backoff delay if that is
    /// unknown) without using an attempt; give up if that is past the deadline.
    /// At most `max_attempts` rejections are waited out per call. The sleep
    /// is a `tokio::time` sleep: **under tokio's paused clock it ends the
    /// breaker's open duration only if the breaker measures time with a
    /// [`TokioClock`](crate::TokioClock)**. Breakers default to the real-time
    /// [`MonotonicClock`](crate::MonotonicClock), which the paused clock does
    /// not move: such a breaker rejects every wait and retry gives up with
    /// [`StopReason::CircuitOpen`] once `max_attempts` rejections have been
    /// waited out.
    #[default]
    Wait,
    /// Stop at once with [`StopReason::CircuitOpen`].
    GiveUp,
}

/// Builds a [`Retry`]. Defaults: 3 attempts (the first call included),
/// [`Backoff::default`] (100 ms base, 10 s cap, full jitter), no deadline, no
/// budget, [`OnCircuitOpen::Wait`], retry-after hints up to 60 s, an RNG
/// seeded from the OS.
#[derive(Debug, Clone)]
#[must_use = "call .build() to obtain a retry policy"]
pub struct RetryBuilder {
    max_attempts: u32,
    backoff: Backoff,
    deadline: Option<Duration>,
    budget: Option<RetryBudget>,
    on_open: OnCircuitOpen,
    max_retry_after: Duration,
    seed: Option<u64>,
}

impl RetryBuilder {
    /// Attempts in total, the first included (1 = no retry). Default 3.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// The backoff between attempts.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// An overall deadline from the first attempt's start: no wait that
    /// would end after it is begun, and an attempt still running at it is
    /// dropped ([`RetryError::DeadlineExceeded`]).
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = Some(d);
        self
    }

    /// Draw retries from `budget` (shared with whoever else holds a clone).
    /// A call that succeeds (ends with an `Ok` the classifier returns)
    /// deposits once; failed, rejected and non-retryable calls deposit
    /// nothing, so during an outage retries are limited to the budget's
    /// per-second floor.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// What to do on a breaker rejection (default [`OnCircuitOpen::Wait`]).
    pub fn on_circuit_open(mut self, on: OnCircuitOpen) -> Self {
        self.on_open = on;
        self
    }

    /// The longest retry-after hint to honour (default 60 s). A longer hint
    /// stops retrying ([`StopReason::RetryAfterTooLong`]) rather than retry
    /// before the server asked.
    pub fn max_retry_after(mut self, d: Duration) -> Self {
        self.max_retry_after = d;
        self
    }

    /// Seeds the jitter RNG, for reproducible delays.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for zero `max_attempts` or a zero backoff base.
    pub fn build(self) -> Result<Retry, Error> {
        if self.max_attempts == 0 {
            return Err(Error::config(
                "max_attempts",
                "must be at least 1 (1 means no retries)",
            ));
        }
        if self.backoff.base().is_zero() {
            return Err(Error::config("backoff", "base delay must be non-zero"));
        }
        let rng = match self.seed {
            Some(s) => SmallRng::seed_from_u64(s),
            None => SmallRng::from_os_rng(),
        };
        Ok(Retry {
            inner: Arc::new(Inner {
                max_attempts: self.max_attempts,
                backoff: self.backoff,
                deadline: self.deadline,
                budget: self.budget,
                on_open: self.on_open,
                max_retry_after: self.max_retry_after,
                rng: Mutex::new(rng),
            }),
        })
    }
}

#[derive(Debug)]
struct Inner {
    max_attempts: u32,
    backoff: Backoff,
    deadline: Option<Duration>,
    budget: Option<RetryBudget>,
    on_open: OnCircuitOpen,
    max_retry_after: Duration,
    rng: Mutex<SmallRng>,
}

/// A retry policy. Cheap to clone (one `Arc`); clones share the RNG and budget.
///
/// Sleeps with `tokio::time`, so it is deterministic under tokio's paused
/// clock and a [`seed`](RetryBuilder::seed). A breaker it waits out must
/// then be on a [`TokioClock`](crate::TokioClock): see
/// [`run_through`](Self::run_through). A first-attempt success costs one
/// budget deposit (if a budget is set) and nothing else: no allocation, no
/// lock, no timer. Each retry locks the RNG once to draw its delay.
#[derive(Debug, Clone)]
pub struct Retry {
    inner: Arc<Inner>,
}

/// The decision after one attempt (shared by the closure API and the tower service).
#[derive(Debug)]
pub(crate) enum Next {
    Stop(StopReason),
    Sleep(Duration),
}

/// Per-call retry state (shared by the closure API and the tower service).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Progress {
    pub(crate) attempts: u32,
    retries: u32,
    rejections: u32,
    previous: Duration,
}

impl Progress {
    pub(crate) fn started(&mut self) {
        self.attempts += 1;
    }
}

impl Retry {
    /// A builder with the defaults listed on [`RetryBuilder`].
    pub fn builder() -> RetryBuilder {
        RetryBuilder {
            max_attempts: 3,
            backoff: Backoff::default(),
            deadline: None,
            budget: None,
            on_open: OnCircuitOpen::Wait,
            max_retry_after: Duration::from_secs(60),
            seed: None,
        }
    }

    /// The overall deadline, if any.
    pub fn deadline(&self) -> Option<Duration> {
        self.inner.deadline
    }

    /// Runs `op` until it succeeds, retrying every `Err` ([`RetryOnError`]).
    ///
    /// # Errors
    /// [`RetryError::Failed`] with the last error and why retrying stopped,
    /// or [`RetryError::DeadlineExceeded`].
    pub async fn run<F, Fut, T, E>(&self, op: F) -> Result<T, RetryError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run_with(&RetryOnError, op).await
    }

    /// Runs `op`, asking `classifier` after each attempt whether to retry.
    /// When retrying stops on an `Ok` the classifier wanted retried (attempts,
    /// budget or deadline ran out), that last `Ok` is returned.
    ///
    /// # Errors
    /// As [`run`](Self::run).
    pub async fn run_with<C, F, Fut, T, E>(
        &self,
        classifier: &C,
        mut op: F,
    ) -> Result<T, RetryError<E>>
    where
        C: RetryClassifier<T, E> + ?Sized,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run_core(|| {
            let fut = op();
            async move {
                let r = fut.await;
                let a = classifier.classify(&r);
                (r, a)
            }
        })
        .await
    }

    /// Runs `op` through `breaker`, retrying as `classifier` says. One
    /// classifier serves both: a result it wants retried counts as a breaker
    /// failure; an `Ok` it returns as a success; an `Err` it returns (not
    /// retryable, e.g. a bad request) as ignored. A rejection waits for the
    /// breaker's probe time or gives up ([`OnCircuitOpen`]) without using an
    /// attempt.
    ///
    /// **Under tokio's paused clock (`start_paused = true`), waiting for the
    /// probe time works only if `breaker` was built with
    /// `.clock(TokioClock::new())`.** The wait is a `tokio::time` sleep; a
    /// breaker on its default [`MonotonicClock`](crate::MonotonicClock)
    /// measures real time, which the paused clock's auto-advance does not
    /// move, so the breaker is still open when the sleep ends: every wait is
    /// rejected again and, once `max_attempts` rejections have been waited
    /// out, the call fails with [`StopReason::CircuitOpen`] without another
    /// attempt. On a running (unpaused) clock both clocks agree and any clock
    /// works.
    ///
    /// # Errors
    /// As [`run`](Self::run); rejections that ended retrying appear as
    /// [`BreakerError::Open`].
    pub async fn run_through<C, F, Fut, T, E>(
        &self,
        breaker: &CircuitBreaker,
        classifier: &C,
        mut op: F,
    ) -> Result<T, RetryError<BreakerError<E>>>
    where
        C: RetryClassifier<T, E> + ?Sized,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run_core(|| {
            let started = breaker.try_acquire().map(|permit| (permit, op()));
            async move {
                let (permit, fut) = match started {
                    Ok(x) => x,
                    Err(open) => {
                        return (
                            Err(BreakerError::Open(open)),
                            RetryAction::CircuitOpen(open),
                        );
                    }
                };
                let r = fut.await;
                let a = classifier.classify(&r);
                permit.record(match (&a, r.is_ok()) {
                    (RetryAction::Return, true) => Outcome::Success,
                    (RetryAction::Return, false) => Outcome::Ignored,
                    (RetryAction::CircuitOpen(_), _) => Outcome::Ignored,
                    _ => Outcome::Failure,
                });
                (r.map_err(BreakerError::Inner), a)
            }
        })
        .await
    }

    async fn run_core<F, Fut, T, E>(&self, mut attempt: F) -> Result<T, RetryError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = (Result<T, E>, RetryAction)>,
    {
        // The clock is read only when a deadline needs it.
        let start = self
            .inner
            .deadline
            .map(|d| (tokio::time::Instant::now(), d));
        let mut p = Progress::default();
        loop {
            p.started();
            let (result, action) = match start {
                None => attempt().await,
                Some((t0, d)) => match tokio::time::timeout_at(t0 + d, attempt()).await {
                    Ok(x) => x,
                    Err(_) => {
                        tracing::debug!(
                            attempts = p.attempts,
                            "retry deadline exceeded during an attempt"
                        );
                        return Err(RetryError::DeadlineExceeded {
                            attempts: p.attempts,
                        });
                    }
                },
            };
            let elapsed = start.map_or(Duration::ZERO, |(t0, _)| t0.elapsed());
            match self.next(&mut p, action, result.is_ok(), elapsed) {
                Next::Stop(reason) => {
                    return result.map_err(|error| RetryError::Failed {
                        error,
                        attempts: p.attempts,
                        reason,
                    });
                }
                Next::Sleep(d) => tokio::time::sleep(d).await,
            }
        }
    }

    /// Decides what follows an attempt whose result was `ok` (`Result::is_ok`)
    /// and classified as `action`. Deposits into the budget when the call
    /// succeeds (an `Ok` it returns: once per logical call, since that ends
    /// it), withdraws for a retry. A failed, rejected or non-retryable attempt
    /// deposits nothing, so under a total outage only the budget's per-second
    /// floor pays for retries.
    pub(crate) fn next(
        &self,
        p: &mut Progress,
        action: RetryAction,
        ok: bool,
        elapsed: Duration,
    ) -> Next {
        let cfg = &*self.inner;
        let (hint, open) = match action {
            RetryAction::Return => {
                if ok && let Some(b) = &cfg.budget {
                    b.deposit();
                }
                return Next::Stop(StopReason::NotRetryable);
            }
            RetryAction::Retry => (None, None),
            RetryAction::RetryAfter(h) => (Some(h), None),
            RetryAction::CircuitOpen(o) => (None, Some(o)),
        };
        let mut wait;
        if let Some(open) = open {
            // A rejection is not an attempt.
            p.attempts -= 1;
            p.rejections += 1;
            if cfg.on_open == OnCircuitOpen::GiveUp || p.rejections > cfg.max_attempts {
                tracing::debug!(rejections = p.rejections, "retry gives up: circuit open");
                return Next::Stop(StopReason::CircuitOpen);
            }
            wait = match open.retry_after() {
                Some(d) => d,
                None => self.backoff_delay(p),
            };
        } else {
            if p.attempts >= cfg.max_attempts {
                return Next::Stop(StopReason::AttemptsExhausted);
            }
            wait = self.backoff_delay(p);
            if let Some(h) = hint {
                if h > cfg.max_retry_after {
                    tracing::debug!(
                        hint_ms = h.as_millis() as u64,
                        "retry-after hint too long; giving up"
                    );
                    return Next::Stop(StopReason::RetryAfterTooLong);
                }
                wait = wait.max(h);
            }
        }
        if let Some(deadline) = cfg.deadline
            && elapsed.saturating_add(wait) >= deadline
        {
            tracing::debug!(
                attempts = p.attempts,
                "retry stops: next wait passes the deadline"
            );
            return Next::Stop(if open.is_some() {
                StopReason::CircuitOpen
            } else {
                StopReason::Deadline
            });
        }
        if open.is_none()
            && let Some(b) = &cfg.budget
            && !b.try_withdraw()
        {
            tracing::debug!(attempts = p.attempts, "retry budget exhausted");
            return Next::Stop(StopReason::BudgetExhausted);
        }
        tracing::debug!(
            attempt = p.attempts,
            wait_ms = wait.as_millis() as u64,
            circuit_open = open.is_some(),
            "retrying"
        );
        Next::Sleep(wait)
    }

    fn backoff_delay(&self, p: &mut Progress) -> Duration {
        let d = {
            let mut rng = self.inner.rng.lock();
            self.inner.backoff.delay(p.retries, p.previous, &mut *rng)
        };
        p.retries += 1;
        p.previous = d;
        d
    }
}
