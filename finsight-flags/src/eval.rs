//! The evaluator (SPEC §1.2) and the engine that holds the current flag set.

use arc_swap::ArcSwap;
use serde::Serialize;
use serde_json::Value;
use std::fmt;
use std::sync::Arc;

use crate::bucket::{bucket_of_digest, digest, pick_variant};
use crate::clock::{Clock, SystemClock};
use crate::context::{EvaluationContext, Unit};
use crate::error::{Error, FlagError};
use crate::exposure::{ExposureBuffer, ExposureEvent};
use crate::flagset::{CompiledFlag, CompiledRule, FlagSet, Pool, millis};
use crate::memo::BucketMemo;
use crate::model::{FlagStatus, FlagType, Operator, RuleType};
use crate::sticky::{Assignment, OwnedStickyKey, StickyKey, StickyStore};

/// Why an evaluation returned its value. [`Reason::as_str`] gives the exact
/// strings of SPEC §1.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// Step 1: no flag with this key: the caller's default.
    FlagNotFound,
    /// Step 2: the flag is not active: the caller's default. `flag_status_<status>`.
    FlagStatus(FlagStatus),
    /// Step 3: `expires_at` ≤ now: the caller's default.
    FlagExpired,
    /// Step 4: the kill switch is on: the caller's default.
    KillSwitchActive,
    /// Step 5: the context's environment has an override: the override.
    EnvironmentOverride,
    /// Step 6: the tenant is not in `tenant_restrictions`: the caller's default.
    TenantRestricted,
    /// Step 7: the tier is missing or not in `subscription_tier_requirements`.
    SubscriptionTierNotEligible,
    /// Step 8: a prerequisite did not evaluate to `true`: the caller's default.
    PrerequisiteFailed,
    /// Step 9: rules exist and none matched: the flag's default value.
    TargetingNotMatched,
    /// Boolean flag, unit outside the rollout: the flag's default value.
    RolloutPercentageNotReached,
    /// Boolean or operational flag served `true`.
    Enabled,
    /// Percentage flag: `bucket < rollout_percentage`.
    PercentageEvaluation,
    /// Multivariate flag without variants: the flag's default value.
    NoVariantsDefined,
    /// Multivariate flag whose weights sum to 0: the flag's default value.
    ZeroTotalWeight,
    /// Multivariate flag: the selected variant's value.
    VariantSelected,
    /// Multivariate flag: no variant covers the bucket: the flag's default value.
    VariantFallback,
    /// A bucket was needed but the context has neither user nor tenant id:
    /// the flag's default value.
    MissingBucketingKey,
    /// Targeting flag: a rule matched, `true`.
    TargetingMatched,
    /// Targeting flag without rules: the flag's default value.
    NoTargetingRules,
    /// A typed accessor found a value of another type: the caller's default.
    TypeMismatch,
}

impl Reason {
    /// The reason string, e.g. `"flag_status_archived"`, `"variant_selected"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::FlagNotFound => "flag_not_found",
            Self::FlagStatus(FlagStatus::Draft) => "flag_status_draft",
            Self::FlagStatus(FlagStatus::Active) => "flag_status_active",
            Self::FlagStatus(FlagStatus::Completed) => "flag_status_completed",
            Self::FlagStatus(FlagStatus::Archived) => "flag_status_archived",
            Self::FlagStatus(FlagStatus::Deprecated) => "flag_status_deprecated",
            Self::FlagExpired => "flag_expired",
            Self::KillSwitchActive => "kill_switch_active",
            Self::EnvironmentOverride => "environment_override",
            Self::TenantRestricted => "tenant_restricted",
            Self::SubscriptionTierNotEligible => "subscription_tier_not_eligible",
            Self::PrerequisiteFailed => "prerequisite_failed",
            Self::TargetingNotMatched => "targeting_not_matched",
            Self::RolloutPercentageNotReached => "rollout_percentage_not_reached",
            Self::Enabled => "enabled",
            Self::PercentageEvaluation => "percentage_evaluation",
            Self::NoVariantsDefined => "no_variants_defined",
            Self::ZeroTotalWeight => "zero_total_weight",
            Self::VariantSelected => "variant_selected",
            Self::VariantFallback => "variant_fallback",
            Self::MissingBucketingKey => "missing_bucketing_key",
            Self::TargetingMatched => "targeting_matched",
            Self::NoTargetingRules => "no_targeting_rules",
            Self::TypeMismatch => "type_mismatch",
        }
    }
}

impl Reason {
    /// Whether this reason serves the caller's default (steps 1–4 and 6–8 of
    /// SPEC §1.2, and [`Reason::TypeMismatch`]) rather than a value of the flag.
    pub const fn is_caller_default(self) -> bool {
        matches!(
            self,
            Self::FlagNotFound
                | Self::FlagStatus(_)
                | Self::FlagExpired
                | Self::KillSwitchActive
                | Self::TenantRestricted
                | Self::SubscriptionTierNotEligible
                | Self::PrerequisiteFailed
                | Self::TypeMismatch
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The result of an evaluation with its detail (SPEC §1.2).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Evaluation<T> {
    /// The flag key evaluated.
    pub flag_key: String,
    /// The value served.
    pub value: T,
    /// The variant id (multivariate flags), shared with the flag set.
    pub variant: Option<Arc<str>>,
    /// Why.
    pub reason: Reason,
    /// Whether targeting let the unit through (environment override, or step 10 reached).
    pub targeting_matched: bool,
    /// The bucket (`0..=99`) used, when one was computed.
    pub bucket: Option<u8>,
}

/// The outcome of one targeting rule, in [`Explanation::rules`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RuleOutcome {
    /// Position in `targeting_rules`.
    pub index: usize,
    /// The rule type.
    pub rule_type: RuleType,
    /// The operator.
    pub operator: Operator,
    /// The custom attribute, for `custom_attribute` rules.
    pub attribute: Option<String>,
    /// The context value compared (`None`: missing, so the rule cannot match).
    pub context_value: Option<String>,
    /// Whether the rule matched.
    pub matched: bool,
    /// The unit's bucket when the rule has a `percentage` gate.
    pub bucket: Option<u8>,
}

/// The outcome of one prerequisite, in [`Explanation::prerequisites`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PrerequisiteOutcome {
    /// The prerequisite flag key.
    pub flag_key: String,
    /// What it evaluated to.
    pub value: Value,
    /// Why.
    pub reason: Reason,
}

/// An evaluation with every step's outcome: what [`FlagEngine::explain`] returns.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Explanation {
    /// The evaluation itself (as [`FlagEngine::evaluate`]).
    pub evaluation: Evaluation<Value>,
    /// Each prerequisite checked, in order (stops at the first failure).
    pub prerequisites: Vec<PrerequisiteOutcome>,
    /// Each targeting rule, in order; all rules are reported, also after a match.
    pub rules: Vec<RuleOutcome>,
    /// Whether a sticky assignment was served instead of the computed bucket.
    pub sticky_hit: bool,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Resolved<'a> {
    CallerDefault,
    Bool(bool),
    Json(&'a Value),
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Resolution<'a> {
    pub(crate) value: Resolved<'a>,
    pub(crate) variant: Option<&'a Arc<str>>,
    pub(crate) reason: Reason,
    pub(crate) targeting_matched: bool,
    pub(crate) bucket: Option<u8>,
}

impl<'a> Resolution<'a> {
    const fn caller_default(reason: Reason) -> Self {
        Self {
            value: Resolved::CallerDefault,
            variant: None,
            reason,
            targeting_matched: false,
            bucket: None,
        }
    }

    fn json(value: &'a Value, reason: Reason, bucket: Option<u8>) -> Self {
        Self {
            value: Resolved::Json(value),
            variant: None,
            reason,
            targeting_matched: true,
            bucket,
        }
    }

    fn boolean(value: bool, reason: Reason, bucket: Option<u8>) -> Self {
        Self {
            value: Resolved::Bool(value),
            variant: None,
            reason,
            targeting_matched: true,
            bucket,
        }
    }

    fn to_value(self, default: Value) -> Value {
        match self.value {
            Resolved::CallerDefault => default,
            Resolved::Bool(b) => Value::Bool(b),
            Resolved::Json(v) => v.clone(),
        }
    }
}

#[derive(Default)]
struct Trace {
    prerequisites: Vec<PrerequisiteOutcome>,
    rules: Vec<RuleOutcome>,
    sticky_hit: bool,
}

/// What evaluation reads besides the flags: clock and sticky store.
struct Env<'e> {
    clock: &'e dyn Clock,
    sticky: Option<&'e dyn StickyStore>,
    memo: Option<&'e BucketMemo>,
}

impl Env<'_> {
    #[inline]
    fn digest(&self, flag: &Arc<str>, unit: Unit<'_>) -> [u8; 16] {
        match self.memo {
            Some(m) => m.digest(flag, unit),
            None => digest(flag, unit),
        }
    }
}

/// Max prerequisite depth (cycles are rejected at load; this only bounds
/// the stack for very deep chains).
const MAX_DEPTH: u8 = 32;

fn resolve<'a>(
    set: &'a FlagSet,
    flag: &'a CompiledFlag,
    ctx: &EvaluationContext,
    env: &Env<'_>,
    mut trace: Option<&mut Trace>,
    depth: u8,
) -> Resolution<'a> {
    let pool = set.pool();
    // 2. status
    if flag.status != FlagStatus::Active {
        return Resolution::caller_default(Reason::FlagStatus(flag.status));
    }
    // 3. expiry (the clock is read only for flags that expire)
    if let Some(exp) = flag.expires_at_ms
        && exp <= millis(env.clock.now())
    {
        return Resolution::caller_default(Reason::FlagExpired);
    }
    // 4. kill switch
    if flag.kill_switch {
        return Resolution::caller_default(Reason::KillSwitchActive);
    }
    // 5. environment override
    if !flag.environment_overrides.is_empty()
        && let Some(v) = flag.environment_overrides.get(ctx.environment_or_default())
    {
        return Resolution::json(v, Reason::EnvironmentOverride, None);
    }
    // 6. tenant restrictions
    if !flag.tenant_restrictions.is_empty() {
        let ok = ctx
            .tenant_id
            .as_deref()
            .is_some_and(|t| pool.strs(flag.tenant_restrictions).any(|x| x == t));
        if !ok {
            return Resolution::caller_default(Reason::TenantRestricted);
        }
    }
    // 7. tier requirements (a missing tier is not eligible)
    if !flag.subscription_tier_requirements.is_empty() {
        let ok = ctx.subscription_tier.as_deref().is_some_and(|t| {
            pool.strs(flag.subscription_tier_requirements)
                .any(|x| x == t)
        });
        if !ok {
            return Resolution::caller_default(Reason::SubscriptionTierNotEligible);
        }
    }
    // 8. prerequisites must evaluate to `true` (spans are checked for
    // emptiness before slicing the pool: most flags have none)
    let prerequisites = if flag.prerequisites.is_empty() {
        &[][..]
    } else {
        pool.prereqs(flag.prerequisites)
    };
    for &p in prerequisites {
        let Some(pf) = set.by_index(p) else {
            return Resolution::caller_default(Reason::PrerequisiteFailed);
        };
        let r = if depth >= MAX_DEPTH {
            Resolution::caller_default(Reason::PrerequisiteFailed)
        } else {
            resolve(set, pf, ctx, env, None, depth + 1)
        };
        let is_true = match r.value {
            Resolved::Bool(b) => b,
            Resolved::Json(v) => v.as_bool() == Some(true),
            Resolved::CallerDefault => false,
        };
        if let Some(t) = trace.as_deref_mut() {
            t.prerequisites.push(PrerequisiteOutcome {
                flag_key: pf.key.to_string(),
                value: r.to_value(Value::Null),
                reason: r.reason,
            });
        }
        if !is_true {
            return Resolution::caller_default(Reason::PrerequisiteFailed);
        }
    }
    // 9. targeting rules: any rule matching lets the unit through
    if !flag.rules.is_empty() {
        let rules = pool.rules(flag.rules);
        let mut matched = false;
        for (i, rule) in rules.iter().enumerate() {
            if let Some(t) = trace.as_deref_mut() {
                let (m, bucket) = rule_matches(pool, rule, flag, ctx);
                let attribute = rule.attribute.as_deref();
                t.rules.push(RuleOutcome {
                    index: i,
                    rule_type: rule.rule_type,
                    operator: rule.operator,
                    attribute: attribute.map(str::to_owned),
                    context_value: ctx
                        .attribute(rule.rule_type, attribute)
                        .map(|c| c.into_owned()),
                    matched: m,
                    bucket,
                });
                matched |= m;
            } else if rule_matches(pool, rule, flag, ctx).0 {
                matched = true;
                break;
            }
        }
        if !matched {
            let mut r = Resolution::json(&flag.default_value, Reason::TargetingNotMatched, None);
            r.targeting_matched = false;
            return r;
        }
    }
    // 10. by type
    let sticky = if flag.sticky_bucketing {
        env.sticky
    } else {
        None
    };
    match flag.flag_type {
        FlagType::Boolean => {
            // Fully rolled out: on, without a bucket, unless a sticky flag
            // may hold a stored `out` (SPEC §1.4: a stored assignment
            // outlives rollout changes), which only the store can tell.
            if flag.rollout >= 100 && sticky.is_none() {
                return Resolution::boolean(true, Reason::Enabled, None);
            }
            let Some(unit) = ctx.unit() else {
                if flag.rollout >= 100 {
                    return Resolution::boolean(true, Reason::Enabled, None);
                }
                return Resolution::json(&flag.default_value, Reason::MissingBucketingKey, None);
            };
            let (inside, bucket) = rollout(flag, unit, env, sticky, trace.as_deref_mut());
            if inside {
                Resolution::boolean(true, Reason::Enabled, Some(bucket))
            } else {
                Resolution::json(
                    &flag.default_value,
                    Reason::RolloutPercentageNotReached,
                    Some(bucket),
                )
            }
        }
        FlagType::Percentage => {
            let Some(unit) = ctx.unit() else {
                return Resolution::json(&flag.default_value, Reason::MissingBucketingKey, None);
            };
            let (inside, bucket) = rollout(flag, unit, env, sticky, trace.as_deref_mut());
            Resolution::boolean(inside, Reason::PercentageEvaluation, Some(bucket))
        }
        FlagType::Multivariate => {
            let variants = pool.variants(flag.variants);
            if variants.is_empty() {
                return Resolution::json(&flag.default_value, Reason::NoVariantsDefined, None);
            }
            if flag.total_weight <= 0.0 {
                return Resolution::json(&flag.default_value, Reason::ZeroTotalWeight, None);
            }
            let Some(unit) = ctx.unit() else {
                return Resolution::json(&flag.default_value, Reason::MissingBucketingKey, None);
            };
            let d = env.digest(&flag.key, unit);
            let bucket = bucket_of_digest(&d);
            let key = StickyKey {
                flag_key: &flag.key,
                unit,
                digest: d,
            };
            // `Some(None)`: an assignment is stored but no longer fits the
            // flag (its variant was removed, or the flag changed type).
            let stored = sticky.and_then(|s| {
                s.get(&key).map(|a| match a {
                    Assignment::Variant(id) => variants.iter().position(|v| *v.id == *id),
                    Assignment::Rollout(_) => None,
                })
            });
            let index = match stored {
                Some(Some(i)) => {
                    if let Some(t) = trace {
                        t.sticky_hit = true;
                    }
                    Some(i)
                }
                _ => {
                    let i =
                        pick_variant(bucket, variants.iter().map(|v| v.weight), flag.total_weight);
                    if let (Some(s), Some(i)) = (sticky, i)
                        && let Some(v) = variants.get(i)
                    {
                        record(s, &key, Assignment::Variant(v.id.clone()), stored.is_some());
                    }
                    i
                }
            };
            match index.and_then(|i| variants.get(i)) {
                Some(v) => Resolution {
                    value: Resolved::Json(&v.value),
                    variant: Some(&v.id),
                    reason: Reason::VariantSelected,
                    targeting_matched: true,
                    bucket: Some(bucket),
                },
                None => {
                    Resolution::json(&flag.default_value, Reason::VariantFallback, Some(bucket))
                }
            }
        }
        FlagType::Targeting => {
            if flag.rules.is_empty() {
                Resolution::json(&flag.default_value, Reason::NoTargetingRules, None)
            } else {
                Resolution::boolean(true, Reason::TargetingMatched, None)
            }
        }
        FlagType::Operational => Resolution::boolean(true, Reason::Enabled, None),
    }
}

/// Stores a first assignment, or replaces a `stale` one that no longer fits
/// the flag. Out of line: a warm evaluation finds its assignment stored.
#[inline(never)]
fn record(store: &dyn StickyStore, key: &StickyKey<'_>, assignment: Assignment, stale: bool) {
    if stale {
        store.replace(key, assignment);
    } else {
        store.put(key, assignment);
    }
}

/// In or out of the rollout, honouring a sticky assignment.
fn rollout(
    flag: &CompiledFlag,
    unit: Unit<'_>,
    env: &Env<'_>,
    sticky: Option<&dyn StickyStore>,
    trace: Option<&mut Trace>,
) -> (bool, u8) {
    let d = env.digest(&flag.key, unit);
    let bucket = bucket_of_digest(&d);
    let computed = bucket < flag.rollout;
    if let Some(s) = sticky {
        let key = StickyKey {
            flag_key: &flag.key,
            unit,
            digest: d,
        };
        match s.get(&key) {
            Some(Assignment::Rollout(stored)) => {
                if let Some(t) = trace {
                    t.sticky_hit = true;
                }
                return (stored, bucket);
            }
            // A variant stored while the flag was multivariate is stale.
            stored => record(s, &key, Assignment::Rollout(computed), stored.is_some()),
        }
    }
    (computed, bucket)
}

fn rule_matches(
    pool: &Pool,
    rule: &CompiledRule,
    flag: &CompiledFlag,
    ctx: &EvaluationContext,
) -> (bool, Option<u8>) {
    let Some(v) = ctx.attribute(rule.rule_type, rule.attribute.as_deref()) else {
        return (false, None);
    };
    if !rule.matcher.matches(pool, &v) {
        return (false, None);
    }
    match rule.percentage {
        None => (true, None),
        Some(p) => match ctx.unit() {
            Some(unit) => {
                let b = crate::bucket::bucket(&flag.key, unit);
                (b < p, Some(b))
            }
            None => (false, None),
        },
    }
}

/// The flag engine: holds the current [`FlagSet`] and evaluates flags.
///
/// Cloning is cheap (an `Arc`); clones share the flags, the clock, the sticky
/// store and the exposure buffer. Evaluation is synchronous and never does
/// I/O: it loads the current set through `arc-swap` (no lock, no
/// allocation), computes at most one md5 (none when the unit's digest is in
/// the bounded bucket memo, see [`FlagEngineBuilder::bucket_memo`]), reads
/// the clock only for flags with `expires_at`. A boolean evaluation through
/// [`FlagEngine::bool_value`] does not allocate (tested with a counting
/// allocator) unless the flag tracks exposure.
///
/// What is and is not lock-free:
/// * Readers never wait on a reload. Replacing the set
///   ([`FlagEngine::replace`], the file and Redis sources) is one atomic
///   pointer swap; evaluations in flight finish on the old set.
/// * The bucket memo and the [`MemoryStickyStore`](crate::MemoryStickyStore)
///   (also the local copy of the Redis store) are `quick_cache` caches:
///   sharded read-write locks, each held only for one lookup or insert (a
///   hit takes a shard's read lock; a miss, or a first sticky assignment,
///   briefly takes its write lock). Evaluations on different shards never
///   contend, and no lock is ever held across I/O or across an evaluation.
///   Turning the memo off ([`FlagEngineBuilder::bucket_memo`]`(0)`) and the
///   sticky store off ([`FlagEngineBuilder::no_sticky_store`]) leaves an
///   evaluation with no lock at all, at the cost of one md5 per bucket.
#[derive(Clone)]
pub struct FlagEngine {
    inner: Arc<Inner>,
}

struct Inner {
    flags: ArcSwap<FlagSet>,
    clock: Arc<dyn Clock>,
    sticky: Option<Arc<dyn StickyStore>>,
    exposure: Option<ExposureBuffer>,
    memo: Option<BucketMemo>,
}

impl fmt::Debug for FlagEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlagEngine")
            .field("flags", &self.inner.flags.load().len())
            .field("clock", &self.inner.clock)
            .field("sticky", &self.inner.sticky)
            .field("exposure", &self.inner.exposure.is_some())
            .finish()
    }
}

/// Builds a [`FlagEngine`].
#[derive(Debug)]
#[must_use = "call .build() to get the engine"]
pub struct FlagEngineBuilder {
    flags: FlagSet,
    clock: Arc<dyn Clock>,
    sticky: Option<Arc<dyn StickyStore>>,
    exposure: Option<ExposureBuffer>,
    memo: usize,
}

impl FlagEngineBuilder {
    /// The initial flags (default: none).
    pub fn flags(mut self, flags: FlagSet) -> Self {
        self.flags = flags;
        self
    }

    /// The clock expiry is checked against (default [`SystemClock`]).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The sticky store (default: a [`MemoryStickyStore`](crate::MemoryStickyStore)
    /// of 100,000 assignments).
    pub fn sticky_store(mut self, store: impl StickyStore) -> Self {
        self.sticky = Some(Arc::new(store));
        self
    }

    /// Turns sticky assignments off: flags with `sticky_bucketing` are then
    /// evaluated from the bucket alone.
    pub fn no_sticky_store(mut self) -> Self {
        self.sticky = None;
        self
    }

    /// Sends exposure events of flags with `track_exposure` to this buffer.
    pub fn exposure(mut self, buffer: ExposureBuffer) -> Self {
        self.exposure = Some(buffer);
        self
    }

    /// How many bucketing digests to memoize (default 50,000; 0 turns the
    /// memo off). A warm evaluation then skips md5: the memo maps
    /// (flag key, unit) to its digest, a pure function, so entries never go
    /// stale. Each entry costs about 80 bytes plus the id's length.
    pub fn bucket_memo(mut self, capacity: usize) -> Self {
        self.memo = capacity;
        self
    }

    /// The engine.
    pub fn build(self) -> FlagEngine {
        FlagEngine {
            inner: Arc::new(Inner {
                flags: ArcSwap::from_pointee(self.flags),
                clock: self.clock,
                sticky: self.sticky,
                exposure: self.exposure,
                memo: (self.memo > 0).then(|| BucketMemo::new(self.memo)),
            }),
        }
    }
}

macro_rules! typed {
    ($(#[$doc:meta])* $value:ident, $detail:ident, $t:ty, $arg:ty, $conv_default:expr, $from_json:expr, $from_bool:expr) => {
        $(#[$doc])*
        pub fn $value(&self, key: &str, ctx: &EvaluationContext, default: $arg) -> $t {
            let guard = self.inner.flags.load();
            let (r, flag) = self.resolve_top(&guard, key, ctx);
            let out: Option<$t> = match r.value {
                Resolved::CallerDefault => None,
                Resolved::Bool(b) => ($from_bool)(b),
                Resolved::Json(v) => ($from_json)(v),
            };
            let mismatch = out.is_none() && !matches!(r.value, Resolved::CallerDefault);
            if let Some(f) = flag {
                if f.track_exposure {
                    self.expose_typed(f, ctx, &r, out.is_some(), mismatch, Value::from(default));
                }
            }
            out.unwrap_or_else(|| ($conv_default)(default))
        }

        /// As the value accessor of the same type, with the evaluation detail
        /// (allocates the key, and the value for strings and JSON).
        pub fn $detail(&self, key: &str, ctx: &EvaluationContext, default: $arg) -> Evaluation<$t> {
            let guard = self.inner.flags.load();
            let (r, flag) = self.resolve_top(&guard, key, ctx);
            let out: Option<$t> = match r.value {
                Resolved::CallerDefault => None,
                Resolved::Bool(b) => ($from_bool)(b),
                Resolved::Json(v) => ($from_json)(v),
            };
            let mismatch = out.is_none() && !matches!(r.value, Resolved::CallerDefault);
            let reason = if mismatch { Reason::TypeMismatch } else { r.reason };
            if let Some(f) = flag {
                if f.track_exposure {
                    self.expose_typed(f, ctx, &r, out.is_some(), mismatch, Value::from(default));
                }
            }
            Evaluation {
                flag_key: key.to_owned(),
                value: out.unwrap_or_else(|| ($conv_default)(default)),
                variant: if mismatch { None } else { r.variant.cloned() },
                reason,
                targeting_matched: r.targeting_matched,
                bucket: r.bucket,
            }
        }
    };
}

impl FlagEngine {
    /// An engine serving `flags`, with the system clock, an in-memory sticky
    /// store of 100,000 assignments and no exposure buffer.
    pub fn new(flags: FlagSet) -> Self {
        Self::builder().flags(flags).build()
    }

    /// A builder (clock, sticky store, exposure buffer).
    pub fn builder() -> FlagEngineBuilder {
        FlagEngineBuilder {
            flags: FlagSet::empty(),
            clock: Arc::new(SystemClock),
            sticky: Some(Arc::new(crate::sticky::MemoryStickyStore::default())),
            exposure: None,
            memo: 50_000,
        }
    }

    /// The current flag set (an `Arc` clone; the set is immutable).
    pub fn flags(&self) -> Arc<FlagSet> {
        self.inner.flags.load_full()
    }

    /// Replaces the flag set atomically. Evaluations in flight finish on the
    /// old set; readers never wait.
    pub fn replace(&self, flags: FlagSet) {
        tracing::info!(flags = flags.len(), "finsight-flags: flag set replaced");
        self.inner.flags.store(Arc::new(flags));
    }

    /// Parses and validates `json` (see [`FlagSet::from_json_keeping`]) and
    /// swaps in the result: the good flags, with the last good definition of
    /// any flag rejected now. Returns the rejected flags' errors.
    ///
    /// # Errors
    /// [`Error::Document`] when the text is not a flag document; the current
    /// set is kept.
    pub fn load_json(&self, json: &str) -> Result<Vec<FlagError>, Error> {
        let current = self.inner.flags.load();
        let report = FlagSet::from_json_keeping(json, &current)?;
        for e in &report.errors {
            tracing::warn!(error = %e, "finsight-flags: flag rejected at load");
        }
        self.replace(report.set);
        Ok(report.errors)
    }

    /// The sticky store, if any.
    pub fn sticky_store(&self) -> Option<&Arc<dyn StickyStore>> {
        self.inner.sticky.as_ref()
    }

    /// The exposure buffer, if any (for its [`stats`](ExposureBuffer::stats)).
    pub fn exposure_buffer(&self) -> Option<&ExposureBuffer> {
        self.inner.exposure.as_ref()
    }

    /// Loads the stored assignments of `ctx`'s unit for every sticky flag
    /// into the sticky store's local copy (one round trip for a remote store,
    /// nothing for the in-memory one). Call it when a request starts, before
    /// evaluating; evaluation itself never waits on the store. Returns how
    /// many assignments were found. Costs one allocation per sticky flag
    /// (its key) plus the store's round trip.
    ///
    /// # Errors
    /// The store's error (for the Redis store: Redis unreachable, slow or
    /// failing), which the store also counts (e.g.
    /// `redis::StickyStats::preload_failures`). This is a setup call, not an
    /// evaluation: it reports the failure so that the caller can log it or
    /// alert, but nothing depends on handling it. SPEC §1.4's "a store
    /// failure is never an error to the caller" is about evaluation, and it
    /// holds: after a failed preload, evaluations serve the computed buckets
    /// (and still record first assignments), so `let _ =
    /// engine.preload(&ctx).await;` is a correct way to call it.
    pub async fn preload(&self, ctx: &EvaluationContext) -> Result<usize, Error> {
        let (Some(store), Some(unit)) = (self.inner.sticky.as_ref(), ctx.unit()) else {
            return Ok(0);
        };
        let flags = self.flags();
        let keys: Vec<OwnedStickyKey> = flags
            .compiled_flags()
            .iter()
            .filter(|f| f.sticky_bucketing)
            .map(|f| OwnedStickyKey {
                flag_key: f.key.to_string(),
                kind: unit.kind(),
                id: unit.id().to_owned(),
                digest: digest(&f.key, unit),
            })
            .collect();
        if keys.is_empty() {
            return Ok(0);
        }
        store.preload(keys).await
    }

    fn env(&self) -> Env<'_> {
        Env {
            clock: &*self.inner.clock,
            sticky: self.inner.sticky.as_deref(),
            memo: self.inner.memo.as_ref(),
        }
    }

    // Tiny and on every evaluation's path: always inlined (as a separate
    // call it costs a tenth of a warm evaluation).
    #[inline(always)]
    fn resolve_top<'a>(
        &self,
        set: &'a FlagSet,
        key: &str,
        ctx: &EvaluationContext,
    ) -> (Resolution<'a>, Option<&'a CompiledFlag>) {
        match set.compiled(key) {
            None => (Resolution::caller_default(Reason::FlagNotFound), None),
            Some(f) => (resolve(set, f, ctx, &self.env(), None, 0), Some(f)),
        }
    }

    fn expose(
        &self,
        flag: &CompiledFlag,
        ctx: &EvaluationContext,
        value: Value,
        variant: Option<&Arc<str>>,
        reason: Reason,
    ) {
        let Some(buf) = &self.inner.exposure else {
            return;
        };
        buf.offer(ExposureEvent {
            flag_key: flag.key.to_string(),
            value,
            variant: variant.map(|v| v.to_string()),
            reason,
            user_id: ctx.user_id.clone(),
            tenant_id: ctx.tenant_id.clone(),
            subscription_tier: ctx.subscription_tier.clone(),
            environment: ctx.environment_or_default().to_owned(),
            timestamp: self.inner.clock.now(),
        });
    }

    /// The exposure event of a typed accessor: what the caller was served.
    /// When the flag's value was not served (caller's default, or a type
    /// mismatch), that is the caller's default and no variant. Out of line:
    /// only flags that track exposure get here.
    #[inline(never)]
    fn expose_typed(
        &self,
        flag: &CompiledFlag,
        ctx: &EvaluationContext,
        r: &Resolution<'_>,
        served_flag_value: bool,
        mismatch: bool,
        default: Value,
    ) {
        if served_flag_value {
            self.expose(flag, ctx, r.to_value(Value::Null), r.variant, r.reason);
        } else {
            let reason = if mismatch {
                Reason::TypeMismatch
            } else {
                r.reason
            };
            self.expose(flag, ctx, default, None, reason);
        }
    }

    /// `bool_value(key, ctx, false)`: whether the flag is on for `ctx`.
    /// No allocation.
    pub fn is_enabled(&self, key: &str, ctx: &EvaluationContext) -> bool {
        self.bool_value(key, ctx, false)
    }

    typed!(
        /// The flag's value as a boolean, or `default` (the flag is unknown,
        /// inactive, killed, restricted, or its value is not a boolean:
        /// `type_mismatch`). No allocation.
        bool_value, bool_detail, bool, bool,
        |d: bool| d,
        |v: &Value| v.as_bool(),
        |b: bool| Some(b)
    );

    typed!(
        /// The flag's value as a string, or `default` (also when the value is
        /// not a JSON string: `type_mismatch`). Allocates the returned string.
        string_value, string_detail, String, &str,
        |d: &str| d.to_owned(),
        |v: &Value| v.as_str().map(str::to_owned),
        |_b: bool| None
    );

    typed!(
        /// The flag's value as a number, or `default` (also when the value is
        /// not a JSON number: `type_mismatch`). No allocation.
        number_value, number_detail, f64, f64,
        |d: f64| d,
        |v: &Value| v.as_f64(),
        |_b: bool| None
    );

    /// The variant id a multivariate flag serves `ctx` (`None` when no
    /// variant is served: unknown or inactive flag, targeting not matched, no
    /// bucketing key, …). The id is shared with the flag set: no allocation
    /// unless the flag tracks exposure.
    pub fn variant(&self, key: &str, ctx: &EvaluationContext) -> Option<Arc<str>> {
        let guard = self.inner.flags.load();
        let (r, flag) = self.resolve_top(&guard, key, ctx);
        if let Some(f) = flag
            && f.track_exposure
        {
            self.expose(f, ctx, r.to_value(Value::Null), r.variant, r.reason);
        }
        r.variant.cloned()
    }

    /// The flag's value as JSON (any type), or `default`. Clones the value.
    pub fn json_value(&self, key: &str, ctx: &EvaluationContext, default: Value) -> Value {
        self.evaluate(key, ctx, default).value
    }

    /// Evaluates `key` for `ctx` with the full detail, the value as JSON
    /// (any type, so never `type_mismatch`). `default` is the caller's
    /// default of SPEC §1.2. This is the call other components (experiments,
    /// the OpenFeature provider) build on.
    pub fn evaluate(
        &self,
        key: &str,
        ctx: &EvaluationContext,
        default: Value,
    ) -> Evaluation<Value> {
        let guard = self.inner.flags.load();
        let (r, flag) = self.resolve_top(&guard, key, ctx);
        let value = r.to_value(default);
        if let Some(f) = flag
            && f.track_exposure
        {
            self.expose(f, ctx, value.clone(), r.variant, r.reason);
        }
        Evaluation {
            flag_key: key.to_owned(),
            value,
            variant: r.variant.cloned(),
            reason: r.reason,
            targeting_matched: r.targeting_matched,
            bucket: r.bucket,
        }
    }

    /// As [`FlagEngine::evaluate`], plus every prerequisite's and every
    /// targeting rule's outcome. Allocates the trace; sends no exposure
    /// event (it is a diagnostic) but does record a first sticky assignment.
    pub fn explain(&self, key: &str, ctx: &EvaluationContext, default: Value) -> Explanation {
        let guard = self.inner.flags.load();
        let mut trace = Trace::default();
        let r = match guard.compiled(key) {
            None => Resolution::caller_default(Reason::FlagNotFound),
            Some(f) => resolve(&guard, f, ctx, &self.env(), Some(&mut trace), 0),
        };
        Explanation {
            evaluation: Evaluation {
                flag_key: key.to_owned(),
                value: r.to_value(default),
                variant: r.variant.cloned(),
                reason: r.reason,
                targeting_matched: r.targeting_matched,
                bucket: r.bucket,
            },
            prerequisites: trace.prerequisites,
            rules: trace.rules,
            sticky_hit: trace.sticky_hit,
        }
    }
}
