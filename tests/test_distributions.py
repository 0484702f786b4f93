"""kvbench's own t distribution against closed forms worked by hand and against scipy.special, over the
degrees of freedom and probabilities compare, show and the gate use."""

import math

import pytest
from scipy.special import stdtr, stdtrit

from kvbench.core.distributions import LARGE_DF, normal_quantile, regularized_beta, t_cdf, t_quantile

# Welch's degrees of freedom run from about 1 (two runs against many) to infinity (no spread on one side);
# runs_to_settle multiplies them by up to a billion.
DFS = [1, 1.5, 2, 3, 4.7, 9, 17.3, 30, 99.9, 100, 100.1, 1e3, 5e4, LARGE_DF * 0.999, LARGE_DF, 1e7, 1e9, 1e12, 1e16, math.inf]
TS = [-40, -10, -3, -1.96, -0.5, -0.01, 0, 0.01, 0.3, 1, 2.5, 7, 40]
# Two-sided 95% and the far tails Holm's method reaches with a thousand measurements.
PS = [1e-9, 1e-6, 0.001, 0.025, 0.1, 0.3, 0.5, 0.7, 0.9, 0.975, 0.99, 0.999, 1 - 0.05 / 2000, 1 - 1e-9]


@pytest.mark.parametrize("t", TS)
def test_one_degree_of_freedom_is_the_cauchy_distribution(t):
    assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, rel=1e-13, abs=1e-300)


@pytest.mark.parametrize("t", TS)
def test_two_degrees_of_freedom_have_a_closed_form(t):
    assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), rel=1e-12)


@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.999])
def test_quantiles_worked_by_hand(p):
    assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-12)
    # df = 2: t = (2p - 1) / sqrt(2 p (1 - p)).
    assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-12)


def test_textbook_critical_values():
    assert t_quantile(0.975, 10) == pytest.approx(2.228139, abs=1e-6)
    assert t_quantile(0.975, 30) == pytest.approx(2.042272, abs=1e-6)
    assert t_quantile(0.975, math.inf) == pytest.approx(1.959964, abs=1e-6)
    assert normal_quantile(0.8) == pytest.approx(0.841621, abs=1e-6)


@pytest.mark.parametrize("df", DFS)
def test_the_distribution_function_agrees_with_scipy(df):
    for t in TS:
        assert t_cdf(t, df) == pytest.approx(float(stdtr(df, t)), rel=1e-9, abs=1e-300), t


@pytest.mark.parametrize("df", DFS)
def test_the_quantile_agrees_with_scipy_and_inverts_the_distribution_function(df):
    for p in PS:
        t = t_quantile(p, df)
        assert t == pytest.approx(float(stdtrit(df, p)), rel=1e-9, abs=1e-12), p
        assert t_cdf(t, df) == pytest.approx(p, rel=1e-9), p


def test_symmetry_and_the_middle():
    assert t_quantile(0.5, 3.3) == 0.0 and t_cdf(0.0, 3.3) == 0.5
    assert t_quantile(0.1, 7) == -t_quantile(0.9, 7)
    assert t_cdf(-2.0, 7) == pytest.approx(1 - t_cdf(2.0, 7), rel=1e-14)


def test_the_incomplete_beta_function_at_values_worked_by_hand():
    # I_x(1, 1) = x; I_x(a, 1) = x^a; I_x(1, b) = 1 - (1 - x)^b.
    assert regularized_beta(1, 1, 0.3) == pytest.approx(0.3, rel=1e-14)
    assert regularized_beta(2.5, 1, 0.4) == pytest.approx(0.4**2.5, rel=1e-13)
    assert regularized_beta(1, 3, 0.2) == pytest.approx(1 - 0.8**3, rel=1e-13)
    assert regularized_beta(2, 3, 0.0) == 0.0 and regularized_beta(2, 3, 1.0) == 1.0


@pytest.mark.parametrize("bad", [0, -1, math.nan])
def test_impossible_degrees_of_freedom_are_refused(bad):
    with pytest.raises(ValueError):
        t_cdf(1.0, bad)
    with pytest.raises(ValueError):
        t_quantile(0.9, bad)
    with pytest.raises(ValueError):
        t_quantile(1.0, 5)
