//! Connectivity of the bus and the cache as `finsight_resilience::Health`
//! checks (features `health-bus`, `health-cache`).

use std::time::Duration;

use finsight_resilience::Health;

/// Adds a finsight-bus connection check to a [`Health`] (feature `health-bus`).
#[cfg(feature = "health-bus")]
#[cfg_attr(docsrs, doc(cfg(feature = "health-bus")))]
pub trait HealthBusExt: Sized {
    /// Adds check `name`: healthy while the bus' backend reports
    /// `ConnectionState::Connected`; reconnecting or disconnected fails the
    /// check (degraded, or unhealthy if `critical`).
    ///
    /// Cost per report: one `Bus::health` call, which does one round trip
    /// per declared queue on RabbitMQ and Redis (queue depths), nothing on
    /// the in-memory broker; bounded by `timeout`.
    fn bus_check(
        self,
        name: impl Into<String>,
        bus: &finsight_bus::Bus,
        critical: bool,
        timeout: Duration,
    ) -> Self;
}

#[cfg(feature = "health-bus")]
impl HealthBusExt for Health {
    fn bus_check(
        self,
        name: impl Into<String>,
        bus: &finsight_bus::Bus,
        critical: bool,
        timeout: Duration,
    ) -> Self {
        let bus = bus.clone();
        self.check(name, critical, timeout, move || {
            let bus = bus.clone();
            async move {
                let h = bus.health().await;
                if h.state == finsight_bus::ConnectionState::Connected {
                    Ok(())
                } else {
                    Err(format!(
                        "bus connection {:?} ({} reconnects so far, {} publishes unconfirmed)",
                        h.state, h.reconnects, h.unconfirmed
                    ))
                }
            }
        })
    }
}

/// Adds a finsight-cache Redis-link check to a [`Health`] (feature `health-cache`).
#[cfg(feature = "health-cache")]
#[cfg_attr(docsrs, doc(cfg(feature = "health-cache")))]
pub trait HealthCacheExt: Sized {
    /// Adds check `name`: fails while the cache's cross-instance
    /// invalidation channel to Redis is down (`InvalidationStatus::Connecting`:
    /// the cache serves from L1 and counts L2 errors, and other instances'
    /// writes may not evict this one's L1). Healthy when subscribed, when
    /// invalidation is off, and for a cache without Redis.
    ///
    /// Cost per report: one atomic load, no I/O (the cache pings its
    /// invalidation connections itself, every heartbeat, so the check lags
    /// an outage by about two heartbeats).
    fn cache_check<V: finsight_cache::Value>(
        self,
        name: impl Into<String>,
        cache: &finsight_cache::Cache<V>,
        critical: bool,
    ) -> Self;
}

#[cfg(feature = "health-cache")]
impl HealthCacheExt for Health {
    fn cache_check<V: finsight_cache::Value>(
        self,
        name: impl Into<String>,
        cache: &finsight_cache::Cache<V>,
        critical: bool,
    ) -> Self {
        let cache = cache.clone();
        self.check(name, critical, Duration::from_secs(1), move || {
            let status = cache.invalidation_status();
            async move {
                match status {
                    Some(finsight_cache::redis::InvalidationStatus::Connecting) => Err(
                        "cache link to Redis down: serving L1, L2 unavailable, invalidations paused"
                            .to_owned(),
                    ),
                    _ => Ok(()),
                }
            }
        })
    }
}
