//! tower Layers driven by `tower-test` mocks, on tokio's paused clock
//! (breakers whose open duration matters get a `TokioClock`).

use std::time::Duration;

use finsight_resilience::{
    Backoff, BoxError, CircuitBreaker, CircuitBreakerLayer, CircuitOpen, DeadlineExceeded,
    FaultLayer, Faults, InjectedFault, Jitter, OpenDuration, Outcome, Retry, RetryAfterHint,
    RetryLayer, State, TokioClock,
};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_test::mock;

fn retry(attempts: u32) -> Retry {
    Retry::builder()
        .max_attempts(attempts)
        .backoff(
            Backoff::exponential(Duration::from_millis(10), Duration::from_secs(1))
                .jitter(Jitter::None),
        )
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn breaker_layer_opens_and_then_rejects_without_reaching_the_inner_service() {
    let b = CircuitBreaker::builder("svc")
        .consecutive_failures(2)
        .clock(TokioClock::new())
        .build()
        .unwrap();
    let (mut svc, mut handle) =
        mock::spawn_layer::<&str, &str, _>(CircuitBreakerLayer::new(b.clone()));
    for _ in 0..2 {
        assert!(svc.poll_ready().is_ready());
        let fut = svc.call("get");
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req, "get");
        send.send_error("boom");
        assert_eq!(fut.await.unwrap_err().to_string(), "boom");
    }
    assert_eq!(b.state(), State::Open);
    assert!(
        svc.poll_ready().is_ready(),
        "poll_ready never fails because of the breaker"
    );
    let err = svc.call("get").await.unwrap_err();
    let open = err
        .downcast_ref::<CircuitOpen>()
        .expect("a CircuitOpen leaf");
    assert_eq!(open.retry_after(), Some(Duration::from_secs(60)));
    assert!(
        handle.poll_request().is_pending(),
        "the inner service was not called"
    );
    assert_eq!(b.metrics().rejected, 1);
}

#[tokio::test(start_paused = true)]
async fn breaker_layer_classifier_sees_responses_and_dropped_futures_are_cancelled() {
    let b = CircuitBreaker::builder("svc")
        .consecutive_failures(1)
        .build()
        .unwrap();
    let layer =
        CircuitBreakerLayer::new(b.clone()).classifier(|r: &Result<u16, BoxError>| match r {
            Ok(s) if *s >= 500 => Outcome::Failure,
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        });
    let (mut svc, mut handle) = mock::spawn_layer::<(), u16, _>(layer);
    assert!(svc.poll_ready().is_ready());
    let fut = svc.call(());
    let _req = handle.next_request().await.unwrap();
    drop(fut); // the caller went away
    assert_eq!(b.metrics().cancelled, 1);
    assert_eq!(b.state(), State::Closed);

    assert!(svc.poll_ready().is_ready());
    let fut = svc.call(());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(503);
    assert_eq!(fut.await.unwrap(), 503);
    assert_eq!(b.state(), State::Open, "an Ok(503) counted as a failure");
}

#[tokio::test(start_paused = true)]
async fn retry_layer_retries_an_error_then_returns_the_success() {
    let (mut svc, mut handle) = mock::spawn_layer::<&str, &str, _>(RetryLayer::new(retry(3)));
    assert!(svc.poll_ready().is_ready());
    let fut = tokio::spawn(svc.call("req"));
    let t0 = Instant::now();
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req, "req");
    send.send_error("transient");
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req, "req", "the retry sends a clone of the request");
    assert_eq!(t0.elapsed(), Duration::from_millis(10));
    send.send_response("ok");
    assert_eq!(fut.await.unwrap().unwrap(), "ok");
}

#[tokio::test(start_paused = true)]
async fn retry_layer_gives_up_after_max_attempts_with_the_last_error() {
    let (mut svc, mut handle) = mock::spawn_layer::<u8, u8, _>(RetryLayer::new(retry(2)));
    assert!(svc.poll_ready().is_ready());
    let fut = tokio::spawn(svc.call(1));
    for i in 0..2 {
        let (_, send) = handle.next_request().await.unwrap();
        send.send_error(format!("fail {i}"));
    }
    assert_eq!(fut.await.unwrap().unwrap_err().to_string(), "fail 1");
    assert!(handle.poll_request().is_pending());
}

#[tokio::test(start_paused = true)]
async fn retry_layer_honours_retry_after_hints_and_the_deadline() {
    let layer = RetryLayer::new(
        Retry::builder()
            .max_attempts(5)
            .backoff(
                Backoff::exponential(Duration::from_millis(10), Duration::from_secs(1))
                    .jitter(Jitter::None),
            )
            .deadline(Duration::from_secs(10))
            .build()
            .unwrap(),
    );
    let (mut svc, mut handle) = mock::spawn_layer::<u8, u8, _>(layer);
    assert!(svc.poll_ready().is_ready());
    let t0 = Instant::now();
    let fut = tokio::spawn(svc.call(1));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(RetryAfterHint(Duration::from_secs(3)));
    let (_, _unanswered) = handle.next_request().await.unwrap();
    assert_eq!(
        t0.elapsed(),
        Duration::from_secs(3),
        "waited the hint, not the 10 ms backoff"
    );
    // Never answered: the deadline cancels the running attempt.
    let err = fut.await.unwrap().unwrap_err();
    assert!(err.is::<DeadlineExceeded>(), "{err}");
    assert_eq!(t0.elapsed(), Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn retry_outside_a_breaker_waits_for_the_probe_instead_of_burning_attempts() {
    let b = CircuitBreaker::builder("dep")
        .consecutive_failures(1)
        .open_duration(OpenDuration::Fixed(Duration::from_secs(5)))
        .clock(TokioClock::new())
        .build()
        .unwrap();
    b.call(|| async { Err::<(), _>(()) }).await.unwrap_err();
    let (mock, mut handle) = mock::pair::<u8, u8>();
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(retry(2)))
        .layer(CircuitBreakerLayer::new(b.clone()))
        .service(mock);
    let t0 = Instant::now();
    let fut = tokio::spawn(async move { svc.ready().await?.call(9).await });
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req, 9);
    assert_eq!(
        t0.elapsed(),
        Duration::from_secs(5),
        "the retry slept until the probe time"
    );
    send.send_response(10);
    assert_eq!(fut.await.unwrap().unwrap(), 10);
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.metrics().rejected, 1);
}

#[tokio::test(start_paused = true)]
async fn fault_layer_aborts_errors_and_delays_deterministically() {
    // Abort: the inner service is never called.
    let faults = Faults::builder().abort_rate(1.0).seed(1).build().unwrap();
    let (mut svc, mut handle) = mock::spawn_layer::<u8, u8, _>(FaultLayer::new(faults.clone()));
    assert!(svc.poll_ready().is_ready());
    let err = svc.call(1).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<InjectedFault>(),
        Some(&InjectedFault::Abort)
    );
    assert!(handle.poll_request().is_pending());
    // Switched off: passes through.
    faults.set_enabled(false);
    assert!(svc.poll_ready().is_ready());
    let fut = svc.call(2);
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(3);
    assert_eq!(fut.await.unwrap(), 3);

    // Error: the inner service runs, its result is replaced.
    let faults = Faults::builder()
        .error_rate(1.0)
        .latency(1.0, Duration::from_secs(2))
        .seed(1)
        .build()
        .unwrap();
    let (mut svc, mut handle) = mock::spawn_layer::<u8, u8, _>(FaultLayer::new(faults.clone()));
    assert!(svc.poll_ready().is_ready());
    let t0 = Instant::now();
    let fut = tokio::spawn(svc.call(1));
    let (_, send) = handle.next_request().await.unwrap();
    assert_eq!(
        t0.elapsed(),
        Duration::from_secs(2),
        "latency injected first"
    );
    send.send_response(5);
    let err = fut.await.unwrap().unwrap_err();
    assert_eq!(
        err.downcast_ref::<InjectedFault>(),
        Some(&InjectedFault::Error)
    );
    assert_eq!((faults.injected(), faults.delayed()), (1, 1));
}

#[tokio::test]
async fn faults_with_the_same_seed_draw_the_same_sequence() {
    let draw = |seed| {
        let f = Faults::builder()
            .error_rate(0.3)
            .abort_rate(0.1)
            .latency(0.5, Duration::from_millis(1))
            .seed(seed)
            .build()
            .unwrap();
        (0..200).map(|_| f.decide()).collect::<Vec<_>>()
    };
    assert_eq!(draw(9), draw(9));
    assert_ne!(draw(9), draw(10));
    let d = draw(9);
    let errors = d
        .iter()
        .filter(|x| x.fault == Some(InjectedFault::Error))
        .count();
    let aborts = d
        .iter()
        .filter(|x| x.fault == Some(InjectedFault::Abort))
        .count();
    assert!(
        (30..=80).contains(&errors),
        "{errors} errors of 200 at 30 %"
    );
    assert!((5..=40).contains(&aborts), "{aborts} aborts of 200 at 10 %");
}

#[tokio::test]
async fn faults_around_closures() {
    use finsight_resilience::FaultError;
    let f = Faults::builder().abort_rate(1.0).seed(3).build().unwrap();
    let mut ran = false;
    let r = f
        .run(|| {
            ran = true;
            async { Ok::<_, ()>(1) }
        })
        .await;
    assert_eq!(r, Err(FaultError::Injected(InjectedFault::Abort)));
    assert!(!ran);
    f.set_enabled(false);
    assert_eq!(f.run(|| async { Ok::<_, ()>(1) }).await, Ok(1));
    assert_eq!(
        f.run(|| async { Err::<u8, _>("e") }).await,
        Err(FaultError::Inner("e"))
    );
}

#[cfg(feature = "tower-builder")]
#[tokio::test(start_paused = true)]
async fn service_builder_extension_stacks_the_layers() {
    use finsight_resilience::ServiceBuilderExt;
    let b = CircuitBreaker::builder("ext").build().unwrap();
    let faults = Faults::builder().enabled(false).build().unwrap();
    let (mock, mut handle) = mock::pair::<u8, u8>();
    let mut svc = ServiceBuilder::new()
        .retry_policy(retry(2))
        .circuit_breaker(b.clone())
        .fault_injection(faults)
        .service(mock);
    let fut = tokio::spawn(async move { svc.ready().await?.call(1).await });
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(2);
    assert_eq!(fut.await.unwrap().unwrap(), 2);
    assert_eq!(b.metrics().successes, 1);
}

#[test]
fn services_and_errors_are_send_sync_and_clone() {
    fn send_sync<T: Send + Sync>() {}
    fn clone<T: Clone>() {}
    send_sync::<CircuitBreaker>();
    send_sync::<Retry>();
    send_sync::<Faults>();
    send_sync::<CircuitOpen>();
    send_sync::<finsight_resilience::Error>();
    send_sync::<finsight_resilience::CircuitBreakerService<mock::Mock<u8, u8>>>();
    send_sync::<finsight_resilience::RetryService<mock::Mock<u8, u8>>>();
    clone::<finsight_resilience::CircuitBreakerService<mock::Mock<u8, u8>>>();
    clone::<finsight_resilience::RetryService<mock::Mock<u8, u8>>>();
    clone::<finsight_resilience::FaultService<mock::Mock<u8, u8>>>();
}

#[tokio::test(start_paused = true)]
async fn retry_layer_gives_up_on_an_open_breaker_when_told_and_retries_chosen_ok_responses() {
    use finsight_resilience::{OnCircuitOpen, RetryAction};
    let b = CircuitBreaker::builder("dep").build().unwrap();
    b.force_open();
    let give_up = Retry::builder()
        .on_circuit_open(OnCircuitOpen::GiveUp)
        .build()
        .unwrap();
    let (mock, mut handle) = mock::pair::<u8, u16>();
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(give_up))
        .layer(CircuitBreakerLayer::new(b.clone()))
        .service(mock);
    let t0 = Instant::now();
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<CircuitOpen>().map(|o| o.state()),
        Some(State::ForcedOpen)
    );
    assert_eq!(t0.elapsed(), Duration::ZERO, "no waiting");
    assert!(handle.poll_request().is_pending());

    // A classifier over the response: 503 is retried, 200 returned.
    let layer = RetryLayer::new(retry(3)).classifier(|r: &Result<u16, BoxError>| match r {
        Ok(503) => RetryAction::Retry,
        Ok(_) => RetryAction::Return,
        Err(_) => RetryAction::Retry,
    });
    let (mut svc, mut handle) = mock::spawn_layer::<u8, u16, _>(layer);
    assert!(svc.poll_ready().is_ready());
    let fut = tokio::spawn(svc.call(1));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(503);
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(200);
    assert_eq!(fut.await.unwrap().unwrap(), 200);
}
