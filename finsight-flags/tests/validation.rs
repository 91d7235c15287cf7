//! Load-time validation (SPEC §1.1 "bad input"): every error names the flag
//! key and the field; a bad flag never takes down the good ones.

use finsight_flags::{Error, FlagDefinition, FlagSet, FlagType};
use serde_json::json;

fn load(flags: serde_json::Value) -> finsight_flags::LoadReport {
    FlagSet::from_json(&flags.to_string()).unwrap()
}

fn good(key: &str) -> serde_json::Value {
    json!({"key": key, "flag_type": "boolean", "status": "active", "rollout_percentage": 100})
}

fn only_error(report: &finsight_flags::LoadReport, key: &str) -> (String, String) {
    let errs: Vec<_> = report.errors.iter().filter(|e| e.key == key).collect();
    assert_eq!(errs.len(), 1, "{:?}", report.errors);
    (errs[0].field.clone(), errs[0].message.clone())
}

#[test]
fn unknown_operator_names_key_and_field() {
    let mut bad = good("bad");
    bad["targeting_rules"] = json!([{"rule_type": "user_id", "operator": "equals", "values": ["a"]},
                                    {"rule_type": "user_id", "operator": "fuzzy", "values": ["a"]}]);
    let r = load(json!([good("ok"), bad]));
    let (field, msg) = only_error(&r, "bad");
    assert_eq!(field, "targeting_rules[1].operator");
    assert!(msg.contains("fuzzy"), "{msg}");
    assert!(r.set.contains("ok") && !r.set.contains("bad"));
    let text = r.errors[0].to_string();
    assert!(
        text.contains("`bad`") && text.contains("targeting_rules[1].operator"),
        "{text}"
    );
}

#[test]
fn unknown_rule_type_names_key_and_field() {
    let mut bad = good("bad");
    bad["targeting_rules"] =
        json!([{"rule_type": "shoe_size", "operator": "equals", "values": ["a"]}]);
    let r = load(json!([bad, good("ok")]));
    let (field, msg) = only_error(&r, "bad");
    assert_eq!(field, "targeting_rules[0].rule_type");
    assert!(msg.contains("shoe_size"), "{msg}");
    assert_eq!(r.set.len(), 1);
}

#[test]
fn invalid_regex_and_unsupported_lookaround() {
    let mut bad = good("bad-re");
    bad["targeting_rules"] =
        json!([{"rule_type": "user_id", "operator": "regex_match", "values": ["ok", "(unclosed"]}]);
    let mut look = good("look");
    look["targeting_rules"] =
        json!([{"rule_type": "user_id", "operator": "regex_match", "values": ["(?!admin).*"]}]);
    let mut backref = good("backref");
    backref["targeting_rules"] =
        json!([{"rule_type": "user_id", "operator": "regex_match", "values": ["(a)\\1"]}]);
    let mut huge = good("huge");
    huge["targeting_rules"] = json!([{"rule_type": "user_id", "operator": "regex_match", "values": ["\\w{1000}\\w{1000}\\w{1000}"]}]);
    let r = load(json!([bad, look, backref, huge, good("ok")]));
    let (field, msg) = only_error(&r, "bad-re");
    assert_eq!(field, "targeting_rules[0].values[1]");
    assert!(msg.contains("not a valid regular expression"), "{msg}");
    let (_, msg) = only_error(&r, "look");
    assert!(msg.contains("cannot express"), "{msg}");
    let (_, msg) = only_error(&r, "backref");
    assert!(msg.contains("cannot express"), "{msg}");
    let (_, msg) = only_error(&r, "huge");
    assert!(msg.contains("bytes"), "{msg}");
    assert_eq!(r.set.len(), 1);
}

#[test]
fn weights_and_percentages_out_of_range() {
    let mut w = good("w");
    w["flag_type"] = json!("multivariate");
    w["variants"] = json!([{"id": "a", "weight": 50}, {"id": "b", "weight": 101}]);
    let mut neg = good("neg");
    neg["rollout_percentage"] = json!(-1);
    let mut rule = good("rule");
    rule["targeting_rules"] =
        json!([{"rule_type": "user_id", "operator": "in", "values": ["a"], "percentage": 300}]);
    let r = load(json!([w, neg, rule]));
    assert_eq!(only_error(&r, "w").0, "variants[1].weight");
    assert_eq!(only_error(&r, "neg").0, "rollout_percentage");
    assert_eq!(only_error(&r, "rule").0, "targeting_rules[0].percentage");
    assert!(r.set.is_empty());
}

#[test]
fn prerequisite_cycle_and_missing_prerequisite() {
    let mut a = good("a");
    a["prerequisites"] = json!(["b"]);
    let mut b = good("b");
    b["prerequisites"] = json!(["a"]);
    let mut c = good("c");
    c["prerequisites"] = json!(["a"]); // depends on a cyclic flag
    let mut d = good("d");
    d["prerequisites"] = json!(["nope"]);
    let mut e = good("e");
    e["prerequisites"] = json!(["ok"]);
    let r = load(json!([a, b, c, d, e, good("ok")]));
    let (field, msg) = only_error(&r, "a");
    assert_eq!(field, "prerequisites");
    assert!(msg.contains("cycle"), "{msg}");
    assert!(only_error(&r, "b").1.contains("cycle"));
    assert!(only_error(&r, "c").1.contains("`a`"));
    let (field, msg) = only_error(&r, "d");
    assert_eq!(field, "prerequisites[0]");
    assert!(msg.contains("nope"), "{msg}");
    let mut keys: Vec<_> = r.set.definitions().map(|d| d.key.clone()).collect();
    keys.sort();
    assert_eq!(keys, ["e", "ok"]);
}

#[test]
fn type_errors_name_the_field_and_bad_values() {
    let mut t = good("typed");
    t["rollout_percentage"] = json!("fifty");
    let mut num = good("num");
    num["targeting_rules"] = json!([{"rule_type": "custom_attribute", "attribute": "age", "operator": "gte", "values": ["eighteen"]}]);
    let mut attr = good("attr");
    attr["targeting_rules"] =
        json!([{"rule_type": "custom_attribute", "operator": "equals", "values": ["x"]}]);
    let mut exp = good("exp");
    exp["expires_at"] = json!("next tuesday");
    let r = load(json!([t, num, attr, exp, {"no_key": true}, good("typed")]));
    assert_eq!(only_error(&r, "typed").0, "rollout_percentage");
    assert_eq!(only_error(&r, "num").0, "targeting_rules[0].values[0]");
    assert_eq!(only_error(&r, "attr").0, "targeting_rules[0].attribute");
    assert_eq!(only_error(&r, "exp").0, "expires_at");
    assert!(
        r.errors.iter().any(|e| e.key == "#4" && e.field == "key"),
        "{:?}",
        r.errors
    );
    // The second "typed" (valid) was loaded: a rejected first copy does not block it.
    assert!(r.set.contains("typed"));
}

#[test]
fn unknown_fields_are_ignored_and_nulls_take_defaults() {
    let r = load(
        json!([{"key": "x", "flag_type": "boolean", "status": "active", "whatever": [1, 2],
        "description": null, "variants": null, "targeting_rules": null, "tags": null, "owner": null,
        "environment_overrides": null, "kill_switch": null}]),
    );
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let def = r.set.get("x").unwrap();
    assert_eq!(def.rollout_percentage, 0);
    assert!(def.targeting_rules.is_empty() && !def.kill_switch);
}

#[test]
fn broken_document_is_an_error_and_loads_nothing() {
    for text in [
        "",
        "not json",
        "[{\"key\": \"a\",",
        "{\"no_flags\": 1}",
        "42",
    ] {
        match FlagSet::from_json(text) {
            Err(Error::Document { message }) => assert!(!message.is_empty()),
            other => panic!("{text:?}: {other:?}"),
        }
    }
}

#[test]
fn definitions_roundtrip_through_json() {
    let mut def = FlagDefinition::new("rt", FlagType::Percentage);
    def.rollout_percentage = 25;
    let text = serde_json::to_string(&vec![def.clone()]).unwrap();
    let r = FlagSet::from_json(&text).unwrap();
    assert_eq!(r.set.get("rt"), Some(&def));
}

fn regex_flag(key: &str, pattern: &str) -> serde_json::Value {
    let mut f = good(key);
    f["targeting_rules"] =
        json!([{"rule_type": "user_id", "operator": "regex_match", "values": [pattern]}]);
    f
}

#[test]
fn python_only_regex_syntax_says_rust_cannot_express_it() {
    // Each is accepted by Python's `re`; Rust's regex refuses it, or (the
    // possessive quantifiers) would compile it as a nested repetition that
    // matches differently (`a++a` never matches in Python, would in Rust).
    let python_only = [
        ("end-z", r"abc\Z", "\\Z"),
        ("comment", r"ab(?#a comment)c", "comment"),
        ("conditional", r"(<)?\w+(?(1)>|$)", "conditional"),
        ("possessive-plus", r"a++a", "possessive"),
        ("possessive-star", r"\d*+x", "possessive"),
        ("possessive-opt", r"a?+", "possessive"),
        ("possessive-counted", r"a{2,3}+", "possessive"),
        ("lookahead", r"(?=admin)\w+", "look-around"),
        ("neg-lookahead", r"(?!admin)\w+", "look-around"),
        ("lookbehind", r"\w+(?<=x)", "look-around"),
        ("neg-lookbehind", r"\w+(?<!x)", "look-around"),
        ("backref", r"(a)\1", "backreference"),
        ("named-backref", r"(?P<x>a)(?P=x)", "backreference"),
        ("atomic", r"(?>ab|a)c", "atomic"),
        ("ascii-flag", r"(?a)\w+", "ASCII"),
        ("octal", r"a\012", "octal"),
        ("no-lower-bound", r"a{,3}b", "{0,n}"),
        ("literal-brace", r"id{x}", "\\{"),
        ("backspace-class", r"[\b]", "backspace"),
        ("nested-class", r"[a[b]", "nested"),
        ("set-op", r"[a-z&&aeiou]", "set operations"),
    ];
    let mut flags: Vec<_> = python_only
        .iter()
        .map(|(k, p, _)| regex_flag(k, p))
        .collect();
    flags.push(good("ok"));
    let r = load(json!(flags));
    for (key, pattern, what) in python_only {
        let (field, msg) = only_error(&r, key);
        assert_eq!(field, "targeting_rules[0].values[0]");
        assert!(
            msg.contains("Rust's regex engine cannot express"),
            "{pattern}: {msg}"
        );
        assert!(!msg.contains("not a valid regular expression"), "{msg}");
        assert!(msg.contains(what), "{pattern}: {msg}");
    }
    assert_eq!(r.set.len(), 1);
}

#[test]
fn regex_syntax_common_to_both_engines_still_loads() {
    let patterns = [
        r"^\d{3}-\d{4}",
        r"a{2}",
        r"a{2,}",
        r"a+?b*?c??",
        r"(?i)admin",
        r"(?P<name>\w+)@example\.com",
        r"[]a]",
        r"[^]a]+",
        r"(?:a|b)+",
        r"[\w.-]+",
        r"\p{Greek}+",
        r"\x{41}",
        "(?x) user- \\d+ # the numeric users",
    ];
    let flags: Vec<_> = patterns
        .iter()
        .enumerate()
        .map(|(i, p)| regex_flag(&format!("re{i}"), p))
        .collect();
    let r = load(json!(flags));
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.set.len(), patterns.len());
}

#[test]
fn verbose_pattern_ending_in_a_comment_matches_like_python() {
    // re.match(r"(?x) user- \d+ # numeric users", "user-42") matches.
    let engine = finsight_flags::FlagEngine::new(
        load(json!([regex_flag("v", "(?x) user- \\d+ # numeric users")]))
            .strict()
            .unwrap(),
    );
    let ctx = |id: &str| finsight_flags::EvaluationContext::new().user_id(id);
    assert!(engine.is_enabled("v", &ctx("user-42")));
    assert!(!engine.is_enabled("v", &ctx("user-x")));
}

#[test]
fn dollar_matches_only_at_the_very_end_unlike_python() {
    // Documented difference: Python's `$` (without MULTILINE) also matches
    // just before a final "\n", so re.match(r"abc$", "abc\n") matches; here
    // `$` is Rust's end-of-text anchor and it does not. Both agree elsewhere.
    let engine =
        finsight_flags::FlagEngine::new(load(json!([regex_flag("end", "abc$")])).strict().unwrap());
    let ctx = |id: &str| finsight_flags::EvaluationContext::new().user_id(id);
    assert!(engine.is_enabled("end", &ctx("abc")));
    assert!(!engine.is_enabled("end", &ctx("abcd")));
    assert!(!engine.is_enabled("end", &ctx("abc\n")));
}

#[test]
fn a_good_flag_may_require_a_flag_kept_from_the_last_good_set() {
    let previous = load(json!([good("a")])).strict().unwrap();
    // `a` turns bad (kept from `previous`); the new `b` requires it.
    let mut bad_a = good("a");
    bad_a["rollout_percentage"] = json!(500);
    let mut b = good("b");
    b["prerequisites"] = json!(["a"]);
    for doc in [
        json!([bad_a.clone(), b.clone()]),
        json!([b.clone(), bad_a.clone()]),
    ] {
        let r = FlagSet::from_json_keeping(&doc.to_string(), &previous).unwrap();
        assert_eq!(
            r.errors
                .iter()
                .map(|e| (e.key.as_str(), e.field.as_str()))
                .collect::<Vec<_>>(),
            [("a", "rollout_percentage")],
            "only `a` is reported: {:?}",
            r.errors
        );
        assert_eq!(r.set.get("a").unwrap().rollout_percentage, 100, "kept");
        assert!(r.set.contains("b"), "the good new flag requiring `a` loads");
        let engine = finsight_flags::FlagEngine::new(r.set);
        let ctx = finsight_flags::EvaluationContext::new().user_id("u");
        assert!(engine.is_enabled("b", &ctx));
    }
    // The same through a flag that does not deserialize (the slow path).
    let mut unreadable_a = good("a");
    unreadable_a["rollout_percentage"] = json!("all");
    let r = FlagSet::from_json_keeping(&json!([b.clone(), unreadable_a]).to_string(), &previous)
        .unwrap();
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    assert!(r.set.contains("a") && r.set.contains("b"));
}

#[test]
fn a_flag_rejected_for_its_prerequisites_keeps_its_last_good_definition() {
    let mut old_b = good("b");
    old_b["rollout_percentage"] = json!(40);
    let previous = load(json!([good("a"), old_b])).strict().unwrap();
    // The new `b` requires `x`, which is new and bad: `b` keeps its old
    // definition, both problems are reported, `a` is updated.
    let mut x = good("x");
    x["rollout_percentage"] = json!(-3);
    let mut new_b = good("b");
    new_b["prerequisites"] = json!(["x"]);
    let mut new_a = good("a");
    new_a["rollout_percentage"] = json!(7);
    let r = FlagSet::from_json_keeping(&json!([new_a, new_b, x]).to_string(), &previous).unwrap();
    let mut reported: Vec<(&str, &str)> = r
        .errors
        .iter()
        .map(|e| (e.key.as_str(), e.field.as_str()))
        .collect();
    reported.sort();
    assert_eq!(
        reported,
        [("b", "prerequisites[0]"), ("x", "rollout_percentage")]
    );
    assert_eq!(r.set.get("b").unwrap().rollout_percentage, 40);
    assert_eq!(r.set.get("a").unwrap().rollout_percentage, 7);
    assert!(!r.set.contains("x"));
}

#[test]
fn a_flag_whose_prerequisite_was_removed_is_dropped_and_reported_once() {
    let mut b = good("b");
    b["prerequisites"] = json!(["a"]);
    let previous = load(json!([good("a"), b.clone()])).strict().unwrap();
    // `a` is deleted on purpose; `b` (old and new alike) cannot load without it.
    let r = FlagSet::from_json_keeping(&json!([b]).to_string(), &previous).unwrap();
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    assert_eq!(
        (r.errors[0].key.as_str(), r.errors[0].field.as_str()),
        ("b", "prerequisites[0]")
    );
    assert!(r.set.is_empty());
}
