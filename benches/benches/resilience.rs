//! finsight-resilience next to the peers a user would otherwise pick:
//! failsafe (circuit breaker) and tower's `Retry` (retry).
//!
//! * `resilience/closed_passthrough`: one call through a closed breaker
//!   (consecutive-failure mode, 5 failures) around an immediately ready
//!   async operation, vs failsafe's future-aware breaker with the same
//!   policy. Target: ≤ 50 ns and not slower than failsafe.
//! * `resilience/open_rejection`: one call rejected by an open breaker (its
//!   60 s open duration not yet elapsed, so each rejection reads the clock:
//!   the default `MonotonicClock`, a time-stamp-counter read), vs failsafe
//!   in the same state. Target: ≤ 30 ns. Also measured on a `CoarseClock`
//!   (function `coarse-clock`): the clock read becomes one atomic load.
//! * `resilience/retry_first_success`: one call through a retry layer whose
//!   inner service succeeds at once: `RetryLayer` (3 attempts, exponential
//!   backoff, retry budget 10 s / 10 per s / 20 %) vs tower's `Retry` with a
//!   policy doing the same (3 attempts, `ExponentialBackoff`, `TpsBudget`
//!   with the same parameters, deposit on success). Target: ≤ tower.
//!
//! Every future is polled once with a no-op waker (they all complete on the
//! first poll), so no executor cost is measured.

use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use failsafe::futures::CircuitBreaker as _;
use finsight_resilience::{
    Backoff, BoxError, CircuitBreaker, CoarseClock, Jitter, OpenDuration, Retry, RetryBudget,
    RetryLayer,
};
use tower::retry::backoff::{
    Backoff as _, ExponentialBackoff, ExponentialBackoffMaker, MakeBackoff,
};
use tower::retry::budget::{Budget as _, TpsBudget};
use tower::util::rng::HasherRng;
use tower::{Layer, Service};

fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

fn failsafe_breaker() -> impl failsafe::futures::CircuitBreaker {
    let policy = failsafe::failure_policy::consecutive_failures(
        5,
        failsafe::backoff::constant(Duration::from_secs(60)),
    );
    failsafe::Config::new().failure_policy(policy).build()
}

fn ours() -> CircuitBreaker {
    CircuitBreaker::builder("bench")
        .consecutive_failures(5)
        .open_duration(OpenDuration::Fixed(Duration::from_secs(60)))
        .build()
        .unwrap()
}

fn closed_passthrough(c: &mut Criterion) {
    let breaker = ours();
    let fs = failsafe_breaker();
    let mut g = c.benchmark_group("resilience/closed_passthrough");
    g.bench_function("finsight", |b| {
        b.iter(|| block_on(breaker.call(|| ready(Ok::<u64, ()>(black_box(1))))))
    });
    g.bench_function("peer:failsafe", |b| {
        b.iter(|| block_on(fs.call(ready(Ok::<u64, ()>(black_box(1))))))
    });
    g.finish();
    assert_eq!(breaker.metrics().failures, 0);
}

fn open_rejection(c: &mut Criterion) {
    let breaker = ours();
    let fs = failsafe_breaker();
    for _ in 0..5 {
        let _ = block_on(breaker.call(|| ready(Err::<u64, ()>(()))));
        let _ = block_on(fs.call(ready(Err::<u64, ()>(()))));
    }
    assert!(block_on(breaker.call(|| ready(Ok::<u64, ()>(1)))).is_err());
    assert!(matches!(
        block_on(fs.call(ready(Ok::<u64, ()>(1)))),
        Err(failsafe::Error::Rejected)
    ));
    // The same breaker on a CoarseClock (one atomic load per read, ticked
    // every 1 ms by a task on a one-worker runtime).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap();
    let coarse = {
        let _entered = rt.enter();
        CircuitBreaker::builder("bench-coarse")
            .consecutive_failures(5)
            .open_duration(OpenDuration::Fixed(Duration::from_secs(60)))
            .clock(CoarseClock::start(Duration::from_millis(1)).unwrap())
            .build()
            .unwrap()
    };
    for _ in 0..5 {
        let _ = block_on(coarse.call(|| ready(Err::<u64, ()>(()))));
    }
    assert!(block_on(coarse.call(|| ready(Ok::<u64, ()>(1)))).is_err());
    let mut g = c.benchmark_group("resilience/open_rejection");
    g.bench_function("finsight", |b| {
        b.iter(|| block_on(breaker.call(|| ready(Ok::<u64, ()>(black_box(1))))).is_err())
    });
    g.bench_function("coarse-clock", |b| {
        b.iter(|| block_on(coarse.call(|| ready(Ok::<u64, ()>(black_box(1))))).is_err())
    });
    g.bench_function("peer:failsafe", |b| {
        b.iter(|| block_on(fs.call(ready(Ok::<u64, ()>(black_box(1))))).is_err())
    });
    g.finish();
    drop(rt);
}

/// tower's `Retry` policy equivalent to our `Retry`: at most 3 attempts,
/// exponential backoff 100 ms .. 10 s with jitter, a `TpsBudget` (10 s, 10/s,
/// 20 %) deposited on success and withdrawn per retry.
#[derive(Clone)]
struct TowerPolicy {
    attempts_left: usize,
    budget: Arc<TpsBudget>,
    backoff: ExponentialBackoff,
}

impl<Req: Clone, Res, E> tower::retry::Policy<Req, Res, E> for TowerPolicy {
    type Future = tokio::time::Sleep;

    fn retry(&mut self, _req: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        match result {
            Ok(_) => {
                self.budget.deposit();
                None
            }
            Err(_) => {
                if self.attempts_left <= 1 || !self.budget.withdraw() {
                    return None;
                }
                self.attempts_left -= 1;
                Some(self.backoff.next_backoff())
            }
        }
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

type Ok1 = Ready<Result<u64, BoxError>>;

fn retry_first_success(c: &mut Criterion) {
    let inner = tower::service_fn(|x: u64| -> Ok1 { ready(Ok(x)) });
    let retry = Retry::builder()
        .max_attempts(3)
        .backoff(
            Backoff::exponential(Duration::from_millis(100), Duration::from_secs(10))
                .jitter(Jitter::Full),
        )
        .budget(RetryBudget::new(Duration::from_secs(10), 10, 0.2).unwrap())
        .build()
        .unwrap();
    let mut ours = RetryLayer::new(retry).layer(inner);
    let policy = TowerPolicy {
        attempts_left: 3,
        budget: Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2)),
        backoff: ExponentialBackoffMaker::new(
            Duration::from_millis(100),
            Duration::from_secs(10),
            1.0,
            HasherRng::default(),
        )
        .unwrap()
        .make_backoff(),
    };
    let mut peer = tower::retry::RetryLayer::new(policy).layer(inner);
    let mut cx = Context::from_waker(Waker::noop());
    let mut g = c.benchmark_group("resilience/retry_first_success");
    g.bench_function("finsight", |b| {
        b.iter(|| {
            assert!(ours.poll_ready(&mut cx).is_ready());
            block_on(ours.call(black_box(7))).unwrap()
        })
    });
    g.bench_function("peer:tower-retry", |b| {
        b.iter(|| {
            assert!(Service::<u64>::poll_ready(&mut peer, &mut cx).is_ready());
            block_on(peer.call(black_box(7))).unwrap()
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    closed_passthrough,
    open_rejection,
    retry_first_success
);
criterion_main!(benches);
