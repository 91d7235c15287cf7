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

/// A user id whose bucket on `flag` is `b` (searching `u0`, `u1`, …).
fn user_in_bucket(flag: &str, b: u8) -> String {
    (0..)
        .map(|i| format!("u{i}"))
        .find(|u| bucket(flag, Unit::User(u)) == b)
        .unwrap()
}

#[test]
fn sticky_out_holds_when_a_boolean_flag_goes_to_100_percent() {
    let flag = |pct: u32, sticky: bool| {
        json!([{"key": "bool", "flag_type": "boolean", "status": "active", "default_value": false,
                "sticky_bucketing": sticky, "rollout_percentage": pct}])
        .to_string()
    };
    let e = FlagEngine::new(FlagSet::from_json(&flag(30, true)).unwrap().set);
    let out = user(&user_in_bucket("bool", 80));
    let inside = user(&user_in_bucket("bool", 10));
    assert!(!e.is_enabled("bool", &out));
    assert!(e.is_enabled("bool", &inside));

    // Rolled out to everyone: the stored `out` still holds (SPEC §1.4) ...
    e.load_json(&flag(100, true)).unwrap();
    let d = e.bool_detail("bool", &out, true);
    assert_eq!(
        (d.value, d.reason, d.bucket),
        (false, Reason::RolloutPercentageNotReached, Some(80)),
        "a user stored as out stays out after the rollout reaches 100%"
    );
    assert!(e.explain("bool", &out, json!(true)).sticky_hit);
    // ... stored `in` and new users are on, and without a bucketing key the
    // flag is simply on.
    assert!(e.is_enabled("bool", &inside));
    assert!(e.is_enabled("bool", &user(&user_in_bucket("bool", 95))));
    let anonymous = e.bool_detail("bool", &EvaluationContext::new(), false);
    assert_eq!((anonymous.value, anonymous.reason), (true, Reason::Enabled));

    // A non-sticky flag at 100% keeps its fast path: on, no bucket computed.
    e.load_json(&flag(100, false)).unwrap();
    let d = e.bool_detail("bool", &out, false);
    assert_eq!((d.value, d.reason, d.bucket), (true, Reason::Enabled, None));
}

#[test]
fn multivariate_boundary_buckets_follow_the_spec_float_formula() {
    // Weights 7/7/14/1/26/1/1/1/42 (total 100) put a cumulative boundary at
    // 7, 14, 28, 29, 55, 56, 57 and 58: exactly the buckets where
    // scaled = (bucket as f64 / 100.0) * 100.0 is not the bucket itself.
    // Variant i covers scaled < cumulative[i]:
    //   cumulative: v0 7, v1 14, v2 28, v3 29, v4 55, v5 56, v6 57, v7 58, v8 100
    // Float values (the same in Python):
    //   7 -> 7.000000000000001   (over)  not < 7,  < 14 -> v1
    //  14 -> 14.000000000000002  (over)  not < 14, < 28 -> v2
    //  28 -> 28.000000000000004  (over)  not < 28, < 29 -> v3
    //  29 -> 28.999999999999996  (under) < 29            -> v3 (integers: v4)
    //  55 -> 55.00000000000001   (over)  not < 55, < 56 -> v5
    //  56 -> 56.00000000000001   (over)  not < 56, < 57 -> v6
    //  57 -> 56.99999999999999   (under) < 57            -> v6 (integers: v7)
    //  58 -> 57.99999999999999   (under) < 58            -> v7 (integers: v8)
    // and two neighbours: 6 -> 6.0 -> v0, 30 -> 30.0 -> v4.
    let weights = [7, 7, 14, 1, 26, 1, 1, 1, 42];
    let variants: Vec<Value> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| json!({"id": format!("v{i}"), "value": i, "weight": w}))
        .collect();
    let e = engine(
        json!([{"key": "mv-table", "flag_type": "multivariate", "status": "active",
        "default_value": -1, "variants": variants}]),
    );
    let table: [(u8, &str); 10] = [
        (6, "v0"),
        (7, "v1"),
        (14, "v2"),
        (28, "v3"),
        (29, "v3"),
        (30, "v4"),
        (55, "v5"),
        (56, "v6"),
        (57, "v6"),
        (58, "v7"),
    ];
    for (b, want) in table {
        let ctx = user(&user_in_bucket("mv-table", b));
        let d = e.evaluate("mv-table", &ctx, json!(null));
        assert_eq!(d.bucket, Some(b));
        assert_eq!(d.reason, Reason::VariantSelected);
        assert_eq!(d.variant.as_deref(), Some(want), "bucket {b}");
        // The formula itself, as the SPEC writes it.
        let scaled = (f64::from(b) / 100.0) * 100.0_f64;
        let mut cumulative = 0.0;
        let by_formula = weights
            .iter()
            .position(|w| {
                cumulative += f64::from(*w);
                scaled < cumulative
            })
            .map(|i| format!("v{i}"));
        assert_eq!(by_formula.as_deref(), Some(want), "bucket {b}");
    }
}

#[test]
fn draft_status_serves_the_callers_default() {
    let e = engine(
        json!([{"key": "d", "flag_type": "boolean", "status": "draft",
        "rollout_percentage": 100, "default_value": true}]),
    );
    let d = e.bool_detail("d", &user("u"), false);
    assert_eq!(
        (d.value, d.reason, d.targeting_matched),
        (
            false,
            Reason::FlagStatus(finsight_flags::FlagStatus::Draft),
            false
        )
    );
    assert_eq!(d.reason.as_str(), "flag_status_draft");
}

#[test]
fn variant_fallback_is_reached_only_through_float_underflow() {
    // With total > 0, scaled = (bucket / 100) * total <= 0.99 * total, which
    // is below the last cumulative weight (the same sum, in the same order)
    // for every total of normal magnitude: no bucket falls past the last
    // variant. Only a subnormal total rounds 0.99 * total up to total itself:
    // with a single weight of 5e-324, buckets 51..=99 give scaled == total,
    // no variant has scaled < cumulative, and the flag's default is served
    // (`variant_fallback`), exactly as the Python services' arithmetic does.
    let e = engine(
        json!([{"key": "tiny", "flag_type": "multivariate", "status": "active",
        "default_value": "fallback", "variants": [{"id": "only", "value": "V", "weight": 5e-324}]}]),
    );
    let high = user(&user_in_bucket("tiny", 75));
    let d = e.string_detail("tiny", &high, "x");
    assert_eq!(
        (d.value.as_str(), d.reason, d.variant, d.bucket),
        ("fallback", Reason::VariantFallback, None, Some(75))
    );
    assert_eq!(d.reason.as_str(), "variant_fallback");
    let low = user(&user_in_bucket("tiny", 20));
    assert_eq!(
        e.string_detail("tiny", &low, "x").reason,
        Reason::VariantSelected
    );
}
