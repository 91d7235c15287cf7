//! An experiment running on two service instances that share sticky
//! assignments through the real Redis: a user keeps their variant on the
//! other instance after the flag's weights change there, and the analysis
//! counts every user once.
#![cfg(all(feature = "experiments", feature = "redis"))]

use std::time::Duration;

use finsight_flags::experiment::{Enrollment, Experiment, ExperimentAssigner, ExposureRecord};
use finsight_flags::redis::RedisStickyStore;
use finsight_flags::{EvaluationContext, FlagEngine, FlagSet};
use finsight_testkit::{redis_url, unique};
use serde_json::json;

fn flags(key: &str, weights: [u32; 2]) -> FlagSet {
    let json = json!([{
        "key": key, "flag_type": "multivariate", "status": "active", "sticky_bucketing": true,
        "default_value": "old",
        "variants": [
            {"id": "control", "value": "old", "weight": weights[0], "is_control": true},
            {"id": "new", "value": "new", "weight": weights[1]}
        ]
    }]);
    FlagSet::from_json(&json.to_string())
        .unwrap()
        .strict()
        .unwrap()
}

fn experiment(flag: &str) -> Experiment {
    Experiment::from_json(
        &json!({
            "key": format!("{flag}-exp"), "name": "Shared", "hypothesis": "new converts more",
            "flag_key": flag,
            "variants": [{"id": "control", "allocation": 50, "is_control": true},
                         {"id": "new", "allocation": 50}],
            "metrics": [{"key": "buy", "metric_type": "conversion", "goal": "increase", "primary": true}],
            "minimum_detectable_effect": {"relative": 0.1}
        })
        .to_string(),
    )
    .unwrap()
}

fn record(e: Enrollment) -> ExposureRecord {
    match e {
        Enrollment::Enrolled { exposure, .. } => exposure,
        other => panic!("not enrolled: {other:?}"),
    }
}

#[tokio::test]
async fn assignments_stick_across_instances_through_redis() {
    let flag = unique("exp-sticky");
    let prefix = format!("{}:user_buckets:", unique("t"));
    let store_a = RedisStickyStore::builder(redis_url())
        .prefix(prefix.clone())
        .build()
        .unwrap();
    let store_b = RedisStickyStore::builder(redis_url())
        .prefix(prefix)
        .build()
        .unwrap();
    let engine_a = FlagEngine::builder()
        .flags(flags(&flag, [50, 50]))
        .sticky_store(store_a.clone())
        .build();
    let engine_b = FlagEngine::builder()
        .flags(flags(&flag, [50, 50]))
        .sticky_store(store_b.clone())
        .build();
    let exp = experiment(&flag);
    let on_a = ExperimentAssigner::new(exp.clone(), engine_a).unwrap();
    let on_b = ExperimentAssigner::new(exp.clone(), engine_b.clone()).unwrap();

    let users: Vec<EvaluationContext> = (0..200)
        .map(|i| EvaluationContext::new().user_id(format!("user-{i}")))
        .collect();
    let mut exposures: Vec<ExposureRecord> = users.iter().map(|u| record(on_a.assign(u))).collect();
    for _ in 0..200 {
        if store_a.stats().written >= 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        store_a.stats().written,
        200,
        "write-behind did not finish within 5 s"
    );

    // Instance B gets a flag update that ramps the treatment down to 10 %.
    engine_b.replace(flags(&flag, [90, 10]));
    let mut would_move = 0;
    for (u, first) in users.iter().zip(exposures.clone()) {
        let b = finsight_flags::bucket(&flag, u.unit().unwrap());
        if first.variant == "new" && b < 90 {
            would_move += 1;
        }
        engine_b.preload(u).await.unwrap();
        let again = record(on_b.assign(u));
        assert_eq!(
            again.variant, first.variant,
            "{} moved between instances",
            first.unit_id
        );
        exposures.push(again);
    }
    assert!(
        would_move > 50,
        "the ramp should matter for many users ({would_move})"
    );
    assert_eq!(store_b.stats().preload_failures, 0);

    let data = exp.aggregate(&exposures, &[]).unwrap();
    assert_eq!(data.units().iter().sum::<u64>(), 200);
    assert_eq!(data.conflicting_units(), 0);
}
