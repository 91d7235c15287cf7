//! Runs a conformance vector file (the format of the shared `flags.json`:
//! flags, evaluations with expected results, bucket vectors) and prints each
//! mismatch, then `N passed, M failed`. Exits non-zero on any failure.
//!
//! ```text
//! cargo run -p finsight-flags --example conformance -- finsight-flags/tests/data/flags.json
//! ```

use finsight_flags::{EvaluationContext, FlagEngine, FlagSet, ManualClock, Unit, bucket};
use serde_json::Value;

/// Outcome of a run: passed, failed, and one line per failure.
pub struct Outcome {
    pub passed: usize,
    pub failed: usize,
    pub mismatches: Vec<String>,
}

/// JSON equality where numbers compare by value (`1` equals `1.0`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// Runs the vectors in `text`.
pub fn run(text: &str) -> Result<Outcome, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let now = doc
        .get("now")
        .and_then(Value::as_str)
        .ok_or("the file has no `now`")?;
    let now = chrono::DateTime::parse_from_rfc3339(now)
        .map_err(|e| format!("`now` is not RFC 3339: {e}"))?
        .to_utc();
    let report = FlagSet::from_json(text).map_err(|e| e.to_string())?;
    let mut out = Outcome {
        passed: 0,
        failed: 0,
        mismatches: Vec::new(),
    };
    for e in &report.errors {
        out.failed += 1;
        out.mismatches.push(format!("load: {e}"));
    }
    let engine = FlagEngine::builder()
        .flags(report.set)
        .clock(ManualClock::new(now))
        .build();

    let empty = Vec::new();
    let evaluations = doc
        .get("evaluations")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    for (i, case) in evaluations.iter().enumerate() {
        let key = case.get("flag_key").and_then(Value::as_str).unwrap_or("");
        let ctx: EvaluationContext = match case.get("context") {
            Some(c) => match serde_json::from_value(c.clone()) {
                Ok(c) => c,
                Err(e) => {
                    out.failed += 1;
                    out.mismatches
                        .push(format!("evaluations[{i}] {key}: bad context: {e}"));
                    continue;
                }
            },
            None => EvaluationContext::default(),
        };
        let default = case.get("default_value").cloned().unwrap_or(Value::Null);
        let expected = case.get("expected").cloned().unwrap_or(Value::Null);
        let got = engine.evaluate(key, &ctx, default);
        let mut diffs = Vec::new();
        let exp_value = expected.get("value").cloned().unwrap_or(Value::Null);
        if !same(&got.value, &exp_value) {
            diffs.push(format!("value {} != expected {}", got.value, exp_value));
        }
        let exp_variant = expected.get("variant").and_then(Value::as_str);
        if got.variant.as_deref() != exp_variant {
            diffs.push(format!(
                "variant {:?} != expected {:?}",
                got.variant.as_deref(),
                exp_variant
            ));
        }
        let exp_reason = expected.get("reason").and_then(Value::as_str).unwrap_or("");
        if got.reason.as_str() != exp_reason {
            diffs.push(format!("reason {} != expected {exp_reason}", got.reason));
        }
        if let Some(tm) = expected.get("targeting_matched").and_then(Value::as_bool)
            && got.targeting_matched != tm
        {
            diffs.push(format!(
                "targeting_matched {} != expected {tm}",
                got.targeting_matched
            ));
        }
        if diffs.is_empty() {
            out.passed += 1;
        } else {
            out.failed += 1;
            out.mismatches.push(format!(
                "evaluations[{i}] {key} (bucket {:?}): {}",
                got.bucket,
                diffs.join("; ")
            ));
        }
    }

    let buckets = doc
        .get("buckets")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    for (i, case) in buckets.iter().enumerate() {
        let key = case.get("flag_key").and_then(Value::as_str).unwrap_or("");
        let user = case.get("user_id").and_then(Value::as_str);
        let tenant = case.get("tenant_id").and_then(Value::as_str);
        let unit = match (user, tenant) {
            (Some(u), _) => Some(Unit::User(u)),
            (None, Some(t)) => Some(Unit::Tenant(t)),
            _ => None,
        };
        let got = unit.map(|u| bucket(key, u));
        let expected = case.get("bucket").and_then(Value::as_u64);
        if got.map(u64::from) == expected {
            out.passed += 1;
        } else {
            out.failed += 1;
            out.mismatches.push(format!(
                "buckets[{i}] {key} user={user:?} tenant={tenant:?}: {got:?} != expected {expected:?}"
            ));
        }
    }
    Ok(out)
}

#[allow(dead_code)]
fn main() -> std::process::ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: conformance <vectors.json>");
        return std::process::ExitCode::from(2);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cannot read {path}: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(&text) {
        Ok(out) => {
            for m in &out.mismatches {
                println!("MISMATCH {m}");
            }
            println!("{} passed, {} failed", out.passed, out.failed);
            if out.failed == 0 {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("{path}: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
