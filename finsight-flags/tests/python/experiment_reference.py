#!/usr/bin/env python3
"""Reference values for the statistics in `finsight_flags::experiment`.

Run from the repository root:

    python3 -m pip install --quiet scipy statsmodels
    python3 finsight-flags/tests/python/experiment_reference.py

It writes `finsight-flags/tests/data/experiments/reference.json`, which
`finsight-flags/tests/experiment_reference.rs` reads (the Rust tests need no
Python). Every number comes from SciPy or statsmodels; where a quantity has no
library function (the delta-method interval for a relative lift of means) the
closed form is written out below with SciPy's distribution functions and
states exactly which formula the Rust code must also implement.

Source of every expected value (T = treatment, C = control, a = alpha):

sample_size_proportions
    control_exact = statsmodels.stats.proportion.samplesize_proportions_2indep_onetail(
                        diff=p_C - p_T, prop2=p_T, power=power, ratio=r,
                        alpha=a, alternative="two-sided")
    which is statsmodels.stats.power.normal_sample_size_one_tail with
    alpha/2, i.e. the closed form (Fleiss, pooled variance under H0,
    unpooled under H1, far tail ignored):
        pbar  = (p_C + r p_T) / (1 + r)
        n_C   = ( z_{1-a/2} sqrt(pbar (1-pbar) (1 + 1/r))
                + z_{power} sqrt(p_C (1-p_C) + p_T (1-p_T) / r) )^2 / (p_T - p_C)^2
        n_T   = r n_C
    (statsmodels' sample 1 is our control with p1 = p_T + diff = p_C and
    nobs2 = ratio * nobs1 = n_T, so its `ratio` is our n_T / n_C.)
    p_T = p_C + d for an absolute MDE d, p_C (1 + d) for a relative one.
    (statsmodels' NormalIndPower with proportion_effectsize is the arcsine
    (Cohen's h) formula, a different one; it is deliberately not used.)

sample_size_means
    control_exact = statsmodels.stats.power.normal_sample_size_one_tail(
                        diff=delta, power=power, alpha=a/2,
                        std_null=sigma*sqrt(1 + 1/r))
        n_C = (z_{1-a/2} + z_{power})^2 sigma^2 (1 + 1/r) / delta^2,  n_T = r n_C
    both_tails_exact = statsmodels.stats.power.NormalIndPower().solve_power(
                        effect_size=delta/sigma, alpha=a, power=power,
                        ratio=r, alternative="two-sided")
    (the root of the power function including the far tail. The closed form
    ignores that tail, so it is never below this value: the tests check
    0 <= closed - both_tails <= 2 % of it; the gap only shows at low power.)

two_proportion
    z, p_value   = statsmodels.stats.proportion.proportions_ztest(
                       [x_T, x_C], [n_T, n_C], alternative="two-sided")
                   (pooled variance: pbar (1-pbar) (1/n_T + 1/n_C))
    rate CI      = statsmodels.stats.proportion.proportion_confint(
                       x, n, alpha=a, method="wilson")
    absolute CI  = statsmodels.stats.proportion.confint_proportions_2indep(
                       x_T, n_T, x_C, n_C, compare="diff", method="wald", alpha=a)
                   (p_T - p_C +- z_{1-a/2} sqrt(p_T(1-p_T)/n_T + p_C(1-p_C)/n_C))
    relative CI  = confint_proportions_2indep(..., compare="ratio",
                       method="log", alpha=a) minus 1
                   (Katz: exp(log(p_T/p_C) +- z sqrt(1/x_T - 1/n_T + 1/x_C - 1/n_C)) - 1)

chi_square (k x 2 table of conversions / non-conversions, k > 2)
    statistic, p_value, dof = scipy.stats.chi2_contingency(table, correction=False)

welch (raw samples; treatment is `a`, control is `b`)
    r = scipy.stats.ttest_ind(treatment, control, equal_var=False)
    t = r.statistic, p_value = r.pvalue, df = r.df (Welch-Satterthwaite),
    CI of mean_T - mean_C = r.confidence_interval(1 - a)
    per-variant mean and sample variance: numpy mean / var(ddof=1)
    relative lift CI (closed form, delta method on mean_T / mean_C):
        se = sqrt(v_T/n_T / m_C^2 + m_T^2 v_C/n_C / m_C^4)
        (m_T/m_C - 1) +- scipy.stats.norm.isf(a/2) * se

srm
    statistic, p_value = scipy.stats.chisquare(observed, f_exp=N w_i / sum(w))

Edge cases carry an `expected.insufficient` (the reason the Rust code must
report) or `expected.error` (a parameter the Rust code must reject). Where
SciPy/statsmodels return something there, the script asserts or notes it
(a nan z-test, a ValueError from chi2_contingency, an infinite Welch t).

Output is deterministic (seeded NumPy generator): re-running the script with
the same library versions rewrites reference.json byte for byte.
"""

import json
import math
import os
import sys
import warnings

import numpy as np
import scipy
import scipy.stats as st
import statsmodels
from statsmodels.stats.power import NormalIndPower, normal_sample_size_one_tail
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    proportions_ztest,
    samplesize_proportions_2indep_onetail,
)

warnings.simplefilter("ignore")

OUT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "..",
    "data",
    "experiments",
    "reference.json",
)


def f(x):
    """A finite float, or None for nan/inf (JSON has no nan)."""
    x = float(x)
    return x if math.isfinite(x) else None


def target_rate(base, mde):
    (kind, d), = mde.items()
    return base + d if kind == "absolute" else base * (1 + d)


# --------------------------------------------------------------------------
# sample size, proportions
def sample_size_proportions():
    cases = []
    valid = [
        # baseline, mde, alpha, power, ratio
        (0.10, {"absolute": 0.02}, 0.05, 0.80, 1.0),
        (0.10, {"relative": 0.10}, 0.05, 0.80, 1.0),
        (0.05, {"relative": 0.05}, 0.05, 0.90, 1.0),
        (0.50, {"absolute": -0.05}, 0.01, 0.80, 1.0),
        (0.02, {"absolute": 0.005}, 0.10, 0.80, 1.0),
        (0.30, {"relative": -0.20}, 0.05, 0.95, 1.0),
        (0.10, {"absolute": 0.02}, 0.05, 0.80, 2.0),
        (0.10, {"absolute": 0.02}, 0.05, 0.80, 0.5),
        (0.90, {"absolute": 0.05}, 0.05, 0.80, 1.0),
        (0.001, {"relative": 0.50}, 0.05, 0.80, 1.0),
        (0.25, {"absolute": 0.25}, 0.05, 0.50, 3.0),
        (0.99, {"absolute": -0.98}, 0.20, 0.60, 1.0),
        (0.5, {"absolute": 0.5}, 0.05, 0.8, 1.0),  # target rate exactly 1
    ]
    for base, mde, alpha, power, ratio in valid:
        pt = target_rate(base, mde)
        n_c = samplesize_proportions_2indep_onetail(
            diff=base - pt, prop2=pt, power=power, ratio=ratio, alpha=alpha,
            alternative="two-sided",
        )
        cases.append({
            "baseline": base, "mde": mde, "alpha": alpha, "power": power,
            "ratio": ratio,
            "expected": {
                "treatment_rate": pt,
                "control_exact": f(n_c),
                "treatment_exact": f(n_c * ratio),
            },
        })
    invalid = [
        (0.0, {"absolute": 0.01}, 0.05, 0.8, 1.0, "baseline"),
        (1.0, {"absolute": -0.01}, 0.05, 0.8, 1.0, "baseline"),
        (0.1, {"absolute": 0.0}, 0.05, 0.8, 1.0, "minimum_detectable_effect"),
        (0.1, {"absolute": 0.95}, 0.05, 0.8, 1.0, "minimum_detectable_effect"),
        (0.1, {"relative": -1.5}, 0.05, 0.8, 1.0, "minimum_detectable_effect"),
        (0.1, {"absolute": 0.01}, 0.0, 0.8, 1.0, "alpha"),
        (0.1, {"absolute": 0.01}, 1.0, 0.8, 1.0, "alpha"),
        (0.1, {"absolute": 0.01}, 0.05, 1.0, 1.0, "power"),
        (0.1, {"absolute": 0.01}, 0.05, 0.8, 0.0, "ratio"),
    ]
    for base, mde, alpha, power, ratio, field in invalid:
        cases.append({
            "baseline": base, "mde": mde, "alpha": alpha, "power": power,
            "ratio": ratio, "expected": {"error": field},
        })
    return cases


# --------------------------------------------------------------------------
# sample size, means
def sample_size_means():
    cases = []
    valid = [
        # baseline mean, sigma, mde, alpha, power, ratio
        (100.0, 20.0, {"absolute": 5.0}, 0.05, 0.80, 1.0),
        (100.0, 20.0, {"relative": 0.05}, 0.05, 0.80, 1.0),
        (50.0, 50.0, {"absolute": -2.0}, 0.01, 0.90, 1.0),
        (10.0, 1.0, {"absolute": 0.1}, 0.05, 0.95, 1.0),
        (0.0, 3.0, {"absolute": 1.0}, 0.10, 0.80, 1.0),
        (200.0, 80.0, {"relative": -0.02}, 0.05, 0.80, 2.0),
        (200.0, 80.0, {"relative": 0.02}, 0.05, 0.80, 0.25),
        (1.0, 0.5, {"absolute": 0.5}, 0.05, 0.80, 1.0),
        (1.0, 0.5, {"absolute": 2.0}, 0.05, 0.80, 1.0),  # huge effect, tiny n
        (-40.0, 10.0, {"relative": 0.1}, 0.05, 0.80, 1.0),  # negative mean (losses)
        (5.0, 2.0, {"absolute": 0.3}, 0.20, 0.55, 1.5),
    ]
    solver = NormalIndPower()
    for mean, sigma, mde, alpha, power, ratio in valid:
        target = target_rate(mean, mde)
        delta = target - mean
        n_c = normal_sample_size_one_tail(
            diff=delta, power=power, alpha=alpha / 2,
            std_null=sigma * math.sqrt(1 + 1 / ratio),
        )
        both = solver.solve_power(
            effect_size=delta / sigma, alpha=alpha, power=power, ratio=ratio,
            alternative="two-sided",
        )
        cases.append({
            "baseline_mean": mean, "std_dev": sigma, "mde": mde,
            "alpha": alpha, "power": power, "ratio": ratio,
            "expected": {
                "treatment_mean": target,
                "control_exact": f(n_c),
                "treatment_exact": f(n_c * ratio),
                "both_tails_exact": f(np.asarray(both).item()),
            },
        })
    invalid = [
        (100.0, 0.0, {"absolute": 5.0}, 0.05, 0.8, 1.0, "std_dev"),
        (100.0, -1.0, {"absolute": 5.0}, 0.05, 0.8, 1.0, "std_dev"),
        (100.0, 20.0, {"absolute": 0.0}, 0.05, 0.8, 1.0, "minimum_detectable_effect"),
        (0.0, 20.0, {"relative": 0.1}, 0.05, 0.8, 1.0, "minimum_detectable_effect"),
        (100.0, 20.0, {"absolute": 5.0}, -0.1, 0.8, 1.0, "alpha"),
        (100.0, 20.0, {"absolute": 5.0}, 0.05, 0.0, 1.0, "power"),
    ]
    for mean, sigma, mde, alpha, power, ratio, field in invalid:
        cases.append({
            "baseline_mean": mean, "std_dev": sigma, "mde": mde,
            "alpha": alpha, "power": power, "ratio": ratio,
            "expected": {"error": field},
        })
    return cases


# --------------------------------------------------------------------------
# two-proportion z-test
def two_proportion():
    cases = []
    inputs = [
        # (n_C, x_C), (n_T, x_T), alpha
        ((10000, 1000), (10000, 1100), 0.05),
        ((5000, 250), (5100, 290), 0.05),
        ((1000, 100), (1000, 100), 0.05),  # identical
        ((20000, 1800), (19800, 1650), 0.01),  # negative lift
        ((200, 20), (180, 31), 0.10),
        ((100, 0), (100, 5), 0.05),  # zero conversions in control
        ((100, 7), (100, 0), 0.05),  # zero conversions in treatment
        ((50, 50), (50, 45), 0.05),  # all conversions in control
        ((40, 30), (40, 40), 0.05),  # all conversions in treatment
        ((1, 0), (1, 1), 0.05),  # tiny
        ((3, 1), (2, 2), 0.05),  # tiny
        ((5, 2), (7, 3), 0.20),  # tiny
        ((1000000, 31234), (1000000, 31876), 0.05),  # large
        ((400, 100), (1600, 480), 0.05),  # unequal sizes
        # insufficient data
        ((0, 0), (100, 10), 0.05),
        ((100, 10), (0, 0), 0.05),
        ((100, 0), (120, 0), 0.05),
        ((100, 100), (120, 120), 0.05),
    ]
    for (nc, xc), (nt, xt), alpha in inputs:
        case = {"control": {"units": nc, "conversions": xc},
                "treatment": {"units": nt, "conversions": xt}, "alpha": alpha}
        if nc == 0 or nt == 0:
            case["expected"] = {"insufficient": "empty_variant",
                                "variant": 0 if nc == 0 else 1}
            cases.append(case)
            continue
        pooled = (xc + xt) / (nc + nt)
        if pooled in (0.0, 1.0):
            # statsmodels divides by a zero standard error here (nan z).
            z, p = proportions_ztest([xt, xc], [nt, nc])
            assert not math.isfinite(p)
            case["expected"] = {"insufficient": "no_variation"}
            cases.append(case)
            continue
        z, p = proportions_ztest([xt, xc], [nt, nc], alternative="two-sided")
        wc = proportion_confint(xc, nc, alpha=alpha, method="wilson")
        wt = proportion_confint(xt, nt, alpha=alpha, method="wilson")
        lo, hi = confint_proportions_2indep(xt, nt, xc, nc, compare="diff",
                                            method="wald", alpha=alpha)
        exp = {
            "z": f(z), "p_value": f(p),
            "control_rate": xc / nc, "treatment_rate": xt / nt,
            "control_ci": [f(wc[0]), f(wc[1])],
            "treatment_ci": [f(wt[0]), f(wt[1])],
            "absolute_lift": xt / nt - xc / nc,
            "absolute_ci": [f(lo), f(hi)],
            "significant": bool(p < alpha),
        }
        if xc > 0:
            exp["relative_lift"] = (xt / nt) / (xc / nc) - 1
            if xt > 0:
                rlo, rhi = confint_proportions_2indep(
                    xt, nt, xc, nc, compare="ratio", method="log", alpha=alpha)
                exp["relative_ci"] = [f(rlo - 1), f(rhi - 1)]
            else:
                exp["relative_ci"] = None
        else:
            exp["relative_lift"] = None
            exp["relative_ci"] = None
        case["expected"] = exp
        cases.append(case)
    return cases


# --------------------------------------------------------------------------
# chi-square test of independence (k x 2)
def chi_square():
    cases = []
    inputs = [
        ([(1000, 100), (1000, 110), (1000, 125)], 0.05),
        ([(5000, 250), (5000, 260), (5000, 240), (5000, 300)], 0.05),
        ([(100, 10), (100, 10), (100, 10)], 0.05),
        ([(300, 0), (300, 3), (300, 9)], 0.05),  # zero conversions in one
        ([(50, 50), (50, 40), (50, 45)], 0.05),  # all conversions in one
        ([(3, 1), (4, 2), (2, 2)], 0.05),  # tiny
        ([(1, 0), (1, 1), (1, 0)], 0.05),  # tiny
        ([(10000, 3100), (9000, 2790), (11000, 3520), (10000, 3000), (10000, 3300)], 0.01),
        ([(200, 20), (400, 52), (800, 95)], 0.10),
        ([(123, 45), (77, 12), (300, 101)], 0.05),
        ([(1000, 999), (1000, 995), (1000, 1000)], 0.05),
        # insufficient data
        ([(100, 10), (0, 0), (100, 12)], 0.05),
        ([(100, 0), (100, 0), (100, 0)], 0.05),
        ([(100, 100), (80, 80), (10, 10)], 0.05),
    ]
    for variants, alpha in inputs:
        case = {"variants": [{"units": n, "conversions": x} for n, x in variants],
                "alpha": alpha}
        table = [[x, n - x] for n, x in variants]
        empty = [i for i, (n, _) in enumerate(variants) if n == 0]
        if empty:
            try:
                st.chi2_contingency(table, correction=False)
                raise AssertionError("scipy accepted an empty row")
            except ValueError:
                pass
            case["expected"] = {"insufficient": "empty_variant", "variant": empty[0]}
            cases.append(case)
            continue
        total_x = sum(x for _, x in variants)
        total_n = sum(n for n, _ in variants)
        if total_x in (0, total_n):
            try:
                st.chi2_contingency(table, correction=False)
                raise AssertionError("scipy accepted a zero column")
            except ValueError:
                pass
            case["expected"] = {"insufficient": "no_variation"}
            cases.append(case)
            continue
        r = st.chi2_contingency(table, correction=False)
        case["expected"] = {
            "statistic": f(r.statistic), "p_value": f(r.pvalue),
            "degrees_of_freedom": int(r.dof),
            "significant": bool(r.pvalue < alpha),
        }
        cases.append(case)
    return cases


# --------------------------------------------------------------------------
# Welch's t-test
def welch():
    rng = np.random.default_rng(20261123)
    cases = []

    def sample(n, mean, sd, kind="normal"):
        if kind == "lognormal":
            return rng.lognormal(mean, sd, n)
        return rng.normal(mean, sd, n)

    inputs = [
        (sample(500, 100, 20), sample(520, 103, 22), 0.05),
        (sample(50, 10, 2), sample(60, 10, 6), 0.05),
        (sample(800, 3.0, 1.2, "lognormal"), sample(800, 3.05, 1.2, "lognormal"), 0.05),
        (sample(8, 5, 1), sample(5, 7, 3), 0.10),
        (sample(2, 1, 1), sample(2, 2, 1), 0.05),  # tiny
        (sample(3, 0, 1), sample(30, 0.5, 1), 0.05),  # tiny control
        (sample(500, -50, 10), sample(500, -48, 10), 0.01),  # negative means
        (np.array([0.0, 0.0, 1.0, 0.0, 2.0]), np.array([3.0, 0.0, 0.0, 5.0, 1.0, 0.0]), 0.05),
        (np.full(10, 4.0), sample(10, 5, 1), 0.05),  # zero variance in control
        (sample(10, 5, 1), np.full(12, 5.0), 0.05),  # zero variance in treatment
        (np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0]), 0.05),  # identical
        (sample(300, 0.0, 1.0), sample(300, 0.2, 1.0), 0.05),  # control mean ~0
        # insufficient data
        (np.array([]), sample(10, 1, 1), 0.05),
        (np.array([5.0]), sample(10, 1, 1), 0.05),
        (sample(10, 1, 1), np.array([2.0]), 0.05),
        (np.full(4, 2.0), np.full(6, 3.0), 0.05),
    ]
    for control, treatment, alpha in inputs:
        control = [float(v) for v in control]
        treatment = [float(v) for v in treatment]
        case = {"control": control, "treatment": treatment, "alpha": alpha}
        nc, nt = len(control), len(treatment)
        if nc == 0 or nt == 0:
            case["expected"] = {"insufficient": "empty_variant",
                                "variant": 0 if nc == 0 else 1}
            cases.append(case)
            continue
        if nc < 2 or nt < 2:
            case["expected"] = {"insufficient": "too_few_observations",
                                "variant": 0 if nc < 2 else 1}
            cases.append(case)
            continue
        vc = float(np.var(control, ddof=1))
        vt = float(np.var(treatment, ddof=1))
        if vc == 0.0 and vt == 0.0:
            # SciPy returns t = +-inf, p = 0 and df = 1 here (nan when the
            # means are equal too): the standard error is zero, so the
            # statistic is undefined. The Rust code reports no_variation.
            case["expected"] = {"insufficient": "no_variation"}
            cases.append(case)
            continue
        r = st.ttest_ind(treatment, control, equal_var=False)
        ci = r.confidence_interval(1 - alpha)
        mc, mt = float(np.mean(control)), float(np.mean(treatment))
        exp = {
            "control_mean": mc, "treatment_mean": mt,
            "control_variance": vc, "treatment_variance": vt,
            "t": f(r.statistic), "p_value": f(r.pvalue), "df": f(r.df),
            "absolute_lift": mt - mc,
            "absolute_ci": [f(ci.low), f(ci.high)],
            "significant": bool(r.pvalue < alpha),
        }
        if mc != 0.0:
            rel = mt / mc - 1
            se = math.sqrt(vt / nt / mc**2 + mt**2 * (vc / nc) / mc**4)
            z = st.norm.isf(alpha / 2)
            exp["relative_lift"] = rel
            exp["relative_ci"] = [rel - z * se, rel + z * se]
        else:
            exp["relative_lift"] = None
            exp["relative_ci"] = None
        case["expected"] = exp
        cases.append(case)
    return cases


# --------------------------------------------------------------------------
# sample-ratio mismatch (chi-square goodness of fit)
def srm():
    cases = []
    inputs = [
        ([5000, 5000], [50, 50]),
        ([5000, 5200], [50, 50]),
        ([10000, 10400], [50, 50]),
        ([821, 815, 790], [34, 33, 33]),
        ([1800, 200], [90, 10]),
        ([1700, 300], [90, 10]),
        ([1, 0], [50, 50]),  # tiny
        ([3, 2, 0], [40, 30, 30]),  # tiny, empty variant
        ([0, 1000], [50, 50]),  # one variant empty: obvious mismatch
        ([250000, 251500, 249000, 250100], [25, 25, 25, 25]),
        ([60, 40], [60, 40]),
        ([12, 30, 58], [20, 30, 50]),
        # insufficient data
        ([0, 0], [50, 50]),
    ]
    for observed, weights in inputs:
        case = {"observed": observed, "weights": weights, "threshold": 0.001}
        total = sum(observed)
        if total == 0:
            case["expected"] = {"insufficient": "no_units"}
            cases.append(case)
            continue
        expected = [total * w / sum(weights) for w in weights]
        r = st.chisquare(observed, f_exp=expected)
        case["expected"] = {
            "statistic": f(r.statistic), "p_value": f(r.pvalue),
            "degrees_of_freedom": len(observed) - 1,
            "expected_counts": expected,
            "mismatch": bool(r.pvalue < 0.001),
        }
        cases.append(case)
    return cases


def main():
    data = {
        "generated_by": "finsight-flags/tests/python/experiment_reference.py",
        "python": sys.version.split()[0],
        "scipy": scipy.__version__,
        "statsmodels": statsmodels.__version__,
        "numpy": np.__version__,
        "sample_size_proportions": sample_size_proportions(),
        "sample_size_means": sample_size_means(),
        "two_proportion": two_proportion(),
        "chi_square": chi_square(),
        "welch": welch(),
        "srm": srm(),
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as fh:
        json.dump(data, fh, indent=1, allow_nan=False)
        fh.write("\n")
    counts = {k: len(v) for k, v in data.items() if isinstance(v, list)}
    print(f"wrote {os.path.normpath(OUT)}: {counts}")


if __name__ == "__main__":
    main()
