//! finsight-cache next to the crates it wraps: moka (its L1), quick_cache
//! (the L1 alternative), and a raw redis-rs GET (its L2).
//!
//! * `cache/l1_hit`: `Cache::get` on an L1 hit vs a raw `get` on a
//!   `moka::future::Cache` configured like the L1 inside `Cache` (same
//!   capacity, per-entry expiry policy; target ≤ 1.3× `peer:moka`), vs moka
//!   with one global TTL, and vs quick_cache's `get` (no TTL at all).
//! * `cache/l2_hit`: `Cache::get` served by Redis (L2-only config: value +
//!   PTTL in one EVALSHA, JSON decode) vs a raw `GET` (informational).
//! * `cache/get_or_load_64_concurrent`: 64 tasks miss the same fresh key;
//!   vs moka's `get_with`. The loader-call count per key is recorded.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use finsight_benches::{Record, median, record, reset};
use finsight_cache::redis::{Invalidation, RedisOptions};
use finsight_cache::{Cache, CacheConfig, Capacity, Layers};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Quote {
    symbol: String,
    price: f64,
    volume: u64,
}

fn quote(i: u64) -> Quote {
    Quote {
        symbol: format!("SYM{i}"),
        price: 100.0 + i as f64,
        volume: i * 10,
    }
}

const KEYS: u64 = 1_000;

/// Per-entry expiry as a moka user writes it: a TTL on create and update.
struct PerEntryTtl(Duration);

impl moka::Expiry<String, Quote> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _: &String,
        _: &Quote,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(self.0)
    }

    fn expire_after_update(
        &self,
        _: &String,
        _: &Quote,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.0)
    }
}

fn l1_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cfg = CacheConfig::new("bench", "bench:", Duration::from_secs(600))
        .with_layers(Layers::L1)
        .with_capacity(Capacity::Entries(10_000));
    let ours: Cache<Quote> = rt.block_on(Cache::in_memory(cfg)).unwrap();
    // The same moka configuration as the L1 inside `Cache`: capacity and a
    // per-entry expiry policy.
    let moka: moka::future::Cache<String, Quote> = moka::future::Cache::builder()
        .max_capacity(10_000)
        .expire_after(PerEntryTtl(Duration::from_secs(600)))
        .build();
    // moka with one global TTL (cheaper reads, no per-entry TTL).
    let moka_ttl: moka::future::Cache<String, Quote> = moka::future::Cache::builder()
        .max_capacity(10_000)
        .time_to_live(Duration::from_secs(600))
        .build();
    let qc: quick_cache::sync::Cache<String, Quote> = quick_cache::sync::Cache::new(10_000);
    let keys: Vec<String> = (0..KEYS).map(|i| format!("q{i}")).collect();
    rt.block_on(async {
        for (i, k) in keys.iter().enumerate() {
            ours.set(k, &quote(i as u64)).await.unwrap();
            moka.insert(k.clone(), quote(i as u64)).await;
            moka_ttl.insert(k.clone(), quote(i as u64)).await;
            qc.insert(k.clone(), quote(i as u64));
        }
    });
    let mut g = c.benchmark_group("cache/l1_hit");
    let n = AtomicU64::new(0);
    g.bench_function("finsight", |b| {
        b.to_async(&rt).iter(|| async {
            let k = &keys[(n.fetch_add(1, SeqCst) % KEYS) as usize];
            std::hint::black_box(ours.get(k).await.unwrap().unwrap())
        })
    });
    g.bench_function("peer:moka", |b| {
        b.to_async(&rt).iter(|| async {
            let k = &keys[(n.fetch_add(1, SeqCst) % KEYS) as usize];
            std::hint::black_box(moka.get(k.as_str()).await.unwrap())
        })
    });
    g.bench_function("peer:moka-global-ttl", |b| {
        b.to_async(&rt).iter(|| async {
            let k = &keys[(n.fetch_add(1, SeqCst) % KEYS) as usize];
            std::hint::black_box(moka_ttl.get(k.as_str()).await.unwrap())
        })
    });
    g.bench_function("peer:quick_cache", |b| {
        b.to_async(&rt).iter(|| async {
            let k = &keys[(n.fetch_add(1, SeqCst) % KEYS) as usize];
            std::hint::black_box(qc.get(k.as_str()).unwrap())
        })
    });
    g.finish();

    // The same comparison interleaved (finsight batch, moka batch, ... 101
    // rounds of 5 000 gets), so that load changes on a shared machine hit
    // both sides alike; medians of the per-round ns/get.
    let (mut fs, mut ms) = (Vec::new(), Vec::new());
    rt.block_on(async {
        for round in 0..101u64 {
            let t = std::time::Instant::now();
            for i in 0..5_000u64 {
                let k = &keys[((round + i) % KEYS) as usize];
                std::hint::black_box(ours.get(k).await.unwrap().unwrap());
            }
            fs.push(t.elapsed().as_nanos() as f64 / 5_000.0);
            let t = std::time::Instant::now();
            for i in 0..5_000u64 {
                let k = &keys[((round + i) % KEYS) as usize];
                std::hint::black_box(moka.get(k.as_str()).await.unwrap());
            }
            ms.push(t.elapsed().as_nanos() as f64 / 5_000.0);
        }
    });
    record(
        &Record::new(
            "cache",
            "l1_hit interleaved (median ns/get over 101 alternating rounds)",
            median(fs),
            "ns",
            false,
        )
        .peer("moka (same config)", median(ms))
        .target("≤ 1.3× moka"),
    )
    .unwrap();
    let s = ours.stats();
    assert_eq!(s.l1.misses, 0, "every finsight get was an L1 hit");
}

fn l2_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = finsight_testkit::redis_url();
    let prefix = format!("{}:", finsight_testkit::unique("bench-l2"));
    let cfg =
        CacheConfig::new("bench-l2", &prefix, Duration::from_secs(600)).with_layers(Layers::L2);
    let ours: Cache<Quote> = rt
        .block_on(
            Cache::builder(cfg)
                .redis(
                    RedisOptions::new(&url)
                        .unwrap()
                        .invalidation(Invalidation::Off),
                )
                .build(),
        )
        .unwrap();
    let mut raw = rt
        .block_on(redis::aio::ConnectionManager::new(
            redis::Client::open(url.as_str()).unwrap(),
        ))
        .unwrap();
    rt.block_on(ours.set("k", &quote(1))).unwrap();
    let full = format!("{prefix}k");
    let mut g = c.benchmark_group("cache/l2_hit");
    g.bench_function("finsight", |b| {
        b.to_async(&rt)
            .iter(|| async { std::hint::black_box(ours.get("k").await.unwrap().unwrap()) })
    });
    g.bench_function("peer:redis", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = raw.clone();
            let full = full.clone();
            async move {
                let v: Vec<u8> = redis::cmd("GET")
                    .arg(&full)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                std::hint::black_box(v)
            }
        })
    });
    g.finish();
    rt.block_on(ours.delete("k")).unwrap();
    let _: () = rt
        .block_on(redis::cmd("PING").query_async(&mut raw))
        .map(|_: String| ())
        .unwrap();
}

fn concurrent_misses(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cfg = CacheConfig::new("bench-load", "load:", Duration::from_secs(600))
        .with_layers(Layers::L1)
        .with_capacity(Capacity::Entries(1_000_000));
    let ours: Cache<Quote> = rt.block_on(Cache::in_memory(cfg)).unwrap();
    let moka: moka::future::Cache<String, Quote> = moka::future::Cache::builder()
        .max_capacity(1_000_000)
        .build();
    let next = Arc::new(AtomicU64::new(0));

    let round_ours = |ours: Cache<Quote>, key: String| async move {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::with_capacity(64);
        for _ in 0..64 {
            let (c, k, calls) = (ours.clone(), key.clone(), Arc::clone(&calls));
            tasks.push(tokio::spawn(async move {
                c.get_or_load(&k, move || async move {
                    calls.fetch_add(1, SeqCst);
                    tokio::task::yield_now().await;
                    Ok::<_, std::io::Error>(Some(quote(7)))
                })
                .await
                .unwrap()
            }));
        }
        for t in tasks {
            std::hint::black_box(t.await.unwrap());
        }
        calls.load(SeqCst)
    };

    let mut g = c.benchmark_group("cache/get_or_load_64_concurrent");
    g.bench_function("finsight", |b| {
        b.to_async(&rt).iter(|| {
            let key = format!("k{}", next.fetch_add(1, SeqCst));
            round_ours(ours.clone(), key)
        })
    });
    g.bench_function("peer:moka", |b| {
        b.to_async(&rt).iter(|| {
            let key = format!("k{}", next.fetch_add(1, SeqCst));
            let moka = moka.clone();
            async move {
                let mut tasks = Vec::with_capacity(64);
                for _ in 0..64 {
                    let (m, k) = (moka.clone(), key.clone());
                    tasks.push(tokio::spawn(async move {
                        m.get_with(k, async {
                            tokio::task::yield_now().await;
                            quote(7)
                        })
                        .await
                    }));
                }
                for t in tasks {
                    std::hint::black_box(t.await.unwrap());
                }
            }
        })
    });
    g.finish();

    // Loader calls per key over 500 fresh keys: must be exactly 1 every time.
    let counts: Vec<usize> = rt.block_on(async {
        let mut v = Vec::new();
        for i in 0..500 {
            v.push(round_ours(ours.clone(), format!("check{i}")).await);
        }
        v
    });
    let max = counts.iter().copied().max().unwrap_or(0);
    let min = counts.iter().copied().min().unwrap_or(0);
    assert_eq!(
        (min, max),
        (1, 1),
        "loader calls per key: min {min}, max {max}"
    );
    record(
        &Record::new(
            "cache",
            "get_or_load: loader calls per key, 64 concurrent misses (max over 500 keys)",
            max as f64,
            "calls",
            false,
        )
        .target("exactly 1"),
    )
    .unwrap();
}

fn setup(_: &mut Criterion) {
    reset("cache");
}

criterion_group!(benches, setup, l1_hit, l2_hit, concurrent_misses);
criterion_main!(benches);
