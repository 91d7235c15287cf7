//! Evaluation behaviour beyond the conformance vectors: typed accessors,
//! explain, the extra operators, sticky assignments, the clock.

use chrono::{Duration, TimeZone, Utc};
use finsight_flags::{
    EvaluationContext, FlagEngine, FlagSet, ManualClock, MemoryStickyStore, Reason, Unit, bucket,
};
use serde_json::{Value, json};

fn engine(flags: Value) -> FlagEngine {
    FlagEngine::new(
        FlagSet::from_json(&flags.to_string())
            .unwrap()
            .strict()
            .unwrap(),
    )
}

fn user(id: &str) -> EvaluationContext {
    EvaluationContext::new().user_id(id)
}

#[test]
fn typed_accessors_and_type_mismatch() {
    let e = engine(json!([
        {"key": "s", "flag_type": "multivariate", "status": "active", "default_value": "control",
         "variants": [{"id": "v1", "value": "blue", "weight": 100}]},
        {"key": "n", "flag_type": "multivariate", "status": "active", "default_value": 0,
         "variants": [{"id": "v1", "value": 2.5, "weight": 100}]},
        {"key": "b", "flag_type": "boolean", "status": "active", "rollout_percentage": 100}
    ]));
    let ctx = user("u1");
    assert_eq!(e.string_value("s", &ctx, "x"), "blue");
    assert_eq!(e.number_value("n", &ctx, 1.0), 2.5);
    assert!(e.bool_value("b", &ctx, false));
    let d = e.bool_detail("s", &ctx, true);
    assert_eq!(
        (d.value, d.reason, d.variant),
        (true, Reason::TypeMismatch, None)
    );
    assert_eq!(d.reason.as_str(), "type_mismatch");
    let d = e.string_detail("b", &ctx, "dflt");
    assert_eq!((d.value.as_str(), d.reason), ("dflt", Reason::TypeMismatch));
    let d = e.number_detail("s", &ctx, 7.0);
    assert_eq!((d.value, d.reason), (7.0, Reason::TypeMismatch));
    let d = e.string_detail("s", &ctx, "x");
    assert_eq!(d.variant.as_deref(), Some("v1"));
    assert_eq!(d.bucket, Some(bucket("s", Unit::User("u1"))));
    assert_eq!(
        e.json_value("missing", &ctx, json!({"a": 1})),
        json!({"a": 1})
    );
    assert_eq!(
        e.bool_detail("missing", &ctx, true).reason,
        Reason::FlagNotFound
    );
}

#[test]
fn explain_reports_every_rule() {
    let e = engine(json!([
        {"key": "p", "flag_type": "boolean", "status": "active", "rollout_percentage": 100},
        {"key": "f", "flag_type": "boolean", "status": "active", "rollout_percentage": 100,
         "prerequisites": ["p"],
         "targeting_rules": [
            {"rule_type": "user_role", "operator": "equals", "values": ["admin"]},
            {"rule_type": "custom_attribute", "attribute": "plan", "operator": "in", "values": ["gold"]},
            {"rule_type": "device_type", "operator": "equals", "values": ["ios"]}]}
    ]));
    let ctx = user("u")
        .user_role("viewer")
        .custom_attribute("plan", "gold");
    let x = e.explain("f", &ctx, json!(false));
    assert_eq!(x.evaluation.value, json!(true));
    assert_eq!(x.evaluation.reason, Reason::Enabled);
    assert_eq!(x.prerequisites.len(), 1);
    assert_eq!(x.prerequisites[0].reason, Reason::Enabled);
    let m: Vec<_> = x
        .rules
        .iter()
        .map(|r| (r.matched, r.context_value.clone()))
        .collect();
    assert_eq!(
        m,
        [
            (false, Some("viewer".into())),
            (true, Some("gold".into())),
            (false, None)
        ]
    );
}

#[test]
fn numeric_semver_and_date_operators() {
    let rule = |op: &str, attr: &str, v: &str| {
        json!({"key": format!("{op}-{v}"), "flag_type": "targeting", "status": "active",
               "targeting_rules": [{"rule_type": "custom_attribute", "attribute": attr, "operator": op, "values": [v]}]})
    };
    let e = engine(json!([
        rule("gte", "age", "18"),
        rule("lt", "balance", "100.5"),
        rule("semver_gte", "app", "2.1.0"),
        rule("semver_lt", "app", "v3.0.0"),
        rule("semver_eq", "app", "2.1.0"),
        rule("before", "signup", "2026-01-01"),
        rule("after", "signup", "2025-06-01T00:00:00Z"),
    ]));
    let on = |k: &str, attr: &str, v: Value| {
        e.bool_value(k, &user("u").custom_attribute(attr, v), false)
    };
    assert!(on("gte-18", "age", json!(18)));
    assert!(on("gte-18", "age", json!("42")));
    assert!(!on("gte-18", "age", json!(17)));
    assert!(!on("gte-18", "age", json!("old")));
    assert!(on("lt-100.5", "balance", json!(100.4)));
    assert!(!on("lt-100.5", "balance", json!(100.5)));
    assert!(on("semver_gte-2.1.0", "app", json!("2.10.0")));
    assert!(!on("semver_gte-2.1.0", "app", json!("2.1.0-beta.1")));
    assert!(on("semver_lt-v3.0.0", "app", json!("v2.99.1")));
    assert!(on("semver_eq-2.1.0", "app", json!("2.1.0+build5")));
    assert!(!on("semver_eq-2.1.0", "app", json!("not-a-version")));
    assert!(on(
        "before-2026-01-01",
        "signup",
        json!("2025-12-31T23:59:59Z")
    ));
    assert!(!on("before-2026-01-01", "signup", json!("2026-01-01")));
    assert!(on(
        "after-2025-06-01T00:00:00Z",
        "signup",
        json!("2025-06-01T00:00:01+00:00")
    ));
    // Targeting type without a matching rule: the flag's default (`null`
    // here, so the boolean accessor reports a type mismatch).
    let d = e.evaluate("gte-18", &user("u"), json!(false));
    assert_eq!(
        (d.value, d.reason),
        (Value::Null, Reason::TargetingNotMatched)
    );
    assert_eq!(
        e.bool_detail("gte-18", &user("u"), false).reason,
        Reason::TypeMismatch
    );
}

#[test]
fn regex_match_is_anchored_at_the_start_only() {
    let e = engine(
        json!([{"key": "r", "flag_type": "targeting", "status": "active",
        "targeting_rules": [{"rule_type": "user_id", "operator": "regex_match", "values": ["admin-\\d"]}]}]),
    );
    assert!(e.is_enabled("r", &user("admin-1-extra")));
    assert!(!e.is_enabled("r", &user("x-admin-1")));
}

#[test]
fn missing_value_never_matches_negative_operators() {
    let e = engine(
        json!([{"key": "n", "flag_type": "targeting", "status": "active",
        "targeting_rules": [{"rule_type": "user_role", "operator": "not_in", "values": ["admin"]}]}]),
    );
    assert!(e.is_enabled("n", &user("u").user_role("viewer")));
    assert!(!e.is_enabled("n", &user("u")));
}

#[test]
fn expiry_follows_the_injected_clock() {
    let clock = std::sync::Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 5, 31, 23, 0, 0).unwrap(),
    ));
    let set = FlagSet::from_json(
        r#"[{"key": "e", "flag_type": "boolean", "status": "active",
        "rollout_percentage": 100, "expires_at": "2026-06-01T00:00:00Z"}]"#,
    )
    .unwrap()
    .set;
    let e = FlagEngine::builder()
        .flags(set)
        .clock(clock.clone())
        .build();
    assert_eq!(
        e.bool_detail("e", &user("u"), false).reason,
        Reason::Enabled
    );
    clock.advance(Duration::hours(1));
    assert_eq!(
        e.bool_detail("e", &user("u"), false).reason,
        Reason::FlagExpired
    );
}

fn mv(weights: [u32; 2], sticky: bool) -> String {
    json!([{"key": "mv", "flag_type": "multivariate", "status": "active", "default_value": "none",
        "sticky_bucketing": sticky,
        "variants": [{"id": "a", "value": "A", "weight": weights[0]}, {"id": "b", "value": "B", "weight": weights[1]}]}])
    .to_string()
}

#[test]
fn sticky_variant_survives_a_weight_change_and_non_sticky_moves() {
    let store = MemoryStickyStore::new(10_000);
    let e = FlagEngine::builder()
        .flags(FlagSet::from_json(&mv([50, 50], true)).unwrap().set)
        .sticky_store(store.clone())
        .build();
    let users: Vec<String> = (0..500).map(|i| format!("user-{i}")).collect();
    let before: Vec<String> = users
        .iter()
        .map(|u| e.string_value("mv", &user(u), ""))
        .collect();
    assert_eq!(store.len(), 500);
    e.load_json(&mv([10, 90], true)).unwrap();
    let after: Vec<String> = users
        .iter()
        .map(|u| e.string_value("mv", &user(u), ""))
        .collect();
    assert_eq!(before, after, "sticky users must keep their variant");
    // A new engine without the stored assignments moves users whose bucket is in 10..50.
    let fresh = FlagEngine::new(FlagSet::from_json(&mv([10, 90], false)).unwrap().set);
    let moved = users
        .iter()
        .zip(&before)
        .filter(|(u, b)| fresh.string_value("mv", &user(u), "") != **b)
        .count();
    assert!(
        moved > 100,
        "non-sticky evaluation should move ~40% of users, moved {moved}"
    );
    // A stored variant that no longer exists is recomputed.
    e.load_json(
        r#"[{"key": "mv", "flag_type": "multivariate", "status": "active", "sticky_bucketing": true,
        "variants": [{"id": "c", "value": "C", "weight": 100}]}]"#,
    )
    .unwrap();
    assert_eq!(e.string_value("mv", &user("user-1"), ""), "C");
}

#[test]
fn sticky_rollout_keeps_users_in_when_the_percentage_drops() {
    let flag = |pct: u32| {
        json!([{"key": "r", "flag_type": "percentage", "status": "active", "sticky_bucketing": true,
                "rollout_percentage": pct}])
        .to_string()
    };
    let e = FlagEngine::new(FlagSet::from_json(&flag(80)).unwrap().set);
    let users: Vec<EvaluationContext> = (0..300).map(|i| user(&format!("u{i}"))).collect();
    let inside: Vec<bool> = users.iter().map(|c| e.is_enabled("r", c)).collect();
    e.load_json(&flag(10)).unwrap();
    let after: Vec<bool> = users.iter().map(|c| e.is_enabled("r", c)).collect();
    assert_eq!(inside, after);
    assert!(inside.iter().filter(|x| **x).count() > 150);
}

#[test]
fn environment_override_and_default_environment() {
    let e = engine(
        json!([{"key": "o", "flag_type": "boolean", "status": "active", "rollout_percentage": 0,
        "default_value": false, "environment_overrides": {"production": "prod-value", "staging": true}}]),
    );
    let d = e.evaluate("o", &user("u"), json!(null));
    assert_eq!(
        (d.value, d.reason, d.targeting_matched),
        (json!("prod-value"), Reason::EnvironmentOverride, true)
    );
    assert!(e.bool_value("o", &user("u").environment("staging"), false));
    let d = e.evaluate("o", &user("u").environment("dev"), json!(null));
    assert_eq!(d.reason, Reason::RolloutPercentageNotReached);
}

#[test]
fn rule_percentage_gates_on_the_bucket() {
    let e = engine(
        json!([{"key": "g", "flag_type": "targeting", "status": "active",
        "targeting_rules": [{"rule_type": "user_role", "operator": "equals", "values": ["beta"], "percentage": 50}]}]),
    );
    for i in 0..200 {
        let id = format!("user-{i}");
        let b = bucket("g", Unit::User(&id));
        assert_eq!(
            e.is_enabled("g", &user(&id).user_role("beta")),
            b < 50,
            "{id} bucket {b}"
        );
    }
    assert!(!e.is_enabled("g", &EvaluationContext::new().user_role("beta")));
}

#[test]
fn operational_and_targeting_types() {
    let e = engine(json!([
        {"key": "ops", "flag_type": "operational", "status": "active"},
        {"key": "ops-off", "flag_type": "operational", "status": "active", "kill_switch": true},
        {"key": "t0", "flag_type": "targeting", "status": "active", "default_value": false}
    ]));
    assert_eq!(
        e.bool_detail("ops", &EvaluationContext::new(), false)
            .reason,
        Reason::Enabled
    );
    assert_eq!(
        e.bool_detail("ops-off", &user("u"), true).reason,
        Reason::KillSwitchActive
    );
    assert!(e.bool_detail("ops-off", &user("u"), true).value);
    assert_eq!(
        e.bool_detail("t0", &user("u"), true).reason,
        Reason::NoTargetingRules
    );
}

#[test]
fn engine_and_errors_are_send_sync() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<FlagEngine>();
    assert_send_sync::<finsight_flags::Error>();
    assert_send_sync::<finsight_flags::FlagError>();
}
