import numpy as np
import pytest

from kvbench.core.metrics import distribution, mode_metrics, percentile, run_metrics

# Run A: tokens at 0.5, 0.6, 0.8, 1.1 s; generate() returned at 1.2 s; 10-token prompt, batch 2.
RUN_A = dict(token_times_s=[0.5, 0.6, 0.8, 1.1], latency_s=1.2, prompt_tokens=10, batch_size=2)
RUN_B = dict(token_times_s=[0.4, 0.5, 0.6], latency_s=0.7, prompt_tokens=10, batch_size=2)


def test_run_metrics_worked_by_hand():
    run = run_metrics(**RUN_A)
    assert run.ttft_s == 0.5
    assert run.itl_s == pytest.approx((0.1, 0.2, 0.3))
    assert run.tpot_s == pytest.approx(0.7 / 3)  # (1.2 - 0.5) / (4 - 1)
    assert run.e2e_s == 1.2
    assert run.prefill_tokens_per_s == pytest.approx(10 * 2 / 0.5)
    assert run.decode_tokens_per_s == pytest.approx(3 * 2 / 0.7)
    assert run.decode_tokens_per_s == pytest.approx(2 / run.tpot_s)


def test_a_single_token_has_no_decode_phase():
    run = run_metrics([0.3], 0.35, prompt_tokens=6, batch_size=1)
    assert run.itl_s == () and run.tpot_s is None and run.decode_tokens_per_s is None
    assert run.prefill_tokens_per_s == pytest.approx(20)


@pytest.mark.parametrize(
    "times, latency",
    [([], 1.0), ([0.5, 0.4], 1.0), ([0.5, 0.9], 0.8), ([0.0, 0.1], 1.0)],
)
def test_inconsistent_token_times_are_rejected(times, latency):
    with pytest.raises(ValueError):
        run_metrics(times, latency, prompt_tokens=1, batch_size=1)


def test_percentiles_interpolate_between_ranks():
    assert percentile([5, 1, 4, 2, 3], 50) == 3
    assert percentile([1, 2, 3, 4, 5], 90) == pytest.approx(4.6)  # rank 3.6
    assert percentile([1, 2, 3, 4, 5], 99) == pytest.approx(4.96)  # rank 3.96
    assert percentile([10, 20], 90) == pytest.approx(19)
    assert percentile([7], 99) == 7
    assert percentile([1, 2, 3], 0) == 1 and percentile([1, 2, 3], 100) == 3


def test_percentiles_match_numpys_default_method():
    values = np.random.default_rng(0).exponential(size=37).tolist()
    for q in (1, 50, 90, 99):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_percentile_outside_range_is_rejected():
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_mode_metrics_pool_gaps_over_runs():
    mode = mode_metrics([run_metrics(**RUN_A), run_metrics(**RUN_B)])
    assert mode.runs == 2
    # Gaps pooled: 0.1, 0.2, 0.3 from A and 0.1, 0.1 from B.
    assert mode.itl_s.n == 5
    assert (mode.itl_s.p50, mode.itl_s.p90, mode.itl_s.p99) == pytest.approx((0.1, 0.26, 0.296))
    assert (mode.ttft_s.p50, mode.ttft_s.p90) == pytest.approx((0.45, 0.49))
    assert mode.ttft_s.mean == pytest.approx(0.45)
    assert mode.ttft_s.std == pytest.approx(0.0707107, rel=1e-5)
    assert mode.e2e_s.p50 == pytest.approx(0.95)
    assert mode.tpot_s.mean == pytest.approx((0.7 / 3 + 0.3 / 2) / 2)
    assert mode.prefill_tokens_per_s.mean == pytest.approx((40 + 50) / 2)
    # Decode rates: A 3 x 2 / 0.7 = 8.571, B 2 x 2 / 0.3 = 13.333 tokens/s; the median of two is their mean.
    assert mode.decode_tokens_per_s.p50 == pytest.approx((6 / 0.7 + 4 / 0.3) / 2)
    assert mode.decode_tokens_per_s.n == 2


def test_distribution_of_one_value_has_no_spread():
    one = distribution([2.0])
    assert (one.n, one.mean, one.std, one.p99) == (1, 2.0, None, 2.0)
