//! Two-level cache: a bounded in-process L1 in front of a shared Redis L2.
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod cache;
mod config;
mod error;
mod glob;
mod l1;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
mod stats;

pub use cache::{Cache, CacheBuilder, Value};
pub use config::{CacheConfig, Capacity, Layers};
pub use error::{BoxError, Error, Result};
pub use stats::{LayerStats, Stats};

/// A random `u64` from the standard library's randomly keyed hasher (seeds
/// and lease tokens; not for cryptography).
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x9e37_79b9_7f4a_7c15);
    h.finish()
}
