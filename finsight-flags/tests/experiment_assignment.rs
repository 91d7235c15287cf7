//! Assignment through the flag engine: same buckets, same sticky behaviour,
//! exposure records that the analysis consumes.
#![cfg(feature = "experiments")]

use std::sync::{Arc, Mutex};

use chrono::{Duration, TimeZone, Utc};
use finsight_flags::experiment::{
    Enrollment, Experiment, ExperimentAssigner, ExperimentError, ExposureRecord, MetricEvent,
    NotEnrolled, Outcome, UnitKind, Verdict, sample_ratio_mismatch,
};
use finsight_flags::{
    BoxError, EvaluationContext, ExposureBuffer, ExposureEvent, ExposureSink, FlagEngine, FlagSet,
    ManualClock, Reason, Unit, bucket,
};
use serde_json::{Value, json};

fn flag(weights: (u32, u32), sticky: bool) -> Value {
    json!({
        "key": "checkout-redesign", "flag_type": "multivariate", "status": "active",
        "default_value": "current", "sticky_bucketing": sticky, "track_exposure": true,
        "variants": [
            {"id": "control", "value": "current", "weight": weights.0, "is_control": true},
            {"id": "one-page", "value": "one-page", "weight": weights.1}
        ]
    })
}

fn flag_set(flags: Value) -> FlagSet {
    FlagSet::from_json(&flags.to_string())
        .unwrap()
        .strict()
        .unwrap()
}

fn experiment() -> Experiment {
    Experiment::from_json(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/experiments/checkout.json"
        ))
        .unwrap(),
    )
    .unwrap()
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap(),
    ))
}

fn user(i: usize) -> EvaluationContext {
    EvaluationContext::new().user_id(format!("user-{i}"))
}

#[test]
fn assignment_uses_the_flag_engines_buckets() {
    let engine = FlagEngine::new(flag_set(json!([flag((50, 50), false)])));
    let assigner = ExperimentAssigner::new(experiment(), engine.clone()).unwrap();
    let mut seen = [0_u32; 2];
    for i in 0..2_000 {
        let ctx = user(i);
        let eval = engine.evaluate("checkout-redesign", &ctx, Value::Null);
        match assigner.assign(&ctx) {
            Enrollment::Enrolled {
                variant_index,
                value,
                exposure,
            } => {
                assert_eq!(Some(exposure.variant.as_str()), eval.variant.as_deref());
                assert_eq!(value, eval.value);
                let id = format!("user-{i}");
                assert_eq!(
                    exposure.bucket,
                    Some(bucket("checkout-redesign", Unit::User(&id)))
                );
                // Multivariate walk over weights 50/50: buckets 0..=49 → control.
                let expected = if exposure.bucket.unwrap() < 50 { 0 } else { 1 };
                assert_eq!(variant_index, expected, "user-{i}");
                assert_eq!(exposure.unit_kind, UnitKind::User);
                assert_eq!(exposure.unit_id, id);
                assert_eq!(exposure.experiment, "checkout-redesign");
                seen[variant_index] += 1;
            }
            other => panic!("user-{i}: {other:?}"),
        }
    }
    assert!(seen[0] > 900 && seen[1] > 900, "{seen:?}");
}

#[test]
fn tenant_is_the_unit_without_a_user_id() {
    let engine = FlagEngine::new(flag_set(json!([flag((50, 50), false)])));
    let assigner = ExperimentAssigner::new(experiment(), engine).unwrap();
    let ctx = EvaluationContext::new().tenant_id("acme");
    let Enrollment::Enrolled { exposure, .. } = assigner.assign(&ctx) else {
        panic!("not enrolled")
    };
    assert_eq!(exposure.unit_kind, UnitKind::Tenant);
    assert_eq!(exposure.unit_id, "acme");
    assert_eq!(
        exposure.bucket,
        Some(bucket("checkout-redesign", Unit::Tenant("acme")))
    );
}

#[test]
fn sticky_assignment_survives_a_weight_change() {
    let engine = FlagEngine::new(flag_set(json!([flag((50, 50), true)])));
    let assigner = ExperimentAssigner::new(experiment(), engine.clone()).unwrap();
    let first: Vec<Option<String>> = (0..500)
        .map(|i| assigner.assign(&user(i)).variant().map(str::to_owned))
        .collect();
    assert!(first.iter().any(|v| v.as_deref() == Some("one-page")));

    // Traffic to the treatment is cut to 10 %: the flag no longer fits the
    // planned split (the check says so), but enrolled users keep their variant.
    engine.replace(flag_set(json!([flag((90, 10), true)])));
    assert!(matches!(
        assigner.check_flag(),
        Err(ExperimentError::FlagMismatch { .. })
    ));
    for (i, before) in first.iter().enumerate() {
        assert_eq!(
            assigner.assign(&user(i)).variant().map(str::to_owned),
            *before,
            "user-{i}"
        );
    }
    // A new user is bucketed with the new weights.
    let newcomers = (10_000..12_000)
        .filter(|&i| assigner.assign(&user(i)).variant() == Some("one-page"))
        .count();
    assert!(newcomers < 400, "{newcomers}");
}

#[test]
fn without_sticky_bucketing_a_weight_change_moves_users() {
    let engine = FlagEngine::new(flag_set(json!([flag((50, 50), false)])));
    let assigner = ExperimentAssigner::new(experiment(), engine.clone()).unwrap();
    let first: Vec<_> = (0..500)
        .map(|i| assigner.assign(&user(i)).variant().map(str::to_owned))
        .collect();
    engine.replace(flag_set(json!([flag((90, 10), false)])));
    let moved = (0..500)
        .filter(|&i| assigner.assign(&user(i)).variant().map(str::to_owned) != first[i])
        .count();
    assert!(moved > 100, "{moved}");
}

#[test]
fn units_the_flag_does_not_serve_are_not_enrolled() {
    let mut killed = flag((50, 50), false);
    killed["kill_switch"] = json!(true);
    let engine = FlagEngine::new(flag_set(json!([killed])));
    let assigner = ExperimentAssigner::new(experiment(), engine.clone()).unwrap();
    assert_eq!(
        assigner.assign(&user(1)),
        Enrollment::NotEnrolled(NotEnrolled::Flag(Reason::KillSwitchActive))
    );

    let mut targeted = flag((50, 50), false);
    targeted["targeting_rules"] =
        json!([{"rule_type": "subscription_tier", "operator": "in", "values": ["pro"]}]);
    engine.replace(flag_set(json!([targeted])));
    assert_eq!(
        assigner.assign(&user(1).subscription_tier("free")),
        Enrollment::NotEnrolled(NotEnrolled::Flag(Reason::TargetingNotMatched))
    );
    assert!(
        assigner
            .assign(&user(1).subscription_tier("pro"))
            .variant()
            .is_some()
    );

    engine.replace(flag_set(json!([flag((50, 50), false)])));
    assert_eq!(
        assigner.assign(&EvaluationContext::new()),
        Enrollment::NotEnrolled(NotEnrolled::Flag(Reason::MissingBucketingKey))
    );

    let mut draft = flag((50, 50), false);
    draft["status"] = json!("draft");
    engine.replace(flag_set(json!([draft])));
    assert!(matches!(
        assigner.assign(&user(1)),
        Enrollment::NotEnrolled(NotEnrolled::Flag(Reason::FlagStatus(_)))
    ));
}

#[test]
fn a_variant_outside_the_experiment_is_not_enrolled() {
    let mut f = flag((50, 50), false);
    f["variants"][1]["id"] = json!("surprise");
    let engine = FlagEngine::new(flag_set(json!([flag((50, 50), false)])));
    let assigner = ExperimentAssigner::new(experiment(), engine.clone()).unwrap();
    engine.replace(flag_set(json!([f])));
    let outcomes: Vec<_> = (0..200).map(|i| assigner.assign(&user(i))).collect();
    assert!(outcomes.contains(&Enrollment::NotEnrolled(
        NotEnrolled::VariantNotInExperiment("surprise".into())
    )));
    assert!(outcomes.iter().any(|o| o.variant() == Some("control")));
}

#[test]
fn the_flag_must_fit_the_experiment() {
    let exp = experiment();
    let cases: Vec<(Value, &str)> = vec![
        (json!([]), "no flag"),
        (json!([flag((60, 40), false)]), "60%"),
        (
            json!([{"key": "checkout-redesign", "flag_type": "boolean", "status": "active"}]),
            "multivariate",
        ),
        (
            {
                let mut f = flag((50, 50), false);
                f["variants"][1]["id"] = json!("two-page");
                json!([f])
            },
            "two-page",
        ),
        (
            {
                let mut f = flag((50, 50), false);
                f["variants"][0]["is_control"] = json!(false);
                f["variants"][1]["is_control"] = json!(true);
                json!([f])
            },
            "control",
        ),
    ];
    for (flags, needle) in cases {
        let engine = FlagEngine::new(flag_set(flags.clone()));
        match ExperimentAssigner::new(exp.clone(), engine) {
            Err(e @ ExperimentError::FlagMismatch { .. }) => {
                assert!(
                    e.to_string().contains(needle),
                    "{e} should mention {needle}"
                )
            }
            other => panic!("{flags}: {other:?}"),
        }
    }
    // Weights on another scale with the same split fit (flag weights are relative).
    let mut f = flag((50, 50), false);
    f["variants"][0]["weight"] = json!(30);
    f["variants"][1]["weight"] = json!(30);
    f["variants"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "off", "value": "x", "weight": 0}));
    assert!(
        exp.check_flag(flag_set(json!([f])).get("checkout-redesign").unwrap())
            .is_ok()
    );
}

/// Assign 20,000 users, let the treatment convert more, and analyse: the
/// split passes the SRM check and the primary metric improves.
#[test]
fn assignment_to_analysis_end_to_end() {
    let clock = clock();
    let engine = FlagEngine::builder()
        .flags(flag_set(json!([flag((50, 50), true)])))
        .clock(clock.clone())
        .build();
    let exp = experiment();
    let assigner = ExperimentAssigner::new(exp.clone(), engine)
        .unwrap()
        .with_clock(clock.clone());
    let mut exposures: Vec<ExposureRecord> = Vec::new();
    let mut events = Vec::new();
    for i in 0..20_000 {
        clock.advance(Duration::milliseconds(10));
        let Enrollment::Enrolled { exposure, .. } = assigner.assign(&user(i)) else {
            panic!("user-{i} not enrolled")
        };
        // A deterministic "random" draw per user (splitmix64).
        let mut z = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        let u = (z ^ (z >> 31)) as f64 / u64::MAX as f64;
        let rate = if exposure.variant == "control" {
            0.10
        } else {
            0.13
        };
        if u < rate {
            events.push(MetricEvent {
                unit_kind: UnitKind::User,
                unit_id: exposure.unit_id.clone(),
                metric: "purchase".into(),
                value: 1.0,
                timestamp: exposure.timestamp + Duration::minutes(5),
            });
            events.push(MetricEvent {
                unit_kind: UnitKind::User,
                unit_id: exposure.unit_id.clone(),
                metric: "order_value".into(),
                value: 40.0 + 100.0 * u,
                timestamp: exposure.timestamp + Duration::minutes(5),
            });
        }
        // Exposed again later: still one unit.
        exposures.push(exposure.clone());
        exposures.push(ExposureRecord {
            timestamp: exposure.timestamp + Duration::hours(1),
            ..exposure
        });
    }
    let data = exp.aggregate(&exposures, &events).unwrap();
    assert_eq!(data.units().iter().sum::<u64>(), 20_000);
    assert_eq!(data.conflicting_units(), 0);
    assert_eq!(data.ignored_events(), 0);
    let analysis = exp.analyze(&data).unwrap();
    let srm = analysis.sample_ratio.complete().unwrap();
    assert!(!srm.mismatch, "{srm:?}");
    let primary = analysis.primary().unwrap();
    assert_eq!(primary.metric, "purchase");
    assert_eq!(primary.comparisons.len(), 1);
    assert_eq!(primary.comparisons[0].variant, "one-page");
    assert_eq!(primary.comparisons[0].verdict, Verdict::Improvement);
    let lift = primary.comparisons[0].test.absolute_lift().unwrap();
    let ci = lift.confidence_interval.unwrap();
    assert!(ci.contains(0.03), "{lift:?}");
    // SRM on the raw exposure events (two per user) would be the same split,
    // doubled: the check must run on units, which aggregate does.
    let doubled: Vec<u64> = data.units().iter().map(|n| n * 2).collect();
    assert!(matches!(
        sample_ratio_mismatch(&doubled, &[50.0, 50.0], 0.001).unwrap(),
        Outcome::Complete(_)
    ));
}

#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<ExposureEvent>>>);

impl ExposureSink for Collect {
    async fn export(&self, batch: Vec<ExposureEvent>) -> Result<(), BoxError> {
        self.0.lock().unwrap().extend(batch);
        Ok(())
    }
}

#[tokio::test]
async fn engine_exposure_events_become_exposure_records() {
    let sink = Collect::default();
    let (buffer, task) = ExposureBuffer::spawn(sink.clone(), 1_000, 100).unwrap();
    let engine = FlagEngine::builder()
        .flags(flag_set(json!([flag((50, 50), false)])))
        .clock(clock())
        .exposure(buffer)
        .build();
    let exp = experiment();
    let assigner = ExperimentAssigner::new(exp.clone(), engine.clone())
        .unwrap()
        .with_clock(clock());
    let direct: Vec<ExposureRecord> = (0..50)
        .filter_map(|i| match assigner.assign(&user(i)) {
            Enrollment::Enrolled { exposure, .. } => Some(exposure),
            Enrollment::NotEnrolled(_) => None,
        })
        .collect();
    // An evaluation without a unit is exposed too, but is no experiment record.
    engine.evaluate("checkout-redesign", &EvaluationContext::new(), Value::Null);
    drop(assigner);
    drop(engine);
    task.await.unwrap();
    let events = sink.0.lock().unwrap().clone();
    assert_eq!(events.len(), 51);
    let from_events: Vec<ExposureRecord> = events
        .iter()
        .filter_map(|e| exp.exposure_from_event(e))
        .collect();
    assert_eq!(from_events.len(), 50);
    for (a, b) in direct.iter().zip(&from_events) {
        assert_eq!(
            (&a.variant, &a.unit_id, a.unit_kind, a.timestamp),
            (&b.variant, &b.unit_id, b.unit_kind, b.timestamp)
        );
    }
}
