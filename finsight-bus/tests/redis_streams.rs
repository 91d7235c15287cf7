//! Redis Streams specifics on the real Redis: XAUTOCLAIM of stuck entries,
//! dead-letter stream after the delivery limit, TTL at read time, MAXLEN
//! trimming.
#![cfg(feature = "redis-streams")]

use finsight_bus::redis_streams::{RedisStreams, RedisStreamsConfig};
use finsight_bus::*;
use std::time::Duration;

async fn setup(limit: u32, ttl: Option<Duration>) -> (RedisStreams, Bus, String, String) {
    let mut cfg = RedisStreamsConfig::new(finsight_testkit::redis_url());
    cfg.key_prefix = format!("{}:", finsight_testkit::unique("bus-rs"));
    cfg.claim_min_idle = Duration::from_millis(100);
    cfg.claim_interval = Duration::from_millis(50);
    cfg.block = Duration::from_millis(100);
    cfg.delivery_limit = limit;
    let t = RedisStreams::connect(cfg).await.unwrap();
    let queue = finsight_testkit::unique("q");
    let mut topo = Topology::prefixed(&finsight_testkit::unique("p")).consumer_queue(&queue);
    topo.queue_mut(&queue).unwrap().message_ttl = ttl;
    let dlq = topo.dead_letter_queue.name.clone();
    let bus = Bus::connect(t.clone(), topo, queue.clone()).await.unwrap();
    (t, bus, queue, dlq)
}

fn opts(name: &str) -> SubscribeOptions {
    SubscribeOptions {
        prefetch: 10,
        consumer_name: name.into(),
    }
}

async fn next(s: &mut Box<dyn DeliveryStream>) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("no delivery")
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn stuck_entry_is_reclaimed_by_another_consumer() {
    let (t, bus, queue, _) = setup(5, None).await;
    let env = Envelope::new("e", &1).unwrap();
    assert!(bus.publish(&env).await.unwrap().is_confirmed());
    let mut a = t.subscribe(&queue, opts("a")).await.unwrap();
    let first = next(&mut a).await;
    assert_eq!((first.delivery_count, first.redelivered), (1, false));
    a.cancel().await.unwrap(); // consumer `a` crashes: the entry stays pending
    let mut b = t.subscribe(&queue, opts("b")).await.unwrap();
    let again = next(&mut b).await;
    assert_eq!(again.message.message_id.as_deref(), Some(env.message_id()));
    assert!(again.redelivered);
    assert_eq!(again.delivery_count, 2);
    again.acker.ack().await.unwrap();
    let h = bus.health().await;
    assert_eq!(h.queues[0].pending, Some(0), "{h:?}");
}

#[tokio::test]
async fn delivery_limit_moves_entry_to_dead_letter_stream() {
    let (t, bus, queue, dlq) = setup(1, None).await;
    let env = Envelope::new("e", &1).unwrap();
    assert!(bus.publish(&env).await.unwrap().is_confirmed());
    let mut a = t.subscribe(&queue, opts("a")).await.unwrap();
    let _held = next(&mut a).await; // delivered once, never settled
    a.cancel().await.unwrap();
    let _b = t.subscribe(&queue, opts("b")).await.unwrap();
    let mut d = t.subscribe(&dlq, opts("dlq")).await.unwrap();
    let dead = next(&mut d).await;
    assert_eq!(dead.message.message_id.as_deref(), Some(env.message_id()));
    assert!(dead.message.headers[HEADER_DEAD_LETTER_REASON].starts_with("delivery-limit"));
    assert_eq!(dead.message.headers[HEADER_DEAD_LETTER_QUEUE], queue);
}

#[tokio::test]
async fn expired_entries_are_dead_lettered_at_read() {
    let (t, bus, queue, dlq) = setup(5, Some(Duration::from_millis(50))).await;
    assert!(
        bus.publish(&Envelope::new("e", &1).unwrap())
            .await
            .unwrap()
            .is_confirmed()
    );
    tokio::time::sleep(Duration::from_millis(120)).await;
    let mut a = t.subscribe(&queue, opts("a")).await.unwrap();
    let mut d = t.subscribe(&dlq, opts("dlq")).await.unwrap();
    let dead = next(&mut d).await;
    assert_eq!(dead.message.headers["x-first-death-reason"], "expired");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), a.next())
            .await
            .is_err()
    );
}

#[cfg(feature = "redis-dedup")]
#[tokio::test]
async fn redis_dedup_is_shared_between_filters() {
    let prefix = format!("{}:", finsight_testkit::unique("dedup"));
    let url = finsight_testkit::redis_url();
    let a = RedisDedup::connect(&url, &prefix, Duration::from_secs(60))
        .await
        .unwrap();
    let b = RedisDedup::connect(&url, &prefix, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(!a.seen("m-1").await.unwrap());
    a.mark("m-1").await.unwrap();
    assert!(
        b.seen("m-1").await.unwrap(),
        "a second replica must see the id"
    );
    assert!(!b.seen("m-2").await.unwrap());
    // Used by a consumer: the second delivery of the same id is skipped.
    let (_t, bus, queue, _) = setup(5, None).await;
    let c = bus
        .consumer(
            &queue,
            Router::new().on("e", |_c: Context| async { Ok(()) }),
        )
        .dedup(b.clone())
        .concurrency(1)
        .start()
        .unwrap();
    let env = Envelope::new("e", &1).unwrap();
    for _ in 0..2 {
        assert!(bus.publish(&env).await.unwrap().is_confirmed());
    }
    for _ in 0..500 {
        if c.stats().acked == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let st = c.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!((st.acked, st.duplicates), (2, 1));
    assert!(a.seen(env.message_id()).await.unwrap());
}

#[tokio::test]
async fn streams_are_trimmed_to_about_max_len() {
    let mut cfg = RedisStreamsConfig::new(finsight_testkit::redis_url());
    let prefix = format!("{}:", finsight_testkit::unique("bus-trim"));
    cfg.key_prefix = prefix.clone();
    cfg.max_len = 10;
    let t = RedisStreams::connect(cfg).await.unwrap();
    let queue = finsight_testkit::unique("q");
    let topo = Topology::prefixed(&finsight_testkit::unique("p")).consumer_queue(&queue);
    let bus = Bus::connect(t.clone(), topo, queue.clone()).await.unwrap();
    let mut pending = Vec::new();
    for n in 0..1000 {
        pending.push(bus.send(&Envelope::new("e", &n).unwrap()).await.unwrap());
    }
    for p in pending {
        assert!(p.await.is_confirmed());
    }
    let client = redis::Client::open(finsight_testkit::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let len: usize = redis::cmd("XLEN")
        .arg(format!("{prefix}q:{queue}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    // `MAXLEN ~` trims whole radix-tree nodes (`stream-node-max-entries`,
    // 100 by default): the stream keeps between max_len and max_len + 100.
    assert!((10..=110).contains(&len), "XLEN {len} after 1000 sends");
}
