//! Decision counters by rule, tier and outcome, plus near-limit counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::rule::Tier;

/// Per-rule outcome index in the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RuleOutcome {
    /// The rule admitted the request (and it was not rejected by another rule).
    Allowed,
    /// The rule rejected the request.
    Rejected,
    /// The rule was over its limit and its action degraded the request.
    Degraded,
    /// The rule would have rejected but is in shadow mode.
    ShadowRejected,
    /// The rule admitted, but another rule rejected, so nothing was consumed.
    NotCharged,
}

impl RuleOutcome {
    const ALL: [RuleOutcome; 5] = [
        RuleOutcome::Allowed,
        RuleOutcome::Rejected,
        RuleOutcome::Degraded,
        RuleOutcome::ShadowRejected,
        RuleOutcome::NotCharged,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleOutcome::Allowed => "allowed",
            RuleOutcome::Rejected => "rejected",
            RuleOutcome::Degraded => "degraded",
            RuleOutcome::ShadowRejected => "shadow_rejected",
            RuleOutcome::NotCharged => "not_charged",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters of one rule: 6 tiers (none + 5) × 5 outcomes, plus near-limit.
/// Lock-free (relaxed atomic adds); 31 × 8 bytes per rule.
#[derive(Debug, Default)]
pub(crate) struct RuleMetrics {
    counts: [[AtomicU64; 5]; 6],
    near_limit: AtomicU64,
}

impl RuleMetrics {
    pub(crate) fn record(&self, tier: Option<Tier>, outcome: RuleOutcome, near_limit: bool) {
        let t = tier.map_or(0, |t| t.index() + 1);
        self.counts[t][outcome.index()].fetch_add(1, Ordering::Relaxed);
        if near_limit {
            self.near_limit.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One counter row of a [`MetricsSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricRow {
    /// Rule id.
    pub rule: Arc<str>,
    /// Tier of the requests (`None`: no tier given).
    pub tier: Option<Tier>,
    /// Outcome for this rule.
    pub outcome: RuleOutcome,
    /// Number of decisions.
    pub count: u64,
}

/// A point-in-time copy of the limiter's counters (non-zero rows only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Decisions by rule, tier and outcome.
    pub decisions: Vec<MetricRow>,
    /// Per rule: admitted decisions that left at most `1 - near_limit_ratio`
    /// of the quota (default ratio 0.8, i.e. ≤ 20% left).
    pub near_limit: Vec<(Arc<str>, u64)>,
}

impl MetricsSnapshot {
    /// Sum of the counts for `rule` and `outcome` over all tiers.
    pub fn count(&self, rule: &str, outcome: RuleOutcome) -> u64 {
        self.decisions
            .iter()
            .filter(|r| &*r.rule == rule && r.outcome == outcome)
            .map(|r| r.count)
            .sum()
    }

    /// Near-limit count of `rule`.
    pub fn near_limit(&self, rule: &str) -> u64 {
        self.near_limit
            .iter()
            .find(|(r, _)| &**r == rule)
            .map_or(0, |(_, n)| *n)
    }
}

pub(crate) fn snapshot<'a>(
    rules: impl Iterator<Item = (&'a Arc<str>, &'a RuleMetrics)>,
) -> MetricsSnapshot {
    let mut s = MetricsSnapshot::default();
    for (id, m) in rules {
        for (ti, row) in m.counts.iter().enumerate() {
            for o in RuleOutcome::ALL {
                let count = row[o.index()].load(Ordering::Relaxed);
                if count > 0 {
                    s.decisions.push(MetricRow {
                        rule: id.clone(),
                        tier: ti.checked_sub(1).map(|i| Tier::ALL[i]),
                        outcome: o,
                        count,
                    });
                }
            }
        }
        s.near_limit
            .push((id.clone(), m.near_limit.load(Ordering::Relaxed)));
    }
    s
}
