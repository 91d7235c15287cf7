//! Fuzz target for the flag JSON loader and the evaluator.
//!
//! Differential: `FlagSet::from_json` reads documents with its own scanner
//! and falls back to serde per flag; whatever path runs, the result must be
//! what serde_json and `FlagDefinition` give (`FlagSet::from_definitions`).
//! Every flag that loads is then evaluated, for a context built from the
//! input, through every accessor and explain mode; none may panic.
//!
//! Run: `scripts/fuzz.sh` (stable toolchain, `--sanitizer none`).
#![no_main]

use finsight_flags::{EvaluationContext, FlagDefinition, FlagEngine, FlagSet, LoadReport};
use libfuzzer_sys::fuzz_target;
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

/// The reference when every flag of the document deserializes.
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

fn check_against_reference(text: &str) -> Option<LoadReport> {
    let got = FlagSet::from_json(text);
    match (typed(text), elements(text)) {
        (Some(defs), _) => {
            let want = FlagSet::from_definitions(defs);
            let got = got.unwrap_or_else(|e| panic!("rejected a valid document: {e}"));
            assert_eq!(got.errors, want.errors, "errors differ from the reference");
            assert_eq!(definitions(&got), definitions(&want), "flags differ");
            assert!(got.set.keys().eq(want.set.keys()), "keys differ");
            Some(got)
        }
        (None, Some(raws)) => {
            let got = got.unwrap_or_else(|e| panic!("rejected a flag array: {e}"));
            let good: Vec<FlagDefinition> = raws
                .iter()
                .filter_map(|r| serde_json::from_str::<FlagDefinition>(r.get()).ok())
                .filter(|d| !d.key.is_empty())
                .collect();
            let bad = raws.len() - good.len();
            let want = FlagSet::from_definitions(good);
            assert_eq!(definitions(&got), definitions(&want), "good flags differ");
            assert!(got.errors.len() >= bad, "a bad flag went unreported");
            Some(got)
        }
        (None, None) => {
            assert!(got.is_err(), "a document that is not a flag list loaded");
            None
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        // The loader takes `&str`; lossy text must still never panic it.
        let _ = FlagSet::from_json(&String::from_utf8_lossy(data));
        return;
    };
    let Some(report) = check_against_reference(text) else {
        return;
    };
    for e in &report.errors {
        assert!(!e.field.is_empty() && !e.message.is_empty(), "{e:?}");
    }
    let keys: Vec<String> = report.set.keys().map(str::to_owned).collect();
    let engine = FlagEngine::new(report.set);
    // A context from the input: the first bytes as ids, the whole text as
    // an attribute value, so rules compare against fuzzer-chosen strings.
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
});
