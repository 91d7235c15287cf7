//! Bus and cache connectivity as health checks.
#![cfg(all(feature = "health-bus", feature = "health-cache"))]

use std::time::Duration;

use finsight_adapters::health::{HealthBusExt, HealthCacheExt};
use finsight_bus::{Bus, MemoryBroker, Topology};
use finsight_cache::redis::RedisOptions;
use finsight_cache::{Cache, CacheConfig};
use finsight_resilience::{Health, HealthStatus};

#[tokio::test]
async fn bus_check_follows_the_connection() {
    let broker = MemoryBroker::new();
    let bus = Bus::connect(broker.clone(), Topology::finsight(), "svc")
        .await
        .unwrap();
    let health = Health::new()
        .bus_check("bus", &bus, false, Duration::from_secs(1))
        .bus_check("bus-critical", &bus, true, Duration::from_secs(1));
    assert_eq!(health.report().await.status, HealthStatus::Healthy);

    broker.set_offline(true);
    let report = health.report().await;
    assert_eq!(report.status, HealthStatus::Unhealthy);
    assert_eq!(report.checks[0].status, HealthStatus::Degraded);
    assert!(
        report.checks[0]
            .error
            .as_deref()
            .unwrap()
            .contains("Disconnected")
    );

    broker.set_offline(false);
    assert_eq!(health.report().await.status, HealthStatus::Healthy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_check_is_healthy_with_a_live_redis_link_and_without_redis() {
    let prefix = format!("{}:", finsight_testkit::unique("adapters-health"));
    let cfg = CacheConfig::new("health", prefix, Duration::from_secs(30));
    let with_redis: Cache<String> = Cache::builder(cfg.clone())
        .redis(RedisOptions::new(&finsight_testkit::redis_url()).unwrap())
        .build()
        .await
        .unwrap();
    let in_memory: Cache<String> = Cache::in_memory(cfg).await.unwrap();
    let health = Health::new()
        .cache_check("cache-redis", &with_redis, false)
        .cache_check("cache-memory", &in_memory, false);
    let report = health.report().await;
    assert_eq!(report.status, HealthStatus::Healthy, "{report:?}");
    assert_eq!(report.checks.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_cache_check_degraded_while_redis_stopped() {
    let prefix = format!("{}:", finsight_testkit::unique("adapters-outage"));
    let cache: Cache<String> =
        Cache::builder(CacheConfig::new("health", prefix, Duration::from_secs(30)))
            .redis(
                RedisOptions::new(&finsight_testkit::redis_url())
                    .unwrap()
                    .heartbeat(Duration::from_millis(100)),
            )
            .build()
            .await
            .unwrap();
    let health = Health::new().cache_check("cache", &cache, false);
    assert_eq!(health.report().await.status, HealthStatus::Healthy);

    let outage = tokio::task::spawn_blocking(finsight_testkit::RedisOutage::stop)
        .await
        .unwrap()
        .expect("stop Redis");
    let mut status = HealthStatus::Healthy;
    for _ in 0..100 {
        status = health.report().await.status;
        if status == HealthStatus::Degraded {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        status,
        HealthStatus::Degraded,
        "never degraded while Redis was down"
    );
    tokio::task::spawn_blocking(move || outage.restore())
        .await
        .unwrap()
        .expect("restore Redis");
    for _ in 0..200 {
        status = health.report().await.status;
        if status == HealthStatus::Healthy {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        status,
        HealthStatus::Healthy,
        "never healthy again after Redis came back"
    );
}
