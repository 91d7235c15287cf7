//! What a check answers.

use std::sync::Arc;
use std::time::Duration;

use crate::rule::{KeyId, ThrottleAction, Tier};

/// The overall outcome of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// Admitted; the cost was consumed from every applicable rule.
    Allowed,
    /// Rejected; nothing was consumed from any rule.
    Rejected,
    /// Over a limit whose action is `degrade`: let through, marked, nothing consumed.
    Degraded,
}

impl Outcome {
    /// `"allowed"`, `"rejected"` or `"degraded"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Rejected => "rejected",
            Outcome::Degraded => "degraded",
        }
    }
}

/// One rule's part of a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleReport {
    /// The rule id.
    pub rule: Arc<str>,
    /// The hashed scope key the rule counted under.
    pub key: KeyId,
    /// Whether this rule alone would admit the request.
    pub allowed: bool,
    /// Whether the rule is in shadow mode (never rejects).
    pub shadow: bool,
    /// The cost charged (or that would have been) under this rule.
    pub cost: u64,
    /// `limit + burst` for the request's tier.
    pub quota: u64,
    /// The rule's window.
    pub window: Duration,
    /// What is left under this rule after the decision.
    pub remaining: u64,
    /// Time until this rule's key is back to full capacity.
    pub reset: Duration,
    /// When this rule rejects: time until it would admit the request.
    pub retry_after: Option<Duration>,
    /// The rule's throttle action.
    pub action: ThrottleAction,
}

/// The answer of a [`Limiter`](crate::Limiter) check.
///
/// All-or-nothing: when [`outcome`](Self::outcome) is `Allowed` the cost was
/// consumed from every applicable rule, otherwise from none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allowed, rejected or degraded.
    pub outcome: Outcome,
    /// The rule that decided: the rejecting rule with the longest wait, or
    /// when admitted the rule with the least remaining. `None` when no rule applied.
    pub rule: Option<Arc<str>>,
    /// The deciding rule's action (`Reject` when no rule applied).
    pub action: ThrottleAction,
    /// The real remaining count: the least any applicable rule has left.
    pub remaining: u64,
    /// The deciding rule's `limit + burst` (0 when no rule applied).
    pub quota: u64,
    /// The deciding rule's window.
    pub window: Duration,
    /// Time until the deciding rule's key is back to full capacity.
    pub reset: Duration,
    /// When rejected: the wait after which the request would be admitted
    /// (at least 1 µs; in headers rounded up to whole seconds, at least 1).
    pub retry_after: Option<Duration>,
    /// Whether a shadow-mode rule (or the limiter in shadow mode) would have
    /// rejected this request; the outcome does not reflect it.
    pub shadow_rejected: bool,
    /// Whether the shared backend failed and the failure policy decided.
    pub fallback: bool,
    /// The tier the quotas were taken from.
    pub tier: Option<Tier>,
    /// Every applicable rule's report, in rule order.
    pub rules: Vec<RuleReport>,
}

impl Decision {
    /// Whether the request may proceed (allowed or degraded).
    pub fn is_allowed(&self) -> bool {
        self.outcome != Outcome::Rejected
    }

    /// `retry_after` in whole seconds, rounded up and never 0 (for `Retry-After`).
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after.map(ceil_secs)
    }
}

/// Whole seconds, rounded up, at least 1.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// Whole seconds, rounded up (0 stays 0).
pub(crate) fn ceil_secs0(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}
