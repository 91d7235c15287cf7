//! Rust and a real Python `redis` client read each other's values (SPEC §3).
#![cfg(feature = "redis")]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use finsight_cache::redis::RedisOptions;
use finsight_cache::{Cache, CacheConfig};
use finsight_testkit::{redis_url, unique};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ApiResponse {
    status: u16,
    body: String,
    tags: Vec<String>,
    price: f64,
}

fn python() -> &'static str {
    "python3"
}

fn ensure_redis_py() {
    let has = Command::new(python())
        .args(["-c", "import redis"])
        .status()
        .is_ok_and(|s| s.success());
    if !has {
        let st = Command::new(python())
            .args(["-m", "pip", "install", "--quiet", "redis"])
            .status()
            .expect("python3 -m pip");
        assert!(st.success(), "pip install redis failed");
    }
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/compat.py")
}

fn run_py(args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(script())
        .args(args)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "compat.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn caches(prefix: &str) -> (Cache<ApiResponse>, Cache<ApiResponse>) {
    let opts = RedisOptions::new(&redis_url()).unwrap();
    let plain = Cache::builder(CacheConfig::new("plain", prefix, Duration::from_secs(300)))
        .redis(opts.clone())
        .build()
        .await
        .unwrap();
    let mut api = CacheConfig::api_response();
    api.prefix = prefix.to_owned();
    let gz = Cache::builder(api).redis(opts).build().await.unwrap();
    (plain, gz)
}

fn value() -> ApiResponse {
    ApiResponse {
        status: 200,
        body: "Grüße – ünïcödé ✓".into(),
        tags: vec!["eq".into(), "nasdaq".into()],
        price: 187.25,
    }
}

#[tokio::test]
async fn python_reads_what_rust_wrote() {
    ensure_redis_py();
    let prefix = format!("{}:", unique("pycompat-r"));
    let (plain, gz) = caches(&prefix).await;
    plain.set("plain", &value()).await.unwrap();
    gz.set("gz", &value()).await.unwrap();
    let out: serde_json::Value =
        serde_json::from_str(&run_py(&[&redis_url(), "read", &prefix])).unwrap();
    let expected = serde_json::to_value(value()).unwrap();
    assert_eq!(out["plain"]["value"], expected);
    assert_eq!(out["gz"]["value"], expected);
    let ttl_plain = out["plain"]["ttl"].as_i64().unwrap();
    let ttl_gz = out["gz"]["ttl"].as_i64().unwrap();
    assert!((290..=300).contains(&ttl_plain), "{ttl_plain}");
    assert!((3590..=3600).contains(&ttl_gz), "{ttl_gz}");
}

#[tokio::test]
async fn rust_reads_what_python_wrote() {
    ensure_redis_py();
    let prefix = format!("{}:", unique("pycompat-w"));
    let (plain, gz) = caches(&prefix).await;
    let json = serde_json::to_string(&value()).unwrap();
    run_py(&[&redis_url(), "write", &prefix, &json]);
    settle(&[&plain, &gz], 2).await; // the two SETEX come back as invalidations
    assert_eq!(plain.get("py_plain").await.unwrap(), Some(value()));
    assert_eq!(gz.get("py_gz").await.unwrap(), Some(value()));
    assert!(gz.contains_local("py_gz").await);
    let stats = plain.stats();
    assert_eq!(stats.l2.hits, 1);
    assert_eq!(stats.l2.errors, 0);

    // A second Python write evicts Rust's L1 (client tracking sees every writer).
    let mut newer = value();
    newer.status = 201;
    run_py(&[
        &redis_url(),
        "write",
        &prefix,
        &serde_json::to_string(&newer).unwrap(),
    ]);
    settle(&[&plain, &gz], 4).await;
    assert!(!gz.contains_local("py_gz").await);
    assert_eq!(gz.get("py_gz").await.unwrap(), Some(newer.clone()));
    assert_eq!(plain.get("py_plain").await.unwrap(), Some(newer));
}

/// Waits (bounded: 2 s) until every cache received `n` invalidations.
async fn settle(caches: &[&Cache<ApiResponse>], n: u64) {
    for _ in 0..2_000 {
        if caches.iter().all(|c| c.stats().invalidations_received >= n) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("invalidations did not arrive within 2 s");
}
