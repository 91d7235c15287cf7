//! Result shapes shared by every test.

use serde::{Deserialize, Serialize};

/// The result of a test: either computed, or a statement that the data
/// cannot support it yet.
///
/// Insufficient data is an expected state of a running experiment (a variant
/// has no traffic yet, nobody converted), not an error: an [`ExperimentError`]
/// means the *input* is invalid and the caller must fix it.
///
/// [`ExperimentError`]: super::ExperimentError
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "result")]
pub enum Outcome<T> {
    /// The test was computed.
    Complete(T),
    /// The data cannot support the test; the reason says what is missing.
    Insufficient(InsufficientData),
}

impl<T> Outcome<T> {
    /// The computed result, or `None` when the data were insufficient.
    pub fn complete(&self) -> Option<&T> {
        match self {
            Self::Complete(t) => Some(t),
            Self::Insufficient(_) => None,
        }
    }

    /// The computed result by value, or `None` when the data were insufficient.
    pub fn into_complete(self) -> Option<T> {
        match self {
            Self::Complete(t) => Some(t),
            Self::Insufficient(_) => None,
        }
    }

    /// Why the data were insufficient, or `None` when the test was computed.
    pub fn insufficient(&self) -> Option<&InsufficientData> {
        match self {
            Self::Complete(_) => None,
            Self::Insufficient(why) => Some(why),
        }
    }
}

/// Why a test could not be computed from the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
#[non_exhaustive]
pub enum InsufficientData {
    /// A variant has no units (no exposures) yet. `variant` is its index in
    /// the input (for the two-sample tests, 0 is the control, 1 the treatment).
    EmptyVariant {
        /// Index of the empty variant.
        variant: usize,
    },
    /// A variant has fewer observations than the test needs (Welch's test
    /// needs two per variant to estimate a variance).
    TooFewObservations {
        /// Index of the variant.
        variant: usize,
        /// Observations it has.
        observed: u64,
        /// Observations the test needs.
        required: u64,
    },
    /// The pooled data have no variation, so the standard error is zero and
    /// the statistic is undefined: nobody converted, everybody converted, or
    /// every value in every variant is the same within its variant.
    NoVariation,
    /// No units at all were observed (sample-ratio-mismatch check).
    NoUnits,
}

impl std::fmt::Display for InsufficientData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::EmptyVariant { variant } => write!(f, "variant {variant} has no units yet"),
            Self::TooFewObservations {
                variant,
                observed,
                required,
            } => write!(
                f,
                "variant {variant} has {observed} observations; the test needs at least {required}"
            ),
            Self::NoVariation => f.write_str(
                "the data have no variation (no conversions, only conversions, or constant values)",
            ),
            Self::NoUnits => f.write_str("no units were observed"),
        }
    }
}

/// A two-sided confidence interval `[lower, upper]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// Lower bound.
    pub lower: f64,
    /// Upper bound.
    pub upper: f64,
}

impl Interval {
    /// `estimate ± half_width`.
    pub(crate) fn around(estimate: f64, half_width: f64) -> Self {
        Self {
            lower: estimate - half_width,
            upper: estimate + half_width,
        }
    }

    /// Whether `value` lies inside the interval (bounds included).
    pub fn contains(&self, value: f64) -> bool {
        self.lower <= value && value <= self.upper
    }
}

/// A lift of the treatment over the control with its confidence interval.
///
/// For an absolute lift the unit is the metric's (a rate difference such as
/// `0.012` = 1.2 percentage points, or a difference of means). For a relative
/// lift it is a fraction of the control: `0.05` means the treatment is 5 %
/// above the control.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Lift {
    /// Point estimate.
    pub estimate: f64,
    /// Two-sided confidence interval at level `1 - alpha`, or `None` when the
    /// interval's formula is undefined for these data (documented per test).
    pub confidence_interval: Option<Interval>,
}
