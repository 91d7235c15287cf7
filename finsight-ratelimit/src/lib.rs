//! Rate limiting with six algorithms, scoped rules, tiers and costs, in memory or shared through Redis.
//!
//! This crate is part of the FinSight SDK. Its API lands with the crate's
//! first release; see the README for the plan.
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used, clippy::panic))]
#![cfg_attr(docsrs, feature(doc_cfg))]
