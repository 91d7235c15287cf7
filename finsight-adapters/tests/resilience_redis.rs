//! `BreakerGuard` against the real Redis: a forced-open breaker keeps the
//! cache and the rate limiter off Redis (they fall back as documented), a
//! closed one lets them work, and Redis failures open it.
#![cfg(feature = "resilience-redis")]

use std::time::Duration;

use finsight_adapters::resilience_redis::BreakerGuard;
use finsight_cache::redis::{Invalidation, RedisOptions};
use finsight_cache::{Cache, CacheConfig};
use finsight_ratelimit::{
    Algorithm, FailureMode, Limiter, RedisBackend, RedisConfig, RequestInfo, Rule, RuleSet, Scope,
};
use finsight_resilience::{CircuitBreaker, State};
use finsight_testkit::{redis_url, unique};
use redis::AsyncCommands;

async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("redis reachable (run scripts/services.sh)")
}

fn breaker(name: &str) -> CircuitBreaker {
    CircuitBreaker::builder(unique(name))
        .consecutive_failures(2)
        .build()
        .unwrap()
}

#[tokio::test]
async fn cache_stays_off_redis_while_the_breaker_is_open() {
    let guard = BreakerGuard::new(breaker("cache-guard"));
    let prefix = format!("{}:", unique("guarded-cache"));
    let cache: Cache<String> = Cache::builder(CacheConfig::new(
        "guarded",
        &prefix,
        Duration::from_secs(60),
    ))
    .redis(
        RedisOptions::new(&redis_url())
            .unwrap()
            .invalidation(Invalidation::Off)
            .call_guard(guard.clone()),
    )
    .build()
    .await
    .unwrap();
    let mut raw = raw().await;
    let () = raw
        .set(format!("{prefix}remote"), "\"from-redis\"")
        .await
        .unwrap();

    guard.breaker().force_open();
    // Reads miss (Redis not asked), writes report the failure and do not reach Redis.
    assert_eq!(cache.get("remote").await.unwrap(), None);
    let err = cache.set("local", &"v".to_owned()).await.unwrap_err();
    assert!(err.to_string().contains("call guard"), "{err}");
    let exists: bool = raw.exists(format!("{prefix}local")).await.unwrap();
    assert!(!exists, "a write reached Redis through an open breaker");
    let m = guard.breaker().metrics();
    assert_eq!(m.calls, 0, "{m:?}");
    assert!(m.rejected >= 2, "{m:?}");
    // The read counts as an L2 error, as when Redis fails; the write returned its error.
    assert_eq!(cache.stats().l2.errors, 1, "{:?}", cache.stats());

    guard.breaker().force_closed();
    assert_eq!(
        cache.get("remote").await.unwrap().as_deref(),
        Some("from-redis")
    );
    cache.set("local", &"v".to_owned()).await.unwrap();
    let stored: String = raw.get(format!("{prefix}local")).await.unwrap();
    assert_eq!(stored, "\"v\"");
    let m = guard.breaker().metrics();
    assert!(m.successes >= 2 && m.failures == 0, "{m:?}");
}

#[tokio::test]
async fn redis_failures_open_the_cache_breaker() {
    // Nothing listens on port 1: every guarded call fails fast.
    let guard = BreakerGuard::new(breaker("cache-down"));
    let cache: Cache<String> = Cache::builder(
        CacheConfig::new("down", "down:", Duration::from_secs(60))
            .with_l2_timeout(Duration::from_millis(200)),
    )
    .redis(
        RedisOptions::new("redis://127.0.0.1:1")
            .unwrap()
            .invalidation(Invalidation::Off)
            .call_guard(guard.clone()),
    )
    .build()
    .await
    .unwrap();
    assert_eq!(cache.get("a").await.unwrap(), None);
    assert_eq!(cache.get("b").await.unwrap(), None);
    assert_eq!(guard.breaker().state(), State::Open);
    assert_eq!(guard.breaker().metrics().failures, 2);
    assert_eq!(cache.get("c").await.unwrap(), None);
    assert_eq!(guard.breaker().metrics().rejected, 1);
}

async fn limiter(guard: &BreakerGuard, tag: &str, mode: FailureMode) -> Limiter {
    let rules = RuleSet::new(vec![Rule::new(
        "r",
        Scope::Tenant,
        Algorithm::FixedWindow,
        5,
        Duration::from_secs(3600),
    )]);
    let backend = RedisBackend::connect(
        RedisConfig::new(redis_url())
            .tag(tag)
            .timeout(Duration::from_secs(2))
            .failure_mode(mode)
            .call_guard(guard.clone()),
    )
    .await
    .expect("redis reachable (run scripts/services.sh)");
    Limiter::builder(rules).redis(backend).build().unwrap()
}

#[tokio::test]
async fn limiter_uses_its_failure_mode_while_the_breaker_is_open() {
    let req = RequestInfo::new("GET", "/").tenant("acme");
    let mut raw = raw().await;
    for mode in [FailureMode::Closed, FailureMode::Open, FailureMode::Local] {
        let guard = BreakerGuard::new(breaker("rl-guard"));
        let tag = unique("guarded-rl");
        let l = limiter(&guard, &tag, mode).await;

        guard.breaker().force_open();
        let d = l.check(&req).await.unwrap();
        assert!(d.fallback, "{mode:?}: {d:?}");
        assert_eq!(
            d.is_allowed(),
            mode != FailureMode::Closed,
            "{mode:?}: {d:?}"
        );
        let keys: Vec<String> = raw.keys(format!("{{{tag}}}:*")).await.unwrap();
        assert!(keys.is_empty(), "{mode:?}: Redis touched: {keys:?}");
        assert_eq!(guard.breaker().metrics().calls, 0);

        guard.breaker().force_closed();
        let d = l.check(&req).await.unwrap();
        assert!(!d.fallback && d.is_allowed(), "{mode:?}: {d:?}");
        let keys: Vec<String> = raw.keys(format!("{{{tag}}}:*")).await.unwrap();
        assert_eq!(keys.len(), 1, "{mode:?}: {keys:?}");
        assert_eq!(guard.breaker().metrics().successes, 1);
    }
}

#[tokio::test]
async fn redis_errors_open_the_limiter_breaker() {
    let guard = BreakerGuard::new(breaker("rl-errors"));
    let tag = unique("guarded-rl-err");
    let rules = RuleSet::new(vec![Rule::new(
        "r",
        Scope::Tenant,
        Algorithm::FixedWindow,
        5,
        Duration::from_secs(3600),
    )]);
    let backend = RedisBackend::connect(
        RedisConfig::new(redis_url())
            .tag(&tag)
            .timeout(Duration::from_secs(2))
            .retry_interval(Duration::from_micros(1))
            .failure_mode(FailureMode::Closed)
            .call_guard(guard.clone()),
    )
    .await
    .expect("redis reachable (run scripts/services.sh)");
    let l = Limiter::builder(rules).redis(backend).build().unwrap();
    let req = RequestInfo::new("GET", "/").tenant("acme");
    assert!(l.check(&req).await.unwrap().is_allowed());

    // Make the script fail for real: the limiter's key now holds a hash (WRONGTYPE).
    let mut raw = raw().await;
    let keys: Vec<String> = raw.keys(format!("{{{tag}}}:*")).await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let () = raw.del(&keys[0]).await.unwrap();
    let () = raw.hset(&keys[0], "f", "v").await.unwrap();

    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(2)).await; // past the retry interval
        let d = l.check(&req).await.unwrap();
        assert!(d.fallback && !d.is_allowed(), "{d:?}");
    }
    assert_eq!(guard.breaker().state(), State::Open);
    let m = guard.breaker().metrics();
    assert_eq!((m.successes, m.failures, m.rejected), (1, 2, 0), "{m:?}");
    tokio::time::sleep(Duration::from_millis(2)).await;
    let d = l.check(&req).await.unwrap();
    assert!(d.fallback && !d.is_allowed(), "{d:?}");
    assert_eq!(guard.breaker().metrics().rejected, 1);
    let () = raw.del(&keys[0]).await.unwrap();
}
