//! finsight-flags next to unleash-yggdrasil (the engine behind Unleash's
//! SDKs), same process, same work:
//!
//! * `flags/percentage_3_rules`: a 50% rollout behind three targeting rules
//!   (tier in [pro, enterprise] OR region starts with `eu-` OR country in
//!   [de, fr]); the user matches only the third, so every rule is checked.
//!   Yggdrasil: three `flexibleRollout` strategies (50%, userId stickiness,
//!   same groupId), one constraint each — Unleash ORs strategies and ANDs
//!   constraints, so that is the same toggle.
//! * `flags/multivariate`: four equal variants, variant id of a user.
//!   Yggdrasil: `get_variant` on a toggle with four variants (weights 250).
//! * `flags/load_1000`: parse and validate 1,000 flags from JSON text;
//!   yggdrasil parses the equivalent `ClientFeatures` JSON and compiles it
//!   with `take_state`.
//!
//! The comparison groups use flags without `sticky_bucketing` (yggdrasil has
//! no persisted assignments: its toggle is the equivalent); `flags/sticky`
//! measures the same flags with sticky assignments. Warm means: the flags
//! are loaded and the user was evaluated once before measuring.

use criterion::{Criterion, criterion_group, criterion_main};
use finsight_flags::{EvaluationContext, FlagEngine, FlagSet};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::hint::black_box;
use unleash_yggdrasil::{ClientFeatures, Context, EngineState, UpdateMessage};

fn finsight_flags_json(sticky: bool) -> String {
    json!([
        {"key": "checkout", "flag_type": "boolean", "status": "active", "default_value": false,
         "rollout_percentage": 50, "sticky_bucketing": sticky,
         "targeting_rules": [
            {"rule_type": "subscription_tier", "operator": "in", "values": ["pro", "enterprise"]},
            {"rule_type": "geographic_region", "operator": "starts_with", "values": ["eu-"]},
            {"rule_type": "custom_attribute", "attribute": "country", "operator": "in", "values": ["de", "fr"]}
         ]},
        {"key": "layout", "flag_type": "multivariate", "status": "active", "default_value": "control",
         "sticky_bucketing": sticky,
         "variants": [
            {"id": "a", "value": "a", "weight": 25}, {"id": "b", "value": "b", "weight": 25},
            {"id": "c", "value": "c", "weight": 25}, {"id": "d", "value": "d", "weight": 25}
         ]}
    ])
    .to_string()
}

fn rollout_strategy(constraint: Value) -> Value {
    json!({"name": "flexibleRollout", "parameters": {"rollout": "50", "stickiness": "userId", "groupId": "checkout"},
           "constraints": [constraint]})
}

fn yggdrasil_features() -> Value {
    json!({"version": 2, "features": [
        {"name": "checkout", "enabled": true, "strategies": [
            rollout_strategy(json!({"contextName": "tier", "operator": "IN", "values": ["pro", "enterprise"]})),
            rollout_strategy(json!({"contextName": "region", "operator": "STR_STARTS_WITH", "values": ["eu-"]})),
            rollout_strategy(json!({"contextName": "country", "operator": "IN", "values": ["de", "fr"]}))
        ]},
        {"name": "layout", "enabled": true,
         "strategies": [{"name": "flexibleRollout", "parameters": {"rollout": "100", "stickiness": "userId", "groupId": "layout"}}],
         "variants": [
            {"name": "a", "weight": 250, "weightType": "variable", "stickiness": "userId"},
            {"name": "b", "weight": 250, "weightType": "variable", "stickiness": "userId"},
            {"name": "c", "weight": 250, "weightType": "variable", "stickiness": "userId"},
            {"name": "d", "weight": 250, "weightType": "variable", "stickiness": "userId"}
         ]}
    ]})
}

fn yggdrasil(features: Value) -> EngineState {
    let features: ClientFeatures = serde_json::from_value(features).expect("valid ClientFeatures");
    let engine = EngineState::default();
    let warnings = engine.take_state(UpdateMessage::FullResponse(features));
    assert!(warnings.unwrap_or_default().is_empty());
    engine
}

fn thousand_flags() -> (String, String) {
    let mut ours = Vec::with_capacity(1000);
    let mut theirs = Vec::with_capacity(1000);
    for i in 0..1000 {
        let key = format!("flag-{i:04}");
        ours.push(json!({
            "id": format!("id-{i}"), "key": key, "name": key, "description": "a flag of the load benchmark",
            "flag_type": "boolean", "status": "active", "default_value": false,
            "rollout_percentage": i % 100, "sticky_bucketing": true, "kill_switch": false,
            "targeting_rules": [
                {"rule_type": "subscription_tier", "operator": "in", "values": ["pro", "enterprise"]},
                {"rule_type": "geographic_region", "operator": "starts_with", "values": ["eu-"]}
            ],
            "environment_overrides": {}, "track_events": false, "track_exposure": false,
            "prerequisites": [], "tags": ["bench"], "owner": "team", "expires_at": null,
            "tenant_restrictions": [], "subscription_tier_requirements": []
        }));
        theirs.push(json!({"name": key, "enabled": true, "strategies": [
            {"name": "flexibleRollout", "parameters": {"rollout": (i % 100).to_string(), "stickiness": "userId", "groupId": key},
             "constraints": [{"contextName": "tier", "operator": "IN", "values": ["pro", "enterprise"]}]},
            {"name": "flexibleRollout", "parameters": {"rollout": (i % 100).to_string(), "stickiness": "userId", "groupId": key},
             "constraints": [{"contextName": "region", "operator": "STR_STARTS_WITH", "values": ["eu-"]}]}
        ]}));
    }
    (
        Value::Array(ours).to_string(),
        json!({"version": 2, "features": theirs}).to_string(),
    )
}

fn bench(c: &mut Criterion) {
    let report = FlagSet::from_json(&finsight_flags_json(false)).expect("flag JSON");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let engine = FlagEngine::new(report.set);
    let sticky = FlagEngine::new(
        FlagSet::from_json(&finsight_flags_json(true))
            .expect("flag JSON")
            .set,
    );
    let ygg = yggdrasil(yggdrasil_features());

    let ctx = EvaluationContext::new()
        .user_id("user-4711")
        .subscription_tier("free")
        .geographic_region("us-east")
        .custom_attribute("country", "de");
    let uctx = Context {
        user_id: Some("user-4711".into()),
        properties: Some(HashMap::from([
            ("tier".to_owned(), "free".to_owned()),
            ("region".to_owned(), "us-east".to_owned()),
            ("country".to_owned(), "de".to_owned()),
        ])),
        ..Context::default()
    };
    // Same user, same decision shape: both must serve something, warm the sticky store.
    let ours = engine.is_enabled("checkout", &ctx);
    let _theirs = ygg.is_enabled("checkout", &uctx, &None);
    assert!(engine.variant("layout", &ctx).is_some());
    assert_eq!(
        sticky.variant("layout", &ctx),
        engine.variant("layout", &ctx)
    );
    assert_eq!(sticky.is_enabled("checkout", &ctx), ours);
    assert!(ygg.get_variant("layout", &uctx, &None).enabled);

    let mut g = c.benchmark_group("flags/percentage_3_rules");
    g.bench_function("finsight", |b| {
        b.iter(|| engine.is_enabled(black_box("checkout"), black_box(&ctx)))
    });
    g.bench_function("peer:unleash-yggdrasil", |b| {
        b.iter(|| ygg.is_enabled(black_box("checkout"), black_box(&uctx), &None))
    });
    g.finish();

    let mut g = c.benchmark_group("flags/multivariate");
    g.bench_function("finsight", |b| {
        b.iter(|| engine.variant(black_box("layout"), black_box(&ctx)))
    });
    g.bench_function("peer:unleash-yggdrasil", |b| {
        b.iter(|| ygg.get_variant(black_box("layout"), black_box(&uctx), &None))
    });
    g.finish();

    // The same flags with `sticky_bucketing: true` (an extra store lookup;
    // yggdrasil has no persisted assignments, so no peer here).
    let mut g = c.benchmark_group("flags/sticky");
    g.bench_function("percentage_3_rules", |b| {
        b.iter(|| sticky.is_enabled(black_box("checkout"), black_box(&ctx)))
    });
    g.bench_function("multivariate", |b| {
        b.iter(|| sticky.variant(black_box("layout"), black_box(&ctx)))
    });
    g.finish();

    let (ours_json, theirs_json) = thousand_flags();
    let check = FlagSet::from_json(&ours_json).expect("1000 flags");
    assert_eq!((check.set.len(), check.errors.len()), (1000, 0));
    let mut g = c.benchmark_group("flags/load_1000");
    g.bench_function("finsight", |b| {
        b.iter(|| FlagSet::from_json(black_box(&ours_json)).map(|r| r.set.len()))
    });
    g.bench_function("peer:unleash-yggdrasil", |b| {
        b.iter(|| {
            let features: ClientFeatures =
                serde_json::from_str(black_box(&theirs_json)).expect("ClientFeatures");
            let engine = EngineState::default();
            engine.take_state(UpdateMessage::FullResponse(features));
            engine
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
