//! The error type of the experiment module.

/// Why an experiment computation or definition was rejected.
///
/// Every variant names the parameter or field to fix. Insufficient *data*
/// (an empty variant, no variation) is not an error: the tests return
/// [`Outcome::Insufficient`](super::Outcome::Insufficient) for it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ExperimentError {
    /// A numeric parameter is outside its domain (alpha not in (0, 1), a
    /// negative standard deviation, a minimum detectable effect that moves the
    /// rate outside [0, 1], ...).
    #[error("parameter `{name}` = {value} is invalid: {expected}")]
    InvalidParameter {
        /// The parameter, as written in the function's docs
        /// (`alpha`, `power`, `baseline`, `minimum_detectable_effect`, ...).
        name: &'static str,
        /// The value that was passed.
        value: f64,
        /// What a valid value looks like.
        expected: &'static str,
    },
    /// A variant reports more conversions than units.
    #[error(
        "variant {variant}: {conversions} conversions out of {units} units; conversions must not exceed units"
    )]
    ConversionsExceedUnits {
        /// Index of the variant in the input (0 is the first).
        variant: usize,
        /// Conversions that were passed.
        conversions: u64,
        /// Units that were passed.
        units: u64,
    },
    /// A sample summary is not consistent (a negative or non-finite variance,
    /// a non-finite mean, a value that is not finite).
    #[error("sample summary field `{field}` = {value} is invalid: {expected}")]
    InvalidSummary {
        /// `mean`, `variance` or `value`.
        field: &'static str,
        /// The value that was passed.
        value: f64,
        /// What a valid value looks like.
        expected: &'static str,
    },
    /// Two inputs that must have one entry per variant have different lengths.
    #[error(
        "`{left}` has {left_len} entries but `{right}` has {right_len}; pass one entry per variant in both"
    )]
    LengthMismatch {
        /// The first input's name.
        left: &'static str,
        /// Its length.
        left_len: usize,
        /// The second input's name.
        right: &'static str,
        /// Its length.
        right_len: usize,
    },
    /// A test needs more variants than were passed.
    #[error("{test} needs at least {required} variants, got {got}")]
    TooFewVariants {
        /// The test (`chi-square test`, `sample-ratio-mismatch check`).
        test: &'static str,
        /// The minimum number of variants.
        required: usize,
        /// The number passed.
        got: usize,
    },
    /// An experiment definition is invalid.
    #[error("experiment `{experiment}`: field `{field}`: {message}")]
    InvalidDefinition {
        /// The experiment key (or `<unnamed>` when the key itself is missing).
        experiment: String,
        /// The offending field as a path (`variants[1].allocation`, `power`).
        field: String,
        /// What is wrong and what to fix.
        message: String,
    },
    /// The experiment and the flag it runs on disagree (the flag is missing,
    /// is not multivariate, lacks a variant, or splits traffic differently).
    #[error("experiment `{experiment}` does not fit flag `{flag}`: {message}")]
    FlagMismatch {
        /// The experiment key.
        experiment: String,
        /// The flag key.
        flag: String,
        /// What differs and what to fix.
        message: String,
    },
    /// [`Experiment::analyze`](super::Experiment::analyze) got data built
    /// for another experiment.
    #[error(
        "experiment `{experiment}` cannot analyse data collected for `{data}`; build the data with this experiment"
    )]
    DataMismatch {
        /// The experiment analysing.
        experiment: String,
        /// The experiment the data were built for.
        data: String,
    },
    /// An observation names a variant or metric the experiment does not have.
    #[error("experiment `{experiment}`: unknown {kind} `{name}`")]
    Unknown {
        /// The experiment key.
        experiment: String,
        /// `variant` or `metric`.
        kind: &'static str,
        /// The name that was not found.
        name: String,
    },
}

impl ExperimentError {
    pub(crate) fn param(name: &'static str, value: f64, expected: &'static str) -> Self {
        Self::InvalidParameter {
            name,
            value,
            expected,
        }
    }

    pub(crate) fn definition(
        experiment: &str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::InvalidDefinition {
            experiment: if experiment.is_empty() {
                "<unnamed>".to_owned()
            } else {
                experiment.to_owned()
            },
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Checks `0 < value < 1` (alpha, power, thresholds).
pub(crate) fn check_open_unit(name: &'static str, value: f64) -> Result<f64, ExperimentError> {
    if value.is_finite() && value > 0.0 && value < 1.0 {
        Ok(value)
    } else {
        Err(ExperimentError::param(
            name,
            value,
            "must be strictly between 0 and 1",
        ))
    }
}
