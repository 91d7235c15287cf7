//! Counters per layer.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Counters of one layer, as read by [`crate::Cache::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LayerStats {
    /// Reads answered by this layer with a fresh value.
    pub hits: u64,
    /// Reads this layer could not answer.
    pub misses: u64,
    /// Reads answered with a cached "not found" (L1 only).
    pub negative_hits: u64,
    /// Reads answered with an expired value (stale-while-revalidate or stale-if-error; L1 only).
    pub stale_served: u64,
    /// Entries removed by the bound or by expiry (L1 only; Redis evicts on its own).
    pub evictions: u64,
    /// Failed or timed-out calls (L2 only).
    pub errors: u64,
}

impl LayerStats {
    /// `hits / (hits + misses)`, counting negative and stale hits as hits;
    /// `0.0` before the first read.
    pub fn hit_rate(&self) -> f64 {
        let hits = self.hits + self.negative_hits + self.stale_served;
        let total = hits + self.misses;
        if total == 0 {
            0.0
        } else {
            hits as f64 / total as f64
        }
    }
}

/// Snapshot of a cache's counters ([`crate::Cache::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// The in-process layer.
    pub l1: LayerStats,
    /// The Redis layer.
    pub l2: LayerStats,
    /// Loader calls (misses, refreshes).
    pub loads: u64,
    /// Loader calls that returned an error.
    pub load_errors: u64,
    /// Background refreshes started (refresh-ahead, early refresh, stale-while-revalidate).
    pub refreshes: u64,
    /// Callers that waited for a load another caller had started, instead of loading.
    pub coalesced_waits: u64,
    /// Invalidation messages this instance published (pub/sub fallback only:
    /// with client tracking, Redis itself sends them).
    pub invalidations_sent: u64,
    /// Invalidation messages received from Redis (keys, patterns and flushes).
    pub invalidations_received: u64,
    /// Fills (loads, refreshes, L2 backfills) dropped because their key was
    /// invalidated while they ran.
    pub fills_dropped: u64,
}

impl Stats {
    /// Share of reads answered from any cache layer: `1 − misses of the
    /// last layer / reads`.
    pub fn hit_rate(&self) -> f64 {
        let reads = self.l1.hits + self.l1.negative_hits + self.l1.stale_served + self.l1.misses;
        if reads == 0 {
            return 0.0;
        }
        // Reads that reached L2 and missed there, or that had no L2.
        let l2_reads = self.l2.hits + self.l2.misses;
        let final_misses = if l2_reads == 0 {
            self.l1.misses
        } else {
            self.l2.misses.min(reads)
        };
        1.0 - final_misses as f64 / reads as f64
    }
}

/// Threads that own a hit slot (the first 64 threads that record a hit in
/// any cache; tokio's workers in practice). Later threads share one slot.
const OWNED_SLOTS: usize = 64;

static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's index (`usize::MAX` until its first hit). Indices are
    /// never reused, so slot `i < OWNED_SLOTS` has exactly one writer.
    static THREAD_INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
}

#[inline]
fn thread_index() -> usize {
    THREAD_INDEX.with(|i| {
        let mut v = i.get();
        if v == usize::MAX {
            v = NEXT_THREAD.fetch_add(1, Relaxed);
            i.set(v);
        }
        v
    })
}

/// One thread's hit counters, on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(64))]
struct HitSlot {
    hits: AtomicU64,
    negative_hits: AtomicU64,
}

/// L1 hit counters, the only counters on the hit path. A thread that owns
/// a slot counts with a plain load and store (it is the slot's only
/// writer): no locked instruction, no cache line shared between threads.
/// Other threads `fetch_add` on the shared last slot. Reading sums the
/// slots (4 KiB per cache).
#[derive(Debug)]
pub(crate) struct HitCounters {
    slots: Box<[HitSlot]>,
}

impl Default for HitCounters {
    fn default() -> Self {
        Self {
            slots: (0..=OWNED_SLOTS).map(|_| HitSlot::default()).collect(),
        }
    }
}

impl HitCounters {
    #[inline]
    pub(crate) fn record(&self, positive: bool) {
        let i = thread_index();
        let owned = i < OWNED_SLOTS;
        let Some(slot) = self.slots.get(if owned { i } else { OWNED_SLOTS }) else {
            return;
        };
        let c = if positive {
            &slot.hits
        } else {
            &slot.negative_hits
        };
        if owned {
            c.store(c.load(Relaxed).wrapping_add(1), Relaxed);
        } else {
            c.fetch_add(1, Relaxed);
        }
    }

    fn sum(&self) -> (u64, u64) {
        self.slots.iter().fold((0, 0), |(h, n), s| {
            (
                h.wrapping_add(s.hits.load(Relaxed)),
                n.wrapping_add(s.negative_hits.load(Relaxed)),
            )
        })
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Hits and negative hits of L1.
    pub(crate) l1_hits: HitCounters,
    pub(crate) l1_misses: AtomicU64,
    pub(crate) l1_stale_served: AtomicU64,
    pub(crate) l1_evictions: AtomicU64,
    pub(crate) l2_hits: AtomicU64,
    pub(crate) l2_misses: AtomicU64,
    pub(crate) l2_errors: AtomicU64,
    pub(crate) loads: AtomicU64,
    pub(crate) load_errors: AtomicU64,
    pub(crate) refreshes: AtomicU64,
    pub(crate) coalesced_waits: AtomicU64,
    pub(crate) invalidations_sent: AtomicU64,
    pub(crate) invalidations_received: AtomicU64,
    pub(crate) fills_dropped: AtomicU64,
}

pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self) -> Stats {
        let g = |c: &AtomicU64| c.load(Relaxed);
        let (hits, negative_hits) = self.l1_hits.sum();
        Stats {
            l1: LayerStats {
                hits,
                misses: g(&self.l1_misses),
                negative_hits,
                stale_served: g(&self.l1_stale_served),
                evictions: g(&self.l1_evictions),
                errors: 0,
            },
            l2: LayerStats {
                hits: g(&self.l2_hits),
                misses: g(&self.l2_misses),
                errors: g(&self.l2_errors),
                ..LayerStats::default()
            },
            loads: g(&self.loads),
            load_errors: g(&self.load_errors),
            refreshes: g(&self.refreshes),
            coalesced_waits: g(&self.coalesced_waits),
            invalidations_sent: g(&self.invalidations_sent),
            invalidations_received: g(&self.invalidations_received),
            fills_dropped: g(&self.fills_dropped),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_from_many_threads_are_all_counted() {
        let c = std::sync::Arc::new(HitCounters::default());
        // More threads than owned slots: some share the fallback slot.
        let threads: Vec<_> = (0..OWNED_SLOTS + 8)
            .map(|t| {
                let c = std::sync::Arc::clone(&c);
                std::thread::spawn(move || {
                    for i in 0..1_000 {
                        c.record(i % 4 != 0 || t % 2 == 0);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Odd threads record a negative hit every 4th time.
        let n = (OWNED_SLOTS + 8) as u64;
        let negatives = (n / 2) * 250;
        assert_eq!(c.sum(), (n * 1_000 - negatives, negatives));
    }
}
