"""The sequential test on simulated outcomes of known rates: a real effect is found, no
effect is not, and looking 20 times per experiment keeps false positives near alpha (where a
fixed-horizon z-test checked as often would reject about a quarter of null experiments)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from registry.experiments import sequential_test as st


def moments(values: np.ndarray) -> st.Moments:
    return st.Moments(len(values), float(values.sum()), float((values * values).sum()))


def bernoulli(rng: np.random.Generator, rate: float, n: int) -> np.ndarray:
    return (rng.random(n) < rate).astype(np.float64)


def test_normal_functions() -> None:
    assert st.normal_cdf(0) == pytest.approx(0.5)
    assert st.normal_cdf(1.959964) == pytest.approx(0.975, abs=1e-6)
    assert st.normal_quantile(0.975) == pytest.approx(1.959964, abs=1e-5)
    with pytest.raises(ValueError):
        st.normal_quantile(1.0)


def test_moments_add_up_to_mean_and_variance() -> None:
    m = st.Moments()
    for v in (1.0, 2.0, 3.0, 4.0):
        m = m.add(v)
    assert (m.count, m.mean) == (4, 2.5)
    assert m.variance == pytest.approx(np.var([1, 2, 3, 4], ddof=1))
    low, high = st.mean_interval(m)
    assert low < 2.5 < high


def test_real_effect_is_significant() -> None:
    rng = np.random.default_rng(7)
    control, treatment = bernoulli(rng, 0.10, 20_000), bernoulli(rng, 0.13, 20_000)
    found = st.compare(moments(control), moments(treatment))
    assert found.p_value < 0.05
    assert found.low < 0.03 < found.high  # the sequence covers the true difference
    assert found.low > 0


def test_no_effect_is_not_significant() -> None:
    rng = np.random.default_rng(8)
    control, treatment = bernoulli(rng, 0.10, 20_000), bernoulli(rng, 0.10, 20_000)
    found = st.compare(moments(control), moments(treatment))
    assert found.p_value >= 0.05
    assert found.low < 0 < found.high


def test_too_few_outcomes_decide_nothing() -> None:
    few = moments(np.ones(st.MIN_COUNT - 1))
    assert st.compare(few, moments(np.zeros(1000))).p_value == 1.0
    assert st.mean_sequence(few) == (-math.inf, math.inf)


def test_peeking_twenty_times_keeps_false_positives_near_alpha() -> None:
    rng = np.random.default_rng(2017)
    experiments, looks, per_look = 200, 20, 500
    rejected = peeking_z_rejected = 0
    for _ in range(experiments):
        a = np.cumsum(bernoulli(rng, 0.10, looks * per_look))
        b = np.cumsum(bernoulli(rng, 0.10, looks * per_look))
        hit = z_hit = False
        for look in range(1, looks + 1):
            n = look * per_look
            # Bernoulli: the sum of squares is the sum, so prefix sums give every look.
            ma = st.Moments(n, float(a[n - 1]), float(a[n - 1]))
            mb = st.Moments(n, float(b[n - 1]), float(b[n - 1]))
            hit = hit or st.compare(ma, mb).p_value < 0.05
            se = math.sqrt(ma.variance / n + mb.variance / n)
            z_hit = z_hit or abs(mb.mean - ma.mean) / se > 1.959964
        rejected += hit
        peeking_z_rejected += z_hit
    assert rejected / experiments < 0.08
    assert peeking_z_rejected / experiments > rejected / experiments  # why the test exists


def test_guard_rail_sequence_separates_harm_from_noise() -> None:
    rng = np.random.default_rng(3)
    harmful = moments(bernoulli(rng, 0.30, 400))
    low, _ = st.mean_sequence(harmful)
    assert low > 0.10  # an error rate of 30% is surely above a 10% limit
    fine = moments(bernoulli(rng, 0.08, 400))
    assert st.mean_sequence(fine)[0] < 0.10
