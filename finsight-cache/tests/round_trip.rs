//! "An L2 hit is exactly one Redis round trip", counted with `INFO
//! commandstats` on a private `redis-server` this test starts (so no other
//! test's commands are counted).
#![cfg(feature = "redis")]

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use finsight_cache::redis::{Invalidation, RedisOptions};
use finsight_cache::{Cache, CacheConfig, Layers};

/// A `redis-server` child on a free port, killed (by its pid) on drop.
struct PrivateRedis {
    child: Child,
    url: String,
    _dir: std::path::PathBuf,
}

impl PrivateRedis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(finsight_testkit::unique("finsight-cache-rt"));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        let url = format!("redis://127.0.0.1:{port}");
        for _ in 0..100 {
            if finsight_testkit::port_open("127.0.0.1", port) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            url,
            _dir: dir,
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

async fn command_calls(conn: &mut redis::aio::MultiplexedConnection) -> HashMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn an_l2_hit_is_exactly_one_round_trip() {
    let redis = PrivateRedis::start();
    let mut admin = redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // L2 only, no invalidation channel: every `get` below is an L2 hit.
    let cfg = CacheConfig::new("rt", "rt:", Duration::from_secs(600)).with_layers(Layers::L2);
    let c: Cache<String> = Cache::builder(cfg)
        .redis(
            RedisOptions::new(&redis.url)
                .unwrap()
                .invalidation(Invalidation::Off),
        )
        .build()
        .await
        .unwrap();
    c.set("k", &"v".to_owned()).await.unwrap();
    assert_eq!(c.get("k").await.unwrap().as_deref(), Some("v")); // loads the script once

    let before = command_calls(&mut admin).await;
    const HITS: u64 = 25;
    for _ in 0..HITS {
        assert_eq!(c.get("k").await.unwrap().as_deref(), Some("v"));
    }
    let after = command_calls(&mut admin).await;
    let delta =
        |name: &str| after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0);
    let total: u64 = after.keys().map(|k| delta(k)).sum::<u64>() - delta("info");
    assert_eq!(delta("evalsha"), HITS, "one EVALSHA per hit: {after:?}");
    // Inside the script: one GET and one PTTL per hit, nothing else on the wire.
    assert_eq!(delta("get"), HITS);
    assert_eq!(delta("pttl"), HITS);
    assert_eq!(
        total,
        3 * HITS,
        "no other command was sent: {before:?} -> {after:?}"
    );
    assert_eq!(c.stats().l2.hits, HITS + 1);
}
