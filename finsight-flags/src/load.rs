//! The fast path of [`FlagSet::from_json`](crate::FlagSet::from_json): a
//! scanner for the flag document's schema that feeds each flag straight
//! into the [`Loader`], without building a
//! [`FlagDefinition`](crate::FlagDefinition).
//!
//! Strings are borrowed from the document unless they have escapes; the
//! loader copies them once into the set's string buffer.
//!
//! The scanner is strict: it accepts a subset of what serde_json and
//! `FlagDefinition`'s derived deserializer accept, and gives up (`None`) on
//! anything else, unusual but valid input included (a surrogate `\u`
//! escape, deep nesting, an enum written as a map, a struct written as an
//! array, ...). The caller then takes the slow path, which deserializes
//! every flag as a `FlagDefinition` and names the bad field of a bad flag.
//! Numbers and nested JSON values (`default_value`, variant values,
//! `environment_overrides`) are handed to serde_json, so they come out
//! exactly as the derived deserializer would produce them, and
//! [`FlagSet::get`](crate::FlagSet::get) returns the definition the derived
//! deserializer would have built (`tests/load_equivalence.rs` checks it).

use serde::de::{self, DeserializeOwned};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Range;

use crate::compile::{Loader, RawFlag, RawRule, RawVariant};
use crate::flagset::same;
use crate::model::{FlagStatus, FlagType, Operator, RuleType, RuleValue};

/// Nesting deeper than this (in a value handed to serde_json, or in a
/// skipped unknown field) sends the document to the slow path, well inside
/// serde_json's own limit of 128 counted from the document's root.
const MAX_DEPTH: usize = 64;

/// Loads the flags of `json` (an array of flags, or an object with a `flags`
/// array) into `loader`. `None` means the slow path must run: what `loader`
/// holds then is to be thrown away.
pub(crate) fn load_document(json: &str, loader: &mut Loader) -> Option<()> {
    let mut p = Scanner {
        s: json,
        b: json.as_bytes(),
        i: 0,
        raw: RawFlag::default(),
        element: 0,
        guesses: [[0; GUESSES]; 3],
    };
    match p.peek()? {
        b'[' => p.flags(loader)?,
        b'{' => p.wrapped(loader)?,
        _ => return None,
    }
    p.ws();
    (p.i == p.b.len()).then_some(())
}

struct Scanner<'a> {
    s: &'a str,
    b: &'a [u8],
    /// The next byte to read.
    i: usize,
    raw: RawFlag<'a>,
    /// Position of the next flag in the flag array.
    element: usize,
    /// Per kind of object (flag, rule, variant): which field followed each
    /// field last time (`[n]`: came first), tried first for the next key.
    guesses: [[u8; GUESSES]; 3],
}

/// Room for the fields of the largest object, plus "none yet".
const GUESSES: usize = 24;
const FLAG: usize = 0;
const RULE: usize = 1;
const VARIANT: usize = 2;

/// Defines a field enum: `ALL` variants and their JSON `NAMES` in the same
/// order, `once` to reject a second occurrence (as serde's derive does).
macro_rules! fields {
    ($(#[$doc:meta])* $name:ident { $($v:ident = $s:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy)]
        enum $name { $($v),* }

        impl $name {
            const ALL: &'static [Self] = &[$(Self::$v),*];
            const NAMES: &'static [&'static str] = &[$($s),*];

            fn once(self, seen: &mut u32) -> Option<()> {
                let bit = 1u32 << (self as u32);
                if *seen & bit != 0 {
                    return None;
                }
                *seen |= bit;
                Some(())
            }
        }
    };
}

fields! {
    /// A field of `FlagDefinition`.
    FlagField {
        Id = "id",
        Key = "key",
        Name = "name",
        Description = "description",
        FlagType = "flag_type",
        Status = "status",
        DefaultValue = "default_value",
        Variants = "variants",
        TargetingRules = "targeting_rules",
        RolloutPercentage = "rollout_percentage",
        StickyBucketing = "sticky_bucketing",
        KillSwitch = "kill_switch",
        EnvironmentOverrides = "environment_overrides",
        TrackEvents = "track_events",
        TrackExposure = "track_exposure",
        Prerequisites = "prerequisites",
        Tags = "tags",
        Owner = "owner",
        CreatedAt = "created_at",
        UpdatedAt = "updated_at",
        ExpiresAt = "expires_at",
        TenantRestrictions = "tenant_restrictions",
        SubscriptionTierRequirements = "subscription_tier_requirements",
    }
}

fields! {
    /// A field of `TargetingRule`.
    RuleField {
        RuleType = "rule_type",
        Operator = "operator",
        Values = "values",
        Attribute = "attribute",
        Percentage = "percentage",
    }
}

fields! {
    /// A field of `Variant`.
    VariantField {
        Id = "id",
        Name = "name",
        Value = "value",
        Description = "description",
        Weight = "weight",
        IsControl = "is_control",
    }
}

/// The variant of a unit enum written as `name` (as its serde name), if any.
fn by_name<T: Copy>(all: &[T], name: impl Fn(T) -> &'static str, s: &str) -> Option<T> {
    all.iter().copied().find(|&v| name(v) == s)
}

const FLAG_TYPES: [FlagType; 5] = [
    FlagType::Boolean,
    FlagType::Percentage,
    FlagType::Multivariate,
    FlagType::Targeting,
    FlagType::Operational,
];

fn flag_type_name(t: FlagType) -> &'static str {
    match t {
        FlagType::Boolean => "boolean",
        FlagType::Percentage => "percentage",
        FlagType::Multivariate => "multivariate",
        FlagType::Targeting => "targeting",
        FlagType::Operational => "operational",
    }
}

const STATUSES: [FlagStatus; 5] = [
    FlagStatus::Draft,
    FlagStatus::Active,
    FlagStatus::Completed,
    FlagStatus::Archived,
    FlagStatus::Deprecated,
];

const RULE_TYPES: [RuleType; 8] = [
    RuleType::UserId,
    RuleType::TenantId,
    RuleType::UserRole,
    RuleType::SubscriptionTier,
    RuleType::GeographicRegion,
    RuleType::UserSegment,
    RuleType::DeviceType,
    RuleType::CustomAttribute,
];

const OPERATORS: [Operator; 19] = [
    Operator::Equals,
    Operator::In,
    Operator::NotEquals,
    Operator::NotIn,
    Operator::Contains,
    Operator::StartsWith,
    Operator::EndsWith,
    Operator::RegexMatch,
    Operator::Lt,
    Operator::Lte,
    Operator::Gt,
    Operator::Gte,
    Operator::SemverEq,
    Operator::SemverLt,
    Operator::SemverLte,
    Operator::SemverGt,
    Operator::SemverGte,
    Operator::Before,
    Operator::After,
];

impl<'a> Scanner<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// The next byte after whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    /// The next byte after whitespace, consumed.
    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    /// `true`, `false` or `null` (the caller checks what follows).
    fn literal(&mut self, word: &str) -> Option<()> {
        let end = self.i + word.len();
        (self.b.get(self.i..end)? == word.as_bytes()).then(|| self.i = end)
    }

    /// Consumes a `null` if one comes next.
    fn null(&mut self) -> Option<bool> {
        if self.peek()? == b'n' {
            self.literal("null")?;
            Some(true)
        } else {
            Some(false)
        }
    }

    /// A string, borrowed unless it has escapes.
    #[inline]
    fn string(&mut self) -> Option<Cow<'a, str>> {
        self.expect(b'"')?;
        let start = self.i;
        let j = special(self.b, start)?;
        match *self.b.get(j)? {
            b'"' => {
                self.i = j + 1;
                self.s.get(start..j).map(Cow::Borrowed)
            }
            b'\\' => self.escaped(start, j).map(Cow::Owned),
            _ => None,
        }
    }

    /// The rest of a string with escapes, from `start`, `j` at the first `\`.
    #[cold]
    #[inline(never)]
    fn escaped(&mut self, start: usize, mut j: usize) -> Option<String> {
        let mut out = String::from(self.s.get(start..j)?);
        loop {
            match *self.b.get(j)? {
                b'"' => {
                    self.i = j + 1;
                    return Some(out);
                }
                b'\\' => {
                    let c = match *self.b.get(j + 1)? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hex = self.s.get(j + 2..j + 6)?;
                            if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                                return None;
                            }
                            let n = u32::from_str_radix(hex, 16).ok()?;
                            j += 4;
                            // Surrogates (pairs or lone) are left to serde_json.
                            char::from_u32(n)?
                        }
                        _ => return None,
                    };
                    out.push(c);
                    j += 2;
                }
                c if c < 0x20 => return None,
                _ => {
                    let run = j;
                    j = special(self.b, j)?;
                    out.push_str(self.s.get(run..j)?);
                }
            }
        }
    }

    /// `null` or a string.
    fn nullable_string(&mut self) -> Option<Option<Cow<'a, str>>> {
        if self.null()? {
            Some(None)
        } else {
            self.string().map(Some)
        }
    }

    /// `null` (`false`) or a boolean.
    fn nullable_bool(&mut self) -> Option<bool> {
        match self.peek()? {
            b'n' => self.literal("null").map(|()| false),
            b't' => self.literal("true").map(|()| true),
            b'f' => self.literal("false").map(|()| false),
            _ => None,
        }
    }

    /// The text of a number, checked and converted by serde_json.
    fn number<T: DeserializeOwned>(&mut self) -> Option<T> {
        self.ws();
        let start = self.i;
        while let Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') = self.b.get(self.i) {
            self.i += 1;
        }
        serde_json::from_str(self.s.get(start..self.i)?).ok()
    }

    /// `null` or an integer (as `Option<i64>`).
    fn nullable_i64(&mut self) -> Option<Option<i64>> {
        if self.null()? {
            Some(None)
        } else {
            self.number::<i64>().map(Some)
        }
    }

    /// A unit enum variant by name, `null` giving `default`.
    fn name<T: Copy>(&mut self, all: &[T], name: impl Fn(T) -> &'static str) -> Option<Option<T>> {
        match self.nullable_string()? {
            None => Some(None),
            Some(s) => by_name(all, name, &s).map(Some),
        }
    }

    /// Any JSON value, as serde_json reads it.
    fn value(&mut self) -> Option<Value> {
        match self.peek()? {
            b'"' => self.string().map(|s| Value::String(s.into_owned())),
            b't' => self.literal("true").map(|()| Value::Bool(true)),
            b'f' => self.literal("false").map(|()| Value::Bool(false)),
            b'n' => self.literal("null").map(|()| Value::Null),
            b'{' | b'[' => {
                let v: Value = self.delegate()?;
                (depth(&v) <= MAX_DEPTH).then_some(v)
            }
            _ => self.number::<Value>(),
        }
    }

    /// One value deserialized by serde_json from here on.
    fn delegate<T: DeserializeOwned>(&mut self) -> Option<T> {
        let rest = self.s.get(self.i..)?;
        let mut it = serde_json::Deserializer::from_str(rest).into_iter::<T>();
        let v = it.next()?.ok()?;
        self.i += it.byte_offset();
        Some(v)
    }

    /// Calls `item` for each element of `null` or an array.
    fn nullable_list(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        if self.null()? {
            return Some(());
        }
        self.list(|p| item(p))
    }

    /// Calls `item` for each element of an array.
    fn list(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.expect(b'[')?;
        if self.peek()? == b']' {
            self.i += 1;
            return Some(());
        }
        loop {
            item(self)?;
            match self.next()? {
                b',' => {}
                b']' => return Some(()),
                _ => return None,
            }
        }
    }

    /// Calls `member` with each key of an object (positioned at its value).
    fn object(
        &mut self,
        mut member: impl FnMut(&mut Self, Cow<'a, str>) -> Option<()>,
    ) -> Option<()> {
        self.expect(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            let key = self.string()?;
            self.expect(b':')?;
            member(self, key)?;
            match self.next()? {
                b',' => {}
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    /// Calls `member` with the index in `names` of each key of an object
    /// (`None` for a key not in `names`), positioned at its value.
    fn record(
        &mut self,
        kind: usize,
        names: &'static [&'static str],
        mut member: impl FnMut(&mut Self, Option<usize>) -> Option<()>,
    ) -> Option<()> {
        self.expect(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        let mut prev = names.len();
        loop {
            let field = self.field(kind, names, prev)?;
            self.expect(b':')?;
            member(self, field)?;
            if let Some(f) = field {
                prev = f;
            }
            match self.next()? {
                b',' => {}
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    /// A key of an object of `kind`: matched in place against `names`,
    /// trying first the field that followed `prev` last time.
    #[inline]
    fn field(
        &mut self,
        kind: usize,
        names: &'static [&'static str],
        prev: usize,
    ) -> Option<Option<usize>> {
        self.expect(b'"')?;
        let guess = self
            .guesses
            .get(kind)
            .and_then(|g| g.get(prev))
            .map_or(0, |&g| usize::from(g));
        match names.get(guess) {
            Some(n) if self.key_here(n) => {
                self.i += n.len() + 1;
                Some(Some(guess))
            }
            _ => self.field_search(kind, names, prev),
        }
    }

    /// Whether the key starting here (after its opening quote) is `name`.
    #[inline]
    fn key_here(&self, name: &str) -> bool {
        let (at, n) = (self.i, name.as_bytes());
        self.b.get(at..at + n.len()).is_some_and(|t| same(t, n))
            && self.b.get(at + n.len()) == Some(&b'"')
    }

    /// [`Scanner::field`] when the guess was wrong: every name, then the
    /// key as any string (an unknown key, or a known one with escapes).
    #[cold]
    #[inline(never)]
    fn field_search(
        &mut self,
        kind: usize,
        names: &'static [&'static str],
        prev: usize,
    ) -> Option<Option<usize>> {
        if let Some(k) = (0..names.len()).find(|&k| names.get(k).is_some_and(|n| self.key_here(n)))
        {
            self.i += names.get(k)?.len() + 1;
            if let Some(g) = self.guesses.get_mut(kind).and_then(|g| g.get_mut(prev)) {
                *g = u8::try_from(k).unwrap_or(0);
            }
            return Some(Some(k));
        }
        self.i -= 1;
        let key = self.string()?;
        Some(names.iter().position(|n| *n == key))
    }

    /// Checks and skips any JSON value.
    fn skip(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => self.string().map(drop),
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            b'[' => self.list(|p| p.skip(depth + 1)),
            b'{' => self.object(|p, _| p.skip(depth + 1)),
            _ => self.number::<de::IgnoredAny>().map(drop),
        }
    }

    /// `null` or an array of strings, appended to the flag's strings.
    fn strings(&mut self) -> Option<Range<usize>> {
        let start = self.raw.strs.len();
        self.nullable_list(|p| {
            let s = p.string()?;
            p.raw.strs.push(s);
            Some(())
        })?;
        Some(start..self.raw.strs.len())
    }

    /// `{"flags": [...], ...}`: other fields checked and ignored.
    fn wrapped(&mut self, loader: &mut Loader) -> Option<()> {
        let mut seen = false;
        self.object(|p, key| {
            if key == "flags" {
                if seen {
                    return None;
                }
                seen = true;
                p.flags(loader)
            } else {
                p.skip(1)
            }
        })?;
        seen.then_some(())
    }

    /// The array of flags.
    fn flags(&mut self, loader: &mut Loader) -> Option<()> {
        let start = self.i;
        self.list(|p| {
            p.flag(loader)?;
            if p.element == 1 {
                // Size the set from the first flag: growing it by doubling
                // would copy it and leave freed blocks behind.
                let first = p.i.saturating_sub(start).max(1);
                let rest = p.b.len().saturating_sub(p.i);
                loader.reserve(rest / first + 1);
            }
            Some(())
        })
    }

    /// One flag, handed to the loader.
    fn flag(&mut self, loader: &mut Loader) -> Option<()> {
        self.raw.clear();
        let mut seen = 0u32;
        self.record(FLAG, FlagField::NAMES, |p, field| {
            let Some(&field) = field.and_then(|f| FlagField::ALL.get(f)) else {
                return p.skip(1);
            };
            field.once(&mut seen)?;
            match field {
                FlagField::Key => p.raw.key = p.nullable_string()?.unwrap_or_default(),
                FlagField::FlagType => {
                    p.raw.flag_type = p.name(&FLAG_TYPES, flag_type_name)?.unwrap_or_default();
                }
                FlagField::Status => {
                    p.raw.status = p.name(&STATUSES, FlagStatus::as_str)?.unwrap_or_default();
                }
                FlagField::DefaultValue => p.raw.default_value = p.value()?,
                FlagField::Variants => p.nullable_list(Self::variant)?,
                FlagField::TargetingRules => p.nullable_list(Self::rule)?,
                FlagField::RolloutPercentage => {
                    p.raw.rollout_percentage = p.nullable_i64()?.unwrap_or_default();
                }
                FlagField::StickyBucketing => p.raw.sticky_bucketing = p.nullable_bool()?,
                FlagField::KillSwitch => p.raw.kill_switch = p.nullable_bool()?,
                FlagField::TrackExposure => p.raw.track_exposure = p.nullable_bool()?,
                FlagField::TrackEvents => p.raw.track_events = p.nullable_bool()?,
                FlagField::EnvironmentOverrides => {
                    p.raw.environment_overrides = p.overrides()?;
                }
                FlagField::ExpiresAt => p.raw.expires_at = p.nullable_string()?,
                FlagField::Prerequisites => p.raw.prerequisites = p.strings()?,
                FlagField::TenantRestrictions => p.raw.tenant_restrictions = p.strings()?,
                FlagField::SubscriptionTierRequirements => {
                    p.raw.subscription_tier_requirements = p.strings()?;
                }
                FlagField::Tags => p.raw.tags = p.strings()?,
                FlagField::Id => p.raw.id = p.nullable_string()?.unwrap_or_default(),
                FlagField::Name => p.raw.name = p.nullable_string()?.unwrap_or_default(),
                FlagField::Description => {
                    p.raw.description = p.nullable_string()?.unwrap_or_default();
                }
                FlagField::Owner => p.raw.owner = p.nullable_string()?,
                FlagField::CreatedAt => p.raw.created_at = p.nullable_string()?,
                FlagField::UpdatedAt => p.raw.updated_at = p.nullable_string()?,
            }
            Some(())
        })?;
        loader.add(self.element, &mut self.raw);
        self.element += 1;
        Some(())
    }

    /// `null` or an object of environment name to value.
    fn overrides(&mut self) -> Option<BTreeMap<String, Value>> {
        if self.null()? {
            return Some(BTreeMap::new());
        }
        if self.peek()? != b'{' {
            return None;
        }
        let at = self.i;
        self.i += 1;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(BTreeMap::new());
        }
        self.i = at;
        let map: BTreeMap<String, Value> = self.delegate()?;
        map.values().all(|v| depth(v) < MAX_DEPTH).then_some(map)
    }

    /// One targeting rule (its values appended to the flag's strings).
    fn rule(&mut self) -> Option<()> {
        let mut rule_type = None;
        let mut operator = None;
        let n = self.raw.strs.len();
        let mut values = n..n;
        let mut attribute = None;
        let mut percentage = None;
        let mut seen = 0u32;
        self.record(RULE, RuleField::NAMES, |p, field| {
            let Some(&field) = field.and_then(|f| RuleField::ALL.get(f)) else {
                return p.skip(1);
            };
            field.once(&mut seen)?;
            match field {
                RuleField::RuleType => {
                    let s = p.string()?;
                    rule_type = Some(by_name(&RULE_TYPES, RuleType::as_str, &s)?);
                }
                RuleField::Operator => {
                    let s = p.string()?;
                    operator = Some(by_name(&OPERATORS, Operator::as_str, &s)?);
                }
                RuleField::Values => {
                    let start = p.raw.strs.len();
                    p.nullable_list(|p| {
                        let v = p.rule_value()?;
                        p.raw.strs.push(v);
                        Some(())
                    })?;
                    values = start..p.raw.strs.len();
                }
                RuleField::Attribute => attribute = p.nullable_string()?,
                RuleField::Percentage => percentage = p.nullable_i64()?,
            }
            Some(())
        })?;
        self.raw.rules.push(RawRule {
            rule_type: rule_type?,
            operator: operator?,
            values,
            attribute,
            percentage,
        });
        Some(())
    }

    /// A rule value: a string, or a number or boolean read as its text.
    fn rule_value(&mut self) -> Option<Cow<'a, str>> {
        match self.peek()? {
            b'"' => self.string(),
            b't' => self.literal("true").map(|()| Cow::Borrowed("True")),
            b'f' => self.literal("false").map(|()| Cow::Borrowed("False")),
            _ => self.number::<RuleValue>().map(|v| Cow::Owned(v.0)),
        }
    }

    /// One variant.
    fn variant(&mut self) -> Option<()> {
        let mut v = RawVariant {
            id: Cow::Borrowed(""),
            name: Cow::Borrowed(""),
            description: Cow::Borrowed(""),
            value: Value::Null,
            weight: 0.0,
            is_control: false,
        };
        let mut seen = 0u32;
        self.record(VARIANT, VariantField::NAMES, |p, field| {
            let Some(&field) = field.and_then(|f| VariantField::ALL.get(f)) else {
                return p.skip(1);
            };
            field.once(&mut seen)?;
            match field {
                VariantField::Id => v.id = p.nullable_string()?.unwrap_or_default(),
                VariantField::Value => v.value = p.value()?,
                VariantField::Weight => v.weight = p.number::<f64>()?,
                VariantField::IsControl => v.is_control = p.nullable_bool()?,
                VariantField::Name => v.name = p.nullable_string()?.unwrap_or_default(),
                VariantField::Description => {
                    v.description = p.nullable_string()?.unwrap_or_default();
                }
            }
            Some(())
        })?;
        self.raw.variants.push(v);
        Some(())
    }
}

/// The index of the first byte from `from` on that ends a run of plain
/// string bytes: `"`, `\\` or a control character (`None`: the text ends
/// first). Eight bytes at a time (the bit trick of serde_json's own
/// scanner: a byte's high bit is set in `x - 0x01..01 & !x` when it is 0).
#[inline]
fn special(b: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES << 7;
    let mut at = from;
    while let Some(chunk) = b.get(at..at + 8) {
        let x = u64::from_le_bytes(chunk.try_into().ok()?);
        let ctrl = x.wrapping_sub(ONES * 0x20) & !x;
        let q = x ^ (ONES * u64::from(b'"'));
        let quote = q.wrapping_sub(ONES) & !q;
        let e = x ^ (ONES * u64::from(b'\\'));
        let escape = e.wrapping_sub(ONES) & !e;
        let m = (ctrl | quote | escape) & HIGH;
        if m != 0 {
            return Some(at + (m.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    b.get(at..)?
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|k| at + k)
}

/// Nesting depth of a value (a scalar is 0).
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_finds_the_first_quote_escape_or_control_byte() {
        for text in [
            "",
            "abc",
            "abcdefgh",
            "abcdefghijklmnop",
            "a\"",
            "abcdefghij\"x",
            "abcdefg\\h",
            "abc\u{1}defghijk",
            "héllo wörld, ünïcode\"",
            "\u{7f}\u{80}\u{ff}abcdefgh\"",
        ] {
            let b = text.as_bytes();
            for from in 0..=b.len() {
                let naive = b[from..]
                    .iter()
                    .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                    .map(|k| from + k);
                assert_eq!(special(b, from), naive, "{text:?} from {from}");
            }
        }
    }

    #[test]
    fn realistic_documents_take_the_fast_path() {
        let conformance = include_str!("../tests/data/flags.json");
        let mut loader = Loader::default();
        assert!(load_document(conformance, &mut loader).is_some());
        let report = loader.finish();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert!(report.set.len() > 40);
        let escaped = r#"[{"key": "a\"b", "description": "\u00e9\n", "targeting_rules": [
            {"rule_type": "user_id", "operator": "regex_match", "values": ["user-\\d+"]}]}]"#;
        let mut loader = Loader::default();
        assert!(load_document(escaped, &mut loader).is_some());
        let report = loader.finish();
        assert_eq!(
            report.set.get("a\"b").map(|d| d.description.as_str()),
            Some("\u{e9}\n")
        );
    }

    #[test]
    fn same_compares_like_eq() {
        let texts = [
            "",
            "a",
            "id",
            "key",
            "name",
            "abcdefg",
            "abcdefgh",
            "abcdefghi",
            "rollout_percentage",
            "subscription_tier_requirements",
            "subscription_tier_requirementz",
        ];
        for a in texts {
            for b in texts {
                assert_eq!(same(a.as_bytes(), b.as_bytes()), a == b, "{a} {b}");
            }
        }
    }

    #[test]
    fn enum_names_are_the_serde_names() {
        for t in FLAG_TYPES {
            let serde: FlagType = serde_json::from_value(Value::from(flag_type_name(t))).unwrap();
            assert_eq!(serde, t);
        }
        for s in STATUSES {
            let serde: FlagStatus = serde_json::from_value(Value::from(s.as_str())).unwrap();
            assert_eq!(serde, s);
        }
        for r in RULE_TYPES {
            let serde: RuleType = serde_json::from_value(Value::from(r.as_str())).unwrap();
            assert_eq!(serde, r);
        }
        for o in OPERATORS {
            let serde: Operator = serde_json::from_value(Value::from(o.as_str())).unwrap();
            assert_eq!(serde, o);
        }
    }
}
