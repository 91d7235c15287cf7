//! Rules as data: what is limited, for whom, how much, and what happens over the limit.
//!
//! Rules are plain serde types, so a rule set can live in JSON, YAML or TOML
//! next to the Python services' configuration:
//!
//! ```
//! use finsight_ratelimit::RuleSet;
//! let rules: RuleSet = serde_json::from_str(r#"{
//!   "rules": [
//!     { "id": "user", "scope": "user", "algorithm": "sliding_window_counter",
//!       "limit": 1000, "window": "1m",
//!       "tiers": { "enterprise": { "limit": 10000 } } },
//!     { "id": "analytics", "scope": "user", "algorithm": "leaky_bucket",
//!       "limit": 100, "window": "1h", "cost": 5, "paths": ["/api/v1/analytics/*"],
//!       "action": { "type": "delay", "max_wait": "2s" } }
//!   ],
//!   "costs": { "/api/v1/reports/*": 3 }
//! }"#).unwrap();
//! assert_eq!(rules.rules.len(), 2);
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::algorithm::{Algorithm, Policy, Quota};
use crate::error::{Error, Result};

/// Whose requests a rule counts together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// One counter for all requests.
    Global,
    /// One counter per tenant.
    Tenant,
    /// One counter per user.
    User,
    /// One counter per client IP address (IPv6 keyed by its /64 prefix).
    Ip,
    /// One counter per API key.
    ApiKey,
}

impl Scope {
    /// Name as written in rule files.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Global => "global",
            Scope::Tenant => "tenant",
            Scope::User => "user",
            Scope::Ip => "ip",
            Scope::ApiKey => "api_key",
        }
    }
}

/// Subscription tier, for per-tier quota overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Free tier.
    Free,
    /// Starter tier.
    Starter,
    /// Professional tier.
    Professional,
    /// Business tier.
    Business,
    /// Enterprise tier.
    Enterprise,
}

impl Tier {
    /// All tiers, lowest first.
    pub const ALL: [Tier; 5] = [
        Tier::Free,
        Tier::Starter,
        Tier::Professional,
        Tier::Business,
        Tier::Enterprise,
    ];

    /// Name as written in rule files.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Starter => "starter",
            Tier::Professional => "professional",
            Tier::Business => "business",
            Tier::Enterprise => "enterprise",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// What happens to a request a rule rejects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ThrottleAction {
    /// Reject at once (HTTP 429 with `Retry-After`).
    #[default]
    Reject,
    /// Wait until the request is admitted, at most `max_wait`; reject if the
    /// wait would be longer. Only [`Limiter::acquire`](crate::Limiter::acquire) waits.
    Delay {
        /// Longest wait.
        #[serde(with = "duration_text")]
        max_wait: Duration,
    },
    /// Join a bounded first-in-first-out queue of waiters for the same rule
    /// and key; served in arrival order, each waiting at most `max_wait`.
    /// A full queue rejects at once.
    Queue {
        /// Most waiters per rule and key.
        max_waiters: u32,
        /// Longest wait of one waiter, queueing included.
        #[serde(with = "duration_text")]
        max_wait: Duration,
    },
    /// Let the request through, marked degraded (consumes nothing), so the
    /// service can answer with a cheaper response.
    Degrade,
}

impl ThrottleAction {
    /// Name as written in rule files.
    pub fn as_str(&self) -> &'static str {
        match self {
            ThrottleAction::Reject => "reject",
            ThrottleAction::Delay { .. } => "delay",
            ThrottleAction::Queue { .. } => "queue",
            ThrottleAction::Degrade => "degrade",
        }
    }
}

/// A tier's replacement for some of a rule's numbers; unset fields keep the rule's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierOverride {
    /// Requests per window for this tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Extra burst for this tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

/// One rate-limit rule. See the [module docs](self) for the file format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique id; names the rule in decisions, headers (`RateLimit-Policy`),
    /// metrics and Redis keys. `[A-Za-z0-9_.-]`, at most 64 characters.
    pub id: String,
    /// Whose requests count together.
    pub scope: Scope,
    /// The algorithm.
    pub algorithm: Algorithm,
    /// Requests (cost units) per window.
    pub limit: u64,
    /// The window: seconds as a number, or text such as `"500ms"`, `"60s"`, `"1m"`, `"1h"`, `"1d"`.
    #[serde(with = "duration_text")]
    pub window: Duration,
    /// Extra allowance on top of `limit` (default 0).
    #[serde(default)]
    pub burst: u64,
    /// What happens over the limit (default reject).
    #[serde(default)]
    pub action: ThrottleAction,
    /// Per-tier replacements of `limit`/`burst`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tiers: BTreeMap<Tier, TierOverride>,
    /// Path patterns the rule applies to: exact paths, or a prefix ending in
    /// `*` (`"/api/v1/analytics/*"`). Empty: every path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// HTTP methods the rule applies to (case-insensitive). Empty: every method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Fixed cost of a request under this rule; unset: the rule set's cost table (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<u64>,
    /// Shadow mode for this rule: decide, count and report, never reject.
    #[serde(default)]
    pub shadow: bool,
}

impl Rule {
    /// A rule with `limit` per `window`, rejecting, on every path and method.
    pub fn new(
        id: impl Into<String>,
        scope: Scope,
        algorithm: Algorithm,
        limit: u64,
        window: Duration,
    ) -> Self {
        Self {
            id: id.into(),
            scope,
            algorithm,
            limit,
            window,
            burst: 0,
            action: ThrottleAction::Reject,
            tiers: BTreeMap::new(),
            paths: Vec::new(),
            methods: Vec::new(),
            cost: None,
            shadow: false,
        }
    }

    /// Sets the burst.
    #[must_use]
    pub fn burst(mut self, burst: u64) -> Self {
        self.burst = burst;
        self
    }

    /// Sets the throttle action.
    #[must_use]
    pub fn action(mut self, action: ThrottleAction) -> Self {
        self.action = action;
        self
    }

    /// Adds a tier override.
    #[must_use]
    pub fn tier(mut self, tier: Tier, limit: u64, burst: Option<u64>) -> Self {
        self.tiers.insert(
            tier,
            TierOverride {
                limit: Some(limit),
                burst,
            },
        );
        self
    }

    /// Restricts the rule to a path pattern (exact, or prefix ending in `*`).
    #[must_use]
    pub fn path(mut self, pattern: impl Into<String>) -> Self {
        self.paths.push(pattern.into());
        self
    }

    /// Restricts the rule to an HTTP method.
    #[must_use]
    pub fn method(mut self, method: impl Into<String>) -> Self {
        self.methods.push(method.into());
        self
    }

    /// Sets a fixed cost per request for this rule.
    #[must_use]
    pub fn cost(mut self, cost: u64) -> Self {
        self.cost = Some(cost);
        self
    }

    /// Sets shadow mode for this rule.
    #[must_use]
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }

    /// The quota for `tier` (the rule's own numbers when the tier has no override).
    pub fn quota(&self, tier: Option<Tier>) -> Quota {
        let o = tier
            .and_then(|t| self.tiers.get(&t))
            .copied()
            .unwrap_or_default();
        Quota {
            algorithm: self.algorithm,
            limit: o.limit.unwrap_or(self.limit),
            window: self.window,
            burst: o.burst.unwrap_or(self.burst),
        }
    }

    /// Whether the rule applies to `method` and `path`. Cost: a scan of the patterns.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m.eq_ignore_ascii_case(method)))
            && (self.paths.is_empty() || self.paths.iter().any(|p| pattern_matches(p, path)))
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let id = Some(self.id.as_str());
        if self.id.is_empty()
            || self.id.len() > 64
            || !self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return Err(Error::config(
                id,
                "rule ids are 1..=64 characters of [A-Za-z0-9_.-] (they appear in headers and Redis keys)",
            ));
        }
        for p in &self.paths {
            if !p.starts_with('/') || p[..p.len().saturating_sub(1)].contains('*') {
                return Err(Error::config(
                    id,
                    format!("path pattern `{p}` must start with `/` and may only end in `*`"),
                ));
            }
        }
        if self.cost == Some(0) {
            return Err(Error::config(id, "cost must be at least 1"));
        }
        if matches!(self.action, ThrottleAction::Queue { max_waiters: 0, .. }) {
            return Err(Error::config(id, "queue action needs max_waiters >= 1"));
        }
        let check = |q: Quota| -> Result<()> {
            let p = Policy::named(q, id)?;
            if let Some(c) = self.cost
                && c > p.capacity()
            {
                return Err(Error::config(
                    id,
                    format!(
                        "cost {c} exceeds limit + burst {} (the request could never pass)",
                        p.capacity()
                    ),
                ));
            }
            Ok(())
        };
        check(self.quota(None))?;
        for t in self.tiers.keys() {
            check(self.quota(Some(*t)))?;
        }
        Ok(())
    }
}

/// `pattern` is an exact path or a prefix ending in `*`.
pub(crate) fn pattern_matches(pattern: &str, path: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => pattern == path,
    }
}

/// Per-endpoint request costs: exact paths or prefixes ending in `*`; the
/// longest matching pattern wins (an exact match beats any prefix); unmatched
/// paths cost [`CostTable::default_cost`] (1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CostTable {
    exact: BTreeMap<String, u64>,
    /// Prefixes, longest first.
    prefixes: Vec<(String, u64)>,
    default_cost: u64,
}

impl CostTable {
    /// An empty table (every path costs 1).
    pub fn new() -> Self {
        Self {
            default_cost: 1,
            ..Self::default()
        }
    }

    /// Adds `pattern` → `cost`.
    #[must_use]
    pub fn with(mut self, pattern: impl Into<String>, cost: u64) -> Self {
        self.insert(pattern.into(), cost);
        self
    }

    fn insert(&mut self, pattern: String, cost: u64) {
        match pattern.strip_suffix('*') {
            Some(prefix) => {
                let prefix = prefix.to_owned();
                self.prefixes.retain(|(p, _)| *p != prefix);
                self.prefixes.push((prefix, cost));
                self.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
            }
            None => {
                self.exact.insert(pattern, cost);
            }
        }
    }

    /// The cost of a request to `path`. Cost: one map lookup plus a prefix scan.
    pub fn cost(&self, path: &str) -> u64 {
        if let Some(c) = self.exact.get(path) {
            return *c;
        }
        self.prefixes
            .iter()
            .find(|(p, _)| path.starts_with(p.as_str()))
            .map_or(self.default_cost.max(1), |(_, c)| *c)
    }

    /// Cost of paths no pattern matches (1 unless set).
    pub fn default_cost(&self) -> u64 {
        self.default_cost.max(1)
    }

    fn patterns(&self) -> BTreeMap<String, u64> {
        let mut m = self.exact.clone();
        for (p, c) in &self.prefixes {
            m.insert(format!("{p}*"), *c);
        }
        m
    }
}

impl Serialize for CostTable {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.patterns().serialize(s)
    }
}

impl<'de> Deserialize<'de> for CostTable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = BTreeMap::<String, u64>::deserialize(d)?;
        let mut t = CostTable::new();
        for (p, c) in m {
            if c == 0 {
                return Err(serde::de::Error::custom(format!(
                    "cost of `{p}` must be at least 1"
                )));
            }
            t.insert(p, c);
        }
        Ok(t)
    }
}

/// Rules plus the per-endpoint cost table: everything a limiter enforces.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSet {
    /// The rules, all evaluated for every request they match.
    pub rules: Vec<Rule>,
    /// Request costs per endpoint (rules with their own `cost` ignore it).
    #[serde(default)]
    pub costs: CostTable,
}

impl RuleSet {
    /// A rule set of `rules` with every request costing 1.
    pub fn new(rules: Vec<Rule>) -> Self {
        Self {
            rules,
            costs: CostTable::new(),
        }
    }

    /// Sets the cost table.
    #[must_use]
    pub fn costs(mut self, costs: CostTable) -> Self {
        self.costs = costs;
        self
    }

    /// The Python services' six default rules (SPEC §4):
    ///
    /// | id | scope | quota | algorithm | other |
    /// |---|---|---|---|---|
    /// | `global` | global | 100 000 / min | sliding-window counter | |
    /// | `tenant` | tenant | 10 000 / min | token bucket | |
    /// | `user` | user | 1 000 / min | sliding-window counter | |
    /// | `ip` | IP | 500 / min | sliding-window counter | (algorithm not stated by the services) |
    /// | `api_key` | API key | 5 000 / min | token bucket | |
    /// | `analytics` | user | 100 / h | leaky bucket | cost 5, paths `/api/v1/analytics*` |
    ///
    /// "Sliding window" is the counter variant: an exact log of 100 000
    /// entries per key would cost ~1.6 MB of state.
    pub fn python_defaults() -> Self {
        let min = Duration::from_secs(60);
        Self::new(vec![
            Rule::new(
                "global",
                Scope::Global,
                Algorithm::SlidingWindowCounter,
                100_000,
                min,
            ),
            Rule::new("tenant", Scope::Tenant, Algorithm::TokenBucket, 10_000, min),
            Rule::new(
                "user",
                Scope::User,
                Algorithm::SlidingWindowCounter,
                1_000,
                min,
            ),
            Rule::new("ip", Scope::Ip, Algorithm::SlidingWindowCounter, 500, min),
            Rule::new("api_key", Scope::ApiKey, Algorithm::TokenBucket, 5_000, min),
            Rule::new(
                "analytics",
                Scope::User,
                Algorithm::LeakyBucket,
                100,
                Duration::from_secs(3600),
            )
            .cost(5)
            .path("/api/v1/analytics*"),
        ])
    }

    /// Checks every rule: ids unique and well-formed, quotas valid for every
    /// tier, patterns well-formed, fixed costs within capacity.
    ///
    /// # Errors
    /// [`Error::Config`] naming the rule and the field.
    pub fn validate(&self) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for r in &self.rules {
            r.validate()?;
            if !seen.insert(r.id.as_str()) {
                return Err(Error::config(Some(&r.id), "duplicate rule id"));
            }
        }
        for (p, _) in self.costs.patterns() {
            if !p.starts_with('/') || p[..p.len().saturating_sub(1)].contains('*') {
                return Err(Error::config(
                    None,
                    format!("cost pattern `{p}` must start with `/` and may only end in `*`"),
                ));
            }
        }
        Ok(())
    }
}

/// The key material stored for a scope value: the first 16 hex characters of
/// SHA-256 of the raw value (as 8 bytes), so raw API keys, user ids and
/// addresses never reach memory dumps or Redis. Cost: one SHA-256 of the value.
pub fn key_material(raw: &str) -> KeyId {
    let d = Sha256::digest(raw.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    KeyId(u64::from_be_bytes(b))
}

/// A hashed scope key: 64 bits of SHA-256, shown as 16 hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub(crate) u64);

impl KeyId {
    /// The key of the global scope.
    pub const GLOBAL: KeyId = KeyId(0);
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// `Duration` as seconds (number) or text with a unit (`ms`, `s`, `m`, `h`, `d`).
pub(crate) mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        let ms = d.as_millis();
        let text = if ms.is_multiple_of(86_400_000) && ms > 0 {
            format!("{}d", ms / 86_400_000)
        } else if ms.is_multiple_of(3_600_000) && ms > 0 {
            format!("{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) && ms > 0 {
            format!("{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            format!("{}s", ms / 1000)
        } else {
            format!("{ms}ms")
        };
        s.serialize_str(&text)
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }

    pub(crate) fn parse(text: &str) -> Option<Duration> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().ok()?;
        let ms = match unit.trim() {
            "ms" => 1,
            "" | "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return None,
        };
        Some(Duration::from_millis(n.checked_mul(ms)?))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(Duration::from_secs(s)),
            Raw::Text(t) => parse(&t).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "duration `{t}`: write a whole number with ms, s, m, h or d (e.g. \"60s\")"
                ))
            }),
        }
    }
}
