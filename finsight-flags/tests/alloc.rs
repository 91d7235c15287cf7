//! A warm boolean evaluation (and a warm variant lookup) does not touch the heap: counted with
//! `allocation-counter`'s global allocator, per thread, so the test harness's
//! own bookkeeping on its main thread (which may still run right after it
//! spawned this test) is not counted.

use finsight_flags::{EvaluationContext, FlagEngine, FlagSet};

const FLAGS: &str = r#"[
  {"key": "checkout-v2", "flag_type": "boolean", "status": "active", "default_value": false,
   "rollout_percentage": 60, "sticky_bucketing": true, "expires_at": "2099-01-01T00:00:00Z",
   "targeting_rules": [
     {"rule_type": "subscription_tier", "operator": "in", "values": ["pro", "enterprise"]},
     {"rule_type": "geographic_region", "operator": "starts_with", "values": ["eu-"]},
     {"rule_type": "user_id", "operator": "regex_match", "values": ["user-\\d+"]}
   ]},
  {"key": "pct", "flag_type": "percentage", "status": "active", "default_value": false,
   "rollout_percentage": 30, "targeting_rules": [
     {"rule_type": "custom_attribute", "attribute": "country", "operator": "not_in", "values": ["fr"]}
   ]},
  {"key": "mv", "flag_type": "multivariate", "status": "active", "sticky_bucketing": true,
   "variants": [{"id": "a", "value": "A", "weight": 30}, {"id": "b", "value": "B", "weight": 70}]}
]"#;

#[test]
fn warm_boolean_evaluation_allocates_nothing() {
    let engine = FlagEngine::new(FlagSet::from_json(FLAGS).unwrap().strict().unwrap());
    let contexts: Vec<EvaluationContext> = (0..64)
        .map(|i| {
            EvaluationContext::new()
                .user_id(format!("user-{i}"))
                .subscription_tier(if i % 2 == 0 { "pro" } else { "free" })
                .geographic_region(if i % 3 == 0 { "eu-west" } else { "us-east" })
                .custom_attribute("country", "de")
        })
        .collect();
    // Warm up: first evaluations record sticky assignments (allocation allowed).
    let mut warm_on = 0;
    for ctx in &contexts {
        warm_on += usize::from(engine.bool_value("checkout-v2", ctx, false));
        engine.bool_value("pct", ctx, false);
        engine.variant("mv", ctx);
    }
    let mut on = 0;
    let stats = allocation_counter::measure(|| {
        for _ in 0..100 {
            for ctx in &contexts {
                on += usize::from(engine.bool_value("checkout-v2", ctx, false));
                on += usize::from(engine.is_enabled("pct", ctx));
                on += usize::from(engine.is_enabled("missing-flag", ctx));
                on += usize::from(engine.variant("mv", ctx).is_some());
            }
        }
    });
    // (`count_total` counts reallocations too.)
    assert_eq!(
        stats.count_total, 0,
        "warm boolean evaluations allocated: {stats:?}"
    );
    assert!(
        warm_on > 0 && on > 0,
        "the flags should be on for some users"
    );
    // The counter works: an allocation is seen.
    let seen = allocation_counter::measure(|| {
        std::hint::black_box(vec![1u8; 16]);
    });
    assert!(seen.count_total > 0, "{seen:?}");
}
