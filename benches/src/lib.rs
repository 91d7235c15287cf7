//! Shared support for the FinSight benchmarks.
//!
//! Criterion results are read from `target/criterion` by
//! `scripts/bench-report.py`. Figures that criterion does not measure
//! (messages per second, bytes per key, allocations) are written with
//! [`record`] as JSON lines to `target/finsight-bench/<crate>.jsonl`, and the
//! report script puts them into `BENCHMARKS.md` beside the criterion numbers.
//!
//! ## Naming convention for criterion groups
//!
//! A comparison is one criterion group named `<crate>/<scenario>` whose
//! functions are `finsight` (ours) and `peer:<name>` (the peer, e.g.
//! `peer:governor`). The report prints both times and the ratio
//! `finsight / peer` (below 1.0 means FinSight is faster).

use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;

/// One measured figure that is not a criterion time.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Crate the figure belongs to, e.g. `"bus"`.
    pub krate: String,
    /// What was measured, e.g. `"rabbitmq publish+consume, 100k x 256 B"`.
    pub name: String,
    /// Our value.
    pub value: f64,
    /// Unit of `value` and `peer_value`, e.g. `"msg/s"`.
    pub unit: String,
    /// Whether a larger value is better (throughput) or worse (latency, bytes).
    pub higher_is_better: bool,
    /// The peer measured in the same run, if any, e.g. `"raw lapin"`.
    pub peer: Option<String>,
    /// The peer's value in the same unit.
    pub peer_value: Option<f64>,
    /// The target the issue names, as text, e.g. `">= 0.9x raw lapin"`.
    pub target: Option<String>,
}

impl Record {
    /// A figure without a peer.
    pub fn new(krate: &str, name: &str, value: f64, unit: &str, higher_is_better: bool) -> Self {
        Self {
            krate: krate.to_owned(),
            name: name.to_owned(),
            value,
            unit: unit.to_owned(),
            higher_is_better,
            peer: None,
            peer_value: None,
            target: None,
        }
    }

    /// Adds the peer measured in the same run.
    pub fn peer(mut self, peer: &str, value: f64) -> Self {
        self.peer = Some(peer.to_owned());
        self.peer_value = Some(value);
        self
    }

    /// Adds the target the issue names.
    pub fn target(mut self, target: &str) -> Self {
        self.target = Some(target.to_owned());
        self
    }
}

/// Directory the records go to: `$CARGO_TARGET_DIR/finsight-bench`, or
/// `target/finsight-bench` at the workspace root.
pub fn out_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("finsight-bench")
}

/// Appends `record` to `<out_dir>/<krate>.jsonl`.
///
/// # Errors
/// When the directory cannot be created or the file cannot be written.
pub fn record(record: &Record) -> std::io::Result<()> {
    let dir = out_dir();
    std::fs::create_dir_all(&dir)?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{}.jsonl", record.krate)))?;
    let line = serde_json::to_string(record).map_err(std::io::Error::other)?;
    writeln!(file, "{line}")
}

/// Removes `<out_dir>/<krate>.jsonl`, so a bench run starts a fresh file.
pub fn reset(krate: &str) {
    let _ = std::fs::remove_file(out_dir().join(format!("{krate}.jsonl")));
}

/// The median of `v` (the mean of the middle two for an even count), for
/// the interleaved A/B rounds of the bench programs.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    }
}
