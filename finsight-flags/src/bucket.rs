//! Bucketing exactly as the Python services do it (SPEC §1.3).

use crate::context::Unit;

/// The md5 digest of `"<flag_key>:<kind>:<id>"` (UTF-8), computed without
/// allocating.
pub(crate) fn digest(flag_key: &str, unit: Unit<'_>) -> [u8; 16] {
    let mut ctx = md5::Context::new();
    ctx.consume(flag_key.as_bytes());
    ctx.consume(match unit {
        Unit::User(_) => b":user:".as_slice(),
        Unit::Tenant(_) => b":tenant:".as_slice(),
    });
    ctx.consume(unit.id().as_bytes());
    ctx.finalize().0
}

/// The bucket (`0..=99`) of a digest: the first 8 hex digits as an integer,
/// modulo 100.
pub(crate) fn bucket_of_digest(d: &[u8; 16]) -> u8 {
    // Python: int(md5(key).hexdigest()[:8], 16) % 100 == big-endian u32 of the first 4 bytes.
    (u32::from_be_bytes([d[0], d[1], d[2], d[3]]) % 100) as u8
}

/// The bucket (`0..=99`) of `unit` for `flag_key`, as the Python services
/// compute it: `int(md5("<flag_key>:user:<user_id>").hexdigest()[:8], 16) % 100`
/// (`:tenant:` when bucketing by tenant). Hashes the UTF-8 bytes; costs one
/// md5 of the key (no allocation).
///
/// ```
/// use finsight_flags::{bucket, Unit};
/// assert_eq!(bucket("new-dashboard", Unit::User("user-123")), 45);
/// assert_eq!(bucket("ai-insights", Unit::User("42")), 13);
/// ```
pub fn bucket(flag_key: &str, unit: Unit<'_>) -> u8 {
    bucket_of_digest(&digest(flag_key, unit))
}

/// The index of the variant a bucket selects, with the Python services'
/// float arithmetic: `scaled = (bucket / 100.0) * total`, then the first
/// variant whose cumulative weight exceeds `scaled`.
pub(crate) fn pick_variant(
    bucket: u8,
    weights: impl Iterator<Item = f64>,
    total: f64,
) -> Option<usize> {
    let scaled = (f64::from(bucket) / 100.0) * total;
    let mut cumulative = 0.0;
    for (i, w) in weights.enumerate() {
        cumulative += w;
        if scaled < cumulative {
            return Some(i);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_vectors_from_prior_art() {
        assert_eq!(bucket("new-dashboard", Unit::User("user-123")), 45);
        assert_eq!(bucket("new-dashboard", Unit::User("user-456")), 72);
        assert_eq!(bucket("ai-insights", Unit::User("42")), 13);
    }

    #[test]
    fn float_boundary_is_python_arithmetic() {
        // bucket 29 with total 100: 0.29 * 100 = 28.999999999999996 < 29
        let w = [29.0, 71.0];
        assert_eq!(pick_variant(29, w.iter().copied(), 100.0), Some(0));
        assert_eq!(pick_variant(30, w.iter().copied(), 100.0), Some(1));
    }
}
