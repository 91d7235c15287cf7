//! A bounded memo of bucketing digests, so a warm evaluation skips md5.

use quick_cache::Equivalent;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::bucket;
use crate::context::Unit;

#[derive(Debug, Clone, PartialEq, Eq)]
struct MemoKey {
    flag: Arc<str>,
    tenant: bool,
    id: Box<str>,
}

impl Hash for MemoKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        (&*self.flag, self.tenant, &*self.id).hash(h);
    }
}

struct MemoRef<'a> {
    flag: &'a str,
    tenant: bool,
    id: &'a str,
}

impl Hash for MemoRef<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        (self.flag, self.tenant, self.id).hash(h);
    }
}

impl Equivalent<MemoKey> for MemoRef<'_> {
    fn equivalent(&self, key: &MemoKey) -> bool {
        self.tenant == key.tenant && self.id == &*key.id && self.flag == &*key.flag
    }
}

/// md5 digests of `(flag key, unit)`, at most `capacity` of them. The digest
/// is a pure function of its key, so an entry never goes stale; a miss
/// computes md5 and stores the entry (one allocation for the id).
#[derive(Debug)]
pub(crate) struct BucketMemo {
    cache: quick_cache::sync::Cache<MemoKey, [u8; 16]>,
}

impl BucketMemo {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            cache: quick_cache::sync::Cache::new(capacity.max(1)),
        }
    }

    pub(crate) fn digest(&self, flag: &Arc<str>, unit: Unit<'_>) -> [u8; 16] {
        let tenant = matches!(unit, Unit::Tenant(_));
        let probe = MemoRef {
            flag,
            tenant,
            id: unit.id(),
        };
        if let Some(d) = self.cache.get(&probe) {
            return d;
        }
        let d = bucket::digest(flag, unit);
        self.cache.insert(
            MemoKey {
                flag: flag.clone(),
                tenant,
                id: Box::from(unit.id()),
            },
            d,
        );
        d
    }
}
