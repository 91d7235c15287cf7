//! The JSON file source: reload on change, validation before swap, and a bad
//! file keeping the last good set while reporting why.

use finsight_flags::{EvaluationContext, FileSource, FlagEngine, Reason};
use std::time::Duration;
use tokio::sync::watch;

fn flag(key: &str, rollout: u32) -> String {
    format!(
        r#"{{"key": "{key}", "flag_type": "percentage", "status": "active", "rollout_percentage": {rollout}}}"#
    )
}

async fn next_attempt(rx: &mut watch::Receiver<finsight_flags::ReloadStatus>, attempts: u64) {
    // Bounded: at most 10 s for the watcher to see the change.
    tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|s| s.attempts >= attempts),
    )
    .await
    .expect("the watcher did not reload within 10 s")
    .unwrap();
}

#[tokio::test]
async fn reloads_on_change_and_keeps_last_good_set_on_bad_content() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.json");
    std::fs::write(&path, format!("[{}, {}]", flag("a", 100), flag("b", 0))).unwrap();
    let engine = FlagEngine::new(Default::default());
    let watcher = FileSource::new(&path)
        .poll_interval(Duration::from_millis(20))
        .watch(engine.clone())
        .await
        .unwrap();
    let ctx = EvaluationContext::new().user_id("u1");
    assert!(engine.is_enabled("a", &ctx));
    assert!(!engine.is_enabled("b", &ctx));
    let mut rx = watcher.subscribe();

    // 1. A valid change is applied.
    std::fs::write(&path, format!("[{}, {}]", flag("a", 100), flag("b", 100))).unwrap();
    next_attempt(&mut rx, 1).await;
    assert!(engine.is_enabled("b", &ctx));
    assert_eq!(watcher.status().applied, 1);

    // 2. A file that is not a flag document: the last good set stays, and the status says why.
    std::fs::write(&path, "[{\"key\": \"a\", \"flag_type\": ").unwrap();
    next_attempt(&mut rx, 2).await;
    let status = watcher.status();
    assert_eq!(status.applied, 1);
    let why = status.last_error.expect("a refused reload reports why");
    assert!(why.contains("not valid"), "{why}");
    assert!(engine.is_enabled("a", &ctx) && engine.is_enabled("b", &ctx));

    // 3. A file with one bad flag: the good flags change, the bad one keeps its last good definition.
    std::fs::write(
        &path,
        format!(
            r#"[{}, {{"key": "b", "flag_type": "percentage", "status": "active", "rollout_percentage": 500}}, {}]"#,
            flag("a", 0),
            flag("c", 100)
        ),
    )
    .unwrap();
    next_attempt(&mut rx, 3).await;
    let status = watcher.status();
    assert_eq!(status.applied, 2);
    assert_eq!(status.last_error, None);
    assert_eq!(status.rejected.len(), 1);
    assert_eq!(
        (
            status.rejected[0].key.as_str(),
            status.rejected[0].field.as_str()
        ),
        ("b", "rollout_percentage")
    );
    assert!(
        !engine.is_enabled("a", &ctx),
        "the good change to `a` is applied"
    );
    assert!(
        engine.is_enabled("b", &ctx),
        "`b` keeps its last good definition"
    );
    assert!(engine.is_enabled("c", &ctx), "the new flag `c` is loaded");

    // 4. The file disappears: the set stays.
    std::fs::remove_file(&path).unwrap();
    next_attempt(&mut rx, 4).await;
    assert!(watcher.status().last_error.unwrap().contains("cannot read"));
    assert_eq!(
        engine.bool_detail("c", &ctx, false).reason,
        Reason::PercentageEvaluation
    );
}

#[tokio::test]
async fn initial_load_of_a_bad_file_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.json");
    std::fs::write(&path, "nope").unwrap();
    let engine = FlagEngine::new(Default::default());
    assert!(FileSource::new(&path).watch(engine.clone()).await.is_err());
    assert!(
        FileSource::new(dir.path().join("missing.json"))
            .load()
            .is_err()
    );
}
