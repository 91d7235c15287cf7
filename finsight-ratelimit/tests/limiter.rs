//! The rule-based limiter in memory: all-or-nothing, tiers, costs, actions,
//! shadow mode, runtime updates, metrics, eviction.

use std::sync::Arc;
use std::time::Duration;

use finsight_ratelimit::{
    Algorithm, CostTable, Error, Limiter, ManualClock, Outcome, RequestInfo, Rule, RuleOutcome,
    RuleSet, Scope, ThrottleAction, Tier, TokioClock,
};

const T0: u64 = 1_700_000_000_000_000;
const MIN: Duration = Duration::from_secs(60);

fn limiter(rules: Vec<Rule>) -> (Limiter, ManualClock) {
    let clock = ManualClock::new(T0);
    let l = Limiter::builder(RuleSet::new(rules))
        .clock(clock.clone())
        .build()
        .unwrap();
    (l, clock)
}

#[test]
fn a_request_rejected_by_one_rule_consumes_from_none() {
    let (l, _c) = limiter(vec![
        Rule::new("global", Scope::Global, Algorithm::FixedWindow, 100, MIN),
        Rule::new("user", Scope::User, Algorithm::Gcra, 2, MIN),
    ]);
    let a = RequestInfo::new("GET", "/x").user("alice");
    assert!(l.check_local(&a).unwrap().is_allowed());
    assert!(l.check_local(&a).unwrap().is_allowed());
    for _ in 0..10 {
        let d = l.check_local(&a).unwrap();
        assert_eq!(d.outcome, Outcome::Rejected);
        assert_eq!(d.rule.as_deref(), Some("user"));
        assert!(d.retry_after_secs().unwrap() >= 1);
    }
    // The global rule was charged only for the two admitted requests.
    let b = RequestInfo::new("GET", "/x").user("bob");
    let d = l.check_local(&b).unwrap();
    let g = d.rules.iter().find(|r| &*r.rule == "global").unwrap();
    assert_eq!(g.remaining, 100 - 3);
    assert_eq!(
        d.remaining, 1,
        "real remaining = least over the rules (bob's user rule)"
    );
    assert_eq!(d.rule.as_deref(), Some("user"));
}

#[test]
fn retry_after_is_rounded_up_and_never_zero() {
    let (l, c) = limiter(vec![Rule::new(
        "u",
        Scope::User,
        Algorithm::Gcra,
        10,
        Duration::from_secs(1),
    )]);
    let r = RequestInfo::new("GET", "/").user("u");
    for _ in 0..10 {
        assert!(l.check_local(&r).unwrap().is_allowed());
    }
    let d = l.check_local(&r).unwrap();
    assert_eq!(d.retry_after, Some(Duration::from_millis(100)));
    assert_eq!(d.retry_after_secs(), Some(1));
    c.advance(Duration::from_millis(99_999) / 1000);
    assert!(!l.check_local(&r).unwrap().is_allowed());
    c.advance(Duration::from_micros(1));
    assert!(l.check_local(&r).unwrap().is_allowed());
}

#[test]
fn tiers_paths_methods_and_costs_select_quotas() {
    let rules = RuleSet::new(vec![
        Rule::new("user", Scope::User, Algorithm::FixedWindow, 10, MIN).tier(
            Tier::Enterprise,
            100,
            Some(5),
        ),
        Rule::new("writes", Scope::User, Algorithm::FixedWindow, 3, MIN)
            .method("POST")
            .path("/api/*"),
    ])
    .costs(
        CostTable::new()
            .with("/api/reports/*", 4)
            .with("/api/reports/big", 10),
    );
    let clock = ManualClock::new(T0);
    let l = Limiter::builder(rules).clock(clock).build().unwrap();

    let free = RequestInfo::new("GET", "/api/reports/x")
        .user("a")
        .tier(Tier::Free);
    let d = l.check_local(&free).unwrap();
    assert_eq!(
        (d.quota, d.remaining),
        (10, 6),
        "prefix cost 4 under the base quota"
    );
    let ent = RequestInfo::new("GET", "/api/reports/big")
        .user("b")
        .tier(Tier::Enterprise);
    let d = l.check_local(&ent).unwrap();
    assert_eq!(
        (d.quota, d.remaining),
        (105, 95),
        "exact cost 10 beats the prefix; tier quota 100 + 5"
    );
    assert_eq!(d.rules.len(), 1, "GET does not match the POST rule");

    let post = RequestInfo::new("post", "/api/orders").user("c");
    for _ in 0..3 {
        assert!(l.check_local(&post).unwrap().is_allowed());
    }
    let d = l.check_local(&post).unwrap();
    assert_eq!(d.rule.as_deref(), Some("writes"));
    assert!(!d.is_allowed());
    assert!(
        l.check_local(&RequestInfo::new("POST", "/other").user("c"))
            .unwrap()
            .is_allowed()
    );

    let err = l
        .check_local(&RequestInfo::new("GET", "/").user("d").cost(11))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InsufficientCapacity {
                cost: 11,
                capacity: 10,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn rules_missing_their_scope_key_do_not_apply() {
    let (l, _c) = limiter(vec![Rule::new(
        "tenant",
        Scope::Tenant,
        Algorithm::Gcra,
        1,
        MIN,
    )]);
    let anon = RequestInfo::new("GET", "/");
    for _ in 0..3 {
        let d = l.check_local(&anon).unwrap();
        assert!(d.is_allowed() && d.rules.is_empty() && d.rule.is_none());
    }
}

#[test]
fn peek_consumes_nothing_and_refund_gives_back() {
    let (l, _c) = limiter(vec![Rule::new(
        "k",
        Scope::ApiKey,
        Algorithm::TokenBucket,
        3,
        MIN,
    )]);
    let r = RequestInfo::new("GET", "/").api_key("sk_live_123");
    for _ in 0..5 {
        assert_eq!(l.peek_local(&r).unwrap().remaining, 2);
    }
    l.check_local(&r).unwrap();
    l.check_local(&r).unwrap();
    l.check_local(&r).unwrap();
    assert!(!l.peek_local(&r).unwrap().is_allowed());
    futures_block(l.refund(&r.cost(2))).unwrap();
    assert_eq!(l.check_local(&r).unwrap().remaining, 1);
}

fn futures_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn shadow_rules_and_shadow_limiter_never_reject_but_report() {
    let (l, _c) = limiter(vec![
        Rule::new("enforced", Scope::Global, Algorithm::FixedWindow, 5, MIN),
        Rule::new("dark", Scope::User, Algorithm::FixedWindow, 1, MIN).shadow(true),
    ]);
    let r = RequestInfo::new("GET", "/").user("u");
    assert!(!l.check_local(&r).unwrap().shadow_rejected);
    let d = l.check_local(&r).unwrap();
    assert!(d.is_allowed() && d.shadow_rejected);
    assert_eq!(l.metrics().count("dark", RuleOutcome::ShadowRejected), 1);
    // The enforced rule still counts both.
    assert_eq!(d.rules[0].remaining, 3);

    let clock = ManualClock::new(T0);
    let shadow = Limiter::builder(RuleSet::new(vec![Rule::new(
        "g",
        Scope::Global,
        Algorithm::Gcra,
        1,
        MIN,
    )]))
    .clock(clock)
    .shadow(true)
    .build()
    .unwrap();
    let r = RequestInfo::new("GET", "/");
    assert!(shadow.check_local(&r).unwrap().is_allowed());
    let d = shadow.check_local(&r).unwrap();
    assert!(d.is_allowed() && d.shadow_rejected && d.outcome == Outcome::Allowed);
}

#[test]
fn quotas_change_at_runtime_without_losing_state() {
    let (l, _c) = limiter(vec![Rule::new(
        "u",
        Scope::User,
        Algorithm::SlidingWindowCounter,
        5,
        MIN,
    )]);
    let r = RequestInfo::new("GET", "/").user("u");
    for _ in 0..4 {
        assert!(l.check_local(&r).unwrap().is_allowed());
    }
    l.update_rules(RuleSet::new(vec![Rule::new(
        "u",
        Scope::User,
        Algorithm::SlidingWindowCounter,
        10,
        MIN,
    )]))
    .unwrap();
    let d = l.check_local(&r).unwrap();
    assert_eq!(
        d.remaining, 5,
        "4 used before the update + 1 now, out of 10"
    );
    // Lowering below what is used rejects at once: no free burst on reload.
    l.update_rules(RuleSet::new(vec![Rule::new(
        "u",
        Scope::User,
        Algorithm::SlidingWindowCounter,
        3,
        MIN,
    )]))
    .unwrap();
    assert!(!l.check_local(&r).unwrap().is_allowed());
    assert_eq!(
        l.metrics().count("u", RuleOutcome::Allowed),
        5,
        "counters survive updates"
    );
    let bad = RuleSet::new(vec![Rule::new("u", Scope::User, Algorithm::Gcra, 0, MIN)]);
    let e = l.update_rules(bad).unwrap_err();
    assert!(e.to_string().contains("rule `u`"), "{e}");
    assert_eq!(
        l.rules().rules[0].limit,
        3,
        "a bad update keeps the old rules"
    );
}

#[test]
fn degrade_lets_through_marked_and_consumes_nothing() {
    let (l, _c) = limiter(vec![
        Rule::new("d", Scope::Global, Algorithm::FixedWindow, 1, MIN)
            .action(ThrottleAction::Degrade),
    ]);
    let r = RequestInfo::new("GET", "/");
    assert_eq!(l.check_local(&r).unwrap().outcome, Outcome::Allowed);
    let d = l.check_local(&r).unwrap();
    assert_eq!(d.outcome, Outcome::Degraded);
    assert!(d.is_allowed());
    assert_eq!(l.metrics().count("d", RuleOutcome::Degraded), 1);
}

#[tokio::test(start_paused = true)]
async fn delay_waits_until_admitted_up_to_max_wait() {
    let rule = Rule::new(
        "d",
        Scope::Global,
        Algorithm::Gcra,
        1,
        Duration::from_secs(1),
    )
    .action(ThrottleAction::Delay {
        max_wait: Duration::from_millis(1500),
    });
    let l = Limiter::builder(RuleSet::new(vec![rule]))
        .clock(TokioClock::new(T0))
        .build()
        .unwrap();
    let r = RequestInfo::new("GET", "/");
    let start = tokio::time::Instant::now();
    assert!(l.acquire(&r).await.unwrap().is_allowed());
    assert!(l.acquire(&r).await.unwrap().is_allowed(), "waited ~1 s");
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    // Two waits queued up: the next needs 1 s more, the one after 2 s > 1.5 s.
    let (a, b) = tokio::join!(l.acquire(&r), async {
        tokio::time::sleep(Duration::from_millis(1)).await;
        l.acquire(&r).await
    });
    assert!(a.unwrap().is_allowed());
    let b = b.unwrap();
    assert_eq!(
        b.outcome,
        Outcome::Rejected,
        "a wait above max_wait is rejected, not taken"
    );
}

#[tokio::test(start_paused = true)]
async fn queue_serves_waiters_in_arrival_order_and_is_bounded() {
    let rule = Rule::new("q", Scope::User, Algorithm::Gcra, 1, Duration::from_secs(1)).action(
        ThrottleAction::Queue {
            max_waiters: 3,
            max_wait: Duration::from_secs(10),
        },
    );
    let l = Limiter::builder(RuleSet::new(vec![rule]))
        .clock(TokioClock::new(T0))
        .build()
        .unwrap();
    let r = RequestInfo::new("GET", "/").user("u");
    assert!(l.acquire(&r).await.unwrap().is_allowed());
    let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut tasks = vec![];
    for i in 0..5u32 {
        let (l, order) = (l.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(u64::from(i))).await;
            let d = l
                .acquire(&RequestInfo::new("GET", "/").user("u"))
                .await
                .unwrap();
            if d.is_allowed() {
                order.lock().push((i, tokio::time::Instant::now()));
            }
            d.outcome
        }));
    }
    let mut outcomes = vec![];
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    let admitted: Vec<u32> = order.lock().iter().map(|x| x.0).collect();
    assert_eq!(admitted, vec![0, 1, 2], "first come, first served");
    assert_eq!(
        outcomes.iter().filter(|o| **o == Outcome::Rejected).count(),
        2,
        "queue bound 3"
    );
    // Another user is not stuck behind u's queue.
    let other = l
        .acquire(&RequestInfo::new("GET", "/").user("v"))
        .await
        .unwrap();
    assert!(other.is_allowed());
}

#[test]
fn metrics_count_by_rule_tier_and_outcome_with_near_limit() {
    let (l, _c) = limiter(vec![Rule::new(
        "u",
        Scope::User,
        Algorithm::FixedWindow,
        10,
        MIN,
    )]);
    let r = RequestInfo::new("GET", "/").user("u").tier(Tier::Starter);
    for _ in 0..12 {
        let _ = l.check_local(&r).unwrap();
    }
    let m = l.metrics();
    assert_eq!(m.count("u", RuleOutcome::Allowed), 10);
    assert_eq!(m.count("u", RuleOutcome::Rejected), 2);
    assert!(
        m.decisions
            .iter()
            .all(|row| row.tier == Some(Tier::Starter))
    );
    assert_eq!(
        m.near_limit("u"),
        3,
        "remaining 2, 1, 0 are within 20% of 10"
    );
}

#[test]
fn idle_keys_are_evicted_and_memory_is_bounded() {
    let clock = ManualClock::new(T0);
    let l = Limiter::builder(RuleSet::new(vec![Rule::new(
        "ip",
        Scope::Ip,
        Algorithm::Gcra,
        5,
        Duration::from_secs(1),
    )]))
    .clock(clock.clone())
    .max_keys(1000)
    .build()
    .unwrap();
    for i in 0..1000u32 {
        let ip = std::net::Ipv4Addr::from(i).into();
        assert!(
            l.check_local(&RequestInfo::new("GET", "/").ip(ip))
                .unwrap()
                .is_allowed()
        );
    }
    assert_eq!(l.keys_in_memory(), 1000);
    let e = l
        .check_local(&RequestInfo::new("GET", "/").ip("10.0.0.1".parse().unwrap()))
        .unwrap_err();
    assert!(matches!(e, Error::StoreFull { max_keys: 1000, .. }), "{e}");
    // Once keys are back to full capacity they are swept automatically by the next new key.
    clock.advance(Duration::from_secs(2));
    assert!(
        l.check_local(&RequestInfo::new("GET", "/").ip("10.0.0.1".parse().unwrap()))
            .unwrap()
            .is_allowed()
    );
    assert_eq!(l.keys_in_memory(), 1);
}

#[test]
fn ipv6_clients_are_keyed_by_their_64_prefix() {
    let (l, _c) = limiter(vec![Rule::new(
        "ip",
        Scope::Ip,
        Algorithm::FixedWindow,
        2,
        MIN,
    )]);
    for host in ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::9"] {
        let d = l
            .check_local(&RequestInfo::new("GET", "/").ip(host.parse().unwrap()))
            .unwrap();
        if host.ends_with("::9") {
            assert!(!d.is_allowed(), "same /64 shares the limit");
        }
    }
    assert!(
        l.check_local(&RequestInfo::new("GET", "/").ip("2001:db8:1:3::1".parse().unwrap()))
            .unwrap()
            .is_allowed()
    );
}

#[test]
fn python_default_rules_round_trip_as_data() {
    let set = RuleSet::python_defaults();
    set.validate().unwrap();
    let json = serde_json::to_string(&set).unwrap();
    let back: RuleSet = serde_json::from_str(&json).unwrap();
    assert_eq!(back, set);
    let ids: Vec<&str> = set.rules.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        ["global", "tenant", "user", "ip", "api_key", "analytics"]
    );
    let (l, _c) = (
        Limiter::builder(set)
            .clock(ManualClock::new(T0))
            .build()
            .unwrap(),
        (),
    );
    let req = RequestInfo::new("GET", "/api/v1/analytics/daily")
        .tenant("acme")
        .user("u1")
        .ip("203.0.113.7".parse().unwrap())
        .api_key("sk_live_x");
    let d = l.check_local(&req).unwrap();
    assert_eq!(d.rules.len(), 6);
    let a = d.rules.iter().find(|r| &*r.rule == "analytics").unwrap();
    assert_eq!((a.cost, a.remaining), (5, 95));
    for _ in 0..19 {
        assert!(l.check_local(&req).unwrap().is_allowed());
    }
    let d = l.check_local(&req).unwrap();
    assert_eq!(d.rule.as_deref(), Some("analytics"));
    assert!(!d.is_allowed());
}

#[test]
fn bad_rule_files_get_errors_that_say_what_to_fix() {
    let e = serde_json::from_str::<RuleSet>(r#"{"rules":[{"id":"a","scope":"user","algorithm":"gcra","limit":5,"window":"5 fortnights"}]}"#)
        .unwrap_err();
    assert!(e.to_string().contains("5 fortnights"), "{e}");
    let dup = RuleSet::new(vec![
        Rule::new("a", Scope::User, Algorithm::Gcra, 1, MIN),
        Rule::new("a", Scope::Ip, Algorithm::Gcra, 1, MIN),
    ]);
    assert!(
        dup.validate()
            .unwrap_err()
            .to_string()
            .contains("duplicate rule id")
    );
    let bad_path = RuleSet::new(vec![
        Rule::new("a", Scope::User, Algorithm::Gcra, 1, MIN).path("/a/*/b"),
    ]);
    assert!(
        bad_path
            .validate()
            .unwrap_err()
            .to_string()
            .contains("/a/*/b")
    );
    let over = RuleSet::new(vec![
        Rule::new("a", Scope::User, Algorithm::Gcra, 4, MIN).cost(5),
    ]);
    assert!(
        over.validate()
            .unwrap_err()
            .to_string()
            .contains("cost 5 exceeds")
    );
}

#[test]
fn api_keys_are_stored_as_sha256_prefixes_only() {
    use finsight_ratelimit::rule::key_material;
    // python3 -c "import hashlib; print(hashlib.sha256(b'sk_live_123').hexdigest()[:16])"
    let k = key_material("sk_live_123").to_string();
    assert_eq!(k, "46e8faffd30e95ea");
    let (l, _c) = limiter(vec![Rule::new("k", Scope::ApiKey, Algorithm::Gcra, 3, MIN)]);
    let d = l
        .check_local(&RequestInfo::new("GET", "/").api_key("sk_live_123"))
        .unwrap();
    assert_eq!(d.rules[0].key.to_string(), k);
    assert!(!format!("{d:?}").contains("sk_live_123"));
}
