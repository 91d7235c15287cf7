//! Property tests (proptest, fixed seeds so runs are reproducible):
//! bucket uniformity, monotone rollouts, and a fuzz-style test of the flag
//! JSON loader and the evaluator (cargo-fuzz needs a nightly toolchain, which
//! this project does not use; these run arbitrary input through the same
//! entry points on stable).

use finsight_flags::{EvaluationContext, FlagEngine, FlagSet, Unit, bucket};
use proptest::prelude::*;
use serde_json::{Value, json};

mod strategies;

use strategies::{config, json_tree, word};

proptest! {
    #![proptest_config(config(6, 0x5eed_0001))]

    /// Each of the 100 buckets holds 1% ± 0.15 percentage points of 100,000 keys.
    #[test]
    fn buckets_are_uniform(flag in "[a-z][a-z0-9_.-]{0,20}", prefix in "[a-zA-Z0-9é ]{0,8}", tenant in any::<bool>()) {
        let mut counts = [0u32; 100];
        for i in 0..100_000u32 {
            let id = format!("{prefix}{i}");
            let unit = if tenant { Unit::Tenant(&id) } else { Unit::User(&id) };
            counts[usize::from(bucket(&flag, unit))] += 1;
        }
        for (b, &n) in counts.iter().enumerate() {
            let share = f64::from(n) / 1000.0; // percent of 100,000
            prop_assert!((share - 1.0).abs() <= 0.15, "bucket {} holds {}% of keys", b, share);
        }
    }
}

proptest! {
    #![proptest_config(config(64, 0x5eed_0002))]

    /// Raising the rollout percentage never removes a user.
    #[test]
    fn raising_rollout_never_removes_a_user(
        flag in "[a-z][a-z0-9-]{0,16}",
        users in prop::collection::vec("[a-zA-Z0-9:@. ]{1,16}", 1..40),
        a in 0u32..=100, b in 0u32..=100,
        boolean in any::<bool>(),
    ) {
        let (lo, hi) = (a.min(b), a.max(b));
        let kind = if boolean { "boolean" } else { "percentage" };
        let load = |p: u32| {
            let def = json!([{"key": flag, "flag_type": kind, "status": "active",
                "default_value": false, "rollout_percentage": p}]);
            FlagEngine::builder()
                .flags(FlagSet::from_json(&def.to_string()).unwrap().strict().unwrap())
                .no_sticky_store()
                .build()
        };
        let (low, high) = (load(lo), load(hi));
        for u in &users {
            let ctx = EvaluationContext::new().user_id(u.as_str());
            if low.is_enabled(&flag, &ctx) {
                prop_assert!(high.is_enabled(&flag, &ctx), "{} left the rollout going {}% -> {}%", u, lo, hi);
            }
        }
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e6f64..1e6).prop_map(|n| json!(n)),
        "[a-z_]{0,12}".prop_map(Value::String),
        word(vec![
            "boolean",
            "percentage",
            "multivariate",
            "targeting",
            "operational",
            "active",
            "draft",
            "user_id",
            "tenant_id",
            "custom_attribute",
            "equals",
            "regex_match",
            "not_in",
            "gte",
            "semver_lt",
            "before",
            "(",
            "[a-",
            "(?=x)",
            "2026-01-01T00:00:00Z",
        ]),
    ];
    json_tree(
        leaf,
        vec![
            "key",
            "flag_type",
            "status",
            "default_value",
            "variants",
            "targeting_rules",
            "rollout_percentage",
            "rule_type",
            "operator",
            "values",
            "attribute",
            "percentage",
            "weight",
            "id",
            "value",
            "prerequisites",
            "expires_at",
            "environment_overrides",
            "tenant_restrictions",
            "subscription_tier_requirements",
            "kill_switch",
            "sticky_bucketing",
        ],
    )
}

proptest! {
    #![proptest_config(config(2_000, 0x5eed_0003))]

    /// Arbitrary bytes never panic the loader.
    #[test]
    fn loader_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = FlagSet::from_json(&text);
        let _ = FlagSet::from_json(&format!("[{text}]"));
    }

    /// Arbitrary flag-shaped JSON never panics the loader, and whatever loads
    /// evaluates without panicking for arbitrary contexts.
    #[test]
    fn loader_and_evaluator_never_panic_on_flag_shaped_json(
        flags in prop::collection::vec(arb_json(), 0..6),
        user in proptest::option::of("[a-z0-9]{0,6}"),
        tenant in proptest::option::of("[a-z0-9]{0,6}"),
        attr in arb_json(),
    ) {
        let text = Value::Array(flags).to_string();
        let report = FlagSet::from_json(&text).unwrap();
        for e in &report.errors {
            prop_assert!(!e.field.is_empty() && !e.message.is_empty());
        }
        let keys: Vec<String> = report.set.definitions().map(|d| d.key.clone()).collect();
        let engine = FlagEngine::new(report.set);
        let mut ctx = EvaluationContext::new().custom_attribute("x", attr);
        ctx.user_id = user;
        ctx.tenant_id = tenant;
        for k in &keys {
            let _ = engine.explain(k, &ctx, Value::Null);
            let _ = engine.bool_value(k, &ctx, false);
            let _ = engine.string_value(k, &ctx, "d");
        }
    }
}
