import math

import pytest

from kvbench.stats import (
    compare_means,
    median_gap_ms,
    outlier_indices,
    per_token_curve_ms,
    relative_standard_error,
    summarize,
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


def test_welch_t_test_matches_a_worked_example():
    # Worked by hand: means 20 and 22; sample variances 10/4 = 2.5 and 68/4 = 17 (n 5 each);
    # squared standard errors 0.5 and 3.4; t = -2 / sqrt(3.9) = -1.0127;
    # Welch df = 3.9^2 / (0.5^2/4 + 3.4^2/4) = 5.152; two-sided p from the t table = 0.3564.
    a = [18.0, 19.0, 20.0, 21.0, 22.0]
    b = [17.0, 19.0, 22.0, 25.0, 27.0]
    test = compare_means(a, b)
    assert test.ratio == pytest.approx(20 / 22)
    assert test.p_value == pytest.approx(0.3564, abs=5e-4)
    assert not test.significant()
    assert test.low < test.ratio < test.high


def test_a_clear_difference_is_significant_and_its_interval_excludes_one():
    a = [1.00, 1.02, 0.98, 1.01, 0.99]
    b = [2.00, 2.04, 1.96, 2.02, 1.98]
    test = compare_means(b, a)
    assert test.ratio == pytest.approx(2.0)
    assert test.significant()
    assert 1.9 < test.low < 2.0 < test.high < 2.1


def test_identical_samples_are_not_significant():
    values = [1.0, 1.1, 0.9]
    test = compare_means(values, list(values))
    assert test.ratio == 1.0
    assert test.p_value == pytest.approx(1.0)
    assert not test.significant()


def test_too_few_runs_give_a_ratio_but_no_verdict():
    test = compare_means([1.0], [2.0, 2.1])
    assert test.ratio == pytest.approx(1 / 2.05)
    assert test.p_value is None and test.low is None


def test_outliers_by_modified_z_score():
    # median 1.05; absolute deviations 0.05, 0.05, 0.15, 0, 3.95 -> MAD 0.05;
    # z(5.0) = 0.6745 * 3.95 / 0.05 = 53.3 (outlier), z(0.9) = 0.6745 * 0.15 / 0.05 = 2.02 (not).
    assert outlier_indices([1.0, 1.1, 0.9, 1.05, 5.0]) == [4]
    assert outlier_indices([1.0, 1.1, 0.9, 1.05, 1.02]) == []
    assert outlier_indices([1.0, 1.1, 9.0, 1.05]) == []  # too few to tell
    assert outlier_indices([1.0, 1.0, 1.0, 1.0, 2.0]) == []  # MAD 0


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
    from kvbench.stats import process_aware_samples

    latencies = [1.0, 3.0, 2.0, 4.0, 10.0, 20.0]
    processes = ["a", "a", "b", "b", "c", "c"]
    assert process_aware_samples(latencies, processes) == [2.0, 3.0, 15.0]
    # Fewer than three processes: too few means to estimate a spread from; the runs themselves.
    assert process_aware_samples(latencies[:4], processes[:4]) == latencies[:4]
    assert process_aware_samples([1.0, 2.0], [7, 7]) == [1.0, 2.0]
    with pytest.raises(ValueError):
        process_aware_samples([1.0], [])
