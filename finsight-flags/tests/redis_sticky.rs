//! The Redis sticky store against the real Redis: write-behind, preload,
//! cross-instance stickiness, and an outage during evaluation.
#![cfg(feature = "redis")]

use finsight_flags::redis::RedisStickyStore;
use finsight_flags::{EvaluationContext, FlagEngine, FlagSet, Unit, bucket};
use finsight_testkit::{RedisOutage, redis_url, unique};
use redis::AsyncCommands;
use std::time::Duration;

fn flags(key: &str, weights: [u32; 2]) -> FlagSet {
    let json = serde_json::json!([
        {"key": key, "flag_type": "multivariate", "status": "active", "sticky_bucketing": true,
         "default_value": "none",
         "variants": [{"id": "a", "value": "A", "weight": weights[0]}, {"id": "b", "value": "B", "weight": weights[1]}]},
        {"key": format!("{key}-pct"), "flag_type": "percentage", "status": "active", "sticky_bucketing": true,
         "rollout_percentage": 50}
    ]);
    FlagSet::from_json(&json.to_string())
        .unwrap()
        .strict()
        .unwrap()
}

async fn wait_until(mut ok: impl FnMut() -> bool) {
    for _ in 0..200 {
        if ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("condition not reached within 5 s");
}

/// One service instance: a Redis sticky store under `prefix` and an engine
/// serving `set` with it.
fn instance(prefix: &str, set: FlagSet) -> (RedisStickyStore, FlagEngine) {
    let store = RedisStickyStore::builder(redis_url())
        .prefix(prefix)
        .build()
        .unwrap();
    let engine = FlagEngine::builder()
        .flags(set)
        .sticky_store(store.clone())
        .build();
    (store, engine)
}

async fn conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn assignments_are_written_behind_and_preloaded_by_another_instance() {
    let flag = unique("sticky");
    let prefix = format!("{}:user_buckets:", unique("t"));
    let (store, engine) = instance(&prefix, flags(&flag, [50, 50]));
    let users: Vec<String> = (0..50).map(|i| format!("user-{i}")).collect();
    let first: Vec<String> = users
        .iter()
        .map(|u| engine.string_value(&flag, &EvaluationContext::new().user_id(u.as_str()), ""))
        .collect();
    wait_until(|| store.stats().written >= 50).await;

    // The key layout and TTL.
    let mut c = conn().await;
    let key = format!("{prefix}{flag}:user:user-0");
    let v: String = c.get(&key).await.unwrap();
    assert_eq!(
        v,
        format!("variant:{}", if first[0] == "A" { "a" } else { "b" })
    );
    let ttl: i64 = c.ttl(&key).await.unwrap();
    assert!((86_000..=86_400).contains(&ttl), "ttl {ttl}");

    // Another instance, after a weight change, preloads and keeps every user in place.
    let (store2, engine2) = instance(&prefix, flags(&flag, [5, 95]));
    let mut moved_without_preload = 0;
    for (u, before) in users.iter().zip(&first) {
        let ctx = EvaluationContext::new().user_id(u.as_str());
        let b = bucket(&flag, Unit::User(u));
        if (5..50).contains(&b) {
            moved_without_preload += 1; // would move to "B" on computed buckets
        }
        let found = engine2.preload(&ctx).await.unwrap();
        assert!(found >= 1);
        assert_eq!(&engine2.string_value(&flag, &ctx, ""), before, "{u} moved");
    }
    assert!(
        moved_without_preload > 5,
        "the weight change should matter for some users"
    );
    assert_eq!(store2.stats().preload_failures, 0);
}

#[tokio::test]
async fn builds_and_evaluates_with_an_unreachable_redis() {
    let store = RedisStickyStore::builder("redis://127.0.0.1:1")
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let flag = unique("down");
    let engine = FlagEngine::builder()
        .flags(flags(&flag, [50, 50]))
        .sticky_store(store.clone())
        .build();
    let ctx = EvaluationContext::new().user_id("u1");
    assert!(engine.preload(&ctx).await.is_err());
    let v = engine.string_value(&flag, &ctx, "");
    let expected = if bucket(&flag, Unit::User("u1")) < 50 {
        "A"
    } else {
        "B"
    };
    assert_eq!(v, expected, "the computed bucket is served");
    wait_until(|| store.stats().write_failures >= 1).await;
    assert_eq!(store.stats().preload_failures, 1);
    assert!(RedisStickyStore::builder("not a url").build().is_err());
}

#[tokio::test]
async fn outage_redis_sticky_evaluation_goes_on() {
    let flag = unique("outage-sticky");
    let prefix = format!("{}:user_buckets:", unique("t"));
    let store = RedisStickyStore::builder(redis_url())
        .prefix(prefix)
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let engine = FlagEngine::builder()
        .flags(flags(&flag, [50, 50]))
        .sticky_store(store.clone())
        .build();
    let ctx = EvaluationContext::new().user_id("before");
    engine.preload(&ctx).await.unwrap();
    engine.string_value(&flag, &ctx, "");
    wait_until(|| store.stats().written >= 1).await;

    let outage = RedisOutage::stop().unwrap();
    // Evaluation goes on for known and new users, with computed buckets.
    for i in 0..200 {
        let id = format!("during-{i}");
        let ctx = EvaluationContext::new().user_id(id.as_str());
        let _ = engine.preload(&ctx).await; // fails, counted
        let expected = if bucket(&flag, Unit::User(&id)) < 50 {
            "A"
        } else {
            "B"
        };
        assert_eq!(engine.string_value(&flag, &ctx, ""), expected);
        engine.is_enabled(&format!("{flag}-pct"), &ctx);
    }
    assert!(store.stats().preload_failures >= 1, "{:?}", store.stats());
    wait_until(|| store.stats().write_failures >= 1).await;
    outage.restore().unwrap();

    // After the outage, writes go through again.
    let written = store.stats().written;
    let mut ok = false;
    for i in 0..100 {
        engine.string_value(
            &flag,
            &EvaluationContext::new().user_id(format!("after-{i}")),
            "",
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        if store.stats().written > written {
            ok = true;
            break;
        }
    }
    assert!(ok, "writes resume after Redis is back: {:?}", store.stats());
}

#[tokio::test]
async fn a_store_on_an_existing_connection_manager_writes_and_preloads() {
    let client = redis::Client::open(redis_url()).unwrap();
    let manager = redis::aio::ConnectionManager::new(client).await.unwrap();
    let flag = unique("sticky-shared");
    let prefix = format!("{}:user_buckets:", unique("t"));
    // The URL is not used when a manager is given.
    let store = RedisStickyStore::builder("redis://unused.invalid")
        .connection_manager(manager.clone())
        .prefix(prefix.clone())
        .build()
        .unwrap();
    let engine = FlagEngine::builder()
        .flags(flags(&flag, [50, 50]))
        .sticky_store(store.clone())
        .build();
    let first = engine.string_value(&flag, &EvaluationContext::new().user_id("u-1"), "");
    wait_until(|| store.stats().written >= 1).await;
    let v: String = conn()
        .await
        .get(format!("{prefix}{flag}:user:u-1"))
        .await
        .unwrap();
    assert_eq!(
        v,
        format!("variant:{}", if first == "A" { "a" } else { "b" })
    );

    // A second store on the same manager preloads it, after a weight change.
    let store2 = RedisStickyStore::builder("redis://unused.invalid")
        .connection_manager(manager)
        .prefix(prefix)
        .build()
        .unwrap();
    let engine2 = FlagEngine::builder()
        .flags(flags(&flag, [0, 100]))
        .sticky_store(store2.clone())
        .build();
    let ctx = EvaluationContext::new().user_id("u-1");
    engine2.preload(&ctx).await.unwrap();
    assert_eq!(store2.stats().preloaded, 1);
    assert_eq!(engine2.string_value(&flag, &ctx, ""), first);
}

fn bool_flag(key: &str, rollout: u32) -> FlagSet {
    let json = serde_json::json!([
        {"key": key, "flag_type": "boolean", "status": "active", "sticky_bucketing": true,
         "default_value": false, "rollout_percentage": rollout}
    ]);
    FlagSet::from_json(&json.to_string())
        .unwrap()
        .strict()
        .unwrap()
}

async fn stored(c: &mut redis::aio::MultiplexedConnection, keys: &[String]) -> Vec<Option<String>> {
    redis::cmd("MGET").arg(keys).query_async(c).await.unwrap()
}

#[tokio::test]
async fn a_second_instance_never_overwrites_the_first_assignment() {
    let flag = unique("sticky-nx");
    let prefix = format!("{}:user_buckets:", unique("t"));
    let users: Vec<String> = (0..40).map(|i| format!("user-{i}")).collect();
    let ctx = |u: &str| EvaluationContext::new().user_id(u);

    // The first instance: rollout 30%.
    let (store1, engine1) = instance(&prefix, bool_flag(&flag, 30));
    let first: Vec<bool> = users
        .iter()
        .map(|u| engine1.is_enabled(&flag, &ctx(u)))
        .collect();
    wait_until(|| store1.stats().written >= 40).await;
    let keys: Vec<String> = users
        .iter()
        .map(|u| format!("{prefix}{flag}:user:{u}"))
        .collect();
    let mut c = conn().await;
    let before = stored(&mut c, &keys).await;
    assert!(before.iter().all(Option::is_some));

    // A second instance after the rollout went to 100%, evaluating without a
    // preload: it computes "in" for everyone and queues those writes ...
    let (store2, engine2) = instance(&prefix, bool_flag(&flag, 100));
    for u in &users {
        assert!(engine2.is_enabled(&flag, &ctx(u)), "computed: in");
    }
    wait_until(|| store2.stats().already_stored + store2.stats().written >= 40).await;
    // ... which never replace what the first instance stored.
    assert_eq!(store2.stats().written, 0, "{:?}", store2.stats());
    assert_eq!(store2.stats().already_stored, 40);
    assert_eq!(
        stored(&mut c, &keys).await,
        before,
        "stored values unchanged"
    );
    assert!(
        first.iter().filter(|x| !**x).count() > 10,
        "some users were out at 30%"
    );

    // Once preloaded, every user gets the first assignment back: those out
    // at 30% stay out at 100%.
    for (u, was) in users.iter().zip(&first) {
        engine2.preload(&ctx(u)).await.unwrap();
        assert_eq!(engine2.is_enabled(&flag, &ctx(u)), *was, "{u}");
    }
}

#[tokio::test]
async fn python_bucket_numbers_under_the_prefix_are_left_alone() {
    // The Python services cache the bare bucket number under the same
    // `user_buckets:` prefix. Such a value is no stored assignment here: it
    // is counted, the computed bucket is served, and it is never overwritten.
    let flag = unique("sticky-py");
    let prefix = format!("{}:user_buckets:", unique("t"));
    let key = format!("{prefix}{flag}:user:py-1");
    let python_bucket = bucket(&flag, Unit::User("py-1")).to_string();
    let mut c = conn().await;
    let _: () = c.set_ex(&key, &python_bucket, 3_600).await.unwrap();

    let (store, engine) = instance(&prefix, flags(&flag, [50, 50]));
    let ctx = EvaluationContext::new().user_id("py-1");
    assert_eq!(engine.preload(&ctx).await.unwrap(), 0);
    assert_eq!(store.stats().foreign_values, 1);
    let expected = if bucket(&flag, Unit::User("py-1")) < 50 {
        "A"
    } else {
        "B"
    };
    assert_eq!(engine.string_value(&flag, &ctx, ""), expected);
    wait_until(|| store.stats().already_stored >= 1).await;
    let v: String = c.get(&key).await.unwrap();
    assert_eq!(v, python_bucket, "the Python services' value is untouched");
    let ttl: i64 = c.ttl(&key).await.unwrap();
    assert!((0..=3_600).contains(&ttl), "its TTL too: {ttl}");
    // The local copy keeps this instance's assignment: served again, no new write.
    assert_eq!(engine.string_value(&flag, &ctx, ""), expected);
    assert_eq!(store.stats().written, 0);
}

#[tokio::test]
async fn an_assignment_to_a_removed_variant_is_replaced() {
    let flag = unique("sticky-stale");
    let prefix = format!("{}:user_buckets:", unique("t"));
    let key = format!("{prefix}{flag}:user:u-1");
    let mut c = conn().await;
    let _: () = c.set_ex(&key, "variant:gone", 3_600).await.unwrap();
    let (store, engine) = instance(&prefix, flags(&flag, [50, 50]));
    let ctx = EvaluationContext::new().user_id("u-1");
    assert_eq!(engine.preload(&ctx).await.unwrap(), 1);
    let served = engine.string_value(&flag, &ctx, "");
    wait_until(|| store.stats().written >= 1).await;
    let v: String = c.get(&key).await.unwrap();
    assert_eq!(
        v,
        format!("variant:{}", if served == "A" { "a" } else { "b" })
    );
}
