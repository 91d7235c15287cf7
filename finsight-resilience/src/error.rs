//! Errors: the crate's [`Error`] (configuration and parsing) and the leaf
//! error values the breaker, retry and fault injection return.

use std::fmt;
use std::time::Duration;

use crate::breaker::State;

/// A [`tower::BoxError`](https://docs.rs/tower/latest/tower/type.BoxError.html)-compatible
/// boxed error, what the tower services of this crate return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The crate's error for configuration and parsing mistakes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A builder got a value it cannot use; the message names the setting.
    #[error("invalid {setting}: {reason}")]
    InvalidConfig {
        /// The builder setting, e.g. `"failure_rate"`.
        setting: &'static str,
        /// What is wrong and what to use instead.
        reason: String,
    },
    /// An HTTP `Retry-After` value that is neither delta-seconds nor an HTTP-date.
    #[error(
        "invalid Retry-After value {value:?}: expected delta-seconds (\"120\") or an HTTP-date (\"Wed, 21 Oct 2015 07:28:00 GMT\")"
    )]
    InvalidRetryAfter {
        /// The value as received.
        value: String,
    },
}

impl Error {
    pub(crate) fn config(setting: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidConfig {
            setting,
            reason: reason.into(),
        }
    }
}

/// The breaker rejected a call without running it.
///
/// A plain `Copy` value (no allocation, no formatting until displayed), so
/// rejecting costs a few atomic loads. [`CircuitOpen::retry_after`] says when
/// the breaker will let a probe through. Tower services return it inside a
/// [`BoxError`]; find it with `err.downcast_ref::<CircuitOpen>()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitOpen {
    state: State,
    retry_after: Option<Duration>,
}

impl CircuitOpen {
    pub(crate) fn new(state: State, retry_after: Option<Duration>) -> Self {
        Self { state, retry_after }
    }

    /// The state that rejected the call: [`State::Open`], [`State::HalfOpen`]
    /// (all probe slots taken) or [`State::ForcedOpen`].
    pub fn state(&self) -> State {
        self.state
    }

    /// Time until the breaker lets a probe through. `None` when that is not
    /// known: half-open with every probe slot taken (a probe is running), or
    /// forced open (only [`CircuitBreaker::reset`](crate::CircuitBreaker::reset)
    /// or a force call changes it).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.state, self.retry_after) {
            (State::ForcedOpen, _) => f.write_str(
                "circuit breaker is forced open; call reset() or force_closed() to let calls through",
            ),
            (State::HalfOpen, _) => f.write_str(
                "circuit breaker is half-open and every probe slot is taken; retry when the probes finish",
            ),
            (_, Some(d)) => write!(
                f,
                "circuit breaker is open; next probe allowed in {:.3} s",
                d.as_secs_f64()
            ),
            (_, None) => f.write_str("circuit breaker is open"),
        }
    }
}

impl std::error::Error for CircuitOpen {}

/// The error of [`CircuitBreaker::call`](crate::CircuitBreaker::call): the
/// breaker rejected the call, or the call ran and failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakerError<E> {
    /// Rejected without running the operation.
    Open(CircuitOpen),
    /// The operation ran and returned this error.
    Inner(E),
}

impl<E> BreakerError<E> {
    /// The operation's error, or `None` for a rejection.
    pub fn into_inner(self) -> Option<E> {
        match self {
            Self::Inner(e) => Some(e),
            Self::Open(_) => None,
        }
    }

    /// The rejection, if this is one.
    pub fn as_open(&self) -> Option<&CircuitOpen> {
        match self {
            Self::Open(o) => Some(o),
            Self::Inner(_) => None,
        }
    }
}

impl<E: fmt::Display> fmt::Display for BreakerError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Open(o) => o.fmt(f),
            Self::Inner(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for BreakerError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Open(o) => Some(o),
            Self::Inner(e) => Some(e),
        }
    }
}

/// Why a retry loop stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// The classifier said the outcome is final (not retryable).
    NotRetryable,
    /// `max_attempts` attempts were made.
    AttemptsExhausted,
    /// The next wait would end after the overall deadline.
    Deadline,
    /// The shared retry budget had no retry left.
    BudgetExhausted,
    /// The retry-after hint exceeded `max_retry_after` (waiting less would
    /// undercut the server's hint, so retry gives up instead).
    RetryAfterTooLong,
    /// The breaker was open and the policy is to give up, or its probe time is
    /// past the deadline, or too many rejections were waited out.
    CircuitOpen,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotRetryable => "not retryable",
            Self::AttemptsExhausted => "attempts exhausted",
            Self::Deadline => "next attempt would pass the deadline",
            Self::BudgetExhausted => "retry budget exhausted",
            Self::RetryAfterTooLong => "retry-after hint longer than max_retry_after",
            Self::CircuitOpen => "circuit breaker open",
        })
    }
}

/// The error of [`Retry::run`](crate::Retry::run).
#[derive(Debug)]
#[non_exhaustive]
pub enum RetryError<E> {
    /// The last attempt's error, and why no further attempt was made.
    Failed {
        /// The last attempt's error.
        error: E,
        /// Attempts made (operation calls, including the first).
        attempts: u32,
        /// Why retrying stopped.
        reason: StopReason,
    },
    /// The overall deadline passed while an attempt was running; that attempt
    /// was dropped (cancelled).
    DeadlineExceeded {
        /// Attempts started, including the cancelled one.
        attempts: u32,
    },
}

impl<E> RetryError<E> {
    /// The last attempt's error, if there is one.
    pub fn into_inner(self) -> Option<E> {
        match self {
            Self::Failed { error, .. } => Some(error),
            Self::DeadlineExceeded { .. } => None,
        }
    }

    /// Attempts made.
    pub fn attempts(&self) -> u32 {
        match self {
            Self::Failed { attempts, .. } | Self::DeadlineExceeded { attempts } => *attempts,
        }
    }
}

impl<E: fmt::Display> fmt::Display for RetryError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Failed {
                error,
                attempts,
                reason,
            } => write!(f, "{error} (after {attempts} attempt(s); {reason})"),
            Self::DeadlineExceeded { attempts } => write!(
                f,
                "retry deadline exceeded during attempt {attempts}; raise the deadline or lower per-attempt latency"
            ),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for RetryError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Failed { error, .. } => Some(error),
            Self::DeadlineExceeded { .. } => None,
        }
    }
}

/// The overall retry deadline passed while an attempt was running (the tower
/// retry service's leaf error, inside a [`BoxError`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeadlineExceeded;

impl fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("retry deadline exceeded while an attempt was running")
    }
}

impl std::error::Error for DeadlineExceeded {}
