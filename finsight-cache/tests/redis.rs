//! Against the real Redis (`finsight_testkit::redis_url()`), unique prefixes per test.
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use finsight_cache::redis::{Invalidation, InvalidationStatus, RedisOptions};
use finsight_cache::{Cache, CacheConfig};
use finsight_testkit::{redis_url, unique};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

mod support;
use support::AclUser;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Session {
    user_id: u64,
    roles: Vec<String>,
}

fn s(user_id: u64) -> Session {
    Session {
        user_id,
        roles: vec!["trader".into()],
    }
}

fn prefix(label: &str) -> String {
    format!("{}:", unique(label))
}

async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn cache_with(cfg: CacheConfig, inv: Invalidation) -> Cache<Session> {
    let c = Cache::builder(cfg)
        .redis(RedisOptions::new(&redis_url()).unwrap().invalidation(inv))
        .build()
        .await
        .unwrap();
    if inv != Invalidation::Off {
        assert_ne!(
            c.invalidation_status(),
            Some(InvalidationStatus::Connecting)
        );
    }
    c
}

async fn cache(cfg: CacheConfig) -> Cache<Session> {
    cache_with(cfg, Invalidation::Tracking).await
}

/// Polls (bounded: up to 2 s) until `key` left `c`'s L1; returns how long it took.
async fn wait_evicted(c: &Cache<Session>, key: &str) -> Option<Duration> {
    let start = Instant::now();
    for _ in 0..2_000 {
        if !c.contains_local(key).await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

#[tokio::test]
async fn wire_format_is_plain_json_with_ttl_or_gzip_json() {
    let p = prefix("wire");
    let plain = cache(CacheConfig::new("plain", &p, Duration::from_secs(1800))).await;
    plain.set("u1", &s(1)).await.unwrap();
    let mut r = raw().await;
    let body: Vec<u8> = redis::cmd("GET")
        .arg(format!("{p}u1"))
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
        serde_json::json!({"user_id": 1, "roles": ["trader"]})
    );
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("{p}u1"))
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(pttl > 1_790_000 && pttl <= 1_800_000, "{pttl}");

    let pz = prefix("wirez");
    let gz =
        cache(CacheConfig::new("gz", &pz, Duration::from_secs(3600)).with_compression(true)).await;
    gz.set("u2", &s(2)).await.unwrap();
    let body: Vec<u8> = redis::cmd("GET")
        .arg(format!("{pz}u2"))
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(&body[..2], &[0x1f, 0x8b], "gzip magic");
    let mut json = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut json).unwrap();
    assert_eq!(serde_json::from_str::<Session>(&json).unwrap(), s(2));
}

#[tokio::test]
async fn l2_hit_fills_l1_no_longer_than_the_pttl_left() {
    let p = prefix("pttl");
    let c = cache(CacheConfig::new("pttl", &p, Duration::from_secs(1800))).await;
    let mut r = raw().await;
    let _: () = redis::cmd("SET")
        .arg(format!("{p}k"))
        .arg(serde_json::to_vec(&s(5)).unwrap())
        .arg("PX")
        .arg(300)
        .query_async(&mut r)
        .await
        .unwrap();
    // That write's invalidation must arrive before the read, or it evicts the fill.
    settle(&c, 0).await;
    assert_eq!(c.get("k").await.unwrap(), Some(s(5)));
    assert!(c.contains_local("k").await, "L2 hit copied into L1");
    assert_eq!(c.stats().l2.hits, 1);
    // Wait (bounded) until Redis expired the key; L1 must not outlive it.
    let mut gone = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let exists: i64 = redis::cmd("EXISTS")
            .arg(format!("{p}k"))
            .query_async(&mut r)
            .await
            .unwrap();
        if exists == 0 {
            gone = true;
            break;
        }
    }
    assert!(gone);
    assert!(
        !c.contains_local("k").await,
        "L1 entry expired with the Redis key"
    );
    assert_eq!(c.get("k").await.unwrap(), None);
}

/// Waits (bounded: 2 s) until `c` received more invalidations than `before`.
async fn settle(c: &Cache<Session>, before: u64) {
    for _ in 0..2_000 {
        if c.stats().invalidations_received > before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("no invalidation arrived within 2 s");
}

/// B holds `k` in L1; then `write` runs and B's L1 must lose `k`.
/// Returns the time from the start of the write to the eviction.
async fn eviction_latency<F: std::future::Future<Output = ()>>(
    b: &Cache<Session>,
    write: F,
) -> Duration {
    assert!(b.contains_local("k").await, "precondition: B holds k in L1");
    let start = Instant::now();
    write.await;
    for _ in 0..20_000 {
        if !b.contains_local("k").await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_micros(100)).await;
    }
    panic!("B's L1 still holds k 2 s after the write");
}

#[tokio::test]
async fn write_on_one_instance_evicts_the_other_instances_l1() {
    let p = prefix("xinst");
    let cfg = CacheConfig::new("xinst", &p, Duration::from_secs(600));
    let a = cache(cfg.clone()).await;
    let b = cache(cfg).await;
    assert_eq!(a.invalidation_status(), Some(InvalidationStatus::Tracking));
    assert_eq!(b.invalidation_status(), Some(InvalidationStatus::Tracking));

    let before = b.stats().invalidations_received;
    a.set("k", &s(1)).await.unwrap();
    settle(&b, before).await;
    assert_eq!(b.get("k").await.unwrap(), Some(s(1)));
    let took = eviction_latency(&b, async { a.set("k", &s(2)).await.unwrap() }).await;
    eprintln!("cross-instance eviction, set on A: {took:?}");
    assert_eq!(b.get("k").await.unwrap(), Some(s(2)));

    let took = eviction_latency(&b, async { a.delete("k").await.unwrap() }).await;
    eprintln!("cross-instance eviction, delete on A: {took:?}");
    assert_eq!(b.get("k").await.unwrap(), None);

    // A write by any other client (as the Python services do) evicts too.
    b.set("k", &s(3)).await.unwrap();
    assert_eq!(b.get("k").await.unwrap(), Some(s(3)));
    let mut r = raw().await;
    let took = eviction_latency(&b, async {
        let _: () = redis::cmd("SET")
            .arg(format!("{p}k"))
            .arg(serde_json::to_vec(&s(4)).unwrap())
            .arg("EX")
            .arg(60)
            .query_async(&mut r)
            .await
            .unwrap();
    })
    .await;
    eprintln!("cross-instance eviction, foreign SET: {took:?}");
    assert_eq!(b.get("k").await.unwrap(), Some(s(4)));
}

#[tokio::test]
async fn own_writes_do_not_evict_own_l1() {
    // Writes go through the tracking connection (NOLOOP): no self-invalidation.
    let p = prefix("noloop");
    let cfg = CacheConfig::new("noloop", &p, Duration::from_secs(600));
    let a = cache(cfg.clone()).await;
    let b = cache(cfg).await;
    let before = a.stats().invalidations_received;
    a.set("mine", &s(1)).await.unwrap();
    // Barrier: B's later write reaches A after any message about A's own write would have.
    b.set("barrier", &s(2)).await.unwrap();
    settle(&a, before).await;
    assert_eq!(
        a.stats().invalidations_received,
        before + 1,
        "only B's write came back"
    );
    assert!(a.contains_local("mine").await, "A kept its own write in L1");
    assert_eq!(a.get("mine").await.unwrap(), Some(s(1)));
    assert_eq!(a.stats().l2.hits + a.stats().l2.misses, 0, "served from L1");
}

#[tokio::test]
async fn pubsub_fallback_also_invalidates_other_instances() {
    let p = prefix("pubsub");
    let cfg = CacheConfig::new("pubsub", &p, Duration::from_secs(600));
    let a = cache_with(cfg.clone(), Invalidation::PubSub).await;
    let b = cache_with(cfg, Invalidation::PubSub).await;
    assert_eq!(b.invalidation_status(), Some(InvalidationStatus::PubSub));
    let before = b.stats().invalidations_received;
    a.set("k", &s(1)).await.unwrap();
    settle(&b, before).await;
    assert_eq!(b.get("k").await.unwrap(), Some(s(1)));
    let took = eviction_latency(&b, async { a.set("k", &s(2)).await.unwrap() }).await;
    eprintln!("cross-instance eviction through pub/sub: {took:?}");
    assert_eq!(b.get("k").await.unwrap(), Some(s(2)));
    assert!(
        a.contains_local("k").await,
        "the writer skips its own message"
    );
    assert!(a.stats().invalidations_sent >= 2);
    assert!(b.stats().invalidations_received >= 1);
}

#[tokio::test]
async fn a_fill_that_raced_a_remote_invalidation_leaves_no_stale_value() {
    let p = prefix("race");
    let cfg = CacheConfig::new("race", &p, Duration::from_secs(600));
    let a = cache(cfg.clone()).await;
    let b = cache(cfg).await;
    let started = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let (st, rl) = (Arc::clone(&started), Arc::clone(&release));
    let a2 = a.clone();
    let fill = tokio::spawn(async move {
        a2.get_or_load("k", move || async move {
            st.notify_one();
            rl.notified().await;
            Ok::<_, std::io::Error>(Some(s(0))) // read from the source before B's write
        })
        .await
    });
    started.notified().await;
    let before = a.stats().invalidations_received;
    b.set("k", &s(1)).await.unwrap();
    // Bounded wait until A has received the invalidation.
    for _ in 0..2_000 {
        if a.stats().invalidations_received > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(a.stats().invalidations_received > before, "A saw B's write");
    release.notify_one();
    assert_eq!(fill.await.unwrap().unwrap(), Some(s(0)));
    assert!(!a.contains_local("k").await, "stale fill not stored");
    assert_eq!(a.get("k").await.unwrap(), Some(s(1)));
    let mut r = raw().await;
    let body: Vec<u8> = redis::cmd("GET")
        .arg(format!("{p}k"))
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Session>(&body).unwrap(),
        s(1),
        "Redis keeps B's newer value"
    );
}

#[tokio::test]
async fn invalidate_pattern_scans_and_unlinks() {
    let p = prefix("pattern");
    let cfg = CacheConfig::new("pattern", &p, Duration::from_secs(600));
    let a = cache(cfg.clone()).await;
    let b = cache(cfg).await;
    for i in 0..1_200 {
        a.set(&format!("user:{i}:profile"), &s(i)).await.unwrap();
    }
    let before = b.stats().invalidations_received;
    a.set("user:1:prefs", &s(1)).await.unwrap();
    // Let the 1 201 writes' invalidations drain before B caches a key.
    for _ in 0..2_000 {
        if b.stats().invalidations_received >= before + 1_201 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(b.get("user:7:profile").await.unwrap(), Some(s(7)));
    assert!(b.contains_local("user:7:profile").await);
    let n = a.invalidate_pattern("user:*:profile").await.unwrap();
    assert_eq!(n, 1_200);
    assert_eq!(a.get("user:3:profile").await.unwrap(), None);
    assert_eq!(a.get("user:1:prefs").await.unwrap(), Some(s(1)));
    wait_evicted(&b, "user:7:profile")
        .await
        .expect("other instance evicted");
    let mut r = raw().await;
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{p}*"))
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(left, vec![format!("{p}user:1:prefs")]);
}

#[tokio::test]
async fn get_or_load_reads_redis_before_the_loader_and_writes_back() {
    let p = prefix("rt");
    let cfg = CacheConfig::new("rt", &p, Duration::from_secs(600));
    let a = cache(cfg.clone()).await;
    let b = cache(cfg).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let loader = |calls: Arc<AtomicUsize>| {
        move || async move {
            calls.fetch_add(1, SeqCst);
            Ok::<_, std::io::Error>(Some(s(42)))
        }
    };
    assert_eq!(
        a.get_or_load("k", loader(Arc::clone(&calls)))
            .await
            .unwrap(),
        Some(s(42))
    );
    assert_eq!(
        b.get_or_load("k", loader(Arc::clone(&calls)))
            .await
            .unwrap(),
        Some(s(42))
    );
    assert_eq!(calls.load(SeqCst), 1, "B found A's value in Redis");
    assert_eq!(b.stats().l2.hits, 1);
}

#[tokio::test]
async fn lease_makes_one_instance_load_for_all() {
    let p = prefix("lease");
    let cfg =
        CacheConfig::new("lease", &p, Duration::from_secs(600)).with_lease(Duration::from_secs(2));
    let mut instances = Vec::new();
    for _ in 0..4 {
        instances.push(cache(cfg.clone()).await);
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in instances {
        let calls = Arc::clone(&calls);
        tasks.push(tokio::spawn(async move {
            c.get_or_load("hot", move || async move {
                calls.fetch_add(1, SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok::<_, std::io::Error>(Some(s(9)))
            })
            .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), Some(s(9)));
    }
    assert_eq!(calls.load(SeqCst), 1, "one load across four instances");
}

#[tokio::test]
async fn redis_unreachable_reads_fall_back_and_writes_report_it() {
    // Nothing listens on port 1: every L2 call fails fast (no outage of the shared Redis).
    let cfg = CacheConfig::new("down", "down:", Duration::from_secs(60))
        .with_l2_timeout(Duration::from_millis(200));
    let c: Cache<Session> = Cache::builder(cfg)
        .redis(
            RedisOptions::new("redis://127.0.0.1:1")
                .unwrap()
                .connect_timeout(Duration::from_millis(200)),
        )
        .build()
        .await
        .unwrap();
    assert_eq!(
        c.invalidation_status(),
        Some(InvalidationStatus::Connecting)
    );
    assert_eq!(c.get("k").await.unwrap(), None);
    let v = c
        .get_or_load("k", || async { Ok::<_, std::io::Error>(Some(s(1))) })
        .await
        .unwrap();
    assert_eq!(v, Some(s(1)));
    assert_eq!(c.get("k").await.unwrap(), Some(s(1)), "L1 serves");
    let err = c.set("k", &s(2)).await.unwrap_err();
    assert!(err.to_string().contains("Redis"), "{err}");
    assert!(c.stats().l2.errors >= 2, "{:?}", c.stats());
}

#[tokio::test]
async fn foreign_shapes_in_redis_are_counted_not_fatal() {
    let p = prefix("shapes");
    // A reader without compression still reads a gzip body (magic bytes).
    let plain = cache(CacheConfig::new("shapes", &p, Duration::from_secs(600))).await;
    let gz =
        cache(CacheConfig::new("shapes-gz", &p, Duration::from_secs(600)).with_compression(true))
            .await;
    gz.set("g", &s(8)).await.unwrap();
    assert_eq!(plain.get("g").await.unwrap(), Some(s(8)));
    // A value of another shape, or garbage: an L2 error and a miss, never a panic.
    let mut r = raw().await;
    for (k, body) in [
        ("other", b"{\"nope\":1}".to_vec()),
        ("junk", vec![0x1f, 0x8b, 0, 1, 2]),
    ] {
        let _: () = redis::cmd("SET")
            .arg(format!("{p}{k}"))
            .arg(body)
            .query_async(&mut r)
            .await
            .unwrap();
    }
    assert_eq!(plain.get("other").await.unwrap(), None);
    assert_eq!(plain.get("junk").await.unwrap(), None);
    assert_eq!(plain.stats().l2.errors, 2);
    // The loader replaces an undecodable value's role: it is called.
    let v = plain
        .get_or_load("other", || async { Ok::<_, std::io::Error>(Some(s(10))) })
        .await
        .unwrap();
    assert_eq!(v, Some(s(10)));
}

/// A call guard that admits while `open` is false and counts outcomes.
#[derive(Clone, Default)]
struct CountingGuard {
    open: Arc<std::sync::atomic::AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
}

struct CountingPermit(CountingGuard);

impl finsight_cache::redis::RedisCallPermit for CountingPermit {
    fn record(self: Box<Self>, ok: bool) {
        let c = if ok { &self.0.ok } else { &self.0.failed };
        c.fetch_add(1, SeqCst);
    }
}

impl finsight_cache::redis::RedisCallGuard for CountingGuard {
    fn admit(&self) -> Option<Box<dyn finsight_cache::redis::RedisCallPermit>> {
        (!self.open.load(SeqCst)).then(|| Box::new(CountingPermit(self.clone())) as _)
    }
}

#[tokio::test]
async fn a_call_guard_that_refuses_keeps_the_cache_off_redis() {
    let guard = CountingGuard::default();
    let p = prefix("guard");
    let c: Cache<Session> = Cache::builder(CacheConfig::new("guard", &p, Duration::from_secs(60)))
        .redis(
            RedisOptions::new(&redis_url())
                .unwrap()
                .invalidation(Invalidation::Off)
                .call_guard(guard.clone()),
        )
        .build()
        .await
        .unwrap();
    let mut r = raw().await;
    let json = serde_json::to_string(&s(7)).unwrap();
    let () = redis::AsyncCommands::set(&mut r, format!("{p}k"), &json)
        .await
        .unwrap();

    guard.open.store(true, SeqCst);
    assert_eq!(c.get("k").await.unwrap(), None, "refused read is a miss");
    assert!(c.set("w", &s(1)).await.is_err(), "refused write reports it");
    let exists: bool = redis::AsyncCommands::exists(&mut r, format!("{p}w"))
        .await
        .unwrap();
    assert!(!exists);
    assert_eq!((guard.ok.load(SeqCst), guard.failed.load(SeqCst)), (0, 0));

    guard.open.store(false, SeqCst);
    assert_eq!(c.get("k").await.unwrap(), Some(s(7)));
    c.set("w", &s(1)).await.unwrap();
    assert_eq!((guard.ok.load(SeqCst), guard.failed.load(SeqCst)), (2, 0));
}

#[tokio::test]
async fn data_commands_run_on_a_given_connection_manager() {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut manager = redis::aio::ConnectionManager::new(client).await.unwrap();
    let name = unique("cache-manager").replace([':', ' '], "-");
    let () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(&name)
        .query_async(&mut manager)
        .await
        .unwrap();
    let p = prefix("manager");
    let c: Cache<Session> =
        Cache::builder(CacheConfig::new("manager", &p, Duration::from_secs(60)))
            .redis(
                RedisOptions::new(&redis_url())
                    .unwrap()
                    .invalidation(Invalidation::Off)
                    .connection_manager(manager),
            )
            .build()
            .await
            .unwrap();
    c.set("k", &s(3)).await.unwrap();
    let mut r = raw().await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut r)
        .await
        .unwrap();
    let tag = format!(" name={name} ");
    let mine: Vec<&str> = list.lines().filter(|l| l.contains(&tag)).collect();
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert!(
        mine[0].contains(" cmd=set "),
        "the SET ran elsewhere: {mine:?}"
    );
    let stored: String = redis::AsyncCommands::get(&mut r, format!("{p}k"))
        .await
        .unwrap();
    assert_eq!(stored, serde_json::to_string(&s(3)).unwrap());
}

/// Two instances whose Redis user may not run `CLIENT TRACKING` (an ACL
/// that denies `client|tracking`): both fall back to pub/sub by themselves
/// and still evict each other's L1 on set, delete and pattern invalidation.
#[tokio::test]
async fn tracking_refused_by_redis_falls_back_to_pubsub() {
    let user = AclUser::create("cache-notrack", &["-client|tracking"]);
    // Precondition: Redis really refuses tracking to this user.
    let mut probe = redis::Client::open(user.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let refused = redis::cmd("CLIENT")
        .arg("TRACKING")
        .arg("ON")
        .arg("BCAST")
        .query_async::<()>(&mut probe)
        .await
        .unwrap_err();
    assert!(
        refused.to_string().to_lowercase().contains("noperm"),
        "expected NOPERM, got {refused}"
    );
    drop(probe);

    let p = prefix("notrack");
    let cfg = CacheConfig::new("notrack", &p, Duration::from_secs(600));
    let build = || async {
        Cache::<Session>::builder(cfg.clone())
            // The default transport: tracking, which this user may not use.
            .redis(RedisOptions::new(&user.url()).unwrap())
            .build()
            .await
            .unwrap()
    };
    let a = build().await;
    let b = build().await;
    assert_eq!(a.invalidation_status(), Some(InvalidationStatus::PubSub));
    assert_eq!(b.invalidation_status(), Some(InvalidationStatus::PubSub));
    // Redis' side: none of this user's connections tracks, two subscribe.
    let conns = user.connections();
    assert!(
        conns.iter().all(|c| c.contains(" redir=-1 ")),
        "no tracking connection: {conns:#?}"
    );
    assert_eq!(
        conns.iter().filter(|c| c.contains(" sub=1 ")).count(),
        2,
        "one subscriber per instance: {conns:#?}"
    );

    // set on A evicts B's copy.
    let before = b.stats().invalidations_received;
    a.set("k", &s(1)).await.unwrap();
    settle(&b, before).await; // or that first message evicts B's fill below
    assert_eq!(b.get("k").await.unwrap(), Some(s(1)));
    let took = eviction_latency(&b, async { a.set("k", &s(2)).await.unwrap() }).await;
    eprintln!("pub/sub fallback eviction, set on A: {took:?}");
    assert_eq!(b.get("k").await.unwrap(), Some(s(2)));
    assert!(a.contains_local("k").await, "A keeps its own write");

    // delete on A evicts it too.
    let took = eviction_latency(&b, async { a.delete("k").await.unwrap() }).await;
    eprintln!("pub/sub fallback eviction, delete on A: {took:?}");
    assert_eq!(b.get("k").await.unwrap(), None);

    // So does a pattern invalidation, and B's own writes reach A.
    let before = a.stats().invalidations_received;
    b.set("k", &s(3)).await.unwrap();
    settle(&a, before).await;
    assert_eq!(a.get("k").await.unwrap(), Some(s(3)));
    assert!(a.contains_local("k").await);
    assert!(b.contains_local("k").await);
    let took = eviction_latency(&b, async {
        assert_eq!(a.invalidate_pattern("k*").await.unwrap(), 1);
    })
    .await;
    eprintln!("pub/sub fallback eviction, pattern on A: {took:?}");
    assert_eq!(b.get("k").await.unwrap(), None);

    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(sa.invalidations_sent, 4, "{sa:?}"); // set, set, delete, pattern
    assert_eq!(sb.invalidations_sent, 1, "{sb:?}");
    assert!(sb.invalidations_received >= 4, "{sb:?}");
    drop((a, b));
}

fn raw_set_px(p: &str, key: &str, v: &Session, px: u64) -> redis::Cmd {
    redis::cmd("SET")
        .arg(format!("{p}{key}"))
        .arg(serde_json::to_vec(v).unwrap())
        .arg("PX")
        .arg(px)
        .clone()
}

async fn raw_get(r: &mut redis::aio::MultiplexedConnection, p: &str, key: &str) -> Option<Session> {
    let body: Option<Vec<u8>> = redis::cmd("GET")
        .arg(format!("{p}{key}"))
        .query_async(r)
        .await
        .unwrap();
    body.map(|b| serde_json::from_slice(&b).unwrap())
}

/// Refresh-ahead on the real Redis: an entry whose TTL left in Redis is
/// under the threshold is served at once and reloaded in the background by
/// one load; readers keep the old value meanwhile; the new value lands in
/// Redis (with a full TTL) and in L1, and the other instance's L1 copy is
/// evicted. Driven by the TTL Redis reports, not by waiting.
#[tokio::test]
async fn refresh_ahead_reloads_once_in_background_into_l1_and_redis() {
    let p = prefix("refresh");
    // 60 s TTL, refresh once less than 30 s is left.
    let cfg = CacheConfig::new("refresh", &p, Duration::from_secs(60)).with_refresh_ahead(0.5);
    let a = cache(cfg.clone()).await;
    let b = cache(cfg).await;
    let mut r = raw().await;
    // Written "40 s ago" by someone: 20 s left, under the threshold.
    let (before_a, before_b) = (
        a.stats().invalidations_received,
        b.stats().invalidations_received,
    );
    let () = raw_set_px(&p, "q", &s(0), 20_000)
        .query_async(&mut r)
        .await
        .unwrap();
    // That write's invalidation must not evict the fills below.
    settle(&a, before_a).await;
    settle(&b, before_b).await;

    let loads = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let loader = |value: u64| {
        let (loads, started, release) = (
            Arc::clone(&loads),
            Arc::clone(&started),
            Arc::clone(&release),
        );
        move || async move {
            loads.fetch_add(1, SeqCst);
            started.notify_one();
            release.notified().await;
            Ok::<_, std::io::Error>(Some(s(value)))
        }
    };

    // The L2 hit fills L1 with 20 s left: no load, but a refresh is due.
    assert_eq!(a.get_or_load("q", loader(99)).await.unwrap(), Some(s(0)));
    assert_eq!((a.stats().loads, a.stats().refreshes), (0, 0));
    assert_eq!(
        b.get("q").await.unwrap(),
        Some(s(0)),
        "B holds the old value too"
    );
    assert!(b.contains_local("q").await);

    // The next read serves the old value at once and starts the refresh.
    assert_eq!(a.get_or_load("q", loader(1)).await.unwrap(), Some(s(0)));
    tokio::time::timeout(Duration::from_secs(5), started.notified())
        .await
        .expect("the refresh's loader started");
    let l2_reads = |c: &Cache<Session>| c.stats().l2.hits + c.stats().l2.misses;
    let a_l2_reads = l2_reads(&a);
    // While it runs: the old value from L1, no second refresh or load.
    for _ in 0..20 {
        assert_eq!(a.get_or_load("q", loader(2)).await.unwrap(), Some(s(0)));
        assert_eq!(a.get("q").await.unwrap(), Some(s(0)));
    }
    let st = a.stats();
    assert_eq!((st.loads, st.refreshes), (1, 1), "{st:?}");
    assert_eq!(l2_reads(&a), a_l2_reads, "served from L1 while refreshing");
    assert_eq!(raw_get(&mut r, &p, "q").await, Some(s(0)));

    release.notify_one();
    // Bounded wait until the refreshed value is in A's L1.
    let mut refreshed = false;
    for _ in 0..2_000 {
        if a.get("q").await.unwrap() == Some(s(1)) {
            refreshed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(refreshed, "the refreshed value reached A's L1");
    assert_eq!(l2_reads(&a), a_l2_reads, "A read it from L1, not Redis");
    let st = a.stats();
    assert_eq!(
        (st.loads, st.refreshes, st.load_errors),
        (1, 1, 0),
        "{st:?}"
    );

    // In Redis: the new value with a new full TTL (more than the old key
    // ever had left).
    assert_eq!(raw_get(&mut r, &p, "q").await, Some(s(1)));
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("{p}q"))
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(pttl > 20_000, "refresh wrote a full TTL: PTTL {pttl}");

    // B's old copy was evicted by the refresh's write, and B reads the new value.
    wait_evicted(&b, "q").await.expect("B's L1 evicted");
    assert_eq!(b.get("q").await.unwrap(), Some(s(1)));
    // A does not refresh again: the new entry is far from expiry.
    assert_eq!(a.get_or_load("q", loader(3)).await.unwrap(), Some(s(1)));
    assert_eq!(a.stats().refreshes, 1);
}

/// A refresh that finds a value another instance already refreshed in Redis
/// (more TTL left than the threshold) takes it instead of loading.
#[tokio::test]
async fn refresh_ahead_takes_a_value_another_instance_refreshed() {
    let p = prefix("refresh2");
    let cfg = CacheConfig::new("refresh2", &p, Duration::from_secs(60)).with_refresh_ahead(0.5);
    // No invalidation: the other writer's SET must not evict A's copy first.
    let a = cache_with(cfg, Invalidation::Off).await;
    let mut r = raw().await;
    let () = raw_set_px(&p, "q", &s(0), 20_000)
        .query_async(&mut r)
        .await
        .unwrap();
    let loads = Arc::new(AtomicUsize::new(0));
    let loader = || {
        let loads = Arc::clone(&loads);
        move || async move {
            loads.fetch_add(1, SeqCst);
            Ok::<_, std::io::Error>(Some(s(99)))
        }
    };
    assert_eq!(a.get_or_load("q", loader()).await.unwrap(), Some(s(0)));
    // Another instance refreshed it meanwhile: a full TTL left.
    let () = raw_set_px(&p, "q", &s(7), 60_000)
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(a.get_or_load("q", loader()).await.unwrap(), Some(s(0)));
    let mut refreshed = false;
    for _ in 0..2_000 {
        if a.get("q").await.unwrap() == Some(s(7)) {
            refreshed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(refreshed, "A took the other instance's value");
    assert_eq!(loads.load(SeqCst), 0, "no load");
    let st = a.stats();
    assert_eq!((st.loads, st.refreshes), (0, 1), "{st:?}");
    assert_eq!(raw_get(&mut r, &p, "q").await, Some(s(7)));
}

/// A refresh whose key another instance wrote while the loader ran stores
/// nothing: neither its older value in L1 nor over the newer one in Redis.
#[tokio::test]
async fn a_refresh_that_raced_a_remote_write_leaves_no_stale_value() {
    let p = prefix("refresh-race");
    let cfg = CacheConfig::new("refresh-race", &p, Duration::from_secs(60)).with_refresh_ahead(0.5);
    let a = cache(cfg.clone()).await;
    let b = cache(cfg).await;
    let mut r = raw().await;
    let before = a.stats().invalidations_received;
    let () = raw_set_px(&p, "q", &s(0), 20_000)
        .query_async(&mut r)
        .await
        .unwrap();
    settle(&a, before).await;
    let noop = || async { Ok::<Option<Session>, std::io::Error>(None) };
    assert_eq!(a.get_or_load("q", noop).await.unwrap(), Some(s(0)));

    let started = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let (st, rl) = (Arc::clone(&started), Arc::clone(&release));
    let served = a
        .get_or_load("q", move || async move {
            st.notify_one();
            rl.notified().await;
            Ok::<_, std::io::Error>(Some(s(1))) // read before B's write
        })
        .await
        .unwrap();
    assert_eq!(served, Some(s(0)));
    tokio::time::timeout(Duration::from_secs(5), started.notified())
        .await
        .expect("the refresh's loader started");

    let before = a.stats().invalidations_received;
    b.set("q", &s(5)).await.unwrap();
    settle(&a, before).await;
    assert!(!a.contains_local("q").await, "B's write evicted A's copy");
    release.notify_one();
    // Bounded wait until the refresh has finished (and dropped its fill).
    for _ in 0..2_000 {
        if a.stats().fills_dropped > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let st = a.stats();
    assert_eq!(
        (st.loads, st.refreshes, st.fills_dropped),
        (1, 1, 1),
        "{st:?}"
    );
    assert!(
        !a.contains_local("q").await,
        "the refresh's stale value is not in L1"
    );
    assert_eq!(raw_get(&mut r, &p, "q").await, Some(s(5)), "nor in Redis");
    assert_eq!(a.get("q").await.unwrap(), Some(s(5)));
}

/// A Redis that accepts connections and never answers: building, reading
/// and writing all return (bounded by the configured timeouts), L1 serves.
#[tokio::test]
async fn a_redis_that_never_answers_does_not_hang_calls() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock); // read nothing, answer nothing
        }
    });
    let cfg = CacheConfig::new("silent", "silent:", Duration::from_secs(60))
        .with_l2_timeout(Duration::from_millis(200));
    let build = Cache::<Session>::builder(cfg)
        .redis(
            RedisOptions::new(&format!("redis://127.0.0.1:{port}"))
                .unwrap()
                .connect_timeout(Duration::from_millis(300)),
        )
        .build();
    let c = tokio::time::timeout(Duration::from_secs(5), build)
        .await
        .expect("build hung")
        .unwrap();
    assert_eq!(
        c.invalidation_status(),
        Some(InvalidationStatus::Connecting)
    );
    let get = tokio::time::timeout(Duration::from_secs(5), c.get("k"))
        .await
        .expect("get hung");
    assert_eq!(get.unwrap(), None);
    let loaded = tokio::time::timeout(
        Duration::from_secs(5),
        c.get_or_load("k", || async { Ok::<_, std::io::Error>(Some(s(1))) }),
    )
    .await
    .expect("get_or_load hung");
    assert_eq!(loaded.unwrap(), Some(s(1)));
    let set = tokio::time::timeout(Duration::from_secs(5), c.set("w", &s(2)))
        .await
        .expect("set hung");
    assert!(
        matches!(set, Err(finsight_cache::Error::Timeout { .. })),
        "{set:?}"
    );
    let errors = c.stats().l2.errors;
    assert!(errors >= 2, "{:?}", c.stats());
    // L1 serves what the loader returned, without asking Redis again.
    assert_eq!(c.get("k").await.unwrap(), Some(s(1)));
    assert_eq!(c.stats().l2.errors, errors);
    drop(c);
    silent.abort();
}
