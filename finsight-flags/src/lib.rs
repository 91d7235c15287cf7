//! Feature-flag evaluation: targeting rules, rollouts, multivariate variants,
//! kill switch and sticky bucketing compatible with the FinSight Python services.
//!
//! ```
//! use finsight_flags::{EvaluationContext, FlagEngine, FlagSet, Reason};
//!
//! let json = r#"[{
//!     "key": "new-dashboard", "flag_type": "boolean", "status": "active",
//!     "default_value": false, "rollout_percentage": 50,
//!     "targeting_rules": [{"rule_type": "subscription_tier", "operator": "in", "values": ["pro", "enterprise"]}]
//! }]"#;
//! let report = FlagSet::from_json(json)?;
//! assert!(report.errors.is_empty());
//! let engine = FlagEngine::new(report.set);
//!
//! let ctx = EvaluationContext::new().user_id("user-123").subscription_tier("pro");
//! let detail = engine.bool_detail("new-dashboard", &ctx, false);
//! assert_eq!(detail.bucket, Some(45)); // md5("new-dashboard:user:user-123") → 45, as in Python
//! assert_eq!(detail.value, true);
//! assert_eq!(detail.reason, Reason::Enabled);
//! assert_eq!(detail.reason.as_str(), "enabled");
//!
//! // Unknown flags, inactive or killed flags give the caller's default:
//! assert!(!engine.is_enabled("no-such-flag", &ctx));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Overview
//!
//! * [`FlagDefinition`] is the Python services' flag row in its snake_case
//!   JSON (SPEC §1.1); unknown fields are ignored.
//! * [`FlagSet`] validates definitions at load: unknown operators or rule
//!   types, invalid regexes (compiled once, Python `re.match` semantics,
//!   size-limited), weights or percentages outside `0..=100`, prerequisite
//!   cycles and missing prerequisites are [`FlagError`]s naming the flag key
//!   and the field. A bad flag never takes down the good ones
//!   ([`LoadReport`]).
//! * [`FlagEngine`] evaluates in the order of SPEC §1.2 with its exact
//!   [`Reason`] strings; typed accessors (`bool_value`, `string_value`,
//!   `number_value`, `json_value`) return the caller's default with
//!   [`Reason::TypeMismatch`] on a value of another type; `*_detail` and
//!   [`FlagEngine::evaluate`] return an [`Evaluation`] (value, variant,
//!   reason, targeting_matched, bucket); [`FlagEngine::explain`] reports every
//!   rule's outcome. Evaluation is synchronous, does no I/O and does not
//!   allocate for a boolean flag; it never waits on a reload (`arc-swap`),
//!   and its only locks are the sharded locks of the bucket memo and the
//!   in-memory sticky store, each held for one lookup.
//! * Bucketing is exactly SPEC §1.3 ([`bucket`]): the same users land in the
//!   same buckets and variants as in the Python services.
//! * Sticky assignments (SPEC §1.4) go through a [`StickyStore`]:
//!   [`MemoryStickyStore`] (bounded) by default; the `redis` feature adds a
//!   Redis store that loads ahead ([`FlagEngine::preload`]) and writes behind.
//! * Sources (SPEC §1.5): in memory ([`FlagEngine::replace`]), a JSON file
//!   reloaded on change ([`FileSource`]), Redis with change notification
//!   (`redis` feature). Exposure events go through a bounded, non-blocking
//!   [`ExposureBuffer`] to your [`ExposureSink`].
//! * Operators beyond the Python services: numeric (`lt`, `lte`, `gt`,
//!   `gte`), semver (`semver_eq`, `semver_lt`, …) and dates (`before`,
//!   `after`).
//!
//! # Feature flags
//!
//! | Feature | What it adds | Default |
//! |---|---|---|
//! | `redis` | `redis::RedisStickyStore` and `redis::RedisFlagSource` | no |
//! | `openfeature` | `openfeature::FinSightProvider`, an `open-feature` 0.3 provider | no |
//! | `experiments` | `experiment`: A/B experiment definitions, assignment through the engine, sample size, z / chi-square / Welch tests, SRM check (`statrs`) | no |
//! | `full` | all of the above | no |
//!
//! Without features the crate is a complete in-memory engine with the file
//! source.
//!
//! # Conformance
//!
//! `cargo run -p finsight-flags --example conformance -- <vectors.json>` runs
//! a file in the format of the shared conformance vectors and prints each
//! mismatch; the test suite runs it on `tests/data/flags.json`.
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod bucket;
mod clock;
mod compile;
mod context;
mod error;
mod eval;
mod exposure;
mod flagset;
mod load;
mod memo;
mod model;
#[cfg(feature = "openfeature")]
#[cfg_attr(docsrs, doc(cfg(feature = "openfeature")))]
pub mod openfeature;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
mod source;
mod sticky;

// A/B experiments (issue 4; documented in experiment/mod.rs).
#[cfg(feature = "experiments")]
#[cfg_attr(docsrs, doc(cfg(feature = "experiments")))]
pub mod experiment;

pub use bucket::bucket;
pub use clock::{Clock, ManualClock, SystemClock};
pub use context::{DEFAULT_ENVIRONMENT, EvaluationContext, Unit};
pub use error::{BoxError, Error, FlagError};
pub use eval::{
    Evaluation, Explanation, FlagEngine, FlagEngineBuilder, PrerequisiteOutcome, Reason,
    RuleOutcome,
};
pub use exposure::{ExposureBuffer, ExposureEvent, ExposureSink, ExposureStats};
pub use flagset::{FlagSet, LoadReport, REGEX_SIZE_LIMIT};
pub use model::{FlagDefinition, FlagStatus, FlagType, Operator, RuleType, TargetingRule, Variant};
pub use source::{FileSource, ReloadStatus, SourceWatcher};
pub use sticky::{
    Assignment, MemoryStickyStore, OwnedStickyKey, PreloadFuture, StickyKey, StickyStore,
};

/// The README's examples compile and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
