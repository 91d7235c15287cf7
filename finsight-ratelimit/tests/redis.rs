//! The Redis backend against the real Redis at `finsight_testkit::redis_url()`.
#![cfg(feature = "redis")]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use finsight_ratelimit::{
    Algorithm, Decision, FailureMode, Limiter, ManualClock, Outcome, RedisBackend, RedisConfig,
    RequestInfo, Rule, RuleSet, Scope,
};
use finsight_testkit::{redis_url, unique};

const HOUR: Duration = Duration::from_secs(3600);

async fn redis_limiter(rules: &RuleSet, cfg: RedisConfig) -> Limiter {
    let backend = RedisBackend::connect(cfg)
        .await
        .expect("redis reachable (run scripts/services.sh)");
    Limiter::builder(rules.clone())
        .redis(backend)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_sharing_redis_admit_in_total_exactly_the_limit() {
    for alg in Algorithm::ALL {
        let tag = unique("rl-four");
        let rules = RuleSet::new(vec![Rule::new("shared", Scope::Tenant, alg, 37, HOUR)]);
        let mut instances = vec![];
        for _ in 0..4 {
            instances.push(
                redis_limiter(
                    &rules,
                    RedisConfig::new(redis_url())
                        .tag(&tag)
                        .timeout(Duration::from_secs(5)),
                )
                .await,
            );
        }
        let mut tasks = vec![];
        for (i, l) in instances.into_iter().enumerate() {
            for j in 0..3 {
                let l = l.clone();
                tasks.push(tokio::spawn(async move {
                    let mut admitted = 0u32;
                    for _ in 0..8 {
                        let d = l
                            .check(&RequestInfo::new("GET", "/").tenant("acme"))
                            .await
                            .unwrap();
                        assert!(!d.fallback, "instance {i}/{j} fell back: {d:?}");
                        admitted += u32::from(d.is_allowed());
                    }
                    admitted
                }));
            }
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        assert_eq!(total, 37, "{alg:?}: 96 attempts from 4 instances, limit 37");
    }
}

fn rules_for(alg: Algorithm) -> RuleSet {
    RuleSet::new(vec![
        Rule::new("g", Scope::Global, alg, 9, Duration::from_secs(2)).burst(2),
        Rule::new("u", Scope::User, alg, 4, Duration::from_millis(700)),
        Rule::new("shadowed", Scope::User, alg, 2, Duration::from_millis(300)).shadow(true),
    ])
}

fn summary(d: &Decision) -> Vec<(bool, u64, Duration, Option<Duration>)> {
    d.rules
        .iter()
        .map(|r| (r.allowed, r.remaining, r.reset, r.retry_after))
        .collect()
}

/// Same rules, same (injected) clock, same arrivals: the Lua script and the
/// Rust functions give identical decisions, rule by rule.
#[tokio::test]
async fn redis_and_memory_decide_identically_for_every_algorithm() {
    for alg in Algorithm::ALL {
        same_decisions(alg, rules_for(alg)).await;
    }
}

/// The script keeps a single rule's state in locals instead of a commit plan:
/// the same comparison with one rule, enforcing and in shadow mode.
#[tokio::test]
async fn redis_and_memory_decide_identically_for_a_single_rule() {
    for alg in Algorithm::ALL {
        let one = |shadow| {
            RuleSet::new(vec![
                Rule::new("one", Scope::User, alg, 3, Duration::from_secs(2))
                    .burst(1)
                    .shadow(shadow),
            ])
        };
        same_decisions(alg, one(false)).await;
        same_decisions(alg, one(true)).await;
    }
}

async fn same_decisions(alg: Algorithm, rules: RuleSet) {
    let clock = ManualClock::new(1_750_000_000_123_456);
    let mem = Limiter::builder(rules.clone())
        .clock(clock.clone())
        .build()
        .unwrap();
    let red = redis_limiter(
        &rules,
        RedisConfig::new(redis_url())
            .tag(unique("rl-same"))
            .clock_for_tests(clock.clone())
            .timeout(Duration::from_secs(5)),
    )
    .await;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut allowed, mut rejected) = (0, 0);
    for step in 0..300 {
        let r = next();
        clock.advance_micros(match r % 5 {
            0 | 1 => 0,
            2 => r % 50_000,
            3 => r % 400_000,
            _ => r % 2_500_000,
        });
        let user = ["a", "b"][(r >> 20) as usize % 2];
        let cost = 1 + (r >> 30) % 2;
        let req = RequestInfo::new("GET", "/").user(user).cost(cost);
        let (m, d) = match (r >> 40) % 10 {
            0 => (mem.peek(&req).await.unwrap(), red.peek(&req).await.unwrap()),
            1 => {
                mem.refund(&req).await.unwrap();
                red.refund(&req).await.unwrap();
                (mem.peek(&req).await.unwrap(), red.peek(&req).await.unwrap())
            }
            _ => (
                mem.check(&req).await.unwrap(),
                red.check(&req).await.unwrap(),
            ),
        };
        assert!(!d.fallback);
        assert_eq!(m.outcome, d.outcome, "{alg:?} step {step}");
        for r in &d.rules {
            if r.allowed {
                allowed += 1
            } else {
                rejected += 1
            }
        }
        assert_eq!(
            summary(&m),
            summary(&d),
            "{alg:?} step {step}: memory vs redis"
        );
    }
    assert!(
        allowed > 30 && rejected > 30,
        "{alg:?}: both verdicts exercised ({allowed}/{rejected})"
    );
}

#[tokio::test]
async fn keys_carry_one_hash_tag_hold_no_raw_key_and_expire_when_idle() {
    let tag = unique("rl-keys");
    let rules = RuleSet::new(vec![
        Rule::new(
            "k",
            Scope::ApiKey,
            Algorithm::Gcra,
            10,
            Duration::from_secs(10),
        ),
        Rule::new(
            "t",
            Scope::Tenant,
            Algorithm::FixedWindow,
            10,
            Duration::from_secs(10),
        ),
    ]);
    let l = redis_limiter(&rules, RedisConfig::new(redis_url()).tag(&tag)).await;
    l.check(
        &RequestInfo::new("GET", "/")
            .api_key("sk_live_secret")
            .tenant("acme"),
    )
    .await
    .unwrap();
    let client = redis::Client::open(redis_url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{tag}}}:*"))
        .query_async(&mut c)
        .await
        .unwrap();
    keys.sort();
    let hashed = finsight_ratelimit::rule::key_material("sk_live_secret").to_string();
    assert_eq!(
        keys,
        vec![
            format!("{{{tag}}}:k:{hashed}"),
            format!(
                "{{{tag}}}:t:{}",
                finsight_ratelimit::rule::key_material("acme")
            )
        ]
    );
    for k in &keys {
        assert!(!k.contains("sk_live_secret"));
        let ttl: i64 = redis::cmd("PTTL").arg(k).query_async(&mut c).await.unwrap();
        assert!(ttl > 0 && ttl <= 10_001, "{k} expires when idle, ttl {ttl}");
        assert_eq!(
            key_slot(k),
            key_slot(&keys[0]),
            "one hash slot for every key of the limiter"
        );
    }
}

/// Redis Cluster's slot of `key`: CRC16-XMODEM of the `{hash tag}` (or the
/// whole key) mod 16384, as the cluster spec defines it.
fn key_slot(key: &str) -> u16 {
    let b = key.as_bytes();
    let part = match b.iter().position(|&c| c == b'{') {
        Some(open) => match b[open + 1..].iter().position(|&c| c == b'}') {
            Some(len) if len > 0 => &b[open + 1..open + 1 + len],
            _ => b,
        },
        None => b,
    };
    let mut crc: u16 = 0;
    for &byte in part {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

#[test]
fn key_slot_matches_the_cluster_spec() {
    // Examples from the Redis Cluster specification.
    assert_eq!(key_slot("123456789"), 0x31C3);
    assert_eq!(
        key_slot("{user1000}.following"),
        key_slot("{user1000}.followers")
    );
    assert_ne!(key_slot("a"), key_slot("b"));
}

/// A private `redis-server` on a free port: exact command statistics and a
/// script cache this test may flush without disturbing anyone.
struct PrivateRedis {
    child: Child,
    url: String,
}

impl PrivateRedis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server installed");
        for _ in 0..100 {
            if finsight_testkit::port_open("127.0.0.1", port) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            url: format!("redis://127.0.0.1:{port}"),
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn calls(c: &mut redis::aio::MultiplexedConnection, cmd: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(c)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_five_rule_check_is_one_round_trip_and_survives_a_script_flush() {
    let server = PrivateRedis::start();
    let rules = RuleSet::python_defaults();
    let l = redis_limiter(
        &rules,
        RedisConfig::new(&server.url).timeout(Duration::from_secs(5)),
    )
    .await;
    let client = redis::Client::open(server.url.as_str()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let req = RequestInfo::new("GET", "/api/v1/orders")
        .tenant("acme")
        .user("u1")
        .ip("203.0.113.7".parse().unwrap())
        .api_key("sk_live_x");
    let before = calls(&mut c, "evalsha").await;
    let d = l.check(&req).await.unwrap();
    assert_eq!(d.rules.len(), 5, "global, tenant, user, ip, api_key");
    assert!(!d.fallback && d.is_allowed());
    let after = calls(&mut c, "evalsha").await;
    assert_eq!(after - before, 1, "five rules, one EVALSHA");

    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut c)
        .await
        .unwrap();
    let d = l.check(&req).await.unwrap();
    assert!(!d.fallback && d.is_allowed(), "NOSCRIPT reloads the script");
    // Two of 10 000 used (the token bucket may have refilled one meanwhile).
    assert!(
        (9_998..=9_999).contains(&d.rules[1].remaining),
        "{:?}",
        d.rules[1]
    );
}

#[tokio::test]
async fn outage_redis_down_fails_open_closed_or_local_without_hanging() {
    let tag = unique("rl-outage");
    let rules = RuleSet::new(vec![Rule::new(
        "t",
        Scope::Tenant,
        Algorithm::Gcra,
        3,
        HOUR,
    )]);
    let cfg = |mode| {
        RedisConfig::new(redis_url())
            .tag(&tag)
            .failure_mode(mode)
            .timeout(Duration::from_millis(200))
            .retry_interval(Duration::from_millis(300))
    };
    let open = redis_limiter(&rules, cfg(FailureMode::Open)).await;
    let closed = redis_limiter(&rules, cfg(FailureMode::Closed)).await;
    let local = redis_limiter(&rules, cfg(FailureMode::Local)).await;
    let req = RequestInfo::new("GET", "/").tenant("acme");
    assert!(!open.check(&req).await.unwrap().fallback);

    let mut outage = finsight_testkit::RedisOutage::stop().unwrap();
    // A hang would trip this guard; each check is bounded by the 200 ms timeout.
    let bounded = |f| tokio::time::timeout(Duration::from_secs(20), f);
    for _ in 0..5 {
        let d = bounded(open.check(&req)).await.expect("no hang").unwrap();
        assert!(d.fallback && d.outcome == Outcome::Allowed, "{d:?}");
        let d = bounded(closed.check(&req)).await.expect("no hang").unwrap();
        assert!(d.fallback && d.outcome == Outcome::Rejected, "{d:?}");
        assert!(d.retry_after_secs().unwrap() >= 1);
    }
    let mut admitted = 0;
    for _ in 0..6 {
        let d = bounded(local.check(&req)).await.expect("no hang").unwrap();
        assert!(d.fallback);
        admitted += u32::from(d.is_allowed());
    }
    assert_eq!(
        admitted, 3,
        "the local fallback limiter enforces the same rule"
    );
    outage.start().unwrap();
    drop(outage);

    // Back to Redis once it answers again (bounded retries).
    let mut back = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let d = bounded(open.check(&req)).await.expect("no hang").unwrap();
        if !d.fallback {
            back = true;
            break;
        }
    }
    assert!(back, "the limiter uses Redis again after the outage");
}

/// A call guard that admits while `open` is false and counts outcomes.
#[derive(Clone, Default)]
struct CountingGuard {
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ok: std::sync::Arc<std::sync::atomic::AtomicU32>,
    failed: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

struct CountingPermit(CountingGuard);

impl finsight_ratelimit::RedisCallPermit for CountingPermit {
    fn record(self: Box<Self>, ok: bool) {
        let c = if ok { &self.0.ok } else { &self.0.failed };
        c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl finsight_ratelimit::RedisCallGuard for CountingGuard {
    fn admit(&self) -> Option<Box<dyn finsight_ratelimit::RedisCallPermit>> {
        (!self.open.load(std::sync::atomic::Ordering::SeqCst))
            .then(|| Box::new(CountingPermit(self.clone())) as _)
    }
}

#[tokio::test]
async fn a_call_guard_that_refuses_keeps_checks_off_redis_and_sees_every_outcome() {
    use std::sync::atomic::Ordering::SeqCst;
    let guard = CountingGuard::default();
    let tag = unique("rl-guard");
    let rules = RuleSet::new(vec![Rule::new(
        "g",
        Scope::Tenant,
        Algorithm::Gcra,
        3,
        HOUR,
    )]);
    let l = redis_limiter(
        &rules,
        RedisConfig::new(redis_url())
            .tag(&tag)
            .timeout(Duration::from_secs(2))
            .failure_mode(FailureMode::Closed)
            .call_guard(guard.clone()),
    )
    .await;
    let req = RequestInfo::new("GET", "/").tenant("acme");
    let client = redis::Client::open(redis_url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();

    guard.open.store(true, SeqCst);
    let d = l.check(&req).await.unwrap();
    assert!(d.fallback && !d.is_allowed(), "fail closed: {d:?}");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{tag}}}:*"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(keys.is_empty(), "Redis touched: {keys:?}");
    assert_eq!((guard.ok.load(SeqCst), guard.failed.load(SeqCst)), (0, 0));

    // Admitted again at once: a refusal does not mark Redis down.
    guard.open.store(false, SeqCst);
    for _ in 0..2 {
        let d = l.check(&req).await.unwrap();
        assert!(!d.fallback && d.is_allowed(), "{d:?}");
    }
    assert_eq!((guard.ok.load(SeqCst), guard.failed.load(SeqCst)), (2, 0));
}

#[tokio::test]
async fn a_backend_on_an_existing_connection_manager_shares_limits_with_a_connected_one() {
    let tag = unique("rl-manager");
    let rules = RuleSet::new(vec![Rule::new(
        "m",
        Scope::Tenant,
        Algorithm::FixedWindow,
        3,
        HOUR,
    )]);
    let client = redis::Client::open(redis_url()).unwrap();
    let manager = redis::aio::ConnectionManager::new(client).await.unwrap();
    // The URL of the config is not used with a manager.
    let on_manager = RedisBackend::from_connection_manager(
        manager,
        RedisConfig::new("redis://unused.invalid")
            .tag(&tag)
            .timeout(Duration::from_secs(2)),
    )
    .await
    .unwrap();
    let a = Limiter::builder(rules.clone())
        .redis(on_manager)
        .build()
        .unwrap();
    let b = redis_limiter(
        &rules,
        RedisConfig::new(redis_url())
            .tag(&tag)
            .timeout(Duration::from_secs(2)),
    )
    .await;
    let req = RequestInfo::new("GET", "/").tenant("acme");
    let mut allowed = vec![];
    for l in [&a, &b, &a, &b] {
        let d = l.check(&req).await.unwrap();
        assert!(!d.fallback, "{d:?}");
        allowed.push(d.is_allowed());
    }
    assert_eq!(allowed, [true, true, true, false]);
}
