//! Every statistic of `finsight_flags::experiment` against SciPy / statsmodels.
//!
//! The reference values live in `tests/data/experiments/reference.json`,
//! written by `tests/python/experiment_reference.py` (which documents the
//! library function behind every number). Tolerances:
//! - p-values, statistics, intervals, lifts: relative 1e-9 or absolute 1e-12,
//!   whichever is looser (`close`);
//! - sample sizes: relative 1e-9 on the unrounded value, and the rounded-up
//!   value equals `ceil` of the reference.
#![cfg(feature = "experiments")]

use finsight_flags::experiment::{
    ConversionCounts, ExperimentError, InsufficientData, Interval, Lift, MinimumDetectableEffect,
    Outcome, PowerAnalysis, SampleSummary, chi_square_test, sample_ratio_mismatch,
    two_proportion_z_test, welch_t_test,
};
use serde_json::Value;

const REL: f64 = 1e-9;
const ABS: f64 = 1e-12;

fn reference() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/experiments/reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn cases(name: &str) -> Vec<Value> {
    let cases = reference()[name].as_array().unwrap().clone();
    assert!(
        cases.len() >= 10,
        "{name}: only {} reference cases",
        cases.len()
    );
    cases
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[track_caller]
fn close(what: &str, case: usize, actual: f64, expected: f64) {
    let tol = (REL * expected.abs()).max(ABS);
    assert!(
        (actual - expected).abs() <= tol,
        "case {case}: {what}: got {actual:e}, reference {expected:e} (diff {:e}, tolerance {tol:e})",
        (actual - expected).abs()
    );
}

#[track_caller]
fn close_interval(what: &str, case: usize, actual: Option<Interval>, expected: &Value) {
    if expected.is_null() {
        assert!(
            actual.is_none(),
            "case {case}: {what}: expected no interval, got {actual:?}"
        );
        return;
    }
    let actual =
        actual.unwrap_or_else(|| panic!("case {case}: {what}: no interval, reference {expected}"));
    close(
        &format!("{what}.lower"),
        case,
        actual.lower,
        num(&expected[0]),
    );
    close(
        &format!("{what}.upper"),
        case,
        actual.upper,
        num(&expected[1]),
    );
}

#[track_caller]
fn close_lift(what: &str, case: usize, actual: Option<Lift>, estimate: &Value, ci: &Value) {
    if estimate.is_null() {
        assert!(
            actual.is_none(),
            "case {case}: {what}: expected none, got {actual:?}"
        );
        return;
    }
    let actual =
        actual.unwrap_or_else(|| panic!("case {case}: {what}: missing, reference {estimate}"));
    close(what, case, actual.estimate, num(estimate));
    close_interval(
        &format!("{what} interval"),
        case,
        actual.confidence_interval,
        ci,
    );
}

fn mde(v: &Value) -> MinimumDetectableEffect {
    if let Some(a) = v.get("absolute") {
        MinimumDetectableEffect::Absolute(num(a))
    } else {
        MinimumDetectableEffect::Relative(num(&v["relative"]))
    }
}

#[track_caller]
fn expect_param_error<T: std::fmt::Debug>(
    case: usize,
    result: Result<T, ExperimentError>,
    field: &str,
) {
    match result {
        Err(ExperimentError::InvalidParameter { name, .. }) => {
            assert_eq!(name, field, "case {case}: wrong parameter named")
        }
        other => panic!("case {case}: expected an error naming `{field}`, got {other:?}"),
    }
}

#[track_caller]
fn expect_insufficient<T: std::fmt::Debug>(case: usize, outcome: &Outcome<T>, expected: &Value) {
    let reason = expected["insufficient"].as_str().unwrap();
    let got = outcome.insufficient().unwrap_or_else(|| {
        panic!("case {case}: expected insufficient data ({reason}), got {outcome:?}")
    });
    let variant = expected
        .get("variant")
        .and_then(Value::as_u64)
        .map(|v| v as usize);
    match (reason, got) {
        ("empty_variant", InsufficientData::EmptyVariant { variant: v }) => {
            assert_eq!(Some(*v), variant, "case {case}")
        }
        ("too_few_observations", InsufficientData::TooFewObservations { variant: v, .. }) => {
            assert_eq!(Some(*v), variant, "case {case}")
        }
        ("no_variation", InsufficientData::NoVariation)
        | ("no_units", InsufficientData::NoUnits) => {}
        _ => panic!("case {case}: expected {reason}, got {got:?}"),
    }
}

#[track_caller]
fn check_ceil(case: usize, rounded: u64, exact_reference: f64) {
    let c = exact_reference.ceil();
    // Only when the reference is not within rounding noise of an integer.
    if (exact_reference - exact_reference.round()).abs() > 1e-6 {
        assert_eq!(
            rounded as f64,
            c.max(1.0),
            "case {case}: rounded sample size"
        );
    }
}

#[test]
fn sample_size_proportions_matches_statsmodels() {
    let mut valid = 0;
    for (i, case) in cases("sample_size_proportions").iter().enumerate() {
        let exp = &case["expected"];
        let result = PowerAnalysis::new(num(&case["alpha"]), num(&case["power"]))
            .and_then(|p| p.with_ratio(num(&case["ratio"])))
            .and_then(|p| p.sample_size_proportions(num(&case["baseline"]), mde(&case["mde"])));
        if let Some(field) = exp.get("error") {
            expect_param_error(i, result, field.as_str().unwrap());
            continue;
        }
        let s = result.unwrap_or_else(|e| panic!("case {i}: {e}"));
        close(
            "treatment rate",
            i,
            s.treatment_value,
            num(&exp["treatment_rate"]),
        );
        close(
            "control_exact",
            i,
            s.control_exact,
            num(&exp["control_exact"]),
        );
        close(
            "treatment_exact",
            i,
            s.treatment_exact,
            num(&exp["treatment_exact"]),
        );
        check_ceil(i, s.control, num(&exp["control_exact"]));
        check_ceil(i, s.treatment, num(&exp["treatment_exact"]));
        valid += 1;
    }
    assert!(valid >= 10);
}

#[test]
fn sample_size_means_matches_statsmodels() {
    let mut valid = 0;
    for (i, case) in cases("sample_size_means").iter().enumerate() {
        let exp = &case["expected"];
        let result = PowerAnalysis::new(num(&case["alpha"]), num(&case["power"]))
            .and_then(|p| p.with_ratio(num(&case["ratio"])))
            .and_then(|p| {
                p.sample_size_means(
                    num(&case["baseline_mean"]),
                    num(&case["std_dev"]),
                    mde(&case["mde"]),
                )
            });
        if let Some(field) = exp.get("error") {
            expect_param_error(i, result, field.as_str().unwrap());
            continue;
        }
        let s = result.unwrap_or_else(|e| panic!("case {i}: {e}"));
        close(
            "treatment mean",
            i,
            s.treatment_value,
            num(&exp["treatment_mean"]),
        );
        close(
            "control_exact",
            i,
            s.control_exact,
            num(&exp["control_exact"]),
        );
        close(
            "treatment_exact",
            i,
            s.treatment_exact,
            num(&exp["treatment_exact"]),
        );
        check_ceil(i, s.control, num(&exp["control_exact"]));
        check_ceil(i, s.treatment, num(&exp["treatment_exact"]));
        // The closed form ignores the far tail: never below the exact root of
        // the two-sided power function, and close to it.
        if let Some(both) = exp["both_tails_exact"].as_f64() {
            assert!(
                s.control_exact >= both - 1e-6,
                "case {i}: {} < {both}",
                s.control_exact
            );
            assert!(
                s.control_exact <= both * 1.02,
                "case {i}: {} vs {both}",
                s.control_exact
            );
        }
        valid += 1;
    }
    assert!(valid >= 10);
}

#[test]
fn two_proportion_z_test_matches_statsmodels() {
    let mut complete = 0;
    for (i, case) in cases("two_proportion").iter().enumerate() {
        let counts = |v: &Value| {
            ConversionCounts::new(
                v["units"].as_u64().unwrap(),
                v["conversions"].as_u64().unwrap(),
            )
        };
        let exp = &case["expected"];
        let outcome = two_proportion_z_test(
            counts(&case["control"]),
            counts(&case["treatment"]),
            num(&case["alpha"]),
        )
        .unwrap();
        if exp.get("insufficient").is_some() {
            expect_insufficient(i, &outcome, exp);
            continue;
        }
        let r = outcome
            .complete()
            .unwrap_or_else(|| panic!("case {i}: {outcome:?}"));
        close("z", i, r.z, num(&exp["z"]));
        close("p_value", i, r.p_value, num(&exp["p_value"]));
        assert_eq!(
            r.significant,
            exp["significant"].as_bool().unwrap(),
            "case {i}"
        );
        close("control rate", i, r.control.rate, num(&exp["control_rate"]));
        close(
            "treatment rate",
            i,
            r.treatment.rate,
            num(&exp["treatment_rate"]),
        );
        close_interval(
            "control Wilson",
            i,
            Some(r.control.confidence_interval),
            &exp["control_ci"],
        );
        close_interval(
            "treatment Wilson",
            i,
            Some(r.treatment.confidence_interval),
            &exp["treatment_ci"],
        );
        close_lift(
            "absolute lift",
            i,
            Some(r.absolute_lift),
            &exp["absolute_lift"],
            &exp["absolute_ci"],
        );
        close_lift(
            "relative lift",
            i,
            r.relative_lift,
            &exp["relative_lift"],
            &exp["relative_ci"],
        );
        complete += 1;
    }
    assert!(complete >= 10);
}

#[test]
fn chi_square_test_matches_scipy() {
    let mut complete = 0;
    for (i, case) in cases("chi_square").iter().enumerate() {
        let variants: Vec<ConversionCounts> = case["variants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                ConversionCounts::new(
                    v["units"].as_u64().unwrap(),
                    v["conversions"].as_u64().unwrap(),
                )
            })
            .collect();
        let exp = &case["expected"];
        let outcome = chi_square_test(&variants, num(&case["alpha"])).unwrap();
        if exp.get("insufficient").is_some() {
            expect_insufficient(i, &outcome, exp);
            continue;
        }
        let r = outcome
            .complete()
            .unwrap_or_else(|| panic!("case {i}: {outcome:?}"));
        close("statistic", i, r.statistic, num(&exp["statistic"]));
        close("p_value", i, r.p_value, num(&exp["p_value"]));
        assert_eq!(
            r.degrees_of_freedom,
            exp["degrees_of_freedom"].as_u64().unwrap(),
            "case {i}"
        );
        assert_eq!(
            r.significant,
            exp["significant"].as_bool().unwrap(),
            "case {i}"
        );
        assert_eq!(r.variants.len(), variants.len());
        complete += 1;
    }
    assert!(complete >= 10);
}

#[test]
fn welch_t_test_matches_scipy() {
    let mut complete = 0;
    for (i, case) in cases("welch").iter().enumerate() {
        let values = |v: &Value| -> Vec<f64> { v.as_array().unwrap().iter().map(num).collect() };
        let control = SampleSummary::from_values(&values(&case["control"])).unwrap();
        let treatment = SampleSummary::from_values(&values(&case["treatment"])).unwrap();
        let exp = &case["expected"];
        let outcome = welch_t_test(&control, &treatment, num(&case["alpha"])).unwrap();
        if exp.get("insufficient").is_some() {
            expect_insufficient(i, &outcome, exp);
            continue;
        }
        close("control mean", i, control.mean(), num(&exp["control_mean"]));
        close(
            "treatment mean",
            i,
            treatment.mean(),
            num(&exp["treatment_mean"]),
        );
        close(
            "control variance",
            i,
            control.variance(),
            num(&exp["control_variance"]),
        );
        close(
            "treatment variance",
            i,
            treatment.variance(),
            num(&exp["treatment_variance"]),
        );
        let r = outcome
            .complete()
            .unwrap_or_else(|| panic!("case {i}: {outcome:?}"));
        close("t", i, r.t, num(&exp["t"]));
        close("df", i, r.degrees_of_freedom, num(&exp["df"]));
        close("p_value", i, r.p_value, num(&exp["p_value"]));
        assert_eq!(
            r.significant,
            exp["significant"].as_bool().unwrap(),
            "case {i}"
        );
        close_lift(
            "absolute lift",
            i,
            Some(r.absolute_lift),
            &exp["absolute_lift"],
            &exp["absolute_ci"],
        );
        close_lift(
            "relative lift",
            i,
            r.relative_lift,
            &exp["relative_lift"],
            &exp["relative_ci"],
        );
        complete += 1;
    }
    assert!(complete >= 10);
}

#[test]
fn sample_ratio_mismatch_matches_scipy() {
    let mut complete = 0;
    for (i, case) in cases("srm").iter().enumerate() {
        let observed: Vec<u64> = case["observed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        let weights: Vec<f64> = case["weights"]
            .as_array()
            .unwrap()
            .iter()
            .map(num)
            .collect();
        let exp = &case["expected"];
        let outcome = sample_ratio_mismatch(&observed, &weights, num(&case["threshold"])).unwrap();
        if exp.get("insufficient").is_some() {
            expect_insufficient(i, &outcome, exp);
            continue;
        }
        let r = outcome
            .complete()
            .unwrap_or_else(|| panic!("case {i}: {outcome:?}"));
        close("statistic", i, r.statistic, num(&exp["statistic"]));
        close("p_value", i, r.p_value, num(&exp["p_value"]));
        assert_eq!(
            r.degrees_of_freedom,
            exp["degrees_of_freedom"].as_u64().unwrap(),
            "case {i}"
        );
        assert_eq!(r.mismatch, exp["mismatch"].as_bool().unwrap(), "case {i}");
        for (j, e) in exp["expected_counts"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            close("expected count", i, r.expected[j], num(e));
        }
        complete += 1;
    }
    assert!(complete >= 10);
}
