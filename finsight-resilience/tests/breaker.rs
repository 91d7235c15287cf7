//! Deterministic state-machine tests of the circuit breaker on a manual clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use finsight_resilience::{
    BreakerError, CircuitBreaker, ManualClock, OpenDuration, Outcome, Reason, State, Window,
};

fn breaker(clock: &ManualClock) -> CircuitBreaker {
    CircuitBreaker::builder("db")
        .clock(clock.clone())
        .build()
        .unwrap()
}

async fn fail(b: &CircuitBreaker) -> Result<(), BreakerError<&'static str>> {
    b.call(|| async { Err::<(), _>("boom") }).await
}

async fn succeed(b: &CircuitBreaker) -> Result<(), BreakerError<&'static str>> {
    b.call(|| async { Ok::<(), &'static str>(()) }).await
}

#[tokio::test]
async fn defaults_open_after_five_consecutive_failures_and_probe_after_sixty_seconds() {
    let clock = ManualClock::new();
    let b = breaker(&clock);
    let mut events = b.subscribe();
    for _ in 0..4 {
        assert!(matches!(fail(&b).await, Err(BreakerError::Inner("boom"))));
    }
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.metrics().consecutive_failures, 4);
    assert!(fail(&b).await.is_err());
    assert_eq!(b.state(), State::Open);

    // Rejected without calling the operation, saying when it probes again.
    let called = AtomicUsize::new(0);
    let r = b
        .call(|| async {
            called.fetch_add(1, Ordering::SeqCst);
            Ok::<(), ()>(())
        })
        .await;
    let open = *r.unwrap_err().as_open().unwrap();
    assert_eq!(called.load(Ordering::SeqCst), 0);
    assert_eq!(open.state(), State::Open);
    assert_eq!(open.retry_after(), Some(Duration::from_secs(60)));
    assert!(open.to_string().contains("open"), "{open}");

    clock.advance(Duration::from_secs(59));
    let open = *succeed(&b).await.unwrap_err().as_open().unwrap();
    assert_eq!(open.retry_after(), Some(Duration::from_secs(1)));

    clock.advance(Duration::from_secs(1));
    succeed(&b).await.unwrap(); // the probe
    assert_eq!(b.state(), State::Closed);

    let seen: Vec<(State, State)> = std::iter::from_fn(|| events.try_recv().ok())
        .map(|e| (e.from, e.to))
        .collect();
    assert_eq!(
        seen,
        vec![
            (State::Closed, State::Open),
            (State::Open, State::HalfOpen),
            (State::HalfOpen, State::Closed),
        ]
    );
    let m = b.metrics();
    assert_eq!((m.successes, m.failures, m.rejected), (1, 5, 2));
    assert_eq!(m.calls, 6);
}

#[tokio::test]
async fn a_success_resets_the_consecutive_count() {
    let clock = ManualClock::new();
    let b = breaker(&clock);
    for _ in 0..4 {
        fail(&b).await.unwrap_err();
    }
    succeed(&b).await.unwrap();
    for _ in 0..4 {
        fail(&b).await.unwrap_err();
    }
    assert_eq!(b.state(), State::Closed);
    fail(&b).await.unwrap_err();
    assert_eq!(b.state(), State::Open);
}

#[tokio::test]
async fn failed_probe_reopens_with_backoff_and_enough_successes_close() {
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder("svc")
        .consecutive_failures(1)
        .open_duration(OpenDuration::Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(4),
        })
        .successes_to_close(2)
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut events = b.subscribe();
    fail(&b).await.unwrap_err();
    assert_eq!(b.retry_after(), Some(Duration::from_secs(1)));
    for expected in [2, 4, 4] {
        clock.advance(b.retry_after().unwrap());
        fail(&b).await.unwrap_err(); // probe fails
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.retry_after(), Some(Duration::from_secs(expected)));
    }
    clock.advance(Duration::from_secs(4));
    succeed(&b).await.unwrap();
    assert_eq!(b.state(), State::HalfOpen, "one success of two");
    succeed(&b).await.unwrap();
    assert_eq!(b.state(), State::Closed);
    // Closing resets the backoff.
    fail(&b).await.unwrap_err();
    assert_eq!(b.retry_after(), Some(Duration::from_secs(1)));
    let reasons: Vec<Reason> = std::iter::from_fn(|| events.try_recv().ok())
        .map(|e| e.reason)
        .collect();
    assert_eq!(reasons[0], Reason::ConsecutiveFailures { count: 1 });
    assert!(reasons.contains(&Reason::ProbeFailed));
    assert!(reasons.contains(&Reason::ProbesSucceeded));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_admits_only_the_probe_limit_among_100_concurrent_callers() {
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder("svc")
        .consecutive_failures(1)
        .half_open_probes(3)
        .successes_to_close(3)
        .clock(clock.clone())
        .build()
        .unwrap();
    fail(&b).await.unwrap_err();
    clock.advance(Duration::from_secs(60));

    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let ran = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(100));
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (b, gate, ran, barrier) = (b.clone(), gate.clone(), ran.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            b.call(|| async {
                ran.fetch_add(1, Ordering::SeqCst);
                let _p = gate.acquire().await.unwrap();
                Ok::<(), ()>(())
            })
            .await
        }));
    }
    // Wait (bounded) until every rejected caller has returned.
    for _ in 0..1000 {
        if b.metrics().rejected == 97 {
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(b.metrics().rejected, 97);
    assert_eq!(b.state(), State::HalfOpen);
    gate.add_permits(3);
    let mut ok = 0;
    let mut rejected = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(BreakerError::Open(o)) => {
                assert_eq!(o.state(), State::HalfOpen);
                assert_eq!(o.retry_after(), None);
                rejected += 1;
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!((ok, rejected), (3, 97));
    assert_eq!(ran.load(Ordering::SeqCst), 3);
    assert_eq!(b.state(), State::Closed);
}

fn poll_once<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(Waker::noop()))
}

#[tokio::test]
async fn a_dropped_probe_is_cancelled_not_failed_and_releases_its_slot() {
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder("svc")
        .consecutive_failures(1)
        .clock(clock.clone())
        .build()
        .unwrap();
    fail(&b).await.unwrap_err();
    clock.advance(Duration::from_secs(60));

    {
        let fut = b.call(std::future::pending::<Result<(), ()>>);
        let mut fut = std::pin::pin!(fut);
        assert!(poll_once(fut.as_mut()).is_pending());
        assert_eq!(b.state(), State::HalfOpen);
        // The only slot is taken: others are rejected.
        assert!(succeed(&b).await.unwrap_err().as_open().is_some());
    } // dropped here: the caller went away

    let m = b.metrics();
    assert_eq!((m.cancelled, m.failures), (1, 1));
    assert_eq!(b.state(), State::HalfOpen);
    succeed(&b).await.unwrap(); // the slot was given back
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test]
async fn cancelled_calls_never_open_a_closed_breaker() {
    let clock = ManualClock::new();
    let b = breaker(&clock);
    for _ in 0..20 {
        let permit = b.try_acquire().unwrap();
        drop(permit);
    }
    let m = b.metrics();
    assert_eq!((m.cancelled, m.failures, m.state), (20, 0, State::Closed));
}

#[tokio::test]
async fn a_permit_from_an_earlier_cycle_never_refills_or_closes_a_later_one() {
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder("svc")
        .consecutive_failures(1)
        .half_open_probes(2)
        .clock(clock.clone())
        .build()
        .unwrap();
    fail(&b).await.unwrap_err();
    clock.advance(Duration::from_secs(60));
    let p1 = b.try_acquire().unwrap();
    let p2 = b.try_acquire().unwrap();
    assert!(p1.is_probe() && p2.is_probe());
    p1.record(Outcome::Failure); // re-open: cycle 1 is over
    assert_eq!(b.state(), State::Open);
    clock.advance(Duration::from_secs(60));
    let p3 = b.try_acquire().unwrap(); // cycle 2: one of two slots
    p2.record(Outcome::Success); // stale: must neither refill nor count
    let p4 = b.try_acquire().unwrap();
    assert!(b.try_acquire().is_err(), "only two slots in cycle 2");
    assert_eq!(b.state(), State::HalfOpen);
    p3.record(Outcome::Success);
    assert_eq!(b.state(), State::Closed);
    drop(p4); // stale again (cycle 3 is closed): no effect
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test]
async fn a_late_failure_from_a_closed_cycle_does_not_count_in_the_next() {
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder("svc")
        .consecutive_failures(2)
        .clock(clock.clone())
        .build()
        .unwrap();
    let late = b.try_acquire().unwrap();
    b.force_open();
    b.reset();
    late.record(Outcome::Failure);
    assert_eq!(b.metrics().consecutive_failures, 0);
}

#[tokio::test]
async fn force_open_force_closed_and_reset() {
    let clock = ManualClock::new();
    let b = breaker(&clock);
    b.force_open();
    let open = *succeed(&b).await.unwrap_err().as_open().unwrap();
    assert_eq!(open.state(), State::ForcedOpen);
    assert_eq!(open.retry_after(), None);
    clock.advance(Duration::from_secs(3600));
    assert!(succeed(&b).await.is_err(), "forced open ignores time");

    b.force_closed();
    for _ in 0..50 {
        assert!(matches!(fail(&b).await, Err(BreakerError::Inner(_))));
    }
    assert_eq!(b.state(), State::ForcedClosed);
    assert_eq!(b.metrics().failures, 50);

    b.reset();
    let m = b.metrics();
    assert_eq!(m.state, State::Closed);
    assert_eq!((m.calls, m.failures, m.rejected), (0, 0, 0));
    succeed(&b).await.unwrap();
}

#[tokio::test]
async fn one_classifier_over_the_whole_result() {
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder("http")
        .consecutive_failures(2)
        .clock(clock.clone())
        .build()
        .unwrap();
    // Ok(503) is a failure, Err("404") is ignored.
    let classify = |r: &Result<u16, &str>| match r {
        Ok(s) if *s >= 500 => Outcome::Failure,
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Ignored,
    };
    for _ in 0..5 {
        assert!(
            b.call_with(&classify, || async { Err::<u16, _>("404") })
                .await
                .is_err()
        );
    }
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.metrics().ignored, 5);
    assert_eq!(
        b.call_with(&classify, || async { Ok::<_, &str>(503) })
            .await,
        Ok(503)
    );
    assert_eq!(b.state(), State::Closed);
    assert_eq!(
        b.call_with(&classify, || async { Ok::<_, &str>(503) })
            .await,
        Ok(503)
    );
    assert_eq!(b.state(), State::Open);
}

#[tokio::test]
async fn failure_rate_over_a_count_window_waits_for_min_calls() {
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder("rate")
        .failure_rate(0.5, Window::Count(10), 6)
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut events = b.subscribe();
    for _ in 0..5 {
        fail(&b).await.unwrap_err();
    }
    assert_eq!(b.state(), State::Closed, "5 calls < min_calls 6");
    succeed(&b).await.unwrap(); // 6 calls, 5 failed: 83 %
    assert_eq!(b.state(), State::Open);
    let e = events.try_recv().unwrap();
    assert!(
        matches!(e.reason, Reason::FailureRate { calls: 6, .. }),
        "{e:?}"
    );
}

#[tokio::test]
async fn failure_rate_window_forgets_old_calls() {
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder("rate")
        .failure_rate(0.5, Window::Count(4), 4)
        .clock(clock.clone())
        .build()
        .unwrap();
    // F S S S -> 25 %; then S pushes F out; F F -> 2/4 = 50 % opens.
    fail(&b).await.unwrap_err();
    for _ in 0..4 {
        succeed(&b).await.unwrap();
    }
    assert_eq!(b.metrics().failure_rate, Some(0.0));
    fail(&b).await.unwrap_err();
    assert_eq!(b.state(), State::Closed);
    fail(&b).await.unwrap_err();
    assert_eq!(b.state(), State::Open);
}

#[tokio::test]
async fn failure_rate_over_a_time_window() {
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder("rate")
        .failure_rate(
            0.5,
            Window::Time {
                size: Duration::from_secs(10),
                buckets: 10,
            },
            4,
        )
        .clock(clock.clone())
        .build()
        .unwrap();
    fail(&b).await.unwrap_err();
    fail(&b).await.unwrap_err();
    fail(&b).await.unwrap_err();
    clock.advance(Duration::from_secs(11)); // those three expire
    succeed(&b).await.unwrap();
    succeed(&b).await.unwrap();
    fail(&b).await.unwrap_err();
    assert_eq!(b.state(), State::Closed, "3 calls in the window < min 4");
    succeed(&b).await.unwrap(); // 4 calls, 25 %
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.metrics().failure_rate, Some(0.25));
    fail(&b).await.unwrap_err();
    fail(&b).await.unwrap_err(); // 6 calls, 3 failed: 50 %
    assert_eq!(b.state(), State::Open);
}

#[tokio::test]
async fn slow_call_rate_opens() {
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder("slow")
        .failure_rate(0.9, Window::Count(10), 4)
        .slow_calls(Duration::from_secs(2), 0.5)
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut events = b.subscribe();
    let slow_ok = || {
        let c = clock.clone();
        b.call(move || async move {
            c.advance(Duration::from_secs(3));
            Ok::<(), ()>(())
        })
    };
    slow_ok().await.unwrap();
    succeed(&b).await.unwrap();
    succeed(&b).await.unwrap();
    assert_eq!(b.state(), State::Closed);
    slow_ok().await.unwrap(); // 2 of 4 slow
    assert_eq!(b.state(), State::Open);
    assert_eq!(b.metrics().slow_calls, 2);
    assert!(matches!(
        events.try_recv().unwrap().reason,
        Reason::SlowCallRate { calls: 4, .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_failures_open_exactly_once() {
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder("race")
        .consecutive_failures(3)
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut events = b.subscribe();
    let permits: Vec<_> = (0..64).map(|_| b.try_acquire_owned().unwrap()).collect();
    let handles: Vec<_> = permits
        .into_iter()
        .map(|p| tokio::spawn(async move { p.record(Outcome::Failure) }))
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(b.state(), State::Open);
    assert_eq!(events.try_recv().unwrap().to, State::Open);
    assert!(events.try_recv().is_err(), "exactly one transition");
}

#[test]
fn metrics_serialize_for_dashboards() {
    let b = CircuitBreaker::builder("pay").build().unwrap();
    let v = serde_json::to_value(b.metrics()).unwrap();
    assert_eq!(v["name"], "pay");
    assert_eq!(v["state"], "closed");
    assert_eq!(v["calls"], 0);
}

#[test]
fn bad_settings_are_rejected_with_the_setting_named() {
    let cases = [
        CircuitBreaker::builder("x")
            .consecutive_failures(0)
            .build()
            .unwrap_err(),
        CircuitBreaker::builder("x")
            .failure_rate(1.5, Window::Count(10), 5)
            .build()
            .unwrap_err(),
        CircuitBreaker::builder("x")
            .slow_calls(Duration::from_secs(1), 0.5)
            .build()
            .unwrap_err(),
        CircuitBreaker::builder("x")
            .half_open_probes(0)
            .build()
            .unwrap_err(),
        CircuitBreaker::builder("x")
            .failure_rate(
                0.5,
                Window::Time {
                    size: Duration::from_secs(1),
                    buckets: 0,
                },
                5,
            )
            .build()
            .unwrap_err(),
    ];
    let names = [
        "consecutive_failures",
        "failure_rate",
        "slow_calls",
        "half_open_probes",
        "failure_rate",
    ];
    for (e, name) in cases.iter().zip(names) {
        assert!(e.to_string().contains(name), "{e}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_tokio_clock_follows_tokio_paused_time() {
    let b = CircuitBreaker::builder("tokio")
        .consecutive_failures(1)
        .clock(finsight_resilience::TokioClock::new())
        .build()
        .unwrap();
    fail(&b).await.unwrap_err();
    assert_eq!(b.retry_after(), Some(Duration::from_secs(60)));
    tokio::time::advance(Duration::from_secs(59)).await;
    assert!(matches!(succeed(&b).await, Err(BreakerError::Open(_))));
    tokio::time::advance(Duration::from_secs(1)).await;
    succeed(&b).await.unwrap();
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn the_default_clock_is_real_time_and_ignores_tokio_paused_time() {
    let b = CircuitBreaker::builder("default")
        .consecutive_failures(1)
        .build()
        .unwrap();
    fail(&b).await.unwrap_err();
    // Paused tokio time moves an hour; the breaker's clock (real time) does
    // not, so the 60 s open duration has not elapsed.
    tokio::time::advance(Duration::from_secs(3600)).await;
    match succeed(&b).await {
        Err(BreakerError::Open(o)) => {
            assert_eq!(o.state(), State::Open);
            assert!(o.retry_after().is_some_and(|d| d > Duration::ZERO));
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn a_coarse_clock_is_accurate_to_one_resolution() {
    use finsight_resilience::CoarseClock;
    let res = Duration::from_millis(100);
    let clock = CoarseClock::start(res).unwrap();
    let b = CircuitBreaker::builder("coarse")
        .consecutive_failures(1)
        .open_duration(OpenDuration::Fixed(Duration::from_secs(2)))
        .clock(clock)
        .build()
        .unwrap();
    let t0 = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(250)).await;
    fail(&b).await.unwrap_err();
    let opened_at = t0.elapsed();
    let reported = succeed(&b)
        .await
        .unwrap_err()
        .as_open()
        .unwrap()
        .retry_after()
        .unwrap();
    assert!(
        reported + res >= Duration::from_secs(2) && reported <= Duration::from_secs(2) + res,
        "{reported:?}"
    );
    // One resolution before the open duration: still open.
    tokio::time::sleep_until(
        t0 + opened_at + Duration::from_secs(2) - res - Duration::from_millis(1),
    )
    .await;
    assert!(succeed(&b).await.is_err());
    // One resolution after it: it has probed and closed.
    tokio::time::sleep_until(t0 + opened_at + Duration::from_secs(2) + res).await;
    succeed(&b).await.unwrap();
    assert_eq!(b.state(), State::Closed);
    assert!(CoarseClock::start(Duration::ZERO).is_err());
}

#[test]
fn a_coarse_clock_needs_a_runtime() {
    let e = finsight_resilience::CoarseClock::start(Duration::from_millis(1)).unwrap_err();
    assert!(e.to_string().contains("tokio runtime"), "{e}");
}

/// One `tracing` event as a capturing layer saw it.
#[derive(Debug, Clone)]
struct Captured {
    level: tracing::Level,
    fields: std::collections::BTreeMap<String, String>,
}

impl Captured {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// A `tracing_subscriber` layer recording every event and its fields.
#[derive(Clone, Default)]
struct Capture(Arc<std::sync::Mutex<Vec<Captured>>>);

struct FieldVisitor<'a>(&'a mut std::collections::BTreeMap<String, String>);

impl tracing::field::Visit for FieldVisitor<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut fields = std::collections::BTreeMap::new();
        event.record(&mut FieldVisitor(&mut fields));
        self.0.lock().unwrap().push(Captured {
            level: *event.metadata().level(),
            fields,
        });
    }
}

#[tokio::test]
async fn state_changes_emit_tracing_events_with_the_breaker_name_and_reason() {
    use tracing_subscriber::layer::SubscriberExt;

    let capture = Capture::default();
    // Scoped to this thread; the current-thread runtime polls the calls here.
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder("quotes-api")
        .consecutive_failures(2)
        .open_duration(OpenDuration::Fixed(Duration::from_secs(10)))
        .clock(clock.clone())
        .build()
        .unwrap();
    fail(&b).await.unwrap_err();
    assert!(
        capture
            .0
            .lock()
            .unwrap()
            .iter()
            .all(|e| e.field("message") != Some("circuit breaker opened")),
        "one failure of two does not open the breaker"
    );
    fail(&b).await.unwrap_err();
    assert_eq!(b.state(), State::Open);

    let events = capture.0.lock().unwrap().clone();
    let opened: Vec<&Captured> = events
        .iter()
        .filter(|e| e.field("message") == Some("circuit breaker opened"))
        .collect();
    assert_eq!(opened.len(), 1, "{events:?}");
    let opened = opened[0];
    assert_eq!(opened.level, tracing::Level::WARN);
    assert_eq!(opened.field("breaker"), Some("quotes-api"));
    assert_eq!(opened.field("from"), Some("closed"));
    assert_eq!(
        opened.field("reason"),
        Some(format!("{:?}", Reason::ConsecutiveFailures { count: 2 }).as_str())
    );

    // The other transitions are `info` events naming both states.
    clock.advance(Duration::from_secs(10));
    succeed(&b).await.unwrap();
    assert_eq!(b.state(), State::Closed);
    let events = capture.0.lock().unwrap().clone();
    let changed: Vec<(&str, &str, &str)> = events
        .iter()
        .filter(|e| e.field("message") == Some("circuit breaker state changed"))
        .map(|e| {
            assert_eq!(e.level, tracing::Level::INFO);
            assert_eq!(e.field("breaker"), Some("quotes-api"));
            (
                e.field("from").unwrap(),
                e.field("to").unwrap(),
                e.field("reason").unwrap(),
            )
        })
        .collect();
    assert_eq!(
        changed,
        [
            ("open", "half_open", "OpenElapsed"),
            ("half_open", "closed", "ProbesSucceeded")
        ]
    );
}
