//! Validation and compilation of flag definitions into a [`FlagSet`].
//!
//! Both ways in share this code: the JSON fast path (`load.rs`) fills a
//! [`RawFlag`] that borrows from the document, [`FlagSet::from_definitions`]
//! fills one that borrows from a [`FlagDefinition`]; [`Loader::add`]
//! validates it and compiles it into the set's [`Pool`].

use regex::{Regex, RegexBuilder};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use crate::error::FlagError;
use crate::flagset::{
    Cmp, CompiledFlag, CompiledRule, CompiledVariant, FlagSet, Info, LoadReport, Matcher, Pool,
    REGEX_SIZE_LIMIT, Span, parse_semver, parse_time,
};
use crate::model::{FlagDefinition, FlagStatus, FlagType, Operator, RuleType};

/// One flag definition as read, before validation: every field of a
/// [`FlagDefinition`], with strings borrowed where possible. Its vectors are
/// reused from one flag to the next ([`RawFlag::clear`]).
#[derive(Debug, Default)]
pub(crate) struct RawFlag<'a> {
    pub(crate) id: Cow<'a, str>,
    pub(crate) key: Cow<'a, str>,
    pub(crate) name: Cow<'a, str>,
    pub(crate) description: Cow<'a, str>,
    pub(crate) owner: Option<Cow<'a, str>>,
    pub(crate) created_at: Option<Cow<'a, str>>,
    pub(crate) updated_at: Option<Cow<'a, str>>,
    pub(crate) track_events: bool,
    pub(crate) flag_type: FlagType,
    pub(crate) status: FlagStatus,
    pub(crate) default_value: Value,
    pub(crate) rollout_percentage: i64,
    pub(crate) sticky_bucketing: bool,
    pub(crate) kill_switch: bool,
    pub(crate) track_exposure: bool,
    pub(crate) environment_overrides: BTreeMap<String, Value>,
    pub(crate) expires_at: Option<Cow<'a, str>>,
    /// Rule values, prerequisites, tenant restrictions, tier requirements,
    /// tags.
    pub(crate) strs: Vec<Cow<'a, str>>,
    pub(crate) rules: Vec<RawRule<'a>>,
    pub(crate) variants: Vec<RawVariant<'a>>,
    /// Into `strs`.
    pub(crate) prerequisites: Range<usize>,
    /// Into `strs`.
    pub(crate) tenant_restrictions: Range<usize>,
    /// Into `strs`.
    pub(crate) subscription_tier_requirements: Range<usize>,
    /// Into `strs`.
    pub(crate) tags: Range<usize>,
}

#[derive(Debug)]
pub(crate) struct RawRule<'a> {
    pub(crate) rule_type: RuleType,
    pub(crate) operator: Operator,
    /// Into `RawFlag::strs`.
    pub(crate) values: Range<usize>,
    pub(crate) attribute: Option<Cow<'a, str>>,
    pub(crate) percentage: Option<i64>,
}

#[derive(Debug)]
pub(crate) struct RawVariant<'a> {
    pub(crate) id: Cow<'a, str>,
    pub(crate) name: Cow<'a, str>,
    pub(crate) description: Cow<'a, str>,
    pub(crate) value: Value,
    pub(crate) weight: f64,
    pub(crate) is_control: bool,
}

impl<'a> RawFlag<'a> {
    /// Back to the state of a definition with every field missing, keeping
    /// the vectors' capacity.
    pub(crate) fn clear(&mut self) {
        self.id = Cow::Borrowed("");
        self.key = Cow::Borrowed("");
        self.name = Cow::Borrowed("");
        self.description = Cow::Borrowed("");
        self.owner = None;
        self.created_at = None;
        self.updated_at = None;
        self.track_events = false;
        self.flag_type = FlagType::default();
        self.status = FlagStatus::default();
        self.default_value = Value::Null;
        self.rollout_percentage = 0;
        self.sticky_bucketing = false;
        self.kill_switch = false;
        self.track_exposure = false;
        self.environment_overrides.clear();
        self.expires_at = None;
        self.strs.clear();
        self.rules.clear();
        self.variants.clear();
        self.prerequisites = 0..0;
        self.tenant_restrictions = 0..0;
        self.subscription_tier_requirements = 0..0;
        self.tags = 0..0;
    }

    /// Appends strings to `strs`; their range there.
    fn push_strs(&mut self, it: &'a [String]) -> Range<usize> {
        let start = self.strs.len();
        self.strs
            .extend(it.iter().map(|s| Cow::Borrowed(s.as_str())));
        start..self.strs.len()
    }

    /// The fields of `def` evaluation needs, borrowed.
    fn from_definition(def: &'a FlagDefinition) -> Self {
        let mut raw = RawFlag {
            id: Cow::Borrowed(&def.id),
            key: Cow::Borrowed(&def.key),
            name: Cow::Borrowed(&def.name),
            description: Cow::Borrowed(&def.description),
            owner: def.owner.as_deref().map(Cow::Borrowed),
            created_at: def.created_at.as_deref().map(Cow::Borrowed),
            updated_at: def.updated_at.as_deref().map(Cow::Borrowed),
            track_events: def.track_events,
            flag_type: def.flag_type,
            status: def.status,
            default_value: def.default_value.clone(),
            rollout_percentage: def.rollout_percentage,
            sticky_bucketing: def.sticky_bucketing,
            kill_switch: def.kill_switch,
            track_exposure: def.track_exposure,
            environment_overrides: def.environment_overrides.clone(),
            expires_at: def.expires_at.as_deref().map(Cow::Borrowed),
            ..RawFlag::default()
        };
        for r in &def.targeting_rules {
            let values = raw.push_strs(&r.values);
            raw.rules.push(RawRule {
                rule_type: r.rule_type,
                operator: r.operator,
                values,
                attribute: r.attribute.as_deref().map(Cow::Borrowed),
                percentage: r.percentage,
            });
        }
        raw.variants = def
            .variants
            .iter()
            .map(|v| RawVariant {
                id: Cow::Borrowed(&v.id),
                name: Cow::Borrowed(&v.name),
                description: Cow::Borrowed(&v.description),
                value: v.value.clone(),
                weight: v.weight,
                is_control: v.is_control,
            })
            .collect();
        raw.prerequisites = raw.push_strs(&def.prerequisites);
        raw.tenant_restrictions = raw.push_strs(&def.tenant_restrictions);
        raw.subscription_tier_requirements = raw.push_strs(&def.subscription_tier_requirements);
        raw.tags = raw.push_strs(&def.tags);
        raw
    }
}

/// Builds a [`FlagSet`] one flag at a time.
#[derive(Debug, Default)]
pub(crate) struct Loader {
    flags: Vec<CompiledFlag>,
    index: HashMap<Arc<str>, usize, quick_cache::DefaultHashBuilder>,
    pool: Pool,
    errors: Vec<FlagError>,
    /// Keys of rejected flags: a later flag with the same key is a duplicate.
    claimed: HashSet<Box<str>>,
    /// Keys of flags rejected by validation, in order (for
    /// [`Loader::finish_keeping`]).
    rejected: Vec<Box<str>>,
    /// Each distinct pattern is compiled once per load.
    regexes: HashMap<Box<str>, Result<Regex, String>>,
}

type FieldError = (String, String);

/// The error for a flag without a key, at position `element` of the input.
pub(crate) fn no_key(element: usize) -> FlagError {
    FlagError::new(
        format!("#{element}"),
        "key",
        "the flag has no key; every flag needs a non-empty `key`",
    )
}

impl Loader {
    /// Validates and compiles the flag at position `element` of the input.
    /// A rejected flag leaves nothing behind but its errors.
    pub(crate) fn add(&mut self, element: usize, raw: &mut RawFlag<'_>) -> bool {
        if raw.key.is_empty() {
            self.errors.push(no_key(element));
            return false;
        }
        if self.index.contains_key(&*raw.key)
            || (!self.claimed.is_empty() && self.claimed.contains(&*raw.key))
        {
            self.errors.push(FlagError::new(
                &*raw.key,
                "key",
                "duplicate flag key; the first definition was kept",
            ));
            return false;
        }
        let mark = self.pool.mark();
        match self.compile(raw) {
            Ok(_) if self.pool.too_large() => {
                self.pool.rollback(mark);
                self.errors.push(FlagError::new(
                    &*raw.key,
                    "(flag)",
                    "the flag set holds more than 4 GiB of strings; split it",
                ));
                false
            }
            Ok(flag) => {
                self.index.insert(flag.key.clone(), self.flags.len());
                self.flags.push(flag);
                true
            }
            Err(mut errs) => {
                self.pool.rollback(mark);
                self.claimed.insert(Box::from(&*raw.key));
                self.rejected.push(Box::from(&*raw.key));
                self.errors.append(&mut errs);
                false
            }
        }
    }

    /// Makes room for about `more` flags like the ones added so far. The
    /// estimate may come from a single flag, so it is bounded: at most 1,024
    /// flags, 8 rules, strings or variants and 256 bytes of text per flag
    /// (beyond that the vectors grow as usual).
    pub(crate) fn reserve(&mut self, more: usize) {
        let more = more.min(1024);
        let n = self.flags.len();
        if n == 0 {
            return;
        }
        let per = |total: usize, cap: usize| (total / n).min(cap) * more;
        self.flags.reserve(more);
        self.index.reserve(more);
        let pool = &mut self.pool;
        pool.text.reserve(per(pool.text.len(), 256));
        pool.strs.reserve(per(pool.strs.len(), 8));
        pool.rules.reserve(per(pool.rules.len(), 8));
        pool.variants.reserve(per(pool.variants.len(), 8));
        pool.prereq_names.reserve(per(pool.prereq_names.len(), 8));
    }

    /// [`Loader::add`] for a definition given as a value; the set keeps it.
    pub(crate) fn add_definition(&mut self, element: usize, def: FlagDefinition) {
        let added = self.add(element, &mut RawFlag::from_definition(&def));
        if added && let Some(f) = self.flags.last_mut() {
            let _ = f.def.set(Box::new(def));
        }
    }

    /// Resolves prerequisites (dropping flags whose prerequisites are
    /// missing, rejected or cyclic) and returns the set.
    pub(crate) fn finish(self) -> LoadReport {
        self.finish_keeping(None, &[])
    }

    /// As [`Loader::finish`]; with `previous`, a flag rejected now that was
    /// loaded in `previous` keeps its previous definition (its errors stay
    /// reported). `unreadable` names flags rejected before reaching the
    /// loader (they did not deserialize).
    ///
    /// The kept definitions are put back *before* prerequisites are
    /// resolved, so a good flag that requires a kept one loads. A flag that
    /// fails only on its prerequisites (missing, rejected or cyclic) and was
    /// loaded in `previous` also keeps its previous definition; that repeats
    /// until no more flags change (each flag is put back at most once).
    pub(crate) fn finish_keeping(
        mut self,
        previous: Option<&FlagSet>,
        unreadable: &[String],
    ) -> LoadReport {
        let Some(previous) = previous else {
            let verdict = self.prerequisite_verdict();
            self.apply(verdict);
            return self.report();
        };
        let mut restored: HashSet<Box<str>> = HashSet::new();
        let rejected = std::mem::take(&mut self.rejected);
        let candidates: Vec<&str> = unreadable
            .iter()
            .map(String::as_str)
            .chain(rejected.iter().map(|k| &**k))
            .collect();
        for key in candidates {
            self.restore(previous, key, &mut restored);
        }
        loop {
            let mut verdict = self.prerequisite_verdict();
            let redo: Vec<Box<str>> = match &verdict {
                Some(v) => (0..self.flags.len())
                    .filter(|&i| !v.alive[i])
                    .map(|i| &*self.flags[i].key)
                    .filter(|k| !restored.contains(*k) && previous.contains(k))
                    .map(Box::from)
                    .collect(),
                None => Vec::new(),
            };
            if redo.is_empty() {
                // A restored flag failing like its new definition: report once.
                if let Some(v) = verdict.as_mut() {
                    let reported = &self.errors;
                    v.errors.retain(|e| !reported.contains(e));
                }
                self.apply(verdict);
                return self.report();
            }
            // Report why the new definitions failed, then swap in the previous
            // ones and resolve again.
            if let Some(v) = verdict.as_mut() {
                self.errors.extend(
                    v.errors
                        .drain(..)
                        .filter(|e| redo.iter().any(|k| **k == *e.key)),
                );
            }
            self.flags.retain(|f| !redo.iter().any(|k| **k == *f.key));
            self.reindex();
            for key in &redo {
                self.restore(previous, key, &mut restored);
            }
        }
    }

    /// Puts back `previous`'s definition of `key` (once), unless the new
    /// document loaded a good flag with that key.
    fn restore(&mut self, previous: &FlagSet, key: &str, restored: &mut HashSet<Box<str>>) {
        if self.index.contains_key(key) || restored.contains(key) {
            return;
        }
        let Some(old) = previous.get(key) else {
            return;
        };
        tracing::warn!(flag = %key, "finsight-flags: keeping the last good definition of a rejected flag");
        restored.insert(Box::from(key));
        self.claimed.remove(key);
        self.add_definition(0, old.clone());
    }

    /// Rebuilds the key index after flags were removed.
    fn reindex(&mut self) {
        self.index.clear();
        for (i, f) in self.flags.iter().enumerate() {
            self.index.insert(f.key.clone(), i);
        }
    }

    fn report(self) -> LoadReport {
        if !self.errors.is_empty() {
            tracing::warn!(
                rejected = self.errors.len(),
                "finsight-flags: some flags were rejected at load"
            );
        }
        LoadReport {
            set: FlagSet::from_parts(self.flags, self.index, self.pool),
            errors: self.errors,
        }
    }

    fn compile(&mut self, raw: &mut RawFlag<'_>) -> Result<CompiledFlag, Vec<FlagError>> {
        let key: &str = &raw.key;
        let mut errs = Vec::new();
        let err = |field: String, msg: String| FlagError::new(key, field, msg);

        let rollout = match u8::try_from(raw.rollout_percentage) {
            Ok(r) if r <= 100 => r,
            _ => {
                errs.push(err(
                    "rollout_percentage".into(),
                    format!("{} is outside 0..=100", raw.rollout_percentage),
                ));
                0
            }
        };

        let expires_at_ms = match raw.expires_at.as_deref() {
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
        let variants_start = self.pool.variants.len();
        for (i, v) in raw.variants.iter_mut().enumerate() {
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
            } else if self
                .pool
                .variants
                .get(variants_start..)
                .is_some_and(|earlier| earlier.iter().any(|x| *x.id == *v.id))
            {
                errs.push(err(
                    format!("variants[{i}].id"),
                    format!("duplicate variant id `{}`", v.id),
                ));
            }
            total_weight += v.weight;
            let name = self.pool.push_text(&v.name);
            let description = self.pool.push_text(&v.description);
            self.pool.variants.push(CompiledVariant {
                id: Arc::from(&*v.id),
                value: std::mem::take(&mut v.value),
                weight: v.weight,
                name,
                description,
                is_control: v.is_control,
            });
        }
        let variants = Span::new(variants_start, self.pool.variants.len());

        let rules_start = self.pool.rules.len();
        for (i, r) in raw.rules.iter().enumerate() {
            let values = raw.strs.get(r.values.clone()).unwrap_or(&[]);
            match self.compile_rule(r, values) {
                Ok(c) => self.pool.rules.push(c),
                Err((field, msg)) => errs.push(err(format!("targeting_rules[{i}].{field}"), msg)),
            }
        }
        let rules = Span::new(rules_start, self.pool.rules.len());

        if raw.flag_type == FlagType::Multivariate && raw.variants.is_empty() {
            tracing::debug!(flag = %key, "multivariate flag without variants serves no_variants_defined");
        }

        if !errs.is_empty() {
            return Err(errs);
        }
        let strs = |r: &Range<usize>| raw.strs.get(r.clone()).unwrap_or(&[]);
        let prereq_start = self.pool.prereq_names.len();
        for p in strs(&raw.prerequisites) {
            let s = self.pool.push_text(p);
            self.pool.prereq_names.push(s);
        }
        let prerequisites = Span::new(prereq_start, self.pool.prereq_names.len());
        let tenant_restrictions = self
            .pool
            .push_strs(strs(&raw.tenant_restrictions).iter().map(|s| &**s));
        let subscription_tier_requirements = self.pool.push_strs(
            strs(&raw.subscription_tier_requirements)
                .iter()
                .map(|s| &**s),
        );
        let pool = &mut self.pool;
        let info = Info {
            id: pool.push_text(&raw.id),
            name: pool.push_text(&raw.name),
            description: pool.push_text(&raw.description),
            owner: raw.owner.as_deref().map(|s| pool.push_text(s)),
            created_at: raw.created_at.as_deref().map(|s| pool.push_text(s)),
            updated_at: raw.updated_at.as_deref().map(|s| pool.push_text(s)),
            expires_at: raw.expires_at.as_deref().map(|s| pool.push_text(s)),
            tags: pool.push_strs(strs(&raw.tags).iter().map(|s| &**s)),
            track_events: raw.track_events,
        };
        Ok(CompiledFlag {
            key: Arc::from(key),
            default_value: std::mem::take(&mut raw.default_value),
            environment_overrides: std::mem::take(&mut raw.environment_overrides),
            expires_at_ms,
            total_weight,
            rules,
            variants,
            prerequisites,
            tenant_restrictions,
            subscription_tier_requirements,
            info,
            flag_type: raw.flag_type,
            status: raw.status,
            rollout,
            rollout_percentage: raw.rollout_percentage,
            kill_switch: raw.kill_switch,
            sticky_bucketing: raw.sticky_bucketing,
            track_exposure: raw.track_exposure,
            def: OnceLock::new(),
        })
    }

    fn compile_rule(
        &mut self,
        r: &RawRule<'_>,
        values: &[Cow<'_, str>],
    ) -> Result<CompiledRule, FieldError> {
        if r.rule_type == RuleType::CustomAttribute
            && r.attribute.as_deref().unwrap_or("").is_empty()
        {
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
        // Parses every value onto `out` (each once); the first that does
        // not parse is the error (what was pushed goes with the rejected
        // flag's pool rollback, as for regexes).
        fn parse_all<T>(
            values: &[Cow<'_, str>],
            out: &mut Vec<T>,
            what: &str,
            parse: impl Fn(&str) -> Option<T>,
        ) -> Result<Span, FieldError> {
            let start = out.len();
            for (j, v) in values.iter().enumerate() {
                let Some(x) = parse(v) else {
                    return Err((format!("values[{j}]"), format!("`{v}` is not a {what}")));
                };
                out.push(x);
            }
            Ok(Span::new(start, out.len()))
        }
        let cmp = |op: Operator| match op {
            Operator::Lt | Operator::SemverLt | Operator::Before => Cmp::Lt,
            Operator::Lte | Operator::SemverLte => Cmp::Lte,
            Operator::Gt | Operator::SemverGt | Operator::After => Cmp::Gt,
            Operator::Gte | Operator::SemverGte => Cmp::Gte,
            _ => Cmp::Eq,
        };
        let pool = &mut self.pool;
        let texts = pool.push_strs(values.iter().map(|v| &**v));
        let matcher = match r.operator {
            Operator::Equals | Operator::In => Matcher::AnyEqual(texts),
            Operator::NotEquals | Operator::NotIn => Matcher::NoneEqual(texts),
            Operator::Contains => Matcher::Contains(texts),
            Operator::StartsWith => Matcher::StartsWith(texts),
            Operator::EndsWith => Matcher::EndsWith(texts),
            Operator::RegexMatch => {
                let start = pool.regexes.len();
                for (j, p) in values.iter().enumerate() {
                    let compiled = match self.regexes.get(&**p) {
                        Some(c) => c.clone(),
                        None => {
                            let c = compile_regex(p);
                            self.regexes.insert(Box::from(&**p), c.clone());
                            c
                        }
                    };
                    pool.regexes
                        .push(compiled.map_err(|m| (format!("values[{j}]"), m))?);
                }
                Matcher::Regex(Span::new(start, pool.regexes.len()))
            }
            op @ (Operator::Lt | Operator::Lte | Operator::Gt | Operator::Gte) => {
                let numbers = parse_all(values, &mut pool.numbers, "number", |v| {
                    v.trim().parse::<f64>().ok().filter(|n| !n.is_nan())
                })?;
                Matcher::Number(cmp(op), numbers)
            }
            op @ (Operator::SemverEq
            | Operator::SemverLt
            | Operator::SemverLte
            | Operator::SemverGt
            | Operator::SemverGte) => {
                let versions = parse_all(
                    values,
                    &mut pool.versions,
                    "semantic version (e.g. 1.2.3)",
                    parse_semver,
                )?;
                Matcher::Semver(cmp(op), versions)
            }
            op @ (Operator::Before | Operator::After) => {
                let times = parse_all(
                    values,
                    &mut pool.times,
                    "RFC 3339 time or YYYY-MM-DD date",
                    parse_time,
                )?;
                Matcher::Date(cmp(op), times)
            }
        };
        Ok(CompiledRule {
            rule_type: r.rule_type,
            operator: r.operator,
            attribute: r.attribute.as_deref().map(Box::from),
            percentage,
            values: texts,
            matcher,
        })
    }

    /// Which flags must be dropped because their prerequisites are missing,
    /// rejected, themselves or part of a cycle (repeating until stable: a
    /// flag needing a dropped flag is dropped too), and why. `None` when no
    /// flag has prerequisites.
    fn prerequisite_verdict(&self) -> Option<Verdict> {
        let n = self.flags.len();
        if self.flags.iter().all(|f| f.prerequisites.is_empty()) {
            return None;
        }
        let pool = &self.pool;
        let mut errors = Vec::new();
        // Index of each prerequisite's flag in the flags loaded so far.
        let targets: Vec<Option<usize>> = pool
            .prereq_names
            .iter()
            .map(|&s| {
                let name = pool.text.get(s.range()).unwrap_or("");
                self.index.get(name).copied()
            })
            .collect();
        let edges = |f: &CompiledFlag| targets.get(f.prerequisites.range()).unwrap_or(&[]);
        let mut alive = vec![true; n];
        loop {
            // Missing (or dropped) prerequisites, until stable.
            loop {
                let mut bad: Vec<(usize, usize, bool)> = Vec::new();
                for (i, f) in self.flags.iter().enumerate() {
                    if !alive[i] {
                        continue;
                    }
                    if let Some((j, t)) = edges(f)
                        .iter()
                        .enumerate()
                        .find(|(_, t)| t.is_none_or(|t| !alive[t] || t == i))
                    {
                        bad.push((i, j, *t == Some(i)));
                    }
                }
                if bad.is_empty() {
                    break;
                }
                for &(i, j, itself) in bad.iter().rev() {
                    alive[i] = false;
                    let f = &self.flags[i];
                    let p = pool
                        .prereq_names
                        .get(f.prerequisites.range().start + j)
                        .map_or("", |&s| pool.text(s));
                    let msg = if itself {
                        format!("prerequisite cycle: `{p}` requires itself")
                    } else {
                        format!("prerequisite `{p}` names no loaded flag (missing or rejected)")
                    };
                    errors.push(FlagError::new(&*f.key, format!("prerequisites[{j}]"), msg));
                }
            }
            // Cycles among the rest: iterative DFS with colours.
            let mut in_cycle = vec![false; n];
            let mut state = vec![0u8; n]; // 0 new, 1 on stack, 2 done
            for start in 0..n {
                if state[start] != 0 || !alive[start] {
                    continue;
                }
                let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
                state[start] = 1;
                while let Some(&mut (node, ref mut next)) = stack.last_mut() {
                    if let Some(&m) = edges(&self.flags[node]).get(*next) {
                        *next += 1;
                        let Some(m) = m else { continue };
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
            if !in_cycle.iter().any(|c| *c) {
                break;
            }
            let cyclic: Vec<&str> = (0..n)
                .filter(|&i| in_cycle[i])
                .map(|i| &*self.flags[i].key)
                .collect();
            let msg = format!("prerequisite cycle among {}", cyclic.join(", "));
            for i in (0..n).filter(|&i| in_cycle[i]) {
                alive[i] = false;
                errors.push(FlagError::new(
                    &*self.flags[i].key,
                    "prerequisites",
                    msg.clone(),
                ));
            }
            // Flags that needed a cyclic flag now miss a prerequisite: go again.
        }
        Some(Verdict {
            alive,
            errors,
            targets,
        })
    }

    /// Drops the flags a verdict rejects (recording why) and points every
    /// prerequisite at its flag's index.
    fn apply(&mut self, verdict: Option<Verdict>) {
        let Some(Verdict {
            alive,
            mut errors,
            targets,
        }) = verdict
        else {
            return;
        };
        self.errors.append(&mut errors);
        let n = self.flags.len();
        let pool = &mut self.pool;
        // Drop the rejected flags and number the rest.
        let mut new_index = vec![usize::MAX; n];
        let mut next = 0;
        for (i, slot) in new_index.iter_mut().enumerate() {
            if alive[i] {
                *slot = next;
                next += 1;
            }
        }
        pool.prereqs = targets
            .iter()
            .map(|t| {
                t.and_then(|t| new_index.get(t).copied())
                    .unwrap_or(usize::MAX)
            })
            .collect();
        if next < n {
            let mut i = 0;
            self.flags.retain(|_| {
                i += 1;
                alive[i - 1]
            });
            self.reindex();
        }
    }
}

/// The outcome of prerequisite resolution, before it is applied.
struct Verdict {
    /// Per flag: whether it stays.
    alive: Vec<bool>,
    /// Why the others go.
    errors: Vec<FlagError>,
    /// Per entry of `Pool::prereq_names`: the index of its flag.
    targets: Vec<Option<usize>>,
}

/// Compiles a pattern with Python `re.match` semantics: anchored at the start
/// only.
///
/// Python `re` syntax that Rust's `regex` does not have, or reads with
/// another meaning (see [`python_only`]), is refused first with an error
/// that says so; the rest is compiled as is. One difference is accepted and
/// documented rather than refused: Python's `$` (without `(?m)`) also
/// matches just before a final `\n`, Rust's only at the very end.
fn compile_regex(pattern: &str) -> Result<Regex, String> {
    if let Some((what, hint)) = python_only(pattern) {
        return Err(format!(
            "pattern `{pattern}` uses {what}, Python `re` syntax that Rust's regex engine \
             cannot express (it guarantees linear-time matching and has no such syntax); {hint}"
        ));
    }
    // A verbose pattern (`(?x)`) may end in a `#` comment, which would
    // swallow the closing parenthesis: end the comment with a newline
    // (whitespace in verbose mode).
    let wrapped = if verbose(pattern) {
        format!("^(?:{pattern}\n)")
    } else {
        format!("^(?:{pattern})")
    };
    RegexBuilder::new(&wrapped)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(limit) => {
                format!("pattern `{pattern}` compiles to more than {limit} bytes; simplify it")
            }
            _ => format!("pattern `{pattern}` is not a valid regular expression: {e}"),
        })
}

/// The letters of the global inline flag groups a pattern starts with
/// (`(?i)(?x)…`; Python only allows global flags at the start).
fn leading_flags(pattern: &str) -> impl Iterator<Item = u8> + '_ {
    let mut rest = pattern.as_bytes();
    let mut letters: &[u8] = &[];
    std::iter::from_fn(move || {
        loop {
            if let Some((&c, tail)) = letters.split_first() {
                letters = tail;
                return Some(c);
            }
            let body = rest.strip_prefix(b"(?")?;
            let n = body.iter().take_while(|c| c.is_ascii_alphabetic()).count();
            if n == 0 || body.get(n) != Some(&b')') {
                return None;
            }
            letters = &body[..n];
            rest = &body[n + 1..];
        }
    })
}

fn verbose(pattern: &str) -> bool {
    leading_flags(pattern).any(|c| c == b'x')
}

/// The first construct of Python's `re` syntax in `pattern` that Rust's
/// `regex` cannot compile, or would compile with another meaning, as (what
/// it is, what to write instead). A byte scan, aware of escapes and
/// character classes; cheap next to compiling the pattern.
fn python_only(pattern: &str) -> Option<(&'static str, &'static str)> {
    const LOOK: (&str, &str) = (
        "look-around (`(?=`, `(?!`, `(?<=`, `(?<!`)",
        "rewrite it without look-around",
    );
    const BACKREF: (&str, &str) = (
        "a backreference (`\\1`, `(?P=name)`)",
        "rewrite it without backreferences",
    );
    const POSSESSIVE: (&str, &str) = (
        "a possessive quantifier (`a++`, `a*+`, `a?+`, `a{n}+`; Rust would read it as a nested \
         repetition and match differently)",
        "use a plain quantifier if backtracking does not matter to the match",
    );
    let verbose = verbose(pattern);
    if leading_flags(pattern).any(|c| c == b'a' || c == b'L') {
        return Some((
            "the `a` (ASCII) or `L` (locale) inline flag",
            "drop the flag, or use ASCII classes such as `[0-9]` and `(?-u:\\w)`",
        ));
    }
    let b = pattern.as_bytes();
    let mut i = 0;
    // Whether the previous token was a complete quantifier (`+` after it is
    // possessive in Python 3.11, nested repetition in Rust).
    let mut after_quantifier = false;
    while let Some(&c) = b.get(i) {
        let quantifier = match c {
            b'\\' => {
                if let Some(found) = python_escape(b, i) {
                    return Some(found);
                }
                match b.get(i + 1) {
                    Some(b'Z') => {
                        return Some((
                            "`\\Z` (Python's end-of-text anchor)",
                            "write `\\z`, its Rust spelling",
                        ));
                    }
                    Some(b'1'..=b'9') => return Some(BACKREF),
                    // `\p{…}`, `\x{…}`, `\u{…}`: Rust syntax (Python refuses
                    // it); its braces are not a repetition.
                    Some(b'p' | b'P' | b'x' | b'u' | b'U') if b.get(i + 2) == Some(&b'{') => {
                        i = b
                            .get(i..)
                            .and_then(|r| r.iter().position(|&c| c == b'}'))
                            .map_or(b.len(), |n| i + n + 1);
                        after_quantifier = false;
                        continue;
                    }
                    _ => {}
                }
                i += 2;
                false
            }
            b'[' => {
                i = match class_end(b, i + 1, verbose) {
                    Ok(end) => end,
                    Err(found) => return Some(found),
                };
                false
            }
            b'(' => {
                let rest = b.get(i + 1..).unwrap_or(&[]);
                if rest.starts_with(b"?#") {
                    return Some(("a `(?#…)` comment", "remove the comment"));
                }
                if rest.starts_with(b"?(") {
                    return Some((
                        "a conditional group (`(?(1)yes|no)`)",
                        "split it into two rules or two alternatives",
                    ));
                }
                if [&b"?="[..], b"?!", b"?<=", b"?<!"]
                    .iter()
                    .any(|p| rest.starts_with(p))
                {
                    return Some(LOOK);
                }
                if rest.starts_with(b"?P=") {
                    return Some(BACKREF);
                }
                if rest.starts_with(b"?>") {
                    return Some((
                        "an atomic group (`(?>…)`)",
                        "use a plain group if backtracking does not matter to the match",
                    ));
                }
                // Skip `(?` so that its `?` is not read as a quantifier.
                i += if rest.first() == Some(&b'?') { 2 } else { 1 };
                false
            }
            b'*' | b'+' | b'?' => {
                if after_quantifier {
                    if c == b'+' {
                        return Some(POSSESSIVE);
                    }
                    // `*?`, `+?`, `??`: lazy; the quantifier is complete.
                    i += 1;
                    after_quantifier = false;
                    continue;
                }
                i += 1;
                true
            }
            b'{' => match repetition(b, i + 1) {
                Some((end, true)) => {
                    i = end;
                    true
                }
                Some((_, false)) => {
                    return Some(("a `{,n}` repetition (no lower bound)", "write `{0,n}`"));
                }
                None => {
                    return Some((
                        "a `{` that is not a repetition (Python reads it literally)",
                        "escape it as `\\{`",
                    ));
                }
            },
            b'#' if verbose => {
                // A comment runs to the end of the line.
                i = b
                    .get(i..)
                    .and_then(|r| r.iter().position(|&c| c == b'\n'))
                    .map_or(b.len(), |n| i + n + 1);
                after_quantifier = false;
                continue;
            }
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c' if verbose => {
                // Ignored whitespace: a quantifier may still follow.
                i += 1;
                continue;
            }
            _ => {
                i += 1;
                false
            }
        };
        after_quantifier = quantifier;
    }
    None
}

/// An escape that Python reads differently from Rust both in and out of a
/// character class (`\0`, `\N{…}`), for the `\` at `at`.
fn python_escape(b: &[u8], at: usize) -> Option<(&'static str, &'static str)> {
    match b.get(at + 1) {
        Some(b'0') => Some((
            "an octal escape (`\\0`, `\\012`)",
            "write the character as `\\x0a` or `\\x{…}`",
        )),
        Some(b'N') if b.get(at + 2) == Some(&b'{') => Some((
            "a named Unicode escape (`\\N{…}`)",
            "write the code point as `\\u{…}`",
        )),
        _ => None,
    }
}

/// The end (just past the `]`) of the character class whose body starts at
/// `at`, or the construct that Python reads differently inside it.
fn class_end(
    b: &[u8],
    mut at: usize,
    verbose: bool,
) -> Result<usize, (&'static str, &'static str)> {
    if b.get(at) == Some(&b'^') {
        at += 1;
    }
    // A `]` right after `[` or `[^` is literal in both.
    if b.get(at) == Some(&b']') {
        at += 1;
    }
    while let Some(&c) = b.get(at) {
        match c {
            b']' => return Ok(at + 1),
            b'\\' => {
                if let Some(found) = python_escape(b, at) {
                    return Err(found);
                }
                if b.get(at + 1) == Some(&b'b') {
                    return Err(("`\\b` (backspace) in a character class", "write `\\x08`"));
                }
                at += 2;
            }
            b'[' => {
                return Err((
                    "a `[` inside a character class (Python reads it literally, Rust as a \
                     nested class)",
                    "escape it as `\\[`",
                ));
            }
            b'&' | b'-' | b'~' if b.get(at + 1) == Some(&c) => {
                return Err((
                    "`&&`, `--` or `~~` inside a character class (Python reads them literally, \
                     Rust as set operations)",
                    "escape the repeated character (`\\&`, `\\-`, `\\~`)",
                ));
            }
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c' if verbose => {
                return Err((
                    "whitespace inside a character class of a verbose (`(?x)`) pattern (Python \
                     matches it, Rust ignores it)",
                    "escape it (`\\ `) or write `\\x20`",
                ));
            }
            _ => at += 1,
        }
    }
    // Unclosed: both engines refuse it; let Rust's error say so.
    Ok(b.len())
}

/// A repetition `{n}`, `{n,}`, `{n,m}` (or Python's `{,m}`) whose body
/// starts at `at`: just past its `}`, and whether Rust accepts it (`false`
/// for a missing lower bound). `None` when it is not a repetition.
fn repetition(b: &[u8], at: usize) -> Option<(usize, bool)> {
    let digits = |from: usize| {
        b.get(from..)
            .map_or(0, |r| r.iter().take_while(|c| c.is_ascii_digit()).count())
    };
    let lower = digits(at);
    let mut i = at + lower;
    if b.get(i) == Some(&b',') {
        i += 1;
        i += digits(i);
    } else if lower == 0 {
        return None;
    }
    if b.get(i) != Some(&b'}') {
        return None;
    }
    Some((i + 1, lower > 0))
}
