import math
import statistics

import pytest

from kvbench.core.stats import (
    CLOCK_TICK_S,
    coefficient_of_variation,
    compare_means,
    median_gap_ms,
    noise_warning,
    outlier_indices,
    outward,
    per_token_curve_ms,
    precise_enough,
    relative_standard_error,
    rse_upper_bound,
    speedup_words,
    summarize,
    written_step,
)


def test_summary_of_a_hand_worked_sample():
    summary = summarize([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
    assert summary.n == 8
    assert summary.mean == 5.0
    # Sum of squared deviations is 32; sample variance 32/7.
    assert summary.std == pytest.approx(math.sqrt(32 / 7))
    assert (summary.min, summary.median, summary.max) == (2.0, 4.5, 9.0)


def test_single_value_has_no_std():
    assert summarize([3.0]).std is None


def test_relative_standard_error():
    # mean 5, sample std sqrt(32/7), n 8
    assert relative_standard_error([2, 4, 4, 4, 5, 5, 7, 9]) == pytest.approx(math.sqrt(32 / 7) / math.sqrt(8) / 5)
    assert relative_standard_error([1.0]) is None


def test_log_ratio_test_matches_a_worked_example():
    # Worked by hand: means 20 and 22, sample variances 2.5 and 17, n 5 each.
    # Squared standard errors of log(mean): 2.5 / (5 * 20^2) = 0.00125 and 17 / (5 * 22^2) = 0.0070248;
    # se = sqrt(0.0082748) = 0.090966; t = ln(20/22) / se = -0.095310 / 0.090966 = -1.04776;
    # Welch df = 0.0082748^2 / (0.00125^2 / 4 + 0.0070248^2 / 4) = 5.3798;
    # t table at 5.38 df: two-sided p = 0.3395, t(0.975) = 2.5169;
    # interval (20/22) exp(±2.5169 * 0.090966) = [0.72306, 1.14299].
    a = [18.0, 19.0, 20.0, 21.0, 22.0]
    b = [17.0, 19.0, 22.0, 25.0, 27.0]
    test = compare_means(a, b)
    assert test.ratio == pytest.approx(20 / 22)
    assert test.log_se == pytest.approx(0.090966, abs=1e-6)
    assert test.df == pytest.approx(5.3798, abs=1e-3)
    assert test.p_value == pytest.approx(0.3395, abs=5e-4)
    assert (test.low, test.high) == (pytest.approx(0.72306, abs=1e-4), pytest.approx(1.14299, abs=1e-4))
    assert not test.significant() and test.direction() == "no significant change"


def test_interval_and_p_value_agree_at_the_boundary():
    # The interval at confidence 1 - p has its edge exactly at 1: the two come from one statistic.
    a = [1.10, 1.05, 1.12, 1.02, 1.08]
    b = [1.00, 1.03, 0.98, 1.01, 0.97]
    test = compare_means(a, b)
    at_p = test.at(1 - test.p_value)
    assert at_p.low == pytest.approx(1.0, abs=1e-9)
    assert test.significant() == (test.p_value < 0.05)


def test_a_clear_difference_is_significant_and_its_interval_excludes_one():
    a = [1.00, 1.02, 0.98, 1.01, 0.99]
    b = [2.00, 2.04, 1.96, 2.02, 1.98]
    test = compare_means(b, a)
    assert test.ratio == pytest.approx(2.0)
    assert test.significant() and test.direction() == "slower"
    assert compare_means(a, b).direction() == "faster"
    assert 1.9 < test.low < 2.0 < test.high < 2.1


def test_identical_samples_are_not_significant():
    values = [1.0, 1.1, 0.9]
    test = compare_means(values, list(values))
    assert test.ratio == 1.0
    assert test.p_value == pytest.approx(1.0)
    assert not test.significant()


def test_constant_samples_are_known_to_a_clock_tick():
    """Runs that all took the same time have a spread below one tick, not none: each side's standard
    deviation is taken as one tick (CLOCK_TICK_S), so the interval is as narrow as the tick allows, never
    a point."""
    test = compare_means([2.0, 2.0], [1.0, 1.0])
    assert test.without_spread
    assert test.log_se == pytest.approx(math.sqrt(CLOCK_TICK_S**2 / (2 * 2.0**2) + CLOCK_TICK_S**2 / (2 * 1.0**2)))
    assert test.low < 2.0 < test.high and test.significant()
    # Without the floor, the old certainty: a zero-width interval.
    assert compare_means([2.0, 2.0], [1.0, 1.0], tick=0).low == 2.0


def test_one_side_without_spread_is_not_taken_as_certain():
    """The issue's case: a baseline of five identical 0.010 s runs against a noisy head. The baseline's
    side adds a tick's standard error to the head's; it used to add nothing."""
    base = [0.010] * 5
    head = [0.0106, 0.0104, 0.0107, 0.0105, 0.0108]
    test = compare_means(head, base)
    head_se2 = statistics.variance(head) / (5 * statistics.fmean(head) ** 2)
    assert test.log_se**2 == pytest.approx(head_se2 + CLOCK_TICK_S**2 / (5 * 0.010**2))
    assert not test.without_spread
    # A side with some spread below a tick is floored the same way.
    nearly = compare_means(head, [0.010, 0.0100001, 0.010, 0.010, 0.010])
    assert nearly.log_se**2 == pytest.approx(head_se2 + CLOCK_TICK_S**2 / (5 * 0.01000002**2), rel=1e-4)


def test_too_few_runs_give_a_ratio_but_no_verdict():
    test = compare_means([1.0], [2.0, 2.1])
    assert test.ratio == pytest.approx(1 / 2.05)
    assert test.p_value is None and test.low is None and not test.judged
    assert test.direction() == "no significant change"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0.0, -1.0])
def test_values_that_are_no_time_are_refused(bad):
    with pytest.raises(ValueError, match="finite, positive"):
        compare_means([1.0, bad], [1.0, 1.1])


def test_outliers_by_modified_z_score():
    # median 1.03; absolute deviations 0.03, 0.07, 0.13, 0.02, 0.01, 3.97 -> MAD 0.05;
    # z(5.0) = 0.6745 * 3.97 / 0.05 = 53.6 (outlier), z(0.9) = 0.6745 * 0.13 / 0.05 = 1.75 (not).
    assert outlier_indices([1.0, 1.1, 0.9, 1.05, 1.02, 5.0]) == [5]
    assert outlier_indices([1.0, 1.1, 0.9, 1.05, 1.02, 1.04]) == []
    # A z of 4 would have been flagged by the textbook cut-off of 3.5; not by 6.
    # median 1.0, deviations 0.1,0.1,0,0,0.1,0.1,0.593 -> MAD 0.1; z = 0.6745 * 0.593 / 0.1 = 4.0
    assert outlier_indices([0.9, 1.1, 1.0, 1.0, 0.9, 1.1, 1.593]) == []


def test_outliers_need_six_runs():
    assert outlier_indices([1.0, 1.1, 0.9, 1.05, 5.0]) == []


def test_outliers_when_most_runs_are_equal():
    # MAD 0: each value is measured against the spread of the others.
    assert outlier_indices([1, 1, 1, 1, 1, 1, 9]) == [6]
    assert outlier_indices([1, 1, 1, 1, 2, 2, 2]) == []
    assert outlier_indices([1, 1, 1, 1, 1, 1]) == []
    # One run a clock tick off otherwise identical runs is no stall.
    assert outlier_indices([1, 1, 1, 1, 1, 1, 1.001]) == []
    assert outlier_indices([0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.55]) == [6]  # 10% off: beyond a tick
    # Values written to whole units: 11 is one tick (a unit) off the 10s, 12 two.
    assert outlier_indices([10, 10, 10, 10, 10, 10, 11]) == []
    assert outlier_indices([10, 10, 10, 10, 10, 10, 12]) == [6]
    # A step as coarse as the runs themselves says nothing: 2 among 1s is flagged.
    assert outlier_indices([1, 1, 1, 1, 1, 1, 2]) == [6]


def test_the_step_values_are_written_to():
    assert written_step([10, 11]) == 1
    assert written_step([0.010, 0.011]) == pytest.approx(0.001)
    assert written_step([100, 200]) == 100
    assert written_step([0.1 + 0.2]) == pytest.approx(0.1)  # a float's last bit is no step
    assert written_step([0.123456789012345]) == 0.0  # finer than 1e-12 of the value: none
    assert written_step([0.0]) == 0.0


def test_outlier_flags_are_rare_on_clean_data():
    # The cut-off was chosen so clean normal runs flag at most about 5% of cells (see stats.OUTLIER_Z).
    import random

    rng = random.Random(7)
    for n in (5, 6, 10):
        flagged = sum(bool(outlier_indices([rng.gauss(10, 0.5) for _ in range(n)])) for _ in range(4000))
        assert flagged / 4000 < 0.065, n


def test_noise_warning_above_ten_percent():
    assert coefficient_of_variation([1.0, 3.0]) == pytest.approx(math.sqrt(2) / 2)
    assert noise_warning([10.0, 10.2, 9.9, 10.1]) is None
    # The busy-machine run of the issue: 122.5 ± 53.3 s is a CV of 43%.
    warning = noise_warning([80.0, 122.5, 165.0, 70.0, 175.0])
    assert warning is not None and "too noisy" in warning
    assert noise_warning([5.0]) is None


def test_speedup_is_worded_by_direction():
    faster = compare_means([4.0, 4.1, 3.9], [1.0, 1.02, 0.98])
    assert speedup_words(faster).startswith("cached is 4.00× faster than uncached (95% interval ")
    slower = compare_means([1.0, 1.01, 0.99], [2.22, 2.23, 2.21])
    text = speedup_words(slower)
    assert text.startswith("cached is 2.22× slower than uncached")
    assert "0.45" not in text
    low, high = (float(x) for x in text.split("interval ")[1].rstrip("×)").split("×–"))
    assert low < 2.22 < high
    unclear = compare_means([1.0, 1.3, 0.8], [1.0, 1.2, 0.9])
    assert speedup_words(unclear).endswith("within noise)")
    assert speedup_words(compare_means([2.0], [1.0])).endswith("(too few runs for an interval)")


def test_a_speedup_without_spread_claims_no_certainty():
    """`show` printed "2.83× (95% interval 2.83×–2.83×)" for runs that all took the same time. Both modes
    without spread: no interval. One without: an interval as wide as the tick allows, printed rounded
    outward, so never as a point."""
    both = speedup_words(compare_means([0.0283] * 5, [0.010] * 5))
    assert both.startswith("cached is 2.83× faster") and "no interval" in both and "2.83×–2.83×" not in both
    one = speedup_words(compare_means([0.0283] * 4 + [0.0283001], [0.010] * 5))
    low, high = one.split("interval ")[1].rstrip("×)").split("×–")
    assert float(low) < 2.83 < float(high), one
    assert outward(2.8300001, 2.8300002) == ("2.83", "2.84") and outward(1.5, 2.0) == ("1.50", "2.00")


def test_token_gaps_take_the_median_over_a_slice():
    times = [0.0, 1.0, 2.0, 3.0, 5.0, 7.0, 9.0, 12.0, 15.0, 18.0, 21.0]  # gaps 1,1,1,2,2,2,3,3,3,3
    assert median_gap_ms(times, 0.0, 0.3) == 1000.0
    assert median_gap_ms(times, 0.7, 1.0) == 3000.0
    assert median_gap_ms([0.0, 1.0], 0.0, 0.1) is None


def test_per_token_curve_is_the_median_gap_by_position():
    runs = [[1.0, 2.0, 4.0], [1.0, 3.0, 5.0], [2.0, 3.0, 6.0]]
    # gaps from the start: [1,1,2], [1,2,2], [2,1,3] -> medians 1, 1, 2 (seconds) -> ms
    assert per_token_curve_ms(runs) == [1000.0, 1000.0, 2000.0]
    assert per_token_curve_ms([]) == []


def test_runs_from_three_or_more_processes_become_per_process_means():
    from kvbench.core.stats import process_aware_samples

    latencies = [1.0, 3.0, 2.0, 4.0, 10.0, 20.0]
    processes = ["a", "a", "b", "b", "c", "c"]
    assert process_aware_samples(latencies, processes) == [2.0, 3.0, 15.0]
    # Fewer than three processes: too few means to estimate a spread from; the runs themselves.
    assert process_aware_samples(latencies[:4], processes[:4]) == latencies[:4]
    assert process_aware_samples([1.0, 2.0], [7, 7]) == [1.0, 2.0]
    with pytest.raises(ValueError):
        process_aware_samples([1.0], [])


def test_rse_upper_bound_worked_by_hand():
    """Three values, 2 df: the chi-squared 10% quantile is -2 ln 0.9 = 0.2107, so the bound is the RSE
    times sqrt(2 / 0.2107)."""
    values = [1.0, 1.1, 0.9]
    assert rse_upper_bound(values, 0.9) == pytest.approx(relative_standard_error(values) * math.sqrt(2 / (-2 * math.log(0.9))))
    assert rse_upper_bound([1.0], 0.9) is None
    assert precise_enough({"cached": [1.0], "uncached": [1.0, 1.0]}, 0.5, 0.9) == (False, None)


@pytest.mark.parametrize("cached_cv", [0.05, 0.01], ids=["equally-noisy", "one-mode-much-noisier"])
def test_target_rse_rarely_stops_before_the_mean_is_known_that_well(cached_cv):
    """Simulated through the rule the runner stops on: uncached runs with a 5% CV and a 1.5% target need
    12 runs before the true RSE is within it. Stopping on the point estimate stops earlier in over a fifth
    of cells; the upper bound at RSE_CONFIDENCE in under 5%, also when the cached mode is so quiet that its
    bound always holds and only the noisy mode's looks count (at 90% that stopped 13% of cells early)."""
    import numpy as np

    from kvbench.model.settings import RSE_CONFIDENCE

    rng = np.random.default_rng(0)
    cv, target, fewest, most = 0.05, 0.015, 5, 40
    needed = math.ceil((cv / target) ** 2)

    def stops_at(rule):
        cached, uncached = [], []
        for n in range(1, most + 1):
            cached.append(1 + cached_cv * rng.standard_normal())
            uncached.append(3 * (1 + cv * rng.standard_normal()))
            if n >= fewest and rule({"cached": cached, "uncached": uncached}):
                return n
        return most

    def on_the_point_estimate(samples):
        return all(relative_standard_error(values) <= target for values in samples.values())

    cells = 600
    bound = [stops_at(lambda samples: precise_enough(samples, target, RSE_CONFIDENCE)[0]) for _ in range(cells)]
    point = [stops_at(on_the_point_estimate) for _ in range(cells)]
    assert sum(n < needed for n in point) / cells > 0.2  # the old rule, for contrast
    assert sum(n < needed for n in bound) / cells < 0.05
    assert 1.3 < (sum(bound) / cells) / (sum(point) / cells) < 2.5  # the price: more runs
