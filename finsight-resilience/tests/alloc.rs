//! Counting-allocator proof: the closure API allocates nothing on the closed
//! path (admit, run, record), on rejection, or for a first-attempt retry
//! success. One test in this binary, so no other test allocates meanwhile.

use std::alloc::System;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use finsight_resilience::{CircuitBreaker, ManualClock, Retry, RetryBudget};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

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

    // The global counter also sees the test harness's own threads (it may
    // still be allocating right after it spawned this test), so a region is
    // measured up to five times: a path that allocated would show at least
    // 10 000 allocations in every run; one clean run proves it allocates nothing.
    let measure = |name: &str, f: &dyn Fn()| {
        let mut runs = Vec::new();
        for _ in 0..5 {
            let region = Region::new(GLOBAL);
            f();
            let stats = region.change();
            if stats.allocations == 0 && stats.reallocations == 0 {
                return;
            }
            runs.push(stats);
        }
        panic!("{name} allocated in every run: {runs:?}");
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
