//! End to end: the gateway on loopback against the real Redis and RabbitMQ,
//! driven over HTTP, with a downstream this test controls.
//!
//! Every test uses its own Redis namespace, exchange and queue names
//! (`finsight_testkit::unique`), so they run in parallel. Waits are bounded
//! polls; no assertion is about elapsed time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use finsight_bus::rabbitmq::{RabbitConfig, RabbitMq};
use finsight_bus::{Bus, Context, Router as BusRouter, Topology};
use finsight_ratelimit::{Algorithm, CostTable, ManualClock, Rule, RuleSet, Scope, Tier};
use gateway::{Gateway, GatewayConfig, RunningGateway};
use serde_json::Value;

/// The downstream: counts hits, fails with 500 while `fail` is set.
#[derive(Clone, Default)]
struct Downstream {
    hits: Arc<AtomicU64>,
    fail: Arc<AtomicBool>,
}

impl Downstream {
    async fn start() -> (Self, String) {
        let me = Self::default();
        let app = Router::new()
            .route("/quotes/{symbol}", get(ds_quote))
            .route("/analytics/{symbol}", get(ds_analytics))
            .with_state(me.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (me, url)
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn ds_quote(State(ds): State<Downstream>, Path(symbol): Path<String>) -> Response {
    ds.hits.fetch_add(1, Ordering::SeqCst);
    if ds.fail.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    axum::Json(serde_json::json!({ "symbol": symbol, "price": 101.25 })).into_response()
}

async fn ds_analytics(State(ds): State<Downstream>, Path(symbol): Path<String>) -> Response {
    ds.hits.fetch_add(1, Ordering::SeqCst);
    axum::Json(serde_json::json!({ "symbol": symbol, "sma_20": 99.5 })).into_response()
}

/// Per IP 100 000/min, per tenant 50 000/min; per user: free 5/min,
/// professional 12/min, enterprise 10 000/min; analytics costs 5.
fn rules() -> RuleSet {
    let min = Duration::from_secs(60);
    RuleSet::new(vec![
        Rule::new(
            "ip",
            Scope::Ip,
            Algorithm::SlidingWindowCounter,
            100_000,
            min,
        ),
        Rule::new("tenant", Scope::Tenant, Algorithm::TokenBucket, 50_000, min),
        Rule::new("user", Scope::User, Algorithm::FixedWindow, 5, min)
            .tier(Tier::Professional, 12, None)
            .tier(Tier::Enterprise, 10_000, None),
    ])
    .costs(CostTable::new().with("/api/v1/analytics/*", 5))
}

fn config(downstream: &str, label: &str) -> GatewayConfig {
    let mut cfg = GatewayConfig::new(downstream);
    cfg.redis_url = Some(finsight_testkit::redis_url());
    cfg.amqp_url = Some(finsight_testkit::amqp_url());
    cfg.namespace = format!("{}:", finsight_testkit::unique(label));
    cfg.topology = Topology::prefixed(&finsight_testkit::unique(label));
    cfg.events_queue = finsight_testkit::unique("analytics");
    cfg.rules = rules();
    // Rate-limit windows do not roll over while a test runs.
    cfg.rate_limit_clock = Some(ManualClock::new(1_800_000_000_000_000));
    cfg.breaker_failures = 3;
    cfg.breaker_open = Duration::from_millis(500);
    cfg.retry_attempts = 2;
    cfg.retry_base = Duration::from_millis(5);
    cfg.downstream_timeout = Duration::from_secs(2);
    cfg
}

async fn start(cfg: GatewayConfig) -> RunningGateway {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    Gateway::build(cfg)
        .await
        .unwrap()
        .start(addr)
        .await
        .unwrap()
}

async fn call(
    http: &reqwest::Client,
    gw: &RunningGateway,
    path: &str,
    user: &str,
    tier: &str,
) -> reqwest::Response {
    http.get(format!("{}{path}", gw.url()))
        .header("x-user-id", user)
        .header("x-tenant-id", "acme")
        .header("x-tier", tier)
        .send()
        .await
        .unwrap()
}

async fn json(r: reqwest::Response) -> Value {
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

async fn health(http: &reqwest::Client, gw: &RunningGateway) -> Value {
    json(
        http.get(format!("{}/health", gw.url()))
            .send()
            .await
            .unwrap(),
    )
    .await
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Consumes the gateway's events queue on RabbitMQ; yields `(event_type, payload)`.
async fn consume_events(
    cfg: &GatewayConfig,
) -> (
    Bus,
    finsight_bus::ConsumerHandle,
    tokio::sync::mpsc::Receiver<(String, Value)>,
) {
    let queue = cfg.events_queue.clone();
    let topology = cfg.topology.clone().consumer_queue(&queue);
    let rabbit = RabbitMq::connect(RabbitConfig::new(finsight_testkit::amqp_url()))
        .await
        .unwrap();
    let bus = Bus::connect(rabbit, topology, queue.as_str())
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<(String, Value)>(1024);
    let mut router = BusRouter::new();
    for kind in ["api_request", "flag_exposure", "circuit_state_changed"] {
        let tx = tx.clone();
        router = router.on(kind, move |ctx: Context| {
            let tx = tx.clone();
            async move {
                let e = ctx.envelope();
                let _ = tx.send((e.event_type().to_owned(), e.json()?)).await;
                Ok(())
            }
        });
    }
    let consumer = bus.consumer(&queue, router).start().unwrap();
    (bus, consumer, rx)
}

/// Receives events until `done` says so or 50 quiet 200 ms waits pass.
async fn receive_until(
    rx: &mut tokio::sync::mpsc::Receiver<(String, Value)>,
    mut done: impl FnMut(&[(String, Value)]) -> bool,
) -> Vec<(String, Value)> {
    let mut got = Vec::new();
    for _ in 0..50 {
        if done(&got) {
            break;
        }
        if let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            got.push(e);
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_with_headers_by_tier_and_cost() {
    let (_ds, url) = Downstream::start().await;
    let gw = start(config(&url, "e2e-rl")).await;
    let http = reqwest::Client::new();

    // Free tier: 5 per minute, then 429.
    for i in 0..5u64 {
        let r = call(&http, &gw, "/api/v1/quotes/AAPL", "u-free", "free").await;
        assert_eq!(r.status(), 200, "request {i}");
        assert!(
            header(&r, "ratelimit-policy").contains("\"user\";q=5;w=60"),
            "{}",
            header(&r, "ratelimit-policy")
        );
        let state = header(&r, "ratelimit");
        assert!(
            state.contains(&format!("\"user\";r={};", 4 - i)),
            "request {i}: {state}"
        );
    }
    let r = call(&http, &gw, "/api/v1/quotes/AAPL", "u-free", "free").await;
    assert_eq!(r.status(), 429);
    // The per-IP and per-tenant rules apply too: the peer address and the
    // tenant header reached the limiter.
    let policy = header(&r, "ratelimit-policy");
    assert!(policy.contains("\"ip\";q=100000;w=60"), "{policy}");
    assert!(policy.contains("\"tenant\";q=50000;w=60"), "{policy}");
    let retry: u64 = header(&r, "retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    let state = header(&r, "ratelimit");
    assert!(
        state.contains(&format!("\"user\";r=0;t={retry}")),
        "{state}"
    );
    assert!(header(&r, "ratelimit-policy").contains("\"user\";q=5;w=60"));

    // Another user of the same tier has their own counter; enterprise has a bigger quota.
    let r = call(&http, &gw, "/api/v1/quotes/AAPL", "u-free-2", "free").await;
    assert_eq!(r.status(), 200);
    for _ in 0..8 {
        let r = call(&http, &gw, "/api/v1/quotes/AAPL", "u-ent", "enterprise").await;
        assert_eq!(r.status(), 200);
        assert!(header(&r, "ratelimit-policy").contains("\"user\";q=10000;w=60"));
    }

    // Endpoint cost: analytics costs 5 of the professional tier's 12.
    for expected in [200, 200, 429] {
        let r = call(
            &http,
            &gw,
            "/api/v1/analytics/AAPL",
            "u-pro",
            "professional",
        )
        .await;
        assert_eq!(r.status(), expected);
    }
    // 2 left: a cost-1 quote still passes.
    let r = call(&http, &gw, "/api/v1/quotes/AAPL", "u-pro", "professional").await;
    assert_eq!(r.status(), 200);
    assert!(header(&r, "ratelimit").contains("\"user\";r=1;"));
    assert!(gw.stats().rate_limit_rejections >= 2);
    gw.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_on_downstream_failures_and_closes_after_recovery() {
    let (ds, url) = Downstream::start().await;
    let cfg = config(&url, "e2e-breaker");
    let gw = start(cfg.clone()).await;
    let (bus, consumer, mut rx) = consume_events(&cfg).await;
    let http = reqwest::Client::new();
    let h = health(&http, &gw).await;
    assert_eq!(h["status"], "healthy", "{h}");

    // Enterprise quotes are real-time (flag): every call goes downstream.
    ds.fail.store(true, Ordering::SeqCst);
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let r = call(&http, &gw, "/api/v1/quotes/IBM", "u-ent", "enterprise").await;
        statuses.push(r.status().as_u16());
        if r.status() == 503 {
            assert!(header(&r, "retry-after").parse::<u64>().unwrap() >= 1);
            break;
        }
        assert_eq!(r.status(), 502);
    }
    assert_eq!(statuses.last(), Some(&503), "{statuses:?}");
    assert!(statuses.contains(&502), "failures came first: {statuses:?}");
    let h = health(&http, &gw).await;
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(h["breakers"][0]["name"], "downstream");
    assert_ne!(h["breakers"][0]["state"], "closed", "{h}");

    // A rejected call does not reach the downstream.
    let before = ds.hits();
    let r = call(&http, &gw, "/api/v1/quotes/IBM", "u-ent", "enterprise").await;
    if r.status() == 503 {
        assert_eq!(
            ds.hits(),
            before,
            "an open breaker must not call the downstream"
        );
    }

    // Downstream recovers: after the open period a probe closes the breaker.
    ds.fail.store(false, Ordering::SeqCst);
    let mut recovered = false;
    for _ in 0..200 {
        let r = call(&http, &gw, "/api/v1/quotes/IBM", "u-ent", "enterprise").await;
        if r.status() == 200 {
            let body = json(r).await;
            assert_eq!(body["quote"]["price"], 101.25);
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(recovered, "breaker never let a probe through");
    let h = health(&http, &gw).await;
    assert_eq!(h["breakers"][0]["state"], "closed", "{h}");
    assert_eq!(h["status"], "healthy", "{h}");

    // Every transition was published on the bus, ending closed.
    let transitions = |got: &[(String, Value)]| -> Vec<(String, String)> {
        got.iter()
            .filter(|(k, _)| k == "circuit_state_changed")
            .map(|(_, v)| {
                (
                    v["from"].as_str().unwrap().to_owned(),
                    v["to"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let got = receive_until(&mut rx, |got| {
        transitions(got)
            .last()
            .is_some_and(|(_, to)| to == "closed")
    })
    .await;
    let t = transitions(&got);
    assert_eq!(
        t.first(),
        Some(&("closed".to_owned(), "open".to_owned())),
        "{t:?}"
    );
    assert_eq!(t.last().map(|x| x.1.as_str()), Some("closed"), "{t:?}");
    assert!(
        got.iter()
            .filter(|(k, _)| k == "circuit_state_changed")
            .all(|(_, v)| v["name"] == "downstream")
    );
    consumer.shutdown(Duration::from_secs(5)).await.unwrap();
    bus.close(Duration::from_secs(5)).await.unwrap();
    gw.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_responses_are_served_without_the_downstream() {
    let (ds, url) = Downstream::start().await;
    let cfg = config(&url, "e2e-cache");
    let gw = start(cfg.clone()).await;
    let http = reqwest::Client::new();

    let r = call(&http, &gw, "/api/v1/quotes/MSFT", "u-1", "free").await;
    assert_eq!(r.status(), 200);
    let body = json(r).await;
    assert_eq!(body["source"], "downstream");
    assert_eq!(body["quote"]["symbol"], "MSFT");
    assert_eq!(ds.hits(), 1);

    // Same instance: L1.
    for _ in 0..3 {
        let body = json(call(&http, &gw, "/api/v1/quotes/MSFT", "u-2", "free").await).await;
        assert_eq!(body["source"], "cache");
        assert_eq!(body["quote"]["price"], 101.25);
    }
    assert_eq!(ds.hits(), 1, "L1 hits must not call the downstream");
    assert!(gw.stats().cache_l1_hits >= 3);

    // A second instance on the same Redis namespace: L2.
    let mut cfg2 = cfg;
    cfg2.events_queue = finsight_testkit::unique("analytics");
    let gw2 = start(cfg2).await;
    let body = json(call(&http, &gw2, "/api/v1/quotes/MSFT", "u-3", "free").await).await;
    assert_eq!(body["source"], "cache");
    assert_eq!(ds.hits(), 1, "an L2 hit must not call the downstream");
    assert_eq!(gw2.stats().cache_l2_hits, 1);

    // Concurrent misses of a new key load once.
    let calls = (0..8).map(|i| {
        let http = http.clone();
        let url = format!("{}/api/v1/quotes/NVDA", gw.url());
        async move {
            http.get(url)
                .header("x-user-id", format!("c-{i}"))
                .header("x-tier", "free")
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    let statuses = futures_join_all(calls).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(ds.hits(), 2, "eight concurrent misses, one downstream call");
    gw2.shutdown(Duration::from_secs(5)).await;
    gw.shutdown(Duration::from_secs(5)).await;
}

async fn futures_join_all<
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
>(
    futs: impl Iterator<Item = F>,
) -> Vec<T> {
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_gate_the_analytics_endpoint_and_realtime_quotes_per_tier() {
    let (ds, url) = Downstream::start().await;
    let gw = start(config(&url, "e2e-flags")).await;
    let http = reqwest::Client::new();

    // analytics-api: professional and up.
    let r = call(&http, &gw, "/api/v1/analytics/TSLA", "u-f", "free").await;
    assert_eq!(r.status(), 403);
    assert_eq!(json(r).await["reason"], "targeting_not_matched");
    let r = call(&http, &gw, "/api/v1/analytics/TSLA", "u-p", "professional").await;
    assert_eq!(r.status(), 200);
    assert_eq!(json(r).await["analytics"]["sma_20"], 99.5);
    let r = http
        .get(format!("{}/api/v1/analytics/TSLA", gw.url()))
        .header("x-user-id", "u-none")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "no tier, no analytics");

    // realtime-quotes: enterprise bypasses the cache, free is served from it.
    // (u-f's 403 above still cost 5: the limit applies before the handler.)
    let hits = ds.hits();
    for _ in 0..2 {
        let body = json(call(&http, &gw, "/api/v1/quotes/AMZN", "u-f2", "free").await).await;
        assert_eq!(body["realtime"], false);
    }
    assert_eq!(ds.hits(), hits + 1, "free: one load, then the cache");
    for _ in 0..2 {
        let body = json(call(&http, &gw, "/api/v1/quotes/AMZN", "u-e", "enterprise").await).await;
        assert_eq!(body["realtime"], true);
        assert_eq!(body["source"], "downstream");
    }
    assert_eq!(
        ds.hits(),
        hits + 3,
        "enterprise: every quote from the downstream"
    );
    gw.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_exposure_events_arrive_in_rabbitmq() {
    let (_ds, url) = Downstream::start().await;
    let cfg = config(&url, "e2e-events");
    let gw = start(cfg.clone()).await;
    let (bus, consumer, mut rx) = consume_events(&cfg).await;

    let http = reqwest::Client::new();
    assert_eq!(
        call(&http, &gw, "/api/v1/quotes/ORCL", "u-ev", "enterprise")
            .await
            .status(),
        200
    );
    assert_eq!(
        call(&http, &gw, "/api/v1/analytics/ORCL", "u-ev2", "free")
            .await
            .status(),
        403
    );

    let count = |got: &[(String, Value)], kind: &str| got.iter().filter(|(k, _)| k == kind).count();
    let got = receive_until(&mut rx, |got| {
        count(got, "api_request") >= 2 && count(got, "flag_exposure") >= 2
    })
    .await;
    let mut requests: Vec<Value> = got
        .iter()
        .filter(|(k, _)| k == "api_request")
        .map(|(_, v)| v.clone())
        .collect();
    let exposures: Vec<Value> = got
        .iter()
        .filter(|(k, _)| k == "flag_exposure")
        .map(|(_, v)| v.clone())
        .collect();
    requests.sort_by_key(|v| v["status"].as_u64());
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0]["path"], "/api/v1/quotes/ORCL");
    assert_eq!(requests[0]["status"], 200);
    assert_eq!(requests[0]["user_id"], "u-ev");
    assert_eq!(requests[0]["tenant_id"], "acme");
    assert_eq!(requests[0]["tier"], "enterprise");
    assert_eq!(requests[1]["path"], "/api/v1/analytics/ORCL");
    assert_eq!(requests[1]["status"], 403);
    let mut flags: Vec<(String, Value)> = exposures
        .iter()
        .map(|e| {
            (
                e["flag_key"].as_str().unwrap().to_owned(),
                e["value"].clone(),
            )
        })
        .collect();
    flags.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        flags,
        [
            ("analytics-api".to_owned(), Value::Bool(false)),
            ("realtime-quotes".to_owned(), Value::Bool(true)),
        ]
    );
    consumer.shutdown(Duration::from_secs(5)).await.unwrap();
    bus.close(Duration::from_secs(5)).await.unwrap();
    let stats = gw.stats();
    assert_eq!(stats.events.dropped, 0, "{stats:?}");
    gw.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_events_feed_the_worker_over_rabbitmq() {
    let (_ds, url) = Downstream::start().await;
    let cfg = config(&url, "e2e-worker");
    let gw = start(cfg.clone()).await;
    let queue = cfg.events_queue.clone();
    let rabbit = RabbitMq::connect(RabbitConfig::new(finsight_testkit::amqp_url()))
        .await
        .unwrap();
    let bus = Bus::connect(
        rabbit,
        cfg.topology.clone().consumer_queue(&queue),
        queue.as_str(),
    )
    .await
    .unwrap();
    let agg = worker::Aggregates::new();
    let consumer = worker::start(&bus, &queue, agg.clone()).unwrap();

    let http = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(
            call(&http, &gw, "/api/v1/quotes/CSCO", "u-w", "free")
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429]);
    let mut totals = agg.tenant("acme");
    for _ in 0..100 {
        if totals.requests >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        totals = agg.tenant("acme");
    }
    assert_eq!(totals.requests, 6, "{totals:?}");
    assert_eq!(totals.rate_limited, 1);
    assert_eq!(totals.server_errors, 0);
    let stats = consumer.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        stats.dead_lettered, 0,
        "every gateway event has a handler: {stats:?}"
    );
    bus.close(Duration::from_secs(5)).await.unwrap();
    gw.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_health_degraded_while_redis_stopped() {
    let (_ds, url) = Downstream::start().await;
    let gw = start(config(&url, "e2e-outage")).await;
    let http = reqwest::Client::new();
    let h = health(&http, &gw).await;
    assert_eq!(h["status"], "healthy", "{h}");
    // Warm the cache before the outage.
    assert_eq!(
        call(&http, &gw, "/api/v1/quotes/SAP", "u-o", "free")
            .await
            .status(),
        200
    );

    let outage = tokio::task::spawn_blocking(finsight_testkit::RedisOutage::stop)
        .await
        .unwrap()
        .expect("stop Redis");
    let mut degraded = None;
    for _ in 0..50 {
        let h = health(&http, &gw).await;
        let cache_down = h["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "cache" && c["status"] == "degraded");
        if h["status"] == "degraded" && cache_down {
            degraded = Some(h);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let h =
        degraded.expect("/health never reported Redis and the cache degraded while Redis was down");
    let redis = h["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "redis")
        .unwrap()
        .clone();
    assert_eq!(redis["status"], "degraded", "{h}");
    assert!(
        redis["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{h}"
    );
    let rabbit = h["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "rabbitmq")
        .unwrap()
        .clone();
    assert_eq!(rabbit["status"], "healthy", "{h}");
    // Still serving: L1 has the quote, the limiter falls back to local limits.
    let r = call(&http, &gw, "/api/v1/quotes/SAP", "u-o", "free").await;
    assert_eq!(r.status(), 200);

    tokio::task::spawn_blocking(move || outage.restore())
        .await
        .unwrap()
        .expect("restore Redis");
    let mut healthy = false;
    for _ in 0..100 {
        if health(&http, &gw).await["status"] == "healthy" {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healthy, "/health never recovered after Redis came back");
    gw.shutdown(Duration::from_secs(5)).await;
}
