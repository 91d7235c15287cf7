//! Required sample size (power analysis) for two-sided two-sample tests.

use serde::{Deserialize, Serialize};

use super::dist::normal_quantile;
use super::error::{ExperimentError, check_open_unit};

/// The smallest effect an experiment is designed to detect.
///
/// The difference matters: on a 10 % baseline conversion rate,
/// `Absolute(0.01)` means 10 % → 11 % (one percentage point) while
/// `Relative(0.01)` means 10 % → 10.1 % and needs about a hundred times more
/// units.
///
/// In JSON it is an object with one key: `{"absolute": 0.01}` or
/// `{"relative": 0.05}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MinimumDetectableEffect {
    /// A difference in the metric's own unit: a rate difference for a
    /// conversion metric (`0.01` = one percentage point), a difference of
    /// means for a continuous metric. May be negative (a decrease).
    Absolute(f64),
    /// A fraction of the baseline: the treatment value is
    /// `baseline × (1 + effect)` (`0.05` = a 5 % increase, `-0.1` a 10 % decrease).
    Relative(f64),
}

impl MinimumDetectableEffect {
    /// The treatment value this effect implies for `baseline`:
    /// `baseline + d` (absolute) or `baseline × (1 + r)` (relative).
    pub fn target(&self, baseline: f64) -> f64 {
        match *self {
            Self::Absolute(d) => baseline + d,
            Self::Relative(r) => baseline * (1.0 + r),
        }
    }

    fn value(&self) -> f64 {
        match *self {
            Self::Absolute(v) | Self::Relative(v) => v,
        }
    }
}

/// The design of a two-sided test: significance level, power, and the
/// allocation ratio between treatment and control.
///
/// Build it with [`PowerAnalysis::new`] (which validates), then ask for a
/// sample size with [`sample_size_proportions`](Self::sample_size_proportions)
/// or [`sample_size_means`](Self::sample_size_means). Both are closed forms:
/// a few floating-point operations and one normal quantile each, no
/// allocation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PowerAnalysis {
    alpha: f64,
    power: f64,
    ratio: f64,
}

/// Units needed per variant to reach the requested power.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SampleSize {
    /// Units needed in the control, rounded up.
    pub control: u64,
    /// Units needed in the treatment, rounded up.
    pub treatment: u64,
    /// The unrounded control size the formula gives.
    pub control_exact: f64,
    /// The unrounded treatment size (`ratio × control_exact`).
    pub treatment_exact: f64,
    /// The treatment's rate or mean under the alternative
    /// (`baseline` moved by the minimum detectable effect).
    pub treatment_value: f64,
}

impl SampleSize {
    /// Units needed in the control and the treatment together.
    pub fn total(&self) -> u64 {
        self.control.saturating_add(self.treatment)
    }
}

impl PowerAnalysis {
    /// A two-sided design with significance level `alpha` (type I error rate)
    /// and `power` (1 − type II error rate), both strictly between 0 and 1,
    /// and equal group sizes.
    ///
    /// # Errors
    /// [`ExperimentError::InvalidParameter`] naming `alpha` or `power`.
    pub fn new(alpha: f64, power: f64) -> Result<Self, ExperimentError> {
        Ok(Self {
            alpha: check_open_unit("alpha", alpha)?,
            power: check_open_unit("power", power)?,
            ratio: 1.0,
        })
    }

    /// Sets the allocation ratio `n_treatment / n_control` (1 by default;
    /// 2 means the treatment gets twice the control's traffic).
    ///
    /// # Errors
    /// [`ExperimentError::InvalidParameter`] naming `ratio` when it is not a
    /// finite positive number.
    pub fn with_ratio(mut self, ratio: f64) -> Result<Self, ExperimentError> {
        if !(ratio.is_finite() && ratio > 0.0) {
            return Err(ExperimentError::param(
                "ratio",
                ratio,
                "must be a finite number > 0",
            ));
        }
        self.ratio = ratio;
        Ok(self)
    }

    /// The significance level.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// The power.
    pub fn power(&self) -> f64 {
        self.power
    }

    /// The allocation ratio `n_treatment / n_control`.
    pub fn ratio(&self) -> f64 {
        self.ratio
    }

    /// Units per variant for a two-sided two-proportion z-test (the test of
    /// [`two_proportion_z_test`](super::two_proportion_z_test)) to detect a
    /// change from `baseline` (the control's conversion rate) to
    /// `p_T = mde.target(baseline)`.
    ///
    /// Formula (Fleiss; pooled variance under H0 as the z-test uses,
    /// unpooled under H1; the far tail of the two-sided test is ignored, which
    /// overstates n by a negligible amount at the usual power ≥ 0.8):
    ///
    /// ```text
    /// r    = n_T / n_C
    /// p̄    = (p_C + r·p_T) / (1 + r)
    /// n_C  = ( z(1−α/2)·√(p̄(1−p̄)(1 + 1/r)) + z(power)·√(p_C(1−p_C) + p_T(1−p_T)/r) )²
    ///        / (p_T − p_C)²
    /// n_T  = r·n_C
    /// ```
    ///
    /// This is statsmodels'
    /// `samplesize_proportions_2indep_onetail(diff=p_C − p_T, prop2=p_T, ratio=r, ...)`;
    /// the crate's tests check it against that function.
    ///
    /// # Errors
    /// [`ExperimentError::InvalidParameter`] naming `baseline` (not strictly
    /// between 0 and 1) or `minimum_detectable_effect` (zero, not finite, or
    /// moving the rate outside `[0, 1]`).
    pub fn sample_size_proportions(
        &self,
        baseline: f64,
        mde: MinimumDetectableEffect,
    ) -> Result<SampleSize, ExperimentError> {
        check_open_unit("baseline", baseline)?;
        check_effect(mde)?;
        let p_c = baseline;
        let p_t = mde.target(baseline);
        if !(0.0..=1.0).contains(&p_t) {
            return Err(ExperimentError::param(
                "minimum_detectable_effect",
                mde.value(),
                "the treatment rate baseline + effect must stay within [0, 1]",
            ));
        }
        if p_t == p_c {
            return Err(ExperimentError::param(
                "minimum_detectable_effect",
                mde.value(),
                "must change the rate (it is zero relative to this baseline)",
            ));
        }
        let r = self.ratio;
        let pooled = (p_c + r * p_t) / (1.0 + r);
        let sd_null = (pooled * (1.0 - pooled) * (1.0 + 1.0 / r)).sqrt();
        let sd_alt = (p_c * (1.0 - p_c) + p_t * (1.0 - p_t) / r).sqrt();
        let numerator = self.z_alpha() * sd_null + self.z_power() * sd_alt;
        let n_c = (numerator.max(0.0) / (p_t - p_c)).powi(2);
        Ok(self.finish(n_c, p_t))
    }

    /// Units per variant for a two-sided two-sample test of means (Welch's
    /// t-test, [`welch_t_test`](super::welch_t_test)) to detect a change from
    /// `baseline_mean` to `mde.target(baseline_mean)`, when the metric's
    /// standard deviation in each variant is `std_dev` (estimate it from
    /// historical data). `baseline_mean` is only used to resolve a relative
    /// effect.
    ///
    /// Formula (normal approximation, equal standard deviations, far tail
    /// ignored):
    ///
    /// ```text
    /// n_C = (z(1−α/2) + z(power))² · σ² · (1 + 1/r) / δ²,   n_T = r·n_C
    /// ```
    ///
    /// This is statsmodels'
    /// `normal_sample_size_one_tail(δ, power, α/2, std_null=σ·√(1 + 1/r))`.
    /// It is within a fraction of a unit of `NormalIndPower().solve_power`
    /// (which also counts the far tail) at power ≥ 0.8 and never below it.
    /// For very small results (n < 30) the t distribution's heavier tails make
    /// the true requirement a few units larger.
    ///
    /// # Errors
    /// [`ExperimentError::InvalidParameter`] naming `std_dev` (not finite and
    /// positive), `baseline_mean` (not finite) or `minimum_detectable_effect`
    /// (zero or not finite, or relative to a zero baseline).
    pub fn sample_size_means(
        &self,
        baseline_mean: f64,
        std_dev: f64,
        mde: MinimumDetectableEffect,
    ) -> Result<SampleSize, ExperimentError> {
        if !baseline_mean.is_finite() {
            return Err(ExperimentError::param(
                "baseline_mean",
                baseline_mean,
                "must be a finite number",
            ));
        }
        if !(std_dev.is_finite() && std_dev > 0.0) {
            return Err(ExperimentError::param(
                "std_dev",
                std_dev,
                "must be a finite number > 0",
            ));
        }
        check_effect(mde)?;
        let target = mde.target(baseline_mean);
        let delta = target - baseline_mean;
        if !(delta.is_finite() && delta != 0.0) {
            return Err(ExperimentError::param(
                "minimum_detectable_effect",
                mde.value(),
                "must change the mean (a relative effect on a zero baseline is zero)",
            ));
        }
        let r = self.ratio;
        let z = (self.z_alpha() + self.z_power()).max(0.0);
        let n_c = (z * std_dev / delta).powi(2) * (1.0 + 1.0 / r);
        Ok(self.finish(n_c, target))
    }

    fn z_alpha(&self) -> f64 {
        normal_quantile(1.0 - self.alpha / 2.0)
    }

    fn z_power(&self) -> f64 {
        normal_quantile(self.power)
    }

    fn finish(&self, n_c: f64, treatment_value: f64) -> SampleSize {
        let n_t = n_c * self.ratio;
        SampleSize {
            control: ceil_units(n_c),
            treatment: ceil_units(n_t),
            control_exact: n_c,
            treatment_exact: n_t,
            treatment_value,
        }
    }
}

fn check_effect(mde: MinimumDetectableEffect) -> Result<(), ExperimentError> {
    let v = mde.value();
    if !v.is_finite() || v == 0.0 {
        return Err(ExperimentError::param(
            "minimum_detectable_effect",
            v,
            "must be a finite, non-zero number",
        ));
    }
    if let MinimumDetectableEffect::Relative(r) = mde
        && r <= -1.0
    {
        return Err(ExperimentError::param(
            "minimum_detectable_effect",
            r,
            "a relative effect must be greater than -1 (-100 %)",
        ));
    }
    Ok(())
}

/// Rounds a unit count up, at least 1 unit; saturates at `u64::MAX`.
///
/// A tiny tolerance keeps an exact integer computed as `251.00000000000003`
/// at 251.
fn ceil_units(n: f64) -> u64 {
    if !n.is_finite() || n >= u64::MAX as f64 {
        return u64::MAX;
    }
    let rounded = (n - 1e-9 * n.max(1.0)).ceil();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let units = rounded.max(1.0) as u64;
    units
}
