//! finsight-ratelimit: the Python services' default rules, in memory.

use std::time::Duration;

use finsight_ratelimit::{
    Algorithm, Limiter, RequestInfo, Rule, RuleSet, Scope, ThrottleAction, Tier,
};

pub async fn run() -> crate::Result {
    println!("== ratelimit");
    // The six default rules of the Python services, plus a small per-user
    // rule for exports that degrades instead of rejecting.
    let mut rules = RuleSet::python_defaults();
    rules.rules.push(
        Rule::new(
            "exports",
            Scope::User,
            Algorithm::SlidingWindowLog,
            2,
            Duration::from_secs(60),
        )
        .path("/api/v1/exports*")
        .tier(Tier::Enterprise, 20, None)
        .action(ThrottleAction::Degrade),
    );
    let limiter = Limiter::builder(rules).build()?;

    let req = RequestInfo::new("GET", "/api/v1/analytics/daily")
        .tenant("acme")
        .user("u-42")
        .ip("203.0.113.9".parse()?)
        .api_key("sk_live_example");
    let d = limiter.check(&req).await?;
    println!(
        "analytics request: {} ({} rules checked, {} left under `{}`)",
        d.outcome.as_str(),
        d.rules.len(),
        d.remaining,
        d.rule.as_deref().unwrap_or("-")
    );

    // Analytics costs 5 of 100 per hour: the 21st call is rejected by that rule
    // alone, and consumes nothing from the others.
    let mut last = d;
    for _ in 0..20 {
        last = limiter.check(&req).await?;
    }
    println!(
        "21st analytics request: {} by `{}`, retry after {} s",
        last.outcome.as_str(),
        last.rule.as_deref().unwrap_or("-"),
        last.retry_after_secs().unwrap_or(0)
    );

    let export = RequestInfo::new("POST", "/api/v1/exports/csv").user("u-42");
    for i in 1..=3 {
        let d = limiter.check(&export).await?;
        println!("export {i}: {}", d.outcome.as_str());
    }

    let m = limiter.metrics();
    println!(
        "metrics: analytics rejected {}, exports degraded {}",
        m.count("analytics", finsight_ratelimit::RuleOutcome::Rejected),
        m.count("exports", finsight_ratelimit::RuleOutcome::Degraded)
    );
    Ok(())
}
