//! Aggregation of exposures and metric events into the inputs of the tests.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::assignment::{ExposureRecord, UnitKind};
use super::definition::{Experiment, MetricType};
use super::error::ExperimentError;
use super::proportion::ConversionCounts;
use super::welch::{RunningSummary, SampleSummary};

/// Something a unit did that a metric measures: a purchase, a sign-up, an
/// amount.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricEvent {
    /// User or tenant (default: user).
    #[serde(default = "default_kind")]
    pub unit_kind: UnitKind,
    /// The user or tenant id, as in the exposure records.
    pub unit_id: String,
    /// The metric key.
    pub metric: String,
    /// For a continuous metric, the amount (summed per unit). A conversion
    /// metric ignores it: any event is a conversion.
    #[serde(default = "default_value")]
    pub value: f64,
    /// When it happened. Events before the unit's first exposure are not
    /// counted (the variant cannot have caused them).
    pub timestamp: DateTime<Utc>,
}

fn default_kind() -> UnitKind {
    UnitKind::User
}

fn default_value() -> f64 {
    1.0
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Accumulator {
    Conversion(u64),
    Continuous(RunningSummary),
}

/// Units and metric aggregates per variant of one experiment: what
/// [`Experiment::analyze`] consumes.
///
/// Fill it with [`Experiment::aggregate`] from exposure records and metric
/// events, or unit by unit with [`ExperimentData::add_unit`] (from a
/// warehouse query that already has one row per unit). Memory is fixed:
/// a counter or a three-number running summary per (variant, metric),
/// however many units are added.
#[derive(Debug, Clone, PartialEq)]
pub struct ExperimentData {
    experiment: String,
    variant_ids: Vec<String>,
    metric_keys: Vec<String>,
    units: Vec<u64>,
    /// `variants × metrics`, row-major.
    cells: Vec<Accumulator>,
    conflicting_units: u64,
    ignored_events: u64,
}

impl ExperimentData {
    /// Empty data for `experiment`.
    pub fn new(experiment: &Experiment) -> Self {
        let metric_types: Vec<MetricType> =
            experiment.metrics().iter().map(|m| m.metric_type).collect();
        let cells = experiment
            .variants()
            .iter()
            .flat_map(|_| {
                metric_types.iter().map(|t| match t {
                    MetricType::Conversion => Accumulator::Conversion(0),
                    MetricType::Continuous => Accumulator::Continuous(RunningSummary::new()),
                })
            })
            .collect();
        Self {
            experiment: experiment.key().to_owned(),
            variant_ids: experiment.variants().iter().map(|v| v.id.clone()).collect(),
            metric_keys: experiment.metrics().iter().map(|m| m.key.clone()).collect(),
            units: vec![0; experiment.variants().len()],
            cells,
            conflicting_units: 0,
            ignored_events: 0,
        }
    }

    /// Adds one unit exposed to `variant` with its per-metric `values`:
    /// for a conversion metric a value > 0 means converted; for a continuous
    /// metric the value is the unit's total. A metric missing from `values`
    /// counts as 0 (not converted, or a total of 0). O(metrics × values)
    /// time, one allocation of `metrics` totals.
    ///
    /// # Errors
    /// [`ExperimentError::Unknown`] for a variant or metric the experiment
    /// does not define; [`ExperimentError::InvalidSummary`] for a value that
    /// is not finite. Nothing is added then.
    pub fn add_unit(
        &mut self,
        variant: &str,
        values: &[(&str, f64)],
    ) -> Result<(), ExperimentError> {
        let v = self.variant_position(variant)?;
        for (metric, value) in values {
            self.metric_position(metric)?;
            if !value.is_finite() {
                return Err(ExperimentError::InvalidSummary {
                    field: "value",
                    value: *value,
                    expected: "a finite number",
                });
            }
        }
        let m_count = self.metric_keys.len();
        let totals: Vec<f64> = self
            .metric_keys
            .iter()
            .map(|key| {
                values
                    .iter()
                    .filter(|(k, _)| k == key)
                    .map(|(_, x)| x)
                    .sum()
            })
            .collect();
        if let Some(&bad) = totals.iter().find(|t| !t.is_finite()) {
            return Err(ExperimentError::InvalidSummary {
                field: "value",
                value: bad,
                expected: "per-metric totals that stay finite",
            });
        }
        for (m, &total) in totals.iter().enumerate() {
            match &mut self.cells[v * m_count + m] {
                Accumulator::Conversion(n) => {
                    if total > 0.0 {
                        *n += 1;
                    }
                }
                Accumulator::Continuous(acc) => acc.push(total)?,
            }
        }
        self.units[v] += 1;
        Ok(())
    }

    /// The experiment key the data belong to.
    pub fn experiment(&self) -> &str {
        &self.experiment
    }

    /// Units per variant, in the experiment's variant order.
    pub fn units(&self) -> &[u64] {
        &self.units
    }

    /// Units of one variant, or `None` for an unknown variant.
    pub fn variant_units(&self, variant: &str) -> Option<u64> {
        let v = self.variant_ids.iter().position(|id| id == variant)?;
        Some(self.units[v])
    }

    /// Units and conversions of `variant` for a conversion `metric`, or
    /// `None` when either is unknown or the metric is continuous.
    pub fn conversions(&self, variant: &str, metric: &str) -> Option<ConversionCounts> {
        let v = self.variant_ids.iter().position(|id| id == variant)?;
        let m = self.metric_keys.iter().position(|k| k == metric)?;
        self.conversions_at(v, m)
    }

    /// The summary of a continuous `metric` in `variant`, or `None` when
    /// either is unknown or the metric is a conversion metric.
    pub fn summary(&self, variant: &str, metric: &str) -> Option<SampleSummary> {
        let v = self.variant_ids.iter().position(|id| id == variant)?;
        let m = self.metric_keys.iter().position(|k| k == metric)?;
        self.summary_at(v, m)
    }

    /// Units left out by [`Experiment::aggregate`] because they were exposed
    /// to more than one variant (broken assignment: investigate if not 0).
    pub fn conflicting_units(&self) -> u64 {
        self.conflicting_units
    }

    /// Metric events [`Experiment::aggregate`] did not count: for units never
    /// exposed, before the unit's first exposure, or for metrics the
    /// experiment does not define.
    pub fn ignored_events(&self) -> u64 {
        self.ignored_events
    }

    pub(crate) fn conversions_at(&self, v: usize, m: usize) -> Option<ConversionCounts> {
        match self.cells.get(v * self.metric_keys.len() + m)? {
            Accumulator::Conversion(n) => Some(ConversionCounts::new(self.units[v], *n)),
            Accumulator::Continuous(_) => None,
        }
    }

    pub(crate) fn summary_at(&self, v: usize, m: usize) -> Option<SampleSummary> {
        match self.cells.get(v * self.metric_keys.len() + m)? {
            Accumulator::Continuous(acc) => Some(acc.summary()),
            Accumulator::Conversion(_) => None,
        }
    }

    fn variant_position(&self, variant: &str) -> Result<usize, ExperimentError> {
        self.variant_ids
            .iter()
            .position(|id| id == variant)
            .ok_or_else(|| ExperimentError::Unknown {
                experiment: self.experiment.clone(),
                kind: "variant",
                name: variant.to_owned(),
            })
    }

    fn metric_position(&self, metric: &str) -> Result<usize, ExperimentError> {
        self.metric_keys
            .iter()
            .position(|k| k == metric)
            .ok_or_else(|| ExperimentError::Unknown {
                experiment: self.experiment.clone(),
                kind: "metric",
                name: metric.to_owned(),
            })
    }
}

struct UnitState {
    variant: usize,
    first_exposure: DateTime<Utc>,
    conflict: bool,
    totals: Vec<f64>,
}

impl Experiment {
    /// Aggregates exposure records and metric events into [`ExperimentData`].
    ///
    /// - A unit counts once, in the variant of its exposures, from its first
    ///   exposure on. Records of other experiments are skipped.
    /// - A unit exposed to two variants is left out and counted in
    ///   [`ExperimentData::conflicting_units`].
    /// - A conversion metric counts a unit as converted if it has at least
    ///   one event of that metric at or after its first exposure; a
    ///   continuous metric sums the unit's event values (0 without events).
    /// - Other events are counted in [`ExperimentData::ignored_events`].
    ///
    /// Units are processed in a fixed order (sorted by id), so the result is
    /// deterministic. Cost: O(E log U + M) time and O(U × metrics) memory for
    /// U units, E exposure records and M events, released on return.
    ///
    /// # Errors
    /// [`ExperimentError::Unknown`] for a record of this experiment naming a
    /// variant it does not define; [`ExperimentError::InvalidSummary`] for a
    /// non-finite event value of a continuous metric.
    pub fn aggregate<'a>(
        &self,
        exposures: impl IntoIterator<Item = &'a ExposureRecord>,
        events: impl IntoIterator<Item = &'a MetricEvent>,
    ) -> Result<ExperimentData, ExperimentError> {
        let metrics = self.metrics();
        let mut units: BTreeMap<(UnitKind, &'a str), UnitState> = BTreeMap::new();
        for record in exposures {
            if record.experiment != self.key() {
                continue;
            }
            let variant =
                self.variant_index(&record.variant)
                    .ok_or_else(|| ExperimentError::Unknown {
                        experiment: self.key().to_owned(),
                        kind: "variant",
                        name: record.variant.clone(),
                    })?;
            let state = units
                .entry((record.unit_kind, record.unit_id.as_str()))
                .or_insert_with(|| UnitState {
                    variant,
                    first_exposure: record.timestamp,
                    conflict: false,
                    totals: vec![0.0; metrics.len()],
                });
            state.conflict |= state.variant != variant;
            state.first_exposure = state.first_exposure.min(record.timestamp);
        }
        let mut data = ExperimentData::new(self);
        for event in events {
            let state = units.get_mut(&(event.unit_kind, event.unit_id.as_str()));
            let metric = self.metric_index(&event.metric);
            let (Some(state), Some(m)) = (state, metric) else {
                data.ignored_events += 1;
                continue;
            };
            if event.timestamp < state.first_exposure {
                data.ignored_events += 1;
                continue;
            }
            match metrics[m].metric_type {
                MetricType::Conversion => state.totals[m] = 1.0,
                MetricType::Continuous => {
                    if !event.value.is_finite() {
                        return Err(ExperimentError::InvalidSummary {
                            field: "value",
                            value: event.value,
                            expected: "a finite number",
                        });
                    }
                    state.totals[m] += event.value;
                }
            }
        }
        let m_count = metrics.len();
        for state in units.values() {
            if state.conflict {
                data.conflicting_units += 1;
                continue;
            }
            for (m, total) in state.totals.iter().enumerate() {
                match &mut data.cells[state.variant * m_count + m] {
                    Accumulator::Conversion(n) => {
                        if *total > 0.0 {
                            *n += 1;
                        }
                    }
                    Accumulator::Continuous(acc) => acc.push(*total)?,
                }
            }
            data.units[state.variant] += 1;
        }
        if data.conflicting_units > 0 {
            tracing::warn!(
                experiment = %self.key(),
                conflicting_units = data.conflicting_units,
                "units exposed to more than one variant were left out"
            );
        }
        Ok(data)
    }
}
