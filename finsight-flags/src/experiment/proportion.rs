//! Conversion metrics: per-variant rates and the two-proportion z-test.

use serde::{Deserialize, Serialize};

use super::dist::{normal_quantile, normal_two_sided_p};
use super::error::{ExperimentError, check_open_unit};
use super::outcome::{InsufficientData, Interval, Lift, Outcome};

/// Units and conversions of one variant for a conversion metric.
///
/// A *unit* is what was randomised (usually a user) and counted once; a
/// conversion is a unit that converted at least once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConversionCounts {
    /// Units exposed to the variant.
    pub units: u64,
    /// Units among them that converted (at most `units`).
    pub conversions: u64,
}

impl ConversionCounts {
    /// Counts for one variant. Validation happens in the tests, which name
    /// the offending variant.
    pub fn new(units: u64, conversions: u64) -> Self {
        Self { units, conversions }
    }

    /// The conversion rate `conversions / units` (NaN for zero units).
    #[allow(clippy::cast_precision_loss)]
    pub fn rate(&self) -> f64 {
        self.conversions as f64 / self.units as f64
    }
}

pub(crate) fn check_counts(variants: &[ConversionCounts]) -> Result<(), ExperimentError> {
    for (i, c) in variants.iter().enumerate() {
        if c.conversions > c.units {
            return Err(ExperimentError::ConversionsExceedUnits {
                variant: i,
                conversions: c.conversions,
                units: c.units,
            });
        }
    }
    Ok(())
}

/// One variant's conversion rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProportionEstimate {
    /// Units exposed.
    pub units: u64,
    /// Units converted.
    pub conversions: u64,
    /// `p̂ = conversions / units`.
    pub rate: f64,
    /// Wald standard error `√(p̂(1 − p̂)/n)`.
    pub standard_error: f64,
    /// Wilson score interval at level `1 − alpha`:
    /// `(p̂ + z²/2n ± z·√(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n)`, `z = z(1−α/2)`.
    /// Unlike the Wald interval it stays inside `[0, 1]` and is not
    /// degenerate at zero or all conversions (statsmodels
    /// `proportion_confint(method="wilson")`).
    pub confidence_interval: Interval,
}

impl ProportionEstimate {
    /// Estimates one variant's rate; `units` must be > 0 and `z = z(1−α/2)`.
    #[allow(clippy::cast_precision_loss)]
    pub(crate) fn from_counts(c: ConversionCounts, z: f64) -> Self {
        let n = c.units as f64;
        let p = c.rate();
        let z2 = z * z;
        let denom = 1.0 + z2 / n;
        let centre = (p + z2 / (2.0 * n)) / denom;
        let half = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denom;
        Self {
            units: c.units,
            conversions: c.conversions,
            rate: p,
            standard_error: (p * (1.0 - p) / n).sqrt(),
            // At 0 and at all conversions the bound is exactly 0 or 1
            // (z²/2n ± √(z²/4n²) cancels); pin it against rounding.
            confidence_interval: Interval {
                lower: if c.conversions == 0 {
                    0.0
                } else {
                    (centre - half).max(0.0)
                },
                upper: if c.conversions == c.units {
                    1.0
                } else {
                    (centre + half).min(1.0)
                },
            },
        }
    }
}

/// The result of a two-sided two-proportion z-test, treatment against control.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TwoProportionTest {
    /// The control's rate.
    pub control: ProportionEstimate,
    /// The treatment's rate.
    pub treatment: ProportionEstimate,
    /// `p_T − p_C` with the Wald interval
    /// `(p_T − p_C) ± z(1−α/2)·√(p_T(1−p_T)/n_T + p_C(1−p_C)/n_C)`
    /// (unpooled; degenerate when both rates are 0 or 1).
    pub absolute_lift: Lift,
    /// `p_T / p_C − 1` with the Katz log interval
    /// `exp(ln(p_T/p_C) ± z(1−α/2)·√(1/x_T − 1/n_T + 1/x_C − 1/n_C)) − 1`.
    /// `None` when the control has no conversions (the ratio is undefined);
    /// the interval is `None` when the treatment has none (its log is −∞).
    pub relative_lift: Option<Lift>,
    /// The z statistic `(p_T − p_C) / √(p̄(1−p̄)(1/n_T + 1/n_C))`, with the
    /// pooled rate `p̄ = (x_T + x_C)/(n_T + n_C)`.
    pub z: f64,
    /// Two-sided p-value `2·(1 − Φ(|z|))`.
    pub p_value: f64,
    /// The significance level the intervals and `significant` use.
    pub alpha: f64,
    /// `p_value < alpha`.
    pub significant: bool,
}

/// Two-sided two-proportion z-test of `treatment` against `control` at
/// significance level `alpha`.
///
/// Computes each rate with its Wilson interval, the absolute lift with a Wald
/// interval, the relative lift with a Katz log interval (formulas on
/// [`TwoProportionTest`]'s fields), the pooled z statistic and its two-sided
/// p-value — the same numbers as statsmodels `proportions_ztest`,
/// `proportion_confint(method="wilson")` and
/// `confint_proportions_2indep(method="wald" | "log")`. O(1), no allocation.
///
/// Assumes independent units and enough of them for the normal
/// approximation (as a rule of thumb at least 5 conversions and 5
/// non-conversions per variant); with fewer, the p-value is approximate.
///
/// # Insufficient data
/// [`InsufficientData::EmptyVariant`] (0 = control, 1 = treatment) when a
/// variant has no units; [`InsufficientData::NoVariation`] when nobody or
/// everybody converted in both variants together.
///
/// # Errors
/// [`ExperimentError::InvalidParameter`] for `alpha` outside (0, 1);
/// [`ExperimentError::ConversionsExceedUnits`] for impossible counts.
pub fn two_proportion_z_test(
    control: ConversionCounts,
    treatment: ConversionCounts,
    alpha: f64,
) -> Result<Outcome<TwoProportionTest>, ExperimentError> {
    check_open_unit("alpha", alpha)?;
    check_counts(&[control, treatment])?;
    Ok(z_test_checked(control, treatment, alpha))
}

/// The test on validated inputs.
#[allow(clippy::cast_precision_loss)]
pub(crate) fn z_test_checked(
    control: ConversionCounts,
    treatment: ConversionCounts,
    alpha: f64,
) -> Outcome<TwoProportionTest> {
    if control.units == 0 {
        return Outcome::Insufficient(InsufficientData::EmptyVariant { variant: 0 });
    }
    if treatment.units == 0 {
        return Outcome::Insufficient(InsufficientData::EmptyVariant { variant: 1 });
    }
    let (n_c, n_t) = (control.units as f64, treatment.units as f64);
    let (x_c, x_t) = (control.conversions as f64, treatment.conversions as f64);
    let pooled = (x_c + x_t) / (n_c + n_t);
    let se_pooled = (pooled * (1.0 - pooled) * (1.0 / n_c + 1.0 / n_t)).sqrt();
    if se_pooled.is_nan() || se_pooled <= 0.0 {
        return Outcome::Insufficient(InsufficientData::NoVariation);
    }
    let z_crit = normal_quantile(1.0 - alpha / 2.0);
    let (p_c, p_t) = (x_c / n_c, x_t / n_t);
    let diff = p_t - p_c;
    let z = diff / se_pooled;
    let p_value = normal_two_sided_p(z);

    let se_unpooled = (p_t * (1.0 - p_t) / n_t + p_c * (1.0 - p_c) / n_c).sqrt();
    let absolute_lift = Lift {
        estimate: diff,
        confidence_interval: Some(Interval::around(diff, z_crit * se_unpooled)),
    };
    let relative_lift = (control.conversions > 0).then(|| {
        let ratio = p_t / p_c;
        let confidence_interval = (treatment.conversions > 0).then(|| {
            let se_log = (1.0 / x_t - 1.0 / n_t + 1.0 / x_c - 1.0 / n_c)
                .max(0.0)
                .sqrt();
            let log_ratio = ratio.ln();
            Interval {
                lower: (log_ratio - z_crit * se_log).exp() - 1.0,
                upper: (log_ratio + z_crit * se_log).exp() - 1.0,
            }
        });
        Lift {
            estimate: ratio - 1.0,
            confidence_interval,
        }
    });
    Outcome::Complete(TwoProportionTest {
        control: ProportionEstimate::from_counts(control, z_crit),
        treatment: ProportionEstimate::from_counts(treatment, z_crit),
        absolute_lift,
        relative_lift,
        z,
        p_value,
        alpha,
        significant: p_value < alpha,
    })
}
