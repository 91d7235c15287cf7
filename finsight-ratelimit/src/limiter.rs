//! The rule-based limiter: every applicable rule, all or nothing.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use dashmap::mapref::one::RefMut;

use crate::algorithm::{Algorithm, Cell, Log, Policy, Verdict};
use crate::clock::{Clock, SystemClock};
use crate::decision::{Decision, Outcome, RuleReport};
use crate::error::{Error, Result};
use crate::metrics::{MetricsSnapshot, RuleMetrics, RuleOutcome, snapshot};
use crate::request::RequestInfo;
use crate::rule::{CostTable, KeyId, Rule, RuleSet, ThrottleAction, Tier};
use crate::store::{DEFAULT_MAX_KEYS, IdBuild, Store};

/// Longest a `delay`/`queue` waiter re-checks before giving up, in rounds.
const MAX_WAIT_ROUNDS: usize = 64;

pub(crate) enum RuleStore {
    Cells(Store<KeyId, Cell, IdBuild>),
    Logs(Store<KeyId, Log, IdBuild>),
}

pub(crate) struct CompiledRule {
    pub(crate) rule: Rule,
    pub(crate) id: Arc<str>,
    /// Index 0: no tier; 1..=5: [`Tier::ALL`].
    policies: [Policy; 6],
    /// Policy used to tell idle keys (the tier with the longest refill).
    idle_policy: Policy,
    store: Arc<RuleStore>,
    metrics: Arc<RuleMetrics>,
}

pub(crate) struct Compiled {
    rules: Vec<CompiledRule>,
    costs: CostTable,
}

/// One applicable rule of one check.
pub(crate) struct Item<'c> {
    pub(crate) rule: &'c CompiledRule,
    pub(crate) policy: Policy,
    pub(crate) key: KeyId,
    pub(crate) cost: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Consume,
    Peek,
    Refund,
}

impl Op {
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn code(self) -> u8 {
        match self {
            Op::Consume => 0,
            Op::Peek => 1,
            Op::Refund => 2,
        }
    }
}

pub(crate) enum Backend {
    Memory,
    #[cfg(feature = "redis")]
    Redis(Box<crate::redis::RedisBackend>),
}

struct WaitQueue {
    turn: tokio::sync::Semaphore,
    waiting: AtomicU32,
}

struct Inner {
    compiled: ArcSwap<Compiled>,
    clock: Arc<dyn Clock>,
    backend: Backend,
    shadow: bool,
    near_limit_ratio: u64,
    max_keys: usize,
    queues: DashMap<(Arc<str>, KeyId), Arc<WaitQueue>>,
    max_waiters: usize,
    waiters: AtomicUsize,
}

/// Checks requests against a [`RuleSet`]: every applicable rule, atomically,
/// all or nothing.
///
/// Cheap to clone (one `Arc`). Rules can be replaced at runtime with
/// [`update_rules`](Self::update_rules) without losing counts.
///
/// Cost of a check: per applicable rule one SHA-256 of the scope key (none
/// for global rules); in memory one shard lock per rule, held together for the
/// all-or-nothing decision; on Redis one `EVALSHA` round trip for all rules.
/// Memory (in-memory backend): per rule and active key 24 bytes of entry plus
/// the hash table's spare capacity, measured 61 B per idle key (RSS growth
/// over 1 000 000 IP keys, hashing garbage included; sliding-window log: plus 16 bytes per
/// logged request, at most `limit + burst`); at most `max_keys` keys per rule
/// (default 1 000 000); idle keys are evicted automatically.
///
/// ```
/// use std::time::Duration;
/// use finsight_ratelimit::{Algorithm, Limiter, ManualClock, RequestInfo, Rule, RuleSet, Scope};
/// # fn main() -> Result<(), finsight_ratelimit::Error> {
/// let rules = RuleSet::new(vec![
///     Rule::new("user", Scope::User, Algorithm::FixedWindow, 2, Duration::from_secs(60)),
/// ]);
/// let limiter = Limiter::builder(rules).clock(ManualClock::new(0)).build()?;
/// let req = RequestInfo::new("GET", "/orders").user("u-1");
/// assert!(limiter.check_local(&req)?.is_allowed());
/// assert!(limiter.check_local(&req)?.is_allowed());
/// let d = limiter.check_local(&req)?;
/// assert!(!d.is_allowed());
/// assert_eq!(d.retry_after_secs(), Some(60));
/// assert_eq!(d.rule.as_deref(), Some("user"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.inner.compiled.load();
        f.debug_struct("Limiter")
            .field("rules", &c.rules.iter().map(|r| &*r.id).collect::<Vec<_>>())
            .field("shadow", &self.inner.shadow)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Limiter`]. Defaults: system clock, in memory, enforcing,
/// 1 000 000 keys per rule, near-limit at 80%, 10 000 queued waiters in total.
#[must_use = "call .build() to obtain a limiter"]
pub struct LimiterBuilder {
    rules: RuleSet,
    clock: Arc<dyn Clock>,
    shadow: bool,
    near_limit_ratio: u64,
    max_keys: usize,
    max_waiters: usize,
    backend: Backend,
}

impl fmt::Debug for LimiterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimiterBuilder")
            .field("rules", &self.rules.rules.len())
            .field("shadow", &self.shadow)
            .finish_non_exhaustive()
    }
}

impl LimiterBuilder {
    /// The clock of the in-memory decisions (and of Redis fallback decisions).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Shadow mode for the whole limiter: decide, count and report
    /// ([`Decision::shadow_rejected`]), never reject. Counts are kept exactly
    /// as if enforcing, so turning shadow off changes nothing else.
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }

    /// At most this many keys per rule in memory (default 1 000 000).
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys.max(1);
        self
    }

    /// Admitted decisions leaving at most `1 - ratio` of the quota count as
    /// near-limit in the metrics (default 0.8).
    pub fn near_limit_ratio(mut self, ratio: f64) -> Self {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let permille = (ratio.clamp(0.0, 1.0) * 1000.0).round() as u64;
        self.near_limit_ratio = permille;
        self
    }

    /// Total bound on requests waiting in `queue` actions (default 10 000).
    pub fn max_waiters(mut self, n: usize) -> Self {
        self.max_waiters = n;
        self
    }

    /// Decide on Redis (shared by every instance) instead of in memory.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis(mut self, backend: crate::redis::RedisBackend) -> Self {
        self.backend = Backend::Redis(Box::new(backend));
        self
    }

    /// Validates the rules and builds the limiter.
    ///
    /// # Errors
    /// [`Error::Config`] naming the rule and field at fault.
    pub fn build(self) -> Result<Limiter> {
        let compiled = compile(&self.rules, None, self.max_keys)?;
        Ok(Limiter {
            inner: Arc::new(Inner {
                compiled: ArcSwap::from_pointee(compiled),
                clock: self.clock,
                backend: self.backend,
                shadow: self.shadow,
                near_limit_ratio: self.near_limit_ratio,
                max_keys: self.max_keys,
                queues: DashMap::new(),
                max_waiters: self.max_waiters,
                waiters: AtomicUsize::new(0),
            }),
        })
    }
}

fn compile(rules: &RuleSet, old: Option<&Compiled>, max_keys: usize) -> Result<Compiled> {
    rules.validate()?;
    let mut out = Vec::with_capacity(rules.rules.len());
    for r in &rules.rules {
        let id = Some(r.id.as_str());
        let mut policies = [Policy::named(r.quota(None), id)?; 6];
        for (i, t) in Tier::ALL.iter().enumerate() {
            policies[i + 1] = Policy::named(r.quota(Some(*t)), id)?;
        }
        let idle_policy = policies
            .iter()
            .copied()
            .max_by_key(|p| p.capacity * p.interval_us)
            .unwrap_or(policies[0]);
        let prev = old.and_then(|o| o.rules.iter().find(|c| c.rule.id == r.id));
        let store = match prev {
            Some(p) if p.rule.algorithm == r.algorithm => p.store.clone(),
            _ => {
                let sweep = policies[0].window_us.max(1_000_000);
                Arc::new(if r.algorithm == Algorithm::SlidingWindowLog {
                    RuleStore::Logs(Store::new(max_keys, sweep, IdBuild::default()))
                } else {
                    RuleStore::Cells(Store::new(max_keys, sweep, IdBuild::default()))
                })
            }
        };
        let metrics = prev.map_or_else(|| Arc::new(RuleMetrics::default()), |p| p.metrics.clone());
        out.push(CompiledRule {
            rule: r.clone(),
            id: Arc::from(r.id.as_str()),
            policies,
            idle_policy,
            store,
            metrics,
        });
    }
    Ok(Compiled {
        rules: out,
        costs: rules.costs.clone(),
    })
}

enum Guard<'a> {
    Cell(RefMut<'a, KeyId, Cell>),
    Log(RefMut<'a, KeyId, Log>),
}

/// Decides `items` in memory, atomically: the entries of all rules stay
/// locked (in rule order, so checks never deadlock) until the outcome is known.
pub(crate) fn decide_memory(items: &[Item<'_>], now: u64, op: Op) -> Result<Vec<Verdict>> {
    let mut guards = Vec::with_capacity(items.len());
    for it in items {
        let ip = it.rule.idle_policy;
        let full = || Error::StoreFull {
            rule: it.rule.rule.id.clone(),
            max_keys: match &*it.rule.store {
                RuleStore::Cells(s) => s.max_keys(),
                RuleStore::Logs(s) => s.max_keys(),
            },
        };
        guards.push(match &*it.rule.store {
            RuleStore::Cells(s) => Guard::Cell(
                s.entry(
                    &it.key,
                    now,
                    || it.policy.fresh_cell(now),
                    |c, n| ip.cell_idle(c, n),
                )
                .ok_or_else(full)?,
            ),
            RuleStore::Logs(s) => Guard::Log(
                s.entry(&it.key, now, Log::default, |l, n| ip.log_idle(l, n))
                    .ok_or_else(full)?,
            ),
        });
    }
    if op == Op::Refund {
        for (it, g) in items.iter().zip(guards.iter_mut()) {
            match g {
                Guard::Cell(c) => **c = it.policy.cell_refund(c, now, it.cost),
                Guard::Log(l) => it.policy.log_refund(l, now, it.cost),
            }
        }
        return Ok(Vec::new());
    }
    let mut verdicts = Vec::with_capacity(items.len());
    let mut nexts = Vec::with_capacity(items.len());
    for (it, g) in items.iter().zip(guards.iter_mut()) {
        match g {
            Guard::Cell(c) => {
                let (v, next) = it.policy.cell_decide(c, now, it.cost);
                verdicts.push(v);
                nexts.push(next);
            }
            Guard::Log(l) => {
                verdicts.push(it.policy.log_decide(l, now, it.cost, false));
                nexts.push(Cell::default());
            }
        }
    }
    let commit = op == Op::Consume
        && items
            .iter()
            .zip(&verdicts)
            .all(|(it, v)| v.allowed || it.rule.rule.shadow);
    if commit {
        for (((it, g), v), next) in items
            .iter()
            .zip(guards.iter_mut())
            .zip(&verdicts)
            .zip(nexts)
        {
            if !v.allowed {
                continue;
            }
            match g {
                Guard::Cell(c) => **c = next,
                Guard::Log(l) => {
                    it.policy.log_decide(l, now, it.cost, true);
                }
            }
        }
    }
    Ok(verdicts)
}

impl Limiter {
    /// Starts building a limiter for `rules`.
    pub fn builder(rules: RuleSet) -> LimiterBuilder {
        LimiterBuilder {
            rules,
            clock: Arc::new(SystemClock::new()),
            shadow: false,
            near_limit_ratio: 800,
            max_keys: DEFAULT_MAX_KEYS,
            max_waiters: 10_000,
            backend: Backend::Memory,
        }
    }

    /// Replaces the rules at runtime. Rules whose id and algorithm are
    /// unchanged keep their per-key state and counters, so a quota change
    /// takes effect on the next check without a burst of extra traffic;
    /// a changed algorithm starts that rule afresh. Checks in flight finish
    /// on the old rules. Cost: compiles the set; one atomic pointer swap.
    ///
    /// # Errors
    /// [`Error::Config`] when the new set is invalid (the old one stays).
    pub fn update_rules(&self, rules: RuleSet) -> Result<()> {
        let old = self.inner.compiled.load_full();
        let new = compile(&rules, Some(&old), self.inner.max_keys)?;
        self.inner.compiled.store(Arc::new(new));
        tracing::info!(rules = rules.rules.len(), "rate-limit rules updated");
        Ok(())
    }

    /// The rules in force.
    pub fn rules(&self) -> RuleSet {
        let c = self.inner.compiled.load();
        RuleSet {
            rules: c.rules.iter().map(|r| r.rule.clone()).collect(),
            costs: c.costs.clone(),
        }
    }

    /// Checks `req` and consumes its cost from every applicable rule if all
    /// admit it. Does not wait: `delay`/`queue` rules return `Rejected` with
    /// their action (use [`acquire`](Self::acquire) to wait).
    ///
    /// # Errors
    /// [`Error::InsufficientCapacity`] when a cost exceeds a rule's capacity;
    /// [`Error::StoreFull`] when a rule's store is full of active keys;
    /// Redis failures are not errors: the Redis backend's failure mode decides
    /// (the decision is marked [`fallback`](Decision::fallback)).
    pub async fn check(&self, req: &RequestInfo<'_>) -> Result<Decision> {
        self.run(req, Op::Consume).await
    }

    /// The decision [`check`](Self::check) would give now, consuming nothing.
    ///
    /// # Errors
    /// As [`check`](Self::check).
    pub async fn peek(&self, req: &RequestInfo<'_>) -> Result<Decision> {
        self.run(req, Op::Peek).await
    }

    /// Gives back the cost of `req` (set [`RequestInfo::cost`] to refund part)
    /// to every applicable rule, e.g. when the request failed before doing work.
    ///
    /// # Errors
    /// As [`check`](Self::check).
    pub async fn refund(&self, req: &RequestInfo<'_>) -> Result<()> {
        self.run(req, Op::Refund).await.map(|_| ())
    }

    /// [`check`](Self::check) without `async`, for the in-memory backend
    /// (on a Redis limiter it decides with the local fallback state).
    ///
    /// # Errors
    /// As [`check`](Self::check).
    pub fn check_local(&self, req: &RequestInfo<'_>) -> Result<Decision> {
        self.run_local(req, Op::Consume, false)
    }

    /// [`peek`](Self::peek) without `async`, for the in-memory backend.
    ///
    /// # Errors
    /// As [`check`](Self::check).
    pub fn peek_local(&self, req: &RequestInfo<'_>) -> Result<Decision> {
        self.run_local(req, Op::Peek, false)
    }

    /// Checks `req` and applies the deciding rule's throttle action:
    /// `reject` and `degrade` answer at once; `delay` sleeps until the request
    /// is admitted if that takes at most `max_wait`; `queue` waits in a
    /// first-in-first-out queue per rule and key (bounded by `max_waiters`,
    /// and in total by the builder's `max_waiters`), each waiter at most
    /// `max_wait`. Waits use `tokio::time`.
    ///
    /// # Errors
    /// As [`check`](Self::check).
    pub async fn acquire(&self, req: &RequestInfo<'_>) -> Result<Decision> {
        let d = self.check(req).await?;
        if d.outcome != Outcome::Rejected {
            return Ok(d);
        }
        match d.action {
            ThrottleAction::Delay { max_wait } => {
                let deadline = tokio::time::Instant::now() + max_wait;
                self.wait_and_retry(req, d, deadline).await
            }
            ThrottleAction::Queue {
                max_waiters,
                max_wait,
            } => {
                let deadline = tokio::time::Instant::now() + max_wait;
                let Some(report) = d.rules.iter().find(|r| Some(&r.rule) == d.rule.as_ref()) else {
                    return Ok(d);
                };
                let key = (report.rule.clone(), report.key);
                let q = self
                    .inner
                    .queues
                    .entry(key.clone())
                    .or_insert_with(|| {
                        Arc::new(WaitQueue {
                            turn: tokio::sync::Semaphore::new(1),
                            waiting: AtomicU32::new(0),
                        })
                    })
                    .clone();
                let leave = Leave {
                    inner: &self.inner,
                    key,
                    queue: q.clone(),
                };
                let queued = q.waiting.fetch_add(1, Ordering::AcqRel);
                let total = self.inner.waiters.fetch_add(1, Ordering::AcqRel);
                if queued >= max_waiters || total >= self.inner.max_waiters {
                    tracing::debug!(rule = %leave.key.0, queued, "rate-limit queue full; rejected");
                    return Ok(d);
                }
                let Ok(Ok(_permit)) = tokio::time::timeout_at(deadline, q.turn.acquire()).await
                else {
                    return Ok(d);
                };
                let d = self.check(req).await?;
                if d.outcome != Outcome::Rejected {
                    return Ok(d);
                }
                let out = self.wait_and_retry(req, d, deadline).await;
                drop(leave);
                out
            }
            _ => Ok(d),
        }
    }

    async fn wait_and_retry(
        &self,
        req: &RequestInfo<'_>,
        mut d: Decision,
        deadline: tokio::time::Instant,
    ) -> Result<Decision> {
        for _ in 0..MAX_WAIT_ROUNDS {
            let Some(wait) = d.retry_after else {
                return Ok(d);
            };
            if tokio::time::Instant::now() + wait > deadline {
                tracing::debug!(rule = ?d.rule, ?wait, "rate-limit wait longer than max_wait; rejected");
                return Ok(d);
            }
            tokio::time::sleep(wait).await;
            d = self.check(req).await?;
            if d.outcome != Outcome::Rejected {
                return Ok(d);
            }
        }
        Ok(d)
    }

    /// A copy of the decision counters. Cost: reads 31 atomics per rule.
    pub fn metrics(&self) -> MetricsSnapshot {
        let c = self.inner.compiled.load();
        snapshot(c.rules.iter().map(|r| (&r.id, &*r.metrics)))
    }

    /// Evicts idle keys of every rule now (this also happens automatically);
    /// returns how many. Cost: O(keys).
    pub fn sweep(&self) -> usize {
        let c = self.inner.compiled.load();
        let now = self.inner.clock.now_micros();
        c.rules
            .iter()
            .map(|r| {
                let p = r.idle_policy;
                match &*r.store {
                    RuleStore::Cells(s) => s.sweep(now, |c, n| p.cell_idle(c, n)),
                    RuleStore::Logs(s) => s.sweep(now, |l, n| p.log_idle(l, n)),
                }
            })
            .sum()
    }

    /// Keys held in memory over all rules.
    pub fn keys_in_memory(&self) -> usize {
        let c = self.inner.compiled.load();
        c.rules
            .iter()
            .map(|r| match &*r.store {
                RuleStore::Cells(s) => s.len(),
                RuleStore::Logs(s) => s.len(),
            })
            .sum()
    }

    fn plan<'c>(&self, c: &'c Compiled, req: &RequestInfo<'_>) -> Result<Vec<Item<'c>>> {
        let tier_idx = req.tier.map_or(0, |t| t.index() + 1);
        let mut items = Vec::with_capacity(c.rules.len());
        for r in &c.rules {
            if !r.rule.matches(req.method, req.path) {
                continue;
            }
            let Some(key) = req.key_for(r.rule.scope) else {
                continue;
            };
            let policy = r.policies[tier_idx];
            let cost = req
                .cost
                .or(r.rule.cost)
                .unwrap_or_else(|| c.costs.cost(req.path));
            if cost > policy.capacity {
                return Err(Error::InsufficientCapacity {
                    rule: r.rule.id.clone(),
                    cost,
                    capacity: policy.capacity,
                });
            }
            items.push(Item {
                rule: r,
                policy,
                key,
                cost,
            });
        }
        Ok(items)
    }

    fn run_local(&self, req: &RequestInfo<'_>, op: Op, fallback: bool) -> Result<Decision> {
        let c = self.inner.compiled.load();
        let items = self.plan(&c, req)?;
        let now = self.inner.clock.now_micros();
        let verdicts = decide_memory(&items, now, op)?;
        Ok(self.combine(&items, &verdicts, req.tier, op, fallback))
    }

    async fn run(&self, req: &RequestInfo<'_>, op: Op) -> Result<Decision> {
        match &self.inner.backend {
            Backend::Memory => self.run_local(req, op, false),
            #[cfg(feature = "redis")]
            Backend::Redis(rb) => {
                let c = self.inner.compiled.load_full();
                let items = self.plan(&c, req)?;
                if items.is_empty() {
                    return Ok(self.combine(&items, &[], req.tier, op, false));
                }
                match rb.decide(&items, op).await {
                    Ok(verdicts) => Ok(self.combine(&items, &verdicts, req.tier, op, false)),
                    Err(e) => match rb.failure_mode() {
                        crate::redis::FailureMode::Local => self.run_local(req, op, true),
                        mode => {
                            tracing::debug!(error = %e, ?mode, "rate-limit decided by failure mode");
                            let allowed = mode == crate::redis::FailureMode::Open;
                            let verdicts: Vec<Verdict> = items
                                .iter()
                                .map(|it| Verdict {
                                    allowed,
                                    remaining: if allowed { it.policy.capacity } else { 0 },
                                    reset_us: 0,
                                    retry_us: (!allowed).then(|| rb.retry_interval_us()),
                                })
                                .collect();
                            Ok(self.combine(&items, &verdicts, req.tier, op, true))
                        }
                    },
                }
            }
        }
    }

    fn combine(
        &self,
        items: &[Item<'_>],
        verdicts: &[Verdict],
        tier: Option<Tier>,
        op: Op,
        fallback: bool,
    ) -> Decision {
        let mut d = Decision {
            outcome: Outcome::Allowed,
            rule: None,
            action: ThrottleAction::Reject,
            remaining: u64::MAX,
            quota: 0,
            window: Duration::ZERO,
            reset: Duration::ZERO,
            retry_after: None,
            shadow_rejected: false,
            fallback,
            tier,
            rules: Vec::with_capacity(items.len()),
        };
        if op == Op::Refund || verdicts.len() != items.len() {
            d.remaining = 0;
            return d;
        }
        let mut decider: Option<usize> = None;
        let mut blocked = false;
        for (i, (it, v)) in items.iter().zip(verdicts).enumerate() {
            let shadow = it.rule.rule.shadow || self.inner.shadow;
            d.rules.push(RuleReport {
                rule: it.rule.id.clone(),
                key: it.key,
                allowed: v.allowed,
                shadow,
                cost: it.cost,
                quota: it.policy.capacity,
                window: it.policy.window(),
                remaining: v.remaining,
                reset: Duration::from_micros(v.reset_us),
                retry_after: v.retry_us.map(|r| Duration::from_micros(r.max(1))),
                action: it.rule.rule.action,
            });
            if !v.allowed && shadow {
                d.shadow_rejected = true;
            }
            if !v.allowed && !shadow {
                let longer = decider.is_none_or(|j| {
                    !blocked
                        || v.retry_us.unwrap_or(u64::MAX) > verdicts[j].retry_us.unwrap_or(u64::MAX)
                });
                if longer {
                    decider = Some(i);
                }
                blocked = true;
            } else if !blocked && decider.is_none_or(|j| v.remaining < verdicts[j].remaining) {
                decider = Some(i);
            }
            d.remaining = d.remaining.min(v.remaining);
        }
        // Not committed (a non-shadow rule rejected): the rules that would have
        // admitted were not charged, so their real remaining includes this cost.
        let committed = items
            .iter()
            .zip(verdicts)
            .all(|(it, v)| v.allowed || it.rule.rule.shadow);
        if op == Op::Consume && !committed {
            for r in d.rules.iter_mut().filter(|r| r.allowed) {
                r.remaining = (r.remaining + r.cost).min(r.quota);
            }
            d.remaining = d.rules.iter().map(|r| r.remaining).min().unwrap_or(0);
        }
        if d.remaining == u64::MAX {
            d.remaining = 0;
        }
        if let Some(j) = decider {
            let r = &d.rules[j];
            d.rule = Some(r.rule.clone());
            d.action = r.action;
            d.quota = r.quota;
            d.window = r.window;
            d.reset = r.reset;
            if blocked {
                d.retry_after = r.retry_after;
                d.outcome = if r.action == ThrottleAction::Degrade {
                    Outcome::Degraded
                } else {
                    Outcome::Rejected
                };
            }
        }
        if op == Op::Consume {
            self.record(items, verdicts, &d);
            if d.outcome != Outcome::Allowed {
                tracing::debug!(rule = ?d.rule, outcome = d.outcome.as_str(), retry_after = ?d.retry_after, "rate limited");
            } else if d.shadow_rejected {
                tracing::debug!("shadow rate-limit rule would have rejected");
            }
        }
        d
    }

    fn record(&self, items: &[Item<'_>], verdicts: &[Verdict], d: &Decision) {
        let ratio = self.inner.near_limit_ratio;
        for ((it, v), r) in items.iter().zip(verdicts).zip(&d.rules) {
            let outcome = if v.allowed {
                if d.outcome == Outcome::Allowed {
                    RuleOutcome::Allowed
                } else {
                    RuleOutcome::NotCharged
                }
            } else if r.shadow {
                RuleOutcome::ShadowRejected
            } else if d.outcome == Outcome::Degraded {
                RuleOutcome::Degraded
            } else {
                RuleOutcome::Rejected
            };
            let near = outcome == RuleOutcome::Allowed
                && u128::from(v.remaining) * 1000
                    <= u128::from(1000 - ratio) * u128::from(it.policy.capacity);
            it.rule.metrics.record(d.tier, outcome, near);
        }
    }
}

/// Leaves a wait queue on drop (also when the waiting future is cancelled).
struct Leave<'a> {
    inner: &'a Inner,
    key: (Arc<str>, KeyId),
    queue: Arc<WaitQueue>,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.inner.waiters.fetch_sub(1, Ordering::AcqRel);
        if self.queue.waiting.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner
                .queues
                .remove_if(&self.key, |_, q| q.waiting.load(Ordering::Acquire) == 0);
        }
    }
}
