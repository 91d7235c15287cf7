//! Counting-allocator proof: the closure API allocates nothing on the closed
//! path (admit, run, record), on rejection, or for a first-attempt retry
//! success. Counted per thread (`allocation-counter`), so the test harness's
//! own threads never show up in the count.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use finsight_resilience::{CircuitBreaker, ManualClock, Retry, RetryBudget};

fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

#[test]
fn closed_path_rejection_and_first_success_retry_allocate_nothing() {
    let clock = ManualClock::new();
    let breaker = CircuitBreaker::builder("alloc")
        .clock(clock.clone())
        .build()
        .unwrap();
    let open = CircuitBreaker::builder("open")
        .clock(clock)
        .build()
        .unwrap();
    open.force_open();
    let budget =
        RetryBudget::with_clock(Duration::from_secs(10), 10, 0.2, ManualClock::new()).unwrap();
    let retry = Retry::builder().budget(budget).seed(1).build().unwrap();

    // Warm up (lazy statics, tracing callsite registration).
    for _ in 0..10 {
        block_on(breaker.call(|| async { Ok::<u64, ()>(1) })).unwrap();
        block_on(open.call(|| async { Ok::<u64, ()>(1) })).unwrap_err();
        block_on(retry.run(|| async { Ok::<u64, ()>(1) })).unwrap();
    }

    // Each path runs 10 000 times; any allocation on it shows in the count
    // (`count_total` counts reallocations too).
    let measure = |name: &str, f: &dyn Fn()| {
        let stats = allocation_counter::measure(f);
        assert_eq!(stats.count_total, 0, "{name} allocated: {stats:?}");
    };
    measure("closed path", &|| {
        let mut sum = 0;
        for i in 0..10_000u64 {
            sum += block_on(breaker.call(|| async move { Ok::<u64, ()>(i) })).unwrap();
            let _ = block_on(breaker.call(|| async { Err::<u64, ()>(()) })); // failure, below threshold
            sum += block_on(breaker.call(|| async move { Ok::<u64, ()>(i) })).unwrap(); // resets the count
        }
        assert_eq!(sum, 2 * (0..10_000u64).sum::<u64>());
    });
    measure("rejection", &|| {
        for _ in 0..10_000 {
            assert!(block_on(open.call(|| async { Ok::<u64, ()>(1) })).is_err());
        }
    });
    measure("retry first success", &|| {
        for i in 0..10_000u64 {
            assert_eq!(
                block_on(retry.run(|| async move { Ok::<u64, ()>(i) })).unwrap(),
                i
            );
        }
    });
    assert!(breaker.metrics().successes >= 20_010);
    assert_eq!(breaker.state(), finsight_resilience::State::Closed);
}
