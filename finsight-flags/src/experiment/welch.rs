//! Continuous metrics: sample summaries and Welch's t-test.

use serde::{Deserialize, Serialize};

use super::dist::{normal_quantile, t_quantile, t_two_sided_p};
use super::error::{ExperimentError, check_open_unit};
use super::outcome::{InsufficientData, Interval, Lift, Outcome};

/// Count, mean and sample variance of one variant's values — everything
/// Welch's test needs, so raw values never have to be kept.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct SampleSummary {
    count: u64,
    mean: f64,
    variance: f64,
}

impl SampleSummary {
    /// A summary from its parts; `variance` is the *sample* variance
    /// (divided by `count − 1`, NumPy `ddof=1`), ignored when `count < 2`.
    ///
    /// # Errors
    /// [`ExperimentError::InvalidSummary`] naming `mean` (not finite) or
    /// `variance` (negative or not finite).
    pub fn new(count: u64, mean: f64, variance: f64) -> Result<Self, ExperimentError> {
        if !mean.is_finite() {
            return Err(ExperimentError::InvalidSummary {
                field: "mean",
                value: mean,
                expected: "a finite number",
            });
        }
        if !(variance.is_finite() && variance >= 0.0) {
            return Err(ExperimentError::InvalidSummary {
                field: "variance",
                value: variance,
                expected: "a finite number >= 0",
            });
        }
        Ok(Self {
            count,
            mean: if count == 0 { 0.0 } else { mean },
            variance: if count < 2 { 0.0 } else { variance },
        })
    }

    /// Summarises `values` in one pass (Welford's algorithm, numerically
    /// stable). O(n) time, no allocation.
    ///
    /// # Errors
    /// [`ExperimentError::InvalidSummary`] naming `value` for a NaN or
    /// infinite value.
    pub fn from_values(values: &[f64]) -> Result<Self, ExperimentError> {
        let mut acc = RunningSummary::new();
        for &v in values {
            acc.push(v)?;
        }
        Ok(acc.summary())
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Mean (0 when empty).
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// Sample variance with `count − 1` in the denominator (0 when `count < 2`).
    pub fn variance(&self) -> f64 {
        self.variance
    }

    /// Sample standard deviation.
    pub fn std_dev(&self) -> f64 {
        self.variance.sqrt()
    }
}

/// A streaming accumulator for a [`SampleSummary`] (Welford's algorithm):
/// constant memory (three numbers) however many values are pushed.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RunningSummary {
    count: u64,
    mean: f64,
    m2: f64,
}

impl RunningSummary {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one value. O(1).
    ///
    /// # Errors
    /// [`ExperimentError::InvalidSummary`] naming `value` for NaN or an
    /// infinity; the accumulator is unchanged.
    #[allow(clippy::cast_precision_loss)]
    pub fn push(&mut self, value: f64) -> Result<(), ExperimentError> {
        if !value.is_finite() {
            return Err(ExperimentError::InvalidSummary {
                field: "value",
                value,
                expected: "a finite number",
            });
        }
        self.count += 1;
        let delta = value - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (value - self.mean);
        Ok(())
    }

    /// The summary of the values pushed so far.
    #[allow(clippy::cast_precision_loss)]
    pub fn summary(&self) -> SampleSummary {
        SampleSummary {
            count: self.count,
            mean: self.mean,
            variance: if self.count < 2 {
                0.0
            } else {
                (self.m2 / (self.count - 1) as f64).max(0.0)
            },
        }
    }
}

/// One variant's mean.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeanEstimate {
    /// Observations.
    pub count: u64,
    /// Sample mean.
    pub mean: f64,
    /// Sample standard deviation (`count − 1` denominator).
    pub std_dev: f64,
    /// Standard error of the mean `s / √n`.
    pub standard_error: f64,
}

impl MeanEstimate {
    #[allow(clippy::cast_precision_loss)]
    fn from_summary(s: &SampleSummary) -> Self {
        Self {
            count: s.count,
            mean: s.mean,
            std_dev: s.std_dev(),
            standard_error: (s.variance / s.count as f64).sqrt(),
        }
    }
}

/// The result of Welch's two-sided t-test, treatment against control.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WelchTest {
    /// The control's mean.
    pub control: MeanEstimate,
    /// The treatment's mean.
    pub treatment: MeanEstimate,
    /// `m_T − m_C` with the interval `(m_T − m_C) ± t(1−α/2, df)·SE`,
    /// `SE = √(s_T²/n_T + s_C²/n_C)`.
    pub absolute_lift: Lift,
    /// `m_T / m_C − 1` with a delta-method interval
    /// `± z(1−α/2)·√(s_T²/(n_T m_C²) + m_T² s_C²/(n_C m_C⁴))`
    /// (a normal approximation: use it with tens of units per variant or
    /// more). `None` when the control mean is 0.
    pub relative_lift: Option<Lift>,
    /// `t = (m_T − m_C) / SE`.
    pub t: f64,
    /// Welch–Satterthwaite degrees of freedom
    /// `SE⁴ / ((s_T²/n_T)²/(n_T−1) + (s_C²/n_C)²/(n_C−1))`.
    pub degrees_of_freedom: f64,
    /// Two-sided p-value `2·P(T_df ≥ |t|)`.
    pub p_value: f64,
    /// The significance level used.
    pub alpha: f64,
    /// `p_value < alpha`.
    pub significant: bool,
}

/// Welch's two-sided t-test (unequal variances) of `treatment` against
/// `control` at significance level `alpha`.
///
/// Same numbers as SciPy `ttest_ind(treatment, control, equal_var=False)`
/// including its `df` and `confidence_interval(1 − alpha)`; formulas on
/// [`WelchTest`]'s fields. O(1), no allocation.
///
/// Assumes independent units and a sampling distribution of the mean close
/// to normal: fine for large samples of skewed metrics such as revenue
/// (central limit theorem), only approximate for small samples of heavily
/// skewed data. The variances need not be equal.
///
/// # Insufficient data
/// [`InsufficientData::EmptyVariant`] (0 = control, 1 = treatment),
/// [`InsufficientData::TooFewObservations`] when a variant has one value (no
/// variance estimate), [`InsufficientData::NoVariation`] when both variances
/// are zero.
///
/// # Errors
/// [`ExperimentError::InvalidParameter`] for `alpha` outside (0, 1).
#[allow(clippy::cast_precision_loss)]
pub fn welch_t_test(
    control: &SampleSummary,
    treatment: &SampleSummary,
    alpha: f64,
) -> Result<Outcome<WelchTest>, ExperimentError> {
    check_open_unit("alpha", alpha)?;
    for (i, s) in [control, treatment].into_iter().enumerate() {
        if s.count == 0 {
            return Ok(Outcome::Insufficient(InsufficientData::EmptyVariant {
                variant: i,
            }));
        }
        if s.count < 2 {
            return Ok(Outcome::Insufficient(
                InsufficientData::TooFewObservations {
                    variant: i,
                    observed: s.count,
                    required: 2,
                },
            ));
        }
    }
    let (n_c, n_t) = (control.count as f64, treatment.count as f64);
    let (m_c, m_t) = (control.mean, treatment.mean);
    let a_c = control.variance / n_c;
    let a_t = treatment.variance / n_t;
    let se2 = a_c + a_t;
    if se2.is_nan() || se2 <= 0.0 {
        return Ok(Outcome::Insufficient(InsufficientData::NoVariation));
    }
    let se = se2.sqrt();
    let df = se2 * se2 / (a_t * a_t / (n_t - 1.0) + a_c * a_c / (n_c - 1.0));
    let diff = m_t - m_c;
    let t = diff / se;
    let p_value = t_two_sided_p(t, df);
    let t_crit = t_quantile(1.0 - alpha / 2.0, df);
    let absolute_lift = Lift {
        estimate: diff,
        confidence_interval: Some(Interval::around(diff, t_crit * se)),
    };
    let relative_lift = (m_c != 0.0).then(|| {
        let z = normal_quantile(1.0 - alpha / 2.0);
        let se_rel = (a_t / (m_c * m_c) + m_t * m_t * a_c / m_c.powi(4)).sqrt();
        let estimate = m_t / m_c - 1.0;
        Lift {
            estimate,
            confidence_interval: Some(Interval::around(estimate, z * se_rel)),
        }
    });
    Ok(Outcome::Complete(WelchTest {
        control: MeanEstimate::from_summary(control),
        treatment: MeanEstimate::from_summary(treatment),
        absolute_lift,
        relative_lift,
        t,
        degrees_of_freedom: df,
        p_value,
        alpha,
        significant: p_value < alpha,
    }))
}
