//! The keyed registry's bounds and the health report.

use std::time::Duration;

use finsight_resilience::{BreakerRegistry, CircuitBreaker, Health, HealthStatus, State};

#[test]
fn one_breaker_per_key_shared_between_lookups() {
    let reg = BreakerRegistry::builder(CircuitBreaker::builder("template").consecutive_failures(1))
        .build()
        .unwrap();
    let a = reg.get("quotes-api");
    a.force_open();
    assert_eq!(reg.get("quotes-api").state(), State::ForcedOpen);
    assert_eq!(reg.get("quotes-api").name(), "quotes-api");
    assert_eq!(reg.get("news-api").state(), State::Closed);
    assert!(reg.get_existing("other").is_none());
    let names: Vec<_> = reg
        .metrics()
        .into_iter()
        .map(|m| m.name.to_string())
        .collect();
    assert_eq!(names, ["news-api", "quotes-api"]);
}

#[test]
fn memory_is_bounded_by_max_breakers() {
    let reg = BreakerRegistry::builder(CircuitBreaker::builder("t"))
        .max_breakers(100)
        .build()
        .unwrap();
    for i in 0..5_000 {
        reg.get(&format!("symbol-{i}"));
    }
    assert!(reg.len() <= 100, "{} breakers kept", reg.len());
}

#[test]
fn idle_breakers_are_evicted() {
    let reg = BreakerRegistry::builder(CircuitBreaker::builder("t"))
        .idle_timeout(Duration::from_millis(20))
        .build()
        .unwrap();
    reg.get("idle");
    assert_eq!(reg.len(), 1);
    // moka evicts on its own clock: poll (bounded) until it has. `len()`
    // runs pending evictions without touching (and so refreshing) the entry.
    let mut evicted = false;
    for _ in 0..300 {
        std::thread::sleep(Duration::from_millis(10));
        if reg.is_empty() {
            evicted = true;
            break;
        }
    }
    assert!(evicted, "the idle breaker was not evicted");
    assert!(reg.get_existing("idle").is_none());
}

#[test]
fn bad_registry_settings_are_rejected() {
    assert!(
        BreakerRegistry::builder(CircuitBreaker::builder("t"))
            .max_breakers(0)
            .build()
            .is_err()
    );
    assert!(
        BreakerRegistry::builder(CircuitBreaker::builder("t").consecutive_failures(0))
            .build()
            .unwrap_err()
            .to_string()
            .contains("consecutive_failures")
    );
}

#[tokio::test(start_paused = true)]
async fn health_rolls_up_checks_timeouts_and_breakers() {
    let db = CircuitBreaker::builder("db").build().unwrap();
    let health = Health::new()
        .check("redis", true, Duration::from_secs(1), || async {
            Ok::<(), String>(())
        })
        .check("search", false, Duration::from_secs(1), || async {
            Err::<(), _>("index missing")
        })
        .breaker(&db, false);
    let r = health.report().await;
    assert_eq!(
        r.status,
        HealthStatus::Degraded,
        "a non-critical check failed"
    );
    assert_eq!(r.checks[1].error.as_deref(), Some("index missing"));

    let healthy = Health::new()
        .check("redis", true, Duration::from_secs(1), || async {
            Ok::<(), String>(())
        })
        .breaker(&db, true);
    assert_eq!(healthy.report().await.status, HealthStatus::Healthy);
    db.force_open();
    let r = healthy.report().await;
    assert_eq!(
        r.status,
        HealthStatus::Unhealthy,
        "a critical breaker is open"
    );
    assert_eq!(r.breakers[0].state, State::ForcedOpen);
    db.reset();

    let slow = Health::new().check("rabbit", true, Duration::from_millis(500), || async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok::<(), String>(())
    });
    let r = slow.report().await;
    assert_eq!(r.status, HealthStatus::Unhealthy);
    assert_eq!(r.status.http_status(), 503);
    assert_eq!(r.checks[0].error.as_deref(), Some("timed out after 500 ms"));

    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["status"], "unhealthy");
    assert_eq!(json["checks"][0]["name"], "rabbit");
}

#[test]
fn health_includes_registry_breakers() {
    let reg = BreakerRegistry::builder(CircuitBreaker::builder("t"))
        .build()
        .unwrap();
    reg.get("a").force_open();
    reg.get("b");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let r = rt.block_on(Health::new().registry(&reg).report());
    assert_eq!(r.status, HealthStatus::Degraded);
    assert_eq!(r.breakers.len(), 2);
}

/// A full registry admits every new key (strict LRU): a new downstream's
/// breaker is stored and trips, however often the keys already kept are
/// used. moka's default TinyLFU admission would refuse the new keys in favour
/// of the frequently used ones, and `get` would then hand out a fresh closed
/// breaker on every lookup, one that never trips.
#[tokio::test]
async fn a_full_registry_admits_new_keys_and_their_breakers_trip() {
    const CAP: u64 = 16;
    let reg = BreakerRegistry::builder(CircuitBreaker::builder("t").consecutive_failures(1))
        .max_breakers(CAP)
        .build()
        .unwrap();
    for round in 0..50 {
        for i in 0..CAP {
            let b = reg.get(&format!("hot-{i}"));
            assert_eq!(b.state(), State::Closed, "round {round}, hot-{i}");
        }
    }
    // `len()` runs moka's pending maintenance (admission and eviction), so
    // the registry is exactly at capacity before the new keys arrive.
    assert_eq!(reg.len(), CAP);
    for i in 0..40 {
        let key = format!("new-{i}");
        let r = reg.get(&key).call(|| async { Err::<(), _>("down") }).await;
        assert!(r.is_err());
        // Let moka decide admission and eviction now, deterministically.
        assert!(reg.len() <= CAP);
        let again = reg.get(&key);
        assert_eq!(
            again.state(),
            State::Open,
            "{key}: its breaker was not kept, so it cannot trip"
        );
        assert!(reg.get_existing(&key).is_some(), "{key} was not admitted");
    }
    assert_eq!(reg.len(), CAP);
}
