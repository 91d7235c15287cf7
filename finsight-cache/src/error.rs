//! The crate's error type.

use std::time::Duration;

/// A boxed error from a backend or a loader, kept as the [`std::error::Error::source`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in a cache call.
///
/// Reads never fail because Redis is down: an L2 failure during a read is
/// counted ([`crate::LayerStats::errors`]), logged, and the read falls back to
/// L1 or the loader. Writes (`set`, `delete`, `invalidate_pattern`) are
/// write-through and report L2 failures with [`Error::Backend`] /
/// [`Error::Timeout`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The value could not be turned into JSON (a `Serialize` impl failed,
    /// e.g. a map with non-string keys).
    #[error("cache `{cache}`: cannot serialize the value of key `{key}` to JSON: {source}")]
    Serialize {
        /// Name of the cache configuration.
        cache: String,
        /// Key without prefix.
        key: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// Bytes read from Redis are not the JSON (or gzip of JSON) of the
    /// cache's value type: another writer stored a different shape under
    /// this prefix, or compression is configured differently than the writer's.
    #[error(
        "cache `{cache}`: the Redis value of key `{key}` is not valid {what}; check that every writer \
         of this prefix uses the same value type and the same `compress` setting"
    )]
    Decode {
        /// Name of the cache configuration.
        cache: String,
        /// Key without prefix.
        key: String,
        /// What was expected, e.g. `"gzip"` or `"JSON for the value type"`.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// The loader passed to `get_or_load` failed and no stale value could be served.
    #[error("cache `{cache}`: the loader for key `{key}` failed: {source}")]
    Load {
        /// Name of the cache configuration.
        cache: String,
        /// Key without prefix.
        key: String,
        /// The loader's error.
        #[source]
        source: BoxError,
    },
    /// A Redis command failed (connection refused, reset, protocol error).
    #[error("cache `{cache}`: Redis {op} failed: {source}")]
    Backend {
        /// Name of the cache configuration.
        cache: String,
        /// The operation, e.g. `"SET"`.
        op: &'static str,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// A Redis command did not answer within the configured `l2_timeout`.
    #[error(
        "cache `{cache}`: Redis {op} did not answer within {after:?} (raise `l2_timeout` or check Redis)"
    )]
    Timeout {
        /// Name of the cache configuration.
        cache: String,
        /// The operation.
        op: &'static str,
        /// The configured timeout.
        after: Duration,
    },
    /// A configuration value is out of range.
    #[error("cache configuration `{cache}`: {message}")]
    Config {
        /// Name of the cache configuration.
        cache: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error shared by every caller that waited on the same load.
#[derive(Debug, Clone)]
pub(crate) struct SharedError(pub(crate) std::sync::Arc<BoxError>);

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&**self.0)
    }
}
