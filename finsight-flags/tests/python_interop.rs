//! Same buckets and variants as the Python services: the reference
//! implementation in `tests/python/buckets.py` (standard library only) and
//! this crate agree on generated keys, including non-ASCII ids, colons and
//! spaces, and on weights whose boundaries fall on float rounding.

use finsight_flags::{EvaluationContext, FlagEngine, FlagSet, Unit, bucket};
use serde_json::{Value, json};
use std::io::Write;
use std::process::{Command, Stdio};

fn python(input: &Value) -> Vec<Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/buckets.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is needed for the interop test");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn buckets_and_variants_match_the_python_reference() {
    let ids = [
        "user-1",
        "Zoë",
        "用户-42",
        "a b:c",
        "",
        "42",
        "🦀",
        "user:tenant:x",
    ];
    let weight_sets: [&[u32]; 5] = [
        &[25, 50, 20, 5],
        &[33, 33, 34],
        &[7, 93],
        &[1, 1, 1],
        &[0, 100],
    ];
    let mut cases = Vec::new();
    for f in 0..12 {
        let flag_key = format!("flag-{f}.exp:é");
        for i in 0..60 {
            let id = format!("{}{}", ids[i % ids.len()], i);
            let weights = weight_sets[(f + i) % weight_sets.len()];
            let (user, tenant) = if i % 5 == 0 {
                (None, Some(id))
            } else {
                (Some(id), None)
            };
            cases.push(json!({"flag_key": flag_key, "user_id": user, "tenant_id": tenant, "weights": weights}));
        }
    }
    let expected = python(&json!({ "cases": cases }));
    assert_eq!(expected.len(), cases.len());
    for (case, exp) in cases.iter().zip(&expected) {
        let key = case["flag_key"].as_str().unwrap();
        let user = case["user_id"].as_str();
        let tenant = case["tenant_id"].as_str();
        let unit = user.map(Unit::User).or(tenant.map(Unit::Tenant)).unwrap();
        assert_eq!(
            Some(u64::from(bucket(key, unit))),
            exp["bucket"].as_u64(),
            "{case}"
        );

        let variants: Vec<Value> = case["weights"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, w)| json!({"id": format!("v{i}"), "value": i, "weight": w}))
            .collect();
        let flags = json!([{"key": key, "flag_type": "multivariate", "status": "active", "variants": variants}]);
        let engine = FlagEngine::new(
            FlagSet::from_json(&flags.to_string())
                .unwrap()
                .strict()
                .unwrap(),
        );
        let mut ctx = EvaluationContext::new();
        ctx.user_id = user.map(str::to_owned);
        ctx.tenant_id = tenant.map(str::to_owned);
        let got = engine
            .variant(key, &ctx)
            .map(|v| v[1..].parse::<u64>().unwrap());
        assert_eq!(got, exp["variant"].as_u64(), "{case}");
    }
}
