//! Exponential backoff with jitter: [`Backoff`] and [`Jitter`].

use std::time::Duration;

use rand::Rng;

/// How randomness is added to the exponential delay `v = min(base · 2^n, cap)`.
/// Whatever the kind, the result is then capped at `cap` again (the cap is a
/// hard bound applied after jitter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Jitter {
    /// `v` (plain exponential backoff; synchronised clients collide).
    None,
    /// Uniform in `[0, v]` (AWS "Full Jitter": the least total work).
    #[default]
    Full,
    /// `v/2 +` uniform in `[0, v/2]` (AWS "Equal Jitter").
    Equal,
    /// Uniform in `[base, 3 · previous delay]` (AWS "Decorrelated Jitter"),
    /// the first previous delay being `base`.
    Decorrelated,
    /// `v ·` (1 + uniform in `[0, 0.1]`): the Python services' "up to +10 %".
    Proportional,
}

/// Exponential backoff `min(base · 2^n, cap)` for retry `n` (0 for the first
/// retry), with [`Jitter`], capped at `cap` after jitter. `Copy`; computing a
/// delay is a few float operations and one RNG draw, no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    jitter: Jitter,
}

impl Default for Backoff {
    /// 100 ms base, 10 s cap, full jitter.
    fn default() -> Self {
        Self::exponential(Duration::from_millis(100), Duration::from_secs(10))
    }
}

impl Backoff {
    /// Exponential from `base`, capped at `cap`, with [`Jitter::Full`].
    /// A `cap` below `base` is raised to `base`.
    pub fn exponential(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap: cap.max(base),
            jitter: Jitter::Full,
        }
    }

    /// The same backoff with another jitter kind.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The base delay.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The cap.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// The jitter kind.
    pub fn jitter_kind(&self) -> Jitter {
        self.jitter
    }

    /// The un-jittered delay `min(base · 2^retry, cap)`.
    pub fn exponential_delay(&self, retry: u32) -> Duration {
        let factor = 2f64.powi(retry.min(1023) as i32);
        let v = self.base.as_secs_f64() * factor;
        if v >= self.cap.as_secs_f64() {
            self.cap
        } else {
            Duration::from_secs_f64(v)
        }
    }

    /// The delay before retry `retry` (0-based). `previous` is the delay
    /// returned for the previous retry (only [`Jitter::Decorrelated`] uses
    /// it; pass `Duration::ZERO` for the first). Always `<= cap`.
    pub fn delay<R: Rng + ?Sized>(&self, retry: u32, previous: Duration, rng: &mut R) -> Duration {
        let v = self.exponential_delay(retry).as_secs_f64();
        let d = match self.jitter {
            Jitter::None => v,
            Jitter::Full => v * rng.random::<f64>(),
            Jitter::Equal => v / 2.0 + (v / 2.0) * rng.random::<f64>(),
            Jitter::Decorrelated => {
                let base = self.base.as_secs_f64();
                let prev = if previous.is_zero() {
                    base
                } else {
                    previous.as_secs_f64()
                };
                let hi = (prev * 3.0).max(base);
                base + (hi - base) * rng.random::<f64>()
            }
            Jitter::Proportional => v * (1.0 + 0.1 * rng.random::<f64>()),
        };
        let cap = self.cap.as_secs_f64();
        if d >= cap || !d.is_finite() {
            self.cap
        } else {
            Duration::from_secs_f64(d.max(0.0))
        }
    }
}
