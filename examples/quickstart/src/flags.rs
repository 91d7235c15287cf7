//! finsight-flags: load flags in the Python services' JSON, evaluate them
//! with reasons and buckets, see why a rule matched, and get told about a bad
//! flag without losing the good ones.

use finsight_flags::{EvaluationContext, FlagEngine, FlagSet};
use serde_json::json;

pub async fn run() -> crate::Result {
    println!("\n== finsight-flags");
    let flags = json!([
        {"key": "new-dashboard", "flag_type": "boolean", "status": "active", "default_value": false,
         "rollout_percentage": 50,
         "targeting_rules": [{"rule_type": "subscription_tier", "operator": "in", "values": ["pro", "enterprise"]}]},
        {"key": "pricing-page", "flag_type": "multivariate", "status": "active", "default_value": "control",
         "variants": [{"id": "control", "value": "classic", "weight": 50},
                      {"id": "annual-first", "value": "annual", "weight": 50}]},
        {"key": "broken", "flag_type": "boolean", "status": "active",
         "targeting_rules": [{"rule_type": "user_id", "operator": "regex_match", "values": ["(?!admin)"]}]}
    ]);
    let report = FlagSet::from_json(&flags.to_string())?;
    for e in &report.errors {
        println!("rejected at load: {e}");
    }
    let engine = FlagEngine::new(report.set);

    let ctx = EvaluationContext::new()
        .user_id("user-123")
        .subscription_tier("pro");
    let d = engine.bool_detail("new-dashboard", &ctx, false);
    println!(
        "new-dashboard for user-123: {} (reason {}, bucket {:?})",
        d.value, d.reason, d.bucket
    );
    let v = engine.string_detail("pricing-page", &ctx, "classic");
    println!(
        "pricing-page for user-123: {} (variant {:?}, reason {})",
        v.value,
        v.variant.as_deref(),
        v.reason
    );
    let free = EvaluationContext::new()
        .user_id("user-456")
        .subscription_tier("free");
    let x = engine.explain("new-dashboard", &free, json!(false));
    for r in &x.rules {
        println!(
            "rule {} ({} {}) on {:?}: matched = {}",
            r.index,
            r.rule_type.as_str(),
            r.operator.as_str(),
            r.context_value,
            r.matched
        );
    }
    println!("new-dashboard for user-456: {}", x.evaluation.reason);
    Ok(())
}
