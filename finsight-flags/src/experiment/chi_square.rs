//! Chi-square test of independence for conversion metrics with more than two variants.

use serde::{Deserialize, Serialize};

use super::dist::{chi_square_sf, normal_quantile};
use super::error::{ExperimentError, check_open_unit};
use super::outcome::{InsufficientData, Outcome};
use super::proportion::{ConversionCounts, ProportionEstimate, check_counts};

/// The result of a chi-square test of independence on a k × 2 table
/// (converted / not converted per variant).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChiSquareTest {
    /// Each variant's rate with its Wilson interval, in input order.
    pub variants: Vec<ProportionEstimate>,
    /// Pearson's statistic `Σ (O − E)² / E` over the 2k cells, with
    /// `E = row total × column total / grand total` (no continuity correction).
    pub statistic: f64,
    /// `k − 1`.
    pub degrees_of_freedom: u64,
    /// `P(χ²(k−1) ≥ statistic)`.
    pub p_value: f64,
    /// The significance level `significant` and the intervals use.
    pub alpha: f64,
    /// `p_value < alpha`: the rates are not all equal. Which variant differs
    /// is a question for pairwise tests against the control.
    pub significant: bool,
}

/// Chi-square test of independence: are the conversion rates of all
/// `variants` equal?
///
/// The omnibus test for more than two variants (it accepts two, where the
/// statistic equals the square of the pooled z statistic of
/// [`two_proportion_z_test`](super::two_proportion_z_test)). Same numbers as
/// SciPy `chi2_contingency(table, correction=False)`. O(k) time, one
/// allocation of k estimates.
///
/// Assumes independent units and expected counts large enough for the
/// chi-square approximation (rule of thumb: every expected cell ≥ 5).
///
/// # Insufficient data
/// [`InsufficientData::EmptyVariant`] naming the first variant without
/// units; [`InsufficientData::NoVariation`] when no unit or every unit
/// converted.
///
/// # Errors
/// [`ExperimentError::TooFewVariants`] for fewer than two variants,
/// [`ExperimentError::InvalidParameter`] for `alpha`,
/// [`ExperimentError::ConversionsExceedUnits`] for impossible counts.
#[allow(clippy::cast_precision_loss)]
pub fn chi_square_test(
    variants: &[ConversionCounts],
    alpha: f64,
) -> Result<Outcome<ChiSquareTest>, ExperimentError> {
    check_open_unit("alpha", alpha)?;
    if variants.len() < 2 {
        return Err(ExperimentError::TooFewVariants {
            test: "chi-square test",
            required: 2,
            got: variants.len(),
        });
    }
    check_counts(variants)?;
    if let Some(i) = variants.iter().position(|c| c.units == 0) {
        return Ok(Outcome::Insufficient(InsufficientData::EmptyVariant {
            variant: i,
        }));
    }
    let total: f64 = variants.iter().map(|c| c.units as f64).sum();
    let converted: f64 = variants.iter().map(|c| c.conversions as f64).sum();
    if converted == 0.0 || converted == total {
        return Ok(Outcome::Insufficient(InsufficientData::NoVariation));
    }
    let share = converted / total;
    let statistic: f64 = variants
        .iter()
        .map(|c| {
            let n = c.units as f64;
            let x = c.conversions as f64;
            let e_yes = n * share;
            let e_no = n - e_yes;
            (x - e_yes).powi(2) / e_yes + ((n - x) - e_no).powi(2) / e_no
        })
        .sum();
    let df = variants.len() - 1;
    let p_value = chi_square_sf(statistic, df as f64);
    let z = normal_quantile(1.0 - alpha / 2.0);
    Ok(Outcome::Complete(ChiSquareTest {
        variants: variants
            .iter()
            .map(|&c| ProportionEstimate::from_counts(c, z))
            .collect(),
        statistic,
        degrees_of_freedom: df as u64,
        p_value,
        alpha,
        significant: p_value < alpha,
    }))
}
