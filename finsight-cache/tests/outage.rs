//! Redis stopped mid-run and restarted (`outage_*`: run last, one at a time).
#![cfg(feature = "redis")]

use std::time::Duration;

use finsight_cache::redis::{InvalidationStatus, RedisOptions};
use finsight_cache::{Cache, CacheConfig};
use finsight_testkit::{RedisOutage, redis_url, unique};

/// Every call must return within this bound while Redis is down (no hang).
const BOUND: Duration = Duration::from_secs(5);

async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f)
        .await
        .expect("call hung while Redis was down")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_redis_stopped_and_restarted() {
    let prefix = format!("{}:", unique("outage"));
    let cfg = CacheConfig::new("outage", &prefix, Duration::from_secs(600))
        .with_l2_timeout(Duration::from_millis(300));
    let opts = RedisOptions::new(&redis_url())
        .unwrap()
        .heartbeat(Duration::from_millis(100))
        .connect_timeout(Duration::from_millis(500));
    let c: Cache<String> = Cache::builder(cfg.clone())
        .redis(opts.clone())
        .build()
        .await
        .unwrap();
    assert_eq!(c.invalidation_status(), Some(InvalidationStatus::Tracking));
    c.set("held", &"v1".to_owned()).await.unwrap();
    assert_eq!(c.get("held").await.unwrap().as_deref(), Some("v1"));
    assert!(c.contains_local("held").await);

    let outage = tokio::task::spawn_blocking(RedisOutage::stop)
        .await
        .unwrap()
        .unwrap();

    // Down: L1 serves, misses fall back, writes report the failure; nothing hangs or panics.
    assert_eq!(bounded(c.get("held")).await.unwrap().as_deref(), Some("v1"));
    assert_eq!(bounded(c.get("never-cached")).await.unwrap(), None);
    let loaded = bounded(c.get_or_load("loaded", || async {
        Ok::<_, std::io::Error>(Some("from source".to_owned()))
    }))
    .await
    .unwrap();
    assert_eq!(loaded.as_deref(), Some("from source"));
    assert!(bounded(c.set("w", &"x".to_owned())).await.is_err());
    assert!(bounded(c.delete("w")).await.is_err());
    assert!(c.stats().l2.errors >= 2, "{:?}", c.stats());
    let mut lost = false;
    for _ in 0..100 {
        if c.invalidation_status() == Some(InvalidationStatus::Connecting) {
            lost = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(lost, "the dead invalidation link was detected");
    assert_eq!(
        bounded(c.get("held")).await.unwrap().as_deref(),
        Some("v1"),
        "L1 still serves"
    );

    tokio::task::spawn_blocking(move || outage.restore())
        .await
        .unwrap()
        .unwrap();

    // Recovery without intervention: resubscribed (L1 flushed then), writes work again.
    let mut back = false;
    for _ in 0..200 {
        if c.invalidation_status() == Some(InvalidationStatus::Tracking) {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "invalidation channel resubscribed");
    assert!(
        !c.contains_local("held").await,
        "L1 flushed after the channel came back"
    );
    let mut writes_ok = false;
    for _ in 0..100 {
        if bounded(c.set("w", &"after".to_owned())).await.is_ok() {
            writes_ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(writes_ok, "writes recovered");
    assert_eq!(c.get("w").await.unwrap().as_deref(), Some("after"));

    // Cross-instance invalidation works again.
    let other: Cache<String> = Cache::builder(cfg).redis(opts).build().await.unwrap();
    let before = c.stats().invalidations_received;
    for _ in 0..200 {
        if c.stats().invalidations_received > before || c.contains_local("w").await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(c.get("w").await.unwrap().as_deref(), Some("after"));
    let before = c.stats().invalidations_received;
    other.set("w", &"other".to_owned()).await.unwrap();
    let mut evicted = false;
    for _ in 0..200 {
        if c.stats().invalidations_received > before && !c.contains_local("w").await {
            evicted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(evicted, "other instance's write evicted L1 after recovery");
    assert_eq!(c.get("w").await.unwrap().as_deref(), Some("other"));
}
