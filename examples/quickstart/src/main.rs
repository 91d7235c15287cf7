//! The FinSight SDK in a few lines per crate, on the in-memory defaults: no
//! Redis or RabbitMQ needed. Run it with `cargo run -p quickstart`.
//!
//! Each crate's part is one module here with an `async fn run()` that prints
//! what it shows; `main` runs them in order.

mod bus;
mod cache;
mod flags;
mod ratelimit;
mod resilience;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[tokio::main]
async fn main() -> Result {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    flags::run().await?;
    resilience::run().await?;
    cache::run().await?;
    ratelimit::run().await?;
    bus::run().await?;
    Ok(())
}
