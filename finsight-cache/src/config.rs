//! Per-type cache configurations, settable from serde data.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The largest duration a configuration accepts (10 years).
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Which layers a cache type uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Layers {
    /// In-process memory only (no Redis even when one is configured).
    L1,
    /// Redis only: every read is a round trip; nothing is kept in process.
    L2,
    /// In-process L1 in front of Redis L2 (the default).
    Both,
}

/// How L1 is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Capacity {
    /// At most this many entries.
    Entries(u64),
    /// At most this many bytes, counted as key length + length of the value's
    /// JSON (the same bytes that go to Redis before compression). Computing
    /// the weight costs one `serde_json` serialization per L1-only write.
    Bytes(u64),
}

/// Configuration of one cache type (e.g. `user_session`): key prefix, TTLs,
/// layers, compression and refresh policy.
///
/// Durations are written in seconds (floats allowed) in serde data:
///
/// ```
/// let cfg: finsight_cache::CacheConfig = serde_json::from_str(
///     r#"{"name": "quotes", "prefix": "quote:", "ttl": 30, "refresh_ahead": 0.2}"#,
/// ).unwrap();
/// assert_eq!(cfg.ttl, std::time::Duration::from_secs(30));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CacheConfig {
    /// Name used in logs, stats and errors, e.g. `"user_session"`.
    pub name: String,
    /// Prepended to every key in Redis (`prefix + key`), e.g. `"session:"`.
    /// Also the prefix watched for cross-instance invalidation.
    pub prefix: String,
    /// Time to live of a value in Redis and the upper bound in L1.
    #[serde(with = "secs")]
    pub ttl: Duration,
    /// Shorter L1 time to live (bounds staleness when invalidation messages
    /// are lost). `None` = `ttl`.
    #[serde(with = "opt_secs")]
    pub l1_ttl: Option<Duration>,
    /// Layers this type uses.
    pub layers: Layers,
    /// Store gzip(JSON) in Redis instead of JSON (the Python services'
    /// `compress=True`). L1 always holds the decoded value.
    pub compress: bool,
    /// L1 bound.
    pub capacity: Capacity,
    /// Refresh-ahead threshold as a fraction of `ttl`: once the remaining
    /// time to live falls under `refresh_ahead × ttl`, `get_or_load` serves
    /// the current value and reloads in the background. `None` = off.
    pub refresh_ahead: Option<f64>,
    /// Probabilistic early refresh (XFetch, β): refresh when
    /// `now − δ·β·ln(rand) ≥ expiry`, δ being the last load's duration.
    /// `None` = off; `1.0` is the paper's default.
    pub early_refresh_beta: Option<f64>,
    /// TTL jitter as a fraction: each write's TTL is `ttl × (1 ± jitter)`,
    /// uniformly, so keys written together do not expire together.
    pub jitter: f64,
    /// Time to live of a negative entry ("not found" from the loader),
    /// kept in L1 only. `None` = negative results are not cached.
    #[serde(with = "opt_secs")]
    pub negative_ttl: Option<Duration>,
    /// Serve-stale-while-revalidate window after expiry: `get_or_load`
    /// returns the expired value at once and reloads in the background.
    #[serde(with = "secs")]
    pub stale_while_revalidate: Duration,
    /// Stale-if-error window after expiry: when the loader fails, the expired
    /// value is served for at most this long after its expiry (the hard
    /// limit; the larger of both windows bounds how long an entry stays in L1).
    #[serde(with = "secs")]
    pub stale_if_error: Duration,
    /// Timeout of each Redis call.
    #[serde(with = "secs")]
    pub l2_timeout: Duration,
    /// Redis lease (`SET NX PX`) held by the one instance that loads a missing
    /// key or refreshes it; other instances wait for its value (bounded by the
    /// lease) instead of loading too. `None` = no lease.
    #[serde(with = "opt_secs")]
    pub lease: Option<Duration>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            name: "default".to_owned(),
            prefix: String::new(),
            ttl: Duration::from_secs(300),
            l1_ttl: None,
            layers: Layers::Both,
            compress: false,
            capacity: Capacity::Entries(10_000),
            refresh_ahead: None,
            early_refresh_beta: None,
            jitter: 0.0,
            negative_ttl: None,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            l2_timeout: Duration::from_millis(250),
            lease: None,
        }
    }
}

impl CacheConfig {
    /// A configuration with this name, prefix and TTL and the defaults for the rest.
    pub fn new(name: impl Into<String>, prefix: impl Into<String>, ttl: Duration) -> Self {
        Self {
            name: name.into(),
            prefix: prefix.into(),
            ttl,
            ..Self::default()
        }
    }

    /// The Python services' `user_session`: prefix `session:`, 1800 s.
    pub fn user_session() -> Self {
        Self::new("user_session", "session:", Duration::from_secs(1800))
    }

    /// The Python services' `feature_flags`: prefix `flags:`, 300 s.
    pub fn feature_flags() -> Self {
        Self::new("feature_flags", "flags:", Duration::from_secs(300))
    }

    /// The Python services' `api_response`: prefix `api:`, 3600 s, gzip-compressed in Redis.
    pub fn api_response() -> Self {
        Self {
            compress: true,
            ..Self::new("api_response", "api:", Duration::from_secs(3600))
        }
    }

    /// The Python services' `trading_data`: prefix `trade:`, 60 s,
    /// refresh-ahead once less than 20 % of the TTL is left.
    pub fn trading_data() -> Self {
        Self {
            refresh_ahead: Some(0.2),
            ..Self::new("trading_data", "trade:", Duration::from_secs(60))
        }
    }

    /// The presets above by name.
    pub fn presets() -> BTreeMap<String, CacheConfig> {
        [
            Self::user_session(),
            Self::feature_flags(),
            Self::api_response(),
            Self::trading_data(),
        ]
        .into_iter()
        .map(|c| (c.name.clone(), c))
        .collect()
    }

    /// Sets the layers.
    #[must_use]
    pub fn with_layers(mut self, layers: Layers) -> Self {
        self.layers = layers;
        self
    }

    /// Sets the L1 bound.
    #[must_use]
    pub fn with_capacity(mut self, capacity: Capacity) -> Self {
        self.capacity = capacity;
        self
    }

    /// Sets the refresh-ahead threshold (fraction of `ttl`).
    #[must_use]
    pub fn with_refresh_ahead(mut self, threshold: f64) -> Self {
        self.refresh_ahead = Some(threshold);
        self
    }

    /// Sets the negative-entry TTL.
    #[must_use]
    pub fn with_negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = Some(ttl);
        self
    }

    /// Sets the stale windows (while revalidating, and on loader error).
    #[must_use]
    pub fn with_stale(mut self, while_revalidate: Duration, if_error: Duration) -> Self {
        self.stale_while_revalidate = while_revalidate;
        self.stale_if_error = if_error;
        self
    }

    /// Sets gzip compression in Redis.
    #[must_use]
    pub fn with_compression(mut self, compress: bool) -> Self {
        self.compress = compress;
        self
    }

    /// Sets the TTL jitter fraction.
    #[must_use]
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets the L1 TTL.
    #[must_use]
    pub fn with_l1_ttl(mut self, ttl: Duration) -> Self {
        self.l1_ttl = Some(ttl);
        self
    }

    /// Sets the Redis lease duration.
    #[must_use]
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Sets the per-call Redis timeout.
    #[must_use]
    pub fn with_l2_timeout(mut self, timeout: Duration) -> Self {
        self.l2_timeout = timeout;
        self
    }

    /// Sets the early-refresh β.
    #[must_use]
    pub fn with_early_refresh(mut self, beta: f64) -> Self {
        self.early_refresh_beta = Some(beta);
        self
    }

    /// Checks ranges; called by the cache builder.
    ///
    /// # Errors
    /// [`Error::Config`] naming the field and the allowed range.
    pub fn validate(&self) -> Result<()> {
        let bad = |message: String| {
            Err(Error::Config {
                cache: self.name.clone(),
                message,
            })
        };
        if self.ttl.is_zero() {
            return bad("`ttl` must be greater than 0 s".into());
        }
        for (field, d) in [
            ("ttl", Some(self.ttl)),
            ("l1_ttl", self.l1_ttl),
            ("negative_ttl", self.negative_ttl),
            ("stale_while_revalidate", Some(self.stale_while_revalidate)),
            ("stale_if_error", Some(self.stale_if_error)),
            ("l2_timeout", Some(self.l2_timeout)),
            ("lease", self.lease),
        ] {
            if let Some(d) = d
                && d > MAX_DURATION
            {
                return bad(format!(
                    "`{field}` is {} s, the largest allowed is {} s (10 years)",
                    d.as_secs(),
                    MAX_DURATION.as_secs()
                ));
            }
        }
        if self.l1_ttl.is_some_and(|t| t.is_zero()) {
            return bad("`l1_ttl` must be greater than 0 s (leave it unset for `ttl`)".into());
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return bad(format!("`jitter` is {}, it must be in [0, 1)", self.jitter));
        }
        if let Some(t) = self.refresh_ahead
            && !(t > 0.0 && t < 1.0)
        {
            return bad(format!("`refresh_ahead` is {t}, it must be in (0, 1)"));
        }
        if let Some(b) = self.early_refresh_beta
            && !(b.is_finite() && b > 0.0 && b <= 1000.0)
        {
            return bad(format!(
                "`early_refresh_beta` is {b}, it must be in (0, 1000]"
            ));
        }
        if self.l2_timeout.is_zero() {
            return bad("`l2_timeout` must be greater than 0 s".into());
        }
        match self.capacity {
            Capacity::Entries(0) | Capacity::Bytes(0) => {
                return bad("`capacity` must be greater than 0".into());
            }
            _ => {}
        }
        Ok(())
    }

    pub(crate) fn uses_l1(&self) -> bool {
        matches!(self.layers, Layers::L1 | Layers::Both)
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn uses_l2(&self) -> bool {
        matches!(self.layers, Layers::L2 | Layers::Both)
    }
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(|_| {
            serde::de::Error::custom(format!(
                "{v} is not a duration in seconds (a non-negative number)"
            ))
        })
    }
}

mod opt_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        match Option::<f64>::deserialize(d)? {
            None => Ok(None),
            Some(v) => Duration::try_from_secs_f64(v).map(Some).map_err(|_| {
                serde::de::Error::custom(format!(
                    "{v} is not a duration in seconds (a non-negative number)"
                ))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_the_python_services() {
        let p = CacheConfig::presets();
        assert_eq!(p["user_session"].prefix, "session:");
        assert_eq!(p["user_session"].ttl, Duration::from_secs(1800));
        assert_eq!(p["feature_flags"].prefix, "flags:");
        assert_eq!(p["feature_flags"].ttl, Duration::from_secs(300));
        assert_eq!(p["api_response"].prefix, "api:");
        assert!(p["api_response"].compress);
        assert_eq!(p["api_response"].ttl, Duration::from_secs(3600));
        assert_eq!(p["trading_data"].prefix, "trade:");
        assert_eq!(p["trading_data"].ttl, Duration::from_secs(60));
        assert_eq!(p["trading_data"].refresh_ahead, Some(0.2));
        for c in p.values() {
            c.validate().unwrap();
        }
    }

    #[test]
    fn round_trips_through_serde() {
        let c = CacheConfig::api_response().with_negative_ttl(Duration::from_millis(1500));
        let json = serde_json::to_string(&c).unwrap();
        let back: CacheConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
        let named: BTreeMap<String, CacheConfig> = serde_json::from_str(
            r#"{"quotes": {"name": "quotes", "prefix": "q:", "ttl": 2.5, "layers": "l1",
                 "capacity": {"bytes": 1048576}}}"#,
        )
        .unwrap();
        assert_eq!(named["quotes"].ttl, Duration::from_millis(2500));
        assert_eq!(named["quotes"].capacity, Capacity::Bytes(1 << 20));
        assert_eq!(named["quotes"].layers, Layers::L1);
    }

    #[test]
    fn rejects_bad_values_with_the_field_name() {
        let err = serde_json::from_str::<CacheConfig>(r#"{"ttl": -1}"#).unwrap_err();
        assert!(err.to_string().contains("not a duration"), "{err}");
        let err = serde_json::from_str::<CacheConfig>(r#"{"tll": 1}"#).unwrap_err();
        assert!(err.to_string().contains("tll"), "{err}");
        let err = CacheConfig::trading_data()
            .with_jitter(1.5)
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("jitter"), "{err}");
        let err = CacheConfig::new("huge", "h:", Duration::from_secs(u64::MAX / 4))
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("`ttl`"), "{err}");
        let err = CacheConfig::trading_data()
            .with_early_refresh(f64::MAX)
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("early_refresh_beta"), "{err}");
        let err = CacheConfig::trading_data()
            .with_refresh_ahead(0.0)
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("refresh_ahead"), "{err}");
    }
}
