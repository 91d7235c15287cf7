//! What a cache leaves behind once its last handle is dropped (nothing: no
//! task, no Redis connection, no load) and what a cancelled read leaves
//! behind (no load in flight). Against the real Redis.
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::time::Duration;

use finsight_cache::redis::{InvalidationStatus, RedisOptions};
use finsight_cache::{Cache, CacheConfig};
use finsight_testkit::{redis_url, unique};
use tokio::sync::Notify;

mod support;
use support::AclUser;

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_listener_and_closes_every_connection() {
    // The cache connects as a user of its own, so its connections can be
    // told apart in `CLIENT LIST`.
    let user = AclUser::create("cache-drop", &[]);
    let p = format!("{}:", unique("drop"));
    let mut r = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // 20 s left of a 60 s TTL: the first L1 hit triggers a refresh.
    let () = redis::cmd("SET")
        .arg(format!("{p}q"))
        .arg("\"old\"")
        .arg("PX")
        .arg(20_000)
        .query_async(&mut r)
        .await
        .unwrap();
    let baseline = alive_tasks();

    let cfg = CacheConfig::new("drop", &p, Duration::from_secs(60)).with_refresh_ahead(0.5);
    // A heartbeat far away: the listener may only stop because it is told to.
    let opts = RedisOptions::new(&user.url())
        .unwrap()
        .heartbeat(Duration::from_secs(3_600));
    let c: Cache<String> = Cache::builder(cfg).redis(opts).build().await.unwrap();
    assert_eq!(c.invalidation_status(), Some(InvalidationStatus::Tracking));
    let never = || async { Ok::<Option<String>, std::io::Error>(None) };
    assert_eq!(
        c.get_or_load("q", never).await.unwrap().as_deref(),
        Some("old")
    );

    // A background refresh whose loader never finishes, holding a canary.
    let canary = Arc::new(());
    let started = Arc::new(Notify::new());
    let (held, st) = (Arc::clone(&canary), Arc::clone(&started));
    let served = c
        .get_or_load("q", move || async move {
            let _held = held;
            st.notify_one();
            std::future::pending::<()>().await;
            Ok::<Option<String>, std::io::Error>(None)
        })
        .await
        .unwrap();
    assert_eq!(served.as_deref(), Some("old"));
    tokio::time::timeout(Duration::from_secs(5), started.notified())
        .await
        .expect("the refresh started");
    assert_eq!(c.stats().refreshes, 1);
    assert_eq!(Arc::strong_count(&canary), 2);
    assert!(alive_tasks() > baseline);
    let conns = user.connections();
    assert!(
        conns.iter().any(|l| l.contains(" sub=1 ")),
        "pub/sub connection: {conns:#?}"
    );
    assert!(
        conns.iter().any(|l| !l.contains(" redir=-1 ")),
        "tracking connection: {conns:#?}"
    );

    // Dropping one of two handles stops nothing.
    let c2 = c.clone();
    drop(c);
    tokio::task::yield_now().await;
    assert_eq!(c2.invalidation_status(), Some(InvalidationStatus::Tracking));
    assert_eq!(Arc::strong_count(&canary), 2, "refresh still running");
    assert_eq!(user.connections().len(), conns.len());

    // Dropping the last one stops everything (bounded wait: 5 s).
    drop(c2);
    for _ in 0..500 {
        if alive_tasks() == baseline
            && Arc::strong_count(&canary) == 1
            && user.connections().is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(alive_tasks(), baseline, "background tasks left running");
    assert_eq!(Arc::strong_count(&canary), 1, "refresh not cancelled");
    let left = user.connections();
    assert!(left.is_empty(), "connections left open: {left:#?}");
}
