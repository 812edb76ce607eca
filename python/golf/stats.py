"""Small-sample statistics for comparing runs, in plain Python (no scipy): Student's t distribution, the
one-sided Welch test and t confidence intervals.

    student_t_cdf(t, df)            P(T <= t), df > 0 (need not be an integer: Welch's df is not)
    t_quantile(q, df)               the t with student_t_cdf(t, df) = q
    mean_ci(values, level=0.95)     (lo, hi): mean -+ t * std / sqrt(n); None below 2 values
    welch_less(a, b)                one-sided Welch t-test of mean(a) < mean(b): {"t", "df", "p"}, None below 2 each
"""

from __future__ import annotations

import math
import statistics


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df degrees of freedom (the regularised incomplete beta function)."""
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2, 0.5, x)
    return tail if t < 0 else 1.0 - tail


def _betainc(a: float, b: float, x: float) -> float:
    """I_x(a, b) by its continued fraction (modified Lentz), on the side where it converges fast."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300
    f, c, d = 1.0, 1.0, 0.0
    for i in range(400):
        m = i // 2
        if i == 0:
            num = 1.0
        elif i % 2 == 0:
            num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        f *= c * d
        if abs(1.0 - c * d) < 1e-15:
            break
    return front * (f - 1.0)


def t_quantile(q: float, df: float) -> float:
    """The q-quantile of Student's t with df degrees of freedom (bisection on the CDF, to 1e-10)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"t_quantile: q must be in (0, 1), found {q}")
    lo, hi = -1.0, 1.0
    while student_t_cdf(lo, df) > q:
        lo *= 2
    while student_t_cdf(hi, df) < q:
        hi *= 2
    while hi - lo > 1e-10 * max(1.0, abs(lo)):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if student_t_cdf(mid, df) < q else (lo, mid)
    return 0.5 * (lo + hi)


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """The two-sided t confidence interval of the mean; None below two values."""
    n = len(values)
    if n < 2:
        return None
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return mean - half, mean + half


def welch_less(a: list[float], b: list[float]) -> dict | None:
    """One-sided Welch t-test of H1: mean(a) < mean(b) (unequal variances, Welch-Satterthwaite df): t, df and
    p = P(T <= t). None unless both have at least two values."""
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return None
    va, vb = statistics.variance(a) / na, statistics.variance(b) / nb
    diff = statistics.fmean(a) - statistics.fmean(b)
    if va + vb == 0:  # no spread at all: the sign decides
        return {"t": math.copysign(math.inf, diff) if diff else 0.0, "df": float(na + nb - 2),
                "p": 0.0 if diff < 0 else (1.0 if diff > 0 else 0.5)}
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1))
    return {"t": t, "df": df, "p": student_t_cdf(t, df)}
