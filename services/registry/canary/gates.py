"""Canary domain: the spec, the two arms' figures over a step, and the gate decision.

Pure functions, no I/O: the controller (``registry.canary.controller``) feeds in what the
routers and gateways counted since the step began (and, for a business metric, the outcomes
posted so far) and acts on the answer. The business metric is judged with the always-valid
sequential test of experiments (``registry.experiments.sequential_test``), so looking at it
every round does not inflate its false alarms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from modelserve.errors import InvalidArgumentError
from modelserve.names import validate_name
from registry.experiments import sequential_test as st

DEFAULT_MIN_REQUESTS = 100
DEFAULT_MIN_SECONDS = 60.0
DEFAULT_MAX_ERROR_RATE_DELTA = 0.01
DEFAULT_MAX_P99_RATIO = 1.5
DEFAULT_READY_TIMEOUT_S = 120.0
DEFAULT_MAX_STEP_S = 600.0  # or min_seconds, if longer
DEFAULT_BUSINESS_ALPHA = 0.05

RUNNING, PROMOTED, ROLLED_BACK, ABORTED = "running", "promoted", "rolled_back", "aborted"


@dataclass(frozen=True)
class CanarySpec:
    model: str
    baseline: int
    candidate: int
    steps: tuple[float, ...]
    min_requests: int = DEFAULT_MIN_REQUESTS
    min_seconds: float = DEFAULT_MIN_SECONDS
    max_error_rate_delta: float = DEFAULT_MAX_ERROR_RATE_DELTA
    max_p99_ratio: float = DEFAULT_MAX_P99_RATIO
    ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S
    routers: tuple[str, ...] = ()
    gateways: tuple[str, ...] = ()
    # Longest a step may wait for its evidence: past it, what is still missing is a failure.
    max_step_s: float = DEFAULT_MAX_STEP_S
    business_metric: str = ""  # empty: no business gate
    lower_is_better: bool = False
    business_alpha: float = DEFAULT_BUSINESS_ALPHA


@dataclass(frozen=True)
class Arm:
    """One version's figures over a step: calls, failures, p99 of successful calls."""

    version: int
    requests: int = 0
    errors: int = 0
    p99_s: float = 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class MetricFigures:
    """The business metric over the canary so far: each arm's outcomes and the comparison
    (candidate - baseline; the confidence sequence is infinite below ``st.MIN_COUNT``)."""

    name: str
    baseline_count: int = 0
    baseline_mean: float = 0.0
    candidate_count: int = 0
    candidate_mean: float = 0.0
    difference: float = 0.0
    difference_low: float = -math.inf
    difference_high: float = math.inf
    p_value: float = 1.0

    def describe(self) -> str:
        return (
            f"{self.name} candidate {self.candidate_mean:.4f} (n={self.candidate_count}) vs "
            f"baseline {self.baseline_mean:.4f} (n={self.baseline_count}), difference "
            f"{self.difference:+.4f} [{self.difference_low:+.4f}, {self.difference_high:+.4f}], "
            f"always-valid p {self.p_value:.4g}"
        )


def metric_figures(
    spec: CanarySpec, base: st.Moments, cand: st.Moments, min_p: float = 1.0
) -> MetricFigures:
    """Compare the arms' outcomes; ``min_p`` is the smallest p-value seen at earlier looks
    (the running minimum is what stays valid)."""
    found = st.compare(base, cand, spec.business_alpha)
    return MetricFigures(
        name=spec.business_metric,
        baseline_count=base.count,
        baseline_mean=base.mean,
        candidate_count=cand.count,
        candidate_mean=cand.mean,
        difference=found.difference,
        difference_low=found.low,
        difference_high=found.high,
        p_value=min(min_p, found.p_value),
    )


@dataclass(frozen=True)
class Verdict:
    action: str  # "wait", "advance", "promote" or "rollback"
    reason: str


@dataclass(frozen=True)
class Decision:
    action: str
    percent: float
    reason: str
    baseline: Arm
    candidate: Arm
    step_seconds: float = 0.0
    unix_ms: int = 0
    metric: MetricFigures | None = None
    replica: str = ""  # the registry replica whose controller decided (registry.leases)


@dataclass
class CanaryState:
    spec: CanarySpec
    state: str = RUNNING
    step_index: int = 0
    started_unix_ms: int = 0
    decisions: list[Decision] = field(default_factory=list)


def check_spec(spec: CanarySpec) -> None:
    """INVALID_ARGUMENT naming the first thing wrong with a canary request."""
    if spec.baseline < 1 or spec.candidate < 1:
        raise InvalidArgumentError(
            f"baseline and candidate must be version numbers >= 1; got {spec.baseline} "
            f"and {spec.candidate}"
        )
    if spec.baseline == spec.candidate:
        raise InvalidArgumentError(f"baseline and candidate are both version {spec.baseline}")
    if len(spec.steps) < 2:  # one step of 100 is a switch, not a canary
        raise InvalidArgumentError(
            f"give at least two steps (candidate percents ending in 100), e.g. 5,25,100; "
            f"got {list(spec.steps)}"
        )
    previous = 0.0
    for step in spec.steps:
        if not math.isfinite(step) or not previous < step <= 100 or round(step, 2) != step:
            raise InvalidArgumentError(
                f"steps must rise strictly within (0, 100] with at most two decimals; got "
                f"{list(spec.steps)}"
            )
        previous = step
    if spec.steps[-1] != 100:
        raise InvalidArgumentError(f"the last step must be 100; got {spec.steps[-1]:g}")
    if spec.min_requests < 1 or not spec.min_seconds >= 0 or not spec.ready_timeout_s > 0:
        raise InvalidArgumentError(
            "min_requests must be >= 1, min_seconds >= 0 and ready_timeout_seconds > 0"
        )
    if not spec.max_error_rate_delta >= 0 or not spec.max_p99_ratio > 0:
        raise InvalidArgumentError("max_error_rate_delta must be >= 0 and max_p99_ratio > 0")
    if not (math.isfinite(spec.max_step_s) and spec.max_step_s >= spec.min_seconds):
        raise InvalidArgumentError(
            f"max_step_seconds must be >= min_seconds ({spec.min_seconds:g}); got "
            f"{spec.max_step_s:g}"
        )

    if spec.business_metric:
        validate_name(spec.business_metric, "business_metric")
        if not 0 < spec.business_alpha < 1:
            raise InvalidArgumentError(
                f"business_alpha must be in (0, 1); got {spec.business_alpha:g}"
            )


def default_max_step_s(min_seconds: float) -> float:
    """What ``max_step_seconds`` 0 means: 600 s, or ``min_seconds`` if that is longer."""
    return max(DEFAULT_MAX_STEP_S, min_seconds)


def evaluate(
    spec: CanarySpec,
    step_index: int,
    seconds: float,
    base: Arm,
    cand: Arm,
    metric: MetricFigures | None = None,
) -> Verdict:
    """The gates of step ``step_index`` after ``seconds`` in it.

    Gates are judged once both arms have ``min_requests`` calls (rates from fewer calls are
    noise); a failing gate rolls back whatever time is left. Passing needs ``min_seconds``
    too. With a business metric (``metric``, over the canary so far), a candidate found
    worse (always-valid p < ``business_alpha``, the difference in the bad direction) rolls
    back at once, and a step passes only once each arm has ``st.MIN_COUNT`` outcomes.
    Evidence still missing after ``max_step_s`` is a failure: a candidate that no caller
    reaches (or that no count sees) must not hold its step for ever. The last step (100%) is
    the promotion itself: the baseline then has no traffic left to compare with, so passing
    the step before it promotes.
    """
    if metric is not None and _metric_worse(spec, metric):
        direction = "lower" if spec.lower_is_better else "higher"
        return Verdict(
            "rollback",
            f"candidate loses on {metric.describe()} < alpha {spec.business_alpha:g} "
            f"({direction} is better)",
        )
    if cand.requests < spec.min_requests or base.requests < spec.min_requests:
        if seconds >= spec.max_step_s:
            return Verdict(
                "rollback",
                f"step ran {seconds:.0f} s with baseline {base.requests}, candidate "
                f"{cand.requests} calls; needs {spec.min_requests} each within "
                f"{spec.max_step_s:g} s",
            )
        return Verdict(
            "wait",
            f"needs {spec.min_requests} calls per version; baseline {base.requests}, "
            f"candidate {cand.requests}",
        )
    limit = base.error_rate + spec.max_error_rate_delta
    if cand.error_rate > limit:
        return Verdict(
            "rollback",
            f"candidate error rate {cand.error_rate:.4f} ({cand.errors} of {cand.requests} "
            f"calls) > baseline {base.error_rate:.4f} ({base.errors} of {base.requests}) "
            f"+ {spec.max_error_rate_delta:g}",
        )
    # Without successful baseline calls there is no latency to compare with.
    if base.p99_s > 0 and cand.p99_s > base.p99_s * spec.max_p99_ratio:
        return Verdict(
            "rollback",
            f"candidate p99 {cand.p99_s * 1000:.2f} ms > baseline p99 "
            f"{base.p99_s * 1000:.2f} ms x {spec.max_p99_ratio:g}",
        )
    if metric is not None and min(metric.baseline_count, metric.candidate_count) < st.MIN_COUNT:
        if seconds >= spec.max_step_s:
            return Verdict(
                "rollback",
                f"step ran {seconds:.0f} s with {metric.name} outcomes baseline "
                f"{metric.baseline_count}, candidate {metric.candidate_count}; needs "
                f"{st.MIN_COUNT} each within {spec.max_step_s:g} s",
            )
        return Verdict(
            "wait",
            f"needs {st.MIN_COUNT} {metric.name} outcomes per version; baseline "
            f"{metric.baseline_count}, candidate {metric.candidate_count}",
        )
    if seconds < spec.min_seconds:
        return Verdict("wait", f"gates pass; step lasts at least {spec.min_seconds:g} s")
    final = step_index + 1 >= len(spec.steps) - 1
    passed = (
        f"error rate {cand.error_rate:.4f} vs {base.error_rate:.4f}, p99 "
        f"{cand.p99_s * 1000:.2f} ms vs {base.p99_s * 1000:.2f} ms"
    )
    if metric is not None:
        passed += f"; {metric.describe()}"
    return Verdict("promote" if final else "advance", passed)


def _metric_worse(spec: CanarySpec, metric: MetricFigures) -> bool:
    if metric.p_value >= spec.business_alpha:
        return False
    return metric.difference > 0 if spec.lower_is_better else metric.difference < 0


def p99(values: list[float]) -> float:
    """Nearest-rank 99th percentile; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]
