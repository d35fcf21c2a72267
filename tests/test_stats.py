"""nanogpt.scaling.stats against scipy.stats on fixed inputs: what `compare` prints is right."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sp

from nanogpt.scaling import stats

# five seeds of a baseline and of a change, as `compare` sees them (val losses, nats/token)
A = [3.2841, 3.2795, 3.2873, 3.2810, 3.2829]
B = [3.2712, 3.2760, 3.2688, 3.2741, 3.2703]
C = [3.2790, 3.2650, 3.2901]  # fewer seeds, wider spread: unequal n and variance


def test_describe_matches_scipy():
    for x in (A, B, C):
        s = stats.describe(x)
        assert s.n == len(x)
        assert s.mean == pytest.approx(np.mean(x), rel=1e-12)
        assert s.std == pytest.approx(np.std(x, ddof=1), rel=1e-12)
        assert s.sem == pytest.approx(sp.sem(x), rel=1e-12)
        lo, hi = sp.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=sp.sem(x))
        assert s.ci == pytest.approx((lo, hi), rel=1e-12)
    lo, hi = sp.t.interval(0.99, len(A) - 1, loc=np.mean(A), scale=sp.sem(A))
    assert stats.describe(A, level=0.99).ci == pytest.approx((lo, hi), rel=1e-12)


def test_one_run_has_a_mean_but_no_spread():
    s = stats.describe([3.3])
    assert (s.n, s.mean) == (1, 3.3) and math.isnan(s.std) and math.isnan(s.ci[0])


@pytest.mark.parametrize("a, b", [(A, B), (A, C), (C, B)])
def test_welch_matches_scipy(a, b):
    ours = stats.welch(a, b)
    ref = sp.ttest_ind(b, a, equal_var=False)
    assert ours.t == pytest.approx(ref.statistic, rel=1e-10)
    assert ours.p == pytest.approx(ref.pvalue, rel=1e-10)
    assert ours.df == pytest.approx(ref.df, rel=1e-10)
    assert ours.diff == pytest.approx(np.mean(b) - np.mean(a), rel=1e-12)
    assert ours.ci == pytest.approx(tuple(ref.confidence_interval(0.95)), rel=1e-10)


def test_welch_on_the_example_is_significant():
    assert stats.welch(A, B).p < 0.001 and stats.welch(A, C).p > 0.05


@pytest.mark.parametrize("x, target", [(A, 3.28), (B, 3.28), (C, 3.28), (B, 3.273)])
def test_below_target_matches_scipy_one_sided(x, target):
    ours = stats.below_target(x, target)
    ref = sp.ttest_1samp(x, target, alternative="less")
    assert ours.t == pytest.approx(ref.statistic, rel=1e-10)
    assert ours.p == pytest.approx(ref.pvalue, rel=1e-10)
    assert ours.df == len(x) - 1
    lo, hi = sp.ttest_1samp(x, target).confidence_interval(0.95)
    assert ours.ci == pytest.approx((lo - target, hi - target), rel=1e-9)


def test_modded_nanogpts_rule():
    assert stats.below_target(B, 3.28).passes()  # mean 3.272, clearly below: p ~ 1e-4
    assert not stats.below_target(A, 3.28).passes()  # mean 3.283: above the target
    assert not stats.below_target(C, 3.28).passes()  # below on average, but 3 noisy seeds: p > 0.01


def test_no_spread_is_decided_by_the_mean():
    assert stats.below_target([3.2, 3.2], 3.28).p == 0.0
    assert stats.below_target([3.3, 3.3], 3.28).p == 1.0
    assert math.isnan(stats.welch([3.0, 3.0], [3.0, 3.0]).p)


def test_too_few_values_are_refused():
    with pytest.raises(ValueError, match="at least 2"):
        stats.welch([3.0], B)
    with pytest.raises(ValueError, match="at least 2"):
        stats.below_target([3.0], 3.28)
    with pytest.raises(ValueError, match="non-finite"):
        stats.describe([3.0, math.nan])
