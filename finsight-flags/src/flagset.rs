//! Loading, validating and compiling a set of flags.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use regex::{Regex, RegexBuilder};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::Arc;

use crate::error::{Error, FlagError};
use crate::model::{FlagDefinition, FlagType, Operator, RuleType, TargetingRule};

/// Compiled size limit of one regex pattern (bytes of compiled program).
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// An immutable, validated set of flags, ready to evaluate.
///
/// Building one validates every definition (SPEC §1.1 "bad input"), compiles
/// regexes once, resolves prerequisites and rejects cycles. A bad flag is
/// left out and reported in [`LoadReport::errors`]; the good ones load.
/// Evaluation reads a set through an [`FlagEngine`](crate::FlagEngine),
/// which swaps whole sets atomically.
#[derive(Debug, Default)]
pub struct FlagSet {
    flags: Vec<CompiledFlag>,
    index: HashMap<Box<str>, usize, quick_cache::DefaultHashBuilder>,
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
    /// Puts back the previous definition of every rejected flag that was in
    /// `previous` (the errors stay reported).
    fn keeping(self, previous: &FlagSet) -> LoadReport {
        let mut defs: Vec<FlagDefinition> = self.set.flags.into_iter().map(|f| f.def).collect();
        for e in &self.errors {
            if !defs.iter().any(|d| d.key == e.key)
                && let Some(old) = previous.get(&e.key)
            {
                tracing::warn!(flag = %e.key, "finsight-flags: keeping the last good definition of a rejected flag");
                defs.push(old.clone());
            }
        }
        let mut kept = FlagSet::from_definitions(defs);
        let mut errors = self.errors;
        errors.append(&mut kept.errors);
        kept.errors = errors;
        kept
    }

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

#[derive(Debug)]
pub(crate) struct CompiledFlag {
    pub(crate) def: FlagDefinition,
    pub(crate) key: Arc<str>,
    pub(crate) expires_at_ms: Option<i64>,
    pub(crate) rules: Vec<CompiledRule>,
    pub(crate) variant_ids: Vec<Arc<str>>,
    pub(crate) total_weight: f64,
    pub(crate) prerequisites: Vec<usize>,
    pub(crate) rollout: u8,
}

#[derive(Debug)]
pub(crate) struct CompiledRule {
    pub(crate) rule_type: RuleType,
    pub(crate) operator: Operator,
    pub(crate) attribute: Option<String>,
    pub(crate) percentage: Option<u8>,
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

#[derive(Debug)]
pub(crate) enum Matcher {
    AnyEqual(Vec<String>),
    NoneEqual(Vec<String>),
    Contains(Vec<String>),
    StartsWith(Vec<String>),
    EndsWith(Vec<String>),
    Regex(Vec<Regex>),
    Number(Cmp, Vec<f64>),
    Semver(Cmp, Vec<semver::Version>),
    Date(Cmp, Vec<i64>),
}

impl Matcher {
    /// Whether a present context value matches.
    pub(crate) fn matches(&self, v: &str) -> bool {
        match self {
            Self::AnyEqual(vals) => vals.iter().any(|x| x == v),
            Self::NoneEqual(vals) => !vals.iter().any(|x| x == v),
            Self::Contains(vals) => vals.iter().any(|x| v.contains(x.as_str())),
            Self::StartsWith(vals) => vals.iter().any(|x| v.starts_with(x.as_str())),
            Self::EndsWith(vals) => vals.iter().any(|x| v.ends_with(x.as_str())),
            Self::Regex(res) => res.iter().any(|r| r.is_match(v)),
            Self::Number(cmp, vals) => match v.trim().parse::<f64>() {
                Ok(n) if !n.is_nan() => vals
                    .iter()
                    .any(|x| n.partial_cmp(x).is_some_and(|o| cmp.holds(o))),
                _ => false,
            },
            Self::Semver(cmp, vals) => match parse_semver(v) {
                Some(ver) => vals.iter().any(|x| cmp.holds(ver.cmp_precedence(x))),
                None => false,
            },
            Self::Date(cmp, vals) => match parse_time(v) {
                Some(t) => vals.iter().any(|x| cmp.holds(t.cmp(x))),
                None => false,
            },
        }
    }
}

fn parse_semver(s: &str) -> Option<semver::Version> {
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
    /// Each flag is deserialized on its own, so a malformed flag (wrong type
    /// in a field, unknown operator) is reported with its key and field path
    /// and the others still load. Costs one pass over the text plus one
    /// deserialization and validation per flag.
    ///
    /// # Errors
    /// [`Error::Document`] when the text is not JSON or has neither shape;
    /// then nothing is loaded.
    pub fn from_json(json: &str) -> Result<LoadReport, Error> {
        // Fast path: one pass when every flag deserializes; otherwise split the
        // document and deserialize each flag on its own to name the bad ones.
        if let Some(defs) = parse_all(json) {
            return Ok(Self::from_definitions(defs));
        }
        let raws = split_document(json)?;
        Ok(Self::from_raw(raws.iter().map(|r| r.get()), None))
    }

    /// Deserializes each flag's JSON text on its own, validates the lot, and
    /// (with `previous`) keeps the previous definition of a flag rejected now.
    pub(crate) fn from_raw<'a>(
        raws: impl IntoIterator<Item = &'a str>,
        previous: Option<&FlagSet>,
    ) -> LoadReport {
        let mut defs = Vec::new();
        let mut errors = Vec::new();
        for (i, raw) in raws.into_iter().enumerate() {
            match parse_one(raw) {
                Ok(def) if def.key.is_empty() => errors.push(FlagError::new(
                    format!("#{i}"),
                    "key",
                    "the flag has no key; every flag needs a non-empty `key`",
                )),
                Ok(def) => defs.push(def),
                Err((key, field, msg)) => {
                    let key = key.unwrap_or_else(|| format!("#{i}"));
                    errors.push(FlagError::new(key, field, msg));
                }
            }
        }
        let mut report = Self::from_definitions(defs);
        errors.append(&mut report.errors);
        report.errors = errors;
        match previous {
            Some(previous) if !report.errors.is_empty() => report.keeping(previous),
            _ => report,
        }
    }

    /// Validates and compiles definitions (see the type docs for what is
    /// checked). Never fails as a whole: rejected flags are in the report.
    pub fn from_definitions(defs: impl IntoIterator<Item = FlagDefinition>) -> LoadReport {
        let mut errors = Vec::new();
        let mut accepted: Vec<CompiledFlag> = Vec::new();
        let mut seen: HashMap<String, ()> = HashMap::new();
        for (i, def) in defs.into_iter().enumerate() {
            if def.key.is_empty() {
                errors.push(FlagError::new(
                    format!("#{i}"),
                    "key",
                    "the flag has no key; every flag needs a non-empty `key`",
                ));
                continue;
            }
            if seen.insert(def.key.clone(), ()).is_some() {
                errors.push(FlagError::new(
                    def.key.clone(),
                    "key",
                    "duplicate flag key; the first definition was kept",
                ));
                continue;
            }
            match compile(def) {
                Ok(flag) => accepted.push(flag),
                Err(mut errs) => errors.append(&mut errs),
            }
        }
        let flags = resolve_prerequisites(accepted, &mut errors);
        let index = flags
            .iter()
            .enumerate()
            .map(|(i, f)| (Box::from(f.def.key.as_str()), i))
            .collect();
        if !errors.is_empty() {
            tracing::warn!(
                rejected = errors.len(),
                "finsight-flags: some flags were rejected at load"
            );
        }
        LoadReport {
            set: FlagSet { flags, index },
            errors,
        }
    }

    /// Like [`FlagSet::from_json`], but a flag rejected now that was good in
    /// `previous` keeps its previous definition, so a bad edit never removes
    /// a flag that was being served. The errors are still reported.
    ///
    /// # Errors
    /// [`Error::Document`] as [`FlagSet::from_json`]; the caller keeps `previous`.
    pub fn from_json_keeping(json: &str, previous: &FlagSet) -> Result<LoadReport, Error> {
        let raws = split_document(json)?;
        Ok(Self::from_raw(raws.iter().map(|r| r.get()), Some(previous)))
    }

    /// The definition of `key`, if loaded. A hash lookup, no allocation.
    pub fn get(&self, key: &str) -> Option<&FlagDefinition> {
        self.compiled(key).map(|f| &f.def)
    }

    /// Whether `key` is loaded.
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

    /// The definitions, in load order.
    pub fn definitions(&self) -> impl Iterator<Item = &FlagDefinition> + '_ {
        self.flags.iter().map(|f| &f.def)
    }

    pub(crate) fn compiled(&self, key: &str) -> Option<&CompiledFlag> {
        self.index.get(key).and_then(|&i| self.flags.get(i))
    }

    pub(crate) fn by_index(&self, i: usize) -> Option<&CompiledFlag> {
        self.flags.get(i)
    }
}

#[derive(Deserialize)]
struct WrappedDefs {
    flags: Vec<FlagDefinition>,
}

fn parse_all(json: &str) -> Option<Vec<FlagDefinition>> {
    match json.trim_start().as_bytes().first() {
        Some(b'[') => serde_json::from_str::<Vec<FlagDefinition>>(json).ok(),
        Some(b'{') => serde_json::from_str::<WrappedDefs>(json)
            .ok()
            .map(|w| w.flags),
        _ => None,
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

fn compile(def: FlagDefinition) -> Result<CompiledFlag, Vec<FlagError>> {
    let mut errs = Vec::new();
    let err = |field: String, msg: String| FlagError::new(def.key.clone(), field, msg);

    let rollout = match u8::try_from(def.rollout_percentage) {
        Ok(r) if r <= 100 => r,
        _ => {
            errs.push(err(
                "rollout_percentage".into(),
                format!("{} is outside 0..=100", def.rollout_percentage),
            ));
            0
        }
    };

    let expires_at_ms = match def.expires_at.as_deref() {
        None | Some("") => None,
        Some(s) => match parse_time(s) {
            Some(t) => Some(t),
            None => {
                errs.push(err(
                    "expires_at".into(),
                    format!("`{s}` is not an RFC 3339 time (e.g. 2026-06-01T00:00:00Z)"),
                ));
                None
            }
        },
    };

    let mut total_weight = 0.0;
    let mut variant_ids: Vec<Arc<str>> = Vec::with_capacity(def.variants.len());
    for (i, v) in def.variants.iter().enumerate() {
        if !(v.weight.is_finite() && (0.0..=100.0).contains(&v.weight)) {
            errs.push(err(
                format!("variants[{i}].weight"),
                format!("{} is outside 0..=100", v.weight),
            ));
        }
        if v.id.is_empty() {
            errs.push(err(
                format!("variants[{i}].id"),
                "a variant needs a non-empty id".into(),
            ));
        } else if variant_ids.iter().any(|x| **x == *v.id) {
            errs.push(err(
                format!("variants[{i}].id"),
                format!("duplicate variant id `{}`", v.id),
            ));
        }
        total_weight += v.weight;
        variant_ids.push(Arc::from(v.id.as_str()));
    }

    let mut rules = Vec::with_capacity(def.targeting_rules.len());
    for (i, r) in def.targeting_rules.iter().enumerate() {
        match compile_rule(r) {
            Ok(c) => rules.push(c),
            Err((field, msg)) => errs.push(err(format!("targeting_rules[{i}].{field}"), msg)),
        }
    }

    if def.flag_type == FlagType::Multivariate && def.variants.is_empty() {
        tracing::debug!(flag = %def.key, "multivariate flag without variants serves no_variants_defined");
    }

    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(CompiledFlag {
        key: Arc::from(def.key.as_str()),
        expires_at_ms,
        rules,
        variant_ids,
        total_weight,
        prerequisites: Vec::new(),
        rollout,
        def,
    })
}

fn compile_rule(r: &TargetingRule) -> Result<CompiledRule, (String, String)> {
    if r.rule_type == RuleType::CustomAttribute && r.attribute.as_deref().unwrap_or("").is_empty() {
        return Err((
            "attribute".into(),
            "a custom_attribute rule needs `attribute` (the custom attribute's name)".into(),
        ));
    }
    let percentage = match r.percentage {
        None => None,
        Some(p) => match u8::try_from(p) {
            Ok(p) if p <= 100 => Some(p),
            _ => return Err(("percentage".into(), format!("{p} is outside 0..=100"))),
        },
    };
    let vals = || r.values.clone();
    let parse_all = |what: &str, f: &dyn Fn(&str) -> bool| -> Result<(), (String, String)> {
        for (j, v) in r.values.iter().enumerate() {
            if !f(v) {
                return Err((format!("values[{j}]"), format!("`{v}` is not a {what}")));
            }
        }
        Ok(())
    };
    let cmp = |op: Operator| match op {
        Operator::Lt | Operator::SemverLt | Operator::Before => Cmp::Lt,
        Operator::Lte | Operator::SemverLte => Cmp::Lte,
        Operator::Gt | Operator::SemverGt | Operator::After => Cmp::Gt,
        Operator::Gte | Operator::SemverGte => Cmp::Gte,
        _ => Cmp::Eq,
    };
    let matcher = match r.operator {
        Operator::Equals | Operator::In => Matcher::AnyEqual(vals()),
        Operator::NotEquals | Operator::NotIn => Matcher::NoneEqual(vals()),
        Operator::Contains => Matcher::Contains(vals()),
        Operator::StartsWith => Matcher::StartsWith(vals()),
        Operator::EndsWith => Matcher::EndsWith(vals()),
        Operator::RegexMatch => {
            let mut res = Vec::with_capacity(r.values.len());
            for (j, p) in r.values.iter().enumerate() {
                res.push(compile_regex(p).map_err(|m| (format!("values[{j}]"), m))?);
            }
            Matcher::Regex(res)
        }
        op @ (Operator::Lt | Operator::Lte | Operator::Gt | Operator::Gte) => {
            parse_all("number", &|v| {
                v.trim().parse::<f64>().is_ok_and(|n| !n.is_nan())
            })?;
            Matcher::Number(
                cmp(op),
                r.values
                    .iter()
                    .filter_map(|v| v.trim().parse().ok())
                    .collect(),
            )
        }
        op @ (Operator::SemverEq
        | Operator::SemverLt
        | Operator::SemverLte
        | Operator::SemverGt
        | Operator::SemverGte) => {
            parse_all("semantic version (e.g. 1.2.3)", &|v| {
                parse_semver(v).is_some()
            })?;
            Matcher::Semver(
                cmp(op),
                r.values.iter().filter_map(|v| parse_semver(v)).collect(),
            )
        }
        op @ (Operator::Before | Operator::After) => {
            parse_all("RFC 3339 time or YYYY-MM-DD date", &|v| {
                parse_time(v).is_some()
            })?;
            Matcher::Date(
                cmp(op),
                r.values.iter().filter_map(|v| parse_time(v)).collect(),
            )
        }
    };
    Ok(CompiledRule {
        rule_type: r.rule_type,
        operator: r.operator,
        attribute: r.attribute.clone(),
        percentage,
        matcher,
    })
}

/// Compiles a pattern with Python `re.match` semantics: anchored at the start
/// only.
fn compile_regex(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(&format!("^(?:{pattern})"))
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            let unsupported = ["(?=", "(?!", "(?<=", "(?<!", "(?P=", "(?>"]
                .iter()
                .any(|s| pattern.contains(s))
                || has_backreference(pattern);
            match e {
                regex::Error::CompiledTooBig(limit) => {
                    format!("pattern `{pattern}` compiles to more than {limit} bytes; simplify it")
                }
                _ if unsupported => format!(
                    "pattern `{pattern}` uses look-around or backreferences, which Rust's regex \
                     engine cannot express (it guarantees linear-time matching); rewrite it \
                     without them: {e}"
                ),
                _ => format!("pattern `{pattern}` is not a valid regular expression: {e}"),
            }
        })
}

fn has_backreference(p: &str) -> bool {
    let b = p.as_bytes();
    b.windows(2)
        .any(|w| w[0] == b'\\' && w[1].is_ascii_digit() && w[1] != b'0')
}

fn resolve_prerequisites(
    mut flags: Vec<CompiledFlag>,
    errors: &mut Vec<FlagError>,
) -> Vec<CompiledFlag> {
    if flags.iter().all(|f| f.def.prerequisites.is_empty()) {
        return flags;
    }
    // Drop flags whose prerequisites are missing (or were rejected), until stable.
    loop {
        let keys: HashMap<&str, ()> = flags.iter().map(|f| (f.def.key.as_str(), ())).collect();
        let mut bad: Vec<(usize, String)> = Vec::new();
        for (i, f) in flags.iter().enumerate() {
            if let Some((j, p)) = f
                .def
                .prerequisites
                .iter()
                .enumerate()
                .find(|(_, p)| !keys.contains_key(p.as_str()) || *p == &f.def.key)
            {
                let msg = if *p == f.def.key {
                    format!("prerequisite cycle: `{p}` requires itself")
                } else {
                    format!("prerequisite `{p}` names no loaded flag (missing or rejected)")
                };
                bad.push((i, format!("{j}\u{0}{msg}")));
            }
        }
        if bad.is_empty() {
            break;
        }
        for (i, m) in bad.iter().rev() {
            let f = flags.remove(*i);
            let (j, msg) = m.split_once('\u{0}').unwrap_or(("0", m));
            errors.push(FlagError::new(
                f.def.key,
                format!("prerequisites[{j}]"),
                msg,
            ));
        }
    }
    // Cycles: iterative DFS with colours.
    let index: HashMap<String, usize> = flags
        .iter()
        .enumerate()
        .map(|(i, f)| (f.def.key.clone(), i))
        .collect();
    let edges: Vec<Vec<usize>> = flags
        .iter()
        .map(|f| {
            f.def
                .prerequisites
                .iter()
                .filter_map(|p| index.get(p).copied())
                .collect()
        })
        .collect();
    let n = flags.len();
    let mut in_cycle = vec![false; n];
    let mut state = vec![0u8; n]; // 0 new, 1 on stack, 2 done
    for start in 0..n {
        if state[start] != 0 {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        state[start] = 1;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&m) = edges[node].get(*next) {
                *next += 1;
                match state[m] {
                    0 => {
                        state[m] = 1;
                        stack.push((m, 0));
                    }
                    1 => {
                        // Every node on the stack from m to the top is in the cycle.
                        let from = stack.iter().position(|(x, _)| *x == m).unwrap_or(0);
                        for (x, _) in &stack[from..] {
                            in_cycle[*x] = true;
                        }
                    }
                    _ => {}
                }
            } else {
                state[node] = 2;
                stack.pop();
            }
        }
    }
    if in_cycle.iter().any(|c| *c) {
        let cyclic: Vec<String> = (0..n)
            .filter(|&i| in_cycle[i])
            .map(|i| flags[i].def.key.clone())
            .collect();
        for (i, f) in flags.iter().enumerate() {
            if in_cycle[i] {
                errors.push(FlagError::new(
                    f.def.key.clone(),
                    "prerequisites",
                    format!("prerequisite cycle among {}", cyclic.join(", ")),
                ));
            }
        }
        let kept: Vec<FlagDefinition> = flags
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !in_cycle[*i])
            .map(|(_, f)| f.def)
            .collect();
        // Re-run on the rest: flags that needed a cyclic flag are now missing a prerequisite.
        let mut rest = Vec::with_capacity(kept.len());
        for d in kept {
            if let Ok(f) = compile(d) {
                rest.push(f);
            }
        }
        return resolve_prerequisites(rest, errors);
    }
    for f in flags.iter_mut() {
        f.prerequisites = f
            .def
            .prerequisites
            .iter()
            .filter_map(|p| index.get(p).copied())
            .collect();
    }
    flags
}
