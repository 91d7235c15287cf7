//! Opt-in adapters between the FinSight SDK crates, so the crates themselves
//! stay independent: each adapter sits behind its own cargo feature and pulls
//! in only the two crates it joins.
//!
//! ```
//! # #[cfg(not(feature = "flags-bus"))]
//! # fn main() {}
//! # #[cfg(feature = "flags-bus")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use finsight_adapters::flags_bus::BusExposureSink;
//! use finsight_bus::{Bus, MemoryBroker, Topology};
//! use finsight_flags::{EvaluationContext, ExposureBuffer, FlagEngine, FlagSet};
//!
//! // The bus: in memory here, RabbitMQ or Redis Streams in production.
//! let broker = MemoryBroker::new();
//! let bus = Bus::connect(broker.clone(), Topology::finsight().consumer_queue("analytics"), "analytics").await?;
//!
//! // Exposure events of flags with `track_exposure` go to the bus as
//! // `flag_exposure` events (routing key `flag_exposure.analytics`).
//! let (buffer, exporter) = ExposureBuffer::spawn(BusExposureSink::new(bus), 1024, 64)?;
//! let flags = FlagSet::from_json(
//!     r#"[{"key": "new-chart", "flag_type": "boolean", "status": "active",
//!          "default_value": false, "rollout_percentage": 100, "track_exposure": true}]"#,
//! )?;
//! let engine = FlagEngine::builder().flags(flags.set).exposure(buffer).build();
//! assert!(engine.is_enabled("new-chart", &EvaluationContext::new().user_id("u-1")));
//!
//! drop(engine); // the exporter flushes what is queued, then ends
//! exporter.await?;
//! let published = broker.take("analytics", 10);
//! assert_eq!(published.len(), 1);
//! # Ok(()) }
//! ```
//!
//! # Overview
//!
//! * [`flags_bus::BusExposureSink`] (`flags-bus`): a
//!   `finsight_flags::ExposureSink` that publishes each exposure event as a
//!   `finsight_bus::Envelope` (event type `flag_exposure` by default, payload
//!   = the event's JSON) and waits for the broker's confirms of the batch.
//! * [`health::HealthBusExt::bus_check`] (`health-bus`): a bus connection as a
//!   `finsight_resilience::Health` check.
//! * [`health::HealthCacheExt::cache_check`] (`health-cache`): a two-level
//!   cache's Redis link (its invalidation channel) as a health check, with no
//!   I/O per report.
//! * [`shared_redis::SharedRedis`] (`shared-redis`): one Redis
//!   `ConnectionManager` whose clones serve the cache's data commands, the
//!   rate limiter's checks and the flags' sticky store and source (the
//!   cache's invalidation and the flag source's pub/sub listener keep their
//!   dedicated connections).
//! * [`resilience_redis::BreakerGuard`] (`resilience-redis`): a
//!   `finsight_resilience::CircuitBreaker` guarding the cache's and the rate
//!   limiter's Redis calls through their `RedisCallGuard` hooks; while it is
//!   open they stay off Redis and fall back as they do when Redis fails.
//!
//! # Feature flags
//!
//! | Feature | What it adds | Pulls in | Default |
//! |---|---|---|---|
//! | `flags-bus` | [`flags_bus::BusExposureSink`] | `finsight-flags`, `finsight-bus` | no |
//! | `health-bus` | [`health::HealthBusExt`] | `finsight-resilience`, `finsight-bus` | no |
//! | `health-cache` | [`health::HealthCacheExt`] | `finsight-resilience`, `finsight-cache` (`redis`) | no |
//! | `shared-redis` | [`shared_redis::SharedRedis`] | `finsight-cache`, `finsight-ratelimit`, `finsight-flags` (each with `redis`), `redis` | no |
//! | `resilience-redis` | [`resilience_redis::BreakerGuard`] | `finsight-resilience`, `finsight-cache` (`redis`), `finsight-ratelimit` (`redis`) | no |
//! | `full` | every adapter (docs.rs, CI) | all of the above | no |
//!
//! Without features the crate is empty.
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(attr(deny(warnings))))]

#[cfg(feature = "flags-bus")]
#[cfg_attr(docsrs, doc(cfg(feature = "flags-bus")))]
pub mod flags_bus;
#[cfg(any(feature = "health-bus", feature = "health-cache"))]
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "health-bus", feature = "health-cache")))
)]
pub mod health;

#[cfg(feature = "resilience-redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "resilience-redis")))]
pub mod resilience_redis;
#[cfg(feature = "shared-redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "shared-redis")))]
pub mod shared_redis;

/// The README's example, compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
