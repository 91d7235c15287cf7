//! The consumer engine: subscription with re-subscription, bounded
//! concurrency, in-process retry with backoff, handler timeout, panic
//! isolation, duplicate filter, dead-lettering with reasons, graceful drain.
//!
//! Per-message cost: a delivery is handled inline in the consumer task as
//! far as it goes without waiting: each handler future and the ack are
//! polled once at once, and only what is still pending is boxed and kept
//! (with its handler or settle timeout, whose timer is set up only then).
//! So a handler that finishes on its first poll costs no task, no timer
//! and no clock read. Deliveries already received are taken in batches,
//! one wake-up for many.

use crate::bus::{Bus, Context};
use crate::dedup::Dedup;
use crate::envelope::{
    Envelope, HEADER_DEAD_LETTER_ATTEMPTS, HEADER_DEAD_LETTER_HANDLER, HEADER_DEAD_LETTER_QUEUE,
    HEADER_DEAD_LETTER_REASON, HEADER_EVENT_TYPE, HEADER_ORIGINAL_ROUTING_KEY, Message, Wire,
    validate_json,
};
use crate::error::{Error, Result};
use crate::router::{HandlerError, Route, Router, UnknownEventPolicy};
use crate::transport::{Acker, Delivery, DeliveryStream, SubscribeOptions, Transport};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info_span, warn};

/// In-process retry with exponential backoff, per handler.
///
/// Attempt `n` (from 1) that fails waits `min(initial × multiplier^(n-1), max)`
/// before attempt `n + 1`; after `max_attempts` the message is dead-lettered.
/// Retries hold the delivery (and a concurrency slot), so keep the total
/// short: long delays belong in a delayed-redelivery queue, not here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total (1 = no retry). At least 1.
    pub max_attempts: u32,
    /// Wait after the first failure.
    pub initial_backoff: Duration,
    /// Upper bound of a wait.
    pub max_backoff: Duration,
    /// Growth factor per attempt.
    pub multiplier: u32,
}

impl Default for RetryPolicy {
    /// 3 attempts, 100 ms then 200 ms.
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            multiplier: 2,
        }
    }
}

impl RetryPolicy {
    /// No retry: one attempt.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }
    /// The wait after failed attempt `attempt` (from 1).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = self.multiplier.saturating_pow(attempt.saturating_sub(1));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// Counters of one consumer (monotonic since start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerStats {
    /// Deliveries received.
    pub delivered: u64,
    /// Deliveries acknowledged after every handler succeeded (or skipped).
    pub acked: u64,
    /// Deliveries dead-lettered.
    pub dead_lettered: u64,
    /// Handler retries.
    pub retries: u64,
    /// Handler panics caught.
    pub panics: u64,
    /// Duplicates skipped by the duplicate filter.
    pub duplicates: u64,
    /// Unknown event types acked under [`UnknownEventPolicy::AckAndWarn`].
    pub unknown_acked: u64,
    /// Subscriptions (re)established.
    pub subscriptions: u64,
    /// Settles (ack / dead-letter) that failed, e.g. because the connection
    /// dropped; the broker redelivers those messages.
    pub settle_errors: u64,
    /// Dead letters the broker did not take ([`Error::DeadLetterNotStored`]:
    /// no queue bound for the dead-letter routing key, a nack, a confirm
    /// timeout). The original was kept for redelivery (requeued, or left
    /// pending on Redis), not acknowledged, and comes back;
    /// a value that keeps growing means the dead-letter topology is broken.
    pub dead_letter_failures: u64,
}

#[derive(Default)]
struct Stats {
    delivered: AtomicU64,
    acked: AtomicU64,
    dead_lettered: AtomicU64,
    retries: AtomicU64,
    panics: AtomicU64,
    duplicates: AtomicU64,
    unknown_acked: AtomicU64,
    subscriptions: AtomicU64,
    settle_errors: AtomicU64,
    dead_letter_failures: AtomicU64,
}

impl Stats {
    fn snapshot(&self) -> ConsumerStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ConsumerStats {
            delivered: l(&self.delivered),
            acked: l(&self.acked),
            dead_lettered: l(&self.dead_lettered),
            retries: l(&self.retries),
            panics: l(&self.panics),
            duplicates: l(&self.duplicates),
            unknown_acked: l(&self.unknown_acked),
            subscriptions: l(&self.subscriptions),
            settle_errors: l(&self.settle_errors),
            dead_letter_failures: l(&self.dead_letter_failures),
        }
    }
}

fn inc(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// Configures and starts a consumer; from [`Bus::consumer`].
#[must_use]
pub struct ConsumerBuilder {
    bus: Bus,
    queue: String,
    router: Router,
    prefetch: u16,
    concurrency: usize,
    retry: RetryPolicy,
    handler_timeout: Option<Duration>,
    dedup: Option<Arc<dyn Dedup>>,
    consumer_name: Option<String>,
    resubscribe_initial: Duration,
    resubscribe_max: Duration,
    subscribe_timeout: Duration,
    /// `None`: derived from the backend's [`Transport::settle_bound`].
    settle_timeout: Option<Duration>,
}

/// The settle timeout of a consumer without an explicit one: 30 s, or the
/// backend's own bound of a settle plus [`SETTLE_MARGIN`] when that is longer.
const DEFAULT_SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How much longer than the backend's own bound a derived settle timeout is.
const SETTLE_MARGIN: Duration = Duration::from_secs(10);

fn default_settle_timeout(bound: Option<Duration>) -> Duration {
    bound.map_or(DEFAULT_SETTLE_TIMEOUT, |b| {
        DEFAULT_SETTLE_TIMEOUT.max(b.saturating_add(SETTLE_MARGIN))
    })
}

impl std::fmt::Debug for ConsumerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerBuilder")
            .field("queue", &self.queue)
            .field("prefetch", &self.prefetch)
            .field("concurrency", &self.concurrency)
            .field("retry", &self.retry)
            .field("handler_timeout", &self.handler_timeout)
            .finish_non_exhaustive()
    }
}

impl ConsumerBuilder {
    pub(crate) fn new(bus: Bus, queue: &str, router: Router) -> Self {
        Self {
            bus,
            queue: queue.to_owned(),
            router,
            prefetch: 100,
            concurrency: 16,
            retry: RetryPolicy::default(),
            handler_timeout: Some(Duration::from_secs(30)),
            dedup: None,
            consumer_name: None,
            resubscribe_initial: Duration::from_millis(100),
            resubscribe_max: Duration::from_secs(5),
            subscribe_timeout: Duration::from_secs(30),
            settle_timeout: None,
        }
    }

    /// Unacknowledged deliveries the broker may push (default 100; 100–300
    /// is RabbitMQ's advice). Bounds the messages held in memory.
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }
    /// Messages handled at the same time (default 16; 1 keeps order).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }
    /// Retry policy per handler (default [`RetryPolicy::default`]).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }
    /// Timeout of one handler attempt (default 30 s; a timeout is retryable).
    /// The timer starts when the attempt first has to wait, so an attempt
    /// that finishes on its first poll never sets one up.
    pub fn handler_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.handler_timeout = timeout;
        self
    }
    /// Skips messages whose id `dedup` has seen; marks ids after success.
    pub fn dedup(mut self, dedup: impl Dedup) -> Self {
        self.dedup = Some(Arc::new(dedup));
        self
    }
    /// Consumer name (AMQP consumer tag prefix, Redis consumer name).
    pub fn consumer_name(mut self, name: impl Into<String>) -> Self {
        self.consumer_name = Some(name.into());
        self
    }
    /// Backoff between re-subscription attempts after a connection loss
    /// (default 100 ms doubling to 5 s).
    pub fn resubscribe_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.resubscribe_initial = initial;
        self.resubscribe_max = max.max(initial);
        self
    }

    /// Longest wait for one (re-)subscription, connecting included (default
    /// 30 s). A subscribe that hangs on a half-dead connection is abandoned
    /// after this and retried with the re-subscription backoff, so a broker
    /// restart can never leave the consumer waiting forever.
    pub fn subscribe_timeout(mut self, timeout: Duration) -> Self {
        self.subscribe_timeout = timeout.max(Duration::from_millis(1));
        self
    }
    /// Longest wait for one settle (ack, requeue, dead-letter publish and
    /// ack). A settle that does not finish in time counts in
    /// [`ConsumerStats::settle_errors`] and frees its concurrency slot; the
    /// broker redelivers the message when the connection closes. The timer
    /// starts when the settle first has to wait (an in-memory ack never does).
    ///
    /// Default: 30 s, or — when the backend bounds a settle by timeouts of
    /// its own ([`Transport::settle_bound`]) and that bound is longer — the
    /// bound plus 10 s. On RabbitMQ the bound is `confirm_timeout +
    /// dead_letter_retry_delay` plus 1 s (32 s with the RabbitMQ defaults,
    /// so the default here is 42 s): a dead letter whose confirm times out
    /// has its original requeued by the backend, instead of being cut off by
    /// this timeout and left unacknowledged until its channel closes. Set
    /// explicitly, keep it above that bound; a shorter value is logged at
    /// `warn` when the consumer starts.
    pub fn settle_timeout(mut self, timeout: Duration) -> Self {
        self.settle_timeout = Some(timeout.max(Duration::from_millis(1)));
        self
    }

    /// Checks the queue and the router (strict mode) and starts consuming in
    /// a spawned task. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// [`Error::NotDeclared`] when the queue is not in the bus topology;
    /// [`Error::MissingHandler`] in strict mode.
    pub fn start(self) -> Result<ConsumerHandle> {
        let spec = self.bus.topology().require_queue(&self.queue)?;
        self.router.check(spec)?;
        let bound = self.bus.transport().settle_bound();
        let settle_timeout = match self.settle_timeout {
            None => default_settle_timeout(bound),
            Some(t) => {
                if let Some(b) = bound.filter(|b| t <= *b) {
                    warn!(
                        queue = %self.queue,
                        settle_timeout = ?t,
                        backend_bound = ?b,
                        "settle_timeout is not above the backend's own bound of a settle: \
                         a dead letter that waits for its confirm may be abandoned, leaving \
                         its original unacknowledged until the channel closes"
                    );
                }
                t
            }
        };
        let (stop_tx, stop_rx) = watch::channel(None);
        let stats = Arc::new(Stats::default());
        let shared = Arc::new(Shared {
            options: SubscribeOptions {
                prefetch: self.prefetch,
                consumer_name: self
                    .consumer_name
                    .unwrap_or_else(|| SubscribeOptions::default().consumer_name),
            },
            transport: self.bus.transport().clone(),
            bus: self.bus,
            queue: self.queue.as_str().into(),
            router: self.router,
            retry: self.retry,
            handler_timeout: self.handler_timeout,
            dedup: self.dedup,
            stats: stats.clone(),
            concurrency: self.concurrency,
            resubscribe_initial: self.resubscribe_initial,
            resubscribe_max: self.resubscribe_max,
            subscribe_timeout: self.subscribe_timeout,
            settle_timeout,
        });
        let task = tokio::spawn(run(shared, stop_rx));
        Ok(ConsumerHandle {
            stop: stop_tx,
            task: Some(task),
            stats,
        })
    }
}

/// A running consumer. Dropping it stops the consumer without waiting
/// (unsettled messages are redelivered); [`ConsumerHandle::shutdown`]
/// drains gracefully.
pub struct ConsumerHandle {
    stop: watch::Sender<Option<Duration>>,
    task: Option<JoinHandle<()>>,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for ConsumerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerHandle")
            .field("stats", &self.stats.snapshot())
            .finish()
    }
}

impl ConsumerHandle {
    /// Counters so far.
    pub fn stats(&self) -> ConsumerStats {
        self.stats.snapshot()
    }

    /// Graceful drain: stops taking deliveries (cancels the subscription),
    /// lets in-flight handlers finish within `deadline`, then returns the
    /// final counters. Messages still unsettled at the deadline are
    /// redelivered by the broker.
    ///
    /// # Errors
    /// [`Error::Closed`] when the consumer task panicked.
    pub async fn shutdown(mut self, deadline: Duration) -> Result<ConsumerStats> {
        let _ = self.stop.send(Some(deadline));
        if let Some(task) = self.task.take() {
            task.await.map_err(|_| Error::Closed)?;
        }
        Ok(self.stats.snapshot())
    }
}

impl Drop for ConsumerHandle {
    fn drop(&mut self) {
        if self.task.is_some() {
            let _ = self.stop.send(Some(Duration::ZERO));
        }
    }
}

struct Shared {
    bus: Bus,
    transport: Arc<dyn Transport>,
    queue: Arc<str>,
    router: Router,
    retry: RetryPolicy,
    handler_timeout: Option<Duration>,
    dedup: Option<Arc<dyn Dedup>>,
    stats: Arc<Stats>,
    options: SubscribeOptions,
    concurrency: usize,
    resubscribe_initial: Duration,
    resubscribe_max: Duration,
    subscribe_timeout: Duration,
    settle_timeout: Duration,
}

enum State<'a> {
    Subscribing(BoxFuture<'a, Result<Box<dyn DeliveryStream>>>),
    Waiting(std::pin::Pin<Box<tokio::time::Sleep>>),
    Consuming(Box<dyn DeliveryStream>),
}

enum Step {
    Stop,
    Nothing,
    Subscribed(Box<dyn DeliveryStream>),
    Lost,
    Resubscribe,
}

async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<Option<Duration>>) {
    let transport = shared.transport.clone();
    let queue = shared.queue.clone();
    let subscribe = || -> BoxFuture<'_, Result<Box<dyn DeliveryStream>>> {
        let fut = transport.subscribe(&queue, shared.options.clone());
        let after = shared.subscribe_timeout;
        let queue = &queue;
        Box::pin(async move {
            tokio::time::timeout(after, fut).await.unwrap_or_else(|_| {
                Err(Error::TimedOut {
                    operation: format!("subscribe {queue}"),
                    after,
                })
            })
        })
    };
    let mut inflight: FuturesUnordered<BoxFuture<'static, ()>> = FuturesUnordered::new();
    let mut backoff = shared.resubscribe_initial;
    let mut state = State::Subscribing(subscribe());
    loop {
        if stop.borrow().is_some() {
            break;
        }
        let step = match &mut state {
            State::Consuming(sub) => tokio::select! {
                biased;
                _ = stop.changed() => Step::Stop,
                Some(()) = inflight.next(), if !inflight.is_empty() => {
                    drain_ready(&mut inflight).await;
                    Step::Nothing
                }
                d = sub.next(), if inflight.len() < shared.concurrency => match d {
                    Some(Ok(d)) => {
                        take(&shared, &mut inflight, d).await;
                        // Take what is already there without another round
                        // through select (one wake-up, many deliveries).
                        let mut step = Step::Nothing;
                        let mut taken = 1;
                        while inflight.len() < shared.concurrency && taken < BATCH {
                            // Yields to the runtime when this task used its budget.
                            tokio::task::coop::consume_budget().await;
                            match poll_now(sub.next()).await {
                                Poll::Pending => break,
                                Poll::Ready(Some(Ok(d))) => {
                                    take(&shared, &mut inflight, d).await;
                                    taken += 1;
                                }
                                Poll::Ready(Some(Err(e))) => {
                                    warn!(queue = %shared.queue, error = %e, "subscription lost; re-subscribing");
                                    step = Step::Lost;
                                    break;
                                }
                                Poll::Ready(None) => {
                                    warn!(queue = %shared.queue, "subscription ended by the broker; re-subscribing");
                                    step = Step::Lost;
                                    break;
                                }
                            }
                        }
                        step
                    }
                    Some(Err(e)) => {
                        warn!(queue = %shared.queue, error = %e, "subscription lost; re-subscribing");
                        Step::Lost
                    }
                    None => {
                        warn!(queue = %shared.queue, "subscription ended by the broker; re-subscribing");
                        Step::Lost
                    }
                },
            },
            State::Subscribing(fut) => tokio::select! {
                biased;
                _ = stop.changed() => Step::Stop,
                Some(()) = inflight.next(), if !inflight.is_empty() => {
                    drain_ready(&mut inflight).await;
                    Step::Nothing
                }
                r = fut => match r {
                    Ok(s) => Step::Subscribed(s),
                    Err(e) => {
                        warn!(queue = %shared.queue, error = %e, retry_in = ?backoff, "subscribe failed");
                        Step::Lost
                    }
                },
            },
            State::Waiting(sleep) => tokio::select! {
                biased;
                _ = stop.changed() => Step::Stop,
                Some(()) = inflight.next(), if !inflight.is_empty() => {
                    drain_ready(&mut inflight).await;
                    Step::Nothing
                }
                () = sleep.as_mut() => Step::Resubscribe,
            },
        };
        match step {
            Step::Stop => break,
            Step::Nothing => {}
            Step::Subscribed(s) => {
                inc(&shared.stats.subscriptions);
                debug!(queue = %shared.queue, "subscribed");
                backoff = shared.resubscribe_initial;
                state = State::Consuming(s);
            }
            Step::Lost => {
                state = State::Waiting(Box::pin(tokio::time::sleep(backoff)));
                backoff = (backoff * 2).min(shared.resubscribe_max);
            }
            Step::Resubscribe => state = State::Subscribing(subscribe()),
        }
    }
    // Graceful drain.
    if let State::Consuming(sub) = &mut state
        && let Err(e) = sub.cancel().await
    {
        debug!(queue = %shared.queue, error = %e, "cancel failed");
    }
    let deadline = stop.borrow().unwrap_or(Duration::ZERO);
    let drained =
        tokio::time::timeout(deadline, async { while inflight.next().await.is_some() {} }).await;
    if drained.is_err() {
        warn!(queue = %shared.queue, left = inflight.len(), "drain deadline passed; unsettled messages will be redelivered");
    }
    drop(inflight);
    drop(state);
}

/// Deliveries taken per wake-up before the loop looks at the stop signal again.
const BATCH: usize = 256;

/// Polls `fut` once with the task's context.
async fn poll_now<F: Future + Unpin>(mut fut: F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut fut).poll(cx))).await
}

/// Settles every in-flight message that is already done.
async fn drain_ready(inflight: &mut FuturesUnordered<BoxFuture<'static, ()>>) {
    std::future::poll_fn(|cx| {
        while let Poll::Ready(Some(())) = inflight.poll_next_unpin(cx) {}
        Poll::Ready(())
    })
    .await;
}

/// Handles `delivery` as far as it goes now; keeps the rest in `inflight`.
async fn take(
    shared: &Arc<Shared>,
    inflight: &mut FuturesUnordered<BoxFuture<'static, ()>>,
    delivery: Delivery,
) {
    let mut delivery = Some(delivery);
    let rest = std::future::poll_fn(|cx| {
        Poll::Ready(delivery.take().and_then(|d| dispatch(shared, d, cx)))
    })
    .await;
    if let Some(rest) = rest {
        inflight.push(rest);
    }
}

/// `fut`, bounded by `after` once it has to wait: it is polled once first,
/// and the timer (a clock read and a timer entry) is only set up when that
/// poll is pending. `None` when the time ran out.
async fn within<F: Future + Unpin>(after: Option<Duration>, mut fut: F) -> Option<F::Output> {
    if let Poll::Ready(v) = poll_now(&mut fut).await {
        return Some(v);
    }
    match after {
        Some(t) => tokio::time::timeout(t, fut).await.ok(),
        None => Some(fut.await),
    }
}

enum Attempt {
    Ok,
    Failed(String, bool),
    Panicked(String),
    TimedOut,
}

/// The first attempt of a handler, already started inline.
enum First {
    /// Its future is still pending.
    Pending(BoxFuture<'static, Result<(), HandlerError>>),
    /// It finished (or panicked) on its first poll.
    Done(Attempt),
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

fn outcome(result: std::thread::Result<Result<(), HandlerError>>) -> Attempt {
    match result {
        Ok(Ok(())) => Attempt::Ok,
        Ok(Err(e)) => Attempt::Failed(e.to_string(), e.is_permanent()),
        Err(p) => Attempt::Panicked(panic_message(&*p)),
    }
}

/// Calls the handler; a panic in the call itself is a finished attempt.
fn call(
    route: &Route,
    ctx: Context,
) -> std::result::Result<BoxFuture<'static, Result<(), HandlerError>>, Attempt> {
    std::panic::catch_unwind(AssertUnwindSafe(|| route.handler.call(ctx)))
        .map_err(|p| Attempt::Panicked(panic_message(&*p)))
}

/// Polls a handler future once, inline, with panics caught.
fn poll_first(
    fut: &mut BoxFuture<'static, Result<(), HandlerError>>,
    cx: &mut TaskContext<'_>,
) -> Poll<Attempt> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
        Ok(Poll::Pending) => Poll::Pending,
        Ok(Poll::Ready(r)) => Poll::Ready(outcome(Ok(r))),
        Err(p) => Poll::Ready(Attempt::Panicked(panic_message(&*p))),
    }
}

/// Awaits a started attempt under the handler timeout, panics caught.
async fn finish_attempt(
    shared: &Shared,
    fut: BoxFuture<'static, Result<(), HandlerError>>,
) -> Attempt {
    match within(shared.handler_timeout, AssertUnwindSafe(fut).catch_unwind()).await {
        Some(r) => outcome(r),
        None => Attempt::TimedOut,
    }
}

async fn attempt(shared: &Shared, route: &Route, ctx: Context) -> Attempt {
    match call(route, ctx) {
        Ok(fut) => finish_attempt(shared, fut).await,
        Err(a) => a,
    }
}

/// Runs one handler with retries, attempt 1 being `first` when it was
/// started already. Returns `None` on success, or the failure reason and
/// the attempts made.
async fn run_handler(
    shared: &Shared,
    route: &Route,
    ctx: &Context,
    mut first: Option<First>,
) -> Option<(String, u32)> {
    let max = shared.retry.max_attempts.max(1);
    for n in 1..=max {
        let result = match first.take() {
            Some(First::Done(a)) => a,
            Some(First::Pending(f)) => finish_attempt(shared, f).await,
            None => attempt(shared, route, ctx.clone()).await,
        };
        let (reason, retryable) = match result {
            Attempt::Ok => return None,
            Attempt::Panicked(m) => {
                inc(&shared.stats.panics);
                warn!(handler = %route.name, panic = %m, "handler panicked");
                (format!("handler-panicked: {m}"), false)
            }
            Attempt::TimedOut => ("handler-timeout".to_owned(), true),
            Attempt::Failed(m, permanent) => (format!("handler-failed: {m}"), !permanent),
        };
        if !retryable || n == max {
            return Some((reason, n));
        }
        inc(&shared.stats.retries);
        let wait = shared.retry.backoff(n);
        tracing::info!(handler = %route.name, attempt = n, %reason, retry_in = ?wait, "handler failed; retrying");
        tokio::time::sleep(wait).await;
    }
    Some(("handler-failed".to_owned(), max))
}

/// `fut` bounded by the settle timeout (from its first pending poll).
async fn settle_within(
    shared: &Shared,
    what: &str,
    fut: BoxFuture<'static, Result<()>>,
) -> Result<()> {
    let after = shared.settle_timeout;
    within(Some(after), fut).await.unwrap_or_else(|| {
        Err(Error::TimedOut {
            operation: format!("{what} on {}", shared.queue),
            after,
        })
    })
}

fn record_ack(shared: &Shared, result: Result<()>) {
    match result {
        Ok(()) => inc(&shared.stats.acked),
        Err(e) => {
            inc(&shared.stats.settle_errors);
            warn!(error = %e, "ack failed; the broker will redeliver");
        }
    }
}

async fn settle_ack(shared: &Shared, acker: Box<dyn Acker>) {
    record_ack(shared, settle_within(shared, "ack", acker.ack()).await);
}

async fn dead_letter(
    shared: &Shared,
    acker: Box<dyn Acker>,
    mut message: Message,
    reason: &str,
    handler: &str,
    attempts: u32,
) {
    warn!(%reason, %handler, attempts, "dead-lettering message");
    let h = std::sync::Arc::make_mut(&mut message.headers);
    h.insert(HEADER_DEAD_LETTER_REASON.into(), reason.to_owned());
    h.insert(HEADER_DEAD_LETTER_HANDLER.into(), handler.to_owned());
    h.insert(HEADER_DEAD_LETTER_ATTEMPTS.into(), attempts.to_string());
    h.insert(HEADER_DEAD_LETTER_QUEUE.into(), shared.queue.to_string());
    h.insert(
        HEADER_ORIGINAL_ROUTING_KEY.into(),
        message.routing_key.clone(),
    );
    match settle_within(shared, "dead-letter", acker.dead_letter(message)).await {
        Ok(()) => inc(&shared.stats.dead_lettered),
        Err(e @ Error::DeadLetterNotStored { .. }) => {
            inc(&shared.stats.dead_letter_failures);
            tracing::error!(error = %e, "dead letter not stored; the message comes back");
        }
        Err(e) => {
            inc(&shared.stats.settle_errors);
            warn!(error = %e, "dead-lettering failed; the broker will redeliver");
        }
    }
}

/// Dead-letters a message that is not a readable envelope, with the reason
/// `invalid-message: {error}`.
async fn dead_letter_invalid(
    shared: Arc<Shared>,
    acker: Box<dyn Acker>,
    message: Message,
    error: Error,
) {
    let reason = format!("invalid-message: {error}");
    dead_letter(&shared, acker, message, &reason, "-", 0).await
}

macro_rules! handle_span {
    ($shared:expr, $envelope:expr, $delivery_count:expr) => {
        // Fields are only formatted when a subscriber wants the span.
        info_span!(
            "bus.handle",
            queue = %$shared.queue,
            event_type = %$envelope.event_type(),
            message_id = %$envelope.message_id(),
            correlation_id = %$envelope.correlation_id(),
            delivery_count = $delivery_count,
        )
    };
}

/// The inline path: handles `delivery` as far as it goes without waiting
/// (the common case: every handler and the ack finish on their first poll)
/// and returns the rest as a future, or `None` when it is settled. Anything
/// unusual (duplicate filter, no handler, an unreadable message) takes the
/// general [`process`] path.
fn dispatch(
    shared: &Arc<Shared>,
    delivery: Delivery,
    cx: &mut TaskContext<'_>,
) -> Option<BoxFuture<'static, ()>> {
    inc(&shared.stats.delivered);
    let routes = match &shared.dedup {
        None => delivery
            .message
            .headers
            .get(HEADER_EVENT_TYPE)
            .and_then(|t| shared.router.routes(t)),
        Some(_) => None,
    };
    let Some(routes) = routes else {
        return Some(Box::pin(process(shared.clone(), delivery)));
    };
    // A first handler that parses the body checks it is JSON anyway.
    let checked_later = routes.first().is_some_and(|r| r.parses_body);
    let Delivery {
        message,
        redelivered,
        delivery_count,
        acker,
    } = delivery;
    // The `event_type` header is there (it found the routes), so this only
    // fails on a body that is not JSON, as `process` would.
    let (envelope, wire) = match Envelope::read_owned(message, !checked_later) {
        Ok(read) => read,
        Err((e, message)) => {
            return Some(Box::pin(dead_letter_invalid(
                shared.clone(),
                acker,
                message,
                e,
            )));
        }
    };
    let span = handle_span!(shared, envelope, delivery_count);
    let _entered = span.enter();
    let ctx = Context::new(
        envelope,
        shared.bus.clone(),
        shared.queue.clone(),
        redelivered,
        delivery_count,
    );
    for (i, route) in routes.iter().enumerate() {
        let first = match call(route, ctx.clone()) {
            Ok(mut fut) => match poll_first(&mut fut, cx) {
                Poll::Ready(Attempt::Ok) => continue,
                Poll::Ready(a) => First::Done(a),
                Poll::Pending => First::Pending(fut),
            },
            Err(a) => First::Done(a),
        };
        // The typed first handler failed at once: if the body is not JSON,
        // its decode failed before any user code ran.
        if i == 0
            && checked_later
            && matches!(first, First::Done(_))
            && let Err(e) = validate_json(ctx.envelope().payload())
        {
            let message = wire.into_message(ctx.envelope());
            let rest = dead_letter_invalid(shared.clone(), acker, message, e);
            return Some(Box::pin(rest.instrument(span.clone())));
        }
        let rest = resume(shared.clone(), ctx, wire, acker, i, Some(first));
        return Some(Box::pin(rest.instrument(span.clone())));
    }
    let mut ack = acker.ack();
    match ack.as_mut().poll(cx) {
        Poll::Ready(r) => {
            record_ack(shared, r);
            None
        }
        Poll::Pending => {
            let shared = shared.clone();
            Some(Box::pin(
                async move { record_ack(&shared, settle_within(&shared, "ack", ack).await) }
                    .instrument(span.clone()),
            ))
        }
    }
}

/// Runs the handlers from `start` on (attempt 1 of `start` being `first`
/// when given), then acknowledges or dead-letters.
async fn resume(
    shared: Arc<Shared>,
    ctx: Context,
    wire: Wire,
    acker: Box<dyn Acker>,
    start: usize,
    mut first: Option<First>,
) {
    let routes = shared
        .router
        .routes(ctx.envelope().event_type())
        .unwrap_or_default();
    let mut failure: Option<(String, Vec<&str>, u32)> = None;
    for route in routes.iter().skip(start) {
        if let Some((reason, attempts)) = run_handler(&shared, route, &ctx, first.take()).await {
            match &mut failure {
                None => failure = Some((reason, vec![&*route.name], attempts)),
                Some((_, names, a)) => {
                    names.push(&route.name);
                    *a = (*a).max(attempts);
                }
            }
        }
    }
    match failure {
        None => {
            if let Some(dedup) = &shared.dedup
                && let Err(e) = dedup.mark(ctx.envelope().message_id()).await
            {
                warn!(error = %e, "duplicate filter could not record the message id");
            }
            settle_ack(&shared, acker).await;
        }
        Some((reason, names, attempts)) => {
            let message = wire.into_message(ctx.envelope());
            dead_letter(&shared, acker, message, &reason, &names.join(","), attempts).await
        }
    }
}

/// The general path: every check, every step awaited.
async fn process(shared: Arc<Shared>, delivery: Delivery) {
    let Delivery {
        message,
        redelivered,
        delivery_count,
        acker,
    } = delivery;
    let (envelope, wire) = match Envelope::read_owned(message, true) {
        Ok(read) => read,
        Err((e, message)) => return dead_letter_invalid(shared, acker, message, e).await,
    };
    let span = handle_span!(shared, envelope, delivery_count);
    handle(
        shared.clone(),
        envelope,
        wire,
        redelivered,
        delivery_count,
        acker,
    )
    .instrument(span)
    .await
}

async fn handle(
    shared: Arc<Shared>,
    envelope: Envelope,
    wire: Wire,
    redelivered: bool,
    delivery_count: u32,
    acker: Box<dyn Acker>,
) {
    if let Some(dedup) = &shared.dedup {
        match dedup.seen(envelope.message_id()).await {
            Ok(true) => {
                debug!("duplicate message id; acknowledging without handling");
                inc(&shared.stats.duplicates);
                return settle_ack(&shared, acker).await;
            }
            Ok(false) => {}
            Err(e) => warn!(error = %e, "duplicate filter unavailable; handling anyway"),
        }
    }
    if shared.router.routes(envelope.event_type()).is_none() {
        return match shared.router.unknown_policy() {
            UnknownEventPolicy::AckAndWarn => {
                warn!("no handler for event type; acknowledging (policy AckAndWarn)");
                inc(&shared.stats.unknown_acked);
                settle_ack(&shared, acker).await
            }
            _ => {
                let reason = format!("unknown-event-type: {}", envelope.event_type());
                let message = wire.into_message(&envelope);
                dead_letter(&shared, acker, message, &reason, "-", 0).await
            }
        };
    }
    let ctx = Context::new(
        envelope,
        shared.bus.clone(),
        shared.queue.clone(),
        redelivered,
        delivery_count,
    );
    resume(shared, ctx, wire, acker, 0, None).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let p = RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
            multiplier: 2,
        };
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(2), Duration::from_millis(200));
        assert_eq!(p.backoff(3), Duration::from_millis(300));
        assert_eq!(p.backoff(40), Duration::from_millis(300));
    }

    #[test]
    fn default_settle_timeout_is_above_the_backends_bound() {
        let s = Duration::from_secs;
        assert_eq!(default_settle_timeout(None), s(30));
        assert_eq!(default_settle_timeout(Some(s(1))), s(30));
        // RabbitMQ defaults: confirm 30 s + retry delay 1 s + 1 s.
        assert_eq!(default_settle_timeout(Some(s(32))), s(42));
        assert_eq!(default_settle_timeout(Some(Duration::MAX)), Duration::MAX);
    }
}
