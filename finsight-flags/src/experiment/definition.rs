//! Experiment definitions: what is tested, on which flag, measured how.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::error::ExperimentError;
use super::sample_size::{MinimumDetectableEffect, PowerAnalysis, SampleSize};

/// How far the allocations may be from summing to exactly 100 (floating-point
/// noise from fractions such as 33.3 + 33.3 + 33.4).
const ALLOCATION_TOLERANCE: f64 = 1e-6;

/// An experiment as written (JSON, snake_case, like the flag definitions).
///
/// Deserialize it, or build it in code, then validate it into an
/// [`Experiment`] with [`Experiment::new`] (or parse and validate in one step
/// with [`Experiment::from_json`]).
///
/// ```json
/// {
///   "key": "checkout-redesign",
///   "name": "Checkout redesign",
///   "hypothesis": "A one-page checkout raises completed purchases",
///   "flag_key": "checkout-redesign",
///   "variants": [
///     {"id": "control", "allocation": 50, "is_control": true},
///     {"id": "one-page", "allocation": 50}
///   ],
///   "metrics": [
///     {"key": "purchase", "metric_type": "conversion", "goal": "increase",
///      "primary": true, "baseline": 0.1},
///     {"key": "order_value", "metric_type": "continuous", "goal": "increase",
///      "baseline": 80.0, "standard_deviation": 45.0}
///   ],
///   "significance_level": 0.05,
///   "power": 0.8,
///   "minimum_detectable_effect": {"relative": 0.05}
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentDefinition {
    /// Unique key of the experiment (appears in exposure records).
    pub key: String,
    /// Human-readable name.
    pub name: String,
    /// What the experiment expects to change and why.
    pub hypothesis: String,
    /// The multivariate flag whose variants the experiment assigns.
    pub flag_key: String,
    /// The arms: at least two, exactly one control, allocations summing to 100.
    pub variants: Vec<ExperimentVariant>,
    /// What is measured: at least one metric, exactly one primary.
    pub metrics: Vec<Metric>,
    /// Significance level alpha of every test, in (0, 1). Default 0.05.
    #[serde(default = "default_significance_level")]
    pub significance_level: f64,
    /// Power (1 − beta) the sample size is planned for, in (0, 1). Default 0.8.
    #[serde(default = "default_power")]
    pub power: f64,
    /// The smallest effect on the primary metric the experiment must detect.
    pub minimum_detectable_effect: MinimumDetectableEffect,
}

fn default_significance_level() -> f64 {
    0.05
}

fn default_power() -> f64 {
    0.8
}

/// One arm of an experiment; `id` is a variant id of the flag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentVariant {
    /// The flag variant's id.
    pub id: String,
    /// Human-readable name (optional).
    #[serde(default)]
    pub name: String,
    /// Share of the experiment's traffic in percent, in (0, 100].
    pub allocation: f64,
    /// Whether this arm is the control (exactly one is).
    #[serde(default)]
    pub is_control: bool,
}

/// The kind of a metric, which decides the test that analyses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricType {
    /// Did the unit do it at least once (purchase, sign-up)? Analysed with
    /// the two-proportion z-test, and the chi-square test for > 2 variants.
    Conversion,
    /// A number per unit (revenue, session length); a unit without events
    /// counts as 0. Analysed with Welch's t-test.
    Continuous,
}

/// Which direction of change is an improvement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    /// Higher is better (conversion, revenue).
    Increase,
    /// Lower is better (latency, churn, error rate).
    Decrease,
}

/// A metric of an experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// Key that metric events carry.
    pub key: String,
    /// Human-readable name (optional).
    #[serde(default)]
    pub name: String,
    /// Conversion or continuous.
    pub metric_type: MetricType,
    /// Which direction is an improvement.
    pub goal: Goal,
    /// Whether this is the primary metric (exactly one is): the one the
    /// sample size is planned for and the decision rests on.
    #[serde(default)]
    pub primary: bool,
    /// The expected control value, for planning: the conversion rate in
    /// (0, 1) or the mean of a continuous metric.
    #[serde(default)]
    pub baseline: Option<f64>,
    /// The standard deviation of a continuous metric per unit, for planning.
    #[serde(default)]
    pub standard_deviation: Option<f64>,
}

/// A validated experiment: every invariant of [`ExperimentDefinition`] holds.
///
/// Cheap to share (`Clone` copies the definition; wrap it in an `Arc` to
/// share without copying). It (de)serializes as its definition, and
/// deserializing validates, so an `Experiment` can sit directly in a
/// service's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ExperimentDefinition", into = "ExperimentDefinition")]
pub struct Experiment {
    def: ExperimentDefinition,
    control: usize,
    primary: usize,
}

/// Planned units per variant for the primary metric, from
/// [`Experiment::sample_size`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentPlan {
    /// Units each variant needs, in definition order (the control's is the
    /// largest any comparison asks of it).
    pub variants: Vec<PlannedVariant>,
    /// Units to enrol in total so that, split by the allocation, every
    /// variant gets at least its planned units: `max(nᵢ / shareᵢ)`.
    pub total_units: u64,
}

/// One variant's planned size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedVariant {
    /// The variant id.
    pub id: String,
    /// Units it needs.
    pub units: u64,
}

impl Experiment {
    /// Validates a definition.
    ///
    /// Checks: non-empty `key`, `name`, `hypothesis` and `flag_key`; at
    /// least two variants with non-empty, unique ids, each allocation in
    /// (0, 100] and the allocations summing to 100; exactly one control; at
    /// least one metric with a non-empty, unique key, exactly one primary;
    /// a conversion metric's `baseline` in (0, 1) and no
    /// `standard_deviation`; a continuous metric's `baseline` finite and
    /// `standard_deviation` finite and > 0; `significance_level` and `power`
    /// in (0, 1); a finite, non-zero `minimum_detectable_effect`, greater
    /// than −1 when relative.
    ///
    /// # Errors
    /// [`ExperimentError::InvalidDefinition`] naming the experiment and the
    /// first offending field (`variants[2].allocation`, `power`, ...).
    pub fn new(def: ExperimentDefinition) -> Result<Self, ExperimentError> {
        let (control, primary) = validate(&def)?;
        tracing::debug!(experiment = %def.key, flag = %def.flag_key, "experiment validated");
        Ok(Self {
            def,
            control,
            primary,
        })
    }

    /// Parses a JSON definition and validates it.
    ///
    /// # Errors
    /// [`ExperimentError::InvalidDefinition`]: for JSON that does not match
    /// the format, the field is the path the parser stopped at and the
    /// message its error; otherwise as [`Experiment::new`].
    pub fn from_json(json: &str) -> Result<Self, ExperimentError> {
        let de = &mut serde_json::Deserializer::from_str(json);
        let def: ExperimentDefinition = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            ExperimentError::definition("", path, e.into_inner().to_string())
        })?;
        Self::new(def)
    }

    /// The definition.
    pub fn definition(&self) -> &ExperimentDefinition {
        &self.def
    }

    /// The experiment key.
    pub fn key(&self) -> &str {
        &self.def.key
    }

    /// The flag the experiment assigns through.
    pub fn flag_key(&self) -> &str {
        &self.def.flag_key
    }

    /// The variants, in definition order.
    pub fn variants(&self) -> &[ExperimentVariant] {
        &self.def.variants
    }

    /// Position of the control in [`variants`](Self::variants).
    pub fn control_index(&self) -> usize {
        self.control
    }

    /// The control variant.
    pub fn control(&self) -> &ExperimentVariant {
        &self.def.variants[self.control]
    }

    /// Position of a variant id in [`variants`](Self::variants). O(variants).
    pub fn variant_index(&self, id: &str) -> Option<usize> {
        self.def.variants.iter().position(|v| v.id == id)
    }

    /// The metrics, in definition order.
    pub fn metrics(&self) -> &[Metric] {
        &self.def.metrics
    }

    /// The primary metric.
    pub fn primary_metric(&self) -> &Metric {
        &self.def.metrics[self.primary]
    }

    /// Position of a metric key in [`metrics`](Self::metrics). O(metrics).
    pub fn metric_index(&self, key: &str) -> Option<usize> {
        self.def.metrics.iter().position(|m| m.key == key)
    }

    /// The significance level alpha.
    pub fn significance_level(&self) -> f64 {
        self.def.significance_level
    }

    /// Units per variant needed to detect the minimum detectable effect on
    /// the primary metric with the experiment's alpha and power.
    ///
    /// Each treatment is planned against the control with the ratio of their
    /// allocations ([`PowerAnalysis::with_ratio`]), through
    /// [`PowerAnalysis::sample_size_proportions`] (conversion) or
    /// [`PowerAnalysis::sample_size_means`] (continuous). Each comparison is
    /// planned at the full alpha: with several treatments, divide
    /// `significance_level` by their number (Bonferroni) in the definition if
    /// the family-wise error rate must stay at alpha.
    ///
    /// # Errors
    /// [`ExperimentError::InvalidDefinition`] naming
    /// `metrics[i].baseline` or `metrics[i].standard_deviation` when the
    /// primary metric lacks what planning needs; the errors of the
    /// [`PowerAnalysis`] methods when the effect is impossible for the
    /// baseline (e.g. a rate above 1).
    pub fn sample_size(&self) -> Result<ExperimentPlan, ExperimentError> {
        let metric = self.primary_metric();
        let field = |name: &str| format!("metrics[{}].{name}", self.primary);
        let baseline = metric.baseline.ok_or_else(|| {
            ExperimentError::definition(
                &self.def.key,
                field("baseline"),
                "planning needs the primary metric's baseline",
            )
        })?;
        let control = self.control();
        let mut units = vec![0_u64; self.def.variants.len()];
        for (i, v) in self.def.variants.iter().enumerate() {
            if i == self.control {
                continue;
            }
            let design = PowerAnalysis::new(self.def.significance_level, self.def.power)?
                .with_ratio(v.allocation / control.allocation)?;
            let size: SampleSize = match metric.metric_type {
                MetricType::Conversion => {
                    design.sample_size_proportions(baseline, self.def.minimum_detectable_effect)?
                }
                MetricType::Continuous => {
                    let sd = metric.standard_deviation.ok_or_else(|| {
                        ExperimentError::definition(
                            &self.def.key,
                            field("standard_deviation"),
                            "planning a continuous metric needs its standard deviation",
                        )
                    })?;
                    design.sample_size_means(baseline, sd, self.def.minimum_detectable_effect)?
                }
            };
            units[i] = size.treatment;
            units[self.control] = units[self.control].max(size.control);
        }
        let total = self
            .def
            .variants
            .iter()
            .zip(&units)
            .map(|(v, &n)| {
                #[allow(clippy::cast_precision_loss)]
                let needed = n as f64 / (v.allocation / 100.0);
                needed
            })
            .fold(0.0_f64, f64::max);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let total_units = if total >= u64::MAX as f64 {
            u64::MAX
        } else {
            (total - 1e-9 * total).ceil() as u64
        };
        Ok(ExperimentPlan {
            variants: self
                .def
                .variants
                .iter()
                .zip(units)
                .map(|(v, units)| PlannedVariant {
                    id: v.id.clone(),
                    units,
                })
                .collect(),
            total_units,
        })
    }
}

impl From<Experiment> for ExperimentDefinition {
    fn from(experiment: Experiment) -> Self {
        experiment.def
    }
}

impl TryFrom<ExperimentDefinition> for Experiment {
    type Error = ExperimentError;

    fn try_from(def: ExperimentDefinition) -> Result<Self, Self::Error> {
        Self::new(def)
    }
}

fn validate(def: &ExperimentDefinition) -> Result<(usize, usize), ExperimentError> {
    let key = def.key.as_str();
    let err = |field: String, message: String| ExperimentError::definition(key, field, message);
    for (field, value) in [
        ("key", &def.key),
        ("name", &def.name),
        ("hypothesis", &def.hypothesis),
        ("flag_key", &def.flag_key),
    ] {
        if value.trim().is_empty() {
            return Err(err(field.into(), "must not be empty".into()));
        }
    }

    if def.variants.len() < 2 {
        return Err(err(
            "variants".into(),
            format!(
                "an experiment needs at least 2 variants, found {}",
                def.variants.len()
            ),
        ));
    }
    let mut ids = HashSet::new();
    let mut sum = 0.0;
    let mut controls = Vec::new();
    for (i, v) in def.variants.iter().enumerate() {
        if v.id.trim().is_empty() {
            return Err(err(format!("variants[{i}].id"), "must not be empty".into()));
        }
        if !ids.insert(v.id.as_str()) {
            return Err(err(
                format!("variants[{i}].id"),
                format!("duplicate variant id `{}`", v.id),
            ));
        }
        if !(v.allocation.is_finite() && v.allocation > 0.0 && v.allocation <= 100.0) {
            return Err(err(
                format!("variants[{i}].allocation"),
                format!(
                    "{} is outside (0, 100]; give every variant a positive percentage",
                    v.allocation
                ),
            ));
        }
        sum += v.allocation;
        if v.is_control {
            controls.push(i);
        }
    }
    if (sum - 100.0).abs() > ALLOCATION_TOLERANCE {
        return Err(err(
            "variants".into(),
            format!("allocations sum to {sum}; they must sum to 100"),
        ));
    }
    let control = match controls.as_slice() {
        [one] => *one,
        [] => {
            return Err(err(
                "variants".into(),
                "no variant has `is_control: true`; mark exactly one".into(),
            ));
        }
        many => {
            let names: Vec<&str> = many.iter().map(|&i| def.variants[i].id.as_str()).collect();
            return Err(err(
                "variants".into(),
                format!(
                    "{} variants are marked as control ({}); mark exactly one",
                    many.len(),
                    names.join(", ")
                ),
            ));
        }
    };

    if def.metrics.is_empty() {
        return Err(err(
            "metrics".into(),
            "an experiment needs at least one metric".into(),
        ));
    }
    let mut keys = HashSet::new();
    let mut primaries = Vec::new();
    for (i, m) in def.metrics.iter().enumerate() {
        if m.key.trim().is_empty() {
            return Err(err(format!("metrics[{i}].key"), "must not be empty".into()));
        }
        if !keys.insert(m.key.as_str()) {
            return Err(err(
                format!("metrics[{i}].key"),
                format!("duplicate metric key `{}`", m.key),
            ));
        }
        if m.primary {
            primaries.push(i);
        }
        match m.metric_type {
            MetricType::Conversion => {
                if let Some(b) = m.baseline
                    && !(b.is_finite() && b > 0.0 && b < 1.0)
                {
                    return Err(err(
                        format!("metrics[{i}].baseline"),
                        format!("{b} is not a conversion rate strictly between 0 and 1"),
                    ));
                }
                if m.standard_deviation.is_some() {
                    return Err(err(
                        format!("metrics[{i}].standard_deviation"),
                        "applies to continuous metrics only; a conversion rate's variance follows from its baseline"
                            .into(),
                    ));
                }
            }
            MetricType::Continuous => {
                if let Some(b) = m.baseline
                    && !b.is_finite()
                {
                    return Err(err(
                        format!("metrics[{i}].baseline"),
                        format!("{b} is not a finite number"),
                    ));
                }
                if let Some(sd) = m.standard_deviation
                    && !(sd.is_finite() && sd > 0.0)
                {
                    return Err(err(
                        format!("metrics[{i}].standard_deviation"),
                        format!("{sd} is not a finite number > 0"),
                    ));
                }
            }
        }
    }
    let primary = match primaries.as_slice() {
        [one] => *one,
        [] => {
            return Err(err(
                "metrics".into(),
                "no metric has `primary: true`; mark exactly one".into(),
            ));
        }
        many => {
            let names: Vec<&str> = many.iter().map(|&i| def.metrics[i].key.as_str()).collect();
            return Err(err(
                "metrics".into(),
                format!(
                    "{} metrics are marked primary ({}); mark exactly one",
                    many.len(),
                    names.join(", ")
                ),
            ));
        }
    };

    for (field, value) in [
        ("significance_level", def.significance_level),
        ("power", def.power),
    ] {
        if !(value.is_finite() && value > 0.0 && value < 1.0) {
            return Err(err(
                field.into(),
                format!("{value} is not strictly between 0 and 1"),
            ));
        }
    }
    let (effect, relative) = match def.minimum_detectable_effect {
        MinimumDetectableEffect::Absolute(v) => (v, false),
        MinimumDetectableEffect::Relative(v) => (v, true),
    };
    if !effect.is_finite() || effect == 0.0 {
        return Err(err(
            "minimum_detectable_effect".into(),
            format!("{effect} is not a finite, non-zero effect"),
        ));
    }
    if relative && effect <= -1.0 {
        return Err(err(
            "minimum_detectable_effect".into(),
            format!(
                "a relative effect of {effect} would remove more than everything; it must be > -1"
            ),
        ));
    }
    Ok((control, primary))
}
