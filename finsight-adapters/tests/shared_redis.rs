//! `SharedRedis` against the real Redis: cache, rate limiter, sticky store and
//! flag source all work on one `ConnectionManager`, and their data commands
//! run on that one connection (seen in `CLIENT LIST`).
#![cfg(feature = "shared-redis")]

use std::time::Duration;

use finsight_adapters::shared_redis::SharedRedis;
use finsight_cache::redis::Invalidation;
use finsight_cache::{Cache, CacheConfig};
use finsight_flags::{EvaluationContext, FlagEngine, FlagSet};
use finsight_ratelimit::{Algorithm, Limiter, RedisConfig, RequestInfo, Rule, RuleSet, Scope};
use finsight_testkit::{redis_url, unique};
use redis::AsyncCommands;

async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("redis reachable (run scripts/services.sh)")
}

/// The `CLIENT LIST` lines of connections named `name`.
async fn clients_named(c: &mut redis::aio::MultiplexedConnection, name: &str) -> Vec<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(c)
        .await
        .unwrap();
    let tag = format!(" name={name} ");
    list.lines()
        .filter(|l| l.contains(&tag))
        .map(str::to_owned)
        .collect()
}

/// The last command run by the one connection named `name`.
async fn last_cmd(c: &mut redis::aio::MultiplexedConnection, name: &str) -> String {
    let lines = clients_named(c, name).await;
    assert_eq!(lines.len(), 1, "one shared connection expected: {lines:?}");
    lines[0]
        .split(' ')
        .find_map(|f| f.strip_prefix("cmd="))
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_limiter_and_flags_run_their_data_commands_on_one_connection() {
    let shared = SharedRedis::new(&redis_url()).unwrap();
    let name = unique("shared").replace([':', ' '], "-");
    let mut manager = shared.connection_manager();
    let () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(&name)
        .query_async(&mut manager)
        .await
        .expect("redis reachable (run scripts/services.sh)");
    let mut raw = raw().await;
    assert_eq!(last_cmd(&mut raw, &name).await, "client|setname");

    // Cache: a write is a `SET` on the shared connection.
    let prefix = format!("{}:", unique("shared-cache"));
    let cache: Cache<String> =
        Cache::builder(CacheConfig::new("shared", &prefix, Duration::from_secs(60)))
            .redis(
                shared
                    .cache_options()
                    .unwrap()
                    .invalidation(Invalidation::Off),
            )
            .build()
            .await
            .unwrap();
    cache.set("k", &"v".to_owned()).await.unwrap();
    let stored: String = raw.get(format!("{prefix}k")).await.unwrap();
    assert_eq!(stored, "\"v\"");
    assert_eq!(last_cmd(&mut raw, &name).await, "set");

    // Rate limiter: checks are `EVALSHA` on the shared connection, decided by Redis.
    let tag = unique("shared-rl");
    let rules = RuleSet::new(vec![Rule::new(
        "r",
        Scope::Tenant,
        Algorithm::FixedWindow,
        2,
        Duration::from_secs(3600),
    )]);
    let backend = shared
        .rate_limit_backend(
            RedisConfig::new("redis://unused")
                .tag(&tag)
                .timeout(Duration::from_secs(2)),
        )
        .await
        .unwrap();
    let limiter = Limiter::builder(rules).redis(backend).build().unwrap();
    let req = RequestInfo::new("GET", "/").tenant("acme");
    let allowed: Vec<bool> = {
        let mut v = vec![];
        for _ in 0..3 {
            let d = limiter.check(&req).await.unwrap();
            assert!(!d.fallback, "limiter fell back: {d:?}");
            v.push(d.is_allowed());
        }
        v
    };
    assert_eq!(allowed, [true, true, false]);
    assert_eq!(last_cmd(&mut raw, &name).await, "evalsha");
    let keys: Vec<String> = raw.keys(format!("{{{tag}}}:*")).await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");

    // Sticky store: the write-behind `SET` runs on the shared connection.
    let flag = unique("shared-flag");
    let sticky_prefix = format!("{}:user_buckets:", unique("shared-sticky"));
    let store = shared
        .sticky_store()
        .prefix(sticky_prefix.clone())
        .build()
        .unwrap();
    let flags = FlagSet::from_json(
        &serde_json::json!([{"key": flag, "flag_type": "percentage", "status": "active",
            "sticky_bucketing": true, "rollout_percentage": 50}])
        .to_string(),
    )
    .unwrap()
    .strict()
    .unwrap();
    let engine = FlagEngine::builder()
        .flags(flags)
        .sticky_store(store.clone())
        .build();
    let on = engine.is_enabled(&flag, &EvaluationContext::new().user_id("u-1"));
    for _ in 0..200 {
        if store.stats().written >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let sticky: String = raw
        .get(format!("{sticky_prefix}{flag}:user:u-1"))
        .await
        .unwrap();
    assert_eq!(sticky, if on { "in" } else { "out" });
    assert_eq!(last_cmd(&mut raw, &name).await, "set");

    // Flag source: reads and writes on the shared connection.
    let hash = unique("shared-flags");
    let source = shared.flag_source().unwrap().hash_key(&hash);
    source
        .publish_raw(
            "from-shared",
            r#"{"key": "from-shared", "flag_type": "boolean", "status": "active", "default_value": true}"#,
        )
        .await
        .unwrap();
    assert_eq!(last_cmd(&mut raw, &name).await, "publish");
    let report = source.load(None).await.unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report.set.get("from-shared").is_some());
    assert_eq!(last_cmd(&mut raw, &name).await, "hgetall");

    let () = raw.del(&hash).await.unwrap();
}
