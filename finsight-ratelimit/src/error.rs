//! The crate's error type.

use std::time::Duration;

/// Boxed source error of a backend failure (Redis I/O, protocol, script).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong when configuring or running a limiter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A quota or rule is not usable as written; the message names the field.
    #[error("invalid rate-limit configuration{}: {reason}", rule.as_ref().map(|r| format!(" in rule `{r}`")).unwrap_or_default())]
    Config {
        /// The rule the problem is in, if any.
        rule: Option<String>,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A request costs more than the rule can ever admit (cost > limit + burst),
    /// so waiting would never help.
    #[error(
        "cost {cost} exceeds the capacity {capacity} of rule `{rule}`: raise the rule's limit or burst, or lower the cost"
    )]
    InsufficientCapacity {
        /// The rule that can never admit the request.
        rule: String,
        /// The request's cost for that rule.
        cost: u64,
        /// The rule's limit + burst.
        capacity: u64,
    },
    /// The in-memory store holds its maximum number of keys and none is idle.
    #[error(
        "rate-limit store for `{rule}` is full ({max_keys} active keys); raise `max_keys` or shorten the windows"
    )]
    StoreFull {
        /// The rule whose store is full.
        rule: String,
        /// The configured bound.
        max_keys: usize,
    },
    /// The shared backend failed and the failure policy is to report it.
    #[error("rate-limit backend failed: {source}")]
    Backend {
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// The shared backend did not answer within the configured timeout.
    #[error("rate-limit backend did not answer within {0:?}")]
    Timeout(Duration),
}

impl Error {
    pub(crate) fn config(rule: Option<&str>, reason: impl Into<String>) -> Self {
        Self::Config {
            rule: rule.map(str::to_owned),
            reason: reason.into(),
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
