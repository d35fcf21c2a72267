"""The statistics of repeated runs (seeds), numpy/scipy only: no files.

- `describe`: n, mean, sample standard deviation, the standard error and a t-interval of the mean.
- `welch`: Welch's t-test of two groups' means (unequal variances), two-sided.
- `below_target`: the one-sided one-sample t-test that the mean is below a target loss, the rule
  of modded-nanogpt's records ("the mean is below the target at p < 0.01", over several seeds).

The formulas are written out (so the output can say t and the degrees of freedom); the tests
check every value against scipy.stats on fixed inputs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

PASS_P = 0.01  # modded-nanogpt's threshold for a record


@dataclass(frozen=True)
class Summary:
    """Mean ± std of one group; `ci` is the `level` t-interval of the mean (nan for n < 2)."""
    n: int
    mean: float
    std: float  # sample standard deviation (ddof=1); nan for n = 1
    sem: float  # standard error of the mean, std / sqrt(n)
    ci: tuple[float, float]
    level: float = 0.95


@dataclass(frozen=True)
class TTest:
    t: float
    df: float
    p: float
    diff: float  # the difference tested: mean(b) - mean(a), or mean - target
    ci: tuple[float, float] = (math.nan, math.nan)  # of `diff` (two-sided, at `level`)

    def passes(self, alpha: float = PASS_P) -> bool:
        return bool(self.p < alpha)


def _values(values, need: int = 1, what: str = "a group") -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what} has non-finite values: {x[~np.isfinite(x)].tolist()}")
    if len(x) < need:
        raise ValueError(f"{what} has {len(x)} value(s); this needs at least {need}")
    return x


def describe(values, level: float = 0.95) -> Summary:
    x = _values(values)
    n, mean = len(x), float(x.mean())
    if n < 2:
        return Summary(n, mean, math.nan, math.nan, (math.nan, math.nan), level)
    std = float(x.std(ddof=1))
    sem = std / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sem
    return Summary(n, mean, std, sem, (mean - half, mean + half), level)


def _t_p(t: float, df: float, alternative: str) -> float:
    """The p-value of a t statistic; a zero spread gives t = +-inf (p 0 or 1) or nan (no difference)."""
    if math.isnan(t):
        return math.nan
    if alternative == "less":
        return float(stats.t.cdf(t, df))
    return float(2 * stats.t.sf(abs(t), df))


def _ratio(diff: float, se: float) -> float:
    if se > 0:
        return diff / se
    return math.nan if diff == 0 else math.copysign(math.inf, diff)


def welch(a, b, level: float = 0.95) -> TTest:
    """Welch's two-sided t-test of mean(b) - mean(a), with the Welch-Satterthwaite degrees of
    freedom and a `level` interval of the difference."""
    a, b = _values(a, 2, "the first group"), _values(b, 2, "the second group")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    diff, se = float(b.mean() - a.mean()), math.sqrt(va + vb)
    # with no spread in either group the degrees of freedom are undefined: take the pooled n - 2
    df = float((va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))) if se > 0 \
        else float(len(a) + len(b) - 2)
    t = _ratio(diff, se)
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    return TTest(t, df, _t_p(t, df, "two-sided"), diff, (diff - half, diff + half))


def below_target(values, target: float, level: float = 0.95) -> TTest:
    """One-sided one-sample t-test of H1: mean < target. p < 0.01 is modded-nanogpt's PASS."""
    x = _values(values, 2, "the group")
    diff, se = float(x.mean() - target), float(x.std(ddof=1)) / math.sqrt(len(x))
    df = float(len(x) - 1)
    t = _ratio(diff, se)
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    return TTest(t, df, _t_p(t, df, "less"), diff, (diff - half, diff + half))
