//! Retry on tokio's paused clock with seeded jitter (breakers whose open
//! duration matters get a `TokioClock`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use finsight_resilience::{
    Backoff, BreakerError, CircuitBreaker, Jitter, ManualClock, OnCircuitOpen, Retry, RetryAction,
    RetryBudget, RetryError, State, StopReason, TokioClock, parse_retry_after,
};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::time::Instant;

fn exp(base_ms: u64, cap_ms: u64, jitter: Jitter) -> Backoff {
    Backoff::exponential(
        Duration::from_millis(base_ms),
        Duration::from_millis(cap_ms),
    )
    .jitter(jitter)
}

/// A budget with a floor of 2 retries per second over a 1 s ttl and a
/// 100 % ratio, and a retrier of four attempts (backoff 1 ms doubling to
/// 10 ms, no jitter) that draws on it.
fn floor_budget_retry(clock: ManualClock) -> (RetryBudget, Retry) {
    let budget = RetryBudget::with_clock(Duration::from_secs(1), 2, 1.0, clock).unwrap();
    let retry = Retry::builder()
        .max_attempts(4)
        .backoff(exp(1, 10, Jitter::None))
        .budget(budget.clone())
        .build()
        .unwrap();
    (budget, retry)
}

/// Runs `op` and records the paused-clock instant of every attempt.
struct Recorder {
    t0: Instant,
    at: std::sync::Mutex<Vec<Duration>>,
}

impl Recorder {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            t0: Instant::now(),
            at: std::sync::Mutex::new(Vec::new()),
        })
    }
    fn hit(&self) -> usize {
        let mut v = self.at.lock().unwrap();
        v.push(self.t0.elapsed());
        v.len()
    }
    fn gaps(&self) -> Vec<Duration> {
        let v = self.at.lock().unwrap();
        v.windows(2).map(|w| w[1] - w[0]).collect()
    }
}

#[tokio::test(start_paused = true)]
async fn exponential_backoff_without_jitter_waits_base_times_two_to_the_n() {
    let retry = Retry::builder()
        .max_attempts(4)
        .backoff(exp(100, 10_000, Jitter::None))
        .build()
        .unwrap();
    let rec = Recorder::new();
    let r = retry
        .run(|| {
            let rec = rec.clone();
            async move { if rec.hit() < 4 { Err("busy") } else { Ok(7) } }
        })
        .await;
    assert_eq!(r.unwrap(), 7);
    assert_eq!(
        rec.gaps(),
        [100, 200, 400].map(Duration::from_millis).to_vec()
    );
}

#[tokio::test(start_paused = true)]
async fn seeded_jitter_is_reproducible_and_matches_backoff_delay() {
    let backoff = exp(100, 1_000, Jitter::Full);
    let retry = Retry::builder()
        .max_attempts(5)
        .backoff(backoff)
        .seed(42)
        .build()
        .unwrap();
    let rec = Recorder::new();
    let r: Result<(), _> = retry
        .run(|| {
            let rec = rec.clone();
            async move {
                rec.hit();
                Err("down")
            }
        })
        .await;
    match r {
        Err(RetryError::Failed {
            error: "down",
            attempts: 5,
            reason: StopReason::AttemptsExhausted,
        }) => {}
        other => panic!("{other:?}"),
    }
    let mut rng = SmallRng::seed_from_u64(42);
    let mut prev = Duration::ZERO;
    let expected: Vec<Duration> = (0..4)
        .map(|n| {
            prev = backoff.delay(n, prev, &mut rng);
            prev
        })
        .collect();
    // tokio's timer has millisecond resolution and rounds up.
    for (gap, want) in rec.gaps().iter().zip(&expected) {
        assert!(
            *gap >= *want && *gap <= *want + Duration::from_millis(1),
            "{gap:?} vs {want:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn retries_chosen_ok_results_and_returns_the_last_ok_when_attempts_run_out() {
    let retry = Retry::builder()
        .max_attempts(3)
        .backoff(exp(10, 100, Jitter::None))
        .build()
        .unwrap();
    let calls = AtomicU32::new(0);
    let classify = |r: &Result<u16, &str>| match r {
        Ok(503) => RetryAction::Retry,
        Ok(_) => RetryAction::Return,
        Err(_) => RetryAction::Return,
    };
    let r = retry
        .run_with(&classify, || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok::<u16, &str>(503) }
        })
        .await;
    assert_eq!(r.unwrap(), 503);
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // A non-retryable error returns at once.
    calls.store(0, Ordering::SeqCst);
    let r = retry
        .run_with(&classify, || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err::<u16, &str>("400") }
        })
        .await;
    assert!(matches!(
        r,
        Err(RetryError::Failed {
            reason: StopReason::NotRetryable,
            attempts: 1,
            ..
        })
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_hint_is_never_undercut_and_too_long_a_hint_stops() {
    let retry = Retry::builder()
        .max_attempts(3)
        .backoff(exp(100, 1_000, Jitter::Full))
        .max_retry_after(Duration::from_secs(30))
        .seed(1)
        .build()
        .unwrap();
    let rec = Recorder::new();
    let classify = |r: &Result<(), Duration>| match r {
        Ok(()) => RetryAction::Return,
        Err(hint) => RetryAction::RetryAfter(*hint),
    };
    let r = retry
        .run_with(&classify, || {
            let rec = rec.clone();
            async move {
                if rec.hit() == 1 {
                    Err(Duration::from_secs(5))
                } else {
                    Ok(())
                }
            }
        })
        .await;
    r.unwrap();
    let gap = rec.gaps()[0];
    assert!(
        gap >= Duration::from_secs(5) && gap <= Duration::from_millis(5_001),
        "{gap:?}"
    );

    let r = retry
        .run_with(&classify, || async {
            Err::<(), _>(Duration::from_secs(31))
        })
        .await;
    assert!(matches!(
        r,
        Err(RetryError::Failed {
            reason: StopReason::RetryAfterTooLong,
            attempts: 1,
            ..
        })
    ));
}

#[test]
fn parses_http_retry_after_seconds_and_dates() {
    let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
    assert_eq!(
        parse_retry_after("120", now).unwrap(),
        Duration::from_secs(120)
    );
    assert_eq!(parse_retry_after(" 0 ", now).unwrap(), Duration::ZERO);
    assert_eq!(
        parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now).unwrap(),
        Duration::from_secs(30)
    );
    // Rounded up, never early.
    let now_plus = now + Duration::from_millis(200);
    assert_eq!(
        parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now_plus).unwrap(),
        Duration::from_secs(30)
    );
    assert_eq!(
        parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now).unwrap(),
        Duration::ZERO
    );
    for bad in ["-1", "1.5", "soon", ""] {
        let e = parse_retry_after(bad, SystemTime::UNIX_EPOCH).unwrap_err();
        assert!(e.to_string().contains("Retry-After"), "{e}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_deadline_stops_waits_that_would_pass_it_and_cancels_a_running_attempt() {
    let retry = Retry::builder()
        .max_attempts(10)
        .backoff(exp(100, 100_000, Jitter::None))
        .deadline(Duration::from_millis(1_000))
        .build()
        .unwrap();
    let rec = Recorder::new();
    let r: Result<(), _> = retry
        .run(|| {
            let rec = rec.clone();
            async move {
                rec.hit();
                Err("x")
            }
        })
        .await;
    // attempts at 0, 100, 300, 700; the next wait (800 ms) would end at 1500.
    assert!(
        matches!(
            r,
            Err(RetryError::Failed {
                reason: StopReason::Deadline,
                attempts: 4,
                ..
            })
        ),
        "{r:?}"
    );
    assert!(rec.t0.elapsed() < Duration::from_secs(1));

    let r: Result<(), RetryError<&str>> = retry
        .run(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(())
        })
        .await;
    assert!(matches!(
        r,
        Err(RetryError::DeadlineExceeded { attempts: 1 })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_shared_budget_stops_retry_storms_across_retriers() {
    let clock = ManualClock::new();
    // No floor, 50 % of calls: after 4 calls, 2 retries in total.
    let budget = RetryBudget::with_clock(Duration::from_secs(10), 0, 0.5, clock.clone()).unwrap();
    let mk = || {
        Retry::builder()
            .max_attempts(5)
            .backoff(exp(1, 10, Jitter::None))
            .budget(budget.clone())
            .build()
            .unwrap()
    };
    let (a, b) = (mk(), mk());
    for _ in 0..2 {
        a.run(|| async { Ok::<_, ()>(()) }).await.unwrap();
        b.run(|| async { Ok::<_, ()>(()) }).await.unwrap();
    }
    assert_eq!(budget.balance(), 2);
    let calls = AtomicU32::new(0);
    let failing = || {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Err::<(), _>("down") }
    };
    let r = a.run(failing).await;
    // A failing call deposits nothing: 2 -> two retries, then empty.
    assert!(
        matches!(
            r,
            Err(RetryError::Failed {
                reason: StopReason::BudgetExhausted,
                attempts: 3,
                ..
            })
        ),
        "{r:?}"
    );
    // Nothing left, and b's failing call deposits nothing: no retry.
    let r = b.run(failing).await;
    assert!(
        matches!(
            r,
            Err(RetryError::Failed {
                reason: StopReason::BudgetExhausted,
                attempts: 1,
                ..
            })
        ),
        "{r:?}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "without the budget it would be 10"
    );
    // Deposits expire after the ttl.
    clock.advance(Duration::from_secs(11));
    assert_eq!(budget.balance(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_budget_floor_allows_retries_per_second() {
    let clock = ManualClock::new();
    let budget = RetryBudget::with_clock(Duration::from_secs(1), 3, 0.0, clock.clone()).unwrap();
    assert_eq!(budget.balance(), 3);
    assert!(budget.try_withdraw() && budget.try_withdraw() && budget.try_withdraw());
    assert!(!budget.try_withdraw());
    clock.advance(Duration::from_secs(2)); // withdrawals expire
    assert!(budget.try_withdraw());
}

#[tokio::test(start_paused = true)]
async fn retry_waits_for_an_open_breakers_probe_time_without_burning_attempts() {
    let b = CircuitBreaker::builder("dep")
        .consecutive_failures(1)
        .open_duration(finsight_resilience::OpenDuration::Fixed(
            Duration::from_secs(30),
        ))
        .clock(TokioClock::new())
        .build()
        .unwrap();
    b.call(|| async { Err::<(), _>(()) }).await.unwrap_err();
    assert_eq!(b.state(), State::Open);
    let retry = Retry::builder()
        .max_attempts(2)
        .backoff(exp(10, 100, Jitter::None))
        .build()
        .unwrap();
    let t0 = Instant::now();
    let calls = AtomicU32::new(0);
    let r = retry
        .run_through(&b, &finsight_resilience::RetryOnError, || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, ()>("fresh") }
        })
        .await;
    assert_eq!(r.unwrap(), "fresh");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the rejection used no attempt"
    );
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(30) && waited <= Duration::from_millis(30_001),
        "{waited:?}"
    );
    assert_eq!(b.state(), State::Closed);

    // GiveUp: stops at once, the operation is not called.
    b.force_open();
    let give_up = Retry::builder()
        .on_circuit_open(OnCircuitOpen::GiveUp)
        .build()
        .unwrap();
    let r = give_up
        .run_through(&b, &finsight_resilience::RetryOnError, || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, ()>("never") }
        })
        .await;
    match r {
        Err(RetryError::Failed {
            error: BreakerError::Open(o),
            reason: StopReason::CircuitOpen,
            attempts: 0,
        }) => {
            assert_eq!(o.state(), State::ForcedOpen)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn retry_through_a_breaker_counts_retryable_results_as_failures() {
    let b = CircuitBreaker::builder("dep")
        .consecutive_failures(3)
        .build()
        .unwrap();
    let retry = Retry::builder()
        .max_attempts(3)
        .backoff(exp(10, 100, Jitter::None))
        .on_circuit_open(OnCircuitOpen::GiveUp)
        .build()
        .unwrap();
    let classify = |r: &Result<u16, &str>| match r {
        Ok(503) => RetryAction::Retry,
        _ => RetryAction::Return,
    };
    let r = retry
        .run_through(&b, &classify, || async { Ok::<u16, &str>(503) })
        .await;
    assert_eq!(r.unwrap(), 503);
    assert_eq!(
        b.state(),
        State::Open,
        "three retryable 503s are three failures"
    );
    let r = retry
        .run_through(&b, &classify, || async { Err::<u16, &str>("400") })
        .await;
    assert!(matches!(
        r,
        Err(RetryError::Failed {
            reason: StopReason::CircuitOpen,
            ..
        })
    ));
    b.reset();
    let r = retry
        .run_through(&b, &classify, || async { Err::<u16, &str>("400") })
        .await;
    assert!(r.is_err());
    assert_eq!(
        b.metrics().ignored,
        1,
        "a non-retryable error is ignored by the breaker"
    );
}

#[test]
fn bad_retry_settings_are_rejected() {
    assert!(
        Retry::builder()
            .max_attempts(0)
            .build()
            .unwrap_err()
            .to_string()
            .contains("max_attempts")
    );
    assert!(RetryBudget::new(Duration::from_millis(10), 1, 0.2).is_err());
    assert!(RetryBudget::new(Duration::from_secs(1), 1, -1.0).is_err());
}

#[tokio::test(start_paused = true)]
async fn a_call_first_rejected_by_the_breaker_still_deposits_once() {
    let clock = ManualClock::new();
    let budget = RetryBudget::with_clock(Duration::from_secs(10), 0, 1.0, clock).unwrap();
    let b = CircuitBreaker::builder("dep")
        .consecutive_failures(1)
        .open_duration(finsight_resilience::OpenDuration::Fixed(
            Duration::from_secs(1),
        ))
        .clock(TokioClock::new())
        .build()
        .unwrap();
    b.call(|| async { Err::<(), _>(()) }).await.unwrap_err();
    let retry = Retry::builder().budget(budget.clone()).build().unwrap();
    let r = retry
        .run_through(&b, &finsight_resilience::RetryOnError, || async {
            Ok::<_, ()>(1)
        })
        .await;
    assert_eq!(r.unwrap(), 1);
    assert_eq!(
        budget.balance(),
        1,
        "one deposit for the call, none for the rejection"
    );
}

/// SPEC §2.2: retries are limited to a ratio of recent *successful* calls.
/// Failed calls (retryable or not) and `Ok` results the classifier retried
/// deposit nothing, so under a total outage the per-second floor alone pays
/// for retries, however generous the ratio.
#[tokio::test(start_paused = true)]
async fn failing_calls_deposit_nothing_so_an_outage_gets_only_the_floor() {
    let clock = ManualClock::new();
    // A 100 % ratio would let every failing call retry if failures deposited;
    // the floor is 2 retries per second over a 1 s ttl: 2 retries in all.
    let (budget, retry) = floor_budget_retry(clock.clone());
    assert_eq!(budget.balance(), 2);

    let calls = AtomicU32::new(0);
    let failing = || {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Err::<(), _>("down") }
    };
    for _ in 0..20 {
        let _ = retry.run(failing).await.unwrap_err();
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        20 + 2,
        "20 calls and the floor's 2 retries (a deposit per failing call would allow 40 more)"
    );
    assert_eq!(budget.balance(), 0);

    // A non-retryable error and a retried `Ok` that ran out of attempts are
    // not successes either.
    let no_retry = |_: &Result<(), &str>| RetryAction::Return;
    let _ = retry
        .run_with(&no_retry, || async { Err::<(), _>("bad request") })
        .await
        .unwrap_err();
    let always = |_: &Result<u32, ()>| RetryAction::Retry;
    let stale = retry.run_with(&always, || async { Ok::<u32, ()>(7) }).await;
    assert_eq!(stale.unwrap(), 7, "the last Ok is returned");
    assert_eq!(budget.balance(), 0, "no deposit for either");

    // A success deposits once (ratio 1.0 = one retry), however many attempts it took.
    let n = AtomicU32::new(0);
    clock.advance(Duration::from_secs(2)); // the floor refills
    assert_eq!(budget.balance(), 2);
    retry
        .run(|| {
            let k = n.fetch_add(1, Ordering::SeqCst);
            async move { if k < 2 { Err("flaky") } else { Ok(()) } }
        })
        .await
        .unwrap();
    assert_eq!(n.load(Ordering::SeqCst), 3);
    assert_eq!(
        budget.balance(),
        1,
        "floor 2, two retries taken, one deposit"
    );
}

/// The tower `RetryLayer` follows the same rule as the closure API.
#[tokio::test(start_paused = true)]
async fn the_retry_layer_deposits_only_on_success() {
    use finsight_resilience::{BoxError, RetryLayer};
    use tower::{Layer, ServiceExt};

    let (budget, retry) = floor_budget_retry(ManualClock::new());
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let down = RetryLayer::new(retry.clone()).layer(tower::service_fn(move |_: u32| {
        c.fetch_add(1, Ordering::SeqCst);
        async { Err::<u32, BoxError>("down".into()) }
    }));
    for i in 0..20 {
        down.clone().oneshot(i).await.unwrap_err();
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        20 + 2,
        "only the floor's retries"
    );
    assert_eq!(budget.balance(), 0);

    let up =
        RetryLayer::new(retry).layer(tower::service_fn(
            |x: u32| async move { Ok::<u32, BoxError>(x) },
        ));
    for i in 0..3 {
        assert_eq!(up.clone().oneshot(i).await.unwrap(), i);
    }
    assert_eq!(budget.balance(), 3, "one deposit per successful call");
}
