//! The Redis flag source against the real Redis: shared flags, change
//! notification, validation before swap, and an outage.
#![cfg(feature = "redis")]

use finsight_flags::redis::RedisFlagSource;
use finsight_flags::{
    EvaluationContext, FlagDefinition, FlagEngine, FlagType, Reason, ReloadStatus,
};
use finsight_testkit::{RedisOutage, redis_url, unique};
use std::time::Duration;
use tokio::sync::watch;

fn on(key: &str, rollout: i64) -> FlagDefinition {
    let mut d = FlagDefinition::new(key, FlagType::Percentage);
    d.rollout_percentage = rollout;
    d
}

fn source() -> RedisFlagSource {
    let name = unique("flags");
    RedisFlagSource::new(&redis_url())
        .unwrap()
        .hash_key(format!("{name}:feature_flags"))
        .channel(format!("{name}:changed"))
}

async fn wait_for(rx: &mut watch::Receiver<ReloadStatus>, what: impl FnMut(&ReloadStatus) -> bool) {
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(what))
        .await
        .expect("no reload within 10 s")
        .unwrap();
}

#[tokio::test]
async fn instances_share_flags_and_follow_changes() {
    let src = source();
    src.publish(&on("a", 100)).await.unwrap();
    src.publish(&on("b", 0)).await.unwrap();
    let (e1, e2) = (
        FlagEngine::new(Default::default()),
        FlagEngine::new(Default::default()),
    );
    let w1 = src.clone().watch(e1.clone()).await.unwrap();
    let w2 = src.clone().watch(e2.clone()).await.unwrap();
    let ctx = EvaluationContext::new().user_id("u");
    for e in [&e1, &e2] {
        assert!(e.is_enabled("a", &ctx) && !e.is_enabled("b", &ctx));
    }
    let (mut r1, mut r2) = (w1.subscribe(), w2.subscribe());
    // Wait until both are subscribed (the first reload after subscribing).
    wait_for(&mut r1, |s| s.applied >= 1).await;
    wait_for(&mut r2, |s| s.applied >= 1).await;
    let (a1, a2) = (w1.status().applied, w2.status().applied);

    src.publish(&on("b", 100)).await.unwrap();
    wait_for(&mut r1, |s| s.applied > a1).await;
    wait_for(&mut r2, |s| s.applied > a2).await;
    assert!(e1.is_enabled("b", &ctx) && e2.is_enabled("b", &ctx));

    // A bad definition written by another tool: the flag keeps its last good version.
    let a1 = w1.status().applied;
    src.publish_raw(
        "a",
        r#"{"key": "a", "flag_type": "percentage", "rollout_percentage": 900}"#,
    )
    .await
    .unwrap();
    wait_for(&mut r1, |s| s.applied > a1).await;
    let status = w1.status();
    assert_eq!(status.rejected.len(), 1, "{status:?}");
    assert_eq!(status.rejected[0].field, "rollout_percentage");
    assert!(
        e1.is_enabled("a", &ctx),
        "the last good `a` is still served"
    );

    let a1 = w1.status().applied;
    src.remove("b").await.unwrap();
    wait_for(&mut r1, |s| s.applied > a1).await;
    assert_eq!(
        e1.bool_detail("b", &ctx, false).reason,
        Reason::FlagNotFound
    );
}

#[tokio::test]
async fn initial_load_fails_when_redis_is_unreachable() {
    let src = RedisFlagSource::new("redis://127.0.0.1:1").unwrap();
    assert!(
        src.watch(FlagEngine::new(Default::default()))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn outage_redis_source_keeps_serving_and_resyncs() {
    let src = source().resync_interval(Duration::from_millis(200));
    src.publish(&on("x", 100)).await.unwrap();
    let engine = FlagEngine::new(Default::default());
    let w = src.clone().watch(engine.clone()).await.unwrap();
    let mut rx = w.subscribe();
    wait_for(&mut rx, |s| s.applied >= 1).await;
    let ctx = EvaluationContext::new().user_id("u");

    let outage = RedisOutage::stop().unwrap();
    let attempts = w.status().attempts;
    for _ in 0..1000 {
        assert!(
            engine.is_enabled("x", &ctx),
            "the last good set is served during the outage"
        );
    }
    wait_for(&mut rx, |s| s.attempts > attempts && s.last_error.is_some()).await;
    assert!(engine.is_enabled("x", &ctx));
    outage.restore().unwrap();

    // After the outage the source reconnects and follows changes again.
    let mut published = false;
    for _ in 0..50 {
        if src.publish(&on("x", 0)).await.is_ok() {
            published = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(published);
    tokio::time::timeout(Duration::from_secs(15), async {
        while engine.is_enabled("x", &ctx) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the change after the outage is applied");
}

#[tokio::test]
async fn a_source_on_an_existing_connection_manager_follows_changes() {
    let client = redis::Client::open(redis_url()).unwrap();
    let manager = redis::aio::ConnectionManager::new(client).await.unwrap();
    let name = unique("flags-shared");
    let src = RedisFlagSource::from_connection_manager(&redis_url(), manager)
        .unwrap()
        .hash_key(format!("{name}:feature_flags"))
        .channel(format!("{name}:changed"));
    src.publish(&on("a", 0)).await.unwrap();
    let engine = FlagEngine::new(Default::default());
    let w = src.clone().watch(engine.clone()).await.unwrap();
    let ctx = EvaluationContext::new().user_id("u");
    assert!(!engine.is_enabled("a", &ctx));
    let mut rx = w.subscribe();
    wait_for(&mut rx, |s| s.applied >= 1).await;
    let applied = w.status().applied;

    // The notification arrives on the watcher's dedicated pub/sub connection.
    src.publish(&on("a", 100)).await.unwrap();
    wait_for(&mut rx, |s| s.applied > applied).await;
    assert!(engine.is_enabled("a", &ctx));
}
