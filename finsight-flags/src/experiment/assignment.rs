//! Assignment of units to experiment variants through the flag engine, and
//! the exposure records the analysis consumes.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::definition::Experiment;
use super::error::ExperimentError;
use crate::{
    Clock, EvaluationContext, ExposureEvent, FlagDefinition, FlagEngine, FlagType, Reason,
    SystemClock, Unit,
};

/// Relative tolerance when comparing the flag's weight shares with the
/// experiment's allocations.
const SHARE_TOLERANCE: f64 = 1e-6;

/// Whether a unit is a user or a tenant (the flag engine buckets on the user
/// id, or on the tenant id when there is none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitKind {
    /// Bucketed on the user id.
    User,
    /// Bucketed on the tenant id.
    Tenant,
}

impl From<Unit<'_>> for UnitKind {
    fn from(unit: Unit<'_>) -> Self {
        match unit {
            Unit::User(_) => Self::User,
            Unit::Tenant(_) => Self::Tenant,
        }
    }
}

/// One unit was exposed to one variant of an experiment: the input of
/// [`Experiment::aggregate`].
///
/// Produced by [`ExperimentAssigner::assign`], or from the flag engine's
/// exposure stream with [`Experiment::exposure_from_event`]. Serializable,
/// so it can travel through a log or a message bus to the analysis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExposureRecord {
    /// The experiment key.
    pub experiment: String,
    /// The variant id served.
    pub variant: String,
    /// User or tenant.
    pub unit_kind: UnitKind,
    /// The user or tenant id.
    pub unit_id: String,
    /// The bucket (`0..=99`) the flag engine computed, when known.
    #[serde(default)]
    pub bucket: Option<u8>,
    /// When the unit was exposed.
    pub timestamp: DateTime<Utc>,
}

/// Why a unit is not in the experiment.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotEnrolled {
    /// The flag served no variant: the reason is the engine's (flag not
    /// found or inactive, kill switch, targeting not matched, missing
    /// bucketing key, an environment override, ...).
    Flag(Reason),
    /// The flag served a variant the experiment does not define (the flag
    /// was changed after the experiment was set up).
    VariantNotInExperiment(String),
}

/// The result of [`ExperimentAssigner::assign`].
#[derive(Debug, Clone, PartialEq)]
pub enum Enrollment {
    /// The unit is in the experiment; record the exposure when the variant
    /// is actually shown.
    Enrolled {
        /// Index of the variant in [`Experiment::variants`].
        variant_index: usize,
        /// The value the flag serves for this variant.
        value: Value,
        /// The exposure to record.
        exposure: ExposureRecord,
    },
    /// The unit is not in the experiment; serve the default experience.
    NotEnrolled(NotEnrolled),
}

impl Enrollment {
    /// The variant id, when enrolled.
    pub fn variant(&self) -> Option<&str> {
        match self {
            Self::Enrolled { exposure, .. } => Some(&exposure.variant),
            Self::NotEnrolled(_) => None,
        }
    }
}

impl Experiment {
    /// Checks that `flag` can run this experiment: it has the experiment's
    /// flag key, is multivariate, has every experiment variant, gives weight
    /// only to those variants, and splits its weight in the experiment's
    /// allocation (relative tolerance 1e-6); a control marked on the flag
    /// must be the experiment's control.
    ///
    /// The flag still decides who is eligible (status, targeting, tenant and
    /// tier requirements); units it does not serve a variant are simply not
    /// enrolled.
    ///
    /// # Errors
    /// [`ExperimentError::FlagMismatch`] saying what differs.
    pub fn check_flag(&self, flag: &FlagDefinition) -> Result<(), ExperimentError> {
        let mismatch = |message: String| ExperimentError::FlagMismatch {
            experiment: self.key().to_owned(),
            flag: flag.key.clone(),
            message,
        };
        if flag.key != self.flag_key() {
            return Err(mismatch(format!(
                "the experiment runs on flag `{}`",
                self.flag_key()
            )));
        }
        if flag.flag_type != FlagType::Multivariate {
            return Err(mismatch(format!(
                "the flag is {:?}; experiments need a multivariate flag",
                flag.flag_type
            )));
        }
        let total: f64 = flag.variants.iter().map(|v| v.weight.max(0.0)).sum();
        if !(total.is_finite() && total > 0.0) {
            return Err(mismatch("the flag's variant weights sum to 0".into()));
        }
        for fv in &flag.variants {
            if fv.weight > 0.0 && self.variant_index(&fv.id).is_none() {
                return Err(mismatch(format!(
                    "flag variant `{}` has weight {} but is not an experiment variant; give it weight 0 or add it",
                    fv.id, fv.weight
                )));
            }
        }
        for (i, ev) in self.variants().iter().enumerate() {
            let Some(fv) = flag.variants.iter().find(|fv| fv.id == ev.id) else {
                return Err(mismatch(format!("the flag has no variant `{}`", ev.id)));
            };
            let share = fv.weight.max(0.0) / total * 100.0;
            if (share - ev.allocation).abs() > SHARE_TOLERANCE * ev.allocation.max(1.0) {
                return Err(mismatch(format!(
                    "variant `{}` gets {share}% of the flag's traffic but {}% in the experiment",
                    ev.id, ev.allocation
                )));
            }
            if fv.is_control && i != self.control_index() {
                return Err(mismatch(format!(
                    "the flag marks `{}` as control but the experiment's control is `{}`",
                    ev.id,
                    self.control().id
                )));
            }
        }
        Ok(())
    }

    /// Turns one of the flag engine's exposure events (flags with
    /// `track_exposure: true`) into an exposure record of this experiment, or
    /// `None` when the event is for another flag, served no variant of this
    /// experiment, or has no user or tenant id. Allocates the record's
    /// strings.
    pub fn exposure_from_event(&self, event: &ExposureEvent) -> Option<ExposureRecord> {
        if event.flag_key != self.flag_key() || event.reason != Reason::VariantSelected {
            return None;
        }
        let variant = event.variant.as_deref()?;
        self.variant_index(variant)?;
        let (unit_kind, unit_id) = match (&event.user_id, &event.tenant_id) {
            (Some(u), _) => (UnitKind::User, u.clone()),
            (None, Some(t)) => (UnitKind::Tenant, t.clone()),
            (None, None) => return None,
        };
        Some(ExposureRecord {
            experiment: self.key().to_owned(),
            variant: variant.to_owned(),
            unit_kind,
            unit_id,
            bucket: None,
            timestamp: event.timestamp,
        })
    }
}

/// Assigns units to an experiment's variants through a [`FlagEngine`].
///
/// Assignment *is* the flag evaluation: the same md5 buckets as every other
/// evaluation of the flag (SPEC §1.3), and with `sticky_bucketing: true` on
/// the flag the same sticky assignments (SPEC §1.4), so a unit keeps its
/// variant when the weights change mid-experiment. The assigner adds the
/// mapping to experiment variants and an [`ExposureRecord`] stamped by its
/// clock.
///
/// Cost per call: one flag evaluation (no I/O, never waits on a reload) plus the
/// allocations of the record (experiment key, variant id, unit id) and the
/// served value.
#[derive(Debug, Clone)]
pub struct ExperimentAssigner {
    experiment: Arc<Experiment>,
    engine: FlagEngine,
    clock: Arc<dyn Clock>,
}

impl ExperimentAssigner {
    /// An assigner for `experiment` on `engine`, stamping records with the
    /// system clock. Checks the engine's current flag with
    /// [`Experiment::check_flag`].
    ///
    /// # Errors
    /// [`ExperimentError::FlagMismatch`] when the flag is missing or does not
    /// fit the experiment.
    pub fn new(experiment: Experiment, engine: FlagEngine) -> Result<Self, ExperimentError> {
        let assigner = Self {
            experiment: Arc::new(experiment),
            engine,
            clock: Arc::new(SystemClock),
        };
        assigner.check_flag()?;
        Ok(assigner)
    }

    /// Stamps exposure records with `clock` (a [`ManualClock`](crate::ManualClock) in tests).
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The experiment.
    pub fn experiment(&self) -> &Experiment {
        &self.experiment
    }

    /// Re-checks the engine's current flag against the experiment (call it
    /// after a flag reload; assignment itself never fails).
    ///
    /// # Errors
    /// [`ExperimentError::FlagMismatch`] saying what differs.
    pub fn check_flag(&self) -> Result<(), ExperimentError> {
        let flags = self.engine.flags();
        match flags.get(self.experiment.flag_key()) {
            Some(flag) => self.experiment.check_flag(flag),
            None => Err(ExperimentError::FlagMismatch {
                experiment: self.experiment.key().to_owned(),
                flag: self.experiment.flag_key().to_owned(),
                message: "the engine has no flag with this key".into(),
            }),
        }
    }

    /// Assigns the unit of `ctx` (its user id, else its tenant id): evaluates
    /// the experiment's flag and maps the served variant to the experiment.
    /// Never fails: a unit the flag serves no experiment variant is
    /// [`Enrollment::NotEnrolled`] with the reason.
    pub fn assign(&self, ctx: &EvaluationContext) -> Enrollment {
        let eval = self
            .engine
            .evaluate(self.experiment.flag_key(), ctx, Value::Null);
        let (Reason::VariantSelected, Some(variant)) = (eval.reason, eval.variant.as_deref())
        else {
            tracing::trace!(experiment = %self.experiment.key(), reason = %eval.reason, "unit not enrolled");
            return Enrollment::NotEnrolled(NotEnrolled::Flag(eval.reason));
        };
        let Some(variant_index) = self.experiment.variant_index(variant) else {
            tracing::warn!(
                experiment = %self.experiment.key(),
                variant,
                "flag served a variant the experiment does not define"
            );
            return Enrollment::NotEnrolled(NotEnrolled::VariantNotInExperiment(
                variant.to_owned(),
            ));
        };
        // A variant is only selected when the context has a bucketing unit.
        let Some(unit) = ctx.unit() else {
            return Enrollment::NotEnrolled(NotEnrolled::Flag(Reason::MissingBucketingKey));
        };
        Enrollment::Enrolled {
            variant_index,
            exposure: ExposureRecord {
                experiment: self.experiment.key().to_owned(),
                variant: variant.to_owned(),
                unit_kind: unit.into(),
                unit_id: unit.id().to_owned(),
                bucket: eval.bucket,
                timestamp: self.clock.now(),
            },
            value: eval.value,
        }
    }
}
