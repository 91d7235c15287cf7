//! L1-only behaviour on tokio's paused clock (no Redis needed).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use finsight_cache::{Cache, CacheConfig, Capacity, Clock, Error, Layers};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::{advance, sleep};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Quote {
    symbol: String,
    price: f64,
}

fn q(symbol: &str, price: f64) -> Quote {
    Quote {
        symbol: symbol.into(),
        price,
    }
}

fn cfg(ttl_secs: u64) -> CacheConfig {
    CacheConfig::new("quotes", "quote:", Duration::from_secs(ttl_secs)).with_layers(Layers::L1)
}

async fn cache(c: CacheConfig) -> Cache<Quote> {
    Cache::builder(c)
        .seed(7)
        .clock(Clock::Tokio)
        .build()
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn get_set_delete_and_ttl() {
    let c = cache(cfg(10)).await;
    assert_eq!(c.get("AAPL").await.unwrap(), None);
    c.set("AAPL", &q("AAPL", 1.0)).await.unwrap();
    assert_eq!(c.get("AAPL").await.unwrap(), Some(q("AAPL", 1.0)));
    c.delete("AAPL").await.unwrap();
    assert_eq!(c.get("AAPL").await.unwrap(), None);
    c.set("AAPL", &q("AAPL", 2.0)).await.unwrap();
    advance(Duration::from_millis(9_999)).await;
    assert!(c.get("AAPL").await.unwrap().is_some());
    advance(Duration::from_millis(2)).await;
    assert_eq!(c.get("AAPL").await.unwrap(), None, "expired after ttl");
    let s = c.stats();
    assert_eq!(s.l1.hits, 2);
    assert_eq!(s.l1.misses, 3);
    assert!((s.l1.hit_rate() - 0.4).abs() < 1e-9);
}

#[tokio::test(start_paused = true)]
async fn get_or_load_64_concurrent_misses_run_the_loader_once() {
    let c = cache(cfg(60)).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let c = c.clone();
        let calls = Arc::clone(&calls);
        tasks.push(tokio::spawn(async move {
            c.get_or_load("MSFT", move || async move {
                calls.fetch_add(1, SeqCst);
                sleep(Duration::from_millis(100)).await;
                Ok::<_, std::io::Error>(Some(q("MSFT", 3.0)))
            })
            .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), Some(q("MSFT", 3.0)));
    }
    assert_eq!(calls.load(SeqCst), 1);
    let s = c.stats();
    assert_eq!(s.loads, 1);
    assert_eq!(s.coalesced_waits + s.l1.hits, 63, "{s:?}");
    assert!(s.coalesced_waits > 0, "{s:?}");
}

/// Fast loaders on a multi-threaded runtime: late callers can miss L1 just
/// before the fill lands and reach the flight map just after the flight
/// finished. They must still not run the loader a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_callers_after_a_finished_flight_do_not_load_again() {
    let c = cache(cfg(60)).await;
    for i in 0..300 {
        let key = format!("late{i}");
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::with_capacity(64);
        for _ in 0..64 {
            let (c, key, calls) = (c.clone(), key.clone(), Arc::clone(&calls));
            tasks.push(tokio::spawn(async move {
                c.get_or_load(&key, move || async move {
                    calls.fetch_add(1, SeqCst);
                    tokio::task::yield_now().await;
                    Ok::<_, std::io::Error>(Some(q("MSFT", 3.0)))
                })
                .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), Some(q("MSFT", 3.0)));
        }
        assert_eq!(calls.load(SeqCst), 1, "key {key}");
    }
}

#[tokio::test(start_paused = true)]
async fn loader_errors_are_shared_and_not_cached() {
    let c = cache(cfg(60)).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let k = Arc::clone(&calls);
    let err = c
        .get_or_load("X", move || async move {
            k.fetch_add(1, SeqCst);
            Err::<Option<Quote>, _>(std::io::Error::other("db down"))
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Load { .. }), "{err}");
    assert!(err.to_string().contains("db down"), "{err}");
    let k = Arc::clone(&calls);
    let v = c
        .get_or_load("X", move || async move {
            k.fetch_add(1, SeqCst);
            Ok::<_, std::io::Error>(Some(q("X", 1.0)))
        })
        .await
        .unwrap();
    assert_eq!(v, Some(q("X", 1.0)));
    assert_eq!(calls.load(SeqCst), 2, "the error was not cached");
    assert_eq!(c.stats().load_errors, 1);
}

#[tokio::test(start_paused = true)]
async fn negative_results_are_cached_for_the_negative_ttl() {
    let c = cache(cfg(60).with_negative_ttl(Duration::from_secs(5))).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let load = |calls: Arc<AtomicUsize>| {
        move || async move {
            calls.fetch_add(1, SeqCst);
            Ok::<Option<Quote>, std::io::Error>(None)
        }
    };
    assert_eq!(
        c.get_or_load("NOPE", load(Arc::clone(&calls)))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        c.get_or_load("NOPE", load(Arc::clone(&calls)))
            .await
            .unwrap(),
        None
    );
    assert_eq!(calls.load(SeqCst), 1);
    assert_eq!(c.stats().l1.negative_hits, 1);
    advance(Duration::from_millis(5_001)).await;
    assert_eq!(
        c.get_or_load("NOPE", load(Arc::clone(&calls)))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        calls.load(SeqCst),
        2,
        "negative entry expired after its own ttl"
    );
}

#[tokio::test(start_paused = true)]
async fn refresh_ahead_serves_the_current_value_and_reloads_in_background() {
    // trading_data: 60 s, refresh once less than 20 % (12 s) is left.
    let c = cache(CacheConfig::trading_data().with_layers(Layers::L1)).await;
    let version = Arc::new(AtomicUsize::new(0));
    let loader = |version: Arc<AtomicUsize>| {
        move || async move {
            let v = version.fetch_add(1, SeqCst) as f64;
            sleep(Duration::from_millis(200)).await;
            Ok::<_, std::io::Error>(Some(q("T", v)))
        }
    };
    assert_eq!(
        c.get_or_load("T", loader(Arc::clone(&version)))
            .await
            .unwrap(),
        Some(q("T", 0.0))
    );
    advance(Duration::from_secs(47)).await; // 13 s left: no refresh yet
    assert_eq!(
        c.get_or_load("T", loader(Arc::clone(&version)))
            .await
            .unwrap(),
        Some(q("T", 0.0))
    );
    assert_eq!(c.stats().refreshes, 0);
    advance(Duration::from_secs(2)).await; // 11 s left: refresh
    assert_eq!(
        c.get_or_load("T", loader(Arc::clone(&version)))
            .await
            .unwrap(),
        Some(q("T", 0.0)),
        "served the current value at once"
    );
    assert_eq!(c.stats().refreshes, 1);
    // A second hit while the refresh runs does not start another one.
    assert_eq!(
        c.get_or_load("T", loader(Arc::clone(&version)))
            .await
            .unwrap(),
        Some(q("T", 0.0))
    );
    sleep(Duration::from_millis(300)).await;
    assert_eq!(
        c.get("T").await.unwrap(),
        Some(q("T", 1.0)),
        "refreshed value"
    );
    let s = c.stats();
    assert_eq!((s.loads, s.refreshes), (2, 1), "{s:?}");
    // The refreshed entry lives a full TTL from its reload.
    advance(Duration::from_secs(55)).await;
    assert_eq!(c.get("T").await.unwrap(), Some(q("T", 1.0)));
}

#[tokio::test(start_paused = true)]
async fn early_refresh_fires_near_expiry_when_loads_are_slow() {
    let c = cache(cfg(60).with_early_refresh(1.0)).await;
    let version = Arc::new(AtomicUsize::new(0));
    let loader = |version: Arc<AtomicUsize>| {
        move || async move {
            let v = version.fetch_add(1, SeqCst) as f64;
            sleep(Duration::from_secs(10)).await; // δ = 10 s
            Ok::<_, std::io::Error>(Some(q("E", v)))
        }
    };
    c.get_or_load("E", loader(Arc::clone(&version)))
        .await
        .unwrap();
    // 1 s before expiry: P(refresh) per read = P(-ln u >= 0.1) ≈ 0.9.
    advance(Duration::from_secs(59)).await;
    let mut reads = 0;
    while c.stats().refreshes == 0 && reads < 20 {
        assert_eq!(
            c.get_or_load("E", loader(Arc::clone(&version)))
                .await
                .unwrap(),
            Some(q("E", 0.0))
        );
        reads += 1;
    }
    assert_eq!(
        c.stats().refreshes,
        1,
        "an early refresh started within 20 reads"
    );
    sleep(Duration::from_secs(11)).await;
    assert_eq!(c.get("E").await.unwrap(), Some(q("E", 1.0)));
}

#[tokio::test(start_paused = true)]
async fn stale_while_revalidate_and_stale_if_error_up_to_the_hard_limit() {
    let c = cache(cfg(10).with_stale(Duration::from_secs(5), Duration::from_secs(30))).await;
    let ok = |p: f64| move || async move { Ok::<_, std::io::Error>(Some(q("S", p))) };
    let fail = || async { Err::<Option<Quote>, _>(std::io::Error::other("source down")) };
    c.get_or_load("S", ok(1.0)).await.unwrap();

    // Expired 2 s ago, within the 5 s revalidate window: stale now, fresh soon.
    advance(Duration::from_secs(12)).await;
    assert_eq!(
        c.get_or_load("S", ok(2.0)).await.unwrap(),
        Some(q("S", 1.0))
    );
    assert_eq!(c.stats().l1.stale_served, 1);
    sleep(Duration::from_millis(10)).await;
    assert_eq!(c.get("S").await.unwrap(), Some(q("S", 2.0)));

    // Expired 20 s ago (past revalidate, within if-error): the loader fails, stale is served.
    advance(Duration::from_secs(30)).await;
    assert_eq!(c.get_or_load("S", fail).await.unwrap(), Some(q("S", 2.0)));
    assert_eq!(c.stats().l1.stale_served, 2);
    assert_eq!(c.stats().load_errors, 1);

    // Past the hard limit (expired 31 s ago): the error comes through.
    advance(Duration::from_secs(11)).await;
    let err = c.get_or_load("S", fail).await.unwrap_err();
    assert!(err.to_string().contains("source down"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_fill_that_raced_an_invalidation_is_not_stored() {
    let c = cache(cfg(60)).await;
    for invalidate_with_set in [true, false] {
        let started = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let (s, r) = (Arc::clone(&started), Arc::clone(&release));
        let loading = {
            let c = c.clone();
            tokio::spawn(async move {
                c.get_or_load("R", move || async move {
                    s.notify_one();
                    r.notified().await;
                    Ok::<_, std::io::Error>(Some(q("R", 0.0))) // read before the write: old
                })
                .await
            })
        };
        started.notified().await;
        if invalidate_with_set {
            c.set("R", &q("R", 9.0)).await.unwrap();
        } else {
            c.delete("R").await.unwrap();
        }
        release.notify_one();
        assert_eq!(
            loading.await.unwrap().unwrap(),
            Some(q("R", 0.0)),
            "the caller gets its load"
        );
        let expected = invalidate_with_set.then(|| q("R", 9.0));
        assert_eq!(c.get("R").await.unwrap(), expected, "no stale value in L1");
        c.delete("R").await.unwrap();
    }
    assert_eq!(c.stats().fills_dropped, 2);
}

#[tokio::test(start_paused = true)]
async fn ttl_jitter_spreads_expiry() {
    let c = cache(cfg(100).with_jitter(0.2)).await;
    for i in 0..200 {
        c.set(&format!("k{i}"), &q("J", i as f64)).await.unwrap();
    }
    advance(Duration::from_secs(100)).await;
    let mut alive = 0;
    for i in 0..200 {
        alive += usize::from(c.get(&format!("k{i}")).await.unwrap().is_some());
    }
    // TTLs are uniform in [80 s, 120 s]: about half are still alive at 100 s.
    assert!((50..150).contains(&alive), "alive = {alive}");
    advance(Duration::from_secs(21)).await;
    for i in 0..200 {
        assert_eq!(c.get(&format!("k{i}")).await.unwrap(), None);
    }
}

#[tokio::test]
async fn l1_is_bounded_by_entries_and_by_bytes() {
    let c = cache(cfg(600).with_capacity(Capacity::Entries(100))).await;
    for i in 0..1_000 {
        c.set(&format!("k{i}"), &q("B", i as f64)).await.unwrap();
    }
    c.run_pending_tasks().await;
    assert!(c.l1_entry_count() <= 100, "{}", c.l1_entry_count());
    assert!(c.stats().l1.evictions >= 900, "{:?}", c.stats());

    let c = cache(cfg(600).with_capacity(Capacity::Bytes(10_000))).await;
    for i in 0..1_000 {
        c.set(&format!("k{i:04}"), &q("BYTES", i as f64))
            .await
            .unwrap();
    }
    c.run_pending_tasks().await;
    // Each entry weighs 5 (key) + ~30 (JSON) bytes: at most ~330 fit.
    assert!(c.l1_entry_count() <= 10_000 / 30, "{}", c.l1_entry_count());
}

#[tokio::test(start_paused = true)]
async fn invalidate_pattern_removes_matching_l1_entries() {
    let c = cache(cfg(60)).await;
    for k in [
        "user:1:profile",
        "user:2:profile",
        "user:1:prefs",
        "order:1",
    ] {
        c.set(k, &q(k, 1.0)).await.unwrap();
    }
    c.invalidate_pattern("user:*:profile").await.unwrap();
    assert_eq!(c.get("user:1:profile").await.unwrap(), None);
    assert_eq!(c.get("user:2:profile").await.unwrap(), None);
    assert!(c.get("user:1:prefs").await.unwrap().is_some());
    assert!(c.get("order:1").await.unwrap().is_some());
}

#[tokio::test]
async fn bad_configuration_is_rejected_at_build() {
    let err = Cache::<Quote>::in_memory(cfg(60).with_jitter(2.0))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err}");
    assert!(err.to_string().contains("jitter"));
}

#[test]
fn public_types_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Cache<Quote>>();
    assert_send_sync::<Error>();
    assert_send_sync::<CacheConfig>();
}

#[tokio::test]
async fn system_clock_entries_expire_with_moka_expiry() {
    // Default clock: a fast hit reads no clock; moka's per-entry expiry is the TTL.
    let c: Cache<Quote> = Cache::in_memory(
        CacheConfig::new("sys", "sys:", Duration::from_millis(150)).with_layers(Layers::L1),
    )
    .await
    .unwrap();
    c.set("k", &q("K", 1.0)).await.unwrap();
    assert_eq!(c.get("k").await.unwrap(), Some(q("K", 1.0)));
    let mut expired = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if c.get("k").await.unwrap().is_none() {
            expired = true;
            break;
        }
    }
    assert!(
        expired,
        "entry expired (bounded wait: 2 s for a 150 ms TTL)"
    );
    // A negative entry expires the same way.
    let c: Cache<Quote> = Cache::in_memory(cfg(60).with_negative_ttl(Duration::from_millis(100)))
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut reloaded = false;
    for _ in 0..100 {
        let k = Arc::clone(&calls);
        c.get_or_load("none", move || async move {
            k.fetch_add(1, SeqCst);
            Ok::<Option<Quote>, std::io::Error>(None)
        })
        .await
        .unwrap();
        if calls.load(SeqCst) == 2 {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reloaded, "negative entry expired and the loader ran again");
    assert!(c.stats().l1.negative_hits >= 1);
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_get_or_load_leaves_no_load_behind() {
    let c = cache(cfg(60)).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let canary = Arc::new(());
    let slow = |calls: Arc<AtomicUsize>, canary: Arc<()>| {
        move || async move {
            let _held = canary;
            calls.fetch_add(1, SeqCst);
            sleep(Duration::from_secs(10)).await;
            Ok::<_, std::io::Error>(Some(q("C", 1.0)))
        }
    };
    // The only caller gives up: its load is dropped with it.
    let gave_up = tokio::time::timeout(
        Duration::from_secs(1),
        c.get_or_load("C", slow(Arc::clone(&calls), Arc::clone(&canary))),
    )
    .await;
    assert!(gave_up.is_err());
    assert_eq!(Arc::strong_count(&canary), 1, "abandoned load dropped");
    // The next caller loads afresh instead of joining a load nobody drives.
    let v = c
        .get_or_load("C", slow(Arc::clone(&calls), Arc::clone(&canary)))
        .await
        .unwrap();
    assert_eq!(v, Some(q("C", 1.0)));
    assert_eq!(calls.load(SeqCst), 2);

    // Of two callers of one load, one gives up: the other gets the value of
    // that same load.
    let c2 = c.clone();
    let (calls2, canary2) = (Arc::clone(&calls), Arc::clone(&canary));
    let patient = tokio::spawn(async move { c2.get_or_load("D", slow(calls2, canary2)).await });
    sleep(Duration::from_millis(1)).await; // the spawned caller leads
    let gave_up = tokio::time::timeout(
        Duration::from_secs(1),
        c.get_or_load("D", slow(Arc::clone(&calls), Arc::clone(&canary))),
    )
    .await;
    assert!(gave_up.is_err());
    assert_eq!(patient.await.unwrap().unwrap(), Some(q("C", 1.0)));
    assert_eq!(calls.load(SeqCst), 3, "one load for both callers");
    assert_eq!(c.stats().coalesced_waits, 1);
    assert_eq!(Arc::strong_count(&canary), 1);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_handle_cancels_background_refreshes() {
    // trading_data: 60 s, refresh once less than 12 s is left.
    let c = cache(CacheConfig::trading_data().with_layers(Layers::L1)).await;
    assert_eq!(alive_tasks(), 0, "an L1-only cache runs no task of its own");
    let ok = || async { Ok::<_, std::io::Error>(Some(q("T", 0.0))) };
    c.get_or_load("T", ok).await.unwrap();
    advance(Duration::from_secs(49)).await;
    let canary = Arc::new(());
    let held = Arc::clone(&canary);
    let v = c
        .get_or_load("T", move || async move {
            let _held = held;
            std::future::pending::<()>().await;
            Ok::<_, std::io::Error>(None)
        })
        .await
        .unwrap();
    assert_eq!(v, Some(q("T", 0.0)));
    assert_eq!(c.stats().refreshes, 1);
    sleep(Duration::from_millis(1)).await;
    assert_eq!(alive_tasks(), 1, "the refresh task");
    assert_eq!(Arc::strong_count(&canary), 2);

    drop(c);
    sleep(Duration::from_millis(1)).await;
    assert_eq!(alive_tasks(), 0, "refresh task ended");
    assert_eq!(Arc::strong_count(&canary), 1, "its load was dropped");
}
