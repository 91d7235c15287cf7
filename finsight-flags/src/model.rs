//! The flag definition in the JSON format of the Python services (SPEC §1.1).

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// What kind of value a flag serves and how step 10 of the evaluation picks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FlagType {
    /// `true` for users inside `rollout_percentage` (all users at 100),
    /// otherwise the flag's `default_value`.
    #[default]
    Boolean,
    /// `bucket < rollout_percentage`, as a JSON boolean.
    Percentage,
    /// One of `variants`, chosen by weight from the user's bucket.
    Multivariate,
    /// `true` for users matching at least one targeting rule (no rollout); a
    /// targeting flag without rules serves its `default_value` with reason
    /// `no_targeting_rules`.
    Targeting,
    /// An operational switch: `true` while active and not killed, reason
    /// `enabled`; no bucketing and no rollout.
    Operational,
}

/// Lifecycle status of a flag. Only [`FlagStatus::Active`] flags are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FlagStatus {
    /// Not yet live: reason `flag_status_draft`.
    Draft,
    /// Served. A definition without `status` is active.
    #[default]
    Active,
    /// Done: reason `flag_status_completed`.
    Completed,
    /// Retired: reason `flag_status_archived`.
    Archived,
    /// Scheduled for removal: reason `flag_status_deprecated`.
    Deprecated,
}

impl FlagStatus {
    /// The status as written in JSON, e.g. `"archived"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Active => "active",
            Self::Completed => "completed",
            Self::Archived => "archived",
            Self::Deprecated => "deprecated",
        }
    }
}

/// Which context attribute a targeting rule reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RuleType {
    /// `context.user_id`.
    UserId,
    /// `context.tenant_id`.
    TenantId,
    /// `context.user_role`.
    UserRole,
    /// `context.subscription_tier`.
    SubscriptionTier,
    /// `context.geographic_region`.
    GeographicRegion,
    /// `context.user_segment`.
    UserSegment,
    /// `context.device_type`.
    DeviceType,
    /// `context.custom_attributes[rule.attribute]` (a fix: the Python services
    /// never matched it). Non-string values compare as Python's `str()` would
    /// print them (`42`, `1.5`, `True`).
    CustomAttribute,
}

impl RuleType {
    /// The rule type as written in JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::UserId => "user_id",
            Self::TenantId => "tenant_id",
            Self::UserRole => "user_role",
            Self::SubscriptionTier => "subscription_tier",
            Self::GeographicRegion => "geographic_region",
            Self::UserSegment => "user_segment",
            Self::DeviceType => "device_type",
            Self::CustomAttribute => "custom_attribute",
        }
    }
}

/// How a rule compares the context value with the rule's `values`.
///
/// A missing context value never matches, for every operator (also the
/// negative ones). For the positive operators the rule matches when *any*
/// value satisfies it; `not_equals` / `not_in` match when the context value is
/// none of the values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Operator {
    /// Value ∈ values.
    Equals,
    /// Value ∈ values.
    In,
    /// Value ∉ values.
    NotEquals,
    /// Value ∉ values.
    NotIn,
    /// Some value is a substring of the context value.
    Contains,
    /// The context value starts with some value.
    StartsWith,
    /// The context value ends with some value.
    EndsWith,
    /// Some pattern matches at the start of the context value (Python
    /// `re.match`: anchored at the start, not at the end). Compiled at load.
    RegexMatch,
    /// Numeric: context value < some value (both parsed as numbers).
    Lt,
    /// Numeric: context value ≤ some value.
    Lte,
    /// Numeric: context value > some value.
    Gt,
    /// Numeric: context value ≥ some value.
    Gte,
    /// Semantic version equal to some value (`1.2.3`, `v` prefix allowed).
    SemverEq,
    /// Semantic version lower than some value.
    SemverLt,
    /// Semantic version lower than or equal to some value.
    SemverLte,
    /// Semantic version greater than some value.
    SemverGt,
    /// Semantic version greater than or equal to some value.
    SemverGte,
    /// Date (RFC 3339, or a date `YYYY-MM-DD` meaning midnight UTC) strictly
    /// before some value.
    Before,
    /// Date strictly after some value.
    After,
}

impl Operator {
    /// The operator as written in JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Equals => "equals",
            Self::In => "in",
            Self::NotEquals => "not_equals",
            Self::NotIn => "not_in",
            Self::Contains => "contains",
            Self::StartsWith => "starts_with",
            Self::EndsWith => "ends_with",
            Self::RegexMatch => "regex_match",
            Self::Lt => "lt",
            Self::Lte => "lte",
            Self::Gt => "gt",
            Self::Gte => "gte",
            Self::SemverEq => "semver_eq",
            Self::SemverLt => "semver_lt",
            Self::SemverLte => "semver_lte",
            Self::SemverGt => "semver_gt",
            Self::SemverGte => "semver_gte",
            Self::Before => "before",
            Self::After => "after",
        }
    }
}

/// One variant of a multivariate flag.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Variant {
    /// Variant id, returned as the evaluation's `variant`.
    #[serde(deserialize_with = "nullable")]
    pub id: String,
    /// Display name.
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    /// The value served to users in this variant.
    pub value: Value,
    /// Free text.
    #[serde(deserialize_with = "nullable")]
    pub description: String,
    /// Relative weight, `0..=100`.
    pub weight: f64,
    /// Whether this is the control variant (informational).
    #[serde(deserialize_with = "nullable")]
    pub is_control: bool,
}

/// One targeting rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TargetingRule {
    /// The context attribute the rule reads.
    pub rule_type: RuleType,
    /// The comparison.
    pub operator: Operator,
    /// The values compared with. JSON numbers and booleans are accepted and
    /// read as their text.
    #[serde(default, deserialize_with = "string_list")]
    pub values: Vec<String>,
    /// The custom attribute name, for `rule_type: custom_attribute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribute: Option<String>,
    /// When set, the rule also requires `bucket < percentage` (the user's
    /// bucket for this flag, SPEC §1.3); a context without a bucketing key
    /// then never matches the rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<i64>,
}

impl TargetingRule {
    /// A rule comparing `rule_type`'s attribute with `values`.
    pub fn new(
        rule_type: RuleType,
        operator: Operator,
        values: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            rule_type,
            operator,
            values: values.into_iter().map(Into::into).collect(),
            attribute: None,
            percentage: None,
        }
    }

    /// Sets the custom attribute name (for [`RuleType::CustomAttribute`]).
    #[must_use]
    pub fn attribute(mut self, name: impl Into<String>) -> Self {
        self.attribute = Some(name.into());
        self
    }
}

/// A flag definition: one row of the Python services' flag table, in their
/// snake_case JSON (SPEC §1.1).
///
/// Unknown fields are ignored; missing (or `null`) optional fields take
/// empty / `false` / `null`. Deserializing checks types only; the semantic
/// checks (ranges, regexes, prerequisites) happen when a
/// [`FlagSet`](crate::FlagSet) is built.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct FlagDefinition {
    /// Row id (informational).
    #[serde(deserialize_with = "nullable")]
    pub id: String,
    /// The key flags are evaluated by. Required, non-empty, unique in a set.
    #[serde(deserialize_with = "nullable")]
    pub key: String,
    /// Display name.
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    /// Free text.
    #[serde(deserialize_with = "nullable")]
    pub description: String,
    /// How the value is chosen.
    #[serde(deserialize_with = "nullable")]
    pub flag_type: FlagType,
    /// Lifecycle status.
    #[serde(deserialize_with = "nullable")]
    pub status: FlagStatus,
    /// The flag's own default value (served when targeting does not match).
    pub default_value: Value,
    /// Variants of a multivariate flag.
    #[serde(deserialize_with = "nullable")]
    pub variants: Vec<Variant>,
    /// Targeting rules; the flag is targeted when any rule matches.
    #[serde(deserialize_with = "nullable")]
    pub targeting_rules: Vec<TargetingRule>,
    /// Rollout percentage, `0..=100`.
    #[serde(deserialize_with = "nullable")]
    pub rollout_percentage: i64,
    /// Keep a unit's first assignment (SPEC §1.4).
    #[serde(deserialize_with = "nullable")]
    pub sticky_bucketing: bool,
    /// Serve the caller's default to everyone, before anything else but status and expiry.
    #[serde(deserialize_with = "nullable")]
    pub kill_switch: bool,
    /// Value per environment name (`"production"` when the context names none).
    #[serde(deserialize_with = "nullable")]
    pub environment_overrides: BTreeMap<String, Value>,
    /// Informational (kept for the Python services).
    #[serde(deserialize_with = "nullable")]
    pub track_events: bool,
    /// Send an exposure event for each evaluation of this flag.
    #[serde(deserialize_with = "nullable")]
    pub track_exposure: bool,
    /// Keys of flags that must evaluate to `true` for this one to be served.
    #[serde(deserialize_with = "nullable")]
    pub prerequisites: Vec<String>,
    /// Free tags.
    #[serde(deserialize_with = "nullable")]
    pub tags: Vec<String>,
    /// Owning team.
    pub owner: Option<String>,
    /// Creation time as stored (informational).
    pub created_at: Option<String>,
    /// Update time as stored (informational).
    pub updated_at: Option<String>,
    /// RFC 3339 time from which the flag serves the caller's default with
    /// reason `flag_expired` (a naive `YYYY-MM-DDTHH:MM:SS` is read as UTC).
    pub expires_at: Option<String>,
    /// When non-empty, only these tenants are served.
    #[serde(deserialize_with = "nullable")]
    pub tenant_restrictions: Vec<String>,
    /// When non-empty, only these subscription tiers are served (a missing
    /// tier is not eligible).
    #[serde(deserialize_with = "nullable")]
    pub subscription_tier_requirements: Vec<String>,
}

impl FlagDefinition {
    /// An active flag of `flag_type` with everything else empty: rollout 0,
    /// default value `null`. Adjust the public fields, then build a
    /// [`FlagSet`](crate::FlagSet).
    pub fn new(key: impl Into<String>, flag_type: FlagType) -> Self {
        let key = key.into();
        Self {
            id: key.clone(),
            name: key.clone(),
            key,
            flag_type,
            ..Self::default()
        }
    }
}

/// `null` → `T::default()`.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A rule value: a string, or a number or boolean read as its text
/// (Python's `str()`: `42`, `1.5`, `True`).
pub(crate) struct RuleValue(pub(crate) String);

impl<'de> Deserialize<'de> for RuleValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RuleValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string, number or boolean rule value")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RuleValue, E> {
                Ok(RuleValue(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<RuleValue, E> {
                Ok(RuleValue(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RuleValue, E> {
                Ok(RuleValue(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RuleValue, E> {
                Ok(RuleValue(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<RuleValue, E> {
                Ok(RuleValue(
                    serde_json::Number::from_f64(v)
                        .map_or_else(|| v.to_string(), |n| n.to_string()),
                ))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<RuleValue, E> {
                Ok(RuleValue(if v { "True" } else { "False" }.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A list of [`RuleValue`]s (`null`: empty).
fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<RuleValue>>::deserialize(d)?
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.0)
        .collect())
}
