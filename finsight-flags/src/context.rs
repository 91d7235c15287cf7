//! The evaluation context: who the flag is evaluated for.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::HashMap;

use crate::model::RuleType;

/// The environment a context without [`EvaluationContext::environment`] is in.
pub const DEFAULT_ENVIRONMENT: &str = "production";

/// Who a flag is evaluated for. Every field is optional.
///
/// Build it once per request and pass it by reference: evaluation only
/// borrows it. It deserializes from the Python services' context JSON.
///
/// ```
/// use finsight_flags::EvaluationContext;
/// let ctx = EvaluationContext::new()
///     .user_id("user-123")
///     .tenant_id("acme")
///     .subscription_tier("pro")
///     .custom_attribute("country", "de");
/// assert_eq!(ctx.user_id.as_deref(), Some("user-123"));
/// ```
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct EvaluationContext {
    /// The user; the primary bucketing key.
    pub user_id: Option<String>,
    /// The tenant; the bucketing key when there is no user id.
    pub tenant_id: Option<String>,
    /// The user's role.
    pub user_role: Option<String>,
    /// The subscription tier.
    pub subscription_tier: Option<String>,
    /// The geographic region.
    pub geographic_region: Option<String>,
    /// The user segment.
    pub user_segment: Option<String>,
    /// The device type.
    pub device_type: Option<String>,
    /// Any other attributes, read by `custom_attribute` rules.
    #[serde(deserialize_with = "nullable_map")]
    pub custom_attributes: HashMap<String, Value>,
    /// The environment (`"production"` when unset).
    pub environment: Option<String>,
}

fn nullable_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<HashMap<String, Value>, D::Error> {
    Ok(Option::deserialize(d)?.unwrap_or_default())
}

/// Up to this many custom attributes, a rule finds its attribute by
/// comparing names rather than hashing.
const SCAN_ATTRIBUTES: usize = 8;

/// The unit a bucket is computed for (SPEC §1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit<'a> {
    /// Bucketed by `"<flag_key>:user:<user_id>"`.
    User(&'a str),
    /// Bucketed by `"<flag_key>:tenant:<tenant_id>"` (no user id in the context).
    Tenant(&'a str),
}

impl Unit<'_> {
    /// `"user"` or `"tenant"`, as in the bucketing key.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::User(_) => "user",
            Self::Tenant(_) => "tenant",
        }
    }

    /// The id.
    pub const fn id(&self) -> &str {
        match self {
            Self::User(id) | Self::Tenant(id) => id,
        }
    }
}

macro_rules! setter {
    ($($(#[$doc:meta])* $name:ident),*) => {$(
        $(#[$doc])*
        #[must_use]
        pub fn $name(mut self, value: impl Into<String>) -> Self {
            self.$name = Some(value.into());
            self
        }
    )*};
}

impl EvaluationContext {
    /// An empty context.
    pub fn new() -> Self {
        Self::default()
    }

    setter!(
        /// Sets the user id.
        user_id,
        /// Sets the tenant id.
        tenant_id,
        /// Sets the user role.
        user_role,
        /// Sets the subscription tier.
        subscription_tier,
        /// Sets the geographic region.
        geographic_region,
        /// Sets the user segment.
        user_segment,
        /// Sets the device type.
        device_type,
        /// Sets the environment.
        environment
    );

    /// Sets a custom attribute.
    #[must_use]
    pub fn custom_attribute(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.custom_attributes.insert(name.into(), value.into());
        self
    }

    /// The environment, `"production"` when unset.
    pub fn environment_or_default(&self) -> &str {
        self.environment.as_deref().unwrap_or(DEFAULT_ENVIRONMENT)
    }

    /// The bucketing unit: the user id, else the tenant id, else none.
    pub fn unit(&self) -> Option<Unit<'_>> {
        match (&self.user_id, &self.tenant_id) {
            (Some(u), _) => Some(Unit::User(u)),
            (None, Some(t)) => Some(Unit::Tenant(t)),
            (None, None) => None,
        }
    }

    /// The value a rule of `rule_type` compares, as a string. Custom
    /// attributes that are not strings are rendered as Python's `str()` would
    /// (only then does this allocate); `null` counts as missing.
    pub(crate) fn attribute(
        &self,
        rule_type: RuleType,
        name: Option<&str>,
    ) -> Option<Cow<'_, str>> {
        let field = match rule_type {
            RuleType::UserId => &self.user_id,
            RuleType::TenantId => &self.tenant_id,
            RuleType::UserRole => &self.user_role,
            RuleType::SubscriptionTier => &self.subscription_tier,
            RuleType::GeographicRegion => &self.geographic_region,
            RuleType::UserSegment => &self.user_segment,
            RuleType::DeviceType => &self.device_type,
            RuleType::CustomAttribute => {
                let name = name?;
                // A context has a handful of custom attributes: comparing
                // their names is cheaper than SipHash (the map's hasher).
                let value = if self.custom_attributes.len() <= SCAN_ATTRIBUTES {
                    self.custom_attributes
                        .iter()
                        .find_map(|(k, v)| (k == name).then_some(v))
                } else {
                    self.custom_attributes.get(name)
                };
                return match value? {
                    Value::Null => None,
                    Value::String(s) => Some(Cow::Borrowed(s)),
                    Value::Bool(true) => Some(Cow::Borrowed("True")),
                    Value::Bool(false) => Some(Cow::Borrowed("False")),
                    Value::Number(n) => Some(Cow::Owned(n.to_string())),
                    other => Some(Cow::Owned(other.to_string())),
                };
            }
        };
        field.as_deref().map(Cow::Borrowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_attributes_are_found_by_scan_and_by_hash() {
        for n in [0, 1, SCAN_ATTRIBUTES, SCAN_ATTRIBUTES + 1, 40] {
            let mut ctx = EvaluationContext::new();
            for i in 0..n {
                ctx = ctx.custom_attribute(format!("attr{i}"), i);
            }
            for i in 0..n {
                let got = ctx.attribute(RuleType::CustomAttribute, Some(&format!("attr{i}")));
                assert_eq!(
                    got.as_deref(),
                    Some(i.to_string().as_str()),
                    "{n} attributes"
                );
            }
            assert_eq!(ctx.attribute(RuleType::CustomAttribute, Some("attr")), None);
            assert_eq!(ctx.attribute(RuleType::CustomAttribute, None), None);
        }
    }
}
