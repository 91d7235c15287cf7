//! The reference reading of a flag document, shared by
//! `tests/load_equivalence.rs` and the fuzz target (`fuzz/`, which includes
//! this file by path): `FlagSet::from_json` must give what serde_json and
//! `FlagDefinition` give (`FlagSet::from_definitions`), whichever of its
//! paths (scanner or per-flag serde fallback) runs.

use finsight_flags::{
    EvaluationContext, FlagDefinition, FlagEngine, FlagError, FlagSet, LoadReport,
};
use serde_json::Value;
use serde_json::value::RawValue;

#[derive(serde::Deserialize)]
struct Wrapped {
    flags: Vec<FlagDefinition>,
}

#[derive(serde::Deserialize)]
struct WrappedRaw {
    flags: Vec<Box<RawValue>>,
}

/// The reference for a document every flag of which deserializes.
fn typed(text: &str) -> Option<Vec<FlagDefinition>> {
    match text.trim_start().as_bytes().first() {
        Some(b'[') => serde_json::from_str::<Vec<FlagDefinition>>(text).ok(),
        Some(b'{') => serde_json::from_str::<Wrapped>(text).ok().map(|w| w.flags),
        _ => None,
    }
}

/// The flags of a document, each as its own JSON text.
fn elements(text: &str) -> Option<Vec<Box<RawValue>>> {
    match text.trim_start().as_bytes().first() {
        Some(b'[') => serde_json::from_str::<Vec<Box<RawValue>>>(text).ok(),
        Some(b'{') => serde_json::from_str::<WrappedRaw>(text)
            .ok()
            .map(|w| w.flags),
        _ => None,
    }
}

fn definitions(r: &LoadReport) -> Vec<FlagDefinition> {
    r.set.definitions().cloned().collect()
}

/// What [`check`] found when `from_json` agreed with the reference.
pub struct Checked {
    /// `from_json`'s report; `None` for a document that is not a flag list.
    pub report: Option<LoadReport>,
    /// Every flag of the document deserialized.
    #[allow(dead_code)] // read by the tests, not by the fuzz target
    pub all_typed: bool,
}

/// Checks `from_json(text)` against the reference; `Err` says how they differ.
pub fn check(text: &str) -> Result<Checked, String> {
    // (Not `Value`: like serde's derive for unknown fields, `RawValue`
    // checks a number's syntax only, so `1e400` in an unknown field loads.)
    let got = FlagSet::from_json(text);
    match (typed(text), elements(text)) {
        (Some(defs), _) => {
            let want = FlagSet::from_definitions(defs);
            let got = got.map_err(|e| format!("rejected a valid document: {e}"))?;
            if got.errors != want.errors {
                return Err(format!("errors {:?} != {:?}", got.errors, want.errors));
            }
            if definitions(&got) != definitions(&want) {
                return Err("flags differ from the reference".into());
            }
            if !got.set.keys().eq(want.set.keys()) {
                return Err("keys differ from the reference".into());
            }
            Ok(Checked {
                report: Some(got),
                all_typed: true,
            })
        }
        (None, Some(raws)) => {
            // Some flag does not deserialize: it must be reported, the others loaded.
            let got = got.map_err(|e| format!("rejected a flag list: {e}"))?;
            let good: Vec<FlagDefinition> = raws
                .iter()
                .filter_map(|r| serde_json::from_str::<FlagDefinition>(r.get()).ok())
                .filter(|d| !d.key.is_empty())
                .collect();
            let bad = raws.len() - good.len();
            let want = FlagSet::from_definitions(good);
            if definitions(&got) != definitions(&want) {
                return Err("the flags that deserialize differ from the reference".into());
            }
            if got.errors.len() < bad {
                return Err(format!("{bad} bad flags, {:?} reported", got.errors));
            }
            let first: Vec<&FlagError> = got.errors.iter().take(1).collect();
            if !first.iter().all(|e| !e.field.is_empty()) {
                return Err(format!("an error names no field: {first:?}"));
            }
            Ok(Checked {
                report: Some(got),
                all_typed: false,
            })
        }
        (None, None) => match got {
            Ok(_) => Err("a document that is not a flag list loaded".into()),
            Err(_) => Ok(Checked {
                report: None,
                all_typed: false,
            }),
        },
    }
}

/// Evaluates every flag that loaded, for a context built from `text` (its
/// first characters as user and tenant id, more of it as an attribute, so
/// rules compare against input-chosen strings), through every accessor and
/// explain mode. Panics only on a broken invariant (an error without field
/// or message) or a panic inside the engine.
pub fn evaluate_all(report: LoadReport, text: &str) {
    for e in &report.errors {
        assert!(!e.field.is_empty() && !e.message.is_empty(), "{e:?}");
    }
    let keys: Vec<String> = report.set.keys().map(str::to_owned).collect();
    let engine = FlagEngine::new(report.set);
    let id: String = text.chars().take(8).collect();
    let mut ctx = EvaluationContext::new()
        .custom_attribute("x", Value::String(text.chars().take(64).collect()));
    ctx.user_id = Some(id.clone());
    ctx.tenant_id = Some(id);
    for k in &keys {
        let _ = engine.explain(k, &ctx, Value::Null);
        let _ = engine.bool_value(k, &ctx, false);
        let _ = engine.string_value(k, &ctx, "d");
        let _ = engine.variant(k, &ctx);
    }
}
