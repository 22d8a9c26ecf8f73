"""Vector tests of the paired-ratio statistics behind `kalamdb.bench.ab --interleave`."""

import math

import pytest

from kalamdb.bench.paired import paired_ratio, t95


def test_identical_ratios_give_a_zero_width_interval():
    r = paired_ratio([100.0, 200.0, 50.0], [110.0, 220.0, 55.0])
    assert r.ratio == pytest.approx(1.1)
    assert r.low == pytest.approx(1.1) and r.high == pytest.approx(1.1)
    assert r.significant and r.pairs == 3


def test_a_drifting_machine_cancels_out_within_pairs():
    # The machine halves its speed over the run; the variant is 5 % faster in every pair.
    a = [1000.0 * (1 - i / 20) for i in range(10)]
    b = [x * 1.05 * (1 + (-1) ** i * 0.01) for i, x in enumerate(a)]
    r = paired_ratio(a, b)
    assert 1.04 < r.low < r.ratio < r.high < 1.06
    assert r.significant


def test_noise_around_no_difference_is_not_significant():
    a = [100.0, 100.0, 100.0, 100.0]
    b = [90.0, 110.0, 95.0, 105.0]
    r = paired_ratio(a, b)
    assert r.low < 1.0 < r.high
    assert not r.significant


def test_the_interval_is_students_t_on_the_log_ratios():
    a, b = [1.0, 1.0, 1.0], [1.0, math.e, math.e ** 2]  # log ratios 0, 1, 2: mean 1, stdev 1
    r = paired_ratio(a, b)
    half = 4.303 / math.sqrt(3)
    assert r.ratio == pytest.approx(math.e)
    assert r.low == pytest.approx(math.exp(1 - half)) and r.high == pytest.approx(math.exp(1 + half))


def test_t_quantiles():
    assert t95(1) == 12.706 and t95(10) == 2.228 and t95(30) == 2.042 and t95(31) == 1.96
    with pytest.raises(ValueError):
        t95(0)


@pytest.mark.parametrize("a,b", [([1.0], [1.0]), ([1.0, 2.0], [1.0]), ([1.0, 0.0], [1.0, 1.0])])
def test_bad_series_are_refused(a, b):
    with pytest.raises(ValueError):
        paired_ratio(a, b)
