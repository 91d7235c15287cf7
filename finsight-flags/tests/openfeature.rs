//! The OpenFeature provider, through the `open-feature` 0.3 SDK's client and
//! through the provider trait directly.
#![cfg(feature = "openfeature")]

use finsight_flags::openfeature::FinSightProvider;
use finsight_flags::{FlagEngine, FlagSet, Unit, bucket};
use open_feature::provider::FeatureProvider;
use open_feature::{EvaluationContext, EvaluationErrorCode, EvaluationReason, OpenFeature};

const FLAGS: &str = r#"[
  {"key": "dash", "flag_type": "boolean", "status": "active", "default_value": false, "rollout_percentage": 100,
   "targeting_rules": [{"rule_type": "subscription_tier", "operator": "in", "values": ["pro"]}]},
  {"key": "mv", "flag_type": "multivariate", "status": "active", "default_value": "none",
   "variants": [{"id": "small", "value": {"size": 1}, "weight": 50}, {"id": "big", "value": {"size": 9}, "weight": 50}]},
  {"key": "num", "flag_type": "multivariate", "status": "active",
   "variants": [{"id": "n", "value": 42, "weight": 100}]},
  {"key": "killed", "flag_type": "boolean", "status": "active", "kill_switch": true, "rollout_percentage": 100}
]"#;

fn provider() -> FinSightProvider {
    FinSightProvider::new(FlagEngine::new(
        FlagSet::from_json(FLAGS).unwrap().strict().unwrap(),
    ))
}

#[tokio::test]
async fn provider_trait_resolves_with_reasons_variants_and_errors() {
    let p = provider();
    let ctx = EvaluationContext::default()
        .with_targeting_key("user-1")
        .with_custom_field("subscription_tier", "pro");
    let d = p.resolve_bool_value("dash", &ctx).await.unwrap();
    assert!(d.value);
    assert_eq!(d.reason, Some(EvaluationReason::TargetingMatch));

    let d = p.resolve_struct_value("mv", &ctx).await.unwrap();
    let expected = if bucket("mv", Unit::User("user-1")) < 50 {
        "small"
    } else {
        "big"
    };
    assert_eq!(d.variant.as_deref(), Some(expected));
    assert_eq!(d.reason, Some(EvaluationReason::Split));
    assert!(d.value.fields.contains_key("size"));

    assert_eq!(p.resolve_int_value("num", &ctx).await.unwrap().value, 42);
    assert_eq!(
        p.resolve_float_value("num", &ctx).await.unwrap().value,
        42.0
    );

    let e = p.resolve_string_value("num", &ctx).await.unwrap_err();
    assert_eq!(e.code, EvaluationErrorCode::TypeMismatch);
    let e = p.resolve_bool_value("nope", &ctx).await.unwrap_err();
    assert_eq!(e.code, EvaluationErrorCode::FlagNotFound);
    let e = p.resolve_bool_value("killed", &ctx).await.unwrap_err();
    assert_eq!(
        e.code,
        EvaluationErrorCode::General("kill_switch_active".into())
    );

    // Without the tier, targeting does not match: the flag's default, reason DEFAULT.
    let d = p
        .resolve_bool_value(
            "dash",
            &EvaluationContext::default().with_targeting_key("u"),
        )
        .await
        .unwrap();
    assert_eq!(
        (d.value, d.reason),
        (false, Some(EvaluationReason::Default))
    );
}

#[tokio::test]
async fn the_openfeature_client_returns_the_callers_default_on_errors() {
    let mut api = OpenFeature::singleton_mut().await;
    api.set_provider(provider()).await;
    let client = api.create_client();
    drop(api);
    let ctx = EvaluationContext::default()
        .with_targeting_key("user-1")
        .with_custom_field("subscription_tier", "pro");
    assert!(
        client
            .get_bool_value("dash", Some(&ctx), None)
            .await
            .unwrap()
    );
    assert!(
        client
            .get_bool_value("killed", Some(&ctx), None)
            .await
            .is_err()
    );
    let d = client
        .get_bool_details("dash", Some(&ctx), None)
        .await
        .unwrap();
    assert_eq!(d.reason, Some(EvaluationReason::TargetingMatch));
}
