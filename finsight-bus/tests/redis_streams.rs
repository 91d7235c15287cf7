//! Redis Streams specifics on the real Redis: XAUTOCLAIM of stuck entries,
//! dead-letter stream after the delivery limit (also for a consumer that
//! restarts under the same name), dead letters that cannot be written,
//! bounded pending list, reconnect count, TTL at read time, MAXLEN trimming,
//! reclaiming through a pending list longer than one `XAUTOCLAIM` covers.
#![cfg(feature = "redis-streams")]

use finsight_bus::redis_streams::{RedisStreams, RedisStreamsConfig};
use finsight_bus::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

struct Setup {
    t: RedisStreams,
    bus: Bus,
    queue: String,
    dlq: String,
    /// `key_prefix` of the transport.
    prefix: String,
}

impl Setup {
    fn stream(&self, queue: &str) -> String {
        format!("{}q:{queue}", self.prefix)
    }
}

async fn setup_with(
    limit: u32,
    topo: impl FnOnce(&mut Topology, &str),
    cfg: impl FnOnce(&mut RedisStreamsConfig),
) -> Setup {
    let mut c = RedisStreamsConfig::new(finsight_testkit::redis_url());
    let prefix = format!("{}:", finsight_testkit::unique("bus-rs"));
    c.key_prefix = prefix.clone();
    c.claim_min_idle = Duration::from_millis(100);
    c.claim_interval = Duration::from_millis(50);
    c.block = Duration::from_millis(100);
    c.delivery_limit = limit;
    cfg(&mut c);
    let t = RedisStreams::connect(c).await.unwrap();
    let queue = finsight_testkit::unique("q");
    let mut topology = Topology::prefixed(&finsight_testkit::unique("p")).consumer_queue(&queue);
    topo(&mut topology, &queue);
    let dlq = topology.dead_letter_queue.name.clone();
    let bus = Bus::connect(t.clone(), topology, queue.clone())
        .await
        .unwrap();
    Setup {
        t,
        bus,
        queue,
        dlq,
        prefix,
    }
}

async fn setup(limit: u32, ttl: Option<Duration>) -> (RedisStreams, Bus, String, String) {
    let s = setup_with(
        limit,
        |t, q| t.queue_mut(q).unwrap().message_ttl = ttl,
        |_| {},
    )
    .await;
    (s.t, s.bus, s.queue, s.dlq)
}

/// Reclaiming stuck entries off: only what the tests do redelivers.
fn no_reclaim(c: &mut RedisStreamsConfig) {
    c.claim_min_idle = Duration::from_secs(3600);
    c.claim_interval = Duration::from_secs(3600);
}

async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open(finsight_testkit::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// `DEL key`.
async fn del(conn: &mut redis::aio::MultiplexedConnection, key: &str) {
    let _: i64 = redis::cmd("DEL").arg(key).query_async(conn).await.unwrap();
}

/// Replaces `key` with a plain string, so stream commands on it fail
/// (`WRONGTYPE`).
async fn not_a_stream(conn: &mut redis::aio::MultiplexedConnection, key: &str) {
    del(conn, key).await;
    let () = redis::cmd("SET")
        .arg(key)
        .arg("not a stream")
        .query_async(conn)
        .await
        .unwrap();
}

/// The group's pending count (`XPENDING` summary).
async fn pending(conn: &mut redis::aio::MultiplexedConnection, stream: &str) -> usize {
    let r: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
        .arg(stream)
        .arg("finsight")
        .query_async(conn)
        .await
        .unwrap();
    r.count()
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

/// A message that crashes its process, restarted under the same consumer
/// name (the default `finsight-<pid>` is `finsight-1` in every container):
/// each restart re-reads it from the consumer's own pending list. Its real
/// delivery count is reported, and past the limit it goes to the
/// dead-letter stream instead of crashing the process forever.
#[tokio::test]
async fn restart_under_the_same_name_counts_deliveries_and_dead_letters_past_the_limit() {
    let s = setup_with(2, |_, _| {}, no_reclaim).await;
    let env = Envelope::new("e", &1).unwrap();
    assert!(s.bus.publish(&env).await.unwrap().is_confirmed());
    for n in 1..=2 {
        let mut sub = s.t.subscribe(&s.queue, opts("finsight-1")).await.unwrap();
        let d = next(&mut sub).await;
        assert_eq!(d.message.message_id.as_deref(), Some(env.message_id()));
        assert_eq!((d.delivery_count, d.redelivered), (n, n > 1));
        // The process dies while handling it: never settled.
        drop(d);
        sub.cancel().await.unwrap();
    }
    let mut again = s.t.subscribe(&s.queue, opts("finsight-1")).await.unwrap();
    let mut d = s.t.subscribe(&s.dlq, opts("dlq")).await.unwrap();
    let dead = next(&mut d).await;
    assert_eq!(dead.message.message_id.as_deref(), Some(env.message_id()));
    let h = &dead.message.headers;
    assert_eq!(
        h[HEADER_DEAD_LETTER_REASON],
        "delivery-limit: delivered 3 times"
    );
    assert_eq!(h[HEADER_DEAD_LETTER_QUEUE], s.queue);
    assert_eq!(h[HEADER_DEAD_LETTER_ATTEMPTS], "3");
    assert_eq!(h[HEADER_EVENT_TYPE], "e");
    dead.acker.ack().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), again.next())
            .await
            .is_err(),
        "a message past the limit must not be delivered again"
    );
    let mut c = raw().await;
    assert_eq!(pending(&mut c, &s.stream(&s.queue)).await, 0);
    assert_eq!(s.t.dead_letter_failures(), 0);
}

/// The dead-letter stream's key holds a plain string, so the dead letter's
/// `XADD` fails (`WRONGTYPE`): the original is not acked but stays pending,
/// the failure is counted, and once the key is usable again the next
/// redelivery past the limit lands in the dead-letter stream.
#[tokio::test]
async fn dead_letter_that_redis_refuses_leaves_the_original_pending() {
    let s = setup_with(1, |_, _| {}, no_reclaim).await;
    let dlq_key = s.stream(&s.dlq);
    let mut c = raw().await;
    not_a_stream(&mut c, &dlq_key).await;
    let env = Envelope::new("e", &1).unwrap();
    assert!(s.bus.publish(&env).await.unwrap().is_confirmed());
    let queue_key = s.stream(&s.queue);

    // 1. The consumer engine's dead-letter (handler failed for good).
    let mut sub = s.t.subscribe(&s.queue, opts("a")).await.unwrap();
    let d = next(&mut sub).await;
    let err = d.acker.dead_letter(d.message).await.unwrap_err();
    assert!(matches!(err, Error::DeadLetterNotStored { .. }), "{err:?}");
    assert_eq!(s.t.dead_letter_failures(), 1);
    assert_eq!(
        pending(&mut c, &queue_key).await,
        1,
        "original must stay pending"
    );
    sub.cancel().await.unwrap();

    // 2. Past the delivery limit on re-subscribe: dead letter refused again.
    let mut sub = s.t.subscribe(&s.queue, opts("a")).await.unwrap();
    for _ in 0..500 {
        if s.t.dead_letter_failures() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(s.t.dead_letter_failures(), 2);
    assert_eq!(
        pending(&mut c, &queue_key).await,
        1,
        "original must stay pending"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), sub.next())
            .await
            .is_err()
    );
    sub.cancel().await.unwrap();

    // 3. The key is usable again (the group is created on the first read of
    // the stream XADD creates): the next try lands.
    del(&mut c, &dlq_key).await;
    let _sub = s.t.subscribe(&s.queue, opts("a")).await.unwrap();
    let mut d = s.t.subscribe(&s.dlq, opts("dlq")).await.unwrap();
    let dead = next(&mut d).await;
    assert_eq!(dead.message.message_id.as_deref(), Some(env.message_id()));
    assert!(dead.message.headers[HEADER_DEAD_LETTER_REASON].starts_with("delivery-limit"));
    assert_eq!(pending(&mut c, &queue_key).await, 0);
    assert_eq!(s.t.dead_letter_failures(), 2);
    assert_eq!(s.bus.health().await.dead_letter_failures, 2);
}

/// A dead-letter routing key no stream is bound for: the dead letter is
/// unroutable, so the original is kept (not acked and lost).
#[tokio::test]
async fn unroutable_dead_letter_leaves_the_original_pending() {
    let s = setup_with(
        5,
        |t, q| t.queue_mut(q).unwrap().dead_letter_routing_key = Some("nowhere".into()),
        no_reclaim,
    )
    .await;
    let env = Envelope::new("e", &1).unwrap();
    assert!(s.bus.publish(&env).await.unwrap().is_confirmed());
    let mut sub = s.t.subscribe(&s.queue, opts("a")).await.unwrap();
    let d = next(&mut sub).await;
    let err = d.acker.dead_letter(d.message).await.unwrap_err();
    assert!(matches!(err, Error::DeadLetterNotStored { .. }), "{err:?}");
    let mut c = raw().await;
    assert_eq!(pending(&mut c, &s.stream(&s.queue)).await, 1);
    assert_eq!(s.t.dead_letter_failures(), 1);
    let h = s.bus.health().await;
    assert_eq!(h.dead_letter_depth, Some(0), "{h:?}");
    assert_eq!(h.dead_letter_failures, 1, "{h:?}");
}

/// An `XADD` that Redis refuses fails that message only (`Nacked`), not the
/// other messages pipelined with it.
#[tokio::test]
async fn refused_xadd_nacks_only_its_message() {
    let other = finsight_testkit::unique("q2");
    let o = other.clone();
    let s = setup_with(5, move |t, _| *t = t.clone().consumer_queue(&o), |_| {}).await;
    let to_other = Bus::connect(s.t.clone(), s.bus.topology().clone(), other.clone())
        .await
        .unwrap();
    let mut c = raw().await;
    not_a_stream(&mut c, &s.stream(&other)).await;
    let mut sent = Vec::new();
    for n in 0..50 {
        let bus = if n % 5 == 0 { &to_other } else { &s.bus };
        sent.push((n, bus.send(&Envelope::new("e", &n).unwrap()).await.unwrap()));
    }
    for (n, p) in sent {
        let outcome = p.await;
        if n % 5 == 0 {
            assert_eq!(outcome, PublishOutcome::Nacked, "message {n}");
        } else {
            assert_eq!(outcome, PublishOutcome::Confirmed, "message {n}");
        }
    }
    let len: usize = redis::cmd("XLEN")
        .arg(s.stream(&s.queue))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(len, 40);
}

/// With prefetch = concurrency = N and handlers that hold their messages,
/// the group never has more than N entries pending while more wait in the
/// stream.
#[tokio::test]
async fn pending_list_is_bounded_by_prefetch() {
    const N: usize = 4;
    const TOTAL: usize = 25;
    let s = setup_with(5, |_, _| {}, no_reclaim).await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let (g, st) = (gate.clone(), started.clone());
    let consumer = s
        .bus
        .consumer(
            &s.queue,
            Router::new().on("e", move |_c: Context| {
                let (g, st) = (g.clone(), st.clone());
                async move {
                    st.fetch_add(1, Ordering::SeqCst);
                    g.acquire().await.unwrap().forget();
                    Ok(())
                }
            }),
        )
        .prefetch(N as u16)
        .concurrency(N)
        .start()
        .unwrap();
    for n in 0..TOTAL {
        assert!(
            s.bus
                .publish(&Envelope::new("e", &n).unwrap())
                .await
                .unwrap()
                .is_confirmed()
        );
    }
    let key = s.stream(&s.queue);
    let mut c = raw().await;
    let mut max_pending = 0;
    let mut waiting_seen = false;
    for _ in 0..2000 {
        if started.load(Ordering::SeqCst) >= N {
            break;
        }
        max_pending = max_pending.max(pending(&mut c, &key).await);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(started.load(Ordering::SeqCst), N);
    // Let one message through at a time; sample the pending list in between.
    for released in 0..=TOTAL {
        for _ in 0..5 {
            let p = pending(&mut c, &key).await;
            max_pending = max_pending.max(p);
            let h = s.bus.health().await;
            let lag = h.queues[0].depth.unwrap_or(0);
            if lag > 0 {
                waiting_seen = true;
                assert!(p <= N, "pending {p} > prefetch {N} with {lag} waiting");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if released < TOTAL {
            gate.add_permits(1);
        }
        for _ in 0..2000 {
            if consumer.stats().acked as usize > released || started.load(Ordering::SeqCst) == TOTAL
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    for _ in 0..2000 {
        if consumer.stats().acked as usize == TOTAL {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let st = consumer.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(st.acked as usize, TOTAL, "{st:?}");
    assert!(waiting_seen, "entries never waited in the stream");
    assert!(max_pending <= N, "pending reached {max_pending} > {N}");
    assert_eq!(max_pending, N, "the consumer never filled its prefetch");
    assert_eq!(pending(&mut c, &key).await, 0);
}

/// `Health::reconnects` counts re-established connections: the shared
/// connection killed by the server is one reconnect (however many commands
/// failed meanwhile); the topology re-declared after Redis lost it is not.
#[tokio::test]
async fn health_reconnects_counts_real_reconnects() {
    let s = setup_with(5, |_, _| {}, |_| {}).await;
    assert_eq!(s.bus.health().await.reconnects, 0);
    let mut c = raw().await;
    // Redis lost the topology (as after a restart without persistence), but
    // the connection is fine: not a reconnect.
    del(
        &mut c,
        &format!("{}x:{}", s.prefix, s.bus.topology().exchange.name),
    )
    .await;
    let _sub = s.t.subscribe(&s.queue, opts("a")).await.unwrap();
    assert_eq!(s.t.topology_redeclares(), 1);
    assert_eq!(s.bus.health().await.reconnects, 0);

    // The server closes our shared connection.
    let name = format!("finsight-bus:{}", s.prefix);
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut c)
        .await
        .unwrap();
    let id: String = list
        .lines()
        .find(|l| l.split(' ').any(|f| f == format!("name={name}")))
        .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .expect("shared connection in CLIENT LIST")
        .to_owned();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(&id)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(killed, 1);
    // Publishing fails while the connection is replaced, then works again.
    let mut confirmed = 0;
    for n in 0..500 {
        match s.bus.publish(&Envelope::new("e", &n).unwrap()).await {
            Ok(o) if o.is_confirmed() => confirmed += 1,
            _ => {}
        }
        if confirmed == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(confirmed, 3);
    let mut reconnects = 0;
    for _ in 0..500 {
        reconnects = s.t.reconnects();
        if reconnects > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(reconnects, 1);
    let h = s.bus.health().await;
    assert_eq!(h.reconnects, 1, "{h:?}");
    assert_eq!(h.state, ConnectionState::Connected);
    assert_eq!(s.t.topology_redeclares(), 1);
}

/// A pending entry trimmed from the stream (`MAXLEN`) has nothing left to
/// deliver: re-reading it on subscribe acks it, and the consumer goes on.
#[tokio::test]
async fn pending_entry_trimmed_from_the_stream_is_acked_and_skipped() {
    let s = setup_with(5, |_, _| {}, no_reclaim).await;
    assert!(
        s.bus
            .publish(&Envelope::new("e", &1).unwrap())
            .await
            .unwrap()
            .is_confirmed()
    );
    let mut sub = s.t.subscribe(&s.queue, opts("a")).await.unwrap();
    drop(next(&mut sub).await); // never settled
    sub.cancel().await.unwrap();
    let key = s.stream(&s.queue);
    let mut c = raw().await;
    let _: i64 = redis::cmd("XTRIM")
        .arg(&key)
        .arg("MAXLEN")
        .arg(0)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(pending(&mut c, &key).await, 1);
    let mut sub = s.t.subscribe(&s.queue, opts("a")).await.unwrap();
    let env = Envelope::new("e", &2).unwrap();
    assert!(s.bus.publish(&env).await.unwrap().is_confirmed());
    let d = next(&mut sub).await;
    assert_eq!(d.message.message_id.as_deref(), Some(env.message_id()));
    assert_eq!((d.delivery_count, d.redelivered), (1, false));
    d.acker.ack().await.unwrap();
    assert_eq!(pending(&mut c, &key).await, 0);
}

/// Entry ids of `count` new entries read by `consumer` (`XREADGROUP >`).
async fn read_as(
    c: &mut redis::aio::MultiplexedConnection,
    key: &str,
    consumer: &str,
    count: usize,
) -> Vec<String> {
    let r: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("finsight")
        .arg(consumer)
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(key)
        .arg(">")
        .query_async(c)
        .await
        .unwrap();
    r.keys
        .into_iter()
        .flat_map(|k| k.ids)
        .map(|i| i.id)
        .collect()
}

/// Hands `ids` to consumer `dead` as if it had taken them an hour ago and
/// died (`XCLAIM … IDLE`, `JUSTID`: delivery counts unchanged).
async fn make_stuck(c: &mut redis::aio::MultiplexedConnection, key: &str, ids: &[String]) {
    let _: Vec<String> = redis::cmd("XCLAIM")
        .arg(key)
        .arg("finsight")
        .arg("dead")
        .arg(0)
        .arg(ids)
        .arg("IDLE")
        .arg(3_600_000)
        .arg("JUSTID")
        .query_async(c)
        .await
        .unwrap();
}

/// Pending entries of one consumer.
async fn pending_of(c: &mut redis::aio::MultiplexedConnection, key: &str, consumer: &str) -> usize {
    let r: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(key)
        .arg("finsight")
        .arg("-")
        .arg("+")
        .arg(1000)
        .arg(consumer)
        .query_async(c)
        .await
        .unwrap();
    r.ids.len()
}

/// `XAUTOCLAIM` goes on where the previous round stopped. 15 entries at the
/// head of the pending list are in progress (just delivered to a live
/// consumer), 5 behind them are stuck. The reclaiming consumer has one free
/// slot (`COUNT 1`), so one call looks at no more than 10 entries: a scan
/// that restarted at `0-0` every round would look at the 10 entries in
/// progress forever and never reach the stuck ones. When Redis reports the
/// end of the list the scan starts over, so entries that got stuck at the
/// head meanwhile are found too.
#[tokio::test]
async fn reclaim_scans_through_a_pending_list_longer_than_one_call() {
    let s = setup_with(
        5,
        |_, _| {},
        |c| {
            // Only the entries made stuck below are idle long enough.
            c.claim_min_idle = Duration::from_secs(600);
            c.claim_interval = Duration::from_millis(20);
        },
    )
    .await;
    for n in 0..20u64 {
        let env = Envelope::new("e", &n).unwrap();
        assert!(s.bus.publish(&env).await.unwrap().is_confirmed());
    }
    let key = s.stream(&s.queue);
    let mut c = raw().await;
    let ids = read_as(&mut c, &key, "live", 20).await;
    assert_eq!(ids.len(), 20);
    make_stuck(&mut c, &key, &ids[15..]).await;

    let handled = Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = handled.clone();
    let router = Router::new().on_typed("e", move |_c: Context, n: u64| {
        h.lock().unwrap().push(n);
        async { Ok(()) }
    });
    let consumer = s
        .bus
        .consumer(&s.queue, router)
        .consumer_name("b")
        .prefetch(1)
        .concurrency(1)
        .start()
        .unwrap();
    let wait = |n: usize| {
        let handled = handled.clone();
        async move {
            for _ in 0..1500 {
                if handled.lock().unwrap().len() >= n {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            false
        }
    };
    assert!(
        wait(5).await,
        "stuck entries behind the head never reclaimed: {:?}",
        handled.lock().unwrap()
    );
    let mut got = handled.lock().unwrap().clone();
    got.sort_unstable();
    assert_eq!(got, (15..20).collect::<Vec<_>>());
    assert_eq!(pending_of(&mut c, &key, "live").await, 15);

    // The live consumer dies too: its entries, at the head, before where
    // the scan is now, are found once the scan starts over.
    make_stuck(&mut c, &key, &ids[..15]).await;
    assert!(
        wait(20).await,
        "scan did not start over: {:?}",
        handled.lock().unwrap()
    );
    let st = consumer.shutdown(Duration::from_secs(5)).await.unwrap();
    let mut got = handled.lock().unwrap().clone();
    got.sort_unstable();
    assert_eq!(got, (0..20).collect::<Vec<_>>(), "{st:?}");
    assert_eq!(st.acked, 20, "{st:?}");
    assert_eq!(pending(&mut c, &key).await, 0);
}
