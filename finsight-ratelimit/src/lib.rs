//! Rate limiting with six algorithms, scoped rules, tiers and costs, in memory or shared through Redis.
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
pub use redis::{FailureMode, RedisBackend, RedisConfig};
pub use request::RequestInfo;
pub use rule::{CostTable, KeyId, Rule, RuleSet, Scope, ThrottleAction, Tier, TierOverride};
