//! finsight-bus throughput and end-to-end latency, 100k messages of 256 B JSON:
//! in-memory publish+consume; RabbitMQ (persistent, mandatory, confirms) next
//! to raw lapin with the same confirm window and prefetch, in the same run;
//! Redis Streams consume rate. Figures go through `finsight_benches::record`.
//!
//! `cargo bench -p finsight-benches --bench bus` (RabbitMQ and Redis must
//! run; `FINSIGHT_BUS_BENCH_N` overrides the message count).
//!
//! The RabbitMQ comparison runs in rounds (`FINSIGHT_BUS_BENCH_ROUNDS`,
//! default 3, fewer when the next round would take the RabbitMQ part past
//! `RABBIT_BUDGET`), alternating which of the two goes first so neither
//! always meets the broker warm (or still busy with the other's queue); each
//! figure recorded is the median over the rounds.

use finsight_benches::{Record, median, record, reset};
use finsight_bus::rabbitmq::{RabbitConfig, RabbitMq};
use finsight_bus::redis_streams::{RedisStreams, RedisStreamsConfig};
use finsight_bus::{
    Bus, Context, Envelope, HandlerError, MemoryBroker, Router, Topology, Transport,
};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

const WINDOW: usize = 256;
const PREFETCH: u16 = 256;

fn epoch() -> Instant {
    static E: OnceLock<Instant> = OnceLock::new();
    *E.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

#[derive(Serialize, Deserialize)]
struct Tick {
    seq: u64,
    sent_ns: u64,
    pad: String,
}

/// A 256-byte JSON payload (seq and time padded to fixed width).
fn tick(seq: u64) -> Tick {
    static PAD: OnceLock<String> = OnceLock::new();
    let pad = PAD.get_or_init(|| {
        let t = Tick {
            seq: 10_000_000,
            sent_ns: 10_000_000_000_000,
            pad: String::new(),
        };
        "x".repeat(256 - serde_json::to_vec(&t).unwrap().len())
    });
    Tick {
        seq,
        sent_ns: now_ns(),
        pad: pad.clone(),
    }
}

/// Latency per sequence number and a completion counter.
struct Sink {
    lat: Vec<AtomicU64>,
    done: AtomicU64,
    n: u64,
    all: Notify,
}

impl Sink {
    fn new(n: u64) -> Arc<Self> {
        Arc::new(Self {
            lat: (0..n).map(|_| AtomicU64::new(0)).collect(),
            done: AtomicU64::new(0),
            n,
            all: Notify::new(),
        })
    }
    fn record(&self, t: &Tick) {
        if let Some(slot) = self.lat.get(t.seq as usize)
            && slot.swap(now_ns().saturating_sub(t.sent_ns).max(1), Ordering::Relaxed) == 0
            && self.done.fetch_add(1, Ordering::AcqRel) + 1 == self.n
        {
            self.all.notify_one();
        }
    }
    async fn wait(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            while self.done.load(Ordering::Acquire) < self.n {
                tokio::select! {
                    () = self.all.notified() => {}
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        })
        .await;
        assert_eq!(
            self.done.load(Ordering::Acquire),
            self.n,
            "not every message was consumed in time"
        );
    }
    /// (p50, p99) in microseconds.
    fn percentiles(&self) -> (f64, f64) {
        let mut v: Vec<u64> = self.lat.iter().map(|a| a.load(Ordering::Relaxed)).collect();
        v.sort_unstable();
        let p = |q: f64| v[((v.len() as f64 - 1.0) * q) as usize] as f64 / 1000.0;
        (p(0.50), p(0.99))
    }
}

fn router(sink: &Arc<Sink>) -> Router {
    let s = sink.clone();
    Router::new().on_typed("tick", move |_c: Context, t: Tick| {
        s.record(&t);
        std::future::ready(Ok::<_, HandlerError>(()))
    })
}

struct Run {
    end_to_end: f64,
    publish: f64,
    p50_us: f64,
    p99_us: f64,
}

/// Publishes `n` ticks pipelined through the bus while its consumer runs.
async fn bus_run(bus: &Bus, queue: &str, n: u64, concurrency: usize) -> Run {
    let sink = Sink::new(n);
    let consumer = bus
        .consumer(queue, router(&sink))
        .prefetch(PREFETCH)
        .concurrency(concurrency)
        .start()
        .unwrap();
    let start = Instant::now();
    // Pipelined: keep up to WINDOW confirms outstanding, await them as they land.
    let mut confirms = FuturesUnordered::new();
    let mut confirmed = 0u64;
    for i in 0..n {
        while confirms.len() >= WINDOW {
            if confirms
                .next()
                .await
                .is_some_and(|o: finsight_bus::PublishOutcome| o.is_confirmed())
            {
                confirmed += 1;
            }
        }
        let env = Envelope::new("tick", &tick(i)).unwrap();
        confirms.push(bus.send(&env).await.unwrap());
    }
    while let Some(o) = confirms.next().await {
        if o.is_confirmed() {
            confirmed += 1;
        }
    }
    let published = start.elapsed();
    assert_eq!(confirmed, n);
    sink.wait(Duration::from_secs(600)).await;
    let total = start.elapsed();
    consumer.shutdown(Duration::from_secs(5)).await.unwrap();
    let (p50_us, p99_us) = sink.percentiles();
    Run {
        end_to_end: n as f64 / total.as_secs_f64(),
        publish: n as f64 / published.as_secs_f64(),
        p50_us,
        p99_us,
    }
}

async fn memory(n: u64) -> Run {
    let broker = MemoryBroker::new();
    let bus = Bus::connect(
        broker,
        Topology::finsight().consumer_queue("bench"),
        "bench",
    )
    .await
    .unwrap();
    let concurrency = std::env::var("FINSIGHT_BUS_BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    bus_run(&bus, "bench", n, concurrency).await
}

async fn rabbit_bus(n: u64) -> Run {
    let mut cfg = RabbitConfig::new(finsight_testkit::amqp_url());
    cfg.confirm_window = WINDOW;
    let t = RabbitMq::connect(cfg).await.unwrap();
    let queue = finsight_testkit::unique("bench-bus");
    let topo = Topology::prefixed(&finsight_testkit::unique("bench")).consumer_queue(&queue);
    let bus = Bus::connect(t.clone(), topo, queue.clone()).await.unwrap();
    let r = bus_run(&bus, &queue, n, 64).await;
    let _ = t.close(Duration::from_secs(5)).await;
    r
}

/// Raw lapin, written the way a careful user would: confirms pipelined
/// through a FuturesUnordered bounded at WINDOW, one consumer stream with
/// prefetch PREFETCH, JSON decode + ack per delivery; same topology,
/// persistent messages, mandatory, SPEC headers.
async fn rabbit_raw(n: u64) -> Run {
    use lapin::options::*;
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
    let conn = Connection::connect(
        &finsight_testkit::amqp_url(),
        ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let exchange = format!("{}.finsight.events", finsight_testkit::unique("bench-raw"));
    let queue = finsight_testkit::unique("bench-raw-q");
    ch.exchange_declare(
        exchange.as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), AMQPValue::LongInt(300_000));
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
    ch.queue_bind(
        queue.as_str().into(),
        exchange.as_str().into(),
        format!("*.{queue}").as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let sink = Sink::new(n);
    let cch = conn.create_channel().await.unwrap();
    cch.basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = cch
        .basic_consume(
            queue.as_str().into(),
            "raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let s2 = sink.clone();
    let consume = tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            let t: Tick = serde_json::from_slice(&d.data).unwrap();
            s2.record(&t);
            d.ack(BasicAckOptions::default()).await.unwrap();
            if s2.done.load(Ordering::Acquire) == s2.n {
                break;
            }
        }
    });
    let start = Instant::now();
    let mut inflight: FuturesUnordered<lapin::PublisherConfirm> = FuturesUnordered::new();
    let rk = format!("tick.{queue}");
    for i in 0..n {
        while inflight.len() >= WINDOW {
            assert!(inflight.next().await.unwrap().unwrap().is_ack());
        }
        let body = serde_json::to_vec(&tick(i)).unwrap();
        let mut h = FieldTable::default();
        h.insert("event_type".into(), AMQPValue::LongString("tick".into()));
        h.insert(
            "timestamp".into(),
            AMQPValue::LongString(chrono_like_now().into()),
        );
        h.insert(
            "correlation_id".into(),
            AMQPValue::LongString(format!("{i:032x}").into()),
        );
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(h);
        let c = ch
            .basic_publish(
                exchange.as_str().into(),
                rk.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &body,
                props,
            )
            .await
            .unwrap();
        inflight.push(c);
    }
    while let Some(c) = inflight.next().await {
        assert!(c.unwrap().is_ack());
    }
    let published = start.elapsed();
    sink.wait(Duration::from_secs(600)).await;
    let total = start.elapsed();
    consume.abort();
    let _ = conn.close(200, "bye".into()).await;
    let (p50_us, p99_us) = sink.percentiles();
    Run {
        end_to_end: n as f64 / total.as_secs_f64(),
        publish: n as f64 / published.as_secs_f64(),
        p50_us,
        p99_us,
    }
}

/// Each field the median over `runs`.
fn median_run(runs: &[Run]) -> Run {
    let m = |f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
    Run {
        end_to_end: m(|r| r.end_to_end),
        publish: m(|r| r.publish),
        p50_us: m(|r| r.p50_us),
        p99_us: m(|r| r.p99_us),
    }
}

/// Time the RabbitMQ comparison may take: no round starts that would end
/// after it (judged by the slowest round so far).
const RABBIT_BUDGET: Duration = Duration::from_secs(170);

/// Raw lapin and the bus in alternating order, round after round; returns
/// (ours, raw) as medians over the rounds.
async fn rabbit_rounds(n: u64) -> (Run, Run) {
    let rounds: usize = std::env::var("FINSIGHT_BUS_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if round > 0 && start.elapsed() + slowest > RABBIT_BUDGET {
            println!("rabbitmq: stopping after {round} rounds (time budget)");
            break;
        }
        let t = Instant::now();
        let raw_first = round.is_multiple_of(2);
        let (o, r) = if raw_first {
            let r = rabbit_raw(n).await;
            (rabbit_bus(n).await, r)
        } else {
            let o = rabbit_bus(n).await;
            (o, rabbit_raw(n).await)
        };
        slowest = slowest.max(t.elapsed());
        println!(
            "rabbitmq round {} ({} first): finsight {:.0} msg/s e2e ({:.0} publish), raw lapin {:.0} msg/s e2e ({:.0} publish); ratio {:.2}",
            round + 1,
            if raw_first { "raw" } else { "finsight" },
            o.end_to_end,
            o.publish,
            r.end_to_end,
            r.publish,
            o.end_to_end / r.end_to_end
        );
        ours.push(o);
        raw.push(r);
    }
    let ratios: Vec<f64> = ours
        .iter()
        .zip(&raw)
        .map(|(o, r)| o.end_to_end / r.end_to_end)
        .collect();
    println!(
        "rabbitmq: median of the per-round e2e ratios {:.2} over {} rounds",
        median(ratios),
        ours.len()
    );
    (median_run(&ours), median_run(&raw))
}

fn chrono_like_now() -> String {
    finsight_bus::format_timestamp(&Envelope::new("t", &0).unwrap().timestamp())
}

async fn redis_bus() -> (Bus, String) {
    let mut cfg = RedisStreamsConfig::new(finsight_testkit::redis_url());
    cfg.key_prefix = format!("{}:", finsight_testkit::unique("bench-bus"));
    cfg.publish_window = WINDOW;
    cfg.max_len = 1_000_000;
    let t = RedisStreams::connect(cfg).await.unwrap();
    let queue = finsight_testkit::unique("bench-rs");
    let topo = Topology::prefixed(&finsight_testkit::unique("bench")).consumer_queue(&queue);
    (Bus::connect(t, topo, queue.clone()).await.unwrap(), queue)
}

/// Consume rate: `n` ticks already in the stream, then a consumer drains them.
async fn redis_consume_only(n: u64) -> f64 {
    let (bus, queue) = redis_bus().await;
    let mut pending = Vec::with_capacity(n as usize);
    for i in 0..n {
        pending.push(
            bus.send(&Envelope::new("tick", &tick(i)).unwrap())
                .await
                .unwrap(),
        );
    }
    for p in pending {
        assert!(p.await.is_confirmed());
    }
    let sink = Sink::new(n);
    let start = Instant::now();
    let consumer = bus
        .consumer(&queue, router(&sink))
        .prefetch(PREFETCH)
        .concurrency(64)
        .start()
        .unwrap();
    sink.wait(Duration::from_secs(600)).await;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    consumer.shutdown(Duration::from_secs(5)).await.unwrap();
    rate
}

fn main() {
    let n: u64 = std::env::var("FINSIGHT_BUS_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    reset("bus");
    let label = |s: &str| format!("{s}, {}k x 256 B", n / 1000);
    rt.block_on(async {
        let mem = memory(n).await;
        println!("in-memory: {:.0} msg/s publish+consume ({:.0} publish), p50 {:.0} us, p99 {:.0} us", mem.end_to_end, mem.publish, mem.p50_us, mem.p99_us);
        record(&Record::new("bus", &label("in-memory publish+consume"), mem.end_to_end, "msg/s", true).target(">= 300k msg/s")).unwrap();
        record(&Record::new("bus", &label("in-memory end-to-end p50"), mem.p50_us, "us", false)).unwrap();
        record(&Record::new("bus", &label("in-memory end-to-end p99"), mem.p99_us, "us", false)).unwrap();
        if std::env::var("FINSIGHT_BUS_BENCH_ONLY").is_ok_and(|v| v == "memory") {
            return;
        }

        let (ours, raw) = rabbit_rounds(n).await;
        println!(
            "rabbitmq (medians): finsight {:.0} msg/s e2e ({:.0} publish), raw lapin {:.0} msg/s e2e ({:.0} publish); ratio {:.2}",
            ours.end_to_end, ours.publish, raw.end_to_end, raw.publish, ours.end_to_end / raw.end_to_end
        );
        let peer = "raw lapin (same window/prefetch)";
        record(&Record::new("bus", &label("rabbitmq publish+consume, persistent+confirms"), ours.end_to_end, "msg/s", true).peer(peer, raw.end_to_end).target(">= 0.9x raw lapin")).unwrap();
        record(&Record::new("bus", &label("rabbitmq confirmed publish"), ours.publish, "msg/s", true).peer(peer, raw.publish).target(">= 0.9x raw lapin")).unwrap();
        record(&Record::new("bus", &label("rabbitmq end-to-end p50"), ours.p50_us / 1000.0, "ms", false).peer(peer, raw.p50_us / 1000.0)).unwrap();
        record(&Record::new("bus", &label("rabbitmq end-to-end p99"), ours.p99_us / 1000.0, "ms", false).peer(peer, raw.p99_us / 1000.0)).unwrap();

        let (bus, queue) = redis_bus().await;
        let rs = bus_run(&bus, &queue, n, 64).await;
        println!("redis streams: {:.0} msg/s publish+consume, p50 {:.0} us, p99 {:.0} us", rs.end_to_end, rs.p50_us, rs.p99_us);
        record(&Record::new("bus", &label("redis-streams publish+consume"), rs.end_to_end, "msg/s", true)).unwrap();
        record(&Record::new("bus", &label("redis-streams end-to-end p50"), rs.p50_us / 1000.0, "ms", false)).unwrap();
        record(&Record::new("bus", &label("redis-streams end-to-end p99"), rs.p99_us / 1000.0, "ms", false)).unwrap();
        let consume = redis_consume_only(n).await;
        println!("redis streams: {consume:.0} msg/s consume");
        record(&Record::new("bus", &label("redis-streams consume"), consume, "msg/s", true).target(">= 11k msg/s")).unwrap();
    });
}
