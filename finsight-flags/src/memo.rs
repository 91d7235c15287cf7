//! A bounded memo of bucketing digests, so a warm evaluation skips md5.

use quick_cache::Equivalent;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::bucket;
use crate::context::Unit;

#[derive(Debug, Clone)]
struct MemoKey {
    flag: Arc<str>,
    tenant: bool,
    id: Box<str>,
}

// The flag is identified by the address of its key's `Arc<str>` (held by
// the entry, so the address cannot be reused while the entry lives): hashing
// a pointer is cheaper than hashing the key. After a reload the flag has a
// new `Arc` and its units miss once; old entries age out.
impl PartialEq for MemoKey {
    fn eq(&self, other: &Self) -> bool {
        self.tenant == other.tenant && Arc::ptr_eq(&self.flag, &other.flag) && self.id == other.id
    }
}

impl Eq for MemoKey {}

impl Hash for MemoKey {
    #[inline]
    fn hash<H: Hasher>(&self, h: &mut H) {
        (
            Arc::as_ptr(&self.flag).cast::<u8>() as usize,
            self.tenant,
            &*self.id,
        )
            .hash(h);
    }
}

struct MemoRef<'a> {
    flag: &'a Arc<str>,
    tenant: bool,
    id: &'a str,
}

// The hot path of a warm evaluation: `#[inline]` so it is inlined into the
// cache lookup whatever codegen unit each lands in.
impl Hash for MemoRef<'_> {
    #[inline]
    fn hash<H: Hasher>(&self, h: &mut H) {
        (
            Arc::as_ptr(self.flag).cast::<u8>() as usize,
            self.tenant,
            self.id,
        )
            .hash(h);
    }
}

impl Equivalent<MemoKey> for MemoRef<'_> {
    #[inline]
    fn equivalent(&self, key: &MemoKey) -> bool {
        self.tenant == key.tenant && Arc::ptr_eq(self.flag, &key.flag) && self.id == &*key.id
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memo_returns_the_md5_digest_for_every_flag_and_unit() {
        let memo = BucketMemo::new(64);
        let a: Arc<str> = Arc::from("flag-a");
        let a2: Arc<str> = Arc::from("flag-a"); // same key, another set
        let b: Arc<str> = Arc::from("flag-b");
        for round in 0..3 {
            for i in 0..100 {
                let id = format!("user-{i}");
                for unit in [Unit::User(&id), Unit::Tenant(&id)] {
                    for f in [&a, &a2, &b] {
                        assert_eq!(
                            memo.digest(f, unit),
                            bucket::digest(f, unit),
                            "round {round}"
                        );
                    }
                }
            }
        }
        assert!(memo.cache.len() <= 64);
    }
}
