//! A loaded, validated and compiled set of flags.
//!
//! What evaluation reads is kept in a compact compiled form: one
//! [`CompiledFlag`] per flag (its scalars, the key as an `Arc<str>`), and the
//! rules, rule values, regexes, variants and prerequisites of every flag in
//! one shared [`Pool`] that flags address by [`Span`], with the
//! informational fields (`id`, `name`, `description`, `tags`, ...). Loading
//! 1,000 flags therefore allocates about once per flag (its key) instead of
//! once per string. The [`FlagDefinition`] of a flag read from JSON text is
//! only built when asked for ([`FlagSet::get`], [`FlagSet::definitions`]),
//! from the compiled flag. Validation and compilation live in `compile.rs`,
//! the JSON fast path in `load.rs`.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use regex::Regex;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use crate::compile::{Loader, no_key};
use crate::error::{Error, FlagError};
use crate::model::{FlagDefinition, FlagStatus, FlagType, Operator, RuleType, TargetingRule};

/// Compiled size limit of one regex pattern (bytes of compiled program).
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// An immutable, validated set of flags, ready to evaluate.
///
/// Building one validates every definition (SPEC §1.1 "bad input"), compiles
/// regexes once (identical patterns are compiled once per load), resolves
/// prerequisites and rejects cycles. A bad flag is left out and reported in
/// [`LoadReport::errors`]; the good ones load. Evaluation reads a set
/// through an [`FlagEngine`](crate::FlagEngine), which swaps whole sets
/// atomically.
///
/// Memory: the compiled flags (their strings once each, in one buffer),
/// plus each [`FlagDefinition`] that [`FlagSet::get`] was asked for.
#[derive(Default)]
pub struct FlagSet {
    flags: Vec<CompiledFlag>,
    index: HashMap<Arc<str>, usize, quick_cache::DefaultHashBuilder>,
    pool: Pool,
}

impl fmt::Debug for FlagSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlagSet")
            .field(
                "flags",
                &self.flags.iter().map(|f| &*f.key).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// The result of loading flags: the good set plus one error per rejected flag.
#[derive(Debug)]
#[non_exhaustive]
pub struct LoadReport {
    /// The flags that passed validation.
    pub set: FlagSet,
    /// One entry per problem found in a rejected flag (a flag may have several).
    pub errors: Vec<FlagError>,
}

impl LoadReport {
    /// The set, or the first error when any flag was rejected: for callers
    /// that want all-or-nothing loading.
    ///
    /// # Errors
    /// The first [`FlagError`] when a flag was rejected.
    pub fn strict(self) -> Result<FlagSet, FlagError> {
        match self.errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(self.set),
        }
    }
}

/// A range of a [`Pool`] vector (or of its text), in 32 bits to keep
/// compiled flags small. A pool longer than `u32::MAX` is refused at load
/// ([`Pool::too_large`]), so no span is ever cut short.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Span {
    start: u32,
    end: u32,
}

impl Span {
    pub(crate) fn new(start: usize, end: usize) -> Self {
        let at = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Self {
            start: at(start),
            end: at(end),
        }
    }

    pub(crate) const fn is_empty(self) -> bool {
        self.end <= self.start
    }

    pub(crate) const fn len(self) -> usize {
        self.end.saturating_sub(self.start) as usize
    }

    pub(crate) fn range(self) -> Range<usize> {
        self.start as usize..self.end as usize
    }
}

fn slice<T>(v: &[T], s: Span) -> &[T] {
    v.get(s.range()).unwrap_or(&[])
}

/// The storage every flag of a set shares: rule values and other strings,
/// rules, regexes, parsed operands, variants, prerequisites.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    /// Every string, back to back; [`Pool::strs`] and spans elsewhere point in.
    pub(crate) text: String,
    /// Spans of `text`: rule values, tenant restrictions, tier requirements,
    /// tags.
    pub(crate) strs: Vec<Span>,
    pub(crate) rules: Vec<CompiledRule>,
    pub(crate) regexes: Vec<Regex>,
    pub(crate) numbers: Vec<f64>,
    pub(crate) times: Vec<i64>,
    pub(crate) versions: Vec<semver::Version>,
    pub(crate) variants: Vec<CompiledVariant>,
    /// Prerequisite keys (spans of `text`).
    pub(crate) prereq_names: Vec<Span>,
    /// The flag index of each entry of `prereq_names`, once resolved.
    pub(crate) prereqs: Vec<usize>,
}

/// Lengths of a [`Pool`]'s vectors, to undo what a rejected flag added.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mark([usize; 9]);

impl Pool {
    pub(crate) fn mark(&self) -> Mark {
        Mark([
            self.text.len(),
            self.strs.len(),
            self.rules.len(),
            self.regexes.len(),
            self.numbers.len(),
            self.times.len(),
            self.versions.len(),
            self.variants.len(),
            self.prereq_names.len(),
        ])
    }

    /// Whether a vector outgrew what a [`Span`] can address.
    pub(crate) fn too_large(&self) -> bool {
        self.mark().0.iter().any(|&n| u32::try_from(n).is_err())
    }

    pub(crate) fn rollback(&mut self, m: Mark) {
        let [
            text,
            strs,
            rules,
            regexes,
            numbers,
            times,
            versions,
            variants,
            prereqs,
        ] = m.0;
        self.text.truncate(text);
        self.strs.truncate(strs);
        self.rules.truncate(rules);
        self.regexes.truncate(regexes);
        self.numbers.truncate(numbers);
        self.times.truncate(times);
        self.versions.truncate(versions);
        self.variants.truncate(variants);
        self.prereq_names.truncate(prereqs);
    }

    /// Appends `s` to the text; its span there.
    pub(crate) fn push_text(&mut self, s: &str) -> Span {
        let start = self.text.len();
        self.text.push_str(s);
        Span::new(start, self.text.len())
    }

    /// Appends strings; their span in `strs`.
    pub(crate) fn push_strs<'s>(&mut self, it: impl IntoIterator<Item = &'s str>) -> Span {
        let start = self.strs.len();
        for s in it {
            let t = self.push_text(s);
            self.strs.push(t);
        }
        Span::new(start, self.strs.len())
    }

    /// A string of the text.
    pub(crate) fn text(&self, s: Span) -> &str {
        self.text.get(s.range()).unwrap_or("")
    }

    /// The bytes of a string of the text.
    #[inline]
    pub(crate) fn bytes(&self, s: Span) -> &[u8] {
        self.text.as_bytes().get(s.range()).unwrap_or(&[])
    }

    /// Whether one of the strings of a `strs` span is `v`.
    #[inline]
    fn any_equal(&self, s: Span, v: &[u8]) -> bool {
        slice(&self.strs, s)
            .iter()
            .any(|&t| t.len() == v.len() && same(self.bytes(t), v))
    }

    /// The strings of a `strs` span.
    pub(crate) fn strs(&self, s: Span) -> impl ExactSizeIterator<Item = &str> + '_ {
        slice(&self.strs, s).iter().map(|&t| self.text(t))
    }

    pub(crate) fn rules(&self, s: Span) -> &[CompiledRule] {
        slice(&self.rules, s)
    }

    pub(crate) fn variants(&self, s: Span) -> &[CompiledVariant] {
        slice(&self.variants, s)
    }

    pub(crate) fn prereqs(&self, s: Span) -> &[usize] {
        slice(&self.prereqs, s)
    }
}

/// One flag as evaluation reads it. Its rules, variants, prerequisites and
/// lists are spans of the set's [`Pool`].
#[derive(Debug)]
pub(crate) struct CompiledFlag {
    pub(crate) key: Arc<str>,
    pub(crate) default_value: Value,
    pub(crate) environment_overrides: BTreeMap<String, Value>,
    pub(crate) expires_at_ms: Option<i64>,
    pub(crate) total_weight: f64,
    /// Into `Pool::rules`.
    pub(crate) rules: Span,
    /// Into `Pool::variants`.
    pub(crate) variants: Span,
    /// Into `Pool::prereq_names` / `Pool::prereqs`.
    pub(crate) prerequisites: Span,
    /// Into `Pool::strs`.
    pub(crate) tenant_restrictions: Span,
    /// Into `Pool::strs`.
    pub(crate) subscription_tier_requirements: Span,
    /// The fields evaluation does not read, for [`FlagSet::get`].
    pub(crate) info: Info,
    pub(crate) flag_type: FlagType,
    pub(crate) status: FlagStatus,
    pub(crate) rollout: u8,
    pub(crate) rollout_percentage: i64,
    pub(crate) kill_switch: bool,
    pub(crate) sticky_bucketing: bool,
    pub(crate) track_exposure: bool,
    /// The definition: given ([`FlagSet::from_definitions`]) or built on
    /// first request from the compiled flag.
    pub(crate) def: OnceLock<Box<FlagDefinition>>,
}

/// The fields of a definition evaluation does not read (spans of
/// `Pool::text`, `tags` of `Pool::strs`), kept to rebuild it exactly.
#[derive(Debug)]
pub(crate) struct Info {
    pub(crate) id: Span,
    pub(crate) name: Span,
    pub(crate) description: Span,
    pub(crate) owner: Option<Span>,
    pub(crate) created_at: Option<Span>,
    pub(crate) updated_at: Option<Span>,
    /// As written (also when empty, which means no expiry).
    pub(crate) expires_at: Option<Span>,
    pub(crate) tags: Span,
    pub(crate) track_events: bool,
}

/// One variant of a multivariate flag.
#[derive(Debug)]
pub(crate) struct CompiledVariant {
    pub(crate) id: Arc<str>,
    pub(crate) value: Value,
    pub(crate) weight: f64,
    /// Into `Pool::text`.
    pub(crate) name: Span,
    /// Into `Pool::text`.
    pub(crate) description: Span,
    pub(crate) is_control: bool,
}

#[derive(Debug)]
pub(crate) struct CompiledRule {
    pub(crate) rule_type: RuleType,
    pub(crate) operator: Operator,
    /// Its own allocation rather than a span of `Pool::text`: read on every
    /// evaluation of a `custom_attribute` rule, without `str` boundary checks.
    pub(crate) attribute: Option<Box<str>>,
    pub(crate) percentage: Option<u8>,
    /// The values as written (into `Pool::strs`), for a rebuilt definition.
    pub(crate) values: Span,
    pub(crate) matcher: Matcher,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Cmp {
    Eq,
    Lt,
    Lte,
    Gt,
    Gte,
}

impl Cmp {
    fn holds(self, o: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            Self::Eq => o == Equal,
            Self::Lt => o == Less,
            Self::Lte => o != Greater,
            Self::Gt => o == Greater,
            Self::Gte => o != Less,
        }
    }
}

/// How a rule compares; each span points into the pool vector of its kind
/// (`strs`, `regexes`, `numbers`, `versions`, `times`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Matcher {
    AnyEqual(Span),
    NoneEqual(Span),
    Contains(Span),
    StartsWith(Span),
    EndsWith(Span),
    Regex(Span),
    Number(Cmp, Span),
    Semver(Cmp, Span),
    Date(Cmp, Span),
}

impl Matcher {
    /// Whether a present context value matches.
    pub(crate) fn matches(&self, pool: &Pool, v: &str) -> bool {
        match *self {
            // Bytes, not `str`s: the same comparisons for UTF-8 text, without
            // char-boundary checks on the pool's spans (the hot path).
            Self::AnyEqual(s) => pool.any_equal(s, v.as_bytes()),
            Self::NoneEqual(s) => !pool.any_equal(s, v.as_bytes()),
            Self::Contains(s) => pool.strs(s).any(|x| v.contains(x)),
            Self::StartsWith(s) => {
                let v = v.as_bytes();
                slice(&pool.strs, s)
                    .iter()
                    .any(|&t| v.get(..t.len()).is_some_and(|h| same(h, pool.bytes(t))))
            }
            Self::EndsWith(s) => {
                let v = v.as_bytes();
                slice(&pool.strs, s).iter().any(|&t| {
                    v.len()
                        .checked_sub(t.len())
                        .and_then(|at| v.get(at..))
                        .is_some_and(|tail| same(tail, pool.bytes(t)))
                })
            }
            Self::Regex(s) => slice(&pool.regexes, s).iter().any(|r| r.is_match(v)),
            Self::Number(cmp, s) => match v.trim().parse::<f64>() {
                Ok(n) if !n.is_nan() => slice(&pool.numbers, s)
                    .iter()
                    .any(|x| n.partial_cmp(x).is_some_and(|o| cmp.holds(o))),
                _ => false,
            },
            Self::Semver(cmp, s) => match parse_semver(v) {
                Some(ver) => slice(&pool.versions, s)
                    .iter()
                    .any(|x| cmp.holds(ver.cmp_precedence(x))),
                None => false,
            },
            Self::Date(cmp, s) => match parse_time(v) {
                Some(t) => slice(&pool.times, s).iter().any(|x| cmp.holds(t.cmp(x))),
                None => false,
            },
        }
    }
}

/// `a == b`, inline for short slices (rule values and field names are
/// short: a call to `memcmp` costs more than comparing them).
#[inline]
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    let n = b.len();
    if a.len() != n {
        return false;
    }
    if n < 8 {
        return a.iter().zip(b).all(|(x, y)| x == y);
    }
    if n > 64 {
        return a == b;
    }
    let word = |s: &[u8], at: usize| {
        s.get(at..at + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            .map(u64::from_ne_bytes)
    };
    let mut at = 0;
    while at + 8 < n {
        if word(a, at) != word(b, at) {
            return false;
        }
        at += 8;
    }
    // The last (possibly overlapping) eight bytes.
    word(a, n - 8) == word(b, n - 8)
}

pub(crate) fn parse_semver(s: &str) -> Option<semver::Version> {
    let s = s.trim();
    semver::Version::parse(s.strip_prefix('v').unwrap_or(s)).ok()
}

/// Milliseconds since the epoch of an RFC 3339 time, a naive ISO date-time
/// (read as UTC) or a date (midnight UTC).
pub(crate) fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    if let Ok(t) = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f") {
        return Some(t.and_utc().timestamp_millis());
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return d
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().timestamp_millis());
    }
    None
}

/// Milliseconds since the epoch of a UTC time.
pub(crate) fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

#[derive(Deserialize)]
struct Wrapped<'a> {
    #[serde(borrow)]
    flags: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct KeyOnly {
    #[serde(default)]
    key: Option<String>,
}

impl FlagSet {
    /// An empty set.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Parses and validates a flag document: a JSON array of flag
    /// definitions, or an object with a `flags` array (other fields ignored,
    /// so a conformance file loads as is).
    ///
    /// A malformed flag (wrong type in a field, unknown operator) is
    /// reported with its key and field path and the others still load.
    ///
    /// Cost: one pass over the text that reads and validates each flag
    /// straight into the compiled set, about one allocation per flag and one
    /// regex compilation per distinct pattern; no [`FlagDefinition`] is
    /// built until [`FlagSet::get`] asks for it. A document with a malformed
    /// flag, or an unusual one (a surrogate `\u` escape, deep nesting),
    /// takes a second, slower pass that deserializes each flag as a
    /// [`FlagDefinition`] and names the bad field.
    ///
    /// # Errors
    /// [`Error::Document`] when the text is not JSON or has neither shape;
    /// then nothing is loaded.
    pub fn from_json(json: &str) -> Result<LoadReport, Error> {
        Self::load_json(json, None)
    }

    fn load_json(json: &str, previous: Option<&FlagSet>) -> Result<LoadReport, Error> {
        // Fast path: one pass when every flag deserializes; otherwise split the
        // document and deserialize each flag on its own to name the bad ones.
        let mut loader = Loader::default();
        if crate::load::load_document(json, &mut loader).is_some() {
            return Ok(loader.finish_keeping(previous, &[]));
        }
        let raws = split_document(json)?;
        Ok(Self::from_raw(raws.iter().map(|r| r.get()), previous))
    }

    /// Deserializes each flag's JSON text on its own, validates the lot, and
    /// (with `previous`) keeps the previous definition of a flag rejected now.
    pub(crate) fn from_raw<'a>(
        raws: impl IntoIterator<Item = &'a str>,
        previous: Option<&FlagSet>,
    ) -> LoadReport {
        let mut loader = Loader::default();
        let mut errors = Vec::new();
        let mut unreadable = Vec::new();
        for (i, raw) in raws.into_iter().enumerate() {
            match parse_one(raw) {
                // Listed in input order with the flags that did not
                // deserialize, ahead of the loader's errors.
                Ok(def) if def.key.is_empty() => errors.push(no_key(i)),
                Ok(def) => loader.add_definition(i, def),
                Err((key, field, msg)) => {
                    if let Some(k) = &key {
                        unreadable.push(k.clone());
                    }
                    let key = key.unwrap_or_else(|| format!("#{i}"));
                    errors.push(FlagError::new(key, field, msg));
                }
            }
        }
        let mut report = loader.finish_keeping(previous, &unreadable);
        errors.append(&mut report.errors);
        report.errors = errors;
        report
    }

    /// Validates and compiles definitions (see the type docs for what is
    /// checked). Never fails as a whole: rejected flags are in the report.
    pub fn from_definitions(defs: impl IntoIterator<Item = FlagDefinition>) -> LoadReport {
        let mut loader = Loader::default();
        for (i, def) in defs.into_iter().enumerate() {
            loader.add_definition(i, def);
        }
        loader.finish()
    }

    /// Like [`FlagSet::from_json`], but a flag rejected now that was good in
    /// `previous` keeps its previous definition, so a bad edit never removes
    /// a flag that was being served. The errors are still reported.
    ///
    /// Kept definitions are put back before prerequisites are resolved, so
    /// a good new flag may require a flag whose new definition was rejected
    /// and whose previous one is kept. A flag rejected only because of its
    /// prerequisites keeps its previous definition too, if it had one.
    /// Costs a load plus, per kept flag, building its previous definition
    /// and compiling it again.
    ///
    /// # Errors
    /// [`Error::Document`] as [`FlagSet::from_json`]; the caller keeps `previous`.
    pub fn from_json_keeping(json: &str, previous: &FlagSet) -> Result<LoadReport, Error> {
        Self::load_json(json, Some(previous))
    }

    /// The definition of `key`, if loaded: a hash lookup. For a set read
    /// from JSON text, the first request for a flag's definition builds it
    /// from the compiled flag (it allocates the definition's strings and
    /// values); later requests return the same definition without
    /// allocating.
    pub fn get(&self, key: &str) -> Option<&FlagDefinition> {
        self.compiled(key).map(|f| self.definition(f))
    }

    /// Whether `key` is loaded. A hash lookup, no allocation.
    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// Number of flags.
    pub fn len(&self) -> usize {
        self.flags.len()
    }

    /// Whether the set has no flags.
    pub fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }

    /// The keys, in load order. No allocation.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.flags.iter().map(|f| &*f.key)
    }

    /// The definitions, in load order (each built on first request, as
    /// [`FlagSet::get`] says).
    pub fn definitions(&self) -> impl ExactSizeIterator<Item = &FlagDefinition> + '_ {
        self.flags.iter().map(|f| self.definition(f))
    }

    #[inline]
    pub(crate) fn compiled(&self, key: &str) -> Option<&CompiledFlag> {
        self.index.get(key).and_then(|&i| self.flags.get(i))
    }

    #[inline]
    pub(crate) fn by_index(&self, i: usize) -> Option<&CompiledFlag> {
        self.flags.get(i)
    }

    pub(crate) fn compiled_flags(&self) -> &[CompiledFlag] {
        &self.flags
    }

    #[inline]
    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    pub(crate) fn from_parts(
        flags: Vec<CompiledFlag>,
        index: HashMap<Arc<str>, usize, quick_cache::DefaultHashBuilder>,
        pool: Pool,
    ) -> Self {
        Self { flags, index, pool }
    }

    fn definition<'s>(&'s self, f: &'s CompiledFlag) -> &'s FlagDefinition {
        f.def.get_or_init(|| Box::new(self.build_definition(f)))
    }

    /// The definition `f` was compiled from: every field is kept in the
    /// compiled flag or its pool (rule values as their text, a rule's
    /// `percentage` after its range check), so this is exact.
    fn build_definition(&self, f: &CompiledFlag) -> FlagDefinition {
        let pool = &self.pool;
        let text = |s: Span| pool.text(s).to_owned();
        let strs = |s: Span| pool.strs(s).map(str::to_owned).collect::<Vec<_>>();
        let info = &f.info;
        let mut def = FlagDefinition::new(&*f.key, f.flag_type);
        def.id = text(info.id);
        def.name = text(info.name);
        def.description = text(info.description);
        def.owner = info.owner.map(text);
        def.created_at = info.created_at.map(text);
        def.updated_at = info.updated_at.map(text);
        def.expires_at = info.expires_at.map(text);
        def.tags = strs(info.tags);
        def.track_events = info.track_events;
        def.status = f.status;
        def.default_value = f.default_value.clone();
        def.rollout_percentage = f.rollout_percentage;
        def.kill_switch = f.kill_switch;
        def.sticky_bucketing = f.sticky_bucketing;
        def.track_exposure = f.track_exposure;
        def.environment_overrides = f.environment_overrides.clone();
        def.tenant_restrictions = strs(f.tenant_restrictions);
        def.subscription_tier_requirements = strs(f.subscription_tier_requirements);
        def.prerequisites = slice(&pool.prereq_names, f.prerequisites)
            .iter()
            .map(|&s| text(s))
            .collect();
        def.variants = pool
            .variants(f.variants)
            .iter()
            .map(|v| crate::model::Variant {
                id: v.id.to_string(),
                name: text(v.name),
                description: text(v.description),
                value: v.value.clone(),
                weight: v.weight,
                is_control: v.is_control,
            })
            .collect();
        def.targeting_rules = pool
            .rules(f.rules)
            .iter()
            .map(|r| {
                let mut out = TargetingRule::new(r.rule_type, r.operator, pool.strs(r.values));
                out.attribute = r.attribute.as_deref().map(str::to_owned);
                out.percentage = r.percentage.map(i64::from);
                out
            })
            .collect();
        def
    }
}

fn split_document(json: &str) -> Result<Vec<&RawValue>, Error> {
    let doc_err = |e: serde_json::Error| Error::Document {
        message: e.to_string(),
    };
    match json.trim_start().as_bytes().first() {
        Some(b'[') => serde_json::from_str::<Vec<&RawValue>>(json).map_err(doc_err),
        Some(b'{') => serde_json::from_str::<Wrapped<'_>>(json)
            .map(|w| w.flags)
            .map_err(doc_err),
        _ => Err(Error::Document {
            message: "expected a JSON array of flags or an object with a `flags` array".to_owned(),
        }),
    }
}

type ParseFailure = (Option<String>, String, String);

fn parse_one(raw: &str) -> Result<FlagDefinition, ParseFailure> {
    // Fast path; the path-tracking deserializer only runs to explain a failure.
    if let Ok(def) = serde_json::from_str::<FlagDefinition>(raw) {
        return Ok(def);
    }
    let mut de = serde_json::Deserializer::from_str(raw);
    match serde_path_to_error::deserialize::<_, FlagDefinition>(&mut de) {
        Ok(def) => Ok(def),
        Err(e) => {
            let key = serde_json::from_str::<KeyOnly>(raw)
                .ok()
                .and_then(|k| k.key);
            let path = e.path().to_string();
            let field = if path == "." {
                "(flag)".to_owned()
            } else {
                path
            };
            Err((key, field, e.into_inner().to_string()))
        }
    }
}
