//! The tower layer end to end over HTTP on loopback: axum server, reqwest client.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use finsight_ratelimit::layer::Mode;
use finsight_ratelimit::{
    Algorithm, Decision, Limiter, ManualClock, RateLimitLayer, Rule, RuleSet, Scope,
    ThrottleAction, TokioClock, UserId,
};
use tower::{Service, ServiceExt};

const T0: u64 = 1_700_000_000_000_000;
const MIN: Duration = Duration::from_secs(60);

async fn serve(layer: RateLimitLayer) -> String {
    let layer = layer.peer_ip(|e| e.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()));
    let app = Router::new()
        .route(
            "/hello",
            get(|req: axum::extract::Request| async move {
                let degraded = req
                    .extensions()
                    .get::<Decision>()
                    .is_some_and(|d| d.outcome == finsight_ratelimit::Outcome::Degraded);
                if degraded { "degraded" } else { "hello" }
            }),
        )
        .layer(layer)
        .layer(
            tower::ServiceBuilder::new().map_request(|mut req: axum::extract::Request| {
                // Stand-in for an authentication layer: it runs before the limiter.
                if let Some(u) = req
                    .headers()
                    .get("x-user")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
                {
                    req.extensions_mut().insert(UserId(u));
                }
                req
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    format!("http://{addr}")
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn headers_on_every_response_and_429_with_retry_after() {
    let rules = RuleSet::new(vec![
        Rule::new("global", Scope::Global, Algorithm::FixedWindow, 100, MIN),
        Rule::new("key", Scope::ApiKey, Algorithm::FixedWindow, 2, MIN),
    ]);
    let clock = ManualClock::new(T0); // 20 s into a minute window (T0 % 60 s)
    let limiter = Limiter::builder(rules).clock(clock).build().unwrap();
    let base = serve(RateLimitLayer::new(limiter)).await;
    let http = reqwest::Client::new();
    let get = || {
        http.get(format!("{base}/hello"))
            .header("x-api-key", "sk_live_abc")
            .send()
    };

    let r = get().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "ratelimit-policy").unwrap(),
        r#""global";q=100;w=60, "key";q=2;w=60"#
    );
    assert_eq!(
        header(&r, "ratelimit").unwrap(),
        r#""global";r=99;t=40, "key";r=1;t=40"#
    );
    assert_eq!(header(&r, "retry-after"), None);
    assert_eq!(r.text().await.unwrap(), "hello");

    assert_eq!(get().await.unwrap().status(), 200);
    let r = get().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after").unwrap(), "40");
    assert_eq!(
        header(&r, "ratelimit").unwrap(),
        r#""global";r=98;t=40, "key";r=0;t=40"#
    );
    assert!(header(&r, "ratelimit-policy").is_some());

    // Another key is unaffected; a request without a key skips the key rule.
    let r = http
        .get(format!("{base}/hello"))
        .header("x-api-key", "other")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http.get(format!("{base}/hello")).send().await.unwrap();
    assert_eq!(
        header(&r, "ratelimit-policy").unwrap(),
        r#""global";q=100;w=60"#
    );
}

#[tokio::test]
async fn a_forged_x_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let rules = RuleSet::new(vec![Rule::new(
        "ip",
        Scope::Ip,
        Algorithm::FixedWindow,
        2,
        MIN,
    )]);
    let limiter = Limiter::builder(rules.clone())
        .clock(ManualClock::new(T0))
        .build()
        .unwrap();
    let base = serve(RateLimitLayer::new(limiter)).await;
    let http = reqwest::Client::new();
    let mut statuses = vec![];
    for i in 0..4 {
        let r = http
            .get(format!("{base}/hello"))
            .header("x-forwarded-for", format!("10.9.8.{i}"))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(
        statuses,
        [200, 200, 429, 429],
        "keyed by the real peer, not the forged header"
    );

    // Behind a trusted proxy (loopback here) the right-most untrusted hop is the client.
    let limiter = Limiter::builder(rules)
        .clock(ManualClock::new(T0))
        .build()
        .unwrap();
    let layer = RateLimitLayer::new(limiter)
        .trusted_proxies(["127.0.0.0/8", "10.0.0.0/8"])
        .unwrap();
    let base = serve(layer).await;
    let send = |xff: &'static str| {
        http.get(format!("{base}/hello"))
            .header("x-forwarded-for", xff)
            .send()
    };
    // The client forges a left-most entry each time; the proxy appends the real address.
    assert_eq!(
        send("1.1.1.1, 203.0.113.5, 10.0.0.2")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        send("2.2.2.2, 203.0.113.5, 10.0.0.2")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        send("3.3.3.3, 203.0.113.5, 10.0.0.2")
            .await
            .unwrap()
            .status(),
        429
    );
    assert_eq!(
        send("203.0.113.6").await.unwrap().status(),
        200,
        "a different client behind the proxy"
    );
}

#[tokio::test]
async fn user_from_request_extensions_and_degrade_marking() {
    let rules = RuleSet::new(vec![
        Rule::new("user", Scope::User, Algorithm::Gcra, 1, MIN).action(ThrottleAction::Degrade),
    ]);
    let limiter = Limiter::builder(rules)
        .clock(ManualClock::new(T0))
        .build()
        .unwrap();
    let base = serve(RateLimitLayer::new(limiter)).await;
    let http = reqwest::Client::new();
    let get = |u: &'static str| http.get(format!("{base}/hello")).header("x-user", u).send();
    let r = get("alice").await.unwrap();
    assert_eq!(r.text().await.unwrap(), "hello");
    let r = get("alice").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "ratelimit-degraded").as_deref(), Some("?1"));
    assert_eq!(
        r.text().await.unwrap(),
        "degraded",
        "the handler sees the decision"
    );
    assert_eq!(get("bob").await.unwrap().text().await.unwrap(), "hello");
}

#[tokio::test(start_paused = true)]
async fn backpressure_mode_holds_poll_ready_while_the_global_limit_is_exhausted() {
    let rules = RuleSet::new(vec![Rule::new(
        "g",
        Scope::Global,
        Algorithm::Gcra,
        1,
        Duration::from_secs(1),
    )]);
    let limiter = Limiter::builder(rules)
        .clock(TokioClock::new(T0))
        .build()
        .unwrap();
    let svc = tower::service_fn(|_req: http::Request<String>| async {
        Ok::<_, Infallible>(http::Response::new(String::new()))
    });
    let mut svc = tower::Layer::layer(
        &RateLimitLayer::new(limiter.clone()).mode(Mode::Backpressure),
        svc,
    );
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(String::new()))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // Exhausted: readiness waits ~1 s instead of the call answering 429.
    assert!(
        tokio::time::timeout(Duration::from_millis(900), svc.ready())
            .await
            .is_err()
    );
    let res = tokio::time::timeout(Duration::from_millis(200), svc.ready())
        .await
        .expect("ready after the refill");
    let res = res
        .unwrap()
        .call(http::Request::new(String::new()))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // Reject mode answers at once.
    let svc = tower::service_fn(|_req: http::Request<String>| async {
        Ok::<_, Infallible>(http::Response::new(String::new()))
    });
    let mut svc = tower::Layer::layer(&RateLimitLayer::new(limiter), svc);
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(String::new()))
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "1");
}
