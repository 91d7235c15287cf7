//! `FlagSet::from_json` reads documents with its own scanner (the fast
//! path) and falls back to deserializing each flag as a `FlagDefinition`.
//! Whichever path runs, the result must be the one serde_json and
//! `FlagDefinition` give: these tests compare `from_json` with that
//! reference on realistic documents and on many mutated and generated ones
//! (proptest, fixed seeds).

use finsight_flags::{FlagDefinition, FlagSet};
use proptest::prelude::*;
use serde_json::{Value, json};

mod reference;
mod strategies;

use strategies::{config, json_tree, word};

/// Checks `from_json(text)` against the reference; returns whether every
/// flag of the document deserialized.
fn check(text: &str) -> Result<bool, TestCaseError> {
    reference::check(text)
        .map(|c| c.all_typed)
        .map_err(|e| TestCaseError::fail(format!("{e}: {text}")))
}

/// Flags covering every field, escapes, non-ASCII text, numbers of every
/// shape, nested values and all operators.
fn rich_flags() -> Vec<Value> {
    vec![
        json!({"id": "i\"d", "key": "esc\\aped-\u{e9}\u{1F600}", "name": "n\u{1}".replace('\u{1}', "\n"),
               "description": "tab\there \"quoted\" \\ back / slash \u{2028}", "flag_type": "multivariate",
               "status": "active", "default_value": {"nested": [1, 2.5, -3, 1e21, null, true, "x\u{0}y"]},
               "variants": [
                   {"id": "a", "name": null, "value": {"k": [1, {"d": 2}]}, "description": "first", "weight": 33.3, "is_control": true},
                   {"id": "b", "value": "B", "weight": 33.35},
                   {"id": "c\u{e9}", "value": -0.0, "weight": 33.35, "extra": [1, {"x": null}]}
               ],
               "targeting_rules": [
                   {"rule_type": "user_id", "operator": "regex_match", "values": ["user-\\d+", "^a.*\\.com$"]},
                   {"rule_type": "custom_attribute", "attribute": "age", "operator": "gte", "values": [18, 2.5, "30"]},
                   {"rule_type": "custom_attribute", "attribute": "beta", "operator": "equals", "values": [true, false, 1.0, 12345678901234567890u64, -7]},
                   {"rule_type": "tenant_id", "operator": "not_in", "values": null, "percentage": 40},
                   {"rule_type": "device_type", "operator": "semver_gte", "values": ["v1.2.3"]},
                   {"rule_type": "user_segment", "operator": "before", "values": ["2030-01-01"], "attribute": null, "percentage": null}
               ],
               "rollout_percentage": 100, "sticky_bucketing": true, "kill_switch": null,
               "environment_overrides": {"staging": {"a": [true]}, "dev": "x", "prod\u{e9}": 1.5},
               "track_events": true, "track_exposure": null, "prerequisites": ["plain"],
               "tags": ["t", "\u{e9}"], "owner": null, "created_at": "2024-01-01", "updated_at": null,
               "expires_at": "2099-01-01T00:00:00+02:00", "tenant_restrictions": ["t1", "t\"2"],
               "subscription_tier_requirements": ["pro"], "unknown": {"deep": [[[]]], "n": -1.5e-7}}),
        json!({"key": "plain", "flag_type": "boolean", "rollout_percentage": 50,
               "targeting_rules": [{"rule_type": "geographic_region", "operator": "starts_with", "values": ["eu-"]}]}),
        json!({"key": "pct", "flag_type": "percentage", "status": "draft", "default_value": 7,
               "rollout_percentage": 0, "environment_overrides": {}}),
        json!({"key": "ops", "flag_type": "operational", "status": null, "flag_type_extra": 1,
               "targeting_rules": [], "variants": [], "prerequisites": null, "tags": null}),
        json!({"key": "tgt", "flag_type": "targeting", "default_value": "off",
               "targeting_rules": [{"operator": "contains", "rule_type": "user_role", "values": ["adm"]},
                                   {"rule_type": "subscription_tier", "operator": "ends_with", "values": ["ise"]}]}),
    ]
}

fn conformance_text() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/flags.json"
    ))
    .unwrap()
}

#[test]
fn realistic_documents_match_the_reference() {
    let conformance = conformance_text();
    let doc: Value = serde_json::from_str(&conformance).unwrap();
    let flags = doc["flags"].clone();
    let rich = Value::Array(rich_flags());
    for text in [
        conformance.clone(),
        flags.to_string(),
        serde_json::to_string_pretty(&flags).unwrap(),
        rich.to_string(),
        serde_json::to_string_pretty(&json!({"version": 3, "flags": rich, "x": [1, {"y": null}]}))
            .unwrap(),
        "  [ ]  ".to_owned(),
        "{\"flags\": []}".to_owned(),
    ] {
        assert!(check(&text).unwrap(), "{text}");
    }
    // Definitions are built from the text on demand and equal the typed ones.
    let r = FlagSet::from_json(&rich.to_string()).unwrap();
    let want: Vec<FlagDefinition> = serde_json::from_value(rich).unwrap();
    assert_eq!(
        r.set.get("esc\\aped-\u{e9}\u{1F600}"),
        want.first(),
        "{:?}",
        r.errors
    );
}

/// The fuzz target's seeds, and any input it found that once failed
/// (`fuzz/seeds/flag_json`, see `scripts/fuzz.sh`), go through what the
/// fuzz target does on every test run.
#[test]
fn fuzz_seeds_match_the_reference() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds/flag_json");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        let checked = reference::check(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if let Some(report) = checked.report {
            reference::evaluate_all(report, &text);
        }
        n += 1;
    }
    assert!(n >= 10, "the seeds are missing from {dir}");
}

#[test]
fn unusual_but_valid_documents_match_the_reference() {
    // Inputs the scanner leaves to the slow path, and edge cases it takes.
    for text in [
        r#"[{"key": "s\ud83d\ude00", "flag_type": "boolean"}]"#,
        r#"[{"key": "k", "flag_type": {"boolean": null}}]"#,
        r#"[{"key": "k", "rollout_percentage": -0}]"#,
        r#"[{"key": "k", "rollout_percentage": 1.0}]"#,
        r#"[{"key": "k", "rollout_percentage": 9223372036854775808}]"#,
        r#"[{"key": "k", "rollout_percentage": -9223372036854775808}]"#,
        r#"[{"key": "k", "key": "k2"}]"#,
        r#"[{"k\u0065y": "escaped-field-name", "description": "\u00e9\n"}]"#,
        r#"[{"key": "k", "variants": [["a", "A", null, 50, false]]}]"#,
        r#"[{"key": "k", "variants": [{"id": "a", "weight": null}]}]"#,
        r#"[{"key": "k", "targeting_rules": [{"rule_type": "user_id", "values": ["a"]}]}]"#,
        r#"[{"key": "k", "targeting_rules": [{"rule_type": "user_id", "operator": "in", "values": [null]}]}]"#,
        r#"[{"key": "k", "targeting_rules": [{"rule_type": "user_id", "operator": "in", "values": [[1]]}]}]"#,
        r#"[{"key": "k", "tags": "one"}]"#,
        r#"[{"key": "k", "environment_overrides": {"a": 1, "a": 2}}]"#,
        r#"[{"key": "k", "default_value": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}]"#,
        r#"[{"key": "k", "description": "tab	raw"}]"#,
        r#"[{"key": "k"} , {"key": "k"}]"#,
        r#"[{"key": "k"},]"#,
        r#"[{"key": "k"}] x"#,
        r#"{"flags": [{"key": "k"}], "flags": []}"#,
        r#"{"other": 1}"#,
        r#"[1, "two", null, {"key": ""}, {"key": "ok"}]"#,
        "[{\"key\": \"k\", \"weight\": 1e400}]",
        "[{\"key\": \"k\", \"variants\": [{\"id\": \"a\", \"weight\": 1e400}]}]",
        "[{\"key\": \"k\", \"default_value\": 01}]",
        "[{\"key\": \"k\", \"default_value\": 1.}]",
        "[{\"key\": \"k\", \"default_value\": +1}]",
        "[{\"key\": \"k\", \"default_value\": tru}]",
        "[{\"key\": \"k\", \"default_value\": nulls}]",
    ] {
        check(text).unwrap();
    }
}

/// Mutations that tend to break JSON or a flag's types in interesting ways.
const INSERTS: &[&str] = &[
    ",",
    "]",
    "}",
    "{",
    "[",
    "\"",
    "\\",
    ":",
    " ",
    "null",
    "1",
    "-0",
    "1e5",
    "0.5",
    "true",
    "-",
    "\\u0041",
    "\\ud800",
    "\\u00",
    "\u{1}",
    "\u{e9}",
    "\"key\": \"x\",",
    "[]",
    "{}",
    "\"\"",
];

fn mutate(text: &str, edits: &[(usize, u8, usize)]) -> String {
    let mut s = text.to_owned();
    for &(pos, kind, arg) in edits {
        let chars: Vec<usize> = s.char_indices().map(|(i, _)| i).chain([s.len()]).collect();
        let at = chars[pos % chars.len()];
        match kind % 3 {
            0 => s.insert_str(at, INSERTS[arg % INSERTS.len()]),
            1 => {
                let end_idx = (chars.iter().position(|&c| c == at).unwrap() + 1 + arg % 3)
                    .min(chars.len() - 1);
                s.replace_range(at..chars[end_idx], "");
            }
            _ => {
                let end_idx =
                    (chars.iter().position(|&c| c == at).unwrap() + 1).min(chars.len() - 1);
                s.replace_range(at..chars[end_idx], INSERTS[arg % INSERTS.len()]);
            }
        }
    }
    s
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|n| json!(n)),
        "[a-z_\"\\\\é\u{1}/]{0,8}".prop_map(Value::String),
        word(vec![
            "boolean",
            "percentage",
            "multivariate",
            "targeting",
            "operational",
            "active",
            "draft",
            "archived",
            "user_id",
            "tenant_id",
            "custom_attribute",
            "equals",
            "in",
            "regex_match",
            "not_in",
            "gte",
            "semver_lt",
            "before",
            "(",
            "a+",
            "1.2.3",
            "2026-01-01T00:00:00Z",
            "k",
        ]),
    ];
    json_tree(
        leaf,
        vec![
            "key",
            "id",
            "name",
            "description",
            "flag_type",
            "status",
            "default_value",
            "variants",
            "targeting_rules",
            "rollout_percentage",
            "rule_type",
            "operator",
            "values",
            "attribute",
            "percentage",
            "weight",
            "value",
            "is_control",
            "prerequisites",
            "expires_at",
            "environment_overrides",
            "tenant_restrictions",
            "subscription_tier_requirements",
            "kill_switch",
            "sticky_bucketing",
            "tags",
            "owner",
            "track_events",
            "track_exposure",
            "created_at",
            "other",
        ],
    )
}

proptest! {
    #![proptest_config(config(1_500, 0x5eed_0101))]

    /// Documents one to four edits away from realistic ones load exactly as
    /// the reference does (or are refused as it refuses them).
    #[test]
    fn mutated_documents_match_the_reference(
        which in 0usize..3,
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<usize>()), 1..5),
    ) {
        let base = match which {
            0 => Value::Array(rich_flags()).to_string(),
            1 => serde_json::to_string_pretty(&Value::Array(rich_flags()[1..].to_vec())).unwrap(),
            _ => json!({"flags": rich_flags()[1..3].to_vec(), "n": [1, 2]}).to_string(),
        };
        check(&mutate(&base, &edits))?;
    }

    /// Generated flag-shaped documents load exactly as the reference does.
    #[test]
    fn generated_documents_match_the_reference(flags in prop::collection::vec(arb_json(), 0..6)) {
        check(&Value::Array(flags).to_string())?;
    }
}
