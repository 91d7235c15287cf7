//! The gateway on its in-memory defaults (no Redis, no RabbitMQ): every part
//! works without a server, as `cargo run -p gateway` does without URLs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use gateway::{Gateway, GatewayConfig};
use serde_json::Value;

async fn downstream() -> (Arc<AtomicU64>, String) {
    let hits = Arc::new(AtomicU64::new(0));
    let app = Router::new()
        .route(
            "/quotes/{symbol}",
            get(
                |State(h): State<Arc<AtomicU64>>, Path(s): Path<String>| async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    if s == "NONE" {
                        return Err(axum::http::StatusCode::NOT_FOUND);
                    }
                    Ok(axum::Json(serde_json::json!({ "symbol": s, "price": 7.5 })))
                },
            ),
        )
        .with_state(hits.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (hits, url)
}

async fn get_json(http: &reqwest::Client, url: String, tier: &str) -> (u16, Value) {
    let r = http
        .get(url)
        .header("x-user-id", "u-1")
        .header("x-tier", tier)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let bytes = r.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_defaults_serve_cache_flags_limits_and_health() {
    let (hits, url) = downstream().await;
    let mut cfg = GatewayConfig::new(url);
    // Rate-limit windows do not roll over while the test runs.
    cfg.rate_limit_clock = Some(finsight_ratelimit::ManualClock::new(1_800_000_000_000_000));
    assert!(cfg.redis_url.is_none() && cfg.amqp_url.is_none());
    let gw = Gateway::build(cfg)
        .await
        .unwrap()
        .start("127.0.0.1:0".parse::<SocketAddr>().unwrap())
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let base = gw.url();

    let (s, body) = get_json(&http, format!("{base}/api/v1/quotes/AAPL"), "free").await;
    assert_eq!((s, body["source"].as_str()), (200, Some("downstream")));
    let (s, body) = get_json(&http, format!("{base}/api/v1/quotes/AAPL"), "free").await;
    assert_eq!((s, body["source"].as_str()), (200, Some("cache")));
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // Unknown symbols: 404 from the downstream, not retried, not a breaker failure.
    let (s, _) = get_json(&http, format!("{base}/api/v1/quotes/NONE"), "free").await;
    assert_eq!(s, 404);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    // Invalid symbols never leave the gateway.
    let (s, _) = get_json(&http, format!("{base}/api/v1/quotes/a%20b"), "free").await;
    assert_eq!(s, 400);

    let (s, body) = get_json(&http, format!("{base}/api/v1/analytics/AAPL"), "free").await;
    assert_eq!(
        (s, body["reason"].as_str()),
        (403, Some("targeting_not_matched"))
    );

    let (s, body) = get_json(&http, format!("{base}/health"), "free").await;
    assert_eq!(s, 200);
    assert_eq!(body["status"], "healthy", "{body}");
    let names: Vec<&str> = body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bus"], "no Redis check without Redis");
    assert_eq!(body["breakers"][0]["state"], "closed");

    let (s, body) = get_json(&http, format!("{base}/bare"), "free").await;
    assert_eq!((s, body["ok"].as_bool()), (200, Some(true)));

    // Default rules: the free tier gets 60 per minute; the analytics 403 above
    // cost 5, the four quote/404/400 calls 1 each.
    let mut statuses = Vec::new();
    for _ in 0..60 {
        let r = http
            .get(format!("{base}/api/v1/quotes/AAPL"))
            .header("x-user-id", "u-1")
            .header("x-tier", "free")
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(ok, 60 - 5 - 4, "{statuses:?}");
    assert!(statuses[ok..].iter().all(|s| *s == 429));

    // Every handled request became an event on the in-memory bus.
    let mut sent = 0;
    for _ in 0..100 {
        sent = gw.stats().events.sent;
        if sent >= 65 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sent, 65, "{:?}", gw.stats());
    gw.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flag_file_changes_apply_without_a_restart() {
    let (_hits, url) = downstream().await;
    let path = std::env::temp_dir().join(format!(
        "{}.json",
        finsight_testkit::unique("gateway-flags")
    ));
    std::fs::write(&path, gateway::DEFAULT_FLAGS).unwrap();
    let mut cfg = GatewayConfig::new(url);
    cfg.flags_json = "[]".into();
    cfg.flags_file = Some(path.clone());
    cfg.flags_poll = Duration::from_millis(20);
    let gw = Gateway::build(cfg)
        .await
        .unwrap()
        .start("127.0.0.1:0".parse::<SocketAddr>().unwrap())
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let analytics = format!("{}/api/v1/analytics/AAPL", gw.url());
    let (s, _) = get_json(&http, analytics.clone(), "starter").await;
    assert_eq!(s, 403, "the file's flags are loaded at start");

    // Open analytics to the starter tier.
    let opened = gateway::DEFAULT_FLAGS.replace(
        r#""values": ["professional", "business", "enterprise"]"#,
        r#""values": ["starter", "professional", "business", "enterprise"]"#,
    );
    assert_ne!(opened, gateway::DEFAULT_FLAGS);
    std::fs::write(&path, opened).unwrap();
    let mut status = 403;
    for _ in 0..200 {
        status = get_json(&http, analytics.clone(), "starter").await.0;
        if status != 403 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        status, 404,
        "reloaded: starter passes the flag (the test downstream has no analytics route)"
    );

    assert_eq!(gw.stats().flag_reloads_applied, 1);

    // A broken file is refused as a whole: the last good flags stay.
    std::fs::write(&path, "[{").unwrap();
    let mut refused = None;
    for _ in 0..200 {
        refused = gw.stats().flag_reload_error;
        if refused.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(refused.is_some(), "the broken file was never read");
    assert_eq!(gw.stats().flag_reloads_applied, 1);
    assert_eq!(get_json(&http, analytics, "starter").await.0, 404);
    gw.shutdown(Duration::from_secs(5)).await;
    let _ = std::fs::remove_file(&path);
}
