import numpy as np
import pytest

from kvbench.analysis.fit import crossover, extrapolate, fit_latency
from kvbench.core.errors import KvbenchError

LENGTHS = (16, 32, 64, 128, 256)


def _runs(a, b, k, noise=0.02, runs=5, seed=0):
    """Synthetic runs of a + b n**k with multiplicative noise, like run-to-run drift."""
    rng = np.random.default_rng(seed)
    return [(n, (a + b * n**k) * (1 + noise * rng.standard_normal())) for n in LENGTHS for _ in range(runs)]


def test_recovers_a_linear_exponent_from_noisy_runs():
    fit = fit_latency(_runs(a=0.3, b=0.03, k=1.0), "cached")
    assert fit.exponent == pytest.approx(1.0, abs=0.1)
    assert fit.exponent_ci95_low <= 1.0 <= fit.exponent_ci95_high
    assert 0 < fit.exponent_stderr < 0.1
    assert (fit.points, fit.lengths, fit.min_new_tokens, fit.max_new_tokens) == (25, 5, 16, 256)
    assert fit.rms_relative_residual == pytest.approx(0.02, rel=0.5)


def test_recovers_a_quadratic_exponent_from_noisy_runs():
    fit = fit_latency(_runs(a=0.3, b=2e-4, k=2.0, seed=1), "uncached")
    assert fit.exponent == pytest.approx(2.0, abs=0.15)
    assert fit.exponent_ci95_low <= 2.0 <= fit.exponent_ci95_high


def test_the_intercept_keeps_fixed_cost_out_of_the_exponent():
    # A large fixed cost (prefill) on a linear curve: a pure log-log slope would say about 0.6.
    fit = fit_latency(_runs(a=5.0, b=0.03, k=1.0, noise=0.005))
    assert fit.exponent == pytest.approx(1.0, abs=0.1)
    assert fit.intercept_s == pytest.approx(5.0, rel=0.1)


def test_noise_widens_the_interval():
    quiet = fit_latency(_runs(a=0.3, b=0.03, k=1.0, noise=0.005, seed=2))
    noisy = fit_latency(_runs(a=0.3, b=0.03, k=1.0, noise=0.05, seed=2))
    assert noisy.exponent_stderr > 3 * quiet.exponent_stderr


def test_crossover_worked_by_hand():
    # cached 1 + 0.1 n, uncached 0.01 n^2: equal where n^2 - 10 n - 100 = 0, n = 5 + sqrt(125) = 16.18.
    lengths = (4, 8, 16, 32, 64)
    cached = [(n, 1 + 0.1 * n) for n in lengths]
    uncached = [(n, 0.01 * n**2) for n in lengths]
    result = extrapolate(cached, uncached)
    assert result.cached.exponent == pytest.approx(1.0, abs=1e-3)
    assert result.uncached.exponent == pytest.approx(2.0, abs=1e-3)
    assert result.crossover_new_tokens == pytest.approx(5 + 125**0.5, rel=1e-3)
    assert "inside" in result.crossover_reason
    assert result.longest_new_tokens == 64
    # At 128: 163.84 / 13.8; at 640: 4096 / 65.
    assert result.speedup_at_2x == pytest.approx(163.84 / 13.8, rel=1e-3)
    assert result.speedup_at_10x == pytest.approx(4096 / 65, rel=1e-3)


def test_no_crossover_when_the_cache_always_pays():
    lengths = (4, 8, 16, 32)
    result = extrapolate([(n, 0.1 * n) for n in lengths], [(n, 0.1 * n + 0.001 * n**2) for n in lengths])
    assert result.crossover_new_tokens is None
    assert "pays at every length" in result.crossover_reason


def test_no_crossover_when_the_cache_never_pays():
    lengths = (4, 8, 16, 32)
    cached = fit_latency([(n, 2 + 0.2 * n**1.5) for n in lengths], "cached")
    uncached = fit_latency([(n, 1 + 0.1 * n**1.2) for n in lengths], "uncached")
    point, reason = crossover(cached, uncached, up_to=320)
    assert point is None and "does not pay at any length" in reason


def test_too_few_lengths_is_a_user_error():
    with pytest.raises(KvbenchError, match="at least 3 lengths"):
        fit_latency([(10, 1.0), (10, 1.1), (20, 2.0), (20, 2.1)], "cached")


def test_non_positive_latency_is_rejected():
    with pytest.raises(ValueError):
        fit_latency([(1, 1.0), (2, 0.0), (3, 3.0), (4, 4.0)])


def _lengths_runs(a, b, k, lengths, noise, rng, runs=3):
    return [(n, (a + b * n**k) * (1 + noise * rng.standard_normal())) for n in lengths for _ in range(runs)]


def test_the_exponent_gap_is_judged_from_its_interval():
    steep = extrapolate(_runs(a=0.3, b=0.05, k=1.0), _runs(a=0.3, b=0.01, k=1.7, seed=3))
    assert steep.exponent_gap == pytest.approx(0.7, abs=0.15)
    assert 0 < steep.exponent_gap_ci95_low < steep.exponent_gap < steep.exponent_gap_ci95_high
    assert steep.exponent_gap_reason.startswith("uncached latency grows faster with length than cached")
    reversed_ = extrapolate(_runs(a=0.3, b=0.01, k=1.7, seed=4), _runs(a=0.3, b=0.05, k=1.0, seed=5))
    assert reversed_.exponent_gap_reason.startswith("cached latency grows faster")
    # Equal exponents, 10% noise over short lengths: the interval straddles 0 and kvbench says so.
    rng = np.random.default_rng(6)
    short = (8, 16, 32, 64)
    same = extrapolate(_lengths_runs(0.3, 0.05, 1.0, short, 0.1, rng), _lengths_runs(0.3, 0.08, 1.0, short, 0.1, rng))
    assert same.exponent_gap_ci95_low < 0 < same.exponent_gap_ci95_high
    assert same.exponent_gap_reason.startswith("these lengths cannot tell the exponents apart")


def test_the_exponent_gap_claims_a_difference_rarely_when_there_is_none():
    """Simulated through the real fits: equal true exponents, 5% noise, five lengths, three runs each. A
    95% interval should call a gap in about 5% of sweeps (a separate run of 300 sweeps at each of 2%, 5%
    and 10% noise called one in about 7%); here 150 sweeps must call one in no more than 10%. With a true gap
    of 0.6 at the same noise it must call it in most."""
    rng = np.random.default_rng(7)
    lengths = (16, 32, 64, 128, 256)
    sweeps = 150
    false_calls = sum(
        not extrapolate(
            _lengths_runs(0.3, 0.05, 1.0, lengths, 0.05, rng), _lengths_runs(0.5, 0.08, 1.0, lengths, 0.05, rng)
        ).exponent_gap_reason.startswith("these lengths cannot tell")
        for _ in range(sweeps)
    )
    assert false_calls / sweeps <= 0.10
    found = sum(
        extrapolate(
            _lengths_runs(0.3, 0.05, 1.0, lengths, 0.05, rng), _lengths_runs(0.3, 0.01, 1.6, lengths, 0.05, rng)
        ).exponent_gap_reason.startswith("uncached latency grows faster")
        for _ in range(50)
    )
    assert found >= 45


def test_the_fit_finds_what_scipys_curve_fit_finds():
    """kvbench fits in pure Python (scipy's optimiser would cost `show` its import): on noisy runs of several
    shapes, the same exponent and intercept as curve_fit's bounded least squares, and a standard error that
    agrees with its covariance."""
    import numpy as np
    from scipy.optimize import curve_fit

    rng = np.random.default_rng(7)
    for a_true, b_true, k_true, noise in [(0.5, 0.01, 1.0, 0.02), (0.05, 0.001, 2.0, 0.05), (1.0, 0.2, 1.4, 0.01)]:
        lengths = [n for n in (8, 16, 32, 64, 128) for _ in range(3)]
        points = [(n, (a_true + b_true * n**k_true) * float(np.exp(rng.normal(0, noise)))) for n in lengths]
        ours = fit_latency(points)
        n, y = np.array(lengths, dtype=float), np.array([latency for _, latency in points])
        (a, b, k), covariance = curve_fit(
            lambda n, a, b, k: a + b * n**k, n, y, p0=(a_true, b_true, k_true), sigma=y,
            bounds=([-np.inf, 0.0, 0.0], [np.inf, np.inf, 5.0]),
        )  # fmt: skip
        assert ours.exponent == pytest.approx(k, rel=1e-5)
        assert ours.intercept_s == pytest.approx(a, rel=1e-4, abs=1e-9)
        # curve_fit's Jacobian is a finite difference: its standard error is good to a few digits.
        assert ours.exponent_stderr == pytest.approx(float(np.sqrt(covariance[2, 2])), rel=1e-3)
