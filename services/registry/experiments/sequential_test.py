"""Statistics for A/B experiments that stay valid while people watch them (pure functions).

A fixed-horizon test checked after every batch of outcomes rejects a true null far more often
than alpha (at 20 looks, about 25% for alpha = 0.05). The mixture sequential probability ratio
test (mSPRT; Johari, Pekelis and Walsh, "Always valid inference", 2017) does not: with the
estimated difference of means ``d`` (variance ``V``) and a normal mixture N(0, tau^2) over the
true difference, the likelihood ratio

    L = sqrt(V / (V + tau^2)) * exp(tau^2 d^2 / (2 V (V + tau^2)))

is a martingale under the null, so by Ville's inequality P(L ever >= 1/alpha) <= alpha, and the
always-valid p-value min(1, 1/L), kept as the smallest seen so far, may be read at any time.
Inverting the same test gives a confidence sequence for the difference. The normal
approximation needs a few dozen outcomes per arm: below ``MIN_COUNT`` nothing is decided.

Outcomes are kept as sufficient statistics (count, sum, sum of squares), so storage is bounded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MIN_COUNT = 30  # per arm, before the normal approximation is trusted with a decision
# The mixture's spread in standard deviations of one outcome: the test is most powerful for
# effects around a tenth of a standard deviation (0.03 on a 10% conversion rate).
TAU_IN_SD = 0.1
_VARIANCE_FLOOR = 1e-12  # all outcomes equal (e.g. no click yet): keep the formulas finite


@dataclass(frozen=True)
class Moments:
    """Sufficient statistics of one arm's outcomes of one metric."""

    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    def add(self, value: float) -> Moments:
        return Moments(self.count + 1, self.total + value, self.total_sq + value * value)

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    @property
    def variance(self) -> float:
        """Sample variance (n - 1), floored so an arm of equal outcomes still has a scale."""
        if self.count < 2:
            return _VARIANCE_FLOOR
        raw = (self.total_sq - self.total * self.total / self.count) / (self.count - 1)
        return max(raw, _VARIANCE_FLOOR)


@dataclass(frozen=True)
class Comparison:
    difference: float  # treatment mean - control mean
    low: float  # always-valid confidence sequence at 1 - alpha
    high: float
    p_value: float  # always-valid at this look (callers keep the running minimum)


def normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def normal_quantile(p: float) -> float:
    """Inverse of ``normal_cdf`` by bisection (called rarely; 60 steps is exact enough)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1); got {p}")
    low, high = -40.0, 40.0
    for _ in range(100):
        mid = (low + high) / 2
        if normal_cdf(mid) < p:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def mean_interval(m: Moments, level: float = 0.95) -> tuple[float, float]:
    """Fixed-horizon normal confidence interval of the mean (for display)."""
    if m.count == 0:
        return (0.0, 0.0)
    half = normal_quantile(0.5 + level / 2) * math.sqrt(m.variance / m.count)
    return (m.mean - half, m.mean + half)


def mixture_half_width(variance: float, tau_sq: float, alpha: float) -> float:
    """Half-width of the normal-mixture confidence sequence: the set of true values where
    the mixture likelihood ratio stays below 1/alpha."""
    ratio = (variance + tau_sq) / tau_sq
    return math.sqrt(
        variance * ratio * (2 * math.log(1 / alpha) + math.log(ratio * tau_sq / variance))
    )


def msprt_p_value(estimate: float, variance: float, tau_sq: float) -> float:
    """min(1, 1/L) for the mixture likelihood ratio of ``estimate`` against a true 0."""
    log_l = 0.5 * math.log(variance / (variance + tau_sq)) + tau_sq * estimate * estimate / (
        2 * variance * (variance + tau_sq)
    )
    return 1.0 if log_l <= 0 else math.exp(-log_l)


def compare(control: Moments, treatment: Moments, alpha: float = 0.05) -> Comparison:
    """mSPRT for a difference in means, with a confidence sequence for it."""
    difference = treatment.mean - control.mean
    if min(control.count, treatment.count) < MIN_COUNT:
        return Comparison(difference, -math.inf, math.inf, 1.0)
    variance = control.variance / control.count + treatment.variance / treatment.count
    pooled_sd = math.sqrt((control.variance + treatment.variance) / 2)
    tau_sq = (TAU_IN_SD * pooled_sd) ** 2
    half = mixture_half_width(variance, tau_sq, alpha)
    return Comparison(
        difference,
        difference - half,
        difference + half,
        msprt_p_value(difference, variance, tau_sq),
    )


def mean_sequence(m: Moments, alpha: float = 0.05) -> tuple[float, float]:
    """Always-valid confidence sequence for one arm's mean (the guard rails' test), centred
    on the mean; (-inf, inf) below ``MIN_COUNT`` outcomes."""
    if m.count < MIN_COUNT:
        return (-math.inf, math.inf)
    variance = m.variance / m.count
    half = mixture_half_width(variance, (TAU_IN_SD**2) * m.variance, alpha)
    return (m.mean - half, m.mean + half)
