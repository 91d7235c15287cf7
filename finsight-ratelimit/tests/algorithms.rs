//! Property tests: every algorithm against a simple reference model under
//! adversarial arrivals, plus the exactness of `remaining` and `retry_us`.

use std::collections::HashMap;
use std::time::Duration;

use finsight_ratelimit::{Algorithm, Policy, Quota};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Case {
    limit: u64,
    window_us: u64,
    burst: u64,
    /// (gap before the request in µs, cost)
    arrivals: Vec<(u64, u64)>,
}

/// Arrivals that hit window edges, come in bursts at one instant, trickle at
/// the steady rate, or pause for whole windows.
fn case() -> impl Strategy<Value = Case> {
    (1u64..20, 1_000u64..5_000_000, 0u64..6).prop_flat_map(|(limit, window_us, burst)| {
        let interval = window_us.div_ceil(limit);
        let gap = prop_oneof![
            4 => Just(0u64),
            3 => 0..interval * 2,
            2 => Just(interval),
            1 => Just(window_us),
            1 => Just(window_us - 1),
            1 => 0..window_us * 3,
            1 => Just(1u64),
        ];
        let cost = prop_oneof![6 => Just(1u64), 2 => 1u64..4, 1 => Just(limit + burst), 1 => Just(limit + burst + 1)];
        proptest::collection::vec((gap, cost), 1..150).prop_map(move |arrivals| Case {
            limit,
            window_us,
            burst,
            arrivals,
        })
    })
}

const START: u64 = 1_700_000_000_000_000;

fn run(alg: Algorithm, c: &Case) -> (Policy, Vec<(u64, u64, bool)>) {
    let p = Policy::new(
        Quota::per(c.limit, Duration::from_micros(c.window_us))
            .burst(c.burst)
            .algorithm(alg),
    )
    .unwrap();
    let mut now = START + 12_345;
    let mut s = p.new_state(now);
    let mut out = vec![];
    for &(gap, cost) in &c.arrivals {
        now += gap;
        let v = p.decide(&mut s, now, cost);
        out.push((now, cost, v.allowed));
    }
    (p, out)
}

/// Reference for the bucket family: a token bucket with exact integer credit.
fn bucket_reference(p: &Policy, c: &Case) -> Vec<bool> {
    let full = p.capacity() * p.interval_us();
    let mut credit = full;
    let mut last = START + 12_345;
    let mut now = last;
    c.arrivals
        .iter()
        .map(|&(gap, cost)| {
            now += gap;
            credit = (credit + (now - last)).min(full);
            last = now;
            if credit >= cost * p.interval_us() {
                credit -= cost * p.interval_us();
                true
            } else {
                false
            }
        })
        .collect()
}

fn admitted(out: &[(u64, u64, bool)]) -> Vec<(u64, u64)> {
    out.iter()
        .filter(|x| x.2)
        .map(|&(t, c, _)| (t, c))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn gcra_token_and_leaky_bucket_match_the_reference_and_the_rate_bound(c in case()) {
        for alg in [Algorithm::Gcra, Algorithm::TokenBucket, Algorithm::LeakyBucket] {
            let (p, out) = run(alg, &c);
            let expected = bucket_reference(&p, &c);
            let got: Vec<bool> = out.iter().map(|x| x.2).collect();
            prop_assert_eq!(&got, &expected, "{:?}", alg);
            // Promise: any interval [a, b] admits at most capacity + ⌊(b - a) / interval⌋.
            let adm = admitted(&out);
            for i in 0..adm.len() {
                let mut sum = 0;
                for j in i..adm.len() {
                    sum += adm[j].1;
                    let bound = p.capacity() + (adm[j].0 - adm[i].0) / p.interval_us();
                    prop_assert!(sum <= bound, "{:?}: {} admitted in {} µs, bound {}", alg, sum, adm[j].0 - adm[i].0, bound);
                }
            }
        }
    }

    #[test]
    fn fixed_window_matches_the_reference_and_never_exceeds_capacity_per_window(c in case()) {
        let (p, out) = run(Algorithm::FixedWindow, &c);
        let mut counts: HashMap<u64, u64> = HashMap::new();
        for &(t, cost, allowed) in &out {
            let n = counts.entry(t / c.window_us).or_default();
            let expect = *n + cost <= p.capacity();
            prop_assert_eq!(allowed, expect);
            if allowed { *n += cost; }
        }
        prop_assert!(counts.values().all(|&n| n <= c.limit + c.burst));
    }

    #[test]
    fn sliding_log_matches_the_reference_and_never_exceeds_capacity_in_any_window(c in case()) {
        let (p, out) = run(Algorithm::SlidingWindowLog, &c);
        let mut log: Vec<(u64, u64)> = vec![];
        for &(t, cost, allowed) in &out {
            let in_window: u64 = log.iter().filter(|(ts, _)| ts + c.window_us > t).map(|x| x.1).sum();
            prop_assert_eq!(allowed, in_window + cost <= p.capacity());
            if allowed { log.push((t, cost)); }
        }
        // Any interval of length window (ending at an admission) holds ≤ capacity.
        for &(t, _) in &log {
            let sum: u64 = log.iter().filter(|(ts, _)| *ts <= t && ts + c.window_us > t).map(|x| x.1).sum();
            prop_assert!(sum <= c.limit + c.burst);
        }
    }

    #[test]
    fn sliding_counter_matches_the_reference_and_bounds_every_aligned_window(c in case()) {
        let (p, out) = run(Algorithm::SlidingWindowCounter, &c);
        let w = c.window_us;
        let mut counts: HashMap<u64, u64> = HashMap::new();
        for &(t, cost, allowed) in &out {
            let idx = t / w;
            let prev = counts.get(&(idx - 1)).copied().unwrap_or(0);
            let cur = counts.get(&idx).copied().unwrap_or(0);
            let estimate = prev * (w - (t - idx * w)) / w + cur;
            prop_assert_eq!(allowed, estimate + cost <= p.capacity());
            if allowed { *counts.entry(idx).or_default() += cost; }
        }
        prop_assert!(counts.values().all(|&n| n <= c.limit + c.burst));
    }

    /// `remaining` is real: exactly that many unit requests pass at the same
    /// instant; `retry_us` is exact: one µs earlier is still rejected, at
    /// retry the same request passes.
    #[test]
    fn remaining_and_retry_after_are_exact(c in case(), alg_i in 0usize..6) {
        let alg = Algorithm::ALL[alg_i];
        let p = Policy::new(Quota::per(c.limit, Duration::from_micros(c.window_us)).burst(c.burst).algorithm(alg)).unwrap();
        let mut now = START + 777;
        let mut s = p.new_state(now);
        for &(gap, cost) in &c.arrivals {
            now += gap;
            let v = p.decide(&mut s, now, cost);
            if v.allowed {
                let mut probe = s.clone();
                for _ in 0..v.remaining {
                    prop_assert!(p.decide(&mut probe, now, 1).allowed, "{:?}: remaining {} overstated", alg, v.remaining);
                }
                prop_assert!(!p.decide(&mut probe, now, 1).allowed, "{:?}: remaining {} understated", alg, v.remaining);
            } else if cost > p.capacity() {
                prop_assert_eq!(v.retry_us, None);
            } else {
                let r = v.retry_us.expect("a satisfiable request gets a retry time");
                prop_assert!(r >= 1);
                prop_assert!(p.peek(&s, now + r, cost).allowed, "{:?}: not admitted at retry {}", alg, r);
                if r > 1 {
                    prop_assert!(!p.peek(&s, now + r - 1, cost).allowed, "{:?}: retry {} too late", alg, r);
                }
            }
        }
    }

    /// A refund after an admission restores the previous verdict.
    #[test]
    fn refund_restores_capacity(c in case(), alg_i in 0usize..6) {
        let alg = Algorithm::ALL[alg_i];
        let p = Policy::new(Quota::per(c.limit, Duration::from_micros(c.window_us)).burst(c.burst).algorithm(alg)).unwrap();
        let mut now = START;
        let mut s = p.new_state(now);
        for &(gap, cost) in &c.arrivals {
            now += gap;
            let before = p.peek(&s, now, 1);
            if p.decide(&mut s, now, cost).allowed {
                p.refund(&mut s, now, cost);
                let after = p.peek(&s, now, 1);
                prop_assert_eq!(before.allowed, after.allowed, "{:?}", alg);
                prop_assert_eq!(before.remaining, after.remaining, "{:?}", alg);
            }
        }
    }
}

#[test]
fn invalid_quotas_are_rejected_with_a_reason() {
    let e = Policy::new(Quota::per(0, Duration::from_secs(1))).unwrap_err();
    assert!(e.to_string().contains("limit must be at least 1"), "{e}");
    let e = Policy::new(Quota::per(2_000_000, Duration::from_secs(1))).unwrap_err();
    assert!(
        e.to_string()
            .contains("faster than one request per microsecond"),
        "{e}"
    );
    let e = Policy::new(
        Quota::per(1_000_000_000, Duration::from_secs(86_400))
            .algorithm(Algorithm::SlidingWindowCounter),
    )
    .unwrap_err();
    assert!(e.to_string().contains("2^53"), "{e}");
}

#[test]
fn idle_state_is_equivalent_to_a_fresh_one() {
    for alg in Algorithm::ALL {
        let p = Policy::new(
            Quota::per(5, Duration::from_secs(1))
                .burst(1)
                .algorithm(alg),
        )
        .unwrap();
        let mut s = p.new_state(START);
        for _ in 0..4 {
            p.decide(&mut s, START, 1);
        }
        assert!(!p.is_idle(&s, START), "{alg:?}");
        let later = START + 3_000_000;
        assert!(p.is_idle(&s, later), "{alg:?}");
        assert_eq!(
            p.peek(&s, later, 1),
            p.peek(&p.new_state(later), later, 1),
            "{alg:?}"
        );
    }
}
