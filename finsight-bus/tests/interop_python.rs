//! Interop with the Python services' client (pika) on the shared SPEC §5
//! topology (unique names): Rust publishes → Python consumes, and Python
//! declares + publishes → Rust consumes. Checks body, persistence and the
//! `event_type`, `timestamp`, `correlation_id` headers.
#![cfg(feature = "rabbitmq")]

use finsight_bus::rabbitmq::{RabbitConfig, RabbitMq};
use finsight_bus::*;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

fn python_with_pika() -> &'static str {
    let ok = Command::new("python3")
        .args(["-c", "import pika"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        let st = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "pika"])
            .status()
            .expect("python3 -m pip");
        assert!(st.success(), "installing pika failed");
    }
    "python3"
}

fn script(name: &str) -> String {
    format!("{}/tests/python/{name}", env!("CARGO_MANIFEST_DIR"))
}

async fn bus() -> (Bus, String) {
    let t = RabbitMq::connect(RabbitConfig::new(finsight_testkit::amqp_url()))
        .await
        .unwrap();
    let queue = finsight_testkit::unique("interop");
    let topo = Topology::prefixed(&finsight_testkit::unique("py")).consumer_queue(&queue);
    (Bus::connect(t, topo, queue.clone()).await.unwrap(), queue)
}

#[tokio::test]
async fn rust_publishes_python_consumes() {
    let py = python_with_pika();
    let (bus, queue) = bus().await;
    let env = Envelope::new(
        "news_published",
        &serde_json::json!({"headline": "ACME beats", "score": 0.9}),
    )
    .unwrap();
    assert!(bus.publish(&env).await.unwrap().is_confirmed());
    let out = Command::new(py)
        .args([
            &script("consume.py"),
            &finsight_testkit::amqp_url(),
            &queue,
            "1",
            "20",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value =
        serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(
        line["body"],
        serde_json::json!({"headline": "ACME beats", "score": 0.9})
    );
    assert_eq!(line["delivery_mode"], 2);
    assert_eq!(line["routing_key"], format!("news_published.{queue}"));
    let h = &line["headers"];
    assert_eq!(h["event_type"], "news_published");
    assert_eq!(h["correlation_id"], env.correlation_id());
    assert!(uuid::Uuid::parse_str(h["correlation_id"].as_str().unwrap()).is_ok());
    let ts = parse_timestamp(h["timestamp"].as_str().unwrap()).expect("ISO 8601 timestamp");
    assert_eq!(ts.timestamp_millis(), env.timestamp().timestamp_millis());
}

#[tokio::test]
async fn python_declares_and_publishes_rust_consumes() {
    let py = python_with_pika();
    let (bus, queue) = bus().await;
    let t = bus.topology().clone();
    let seen = Arc::new(tokio::sync::Mutex::new(Vec::<(Envelope, bool)>::new()));
    let s2 = seen.clone();
    let consumer = bus
        .consumer(
            &queue,
            Router::new().on("sentiment_analyzed", move |ctx: Context| {
                let s = s2.clone();
                async move {
                    s.lock()
                        .await
                        .push((ctx.envelope().clone(), ctx.redelivered()));
                    Ok(())
                }
            }),
        )
        .start()
        .unwrap();
    let correlation = uuid::Uuid::new_v4().to_string();
    // The Python side declares the same topology: a 406 here would mean the
    // Rust declaration differs from the Python services'.
    let out = Command::new(py)
        .args([
            &script("declare_and_publish.py"),
            &finsight_testkit::amqp_url(),
            &t.exchange.name,
            &t.dead_letter_exchange.name,
            &t.dead_letter_queue.name,
            &queue,
            &format!("sentiment_analyzed.{queue}"),
            "sentiment_analyzed",
            &correlation,
            r#"{"symbol": "ACME", "sentiment": "positive"}"#,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python publisher failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut got = None;
    for _ in 0..1000 {
        if let Some(e) = seen.lock().await.first().cloned() {
            got = Some(e);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (env, _) = got.expect("Rust consumer did not get the Python event");
    assert_eq!(env.event_type(), "sentiment_analyzed");
    assert_eq!(env.correlation_id(), correlation);
    assert_eq!(
        env.json().unwrap(),
        serde_json::json!({"symbol": "ACME", "sentiment": "positive"})
    );
    let age = chrono::Utc::now() - env.timestamp();
    assert!(
        age.num_seconds().abs() < 600,
        "naive Python timestamp not read as UTC: {}",
        env.timestamp()
    );
    // Persistence as sent by pika (delivery_mode 2), seen on the raw delivery.
    let st = consumer.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(st.acked, 1);
}

#[tokio::test]
async fn python_persistent_flag_reaches_rust_delivery() {
    let py = python_with_pika();
    let (bus, queue) = bus().await;
    let t = bus.topology().clone();
    let out = Command::new(py)
        .args([
            &script("declare_and_publish.py"),
            &finsight_testkit::amqp_url(),
            &t.exchange.name,
            &t.dead_letter_exchange.name,
            &t.dead_letter_queue.name,
            &queue,
            &format!("x.{queue}"),
            "x",
            "c-1",
            "[1, 2, 3]",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut sub = bus
        .transport()
        .subscribe(&queue, SubscribeOptions::default())
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(d.message.persistent);
    assert_eq!(&d.message.body[..], b"[1, 2, 3]");
    assert_eq!(d.message.headers["event_type"], "x");
    assert_eq!(d.message.headers["correlation_id"], "c-1");
    d.acker.ack().await.unwrap();
}
