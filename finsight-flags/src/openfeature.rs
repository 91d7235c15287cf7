//! An [OpenFeature](https://openfeature.dev) provider (feature `openfeature`):
//! plug this engine into the `open-feature` 0.3 SDK.
//!
//! ```
//! # async fn demo(engine: finsight_flags::FlagEngine) {
//! use finsight_flags::openfeature::FinSightProvider;
//! use open_feature::{EvaluationContext, OpenFeature};
//!
//! let mut api = OpenFeature::singleton_mut().await;
//! api.set_provider(FinSightProvider::new(engine)).await;
//! let client = api.create_client();
//! drop(api);
//! let ctx = EvaluationContext::default()
//!     .with_targeting_key("user-123")
//!     .with_custom_field("subscription_tier", "pro");
//! let on = client.get_bool_value("new-dashboard", Some(&ctx), None).await.unwrap_or(false);
//! # let _ = on; }
//! ```
//!
//! # Mapping
//!
//! * Context: `targeting_key` is the user id. Custom fields named like the
//!   context's fields (`user_id`, `tenant_id`, `user_role`,
//!   `subscription_tier`, `geographic_region`, `user_segment`,
//!   `device_type`, `environment`) fill them; every other field is a custom
//!   attribute (date-times as RFC 3339 text; struct fields are skipped).
//! * Outcomes that serve the caller's default in SPEC §1.2 (flag not found,
//!   inactive, expired, kill switch, tenant or tier restriction, failed
//!   prerequisite) are errors, so the OpenFeature client returns the
//!   caller's default: `FLAG_NOT_FOUND` for an unknown flag, `GENERAL` with
//!   the FinSight reason (`kill_switch_active`, …) as the message otherwise.
//!   A value of another type is `TYPE_MISMATCH`.
//! * Reasons: `SPLIT` when a bucket chose the value, `TARGETING_MATCH` when
//!   targeting let the unit through without a bucket, `DEFAULT` when the
//!   flag's own default was served. The FinSight reason and bucket are in the
//!   flag metadata (`finsight_reason`, `finsight_bucket`).
//!
//! Cost: one engine evaluation (synchronous, no I/O) plus the context
//! conversion (allocates) per call; the SDK itself boxes a future per call.

use open_feature::provider::{
    FeatureProvider, ProviderMetadata, ProviderStatus, ResolutionDetails,
};
use open_feature::{
    EvaluationContext as OfContext, EvaluationContextFieldValue, EvaluationError,
    EvaluationErrorCode, EvaluationReason, EvaluationResult, FlagMetadata, StructValue,
    Value as OfValue,
};
use serde_json::Value;

use crate::context::EvaluationContext;
use crate::eval::{Evaluation, FlagEngine, Reason};

/// The FinSight engine as an OpenFeature provider (see the module docs for
/// the mapping). Cloning is cheap and shares the engine.
#[derive(Debug, Clone)]
pub struct FinSightProvider {
    engine: FlagEngine,
    metadata: ProviderMetadata,
}

impl FinSightProvider {
    /// A provider evaluating through `engine`.
    pub fn new(engine: FlagEngine) -> Self {
        Self {
            engine,
            metadata: ProviderMetadata::new("finsight-flags"),
        }
    }

    /// The engine.
    pub fn engine(&self) -> &FlagEngine {
        &self.engine
    }

    fn resolve<T>(
        &self,
        key: &str,
        ctx: &OfContext,
        convert: impl FnOnce(&Value) -> Option<T>,
    ) -> EvaluationResult<ResolutionDetails<T>> {
        let ctx = to_context(ctx);
        let e = self.engine.evaluate(key, &ctx, Value::Null);
        if e.reason == Reason::FlagNotFound {
            return Err(error(
                EvaluationErrorCode::FlagNotFound,
                format!("no flag `{key}`"),
            ));
        }
        if e.reason.is_caller_default() {
            return Err(error(
                EvaluationErrorCode::General(e.reason.as_str().to_owned()),
                format!("flag `{key}` serves the caller's default: {}", e.reason),
            ));
        }
        let Some(value) = convert(&e.value) else {
            return Err(error(
                EvaluationErrorCode::TypeMismatch,
                format!("flag `{key}` has value {} of another type", e.value),
            ));
        };
        Ok(details(value, &e))
    }
}

fn error(code: EvaluationErrorCode, message: String) -> EvaluationError {
    EvaluationError {
        code,
        message: Some(message),
    }
}

fn details<T>(value: T, e: &Evaluation<Value>) -> ResolutionDetails<T> {
    let reason = if e.bucket.is_some() {
        EvaluationReason::Split
    } else if e.targeting_matched {
        EvaluationReason::TargetingMatch
    } else {
        EvaluationReason::Default
    };
    let mut meta = FlagMetadata::default().with_value("finsight_reason", e.reason.as_str());
    if let Some(b) = e.bucket {
        meta.add_value("finsight_bucket", i64::from(b));
    }
    ResolutionDetails {
        value,
        variant: e.variant.as_deref().map(str::to_owned),
        reason: Some(reason),
        flag_metadata: Some(meta),
    }
}

fn to_context(ctx: &OfContext) -> EvaluationContext {
    let mut out = EvaluationContext {
        user_id: ctx.targeting_key.clone(),
        ..EvaluationContext::default()
    };
    for (name, v) in &ctx.custom_fields {
        let value = match v {
            EvaluationContextFieldValue::Bool(b) => Value::Bool(*b),
            EvaluationContextFieldValue::Int(i) => Value::from(*i),
            EvaluationContextFieldValue::Float(f) => Value::from(*f),
            EvaluationContextFieldValue::String(s) => Value::String(s.clone()),
            EvaluationContextFieldValue::DateTime(t) => {
                match i64::try_from(t.unix_timestamp_nanos()) {
                    Ok(ns) => {
                        Value::String(chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339())
                    }
                    Err(_) => continue,
                }
            }
            EvaluationContextFieldValue::Struct(_) => continue,
        };
        let slot = match name.as_str() {
            "user_id" => &mut out.user_id,
            "tenant_id" => &mut out.tenant_id,
            "user_role" => &mut out.user_role,
            "subscription_tier" => &mut out.subscription_tier,
            "geographic_region" => &mut out.geographic_region,
            "user_segment" => &mut out.user_segment,
            "device_type" => &mut out.device_type,
            "environment" => &mut out.environment,
            _ => {
                out.custom_attributes.insert(name.clone(), value);
                continue;
            }
        };
        *slot = match value {
            Value::String(s) => Some(s),
            other => Some(other.to_string()),
        };
    }
    out
}

fn to_of_value(v: &Value) -> Option<OfValue> {
    Some(match v {
        Value::Null => return None,
        Value::Bool(b) => OfValue::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => OfValue::Int(i),
            None => OfValue::Float(n.as_f64()?),
        },
        Value::String(s) => OfValue::String(s.clone()),
        Value::Array(a) => OfValue::Array(a.iter().filter_map(to_of_value).collect()),
        Value::Object(o) => OfValue::Struct(to_struct(o)),
    })
}

fn to_struct(o: &serde_json::Map<String, Value>) -> StructValue {
    let mut s = StructValue::default();
    for (k, v) in o {
        if let Some(v) = to_of_value(v) {
            s.add_field(k.clone(), v);
        }
    }
    s
}

#[async_trait::async_trait]
impl FeatureProvider for FinSightProvider {
    fn status(&self) -> ProviderStatus {
        ProviderStatus::Ready
    }

    fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }

    async fn resolve_bool_value(
        &self,
        key: &str,
        ctx: &OfContext,
    ) -> EvaluationResult<ResolutionDetails<bool>> {
        self.resolve(key, ctx, Value::as_bool)
    }

    async fn resolve_int_value(
        &self,
        key: &str,
        ctx: &OfContext,
    ) -> EvaluationResult<ResolutionDetails<i64>> {
        self.resolve(key, ctx, Value::as_i64)
    }

    async fn resolve_float_value(
        &self,
        key: &str,
        ctx: &OfContext,
    ) -> EvaluationResult<ResolutionDetails<f64>> {
        self.resolve(key, ctx, Value::as_f64)
    }

    async fn resolve_string_value(
        &self,
        key: &str,
        ctx: &OfContext,
    ) -> EvaluationResult<ResolutionDetails<String>> {
        self.resolve(key, ctx, |v| v.as_str().map(str::to_owned))
    }

    async fn resolve_struct_value(
        &self,
        key: &str,
        ctx: &OfContext,
    ) -> EvaluationResult<ResolutionDetails<StructValue>> {
        self.resolve(key, ctx, |v| v.as_object().map(to_struct))
    }
}
