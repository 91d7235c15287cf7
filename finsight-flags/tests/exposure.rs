//! Exposure events: only for `track_exposure` flags, through a bounded,
//! non-blocking buffer that drops and counts when full.

use finsight_flags::{
    BoxError, EvaluationContext, ExposureBuffer, ExposureEvent, ExposureSink, FlagEngine, FlagSet,
    Reason,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

#[derive(Clone, Default)]
struct Collect {
    events: Arc<Mutex<Vec<ExposureEvent>>>,
    gate: Option<Arc<Semaphore>>,
}

impl ExposureSink for Collect {
    async fn export(&self, batch: Vec<ExposureEvent>) -> Result<(), BoxError> {
        if let Some(g) = &self.gate {
            g.acquire().await?.forget();
        }
        self.events.lock().unwrap().extend(batch);
        Ok(())
    }
}

/// Drops the engine and the last buffer handle, then waits (bounded) until
/// the exporter task has delivered everything and ended.
async fn close(engine: FlagEngine, buffer: ExposureBuffer, task: JoinHandle<()>) {
    drop(engine);
    drop(buffer);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}

const FLAGS: &str = r#"[
  {"key": "tracked", "flag_type": "multivariate", "status": "active", "track_exposure": true,
   "variants": [{"id": "a", "value": "A", "weight": 100}]},
  {"key": "untracked", "flag_type": "boolean", "status": "active", "rollout_percentage": 100}
]"#;

#[tokio::test]
async fn tracked_flags_are_exported() {
    let sink = Collect::default();
    let (buffer, task) = ExposureBuffer::spawn(sink.clone(), 64, 16).unwrap();
    let engine = FlagEngine::builder()
        .flags(FlagSet::from_json(FLAGS).unwrap().set)
        .exposure(buffer.clone())
        .build();
    let ctx = EvaluationContext::new()
        .user_id("u1")
        .tenant_id("acme")
        .subscription_tier("pro");
    assert_eq!(engine.string_value("tracked", &ctx, "x"), "A");
    assert!(engine.is_enabled("untracked", &ctx));
    assert!(!engine.is_enabled("tracked", &ctx)); // a type mismatch is exposed too
    close(engine, buffer, task).await;
    let events = sink.events.lock().unwrap();
    assert_eq!(events.len(), 2);
    let e = &events[0];
    assert_eq!(e.flag_key, "tracked");
    assert_eq!(e.variant.as_deref(), Some("a"));
    assert_eq!(e.reason, Reason::VariantSelected);
    assert_eq!(
        (e.user_id.as_deref(), e.tenant_id.as_deref()),
        (Some("u1"), Some("acme"))
    );
    assert_eq!(
        (e.subscription_tier.as_deref(), e.environment.as_str()),
        (Some("pro"), "production")
    );
    assert_eq!(events[1].reason, Reason::TypeMismatch);
}

#[tokio::test]
async fn a_full_buffer_drops_and_counts_without_blocking() {
    let gate = Arc::new(Semaphore::new(0));
    let sink = Collect {
        gate: Some(gate.clone()),
        ..Collect::default()
    };
    let (buffer, task) = ExposureBuffer::spawn(sink.clone(), 8, 4).unwrap();
    let engine = FlagEngine::builder()
        .flags(FlagSet::from_json(FLAGS).unwrap().set)
        .exposure(buffer.clone())
        .build();
    let ctx = EvaluationContext::new().user_id("u1");
    for _ in 0..100 {
        engine.string_value("tracked", &ctx, "x");
    }
    let stats = buffer.stats();
    assert_eq!(stats.enqueued + stats.dropped, 100);
    // At most the buffer plus one batch in the blocked sink were accepted.
    assert!(stats.enqueued <= 8 + 4, "{stats:?}");
    assert!(stats.dropped >= 88, "{stats:?}");
    gate.add_permits(1000);
    close(engine, buffer, task).await;
    assert_eq!(sink.events.lock().unwrap().len() as u64, stats.enqueued);
}

#[test]
fn spawn_needs_a_runtime_and_a_capacity() {
    assert!(ExposureBuffer::spawn(Collect::default(), 8, 4).is_err());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        assert!(ExposureBuffer::spawn(Collect::default(), 0, 4).is_err());
    });
}

#[tokio::test]
async fn an_exposure_reports_what_the_caller_was_served() {
    let sink = Collect::default();
    let (buffer, task) = ExposureBuffer::spawn(sink.clone(), 64, 16).unwrap();
    let flags = r#"[
      {"key": "tracked", "flag_type": "multivariate", "status": "active", "track_exposure": true,
       "variants": [{"id": "a", "value": "A", "weight": 100}]},
      {"key": "drafted", "flag_type": "boolean", "status": "draft", "track_exposure": true,
       "rollout_percentage": 100}
    ]"#;
    let engine = FlagEngine::builder()
        .flags(FlagSet::from_json(flags).unwrap().set)
        .exposure(buffer.clone())
        .build();
    let ctx = EvaluationContext::new().user_id("u1");
    // Type mismatches: the caller gets its default, and so does the event.
    assert!(engine.bool_value("tracked", &ctx, true));
    assert_eq!(engine.number_value("tracked", &ctx, 2.5), 2.5);
    let d = engine.bool_detail("tracked", &ctx, true);
    assert_eq!((d.value, d.variant), (true, None));
    // A caller's default for another reason (draft flag): the default, not null.
    assert!(engine.bool_value("drafted", &ctx, true));
    // The flag's value is served: its value and variant.
    assert_eq!(engine.string_value("tracked", &ctx, "x"), "A");
    close(engine, buffer, task).await;
    let events = sink.events.lock().unwrap();
    let seen: Vec<(serde_json::Value, Option<&str>, Reason)> = events
        .iter()
        .map(|e| (e.value.clone(), e.variant.as_deref(), e.reason))
        .collect();
    assert_eq!(
        seen,
        [
            (serde_json::json!(true), None, Reason::TypeMismatch),
            (serde_json::json!(2.5), None, Reason::TypeMismatch),
            (serde_json::json!(true), None, Reason::TypeMismatch),
            (
                serde_json::json!(true),
                None,
                Reason::FlagStatus(finsight_flags::FlagStatus::Draft)
            ),
            (serde_json::json!("A"), Some("a"), Reason::VariantSelected),
        ]
    );
}
