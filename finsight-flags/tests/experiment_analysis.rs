//! Aggregation of exposures and events, the whole-experiment analysis, and
//! properties of the tests that must hold for any input.
#![cfg(feature = "experiments")]

use chrono::{DateTime, Duration, TimeZone, Utc};
use finsight_flags::experiment::{
    ComparisonTest, ConversionCounts, Experiment, ExperimentData, ExperimentError, ExposureRecord,
    InsufficientData, MetricEvent, MinimumDetectableEffect, Outcome, PowerAnalysis, RunningSummary,
    SampleSummary, UnitKind, Verdict, chi_square_test, sample_ratio_mismatch,
    two_proportion_z_test, welch_t_test,
};
use proptest::prelude::*;
use serde_json::json;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()
}

fn experiment(variants: serde_json::Value) -> Experiment {
    Experiment::from_json(
        &json!({
            "key": "exp", "name": "Exp", "hypothesis": "B converts more", "flag_key": "exp-flag",
            "variants": variants,
            "metrics": [
                {"key": "buy", "metric_type": "conversion", "goal": "increase", "primary": true},
                {"key": "revenue", "metric_type": "continuous", "goal": "increase"},
                {"key": "latency", "metric_type": "continuous", "goal": "decrease"}
            ],
            "minimum_detectable_effect": {"absolute": 0.01}
        })
        .to_string(),
    )
    .unwrap()
}

fn two_arms() -> Experiment {
    experiment(json!([
        {"id": "a", "allocation": 50, "is_control": true},
        {"id": "b", "allocation": 50}
    ]))
}

fn exposure(unit: &str, variant: &str, at: DateTime<Utc>) -> ExposureRecord {
    ExposureRecord {
        experiment: "exp".into(),
        variant: variant.into(),
        unit_kind: UnitKind::User,
        unit_id: unit.into(),
        bucket: None,
        timestamp: at,
    }
}

fn event(unit: &str, metric: &str, value: f64, at: DateTime<Utc>) -> MetricEvent {
    MetricEvent {
        unit_kind: UnitKind::User,
        unit_id: unit.into(),
        metric: metric.into(),
        value,
        timestamp: at,
    }
}

#[test]
fn aggregate_counts_units_once_and_only_events_after_exposure() {
    let exp = two_arms();
    let later = t0() + Duration::minutes(1);
    let exposures = vec![
        exposure("u1", "a", t0()),
        exposure("u1", "a", later), // again: same unit
        exposure("u2", "b", later),
        exposure("u3", "b", t0()),
        exposure("u4", "a", t0()),
        exposure("u4", "b", t0()), // both variants: left out
        ExposureRecord {
            experiment: "other".into(),
            ..exposure("u5", "zzz", t0())
        },
    ];
    let events = vec![
        event("u1", "buy", 1.0, later),
        event("u1", "buy", 1.0, later), // converting twice is one conversion
        event("u1", "revenue", 10.0, later),
        event("u1", "revenue", 5.0, later), // summed per unit
        event("u2", "buy", 1.0, t0()),      // before u2's exposure: ignored
        event("u3", "revenue", 7.0, later),
        event("u4", "buy", 1.0, later),     // conflicting unit
        event("nobody", "buy", 1.0, later), // never exposed: ignored
        event("u3", "clicks", 1.0, later),  // unknown metric: ignored
    ];
    let data = exp.aggregate(&exposures, &events).unwrap();
    assert_eq!(data.units(), &[1, 2]);
    assert_eq!(data.conflicting_units(), 1);
    assert_eq!(data.ignored_events(), 3);
    assert_eq!(
        data.conversions("a", "buy"),
        Some(ConversionCounts::new(1, 1))
    );
    assert_eq!(
        data.conversions("b", "buy"),
        Some(ConversionCounts::new(2, 0))
    );
    let a_rev = data.summary("a", "revenue").unwrap();
    assert_eq!((a_rev.count(), a_rev.mean()), (1, 15.0));
    let b_rev = data.summary("b", "revenue").unwrap();
    assert_eq!(
        (b_rev.count(), b_rev.mean(), b_rev.variance()),
        (2, 3.5, 24.5)
    );
    assert_eq!(data.conversions("a", "revenue"), None);
    assert_eq!(data.summary("a", "buy"), None);
    assert_eq!(data.variant_units("b"), Some(2));
    assert_eq!(data.variant_units("zzz"), None);
}

#[test]
fn aggregate_rejects_an_unknown_variant_of_this_experiment() {
    let exp = two_arms();
    let err = exp
        .aggregate(&[exposure("u1", "c", t0())], &[])
        .unwrap_err();
    assert!(
        matches!(
            err,
            ExperimentError::Unknown {
                kind: "variant",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn add_unit_builds_the_same_data_as_aggregate() {
    let exp = two_arms();
    let exposures = vec![
        exposure("u1", "a", t0()),
        exposure("u2", "b", t0()),
        exposure("u3", "b", t0()),
    ];
    let events = vec![
        event("u1", "buy", 1.0, t0()),
        event("u2", "revenue", 3.0, t0()),
        event("u3", "buy", 1.0, t0()),
        event("u3", "latency", 120.0, t0()),
    ];
    let aggregated = exp.aggregate(&exposures, &events).unwrap();
    let mut manual = ExperimentData::new(&exp);
    manual.add_unit("a", &[("buy", 1.0)]).unwrap();
    manual.add_unit("b", &[("revenue", 3.0)]).unwrap();
    manual
        .add_unit("b", &[("buy", 1.0), ("latency", 120.0)])
        .unwrap();
    assert_eq!(manual, aggregated);
    assert!(matches!(
        manual.add_unit("c", &[]),
        Err(ExperimentError::Unknown {
            kind: "variant",
            ..
        })
    ));
    assert!(matches!(
        manual.add_unit("a", &[("x", 1.0)]),
        Err(ExperimentError::Unknown { kind: "metric", .. })
    ));
    assert!(matches!(
        manual.add_unit("a", &[("revenue", f64::NAN)]),
        Err(ExperimentError::InvalidSummary { .. })
    ));
    let before = manual.clone();
    assert!(matches!(
        manual.add_unit(
            "a",
            &[("buy", 1.0), ("revenue", f64::MAX), ("revenue", f64::MAX)]
        ),
        Err(ExperimentError::InvalidSummary { .. })
    ));
    assert_eq!(manual, before, "a rejected unit changes nothing");
    assert_eq!(manual.units(), &[1, 2]);
}

#[test]
fn analysis_of_three_arms_has_an_omnibus_test_and_verdicts() {
    let exp = experiment(json!([
        {"id": "a", "allocation": 34, "is_control": true},
        {"id": "b", "allocation": 33},
        {"id": "c", "allocation": 33}
    ]));
    let mut data = ExperimentData::new(&exp);
    // a: 10 % conversion, b: 14 %, c: 7 %; latency lower in b.
    for (variant, units, buyers, latency) in [
        ("a", 3400, 340, 200.0),
        ("b", 3300, 462, 150.0),
        ("c", 3300, 231, 200.0),
    ] {
        for i in 0..units {
            let buy = if i < buyers { 1.0 } else { 0.0 };
            let jitter = (i % 7) as f64;
            data.add_unit(
                variant,
                &[
                    ("buy", buy),
                    ("revenue", 10.0 * buy + jitter),
                    ("latency", latency + jitter),
                ],
            )
            .unwrap();
        }
    }
    let analysis = exp.analyze(&data).unwrap();
    assert!(!analysis.sample_ratio_mismatch());
    assert_eq!(analysis.metrics.len(), 3);
    let buy = analysis.primary().unwrap();
    let omnibus = buy.omnibus.as_ref().unwrap().complete().unwrap();
    assert!(omnibus.significant);
    assert_eq!(omnibus.degrees_of_freedom, 2);
    let verdicts: Vec<_> = buy
        .comparisons
        .iter()
        .map(|c| (c.variant.as_str(), c.verdict))
        .collect();
    assert_eq!(
        verdicts,
        [("b", Verdict::Improvement), ("c", Verdict::Regression)]
    );
    // The comparisons are exactly the pairwise z-tests.
    let direct = two_proportion_z_test(
        ConversionCounts::new(3400, 340),
        ConversionCounts::new(3300, 462),
        0.05,
    )
    .unwrap();
    assert_eq!(buy.comparisons[0].test, ComparisonTest::Proportions(direct));
    // Continuous metrics: Welch per treatment, no omnibus; lower latency is an improvement.
    let latency = &analysis.metrics[2];
    assert!(latency.omnibus.is_none());
    assert_eq!(latency.comparisons[0].verdict, Verdict::Improvement);
    assert_eq!(latency.comparisons[1].verdict, Verdict::Inconclusive);
    assert!(matches!(
        latency.comparisons[0].test,
        ComparisonTest::Means(Outcome::Complete(_))
    ));
}

#[test]
fn broken_assignment_is_flagged_by_the_srm_check() {
    let exp = two_arms();
    let mut data = ExperimentData::new(&exp);
    for _ in 0..5_000 {
        data.add_unit("a", &[]).unwrap();
    }
    for _ in 0..5_400 {
        data.add_unit("b", &[]).unwrap();
    }
    let analysis = exp.analyze(&data).unwrap();
    assert!(analysis.sample_ratio_mismatch());
    let srm = analysis.sample_ratio.complete().unwrap();
    assert!(srm.p_value < 0.001, "{srm:?}");
    assert_eq!(srm.expected, vec![5_200.0, 5_200.0]);
}

#[test]
fn an_empty_experiment_is_insufficient_data_not_an_error() {
    let exp = two_arms();
    let analysis = exp.analyze(&ExperimentData::new(&exp)).unwrap();
    assert_eq!(
        analysis.sample_ratio,
        Outcome::Insufficient(InsufficientData::NoUnits)
    );
    for metric in &analysis.metrics {
        assert_eq!(metric.comparisons[0].verdict, Verdict::InsufficientData);
        assert_eq!(metric.comparisons[0].test.p_value(), None);
    }
    let other = experiment(json!([
        {"id": "a", "allocation": 50, "is_control": true},
        {"id": "b", "allocation": 50}
    ]));
    let mut foreign = ExperimentData::new(&other);
    foreign.add_unit("a", &[]).unwrap();
    // Same key and shape: accepted. Different key: rejected.
    assert!(exp.analyze(&foreign).is_ok());
    let renamed = Experiment::from_json(
        &serde_json::to_string(&{
            let mut d = exp.definition().clone();
            d.key = "renamed".into();
            d
        })
        .unwrap(),
    )
    .unwrap();
    assert!(matches!(
        renamed.analyze(&foreign),
        Err(ExperimentError::DataMismatch { .. })
    ));
}

#[test]
fn invalid_inputs_are_typed_errors() {
    let c = ConversionCounts::new(10, 1);
    for alpha in [0.0, 1.0, -0.1, f64::NAN] {
        assert!(matches!(
            two_proportion_z_test(c, c, alpha),
            Err(ExperimentError::InvalidParameter { name: "alpha", .. })
        ));
        assert!(matches!(
            chi_square_test(&[c, c, c], alpha),
            Err(ExperimentError::InvalidParameter { name: "alpha", .. })
        ));
    }
    assert!(matches!(
        two_proportion_z_test(c, ConversionCounts::new(5, 6), 0.05),
        Err(ExperimentError::ConversionsExceedUnits {
            variant: 1,
            conversions: 6,
            units: 5
        })
    ));
    assert!(matches!(
        chi_square_test(&[c], 0.05),
        Err(ExperimentError::TooFewVariants { .. })
    ));
    assert!(matches!(
        sample_ratio_mismatch(&[1, 2], &[50.0], 0.001),
        Err(ExperimentError::LengthMismatch { .. })
    ));
    assert!(matches!(
        sample_ratio_mismatch(&[1, 2], &[50.0, 0.0], 0.001),
        Err(ExperimentError::InvalidParameter {
            name: "weights",
            ..
        })
    ));
    assert!(matches!(
        SampleSummary::new(3, 1.0, -1.0),
        Err(ExperimentError::InvalidSummary {
            field: "variance",
            ..
        })
    ));
    assert!(matches!(
        SampleSummary::from_values(&[1.0, f64::INFINITY]),
        Err(ExperimentError::InvalidSummary { .. })
    ));
    assert!(matches!(
        PowerAnalysis::new(0.05, 0.8).unwrap().with_ratio(-1.0),
        Err(ExperimentError::InvalidParameter { name: "ratio", .. })
    ));
    let err = PowerAnalysis::new(0.05, 1.0).unwrap_err().to_string();
    assert!(
        err.contains("power") && err.contains("between 0 and 1"),
        "{err}"
    );
}

#[test]
fn relative_and_absolute_effects_differ_as_documented() {
    let p = PowerAnalysis::new(0.05, 0.8).unwrap();
    let abs = p
        .sample_size_proportions(0.10, MinimumDetectableEffect::Absolute(0.01))
        .unwrap();
    let rel = p
        .sample_size_proportions(0.10, MinimumDetectableEffect::Relative(0.01))
        .unwrap();
    assert_eq!(abs.treatment_value, 0.11);
    assert!((rel.treatment_value - 0.101).abs() < 1e-15);
    assert!(rel.control > 90 * abs.control, "{rel:?} vs {abs:?}");
}

fn counts() -> impl Strategy<Value = ConversionCounts> {
    (1_u64..5_000)
        .prop_flat_map(|n| (Just(n), 0..=n))
        .prop_map(|(n, x)| ConversionCounts::new(n, x))
}

proptest! {
    /// With two variants the chi-square statistic is the square of the pooled z.
    #[test]
    fn chi_square_of_two_variants_is_z_squared(a in counts(), b in counts()) {
        let z = two_proportion_z_test(a, b, 0.05).unwrap();
        let chi = chi_square_test(&[a, b], 0.05).unwrap();
        match (z, chi) {
            (Outcome::Complete(z), Outcome::Complete(chi)) => {
                prop_assert!((z.z * z.z - chi.statistic).abs() <= 1e-9 * chi.statistic.max(1.0));
                prop_assert!((z.p_value - chi.p_value).abs() <= 1e-9);
            }
            (Outcome::Insufficient(x), Outcome::Insufficient(y)) => prop_assert_eq!(x, y),
            (z, chi) => prop_assert!(false, "{:?} vs {:?}", z, chi),
        }
    }

    /// p-values are probabilities, significance follows the p-value, and every
    /// interval contains its estimate (Wilson intervals inside [0, 1]).
    #[test]
    fn z_test_results_are_well_formed(a in counts(), b in counts(), alpha in 0.001_f64..0.5) {
        if let Outcome::Complete(t) = two_proportion_z_test(a, b, alpha).unwrap() {
            prop_assert!((0.0..=1.0).contains(&t.p_value));
            prop_assert_eq!(t.significant, t.p_value < alpha);
            let ci = t.absolute_lift.confidence_interval.unwrap();
            prop_assert!(ci.contains(t.absolute_lift.estimate));
            for e in [t.control, t.treatment] {
                prop_assert!(e.confidence_interval.lower >= 0.0 && e.confidence_interval.upper <= 1.0);
                prop_assert!(e.confidence_interval.contains(e.rate));
            }
            if let Some(rel) = t.relative_lift
                && let Some(ci) = rel.confidence_interval
            {
                prop_assert!(ci.contains(rel.estimate));
                prop_assert!(ci.lower >= -1.0);
            }
        }
    }

    /// Welch: the p-value falls below alpha exactly when the t interval
    /// excludes zero (both use the same t distribution).
    #[test]
    fn welch_interval_and_p_value_agree(
        xs in prop::collection::vec(-1e3_f64..1e3, 2..40),
        ys in prop::collection::vec(-1e3_f64..1e3, 2..40),
        alpha in 0.01_f64..0.2,
    ) {
        let c = SampleSummary::from_values(&xs).unwrap();
        let t = SampleSummary::from_values(&ys).unwrap();
        if let Outcome::Complete(w) = welch_t_test(&c, &t, alpha).unwrap() {
            prop_assert!((0.0..=1.0).contains(&w.p_value));
            prop_assert!(w.degrees_of_freedom >= 1.0 - 1e-9);
            prop_assert!(w.degrees_of_freedom <= (xs.len() + ys.len() - 2) as f64 + 1e-9);
            let ci = w.absolute_lift.confidence_interval.unwrap();
            let excludes_zero = ci.lower > 0.0 || ci.upper < 0.0;
            // Skip the knife edge where rounding decides.
            if (w.p_value - alpha).abs() > 1e-9 {
                prop_assert_eq!(excludes_zero, w.p_value < alpha);
            }
        }
    }

    /// The streaming summary equals the two-pass one.
    #[test]
    fn running_summary_matches_two_pass(xs in prop::collection::vec(-1e6_f64..1e6, 0..200)) {
        let mut acc = RunningSummary::new();
        for &x in &xs {
            acc.push(x).unwrap();
        }
        let s = acc.summary();
        prop_assert_eq!(s.count(), xs.len() as u64);
        if xs.len() >= 2 {
            let n = xs.len() as f64;
            let mean = xs.iter().sum::<f64>() / n;
            let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
            prop_assert!((s.mean() - mean).abs() <= 1e-9 * mean.abs().max(1.0));
            prop_assert!((s.variance() - var).abs() <= 1e-9 * var.max(1.0));
        }
    }

    /// Sample sizes shrink as the effect grows and grow with the power.
    #[test]
    fn sample_size_is_monotone(base in 0.01_f64..0.5, d in 0.005_f64..0.2, power in 0.5_f64..0.95) {
        let p = PowerAnalysis::new(0.05, power).unwrap();
        let small = p.sample_size_proportions(base, MinimumDetectableEffect::Absolute(d)).unwrap();
        let large = p.sample_size_proportions(base, MinimumDetectableEffect::Absolute(d * 1.5)).unwrap();
        prop_assert!(large.control_exact < small.control_exact);
        let more = PowerAnalysis::new(0.05, (power + 0.04).min(0.99)).unwrap()
            .sample_size_proportions(base, MinimumDetectableEffect::Absolute(d)).unwrap();
        prop_assert!(more.control_exact > small.control_exact);
    }

    /// An observed split that equals the plan never mismatches.
    #[test]
    fn srm_accepts_the_planned_split(n in 1_u64..100_000, w in 1_u64..99) {
        let a = n * w;
        let b = n * (100 - w);
        let check = sample_ratio_mismatch(&[a, b], &[w as f64, (100 - w) as f64], 0.001).unwrap();
        let c = check.complete().unwrap();
        prop_assert!(c.statistic < 1e-6);
        prop_assert!(!c.mismatch);
    }
}
