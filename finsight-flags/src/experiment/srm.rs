//! Sample-ratio-mismatch check.

use serde::{Deserialize, Serialize};

use super::dist::chi_square_sf;
use super::error::{ExperimentError, check_open_unit};
use super::outcome::{InsufficientData, Outcome};

/// The p-value below which [`sample_ratio_mismatch`] reports a mismatch
/// unless told otherwise: 0.001, strict because the check runs on every
/// experiment and often repeatedly (Kohavi, Tang and Xu, *Trustworthy Online
/// Controlled Experiments*, ch. 21).
pub const DEFAULT_SRM_THRESHOLD: f64 = 0.001;

/// The result of a sample-ratio-mismatch check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SrmCheck {
    /// Units observed per variant, in input order.
    pub observed: Vec<u64>,
    /// Units expected per variant: `N · wᵢ / Σw`.
    pub expected: Vec<f64>,
    /// Pearson's goodness-of-fit statistic `Σ (Oᵢ − Eᵢ)² / Eᵢ`.
    pub statistic: f64,
    /// `k − 1`.
    pub degrees_of_freedom: u64,
    /// `P(χ²(k−1) ≥ statistic)`.
    pub p_value: f64,
    /// The threshold the check used.
    pub threshold: f64,
    /// `p_value < threshold`: the split differs from the plan by more than
    /// chance explains. Assignment or exposure logging is broken (a variant
    /// crashes before logging, bots, a redirect that loses users, a sticky
    /// store that moved users); the experiment's results are not trustworthy
    /// until the cause is found.
    pub mismatch: bool,
}

/// Sample-ratio-mismatch check: a chi-square goodness-of-fit test of the
/// units observed per variant against the planned allocation `weights`
/// (any positive scale: percentages, fractions or ratios).
///
/// Same numbers as SciPy `chisquare(observed, f_exp=N·w/Σw)`. O(k) time, two
/// allocations of k entries. Run it on unique units (users), not on exposure
/// events: a user who sees the flag ten times counts once.
///
/// # Insufficient data
/// [`InsufficientData::NoUnits`] when nothing was observed.
///
/// # Errors
/// [`ExperimentError::TooFewVariants`] for fewer than two variants,
/// [`ExperimentError::LengthMismatch`] when `observed` and `weights` differ
/// in length, [`ExperimentError::InvalidParameter`] for a weight that is not
/// a finite positive number (`weights`) or a `threshold` outside (0, 1).
#[allow(clippy::cast_precision_loss)]
pub fn sample_ratio_mismatch(
    observed: &[u64],
    weights: &[f64],
    threshold: f64,
) -> Result<Outcome<SrmCheck>, ExperimentError> {
    check_open_unit("threshold", threshold)?;
    if observed.len() != weights.len() {
        return Err(ExperimentError::LengthMismatch {
            left: "observed",
            left_len: observed.len(),
            right: "weights",
            right_len: weights.len(),
        });
    }
    if observed.len() < 2 {
        return Err(ExperimentError::TooFewVariants {
            test: "sample-ratio-mismatch check",
            required: 2,
            got: observed.len(),
        });
    }
    if let Some(&w) = weights.iter().find(|w| !(w.is_finite() && **w > 0.0)) {
        return Err(ExperimentError::param(
            "weights",
            w,
            "every planned weight must be a finite number > 0",
        ));
    }
    let total: f64 = observed.iter().map(|&o| o as f64).sum();
    if total == 0.0 {
        return Ok(Outcome::Insufficient(InsufficientData::NoUnits));
    }
    let weight_sum: f64 = weights.iter().sum();
    let expected: Vec<f64> = weights.iter().map(|w| total * w / weight_sum).collect();
    let statistic: f64 = observed
        .iter()
        .zip(&expected)
        .map(|(&o, &e)| (o as f64 - e).powi(2) / e)
        .sum();
    let df = observed.len() - 1;
    let p_value = chi_square_sf(statistic, df as f64);
    let mismatch = p_value < threshold;
    if mismatch {
        tracing::warn!(
            statistic,
            p_value,
            threshold,
            ?observed,
            "sample-ratio mismatch: observed split differs from the planned allocation"
        );
    }
    Ok(Outcome::Complete(SrmCheck {
        observed: observed.to_vec(),
        expected,
        statistic,
        degrees_of_freedom: df as u64,
        p_value,
        threshold,
        mismatch,
    }))
}
