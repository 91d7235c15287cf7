//! Rate limiting with six algorithms, scoped rules, tiers and costs, in memory or shared through Redis.
//!
//! ```
//! use std::time::Duration;
//! use finsight_ratelimit::{Algorithm, Limiter, RequestInfo, Rule, RuleSet, Scope, Tier};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), finsight_ratelimit::Error> {
//! // The Python services' six default rules, plus a stricter one for exports.
//! let mut rules = RuleSet::python_defaults();
//! rules.rules.push(
//!     Rule::new("exports", Scope::Tenant, Algorithm::SlidingWindowLog, 3, Duration::from_secs(60))
//!         .path("/api/v1/exports*")
//!         .tier(Tier::Enterprise, 30, None),
//! );
//! let limiter = Limiter::builder(rules).build()?;
//!
//! let req = RequestInfo::new("POST", "/api/v1/exports/csv")
//!     .tenant("acme")
//!     .user("u-42")
//!     .ip("203.0.113.9".parse().unwrap())
//!     .api_key("sk_live_abc");
//! for _ in 0..3 {
//!     assert!(limiter.check(&req).await?.is_allowed());
//! }
//! let d = limiter.check(&req).await?;
//! assert!(!d.is_allowed());
//! assert_eq!(d.rule.as_deref(), Some("exports"));
//! assert!(d.retry_after_secs().unwrap() >= 1); // rounded up, never 0
//! # Ok(()) }
//! ```
//!
//! # Overview
//!
//! * [`algorithm`]: token bucket, leaky bucket, fixed window, sliding-window
//!   log, sliding-window counter and GCRA as pure functions of
//!   `(policy, state, now, cost)` in integer microseconds, with one meaning of
//!   `limit`, `window` and `burst` for all six. The Redis backend runs the
//!   same arithmetic in Lua, so a rule means the same in memory and on Redis.
//! * [`Rule`] / [`RuleSet`]: rules as serde data: scope (global, tenant,
//!   user, IP, API key; keys stored as the first 16 hex characters of their
//!   SHA-256, never raw), algorithm, limit, window, burst, [`ThrottleAction`],
//!   per-[`Tier`] overrides, path patterns and methods, cost, and a
//!   per-endpoint [`CostTable`] with prefix wildcards.
//!   [`RuleSet::python_defaults`] is the Python services' rule set.
//! * [`Limiter`]: checks every applicable rule **all or nothing** (a request
//!   one rule rejects consumes from none) and returns a [`Decision`] with the
//!   real remaining count, reset, retry-after, action and deciding rule;
//!   [`peek`](Limiter::peek), [`refund`](Limiter::refund), shadow mode,
//!   runtime [`update_rules`](Limiter::update_rules) that keeps state,
//!   `delay`/`queue`/`degrade` actions through [`acquire`](Limiter::acquire),
//!   and [`metrics`](Limiter::metrics) by rule, tier and outcome.
//! * In memory: sharded (dashmap), idle keys evicted automatically, at most
//!   `max_keys` keys per rule. [`RateLimiter`] / [`KeyedRateLimiter`] are the
//!   single-quota building blocks (lock-free GCRA for one state).
//! * [`redis`] (feature `redis`): one `EVALSHA` per check for all rules,
//!   Redis server `TIME`, keys in one hash slot, expiry when idle, timeout
//!   and fail-open / fail-closed / local fallback.
//! * [`layer`]: a tower [`RateLimitLayer`] with key extraction (API key
//!   header, user/tenant extensions, client IP with trusted proxies), 429 +
//!   `Retry-After`, and the IETF `RateLimit` / `RateLimit-Policy` headers.
//!
//! Time is injectable everywhere: [`Clock`] with [`SystemClock`] (default),
//! [`ManualClock`] and [`TokioClock`] (follows tokio's paused test clock).
//!
//! # Feature flags
//!
//! | Name | Description | Default |
//! |---|---|---|
//! | `redis` | [`redis::RedisBackend`]: limits shared by every instance through Redis (redis 1.8, `ConnectionManager`) | no |
//! | `full` | everything above (docs.rs, CI) | no |
//!
//! The tower layer and the in-memory backend are always available.
//!
//! # Links
//! * Behaviour contract: the FinSight SPEC, §4.
//! * IETF draft-ietf-httpapi-ratelimit-headers-11 for the header syntax.
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod algorithm;
pub mod clock;
mod decision;
mod error;
mod keyed;
pub mod layer;
mod limiter;
pub mod metrics;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
mod request;
pub mod rule;
mod store;

pub use algorithm::{Algorithm, Policy, Quota, State, Verdict};
pub use clock::{Clock, ManualClock, SystemClock, TokioClock};
pub use decision::{Decision, Outcome, RuleReport};
pub use error::{BoxError, Error, Result};
pub use keyed::{KeyedRateLimiter, RateLimiter};
pub use layer::{RateLimitLayer, TenantId, UserId};
pub use limiter::{Limiter, LimiterBuilder};
pub use metrics::{MetricsSnapshot, RuleOutcome};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::{FailureMode, RedisBackend, RedisCallGuard, RedisCallPermit, RedisConfig};
pub use request::RequestInfo;
pub use rule::{CostTable, KeyId, Rule, RuleSet, Scope, ThrottleAction, Tier, TierOverride};
