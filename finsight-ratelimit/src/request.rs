//! What a check needs to know about a request.

use std::net::IpAddr;

use crate::rule::{KeyId, Scope, Tier, key_material};

/// The facts about one request that rules match and key on. Borrowed, so
/// building one allocates nothing.
///
/// ```
/// use finsight_ratelimit::{RequestInfo, Tier};
/// let req = RequestInfo::new("GET", "/api/v1/orders")
///     .tenant("acme")
///     .user("u-42")
///     .ip("203.0.113.9".parse().unwrap())
///     .api_key("sk_live_abc")
///     .tier(Tier::Professional);
/// assert_eq!(req.path, "/api/v1/orders");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestInfo<'a> {
    /// HTTP method (matched case-insensitively).
    pub method: &'a str,
    /// Request path (without query).
    pub path: &'a str,
    /// Tenant id, for tenant-scoped rules.
    pub tenant: Option<&'a str>,
    /// User id, for user-scoped rules.
    pub user: Option<&'a str>,
    /// Client address, for IP-scoped rules (IPv6 counts per /64 prefix).
    pub ip: Option<IpAddr>,
    /// Raw API key, for API-key-scoped rules; only its SHA-256 prefix is kept.
    pub api_key: Option<&'a str>,
    /// Subscription tier, selecting the rules' tier overrides.
    pub tier: Option<Tier>,
    /// Cost override for this request (otherwise the rule's cost or the cost table).
    pub cost: Option<u64>,
}

impl<'a> RequestInfo<'a> {
    /// A request with only method and path known.
    pub fn new(method: &'a str, path: &'a str) -> Self {
        Self {
            method,
            path,
            tenant: None,
            user: None,
            ip: None,
            api_key: None,
            tier: None,
            cost: None,
        }
    }

    /// Sets the tenant.
    #[must_use]
    pub fn tenant(mut self, tenant: &'a str) -> Self {
        self.tenant = Some(tenant);
        self
    }

    /// Sets the user.
    #[must_use]
    pub fn user(mut self, user: &'a str) -> Self {
        self.user = Some(user);
        self
    }

    /// Sets the client IP.
    #[must_use]
    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.ip = Some(ip);
        self
    }

    /// Sets the API key.
    #[must_use]
    pub fn api_key(mut self, key: &'a str) -> Self {
        self.api_key = Some(key);
        self
    }

    /// Sets the tier.
    #[must_use]
    pub fn tier(mut self, tier: Tier) -> Self {
        self.tier = Some(tier);
        self
    }

    /// Sets an explicit cost.
    #[must_use]
    pub fn cost(mut self, cost: u64) -> Self {
        self.cost = Some(cost);
        self
    }

    /// The hashed key for `scope`, or `None` when the request lacks that
    /// field (the rule then does not apply). Cost: one SHA-256.
    pub fn key_for(&self, scope: Scope) -> Option<KeyId> {
        match scope {
            Scope::Global => Some(KeyId::GLOBAL),
            Scope::Tenant => self.tenant.map(key_material),
            Scope::User => self.user.map(key_material),
            Scope::ApiKey => self.api_key.map(key_material),
            Scope::Ip => self.ip.map(|ip| key_material(&ip_key(ip))),
        }
    }
}

/// IPv4 as is; IPv6 by its /64 prefix (one host usually owns a whole /64,
/// so per-address keys would let it bypass the limit and flood memory).
pub(crate) fn ip_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}
