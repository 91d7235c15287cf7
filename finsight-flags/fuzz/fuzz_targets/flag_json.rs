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

use finsight_flags::FlagSet;
use libfuzzer_sys::fuzz_target;

#[path = "../../tests/reference/mod.rs"]
mod reference;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        // The loader takes `&str`; lossy text must still never panic it.
        let _ = FlagSet::from_json(&String::from_utf8_lossy(data));
        return;
    };
    let checked = reference::check(text).unwrap_or_else(|e| panic!("{e}"));
    let Some(report) = checked.report else {
        return;
    };
    reference::evaluate_all(report, text);
});
