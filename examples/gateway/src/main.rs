//! `cargo run -p gateway` — the FinSight gateway example.
//!
//! ```text
//! gateway                      serve on GATEWAY_ADDR (default 127.0.0.1:8080)
//! gateway downstream [ADDR]    serve a small fake quotes API (default 127.0.0.1:9010)
//! ```
//!
//! Environment: `GATEWAY_ADDR`, `GATEWAY_DOWNSTREAM_URL`, `FINSIGHT_REDIS_URL`,
//! `FINSIGHT_AMQP_URL`, `GATEWAY_RULES`, `GATEWAY_FLAGS`, `RUST_LOG`
//! (see `GatewayConfig::from_env`). Without Redis and RabbitMQ URLs every
//! part runs in memory.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use gateway::{Gateway, GatewayConfig};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[tokio::main]
async fn main() -> Result {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("downstream") => {
            let addr: SocketAddr = args
                .next()
                .unwrap_or_else(|| "127.0.0.1:9010".to_owned())
                .parse()?;
            serve_downstream(addr).await
        }
        None => serve_gateway().await,
        Some(other) => {
            Err(format!("unknown command `{other}`: use `downstream [ADDR]` or nothing").into())
        }
    }
}

async fn serve_gateway() -> Result {
    let addr: SocketAddr = std::env::var("GATEWAY_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:8080".to_owned())
        .parse()?;
    let cfg = GatewayConfig::from_env()?;
    println!(
        "gateway: downstream {}, redis {}, rabbitmq {}",
        cfg.downstream_url,
        cfg.redis_url.as_deref().unwrap_or("off (in memory)"),
        if cfg.amqp_url.is_some() {
            "on"
        } else {
            "off (in memory)"
        },
    );
    let running = Gateway::build(cfg).await?.start(addr).await?;
    println!("gateway: listening on {}", running.url());
    tokio::signal::ctrl_c().await?;
    println!("gateway: shutting down");
    running.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

/// A fake quotes API: a deterministic price per symbol; `/quotes/ERR…` answers 500.
async fn serve_downstream(addr: SocketAddr) -> Result {
    let app = Router::new()
        .route("/quotes/{symbol}", get(fake_quote))
        .route("/analytics/{symbol}", get(fake_analytics));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("downstream: listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

fn price(symbol: &str) -> f64 {
    let h = symbol
        .bytes()
        .fold(17u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    10.0 + (h % 100_000) as f64 / 100.0
}

async fn fake_quote(Path(symbol): Path<String>) -> Response {
    if symbol.starts_with("ERR") {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    axum::Json(serde_json::json!({ "symbol": symbol, "price": price(&symbol), "currency": "USD" }))
        .into_response()
}

async fn fake_analytics(Path(symbol): Path<String>) -> Response {
    let p = price(&symbol);
    axum::Json(
        serde_json::json!({ "symbol": symbol, "sma_20": p * 0.98, "rsi_14": 50.0 + (p % 40.0) }),
    )
    .into_response()
}
