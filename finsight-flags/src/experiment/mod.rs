//! A/B experiments on top of the flag engine (feature `experiments`).
//!
//! # What is here
//! - **Planning**: [`PowerAnalysis`] gives the units per variant a two-sided
//!   test needs to detect a [`MinimumDetectableEffect`] on a conversion rate
//!   ([`PowerAnalysis::sample_size_proportions`]) or a mean
//!   ([`PowerAnalysis::sample_size_means`]).
//! - **Analysis of conversion metrics**: [`two_proportion_z_test`] (treatment
//!   vs control) and [`chi_square_test`] (omnibus test over more than two
//!   variants).
//! - **Analysis of continuous metrics**: [`welch_t_test`] on
//!   [`SampleSummary`]s, which [`RunningSummary`] accumulates in constant
//!   memory.
//! - **Trust check**: [`sample_ratio_mismatch`] flags an observed split that
//!   differs from the planned allocation.
//!
//! The two-sample tests report the estimate per variant, the absolute and
//! relative lift with a confidence interval, the p-value and whether it is
//! below the significance level. The chi-square test reports the estimate per
//! variant and the omnibus p-value; [`Experiment::analyze`] pairs it with each
//! treatment's z-test for the lifts. Each public item states its formula and
//! assumptions. The distributions come from `statrs` (no default features);
//! the numbers match SciPy and statsmodels to a relative error below 1e-10
//! (the crate's tests compare them, at 1e-9, on reference data produced by
//! `tests/python/experiment_reference.py`).
//!
//! # Running an experiment
//! An [`Experiment`] is validated at creation. An [`ExperimentAssigner`]
//! assigns units through the [`FlagEngine`](crate::FlagEngine) — the same
//! buckets and sticky assignments as any evaluation of the flag — and
//! returns an [`ExposureRecord`] per enrolled unit.
//! [`Experiment::aggregate`] turns records and [`MetricEvent`]s into
//! [`ExperimentData`] (one count per unit, events after exposure only), and
//! [`Experiment::analyze`] runs the SRM check and every metric's tests.
//!
//! ```
//! use finsight_flags::experiment::{Enrollment, Experiment, ExperimentAssigner, MetricEvent, Verdict};
//! use finsight_flags::{EvaluationContext, FlagEngine, FlagSet};
//!
//! let flags = FlagSet::from_json(r#"[{
//!     "key": "checkout", "flag_type": "multivariate", "status": "active", "sticky_bucketing": true,
//!     "variants": [{"id": "control", "value": "old", "weight": 50, "is_control": true},
//!                  {"id": "one-page", "value": "new", "weight": 50}]
//! }]"#)?.strict()?;
//! let experiment = Experiment::from_json(r#"{
//!     "key": "checkout-2026", "name": "One-page checkout", "flag_key": "checkout",
//!     "hypothesis": "A one-page checkout raises completed purchases",
//!     "variants": [{"id": "control", "allocation": 50, "is_control": true},
//!                  {"id": "one-page", "allocation": 50}],
//!     "metrics": [{"key": "purchase", "metric_type": "conversion", "goal": "increase",
//!                  "primary": true, "baseline": 0.1}],
//!     "minimum_detectable_effect": {"absolute": 0.02}
//! }"#)?;
//! println!("enrol {} users", experiment.sample_size()?.total_units);
//!
//! let assigner = ExperimentAssigner::new(experiment.clone(), FlagEngine::new(flags))?;
//! let mut exposures = Vec::new();
//! let mut events = Vec::new();
//! for i in 0..4_000 {
//!     let ctx = EvaluationContext::new().user_id(format!("user-{i}"));
//!     if let Enrollment::Enrolled { exposure, .. } = assigner.assign(&ctx) {
//!         // ... serve the variant; later the user may purchase:
//!         let converts = if exposure.variant == "control" { i % 10 == 0 } else { i % 6 == 0 };
//!         if converts {
//!             events.push(MetricEvent {
//!                 unit_kind: exposure.unit_kind,
//!                 unit_id: exposure.unit_id.clone(),
//!                 metric: "purchase".into(),
//!                 value: 1.0,
//!                 timestamp: exposure.timestamp,
//!             });
//!         }
//!         exposures.push(exposure);
//!     }
//! }
//!
//! let data = experiment.aggregate(&exposures, &events)?;
//! let analysis = experiment.analyze(&data)?;
//! assert!(!analysis.sample_ratio_mismatch());
//! let purchase = analysis.primary().expect("one primary metric");
//! assert_eq!(purchase.comparisons[0].verdict, Verdict::Improvement);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Errors and insufficient data
//! Invalid input (alpha outside (0, 1), more conversions than units, a
//! negative variance) is an [`ExperimentError`] naming the parameter.
//! Data that cannot support a test yet (an empty variant, nobody converted)
//! is not an error: the test returns [`Outcome::Insufficient`] with the
//! reason. Nothing here panics, does I/O or allocates more than the result.
//!
//! # Example
//! ```
//! use finsight_flags::experiment::{
//!     ConversionCounts, MinimumDetectableEffect, PowerAnalysis, two_proportion_z_test,
//! };
//!
//! // Plan: 10 % baseline, detect +1 percentage point, alpha 0.05, power 0.8.
//! let plan = PowerAnalysis::new(0.05, 0.8)?
//!     .sample_size_proportions(0.10, MinimumDetectableEffect::Absolute(0.01))?;
//! assert_eq!(plan.control, 14_751);
//!
//! // Analyse.
//! let control = ConversionCounts::new(15_000, 1_500);
//! let treatment = ConversionCounts::new(15_000, 1_680);
//! let test = two_proportion_z_test(control, treatment, 0.05)?;
//! let result = test.complete().expect("both variants have data");
//! assert!(result.significant);
//! assert!((result.absolute_lift.estimate - 0.012).abs() < 1e-12);
//! # Ok::<(), finsight_flags::experiment::ExperimentError>(())
//! ```

mod analysis;
mod assignment;
mod chi_square;
mod data;
mod definition;
mod dist;
mod error;
mod outcome;
mod proportion;
mod sample_size;
mod srm;
mod welch;

pub use analysis::{Comparison, ComparisonTest, ExperimentAnalysis, MetricAnalysis, Verdict};
pub use assignment::{Enrollment, ExperimentAssigner, ExposureRecord, NotEnrolled, UnitKind};
pub use chi_square::{ChiSquareTest, chi_square_test};
pub use data::{ExperimentData, MetricEvent};
pub use definition::{
    Experiment, ExperimentDefinition, ExperimentPlan, ExperimentVariant, Goal, Metric, MetricType,
    PlannedVariant,
};
pub use error::ExperimentError;
pub use outcome::{InsufficientData, Interval, Lift, Outcome};
pub use proportion::{
    ConversionCounts, ProportionEstimate, TwoProportionTest, two_proportion_z_test,
};
pub use sample_size::{MinimumDetectableEffect, PowerAnalysis, SampleSize};
pub use srm::{DEFAULT_SRM_THRESHOLD, SrmCheck, sample_ratio_mismatch};
pub use welch::{MeanEstimate, RunningSummary, SampleSummary, WelchTest, welch_t_test};
