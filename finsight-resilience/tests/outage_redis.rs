//! The breaker around a real Redis connection while Redis is stopped and
//! restarted: it opens, rejects without touching Redis, probes, and closes.
//! The breaker runs on a manual clock, so its timing is deterministic; the
//! waits for Redis itself are bounded loops.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use finsight_resilience::{BreakerError, CircuitBreaker, ManualClock, OpenDuration, State};
use finsight_testkit::{RedisOutage, redis_url, unique};
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_breaker_around_redis_opens_rejects_probes_and_closes() {
    // Take the outage guard (and its lock) first, so no other outage test is
    // running while this one connects; Redis is up again until stop_again().
    let mut outage = RedisOutage::stop().unwrap();
    outage.start().unwrap();
    let client = redis::Client::open(redis_url()).unwrap();
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_millis(500)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(200));
    let conn = ConnectionManager::new_with_config(client, config)
        .await
        .unwrap();
    let key = format!("{}:quote", unique("resilience-outage"));

    let clock = ManualClock::new();
    let breaker = CircuitBreaker::builder("redis")
        .consecutive_failures(3)
        .open_duration(OpenDuration::Fixed(Duration::from_secs(30)))
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut events = breaker.subscribe();
    let reached_redis = AtomicU32::new(0);
    let get = || {
        let mut conn = conn.clone();
        let key = key.clone();
        let reached = &reached_redis;
        breaker.call(move || async move {
            reached.fetch_add(1, Ordering::SeqCst);
            conn.get::<_, Option<String>>(&key).await
        })
    };

    let mut c = conn.clone();
    c.set::<_, _, ()>(&key, "101.5").await.unwrap();
    assert_eq!(get().await.unwrap().as_deref(), Some("101.5"));

    outage.stop_again().unwrap();

    // Opens after three consecutive failures.
    let mut failures = 0;
    for _ in 0..10 {
        match get().await {
            Err(BreakerError::Inner(_)) => failures += 1,
            Err(BreakerError::Open(_)) => break,
            Ok(v) => panic!("Redis is down but GET returned {v:?}"),
        }
    }
    assert_eq!(failures, 3);
    assert_eq!(breaker.state(), State::Open);

    // Rejects without touching Redis, and says when it probes.
    let before = reached_redis.load(Ordering::SeqCst);
    for _ in 0..100 {
        let open = *get().await.unwrap_err().as_open().unwrap();
        assert_eq!(open.retry_after(), Some(Duration::from_secs(30)));
    }
    assert_eq!(reached_redis.load(Ordering::SeqCst), before);
    assert_eq!(breaker.metrics().rejected, 101);

    // A probe while Redis is still down re-opens.
    clock.advance(Duration::from_secs(30));
    assert!(matches!(get().await, Err(BreakerError::Inner(_))));
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(
        reached_redis.load(Ordering::SeqCst),
        before + 1,
        "exactly one probe"
    );

    // Redis is back: a probe succeeds (bounded wait for the reconnect) and closes.
    outage.start().unwrap();
    let mut closed = false;
    for _ in 0..50 {
        clock.advance(Duration::from_secs(30));
        match get().await {
            Ok(_) => {
                closed = true;
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    assert!(closed, "no probe succeeded after Redis came back");
    assert_eq!(breaker.state(), State::Closed);
    c.set::<_, _, ()>(&key, "102.0").await.unwrap();
    assert_eq!(get().await.unwrap().as_deref(), Some("102.0"));
    let _: () = c.del(&key).await.unwrap();
    outage.restore().unwrap();

    let transitions: Vec<(State, State)> = std::iter::from_fn(|| events.try_recv().ok())
        .map(|e| (e.from, e.to))
        .collect();
    assert_eq!(transitions.first(), Some(&(State::Closed, State::Open)));
    assert_eq!(transitions.get(1), Some(&(State::Open, State::HalfOpen)));
    assert_eq!(transitions.get(2), Some(&(State::HalfOpen, State::Open)));
    assert_eq!(transitions.last(), Some(&(State::HalfOpen, State::Closed)));
}
