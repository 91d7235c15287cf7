//! Experiment definitions: loading, validation errors naming the field, planning.
#![cfg(feature = "experiments")]

use finsight_flags::experiment::{
    Experiment, ExperimentError, Goal, MetricType, MinimumDetectableEffect, PowerAnalysis,
};
use serde_json::{Value, json};

fn checkout_json() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/experiments/checkout.json"
    ))
    .unwrap()
}

fn checkout_value() -> Value {
    serde_json::from_str(&checkout_json()).unwrap()
}

#[track_caller]
fn field_of(result: Result<Experiment, ExperimentError>) -> String {
    match result {
        Err(ExperimentError::InvalidDefinition {
            field,
            experiment,
            message,
        }) => {
            assert!(!message.is_empty());
            assert!(!experiment.is_empty());
            field
        }
        other => panic!("expected InvalidDefinition, got {other:?}"),
    }
}

#[test]
fn valid_definition_loads_from_json() {
    let exp = Experiment::from_json(&checkout_json()).unwrap();
    assert_eq!(exp.key(), "checkout-redesign");
    assert_eq!(exp.flag_key(), "checkout-redesign");
    assert_eq!(exp.control().id, "control");
    assert_eq!(exp.control_index(), 0);
    assert_eq!(exp.variants().len(), 2);
    assert_eq!(exp.primary_metric().key, "purchase");
    assert_eq!(exp.primary_metric().metric_type, MetricType::Conversion);
    assert_eq!(exp.metrics()[2].goal, Goal::Decrease);
    assert_eq!(exp.metric_index("order_value"), Some(1));
    assert_eq!(exp.significance_level(), 0.05);
    assert_eq!(
        exp.definition().minimum_detectable_effect,
        MinimumDetectableEffect::Relative(0.1)
    );
    // Round trip through serde keeps the definition.
    let again = serde_json::to_string(exp.definition()).unwrap();
    assert_eq!(Experiment::from_json(&again).unwrap(), exp);
}

#[test]
fn defaults_for_alpha_and_power() {
    let mut v = checkout_value();
    v.as_object_mut().unwrap().remove("significance_level");
    v.as_object_mut().unwrap().remove("power");
    let exp = Experiment::from_json(&v.to_string()).unwrap();
    assert_eq!(exp.definition().significance_level, 0.05);
    assert_eq!(exp.definition().power, 0.8);
}

#[test]
fn invalid_definitions_name_the_field() {
    type Edit = fn(&mut Value);
    let cases: Vec<(&str, Edit)> = vec![
        ("key", |v| v["key"] = json!("")),
        ("name", |v| v["name"] = json!(" ")),
        ("hypothesis", |v| v["hypothesis"] = json!("")),
        ("flag_key", |v| v["flag_key"] = json!("")),
        ("variants", |v| {
            v["variants"].as_array_mut().unwrap().truncate(1);
            v["variants"][0]["allocation"] = json!(100);
        }),
        ("variants", |v| v["variants"][1]["allocation"] = json!(49)),
        ("variants", |v| v["variants"][1]["is_control"] = json!(true)),
        ("variants", |v| {
            v["variants"][0]["is_control"] = json!(false)
        }),
        ("variants[1].allocation", |v| {
            v["variants"][0]["allocation"] = json!(100);
            v["variants"][1]["allocation"] = json!(0);
        }),
        ("variants[0].allocation", |v| {
            v["variants"][0]["allocation"] = json!(150)
        }),
        ("variants[1].id", |v| {
            v["variants"][1]["id"] = json!("control")
        }),
        ("variants[1].id", |v| v["variants"][1]["id"] = json!("")),
        ("metrics", |v| v["metrics"] = json!([])),
        ("metrics", |v| v["metrics"][0]["primary"] = json!(false)),
        ("metrics", |v| v["metrics"][1]["primary"] = json!(true)),
        ("metrics[2].key", |v| {
            v["metrics"][2]["key"] = json!("purchase")
        }),
        ("metrics[0].baseline", |v| {
            v["metrics"][0]["baseline"] = json!(1.5)
        }),
        ("metrics[0].standard_deviation", |v| {
            v["metrics"][0]["standard_deviation"] = json!(1.0)
        }),
        ("metrics[1].standard_deviation", |v| {
            v["metrics"][1]["standard_deviation"] = json!(-3.0)
        }),
        ("significance_level", |v| {
            v["significance_level"] = json!(1.0)
        }),
        ("significance_level", |v| {
            v["significance_level"] = json!(0.0)
        }),
        ("power", |v| v["power"] = json!(1.2)),
        ("minimum_detectable_effect", |v| {
            v["minimum_detectable_effect"] = json!({"absolute": 0.0})
        }),
        ("minimum_detectable_effect", |v| {
            v["minimum_detectable_effect"] = json!({"relative": -1.0})
        }),
        // Shape errors come from the parser, with the path it stopped at.
        ("power", |v| v["power"] = json!("high")),
        ("variants[1].allocation", |v| {
            v["variants"][1]["allocation"] = json!("half")
        }),
        ("metrics[0].metric_type", |v| {
            v["metrics"][0]["metric_type"] = json!("ratio")
        }),
    ];
    for (expected, edit) in cases {
        let mut v = checkout_value();
        edit(&mut v);
        let field = field_of(Experiment::from_json(&v.to_string()));
        assert_eq!(field, expected, "definition {v}");
    }
}

#[test]
fn error_message_says_what_to_fix() {
    let mut v = checkout_value();
    v["variants"][1]["allocation"] = json!(40);
    let err = Experiment::from_json(&v.to_string())
        .unwrap_err()
        .to_string();
    assert!(err.contains("checkout-redesign"), "{err}");
    assert!(err.contains("sum to 90"), "{err}");
    assert!(err.contains("must sum to 100"), "{err}");
}

#[test]
fn fractional_allocations_summing_to_100_are_accepted() {
    let mut v = checkout_value();
    v["variants"] = json!([
        {"id": "a", "allocation": 33.3, "is_control": true},
        {"id": "b", "allocation": 33.3},
        {"id": "c", "allocation": 33.4}
    ]);
    let exp = Experiment::from_json(&v.to_string()).unwrap();
    assert_eq!(exp.variants().len(), 3);
}

#[test]
fn sample_size_plans_the_primary_metric() {
    let exp = Experiment::from_json(&checkout_json()).unwrap();
    let plan = exp.sample_size().unwrap();
    let direct = PowerAnalysis::new(0.05, 0.8)
        .unwrap()
        .sample_size_proportions(0.1, MinimumDetectableEffect::Relative(0.1))
        .unwrap();
    assert_eq!(plan.variants[0].id, "control");
    assert_eq!(plan.variants[0].units, direct.control);
    assert_eq!(plan.variants[1].units, direct.treatment);
    assert_eq!(plan.total_units, 2 * direct.control);
    // 10 % → 11 %, alpha 0.05, power 0.8: 14,751 per arm (statsmodels gives 14750.8).
    assert_eq!(direct.control, 14_751);
}

#[test]
fn sample_size_with_unequal_allocation_and_three_arms() {
    let mut v = checkout_value();
    v["variants"] = json!([
        {"id": "control", "allocation": 50, "is_control": true},
        {"id": "b", "allocation": 25},
        {"id": "c", "allocation": 25}
    ]);
    let exp = Experiment::from_json(&v.to_string()).unwrap();
    let plan = exp.sample_size().unwrap();
    let direct = PowerAnalysis::new(0.05, 0.8)
        .unwrap()
        .with_ratio(0.5)
        .unwrap()
        .sample_size_proportions(0.1, MinimumDetectableEffect::Relative(0.1))
        .unwrap();
    assert_eq!(plan.variants[0].units, direct.control);
    assert_eq!(plan.variants[1].units, direct.treatment);
    assert_eq!(plan.variants[2].units, direct.treatment);
    // Every arm must reach its size: total = max(n_i / share_i).
    let need = [direct.control as f64 / 0.5, direct.treatment as f64 / 0.25];
    assert_eq!(
        plan.total_units,
        need.iter().cloned().fold(0.0, f64::max).ceil() as u64
    );
}

#[test]
fn sample_size_of_a_continuous_primary_metric() {
    let mut v = checkout_value();
    v["metrics"][0]["primary"] = json!(false);
    v["metrics"][1]["primary"] = json!(true);
    let exp = Experiment::from_json(&v.to_string()).unwrap();
    let plan = exp.sample_size().unwrap();
    let direct = PowerAnalysis::new(0.05, 0.8)
        .unwrap()
        .sample_size_means(80.0, 45.0, MinimumDetectableEffect::Relative(0.1))
        .unwrap();
    assert_eq!(plan.variants[1].units, direct.treatment);
    // (1.96 + 0.84)² · 45² · 2 / 8² ≈ 497
    assert_eq!(direct.control, 497);
}

#[test]
fn planning_without_a_baseline_names_the_field() {
    let mut v = checkout_value();
    v["metrics"][0].as_object_mut().unwrap().remove("baseline");
    let exp = Experiment::from_json(&v.to_string()).unwrap();
    match exp.sample_size() {
        Err(ExperimentError::InvalidDefinition { field, .. }) => {
            assert_eq!(field, "metrics[0].baseline")
        }
        other => panic!("{other:?}"),
    }
    v["metrics"][0]["primary"] = json!(false);
    v["metrics"][1]["primary"] = json!(true);
    v["metrics"][1]
        .as_object_mut()
        .unwrap()
        .remove("standard_deviation");
    let exp = Experiment::from_json(&v.to_string()).unwrap();
    match exp.sample_size() {
        Err(ExperimentError::InvalidDefinition { field, .. }) => {
            assert_eq!(field, "metrics[1].standard_deviation")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn impossible_effect_for_the_baseline_is_an_error() {
    let mut v = checkout_value();
    v["metrics"][0]["baseline"] = json!(0.95);
    let exp = Experiment::from_json(&v.to_string()).unwrap();
    match exp.sample_size() {
        Err(ExperimentError::InvalidParameter { name, .. }) => {
            assert_eq!(name, "minimum_detectable_effect")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn experiment_deserializes_only_when_valid() {
    let exp: Experiment = serde_json::from_str(&checkout_json()).unwrap();
    assert_eq!(exp, Experiment::from_json(&checkout_json()).unwrap());
    assert_eq!(
        serde_json::to_value(&exp).unwrap(),
        serde_json::to_value(exp.definition()).unwrap()
    );
    let mut v = checkout_value();
    v["power"] = json!(0.0);
    let err = serde_json::from_value::<Experiment>(v)
        .unwrap_err()
        .to_string();
    assert!(err.contains("field `power`"), "{err}");
}
