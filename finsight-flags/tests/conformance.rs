//! The shared conformance vectors (a copy in `tests/data/flags.json`) must
//! pass 100%, through the same runner as the `conformance` example.

#[path = "../examples/conformance.rs"]
#[allow(dead_code)]
mod runner;

#[test]
fn conformance_vectors_pass() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/flags.json"
    ))
    .unwrap();
    let out = runner::run(&text).unwrap();
    for m in &out.mismatches {
        eprintln!("MISMATCH {m}");
    }
    assert_eq!(
        out.failed, 0,
        "{} passed, {} failed",
        out.passed, out.failed
    );
    assert!(
        out.passed >= 800,
        "the vector file should hold 401 evaluations and 400 buckets"
    );
}

#[test]
fn runner_reports_a_wrong_expectation() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/flags.json"
    ))
    .unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    doc["buckets"][0]["bucket"] = serde_json::json!(1000);
    doc["evaluations"][0]["expected"]["reason"] = serde_json::json!("no_such_reason");
    let out = runner::run(&doc.to_string()).unwrap();
    assert_eq!(out.failed, 2);
}
