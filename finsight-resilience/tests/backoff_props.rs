//! Property tests: every jitter kind stays within its bounds and under the cap.

use std::time::Duration;

use finsight_resilience::{Backoff, Jitter};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::SmallRng;

fn jitter() -> impl Strategy<Value = Jitter> {
    prop_oneof![
        Just(Jitter::None),
        Just(Jitter::Full),
        Just(Jitter::Equal),
        Just(Jitter::Decorrelated),
        Just(Jitter::Proportional),
    ]
}

proptest! {
    #[test]
    fn delays_respect_their_bounds_and_the_cap(
        base_ms in 1u64..5_000,
        cap_ms in 1u64..120_000,
        retries in 1u32..80,
        seed in any::<u64>(),
        j in jitter(),
    ) {
        let backoff = Backoff::exponential(Duration::from_millis(base_ms), Duration::from_millis(cap_ms)).jitter(j);
        let base = backoff.base();
        let cap = backoff.cap();
        prop_assert!(cap >= base);
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut prev = Duration::ZERO;
        for n in 0..retries {
            let v = backoff.exponential_delay(n);
            let want_v = base.checked_mul(1u32.checked_shl(n).unwrap_or(u32::MAX)).unwrap_or(cap).min(cap);
            // exponential_delay computes in f64: allow a nanosecond of rounding.
            prop_assert!(v.abs_diff(want_v) <= Duration::from_micros(1), "v {:?} want {:?}", v, want_v);
            let d = backoff.delay(n, prev, &mut rng);
            prop_assert!(d <= cap, "{:?} over cap {:?}", d, cap);
            let slack = Duration::from_micros(1);
            match j {
                Jitter::None => prop_assert_eq!(d, v),
                Jitter::Full => prop_assert!(d <= v),
                Jitter::Equal => prop_assert!(d + slack >= v / 2 && d <= v),
                Jitter::Proportional => prop_assert!(d + slack >= v && d <= cap.min(v.mul_f64(1.1) + slack)),
                Jitter::Decorrelated => {
                    let p = if prev.is_zero() { base } else { prev };
                    prop_assert!(d + slack >= base.min(cap));
                    prop_assert!(d <= cap.min((p * 3).max(base)) + slack);
                }
                _ => unreachable!(),
            }
            prev = d;
        }
    }
}
