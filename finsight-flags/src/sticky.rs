//! Sticky assignments (SPEC §1.4): the first assignment of a unit is kept.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::context::Unit;
use crate::error::Error;

/// What a unit was assigned on a sticky flag.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Assignment {
    /// In (`true`) or out (`false`) of a rollout (boolean and percentage flags).
    Rollout(bool),
    /// A variant id of a multivariate flag. Served again only while the flag
    /// still has a variant with this id.
    Variant(Arc<str>),
}

impl Assignment {
    /// The stored form: `in`, `out` or `variant:<id>`.
    pub fn encode(&self) -> String {
        match self {
            Self::Rollout(true) => "in".to_owned(),
            Self::Rollout(false) => "out".to_owned(),
            Self::Variant(id) => format!("variant:{id}"),
        }
    }

    /// Parses [`Assignment::encode`]'s form.
    pub fn decode(s: &str) -> Option<Self> {
        match s {
            "in" => Some(Self::Rollout(true)),
            "out" => Some(Self::Rollout(false)),
            _ => s
                .strip_prefix("variant:")
                .map(|id| Self::Variant(Arc::from(id))),
        }
    }
}

/// Identifies one unit on one flag.
#[derive(Debug, Clone, Copy)]
pub struct StickyKey<'a> {
    /// The flag key.
    pub flag_key: &'a str,
    /// The bucketing unit (user or tenant).
    pub unit: Unit<'a>,
    /// md5 of the bucketing key `"<flag_key>:<kind>:<id>"`, already computed
    /// for the bucket: a stable 128-bit identity of (flag, unit).
    pub digest: [u8; 16],
}

impl StickyKey<'_> {
    /// `"<flag_key>:<kind>:<id>"`, the SPEC §1.3 bucketing key (allocates).
    pub fn bucketing_key(&self) -> String {
        format!("{}:{}:{}", self.flag_key, self.unit.kind(), self.unit.id())
    }
}

/// A boxed future returned by [`StickyStore::preload`].
pub type PreloadFuture<'a> = Pin<Box<dyn Future<Output = Result<usize, Error>> + Send + 'a>>;

/// Storage of sticky assignments.
///
/// `get` and `put` are called *during evaluation*: they must not block or do
/// I/O (keep a local copy; persist write-behind, load with `preload`). A
/// store that cannot answer returns `None` and the engine serves the
/// computed bucket.
pub trait StickyStore: Send + Sync + Debug + 'static {
    /// The stored assignment, if any. Must not block.
    fn get(&self, key: &StickyKey<'_>) -> Option<Assignment>;
    /// Stores a first assignment. Must not block. A store shared between
    /// processes must keep an assignment already stored by another one
    /// (SPEC §1.4: the first assignment is kept), as the Redis store does
    /// with `SET … NX`.
    fn put(&self, key: &StickyKey<'_>, assignment: Assignment);
    /// Replaces a stored assignment that no longer fits the flag (its
    /// variant was removed, or the flag changed type), so that it is not
    /// served or re-assigned again. Must not block. The default is
    /// [`put`](Self::put), right for a store whose `put` overwrites.
    fn replace(&self, key: &StickyKey<'_>, assignment: Assignment) {
        self.put(key, assignment);
    }
    /// Loads the assignments of `keys` from a remote store into the local
    /// copy, ahead of evaluation. Returns how many were found. The default
    /// does nothing (an in-process store has nothing to load).
    fn preload<'a>(&'a self, keys: Vec<OwnedStickyKey>) -> PreloadFuture<'a> {
        let _ = keys;
        Box::pin(std::future::ready(Ok(0)))
    }
}

/// An owned [`StickyKey`], for [`StickyStore::preload`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct OwnedStickyKey {
    /// The flag key.
    pub flag_key: String,
    /// `"user"` or `"tenant"`.
    pub kind: &'static str,
    /// The user or tenant id.
    pub id: String,
    /// As [`StickyKey::digest`].
    pub digest: [u8; 16],
}

impl OwnedStickyKey {
    /// Borrows it as a [`StickyKey`].
    pub fn as_key(&self) -> StickyKey<'_> {
        StickyKey {
            flag_key: &self.flag_key,
            unit: if self.kind == "user" {
                Unit::User(&self.id)
            } else {
                Unit::Tenant(&self.id)
            },
            digest: self.digest,
        }
    }

    /// `"<flag_key>:<kind>:<id>"`.
    pub fn bucketing_key(&self) -> String {
        self.as_key().bucketing_key()
    }
}

/// A bounded in-process store: at most `capacity` assignments, least
/// recently/frequently used evicted first (`quick_cache`, CLOCK-Pro).
///
/// Keyed by the 16-byte digest, so `get` hashes 16 bytes and does not
/// allocate; each entry costs about 64 bytes plus the variant id's `Arc`.
/// Entries do not expire: an assignment lives until capacity evicts it or
/// the process ends (the Redis store adds the 24 h TTL of the Python
/// services).
#[derive(Debug, Clone)]
pub struct MemoryStickyStore {
    cache: Arc<quick_cache::sync::Cache<u128, Assignment>>,
}

impl MemoryStickyStore {
    /// A store holding at most `capacity` assignments.
    pub fn new(capacity: usize) -> Self {
        Self {
            cache: Arc::new(quick_cache::sync::Cache::new(capacity.max(1))),
        }
    }

    /// Number of stored assignments.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// Maximum number of assignments kept.
    pub fn capacity(&self) -> u64 {
        self.cache.capacity()
    }
}

impl Default for MemoryStickyStore {
    /// 100,000 assignments.
    fn default() -> Self {
        Self::new(100_000)
    }
}

impl StickyStore for MemoryStickyStore {
    fn get(&self, key: &StickyKey<'_>) -> Option<Assignment> {
        self.cache.get(&u128::from_be_bytes(key.digest))
    }

    fn put(&self, key: &StickyKey<'_>, assignment: Assignment) {
        self.cache
            .insert(u128::from_be_bytes(key.digest), assignment);
    }
}
