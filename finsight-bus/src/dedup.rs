//! Duplicate filter by message id: skip messages already handled (at-least-once
//! delivery redelivers after reconnects and lost acks).

use crate::error::Result;
use futures_util::future::BoxFuture;
use std::time::Duration;

/// Remembers handled message ids.
pub trait Dedup: Send + Sync + std::fmt::Debug + 'static {
    /// Whether `message_id` was marked (and not yet forgotten).
    fn seen<'a>(&'a self, message_id: &'a str) -> BoxFuture<'a, Result<bool>>;
    /// Records `message_id` as handled.
    fn mark<'a>(&'a self, message_id: &'a str) -> BoxFuture<'a, Result<()>>;
}

/// In-process duplicate filter on a bounded cache (moka): at most
/// `max_entries` ids, each forgotten after `ttl`. Memory ≈ `max_entries` ×
/// (id length + ~100 B). Per replica only: use a Redis-backed filter when
/// several replicas consume one queue.
#[derive(Debug, Clone)]
pub struct MemoryDedup {
    cache: moka::sync::Cache<String, ()>,
}

impl MemoryDedup {
    /// A filter holding at most `max_entries` ids for `ttl` each.
    pub fn new(max_entries: u64, ttl: Duration) -> Self {
        Self {
            cache: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .time_to_live(ttl)
                .build(),
        }
    }
}

impl Dedup for MemoryDedup {
    fn seen<'a>(&'a self, message_id: &'a str) -> BoxFuture<'a, Result<bool>> {
        let hit = self.cache.contains_key(message_id);
        Box::pin(std::future::ready(Ok(hit)))
    }
    fn mark<'a>(&'a self, message_id: &'a str) -> BoxFuture<'a, Result<()>> {
        self.cache.insert(message_id.to_owned(), ());
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(feature = "redis-dedup")]
pub use redis_dedup::RedisDedup;

#[cfg(feature = "redis-dedup")]
mod redis_dedup {
    use super::*;
    use crate::error::Error;
    use redis::AsyncCommands;

    /// Duplicate filter shared by every replica: one Redis key per id
    /// (`<prefix><message id>`, `SET … PX ttl`), so memory is bounded by the
    /// ids marked within `ttl`. One round trip per check and per mark.
    #[derive(Clone)]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-dedup")))]
    pub struct RedisDedup {
        conn: redis::aio::ConnectionManager,
        prefix: String,
        ttl: Duration,
    }

    impl std::fmt::Debug for RedisDedup {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("RedisDedup")
                .field("prefix", &self.prefix)
                .field("ttl", &self.ttl)
                .finish_non_exhaustive()
        }
    }

    impl RedisDedup {
        /// Connects to `url`; keys are `<prefix><message id>` and live `ttl`.
        ///
        /// # Errors
        /// [`Error::Connect`] when Redis cannot be reached.
        pub async fn connect(url: &str, prefix: &str, ttl: Duration) -> Result<Self> {
            let connect = |e: redis::RedisError| Error::Connect {
                endpoint: crate::redact(url),
                source: Box::new(e),
            };
            let client = redis::Client::open(url).map_err(connect)?;
            let conn = redis::aio::ConnectionManager::new(client)
                .await
                .map_err(connect)?;
            Ok(Self {
                conn,
                prefix: prefix.to_owned(),
                ttl,
            })
        }
    }

    impl Dedup for RedisDedup {
        fn seen<'a>(&'a self, message_id: &'a str) -> BoxFuture<'a, Result<bool>> {
            Box::pin(async move {
                let mut c = self.conn.clone();
                c.exists(format!("{}{message_id}", self.prefix))
                    .await
                    .map_err(|e| Error::backend("dedup EXISTS", e))
            })
        }
        fn mark<'a>(&'a self, message_id: &'a str) -> BoxFuture<'a, Result<()>> {
            Box::pin(async move {
                let mut c = self.conn.clone();
                let ms = u64::try_from(self.ttl.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1);
                redis::cmd("SET")
                    .arg(format!("{}{message_id}", self.prefix))
                    .arg(1)
                    .arg("PX")
                    .arg(ms)
                    .query_async::<()>(&mut c)
                    .await
                    .map_err(|e| Error::backend("dedup SET", e))
            })
        }
    }
}
