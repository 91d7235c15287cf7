//! A tower [`Layer`] that rate-limits HTTP requests with a [`Limiter`].
//!
//! For every request the layer builds a [`RequestInfo`] from:
//! * the API key header (default `x-api-key`),
//! * [`UserId`] / [`TenantId`] / [`Tier`] request extensions (inserted by your
//!   authentication layer, which runs before this one),
//! * the client IP: the peer address ([`PeerAddr`] or `SocketAddr` extension,
//!   or your own [`RateLimitLayer::peer_ip`] function). `X-Forwarded-For` is
//!   only believed when the peer is in the explicit trusted-proxy list, and
//!   then read right to left, skipping trusted hops: the first untrusted
//!   address is the client. A client cannot forge its way past the limit.
//!
//! It then calls [`Limiter::acquire`] (which applies `delay`/`queue` actions)
//! and answers:
//! * admitted or degraded: the inner service's response, with the IETF
//!   `RateLimit` and `RateLimit-Policy` headers (draft-ietf-httpapi-ratelimit-headers-11:
//!   `RateLimit-Policy: "user";q=1000;w=60`, `RateLimit: "user";r=998;t=60`,
//!   one item per applicable rule); degraded responses also carry
//!   `RateLimit-Degraded: ?1`, and the [`Decision`] is in the request's
//!   extensions for the handler to read;
//! * rejected: `429 Too Many Requests` with `Retry-After` (whole seconds,
//!   rounded up, never 0, equal to the deciding rule's `t`) and both headers;
//! * limiter error (a store full of active keys, a cost above a rule's
//!   capacity): `503` / `429` without calling the inner service.
//!
//! # Backpressure or rejection
//! [`Mode::Reject`] (default): `poll_ready` is the inner service's; over-limit
//! requests get an immediate 429. [`Mode::Backpressure`]: `poll_ready` also
//! stays `Pending` while the *request-independent* rules (global scope, no
//! path or method filter) have no room, waking when they will, so a
//! `Buffer`/`LoadShed` in front sees the pressure; request-dependent rules
//! (per user, IP, ...) still answer 429 in `call`, because `poll_ready`
//! does not know the request. With a Redis backend each `poll_ready` in
//! backpressure mode costs one extra (peek) round trip.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use crate::decision::{Decision, Outcome, ceil_secs, ceil_secs0};
use crate::error::Error;
use crate::limiter::Limiter;
use crate::request::RequestInfo;
use crate::rule::Tier;

/// Request extension: the authenticated user's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserId(pub String);

/// Request extension: the tenant's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantId(pub String);

/// Request extension: the TCP peer's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// An IP network (`10.0.0.0/8`, `2001:db8::/32`, or one address) in the trusted-proxy list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpNet {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || {
            Error::config(
                None,
                format!("trusted proxy `{s}`: write an address or a CIDR such as 10.0.0.0/8"),
            )
        };
        let (a, p) = s
            .trim()
            .split_once('/')
            .map_or((s.trim(), None), |(a, p)| (a, Some(p)));
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }
}

/// Where `poll_ready` stands; see the [module docs](self#backpressure-or-rejection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Answer over-limit requests with 429 at once.
    #[default]
    Reject,
    /// Also hold `poll_ready` while the request-independent rules are exhausted.
    Backpressure,
}

type PeerFn = Arc<dyn Fn(&http::Extensions) -> Option<IpAddr> + Send + Sync>;

struct Config {
    api_key_header: HeaderName,
    trusted: Vec<IpNet>,
    peer_ip: PeerFn,
    mode: Mode,
}

/// Applies [`RateLimit`] to a service. See the [module docs](self).
#[derive(Clone)]
pub struct RateLimitLayer {
    limiter: Limiter,
    cfg: Arc<Config>,
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("limiter", &self.limiter)
            .field("api_key_header", &self.cfg.api_key_header)
            .field("trusted_proxies", &self.cfg.trusted)
            .field("mode", &self.cfg.mode)
            .finish_non_exhaustive()
    }
}

fn default_peer(ext: &http::Extensions) -> Option<IpAddr> {
    ext.get::<PeerAddr>()
        .map(|p| p.0.ip())
        .or_else(|| ext.get::<SocketAddr>().map(SocketAddr::ip))
}

impl RateLimitLayer {
    /// A layer over `limiter`: `x-api-key` header, no trusted proxies,
    /// [`Mode::Reject`], peer address from [`PeerAddr`] or `SocketAddr` extensions.
    pub fn new(limiter: Limiter) -> Self {
        Self {
            limiter,
            cfg: Arc::new(Config {
                api_key_header: HeaderName::from_static("x-api-key"),
                trusted: Vec::new(),
                peer_ip: Arc::new(default_peer),
                mode: Mode::Reject,
            }),
        }
    }

    fn cfg(&mut self) -> &mut Config {
        if Arc::get_mut(&mut self.cfg).is_none() {
            let c = &*self.cfg;
            self.cfg = Arc::new(Config {
                api_key_header: c.api_key_header.clone(),
                trusted: c.trusted.clone(),
                peer_ip: c.peer_ip.clone(),
                mode: c.mode,
            });
        }
        #[allow(clippy::unwrap_used)] // unique after the clone above
        Arc::get_mut(&mut self.cfg).unwrap()
    }

    /// The header carrying the API key.
    #[must_use]
    pub fn api_key_header(mut self, name: HeaderName) -> Self {
        self.cfg().api_key_header = name;
        self
    }

    /// Proxies whose `X-Forwarded-For` is believed (addresses or CIDRs).
    ///
    /// # Errors
    /// [`Error::Config`] for an entry that is not an address or CIDR.
    pub fn trusted_proxies<I, T>(mut self, proxies: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        let list = proxies
            .into_iter()
            .map(|p| p.as_ref().parse())
            .collect::<Result<Vec<IpNet>, _>>()?;
        self.cfg().trusted = list;
        Ok(self)
    }

    /// How to find the TCP peer's address in the request extensions, e.g. axum's
    /// `|e| e.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())`.
    #[must_use]
    pub fn peer_ip(
        mut self,
        f: impl Fn(&http::Extensions) -> Option<IpAddr> + Send + Sync + 'static,
    ) -> Self {
        self.cfg().peer_ip = Arc::new(f);
        self
    }

    /// Backpressure or immediate rejection.
    #[must_use]
    pub fn mode(mut self, mode: Mode) -> Self {
        self.cfg().mode = mode;
        self
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            limiter: self.limiter.clone(),
            cfg: self.cfg.clone(),
            ready: None,
        }
    }
}

type ReadyFut = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The rate-limiting service made by [`RateLimitLayer`].
pub struct RateLimit<S> {
    inner: S,
    limiter: Limiter,
    cfg: Arc<Config>,
    /// The backpressure wait; in a `Mutex` only to make the service `Sync`
    /// (it is reached through `&mut self`, so never locked).
    ready: Option<std::sync::Mutex<ReadyFut>>,
}

impl<S: Clone> Clone for RateLimit<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            cfg: self.cfg.clone(),
            ready: None,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

/// The client address: the peer, or when the peer is a trusted proxy the
/// right-most untrusted `X-Forwarded-For` entry.
pub(crate) fn client_ip(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(peer) {
        return Some(peer);
    }
    let mut hops: Vec<&str> = Vec::new();
    for v in headers.get_all("x-forwarded-for") {
        let Ok(s) = v.to_str() else { return Some(peer) };
        hops.extend(s.split(',').map(str::trim));
    }
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else { break };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    Some(client)
}

fn header(v: String) -> Option<HeaderValue> {
    HeaderValue::from_str(&v).ok()
}

/// Writes `RateLimit-Policy` and `RateLimit` (draft-11 structured fields).
fn set_headers(d: &Decision, h: &mut HeaderMap) {
    if d.rules.is_empty() {
        return;
    }
    let policy: Vec<String> = d
        .rules
        .iter()
        .map(|r| format!("\"{}\";q={};w={}", r.rule, r.quota, ceil_secs(r.window)))
        .collect();
    let state: Vec<String> = d
        .rules
        .iter()
        .map(|r| {
            let t = match (r.allowed, r.retry_after) {
                (false, Some(retry)) => ceil_secs(retry),
                _ => ceil_secs0(r.reset),
            };
            format!("\"{}\";r={};t={}", r.rule, r.remaining, t)
        })
        .collect();
    if let Some(v) = header(policy.join(", ")) {
        h.insert(HeaderName::from_static("ratelimit-policy"), v);
    }
    if let Some(v) = header(state.join(", ")) {
        h.insert(HeaderName::from_static("ratelimit"), v);
    }
}

fn status_response<B: Default>(status: StatusCode) -> Response<B> {
    let mut r = Response::new(B::default());
    *r.status_mut() = status;
    r
}

fn rejected<B: Default>(d: &Decision) -> Response<B> {
    let mut r = status_response(StatusCode::TOO_MANY_REQUESTS);
    set_headers(d, r.headers_mut());
    if let Some(s) = d.retry_after_secs() {
        r.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(s));
    }
    r
}

struct Owned {
    method: String,
    path: String,
    user: Option<String>,
    tenant: Option<String>,
    api_key: Option<String>,
    ip: Option<IpAddr>,
    tier: Option<Tier>,
}

impl Owned {
    fn info(&self) -> RequestInfo<'_> {
        RequestInfo {
            method: &self.method,
            path: &self.path,
            tenant: self.tenant.as_deref(),
            user: self.user.as_deref(),
            ip: self.ip,
            api_key: self.api_key.as_deref(),
            tier: self.tier,
            cost: None,
        }
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for RateLimit<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Send + 'static,
    ResB: Default + Send + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResB>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        if self.cfg.mode == Mode::Backpressure {
            let slot = self.ready.get_or_insert_with(|| {
                let limiter = self.limiter.clone();
                std::sync::Mutex::new(Box::pin(async move {
                    // Request-independent rules only: global scope, no path/method filter.
                    let probe = RequestInfo::new("", "");
                    for _ in 0..1_000_000u32 {
                        match limiter.peek(&probe).await {
                            Ok(d) if d.outcome == Outcome::Rejected => {
                                let wait = d.retry_after.unwrap_or(Duration::from_millis(10));
                                tracing::trace!(?wait, "rate-limit backpressure");
                                tokio::time::sleep(wait).await;
                            }
                            _ => return,
                        }
                    }
                }))
            });
            let fut = slot
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match fut.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) => self.ready = None,
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limiter = self.limiter.clone();
        let cfg = &self.cfg;
        let ext = req.extensions();
        let owned = Owned {
            method: req.method().as_str().to_owned(),
            path: req.uri().path().to_owned(),
            user: ext.get::<UserId>().map(|u| u.0.clone()),
            tenant: ext.get::<TenantId>().map(|t| t.0.clone()),
            api_key: req
                .headers()
                .get(&cfg.api_key_header)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            ip: client_ip((cfg.peer_ip)(ext), req.headers(), &cfg.trusted),
            tier: ext.get::<Tier>().copied(),
        };
        Box::pin(async move {
            match limiter.acquire(&owned.info()).await {
                Ok(d) if d.is_allowed() => {
                    req.extensions_mut().insert(d.clone());
                    let mut res = inner.call(req).await?;
                    set_headers(&d, res.headers_mut());
                    if d.outcome == Outcome::Degraded {
                        res.headers_mut().insert(
                            HeaderName::from_static("ratelimit-degraded"),
                            HeaderValue::from_static("?1"),
                        );
                    }
                    Ok(res)
                }
                Ok(d) => Ok(rejected(&d)),
                Err(e @ Error::InsufficientCapacity { .. }) => {
                    tracing::warn!(error = %e, "request can never pass the rate limit");
                    Ok(status_response(StatusCode::TOO_MANY_REQUESTS))
                }
                Err(e) => {
                    tracing::error!(error = %e, "rate limiter failed");
                    Ok(status_response(StatusCode::SERVICE_UNAVAILABLE))
                }
            }
        })
    }
}
