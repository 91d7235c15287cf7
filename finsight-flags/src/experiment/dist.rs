//! Thin, non-panicking wrappers over the `statrs` distributions.
//!
//! `statrs` asserts on out-of-range probabilities; every wrapper checks its
//! argument first and returns NaN instead, and every caller validates its
//! parameters before it gets here, so NaN never reaches a result.

use statrs::distribution::{ChiSquared, ContinuousCDF, Normal, StudentsT};

/// `z` with `P(Z <= z) = p` for the standard normal, `0 < p < 1`.
pub(crate) fn normal_quantile(p: f64) -> f64 {
    if p > 0.0 && p < 1.0 {
        Normal::standard().inverse_cdf(p)
    } else {
        f64::NAN
    }
}

/// Two-sided p-value of a standard normal statistic: `2 P(Z >= |z|)`.
pub(crate) fn normal_two_sided_p(z: f64) -> f64 {
    if z.is_nan() {
        return f64::NAN;
    }
    (2.0 * Normal::standard().sf(z.abs())).min(1.0)
}

/// `t` with `P(T <= t) = p` for Student's t with `df > 0` degrees of freedom.
pub(crate) fn t_quantile(p: f64, df: f64) -> f64 {
    if !(p > 0.0 && p < 1.0) {
        return f64::NAN;
    }
    match StudentsT::new(0.0, 1.0, df) {
        Ok(t) => t.inverse_cdf(p),
        Err(_) => f64::NAN,
    }
}

/// Two-sided p-value of a t statistic: `2 P(T >= |t|)`.
pub(crate) fn t_two_sided_p(t: f64, df: f64) -> f64 {
    if t.is_nan() {
        return f64::NAN;
    }
    match StudentsT::new(0.0, 1.0, df) {
        Ok(dist) => (2.0 * dist.sf(t.abs())).min(1.0),
        Err(_) => f64::NAN,
    }
}

/// Upper tail `P(X >= x)` of the chi-square distribution with `df` degrees of freedom.
pub(crate) fn chi_square_sf(x: f64, df: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    match ChiSquared::new(df) {
        Ok(dist) => dist.sf(x),
        Err(_) => f64::NAN,
    }
}
