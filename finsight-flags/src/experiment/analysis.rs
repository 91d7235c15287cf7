//! The analysis of a whole experiment: SRM check, then every metric.

use serde::{Deserialize, Serialize};

use super::chi_square::{ChiSquareTest, chi_square_test};
use super::data::ExperimentData;
use super::definition::{Experiment, Goal, MetricType};
use super::error::ExperimentError;
use super::outcome::{Lift, Outcome};
use super::proportion::{TwoProportionTest, z_test_checked};
use super::srm::{DEFAULT_SRM_THRESHOLD, SrmCheck, sample_ratio_mismatch};
use super::welch::{WelchTest, welch_t_test};

/// The analysis of an experiment, from [`Experiment::analyze`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentAnalysis {
    /// The experiment key.
    pub experiment: String,
    /// The sample-ratio-mismatch check of the units per variant against the
    /// allocation (threshold [`DEFAULT_SRM_THRESHOLD`]). Read it first: with
    /// a mismatch, the metric results are not trustworthy.
    pub sample_ratio: Outcome<SrmCheck>,
    /// Units left out because they saw more than one variant.
    pub conflicting_units: u64,
    /// One entry per metric, in definition order.
    pub metrics: Vec<MetricAnalysis>,
}

impl ExperimentAnalysis {
    /// Whether the SRM check found a mismatch.
    pub fn sample_ratio_mismatch(&self) -> bool {
        self.sample_ratio.complete().is_some_and(|c| c.mismatch)
    }

    /// The primary metric's analysis.
    pub fn primary(&self) -> Option<&MetricAnalysis> {
        self.metrics.iter().find(|m| m.primary)
    }
}

/// The analysis of one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricAnalysis {
    /// The metric key.
    pub metric: String,
    /// Conversion or continuous.
    pub metric_type: MetricType,
    /// Which direction is an improvement.
    pub goal: Goal,
    /// Whether it is the primary metric.
    pub primary: bool,
    /// For a conversion metric with more than two variants, the chi-square
    /// test of whether all rates are equal.
    pub omnibus: Option<Outcome<ChiSquareTest>>,
    /// Each treatment against the control, in definition order.
    pub comparisons: Vec<Comparison>,
}

/// One treatment against the control on one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The treatment's variant id.
    pub variant: String,
    /// The test result (in its `InsufficientData`, variant 0 is the control
    /// and 1 this treatment).
    pub test: ComparisonTest,
    /// What the result means for the metric's goal.
    pub verdict: Verdict,
}

/// The test behind a [`Comparison`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComparisonTest {
    /// Two-proportion z-test (conversion metric).
    Proportions(Outcome<TwoProportionTest>),
    /// Welch's t-test (continuous metric).
    Means(Outcome<WelchTest>),
}

impl ComparisonTest {
    /// The absolute lift, the p-value and significance, when computed.
    fn summary(&self) -> Option<(Lift, f64, bool)> {
        match self {
            Self::Proportions(o) => o
                .complete()
                .map(|t| (t.absolute_lift, t.p_value, t.significant)),
            Self::Means(o) => o
                .complete()
                .map(|t| (t.absolute_lift, t.p_value, t.significant)),
        }
    }

    /// The p-value, when computed.
    pub fn p_value(&self) -> Option<f64> {
        self.summary().map(|(_, p, _)| p)
    }

    /// The absolute lift, when computed.
    pub fn absolute_lift(&self) -> Option<Lift> {
        self.summary().map(|(l, _, _)| l)
    }
}

/// The reading of a comparison against the metric's goal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Significant, in the goal's direction.
    Improvement,
    /// Significant, against the goal's direction.
    Regression,
    /// Not significant at the experiment's alpha.
    Inconclusive,
    /// The test could not be computed yet.
    InsufficientData,
}

impl Verdict {
    fn of(test: &ComparisonTest, goal: Goal) -> Self {
        match test.summary() {
            None => Self::InsufficientData,
            Some((_, _, false)) => Self::Inconclusive,
            Some((lift, _, true)) => {
                let up = lift.estimate > 0.0;
                if up == (goal == Goal::Increase) {
                    Self::Improvement
                } else {
                    Self::Regression
                }
            }
        }
    }
}

impl Experiment {
    /// Analyses `data` (built for this experiment): the sample-ratio-mismatch
    /// check against the allocation, then each metric — for a conversion
    /// metric the two-proportion z-test of every treatment against the
    /// control plus, with more than two variants, the chi-square test; for a
    /// continuous metric Welch's t-test of every treatment against the
    /// control — all at the experiment's significance level.
    ///
    /// The p-values are per comparison and not adjusted for multiple
    /// comparisons: with several treatments or metrics, judge the primary
    /// metric, or compare p-values with alpha divided by the number of
    /// comparisons (Bonferroni). O(variants × metrics); allocates the result.
    ///
    /// # Errors
    /// [`ExperimentError::DataMismatch`] when `data` was built for another
    /// experiment.
    pub fn analyze(&self, data: &ExperimentData) -> Result<ExperimentAnalysis, ExperimentError> {
        if data.experiment() != self.key() || data.units().len() != self.variants().len() {
            return Err(ExperimentError::DataMismatch {
                experiment: self.key().to_owned(),
                data: data.experiment().to_owned(),
            });
        }
        let alpha = self.significance_level();
        let weights: Vec<f64> = self.variants().iter().map(|v| v.allocation).collect();
        let sample_ratio = sample_ratio_mismatch(data.units(), &weights, DEFAULT_SRM_THRESHOLD)?;
        let control = self.control_index();
        let mut metrics = Vec::with_capacity(self.metrics().len());
        for (m, metric) in self.metrics().iter().enumerate() {
            let mut comparisons = Vec::with_capacity(self.variants().len().saturating_sub(1));
            let mut omnibus = None;
            match metric.metric_type {
                MetricType::Conversion => {
                    let counts: Vec<_> = (0..self.variants().len())
                        .filter_map(|v| data.conversions_at(v, m))
                        .collect();
                    if counts.len() > 2 {
                        omnibus = Some(chi_square_test(&counts, alpha)?);
                    }
                    for (v, variant) in self.variants().iter().enumerate() {
                        if v == control {
                            continue;
                        }
                        if let (Some(c), Some(t)) = (counts.get(control), counts.get(v)) {
                            let test = ComparisonTest::Proportions(z_test_checked(*c, *t, alpha));
                            comparisons.push(Comparison {
                                variant: variant.id.clone(),
                                verdict: Verdict::of(&test, metric.goal),
                                test,
                            });
                        }
                    }
                }
                MetricType::Continuous => {
                    for (v, variant) in self.variants().iter().enumerate() {
                        if v == control {
                            continue;
                        }
                        if let (Some(c), Some(t)) =
                            (data.summary_at(control, m), data.summary_at(v, m))
                        {
                            let test = ComparisonTest::Means(welch_t_test(&c, &t, alpha)?);
                            comparisons.push(Comparison {
                                variant: variant.id.clone(),
                                verdict: Verdict::of(&test, metric.goal),
                                test,
                            });
                        }
                    }
                }
            }
            metrics.push(MetricAnalysis {
                metric: metric.key.clone(),
                metric_type: metric.metric_type,
                goal: metric.goal,
                primary: metric.primary,
                omnibus,
                comparisons,
            });
        }
        Ok(ExperimentAnalysis {
            experiment: self.key().to_owned(),
            sample_ratio,
            conflicting_units: data.conflicting_units(),
            metrics,
        })
    }
}
