//! A seeded contention simulation in the manner of the AWS Architecture Blog
//! post "Exponential Backoff And Jitter" (and its published simulator): N
//! clients each do one optimistic-concurrency write to one shared row. An
//! attempt reads the row's version, its write lands ~10 ms later, and the
//! write succeeds only if nobody else wrote in between; a failed client backs
//! off with [`Backoff::delay`] (base 5 ms, cap 2 s) and tries again.
//!
//! Run with `--nocapture` to see the table. Full and decorrelated jitter must
//! need fewer calls than plain exponential backoff.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use finsight_resilience::{Backoff, Jitter};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Read,
    Write { seen: u64 },
}

#[derive(Debug, Default, Clone, Copy)]
struct Outcome {
    calls: u64,
    completion_us: u64,
}

const MAX_ATTEMPTS_PER_CLIENT: u32 = 100_000;

fn simulate(clients: usize, jitter: Jitter, seed: u64) -> Outcome {
    let backoff =
        Backoff::exponential(Duration::from_millis(5), Duration::from_secs(2)).jitter(jitter);
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut version = 0u64;
    let mut attempts = vec![0u32; clients];
    let mut previous = vec![Duration::ZERO; clients];
    let mut queue = BinaryHeap::new();
    let mut seq = 0u64;
    for c in 0..clients {
        queue.push(Reverse((0u64, seq, c, Event::Read)));
        seq += 1;
    }
    let mut out = Outcome::default();
    while let Some(Reverse((t, _, c, ev))) = queue.pop() {
        match ev {
            Event::Read => {
                out.calls += 1;
                attempts[c] += 1;
                assert!(
                    attempts[c] < MAX_ATTEMPTS_PER_CLIENT,
                    "simulation did not converge"
                );
                let net = 8_000 + rng.random_range(0..=4_000u64); // 10 ms ± 2 ms
                queue.push(Reverse((t + net, seq, c, Event::Write { seen: version })));
                seq += 1;
            }
            Event::Write { seen } => {
                if seen == version {
                    version += 1;
                    out.completion_us = out.completion_us.max(t);
                } else {
                    let n = attempts[c] - 1;
                    let d = backoff.delay(n, previous[c], &mut rng);
                    previous[c] = d;
                    let wait = u64::try_from(d.as_micros()).unwrap();
                    queue.push(Reverse((t + wait, seq, c, Event::Read)));
                    seq += 1;
                }
            }
        }
    }
    assert_eq!(version, clients as u64, "every client wrote once");
    out
}

#[test]
fn full_and_decorrelated_jitter_need_fewer_calls_than_plain_exponential() {
    const TRIALS: u64 = 30;
    let kinds = [
        ("exponential (no jitter)", Jitter::None),
        ("equal jitter", Jitter::Equal),
        ("full jitter", Jitter::Full),
        ("decorrelated jitter", Jitter::Decorrelated),
        ("proportional +0..10 %", Jitter::Proportional),
    ];
    println!();
    println!("| clients | backoff | calls (mean of {TRIALS}) | completion ms (mean) |");
    println!("|---|---|---|---|");
    for clients in [50usize, 100] {
        let mut calls = Vec::new();
        for (name, jitter) in kinds {
            let mut total = Outcome::default();
            for trial in 0..TRIALS {
                let o = simulate(clients, jitter, 0x5eed_0000 + trial);
                total.calls += o.calls;
                total.completion_us += o.completion_us;
            }
            let mean_calls = total.calls as f64 / TRIALS as f64;
            let mean_ms = total.completion_us as f64 / TRIALS as f64 / 1000.0;
            println!("| {clients} | {name} | {mean_calls:.0} | {mean_ms:.0} |");
            calls.push((jitter, mean_calls));
        }
        let of = |j: Jitter| {
            calls
                .iter()
                .find(|(k, _)| *k == j)
                .map(|(_, c)| *c)
                .unwrap()
        };
        let plain = of(Jitter::None);
        assert!(
            of(Jitter::Full) < plain,
            "{clients} clients: full {} vs plain {plain}",
            of(Jitter::Full)
        );
        assert!(
            of(Jitter::Decorrelated) < plain,
            "{clients} clients: decorrelated {} vs plain {plain}",
            of(Jitter::Decorrelated)
        );
    }
}

#[test]
fn the_simulation_is_deterministic_for_a_seed() {
    let a = simulate(50, Jitter::Full, 7);
    let b = simulate(50, Jitter::Full, 7);
    assert_eq!((a.calls, a.completion_us), (b.calls, b.completion_us));
}
