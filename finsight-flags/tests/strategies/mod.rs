//! Proptest pieces shared by `properties.rs` and `load_equivalence.rs`:
//! a fixed-seed configuration and flag-shaped JSON trees. Kept apart from
//! `reference/`, which the fuzz crate also includes and which must not
//! depend on proptest.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use serde_json::Value;

/// `cases` cases from the fixed `seed`, no failure persistence.
pub fn config(cases: u32, seed: u64) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    }
}

/// One of `words` as a JSON string.
pub fn word(words: Vec<&'static str>) -> impl Strategy<Value = Value> + Clone {
    prop::sample::select(words).prop_map(|s| Value::String(s.to_owned()))
}

/// JSON trees over `leaf`, at most three levels deep: arrays of up to four
/// items and objects of up to seven keys drawn from `keys`.
pub fn json_tree(
    leaf: impl Strategy<Value = Value> + 'static,
    keys: Vec<&'static str>,
) -> impl Strategy<Value = Value> {
    leaf.prop_recursive(3, 32, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(prop::sample::select(keys.clone()), inner, 0..8).prop_map(
                |m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            ),
        ]
    })
}
