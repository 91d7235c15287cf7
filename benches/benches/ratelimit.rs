//! finsight-ratelimit next to governor (in memory) and a minimal GCRA Lua
//! script of the redis_rate kind (on Redis), in the same run.
//!
//! `cargo bench -p finsight-benches --bench ratelimit`

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use finsight_benches::{Record, median, record};
use finsight_ratelimit::{
    Algorithm, KeyedRateLimiter, Limiter, Quota, RateLimiter, RedisBackend, RedisConfig,
    RequestInfo, Rule, RuleSet, Scope,
};

/// Resident set size in bytes (Linux `/proc/self/statm`, pages × 4096).
fn rss() -> i64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<i64>().ok())
        .unwrap_or(0)
        * 4096
}

const KEYS: u64 = 100_000;

fn hot_key(c: &mut Criterion) {
    let mut g = c.benchmark_group("ratelimit/hot_key");
    // Same quota for both: 1 000 000 per second (mostly-deny once the burst is spent).
    let ours = RateLimiter::new(Quota::per(1_000_000, Duration::from_secs(1))).unwrap();
    g.bench_function("finsight", |b| b.iter(|| black_box(ours.check().allowed)));
    let gov = governor::RateLimiter::direct(governor::Quota::per_second(
        NonZeroU32::new(1_000_000).unwrap(),
    ));
    g.bench_function("peer:governor", |b| {
        b.iter(|| black_box(gov.check().is_ok()))
    });
    g.finish();

    // The rule-based limiter with one global rule: rule matching, decision report.
    let mut g = c.benchmark_group("ratelimit/limiter_one_global_rule");
    let rules = RuleSet::new(vec![Rule::new(
        "g",
        Scope::Global,
        Algorithm::Gcra,
        1_000_000,
        Duration::from_secs(1),
    )]);
    let limiter = Limiter::builder(rules).build().unwrap();
    let req = RequestInfo::new("GET", "/");
    g.bench_function("finsight", |b| {
        b.iter(|| black_box(limiter.check_local(&req).unwrap().is_allowed()))
    });
    g.bench_function("peer:governor", |b| {
        b.iter(|| black_box(gov.check().is_ok()))
    });
    g.finish();

    // The Python services' five applicable default rules, in memory (one
    // SHA-256 per scoped rule, all-or-nothing over five shard locks).
    let mut g = c.benchmark_group("ratelimit/limiter_python_defaults");
    let limiter = Limiter::builder(RuleSet::python_defaults())
        .build()
        .unwrap();
    let mut i = 0u32;
    g.bench_function("finsight", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let ip = std::net::Ipv4Addr::from(i % 1000).into();
            let req = RequestInfo::new("GET", "/api/v1/orders")
                .tenant("acme")
                .user("u-42")
                .ip(ip)
                .api_key("sk_live_abc");
            black_box(limiter.check_local(&req).unwrap().is_allowed())
        })
    });
    g.finish();
}

fn keyed(c: &mut Criterion) {
    let mut g = c.benchmark_group("ratelimit/keyed_100k");
    let quota = Quota::per(1000, Duration::from_secs(1));
    let ours: KeyedRateLimiter<u64> = KeyedRateLimiter::new(quota).unwrap();
    let gov = governor::DefaultKeyedRateLimiter::<u64>::keyed(governor::Quota::per_second(
        NonZeroU32::new(1000).unwrap(),
    ));
    for k in 0..KEYS {
        let _ = ours.check(&k, 1);
        let _ = gov.check_key(&k);
    }
    let mut i = 0u64;
    g.bench_function("finsight", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            black_box(ours.check(&i, 1).unwrap().allowed)
        })
    });
    let mut i = 0u64;
    g.bench_function("peer:governor", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            black_box(gov.check_key(&i).is_ok())
        })
    });
    g.finish();
}

/// Keys for the memory figure: many, so page granularity does not matter.
const MEM_KEYS: u64 = 1_000_000;

/// RSS growth per key while `MEM_KEYS` keys are inserted (all idle afterwards:
/// the figure is the memory an idle key costs until it is evicted).
fn bytes_per_key<T>(build: impl FnOnce() -> T, fill: impl Fn(&T, u64)) -> f64 {
    let before = rss();
    let t = build();
    for k in 0..MEM_KEYS {
        fill(&t, k);
    }
    let after = rss();
    drop(t);
    (after - before) as f64 / MEM_KEYS as f64
}

fn memory() {
    let ours = bytes_per_key(
        || KeyedRateLimiter::<u64>::new(Quota::per(1000, Duration::from_secs(1))).unwrap(),
        |l, k| {
            let _ = l.check(&k, 1);
        },
    );
    let gov = bytes_per_key(
        || {
            governor::DefaultKeyedRateLimiter::<u64>::keyed(governor::Quota::per_second(
                NonZeroU32::new(1000).unwrap(),
            ))
        },
        |l, k| {
            let _ = l.check_key(&k);
        },
    );
    let rules = bytes_per_key(
        || {
            Limiter::builder(RuleSet::new(vec![Rule::new(
                "ip",
                Scope::Ip,
                Algorithm::Gcra,
                1000,
                Duration::from_secs(60),
            )]))
            .build()
            .unwrap()
        },
        |l, k| {
            let ip = std::net::Ipv4Addr::from(k as u32).into();
            let _ = l.check_local(&RequestInfo::new("GET", "/").ip(ip));
        },
    );
    println!(
        "memory per key: keyed {ours:.1} B, rule limiter {rules:.1} B, governor keyed {gov:.1} B"
    );
    record(
        &Record::new(
            "ratelimit",
            "memory per idle key, KeyedRateLimiter<u64>, 1M keys (RSS)",
            ours,
            "B/key",
            false,
        )
        .peer("governor keyed (u64)", gov)
        .target("≤ 100 B"),
    )
    .unwrap();
    record(
        &Record::new(
            "ratelimit",
            "memory per idle key, rule Limiter (IP scope), 1M keys (RSS)",
            rules,
            "B/key",
            false,
        )
        .peer("governor keyed (u64)", gov)
        .target("≤ 100 B"),
    )
    .unwrap();
}

/// A minimal GCRA in Lua, the redis_rate kind: one key, server TIME, SET PX.
const PEER_GCRA: &str = r#"
local key = KEYS[1]
local burst = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local emission_interval = period / rate
local increment = emission_interval * cost
local burst_offset = emission_interval * burst
local t = redis.call("TIME")
local now = (t[1] - 1483228800) + (t[2] / 1000000)
local tat = redis.call("GET", key)
if not tat then tat = now else tat = tonumber(tat) end
tat = math.max(tat, now)
local new_tat = tat + increment
local allow_at = new_tat - burst_offset
local diff = now - allow_at
local remaining = diff / emission_interval
if remaining < 0 then
  return {0, 0, tostring(diff * -1), tostring(tat - now)}
end
local reset_after = new_tat - now
if reset_after > 0 then
  redis.call("SET", key, new_tat, "PX", math.ceil(reset_after * 1000))
end
return {cost, remaining, "-1", tostring(reset_after)}
"#;

/// Operations per timed run of the plain SET and five-rule figures.
const OPS: usize = 5_000;
/// Rounds of the single-rule comparison; the median of their ratios is the figure.
const ROUNDS: usize = 15;
/// Operations per slice; a round alternates `SLICES` slices of ours with as
/// many of the peer's (20 000 operations per side per round).
const SLICE: usize = 2_500;
const SLICES: usize = 8;
const CONCURRENCY: usize = 64;

/// CPU time of all this process's threads in µs (`/proc/self/task/*/schedstat`, ns precision).
fn cpu_us() -> u64 {
    let mut ns = 0u64;
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for t in dir.flatten() {
            let s = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            ns += s
                .split_whitespace()
                .next()
                .and_then(|x| x.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    ns / 1000
}

/// Runs `op(0..ops)` with `CONCURRENCY` in flight; operations per second.
async fn rate<F, Fut>(ops: usize, op: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let cpu0 = cpu_us();
    let start = Instant::now();
    let mut tasks = vec![];
    for w in 0..CONCURRENCY {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < ops {
                op(i).await;
                i += CONCURRENCY;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let r = ops as f64 / start.elapsed().as_secs_f64();
    if std::env::var_os("FINSIGHT_RL_CPU").is_some() {
        println!(
            "  {r:.0}/s, client cpu {:.1} µs/op",
            (cpu_us() - cpu0) as f64 / ops as f64
        );
    }
    r
}

fn redis_throughput() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let url = finsight_testkit::redis_url();
        let tag = finsight_testkit::unique("rl-bench");
        let one = RuleSet::new(vec![Rule::new("t", Scope::Tenant, Algorithm::Gcra, 1000, Duration::from_secs(1))]);
        let backend = RedisBackend::connect(RedisConfig::new(&url).tag(&tag).timeout(Duration::from_secs(5))).await.unwrap();
        let limiter = Limiter::builder(one).redis(backend).build().unwrap();
        let five = RuleSet::python_defaults();
        let backend = RedisBackend::connect(RedisConfig::new(&url).tag(&tag).timeout(Duration::from_secs(5))).await.unwrap();
        let limiter5 = Limiter::builder(five).redis(backend).build().unwrap();
        let client = redis::Client::open(url.as_str()).unwrap();
        let conn = redis::aio::ConnectionManager::new(client).await.unwrap();
        let script = Arc::new(redis::Script::new(PEER_GCRA));
        let tenants: Arc<Vec<String>> = Arc::new((0..KEYS).map(|k| format!("tenant-{k}")).collect());
        let peer_keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|k| format!("{{{tag}}}:peer:{k}")).collect());

        let (mut ours, mut peer, mut set, mut ours5, mut ratios) = (vec![], vec![], vec![], vec![], vec![]);
        let run_ours = || {
            let (l, t) = (limiter.clone(), tenants.clone());
            rate(SLICE, move |i| {
                let (l, t) = (l.clone(), t.clone());
                async move {
                    let d = l.check(&RequestInfo::new("GET", "/").tenant(&t[i % t.len()])).await.unwrap();
                    assert!(!d.fallback);
                }
            })
        };
        let run_peer = || {
            let (c, s, k) = (conn.clone(), script.clone(), peer_keys.clone());
            rate(SLICE, move |i| {
                let (mut c, s, k) = (c.clone(), s.clone(), k.clone());
                async move {
                    let _: Vec<redis::Value> =
                        s.key(&k[i % k.len()]).arg(1000).arg(1000).arg(1).arg(1).invoke_async(&mut c).await.unwrap();
                }
            })
        };
        // One untimed slice of each first: connections, the peer's script
        // load (NOSCRIPT on its first calls), allocator and key space warm.
        run_ours().await;
        run_peer().await;
        // The machine's load changes from second to second (other builds run
        // beside the benchmark), so ours and the peer take turns in short
        // slices (~0.1 s), in mirrored pairs (ours-peer, peer-ours, ...), and
        // each round's ratio compares the total times of its 2 × SLICES
        // neighbouring slices; the median over rounds drops the outliers.
        for round in 0..ROUNDS {
            let (mut t_ours, mut t_peer) = (0.0, 0.0);
            for slice in 0..SLICES {
                let secs = |rate: f64| SLICE as f64 / rate;
                if (round + slice) % 2 == 0 {
                    t_ours += secs(run_ours().await);
                    t_peer += secs(run_peer().await);
                } else {
                    t_peer += secs(run_peer().await);
                    t_ours += secs(run_ours().await);
                }
            }
            let (a, b) = ((SLICES * SLICE) as f64 / t_ours, (SLICES * SLICE) as f64 / t_peer);
            ours.push(a);
            peer.push(b);
            ratios.push(a / b);
            let (c, k) = (conn.clone(), peer_keys.clone());
            set.push(
                rate(OPS, move |i| {
                    let (mut c, k) = (c.clone(), k.clone());
                    async move {
                        let _: () = redis::cmd("SET").arg(&k[i % k.len()]).arg(i).arg("PX").arg(5000).query_async(&mut c).await.unwrap();
                    }
                })
                .await,
            );
            let (l, t) = (limiter5.clone(), tenants.clone());
            ours5.push(
                rate(OPS, move |i| {
                    let (l, t) = (l.clone(), t.clone());
                    async move {
                        let name = &t[i % t.len()];
                        let req = RequestInfo::new("GET", "/api/v1/orders")
                            .tenant(name)
                            .user(name)
                            .ip(std::net::Ipv4Addr::from(i as u32).into())
                            .api_key(name);
                        let d = l.check(&req).await.unwrap();
                        assert!(!d.fallback && d.rules.len() == 5);
                    }
                })
                .await,
            );
        }
        // The spread of the per-round ratios says how noisy the run was.
        ratios.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let (q1, q3) = (ratios[ROUNDS / 4], ratios[3 * ROUNDS / 4]);
        let ratio = median(ratios);
        let (ours, peer, set, ours5) = (median(ours), median(peer), median(set), median(ours5));
        println!(
            "redis @{CONCURRENCY}: finsight {ours:.0}/s, GCRA Lua {peer:.0}/s (median of per-round ratios {ratio:.2}x, quartiles {q1:.2}-{q3:.2}), SET {set:.0}/s ({:.2}x), five-rule {ours5:.0}/s",
            ours / set
        );
        record(
            &Record::new("ratelimit", "redis single-rule checks/s (64 in flight)", ours, "checks/s", true)
                .peer("minimal GCRA Lua (redis_rate kind)", peer)
                .target("≥ 0.9× minimal GCRA Lua"),
        )
        .unwrap();
        record(
            &Record::new(
                "ratelimit",
                "redis single-rule check / minimal GCRA Lua, median of 15 alternating rounds",
                ratio,
                "x",
                true,
            )
            .target("≥ 0.9"),
        )
        .unwrap();
        record(
            &Record::new("ratelimit", "redis single-rule checks/s vs plain SET (64 in flight)", ours, "checks/s", true)
                .peer("plain SET", set)
                .target("reported (a minimal Lua GCRA reaches ~1/3 of SET)"),
        )
        .unwrap();
        record(
            &Record::new("ratelimit", "redis five-rule checks/s (python defaults, one EVALSHA)", ours5, "checks/s", true)
                .peer("single-rule finsight check", ours),
        )
        .unwrap();
        // Clean up the peer's keys (ours expire by themselves).
        let mut c = conn.clone();
        for chunk in peer_keys.chunks(1000) {
            let _: () = redis::cmd("DEL").arg(chunk).query_async(&mut c).await.unwrap();
        }
    });
}

criterion_group!(benches, hot_key, keyed);

fn main() {
    // FINSIGHT_RL_CRITERION_ONLY=1: only the criterion groups (while tuning).
    if std::env::var_os("FINSIGHT_RL_CRITERION_ONLY").is_none() {
        finsight_benches::reset("ratelimit");
        memory();
        redis_throughput();
    }
    if std::env::var_os("FINSIGHT_RL_REDIS_ONLY").is_some() {
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
