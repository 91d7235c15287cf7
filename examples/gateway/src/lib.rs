//! An API gateway in the shape of the FinSight Python gateway, built from the
//! five FinSight crates. Start it in process with [`Gateway::start`] (tests,
//! embedding) or run `cargo run -p gateway` (see `main.rs`).
//!
//! ```text
//! client ──► identity ──► events ──► rate limit ──► handler ──► cache ──► retry ─► breaker ─► downstream
//!            (x-user-id,  (one bus   (per IP, user,  (flags     (L1 +     (budget) (health)
//!             x-tenant-id, event per  tenant; tiers,  gate the   Redis L2,
//!             x-tier)      request)   costs, 429 +    endpoint   read-through)
//!                                     RateLimit hdrs) + realtime)
//! ```
//!
//! | route | what it does |
//! |---|---|
//! | `GET /api/v1/quotes/{symbol}` | the downstream's `/quotes/{symbol}`, cached (read-through, one load per key); tiers with the `realtime-quotes` flag bypass the cache |
//! | `GET /api/v1/analytics/{symbol}` | the downstream's `/analytics/{symbol}`, cached; only for units the `analytics-api` flag lets in (403 otherwise); costs 5 rate-limit units |
//! | `GET /health` | the resilience health report: downstream breaker, Redis and RabbitMQ connectivity (200 healthy/degraded, 503 unhealthy) |
//! | `GET /bare` | a constant answer with no layer at all: the baseline of the load run |
//!
//! Events on the bus: `api_request` per handled request, `flag_exposure` per
//! evaluation of a tracked flag, `circuit_state_changed` per breaker
//! transition.
//!
//! In memory by default (L1-only cache, in-memory limiter, flags and bus);
//! [`GatewayConfig::redis_url`] puts the cache's L2, the limiter and the
//! sticky flag assignments in Redis, [`GatewayConfig::amqp_url`] publishes
//! the events to RabbitMQ.

#![deny(missing_docs)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use finsight_adapters::flags_bus::BusExposureSink;
use finsight_adapters::health::{HealthBusExt, HealthCacheExt};
use finsight_bus::rabbitmq::{RabbitConfig, RabbitMq};
use finsight_bus::{Bus, Envelope, MemoryBroker, MemoryConfig, Topology};
use finsight_cache::redis::RedisOptions;
use finsight_cache::{Cache, CacheConfig};
use finsight_flags::redis::RedisStickyStore;
use finsight_flags::{
    EvaluationContext, ExposureBuffer, FileSource, FlagEngine, FlagSet, SourceWatcher,
};
use finsight_ratelimit::redis::{RedisBackend, RedisConfig};
use finsight_ratelimit::{
    Algorithm, CostTable, Limiter, ManualClock, RateLimitLayer, Rule, RuleOutcome, RuleSet, Scope,
    TenantId, Tier, UserId,
};
use finsight_resilience::{
    Backoff, BoxError, CircuitBreaker, CircuitBreakerLayer, CircuitOpen, Health, HealthReport,
    Jitter, OnCircuitOpen, OpenDuration, Outcome, Retry, RetryAction, RetryBudget, RetryLayer,
};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

/// The flags the gateway ships with (the Python services' flag rows).
///
/// * `realtime-quotes`: enterprise only (`subscription_tier_requirements`);
///   on: quotes bypass the cache.
/// * `analytics-api`: professional, business and enterprise (a targeting
///   rule); off: `/api/v1/analytics/*` answers 403.
pub const DEFAULT_FLAGS: &str = r#"[
  {"key": "realtime-quotes", "name": "Real-time quotes", "flag_type": "boolean", "status": "active",
   "default_value": false, "rollout_percentage": 100, "track_exposure": true,
   "subscription_tier_requirements": ["enterprise"]},
  {"key": "analytics-api", "name": "Analytics API", "flag_type": "boolean", "status": "active",
   "default_value": false, "rollout_percentage": 100, "track_exposure": true,
   "targeting_rules": [{"rule_type": "subscription_tier", "operator": "in",
                        "values": ["professional", "business", "enterprise"]}]}
]"#;

/// Event type of the per-request event.
pub const REQUEST_EVENT: &str = "api_request";
/// Event type of a downstream breaker state change (payload: the
/// `finsight_resilience::StateChange` JSON: `name`, `from`, `to`, `reason`, `at`).
pub const BREAKER_EVENT: &str = "circuit_state_changed";

/// Errors starting the gateway: each names the part that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// A configuration value is wrong.
    #[error("gateway configuration: {0}")]
    Config(String),
    /// The flag definitions do not load.
    #[error("flag definitions: {0}")]
    Flags(String),
    /// The rate limiter could not be built or could not reach Redis.
    #[error("rate limiter: {0}")]
    RateLimit(#[from] finsight_ratelimit::Error),
    /// The cache could not be built or could not reach Redis.
    #[error("cache: {0}")]
    Cache(#[from] finsight_cache::Error),
    /// The bus could not connect or declare its topology.
    #[error("bus: {0}")]
    Bus(#[from] finsight_bus::Error),
    /// The resilience policies are invalid.
    #[error("resilience: {0}")]
    Resilience(#[from] finsight_resilience::Error),
    /// Binding or serving the socket failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Everything the gateway needs. [`GatewayConfig::new`] gives in-memory
/// defaults; [`GatewayConfig::from_env`] reads the environment.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GatewayConfig {
    /// Base URL of the downstream quotes API (`http://host:port`).
    pub downstream_url: String,
    /// Redis for cache L2, rate limits and sticky flag assignments; `None` = in memory.
    pub redis_url: Option<String>,
    /// RabbitMQ for the events; `None` = in-memory bus.
    pub amqp_url: Option<String>,
    /// Prepended to every Redis key prefix (cache, rate limits, sticky
    /// assignments), so several gateways (or tests) share one Redis apart.
    pub namespace: String,
    /// Bus topology (exchanges, dead-letter queue); the events queue is added to it.
    pub topology: Topology,
    /// The queue the events are routed to: routing key `<event_type>.<events_queue>`,
    /// the queue bound with `*.<events_queue>` (SPEC §5). Default `analytics`.
    pub events_queue: String,
    /// Rate-limit rules and endpoint costs.
    pub rules: RuleSet,
    /// Flag definitions (JSON array of the Python services' flag rows).
    pub flags_json: String,
    /// A flag file to load instead of `flags_json` and to watch: reloaded on
    /// change, validated before the swap (a bad flag keeps its last good
    /// definition; evaluation never waits for a reload).
    pub flags_file: Option<PathBuf>,
    /// How often `flags_file` is checked for changes (default 1 s).
    pub flags_poll: Duration,
    /// Consecutive downstream failures that open the breaker (default 5).
    pub breaker_failures: u32,
    /// How long the breaker stays open before a probe (default 30 s).
    pub breaker_open: Duration,
    /// Attempts per downstream call, the first included (default 3).
    pub retry_attempts: u32,
    /// First retry delay; doubles up to 1 s, full jitter (default 50 ms).
    pub retry_base: Duration,
    /// Timeout of one downstream attempt (default 2 s).
    pub downstream_timeout: Duration,
    /// Time to live of cached downstream responses (default 30 s).
    pub cache_ttl: Duration,
    /// Events waiting to be published at most; more are dropped and counted (default 10 000).
    pub event_buffer: usize,
    /// Drives the rate limiter with this manual clock instead of the system
    /// clock (in memory) or the Redis server's time (with Redis): for
    /// deterministic tests only. `None` (the default) in production.
    pub rate_limit_clock: Option<ManualClock>,
}

impl GatewayConfig {
    /// In-memory defaults for a downstream at `downstream_url`.
    pub fn new(downstream_url: impl Into<String>) -> Self {
        Self {
            downstream_url: downstream_url.into(),
            redis_url: None,
            amqp_url: None,
            namespace: String::new(),
            topology: Topology::finsight(),
            events_queue: "analytics".to_owned(),
            rules: default_rules(),
            flags_json: DEFAULT_FLAGS.to_owned(),
            flags_file: None,
            flags_poll: Duration::from_secs(1),
            breaker_failures: 5,
            breaker_open: Duration::from_secs(30),
            retry_attempts: 3,
            retry_base: Duration::from_millis(50),
            downstream_timeout: Duration::from_secs(2),
            cache_ttl: Duration::from_secs(30),
            event_buffer: 10_000,
            rate_limit_clock: None,
        }
    }

    /// Reads `GATEWAY_DOWNSTREAM_URL` (default `http://127.0.0.1:9010`),
    /// `FINSIGHT_REDIS_URL`, `FINSIGHT_AMQP_URL`, `GATEWAY_RULES` (path of a
    /// rule-set JSON file) and `GATEWAY_FLAGS` (path of a flag JSON file,
    /// watched for changes).
    ///
    /// # Errors
    /// [`GatewayError::Config`] when a named file cannot be read or parsed.
    pub fn from_env() -> Result<Self, GatewayError> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut cfg = Self::new(
            var("GATEWAY_DOWNSTREAM_URL").unwrap_or_else(|| "http://127.0.0.1:9010".to_owned()),
        );
        cfg.redis_url = var("FINSIGHT_REDIS_URL");
        cfg.amqp_url = var("FINSIGHT_AMQP_URL");
        if let Some(path) = var("GATEWAY_RULES") {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| GatewayError::Config(format!("GATEWAY_RULES `{path}`: {e}")))?;
            cfg.rules = serde_json::from_str(&text)
                .map_err(|e| GatewayError::Config(format!("GATEWAY_RULES `{path}`: {e}")))?;
        }
        cfg.flags_file = var("GATEWAY_FLAGS").map(PathBuf::from);
        Ok(cfg)
    }
}

/// The gateway's default rules: per IP 600/min, per tenant 6 000/min (token
/// bucket), per user 60/min for the free tier up to 1 200/min for
/// enterprise (sliding-window counter); `/api/v1/analytics/*` costs 5.
pub fn default_rules() -> RuleSet {
    let min = Duration::from_secs(60);
    RuleSet::new(vec![
        Rule::new("ip", Scope::Ip, Algorithm::SlidingWindowCounter, 600, min),
        Rule::new("tenant", Scope::Tenant, Algorithm::TokenBucket, 6_000, min).tier(
            Tier::Enterprise,
            60_000,
            None,
        ),
        Rule::new(
            "user",
            Scope::User,
            Algorithm::SlidingWindowCounter,
            60,
            min,
        )
        .tier(Tier::Starter, 120, None)
        .tier(Tier::Professional, 300, None)
        .tier(Tier::Business, 600, None)
        .tier(Tier::Enterprise, 1_200, None),
    ])
    .costs(CostTable::new().with("/api/v1/analytics/*", 5))
}

/// Who is calling, from the `x-user-id`, `x-tenant-id` and `x-tier` headers
/// (an authentication layer would set these in production).
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// `x-user-id`.
    pub user_id: Option<String>,
    /// `x-tenant-id`.
    pub tenant_id: Option<String>,
    /// `x-tier`, lower-cased.
    pub tier: Option<String>,
}

impl Identity {
    fn from_headers(h: &HeaderMap) -> Self {
        let get = |name: &str| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|s| !s.is_empty() && s.len() <= 128)
                .map(str::to_owned)
        };
        Self {
            user_id: get("x-user-id"),
            tenant_id: get("x-tenant-id"),
            tier: get("x-tier").map(|t| t.to_ascii_lowercase()),
        }
    }

    /// The flag evaluation context of this caller.
    pub fn flag_context(&self) -> EvaluationContext {
        let mut ctx = EvaluationContext::new();
        if let Some(u) = &self.user_id {
            ctx = ctx.user_id(u.as_str());
        }
        if let Some(t) = &self.tenant_id {
            ctx = ctx.tenant_id(t.as_str());
        }
        if let Some(t) = &self.tier {
            ctx = ctx.subscription_tier(t.as_str());
        }
        ctx
    }

    fn rate_limit_tier(&self) -> Option<Tier> {
        Some(match self.tier.as_deref()? {
            "free" => Tier::Free,
            "starter" => Tier::Starter,
            "professional" | "pro" => Tier::Professional,
            "business" => Tier::Business,
            "enterprise" => Tier::Enterprise,
            _ => return None,
        })
    }
}

/// The per-request event published on the bus (event type [`REQUEST_EVENT`]):
/// the worker's type, so producer and consumer share one schema.
pub use worker::RequestEvent;

/// Counters of the event publisher.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct EventStats {
    /// Events handed to the bus.
    pub sent: u64,
    /// Events the broker confirmed.
    pub confirmed: u64,
    /// Events dropped: buffer full, not confirmed, or the bus failed.
    pub dropped: u64,
}

#[derive(Debug, Default)]
struct EventCounters {
    sent: AtomicU64,
    confirmed: AtomicU64,
    dropped: AtomicU64,
}

/// Publishes request events off the request path: a bounded queue drained by
/// one task that pipelines publishes and counts confirms.
#[derive(Debug, Clone)]
struct Events {
    tx: mpsc::Sender<RequestEvent>,
    counters: Arc<EventCounters>,
}

impl Events {
    fn spawn(bus: Bus, capacity: usize) -> (Self, JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<RequestEvent>(capacity.max(1));
        let counters = Arc::new(EventCounters::default());
        let c = counters.clone();
        let task = tokio::spawn(async move {
            let mut confirms = JoinSet::new();
            while let Some(event) = rx.recv().await {
                let envelope = match Envelope::new(REQUEST_EVENT, &event) {
                    Ok(e) => e,
                    Err(e) => {
                        c.dropped.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "request event not serialisable");
                        continue;
                    }
                };
                match bus.send(&envelope).await {
                    Ok(pending) => {
                        c.sent.fetch_add(1, Ordering::Relaxed);
                        let c = c.clone();
                        confirms.spawn(async move {
                            let outcome = pending.await;
                            if outcome.is_confirmed() {
                                c.confirmed.fetch_add(1, Ordering::Relaxed);
                            } else {
                                c.dropped.fetch_add(1, Ordering::Relaxed);
                                tracing::debug!(?outcome, "request event not confirmed");
                            }
                        });
                    }
                    Err(e) => {
                        c.dropped.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "request event not published");
                    }
                }
                // Bound the confirms being awaited; reap the finished ones.
                while confirms.len() >= 1024 {
                    let _ = confirms.join_next().await;
                }
                while confirms.try_join_next().is_some() {}
            }
            while confirms.join_next().await.is_some() {}
        });
        (Self { tx, counters }, task)
    }

    fn offer(&self, event: RequestEvent) {
        if self.tx.try_send(event).is_err() {
            let d = self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            if d.is_power_of_two() {
                tracing::warn!(dropped = d + 1, "event buffer full; request events dropped");
            }
        }
    }

    fn stats(&self) -> EventStats {
        EventStats {
            sent: self.counters.sent.load(Ordering::Relaxed),
            confirmed: self.counters.confirmed.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
        }
    }
}

/// Why a downstream call failed.
#[derive(Debug, Clone, thiserror::Error)]
enum FetchError {
    #[error("downstream has no such resource")]
    NotFound,
    #[error("downstream answered {0}")]
    Status(u16),
    #[error("downstream unreachable: {0}")]
    Transport(String),
    #[error("downstream answered invalid JSON: {0}")]
    Body(String),
    #[error("downstream circuit open")]
    Open(Option<Duration>),
    #[error("downstream call gave up: {0}")]
    GaveUp(String),
}

/// The `FetchError` inside a layer's boxed error, if that is what failed.
fn as_fetch_error(e: &BoxError) -> Option<&FetchError> {
    e.downcast_ref::<FetchError>()
}

/// Retry classifier of the downstream stack: a missing resource or a bad body
/// is final; a breaker rejection follows the policy's `on_circuit_open`;
/// anything else is retried.
fn retry_classify(r: &Result<Value, BoxError>) -> RetryAction {
    match r {
        Ok(_) => RetryAction::Return,
        Err(e) => match as_fetch_error(e) {
            Some(FetchError::NotFound | FetchError::Body(_)) => RetryAction::Return,
            _ => RetryAction::for_error(e.as_ref()),
        },
    }
}

/// Breaker classifier of the downstream stack: a missing resource or a bad
/// body says nothing about the downstream's health.
fn breaker_classify(r: &Result<Value, BoxError>) -> Outcome {
    match r {
        Ok(_) => Outcome::Success,
        Err(e) => match as_fetch_error(e) {
            Some(FetchError::NotFound | FetchError::Body(_)) => Outcome::Ignored,
            _ => Outcome::Failure,
        },
    }
}

/// The downstream client as a tower stack: `RetryLayer` (with its budget)
/// outside `CircuitBreakerLayer`, so retries wait out or give up on an open
/// breaker instead of burning attempts.
#[derive(Clone)]
struct Downstream {
    svc: BoxCloneSyncService<String, Value, BoxError>,
    breaker: CircuitBreaker,
    calls: Arc<AtomicU64>,
}

impl std::fmt::Debug for Downstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downstream").finish_non_exhaustive()
    }
}

impl Downstream {
    fn new(client: reqwest::Client, base: Arc<str>, breaker: CircuitBreaker, retry: Retry) -> Self {
        let calls = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&calls);
        let attempt = tower::service_fn(move |path: String| {
            let (client, base, calls) = (client.clone(), Arc::clone(&base), Arc::clone(&counter));
            async move {
                attempt(&client, &base, &path, &calls)
                    .await
                    .map_err(BoxError::from)
            }
        });
        let svc = tower::ServiceBuilder::new()
            .layer(RetryLayer::new(retry).classifier(retry_classify))
            .layer(CircuitBreakerLayer::new(breaker.clone()).classifier(breaker_classify))
            .service(attempt);
        Self {
            svc: BoxCloneSyncService::new(svc),
            breaker,
            calls,
        }
    }

    /// One logical call through the retry and breaker layers.
    async fn get(&self, path: &str) -> Result<Value, FetchError> {
        self.svc
            .clone()
            .oneshot(path.to_owned())
            .await
            .map_err(|e| match e.downcast::<FetchError>() {
                Ok(fetch) => *fetch,
                Err(e) => match e.downcast_ref::<CircuitOpen>() {
                    Some(open) => FetchError::Open(open.retry_after()),
                    None => FetchError::GaveUp(e.to_string()),
                },
            })
    }
}

/// One attempt: GET `base + path`, JSON body on 200.
async fn attempt(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    calls: &AtomicU64,
) -> Result<Value, FetchError> {
    calls.fetch_add(1, Ordering::Relaxed);
    let res = client
        .get(format!("{base}{path}"))
        .send()
        .await
        .map_err(|e| FetchError::Transport(e.to_string()))?;
    match res.status().as_u16() {
        200 => {
            let bytes = res
                .bytes()
                .await
                .map_err(|e| FetchError::Transport(e.to_string()))?;
            serde_json::from_slice(&bytes).map_err(|e| FetchError::Body(e.to_string()))
        }
        404 => Err(FetchError::NotFound),
        s => Err(FetchError::Status(s)),
    }
}

struct AppState {
    flags: FlagEngine,
    flag_reloads: Option<tokio::sync::watch::Receiver<finsight_flags::ReloadStatus>>,
    cache: Cache<Value>,
    downstream: Downstream,
    events: Events,
    health: Health,
    limiter: Limiter,
}

/// A built gateway: the axum router plus handles to its parts.
pub struct Gateway {
    state: Arc<AppState>,
    router: Router,
    bus: Bus,
    background: Vec<JoinHandle<()>>,
    /// Keeps the flag file watched while the gateway lives.
    _flag_watcher: Option<SourceWatcher>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

/// A snapshot of the gateway's counters (`GET /stats`).
#[derive(Debug, Clone, Serialize)]
pub struct GatewayStats {
    /// Downstream HTTP attempts made (retries included).
    pub downstream_calls: u64,
    /// The downstream breaker's state (`closed`, `open`, `half_open`, …).
    pub breaker_state: String,
    /// Cache hits in L1.
    pub cache_l1_hits: u64,
    /// Cache hits in L2 (Redis).
    pub cache_l2_hits: u64,
    /// Request events.
    pub events: EventStats,
    /// Reloads of the flag file applied so far (0 without a flag file).
    pub flag_reloads_applied: u64,
    /// Why the last flag-file reload was refused (the last good flags stay).
    pub flag_reload_error: Option<String>,
    /// Rule rejections counted by the rate limiter (a request two rules
    /// reject counts twice).
    pub rate_limit_rejections: u64,
}

impl Gateway {
    /// Builds every part and connects the configured backends.
    ///
    /// # Errors
    /// [`GatewayError`] naming the part that failed (invalid rules or
    /// flags, Redis or RabbitMQ unreachable at start).
    pub async fn build(cfg: GatewayConfig) -> Result<Self, GatewayError> {
        let ns = cfg.namespace.as_str();
        let mut background = Vec::new();

        // Bus: RabbitMQ or in memory; the events queue is part of the topology.
        let topology = cfg.topology.clone().consumer_queue(&cfg.events_queue);
        let bus = match &cfg.amqp_url {
            Some(url) => {
                let rabbit = RabbitMq::connect(RabbitConfig::new(url.as_str())).await?;
                Bus::connect(rabbit, topology, cfg.events_queue.as_str()).await?
            }
            None => {
                // Nobody consumes in process: keep the queue bounded.
                let broker = MemoryBroker::with_config(MemoryConfig {
                    default_max_length: cfg.event_buffer.max(1),
                });
                Bus::connect(broker, topology, cfg.events_queue.as_str()).await?
            }
        };
        let (events, task) = Events::spawn(bus.clone(), cfg.event_buffer);
        background.push(task);

        // Flags: exposures of tracked flags go to the bus too.
        let report =
            FlagSet::from_json(&cfg.flags_json).map_err(|e| GatewayError::Flags(e.to_string()))?;
        if let Some(e) = report.errors.first() {
            return Err(GatewayError::Flags(e.to_string()));
        }
        let (exposure, task) =
            ExposureBuffer::spawn(BusExposureSink::new(bus.clone()), 10_000, 256)
                .map_err(|e| GatewayError::Flags(e.to_string()))?;
        background.push(task);
        let mut flags = FlagEngine::builder().flags(report.set).exposure(exposure);
        if let Some(url) = &cfg.redis_url {
            let store = RedisStickyStore::builder(url.as_str())
                .prefix(format!("{ns}user_buckets:"))
                .build()
                .map_err(|e| GatewayError::Flags(e.to_string()))?;
            flags = flags.sticky_store(store);
        }
        let flags = flags.build();
        let flag_watcher = match &cfg.flags_file {
            Some(path) => {
                let watcher = FileSource::new(path)
                    .poll_interval(cfg.flags_poll)
                    .watch(flags.clone())
                    .await
                    .map_err(|e| GatewayError::Flags(format!("{}: {e}", path.display())))?;
                for e in &watcher.status().rejected {
                    tracing::warn!(file = %path.display(), error = %e, "flag rejected");
                }
                Some(watcher)
            }
            None => None,
        };

        // Rate limiter: Redis (shared by every instance) or in memory.
        let mut limiter = Limiter::builder(cfg.rules.clone());
        if let Some(clock) = &cfg.rate_limit_clock {
            limiter = limiter.clock(clock.clone());
        }
        if let Some(url) = &cfg.redis_url {
            let mut rc = RedisConfig::new(url.as_str()).tag(format!("{ns}finsight-rl"));
            if let Some(clock) = &cfg.rate_limit_clock {
                rc = rc.clock_for_tests(clock.clone());
            }
            limiter = limiter.redis(RedisBackend::connect(rc).await?);
        }
        let limiter = limiter.build()?;

        // Cache: the Python services' `api_response` type, under the namespace.
        let mut cache_cfg = CacheConfig::api_response();
        cache_cfg.prefix = format!("{ns}{}", cache_cfg.prefix);
        cache_cfg.ttl = cfg.cache_ttl;
        let mut cache = Cache::builder(cache_cfg);
        if let Some(url) = &cfg.redis_url {
            cache = cache.redis(RedisOptions::new(url)?);
        }
        let cache = cache.build().await?;

        // Downstream: retry with a budget, through a breaker.
        let breaker = CircuitBreaker::builder("downstream")
            .consecutive_failures(cfg.breaker_failures)
            .open_duration(OpenDuration::Fixed(cfg.breaker_open))
            .build()?;
        let retry = Retry::builder()
            .max_attempts(cfg.retry_attempts)
            .backoff(
                Backoff::exponential(cfg.retry_base, Duration::from_secs(1)).jitter(Jitter::Full),
            )
            .budget(RetryBudget::new(Duration::from_secs(10), 10, 0.2)?)
            .on_circuit_open(OnCircuitOpen::GiveUp)
            .deadline(cfg.downstream_timeout * cfg.retry_attempts.max(1) * 2)
            .build()?;
        background.push(publish_breaker_changes(&breaker, bus.clone()));
        let client = reqwest::Client::builder()
            .timeout(cfg.downstream_timeout)
            .build()
            .map_err(|e| GatewayError::Config(format!("HTTP client: {e}")))?;
        let downstream = Downstream::new(
            client,
            cfg.downstream_url.trim_end_matches('/').into(),
            breaker.clone(),
            retry,
        );

        // Health: the breaker, Redis and the bus.
        let mut health = Health::new().breaker(&breaker, false);
        if let Some(url) = &cfg.redis_url {
            let client = redis::Client::open(url.as_str())
                .map_err(|e| GatewayError::Config(format!("Redis URL `{url}`: {e}")))?;
            let mc = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_millis(500)))
                .set_response_timeout(Some(Duration::from_millis(500)))
                .set_number_of_retries(0);
            let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, mc)
                .map_err(|e| GatewayError::Config(format!("Redis connection manager: {e}")))?;
            health = health.check("redis", false, Duration::from_secs(1), move || {
                let mut conn = conn.clone();
                async move {
                    redis::cmd("PING")
                        .query_async::<String>(&mut conn)
                        .await
                        .map(drop)
                        .map_err(|e| format!("PING failed: {e}"))
                }
            });
        }
        let bus_name = if cfg.amqp_url.is_some() {
            "rabbitmq"
        } else {
            "bus"
        };
        health = health.bus_check(bus_name, &bus, false, Duration::from_secs(2));
        if cfg.redis_url.is_some() {
            health = health.cache_check("cache", &cache, false);
        }

        let state = Arc::new(AppState {
            flags,
            flag_reloads: flag_watcher.as_ref().map(SourceWatcher::subscribe),
            cache,
            downstream,
            events,
            health,
            limiter: limiter.clone(),
        });
        let router = router(state.clone(), limiter);
        Ok(Self {
            state,
            router,
            bus,
            background,
            _flag_watcher: flag_watcher,
        })
    }

    /// The axum router (serve it with `into_make_service_with_connect_info::<SocketAddr>()`
    /// so the per-IP rule sees the peer address).
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// The counters behind `GET /stats`.
    pub fn stats(&self) -> GatewayStats {
        stats(&self.state)
    }

    /// The health report behind `GET /health`.
    pub async fn health(&self) -> HealthReport {
        self.state.health.report().await
    }

    /// Binds `addr` (use `127.0.0.1:0` in tests) and serves in a spawned
    /// task; returns the bound address and the running server.
    ///
    /// # Errors
    /// [`GatewayError::Io`] when the address cannot be bound.
    pub async fn start(self, addr: SocketAddr) -> Result<RunningGateway, GatewayError> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let app = self
            .router
            .clone()
            .into_make_service_with_connect_info::<SocketAddr>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let r = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                })
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "gateway server failed");
            }
        });
        Ok(RunningGateway {
            addr: local,
            gateway: self,
            stop: Some(stop_tx),
            server,
        })
    }
}

/// A gateway serving on a socket; [`RunningGateway::shutdown`] stops it.
#[derive(Debug)]
pub struct RunningGateway {
    /// The bound address.
    pub addr: SocketAddr,
    gateway: Gateway,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: JoinHandle<()>,
}

impl RunningGateway {
    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The gateway's counters.
    pub fn stats(&self) -> GatewayStats {
        self.gateway.stats()
    }

    /// Stops accepting, drains open requests, then closes the bus (waiting up
    /// to `deadline` for confirms).
    pub async fn shutdown(mut self, deadline: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(deadline, &mut self.server).await;
        let _ = self.gateway.bus.close(deadline).await;
        for task in &self.gateway.background {
            task.abort();
        }
    }
}

/// Publishes every state change of `breaker` as a [`BREAKER_EVENT`]; ends
/// when the breaker is dropped.
fn publish_breaker_changes(breaker: &CircuitBreaker, bus: Bus) -> JoinHandle<()> {
    let mut changes = breaker.subscribe();
    tokio::spawn(async move {
        loop {
            match changes.recv().await {
                Ok(change) => {
                    tracing::info!(breaker = %change.name, from = %change.from, to = %change.to, "breaker state changed");
                    let outcome = match Envelope::new(BREAKER_EVENT, &change) {
                        Ok(env) => bus.publish(&env).await.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    match outcome {
                        Ok(o) if o.is_confirmed() => {}
                        Ok(o) => tracing::warn!(outcome = ?o, "breaker event not confirmed"),
                        Err(e) => tracing::warn!(error = %e, "breaker event not published"),
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "breaker events missed");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    })
}

fn stats(state: &AppState) -> GatewayStats {
    let cache = state.cache.stats();
    let metrics = state.limiter.metrics();
    let reload = state
        .flag_reloads
        .as_ref()
        .map(|r| r.borrow().clone())
        .unwrap_or_default();
    GatewayStats {
        flag_reloads_applied: reload.applied,
        flag_reload_error: reload.last_error,
        downstream_calls: state.downstream.calls.load(Ordering::Relaxed),
        breaker_state: state.downstream.breaker.state().as_str().to_owned(),
        cache_l1_hits: cache.l1.hits,
        cache_l2_hits: cache.l2.hits,
        events: state.events.stats(),
        rate_limit_rejections: metrics
            .decisions
            .iter()
            .filter(|r| r.outcome == RuleOutcome::Rejected)
            .map(|r| r.count)
            .sum(),
    }
}

fn router(state: Arc<AppState>, limiter: Limiter) -> Router {
    let rate_limit = RateLimitLayer::new(limiter)
        .peer_ip(|e| e.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()));
    let api = Router::new()
        .route("/api/v1/quotes/{symbol}", get(quote))
        .route("/api/v1/analytics/{symbol}", get(analytics))
        .layer(rate_limit)
        .layer(middleware::from_fn_with_state(state.clone(), publish_event))
        .layer(middleware::from_fn(identify));
    Router::new()
        .route("/health", get(health))
        .route("/stats", get(stats_handler))
        .route("/bare", get(bare))
        .merge(api)
        .with_state(state)
}

/// Reads the caller's identity into the request extensions: [`Identity`]
/// for the handlers, `UserId` / `TenantId` / `Tier` for the rate limiter.
async fn identify(mut req: Request, next: Next) -> Response {
    let id = Identity::from_headers(req.headers());
    let ext = req.extensions_mut();
    if let Some(u) = &id.user_id {
        ext.insert(UserId(u.clone()));
    }
    if let Some(t) = &id.tenant_id {
        ext.insert(TenantId(t.clone()));
    }
    if let Some(t) = id.rate_limit_tier() {
        ext.insert(t);
    }
    ext.insert(id);
    next.run(req).await
}

/// Publishes one [`RequestEvent`] per handled request (429s included).
async fn publish_event(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let id = req
        .extensions()
        .get::<Identity>()
        .cloned()
        .unwrap_or_default();
    let res = next.run(req).await;
    state.events.offer(RequestEvent {
        method,
        path,
        status: res.status().as_u16(),
        user_id: id.user_id,
        tenant_id: id.tenant_id,
        tier: id.tier,
        latency_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
    });
    res
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn valid_symbol(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 12
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

fn fetch_error(e: &FetchError) -> Response {
    match e {
        FetchError::NotFound => error(StatusCode::NOT_FOUND, "unknown symbol"),
        FetchError::Open(retry) => {
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "downstream circuit open; try again later",
            );
            let secs = retry.map_or(1, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            r
        }
        other => error(StatusCode::BAD_GATEWAY, other.to_string()),
    }
}

/// Walks an error's sources to the [`FetchError`] a cache load failed with.
fn find_fetch_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a FetchError> {
    let mut cur = Some(e);
    for _ in 0..8 {
        let err = cur?;
        if let Some(f) = err.downcast_ref::<FetchError>() {
            return Some(f);
        }
        cur = err.source();
    }
    None
}

/// Read-through: the cached response, or one downstream call per key.
/// Returns the value and whether this request loaded it.
async fn cached(state: &AppState, path: String) -> Result<(Value, bool), Response> {
    let loaded = Arc::new(AtomicBool::new(false));
    let flag = loaded.clone();
    let downstream = state.downstream.clone();
    let key = path.clone();
    let r = state
        .cache
        .get_or_load(&key, move || async move {
            flag.store(true, Ordering::Relaxed);
            match downstream.get(&path).await {
                Ok(v) => Ok(Some(v)),
                Err(FetchError::NotFound) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await;
    match r {
        Ok(Some(v)) => Ok((v, loaded.load(Ordering::Relaxed))),
        Ok(None) => Err(error(StatusCode::NOT_FOUND, "unknown symbol")),
        Err(e) => Err(match find_fetch_error(&e) {
            Some(f) => fetch_error(f),
            None => {
                tracing::warn!(error = %e, "cache load failed");
                error(StatusCode::BAD_GATEWAY, e.to_string())
            }
        }),
    }
}

/// The caller's flag context, with the unit's sticky assignments loaded
/// (one Redis `MGET` when the store is Redis and a flag is sticky; nothing
/// otherwise). A store failure is logged and evaluation uses the computed
/// buckets.
async fn flag_context(state: &AppState, id: &Identity) -> EvaluationContext {
    let ctx = id.flag_context();
    if let Err(e) = state.flags.preload(&ctx).await {
        tracing::debug!(error = %e, "sticky assignments not preloaded");
    }
    ctx
}

async fn quote(
    State(state): State<Arc<AppState>>,
    Path(symbol): Path<String>,
    id: axum::Extension<Identity>,
) -> Response {
    if !valid_symbol(&symbol) {
        return error(StatusCode::BAD_REQUEST, "symbol: 1-12 of A-Z a-z 0-9 . -");
    }
    let path = format!("/quotes/{symbol}");
    // Flag-gated behaviour: real-time tiers bypass the cache.
    let realtime = state
        .flags
        .is_enabled("realtime-quotes", &flag_context(&state, &id).await);
    let (quote, source) = if realtime {
        match state.downstream.get(&path).await {
            Ok(v) => (v, "downstream"),
            Err(e) => return fetch_error(&e),
        }
    } else {
        match cached(&state, path).await {
            Ok((v, true)) => (v, "downstream"),
            Ok((v, false)) => (v, "cache"),
            Err(r) => return r,
        }
    };
    Json(json!({ "quote": quote, "source": source, "realtime": realtime })).into_response()
}

async fn analytics(
    State(state): State<Arc<AppState>>,
    Path(symbol): Path<String>,
    id: axum::Extension<Identity>,
) -> Response {
    if !valid_symbol(&symbol) {
        return error(StatusCode::BAD_REQUEST, "symbol: 1-12 of A-Z a-z 0-9 . -");
    }
    // Flag-gated endpoint.
    let detail = state
        .flags
        .bool_detail("analytics-api", &flag_context(&state, &id).await, false);
    if !detail.value {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({
                "error": "analytics is not enabled for this account",
                "reason": detail.reason.as_str(),
            })),
        )
            .into_response();
    }
    match cached(&state, format!("/analytics/{symbol}")).await {
        Ok((v, loaded)) => Json(json!({
            "analytics": v,
            "source": if loaded { "downstream" } else { "cache" },
        }))
        .into_response(),
        Err(r) => r,
    }
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let report = state.health.report().await;
    let status = StatusCode::from_u16(report.status.http_status())
        .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    (status, Json(report)).into_response()
}

async fn stats_handler(State(state): State<Arc<AppState>>) -> Json<GatewayStats> {
    Json(stats(&state))
}

async fn bare() -> Json<Value> {
    Json(json!({ "ok": true }))
}
