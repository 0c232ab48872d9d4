"""What shadow traffic taught us, per (model, primary version, shadow version): how often the
two answers agreed, how often the shadow failed or ran out of time, and how long each took.

Latency quantiles come from a bounded uniform sample of the pairs (reservoir sampling,
Vitter's algorithm R), so memory stays fixed however long the router runs, and samples from
several routers can be merged by weighting each with the pairs it stands for (the CLI does,
``modelserve.cli.shadow_report``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from modelserve.errors import InvalidArgumentError
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.modelserve.v1 import router_pb2
from modelserve.tensors import decode_outputs

RESERVOIR_SIZE = 512  # per pair and side: p99 from 512 samples is within about a percentile
MAX_PAIRS = 1024  # distinct (model, primary, shadow) kept; more is a policy churning


class Reservoir:
    """A uniform sample of at most ``size`` of the values ever added."""

    def __init__(self, size: int = RESERVOIR_SIZE, rng: random.Random | None = None) -> None:
        self.size = size
        self.seen = 0
        self.values: list[float] = []
        self._rng = rng or random.Random()

    def add(self, value: float) -> None:
        self.seen += 1
        if len(self.values) < self.size:
            self.values.append(value)
            return
        slot = self._rng.randrange(self.seen)
        if slot < self.size:  # keeps each value seen with probability size / seen
            self.values[slot] = value


@dataclass
class Comparison:
    agree: bool
    max_abs_diff: float | None  # None: not comparable (names, shapes or datatypes differ)
    # The output holding the largest difference, or where the answers stopped being
    # comparable; and, for the latter, why (both kept with a disagreement, shadow_samples).
    output: str = ""
    reason: str = ""


def compare_outputs(
    primary: pb.ModelInferResponse, shadow: pb.ModelInferResponse, tolerance: float
) -> Comparison:
    """Agreement = the same outputs, each with the same shape and datatype, and no element
    further apart than ``tolerance`` (BYTES outputs must be equal)."""
    try:
        ours, theirs = decode_outputs(primary), decode_outputs(shadow)
    except InvalidArgumentError as exc:
        return Comparison(False, None, reason=f"undecodable outputs: {exc.message}")
    if set(ours) != set(theirs):
        return Comparison(
            False, None, reason=f"output names differ: {sorted(ours)} vs {sorted(theirs)}"
        )
    kinds = {o.name: o.datatype for o in primary.outputs}
    for o in shadow.outputs:
        if kinds[o.name] != o.datatype:
            return Comparison(
                False, None, o.name, f"datatypes differ: {kinds[o.name]} vs {o.datatype}"
            )
    worst, where = 0.0, ""
    for name, a in ours.items():
        b = theirs[name]
        if a.shape != b.shape:
            return Comparison(
                False, None, name, f"shapes differ: {list(a.shape)} vs {list(b.shape)}"
            )
        if a.dtype.kind in "OSU":
            if not np.array_equal(a, b):
                return Comparison(False, None, name, "BYTES values differ")
            continue
        if a.size:
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            # Equal infinities and NaN against NaN agree; NaN against a number is infinitely
            # far (abs() alone would give NaN, which compares false with every tolerance).
            same = (a64 == b64) | (np.isnan(a64) & np.isnan(b64))
            with np.errstate(invalid="ignore"):
                diff = np.where(same, 0.0, np.abs(a64 - b64))
            largest = float(np.nan_to_num(diff, nan=np.inf).max())
            if largest > worst or not where:
                worst, where = max(worst, largest), name
    return Comparison(worst <= tolerance, worst, where)


@dataclass
class PairStats:
    pairs: int = 0
    agreements: int = 0
    errors: int = 0
    timeouts: int = 0
    primary_sum_s: float = 0.0
    shadow_sum_s: float = 0.0
    max_abs_diff: float = 0.0
    primary: Reservoir = field(default_factory=Reservoir)
    shadow: Reservoir = field(default_factory=Reservoir)


class ShadowStats:
    """Figures since the router started, keyed (model, primary version, shadow version)."""

    def __init__(self, max_pairs: int = MAX_PAIRS) -> None:
        self._max_pairs = max_pairs
        self._pairs: dict[tuple[str, int, int], PairStats] = {}
        self.dropped = 0

    def _get(self, key: tuple[str, int, int]) -> PairStats:
        found = self._pairs.get(key)
        if found is None:
            if len(self._pairs) >= self._max_pairs:
                self._pairs.pop(next(iter(self._pairs)))  # the oldest: bounded memory
            found = self._pairs[key] = PairStats()
        return found

    def record_pair(
        self,
        key: tuple[str, int, int],
        primary_s: float,
        shadow_s: float,
        comparison: Comparison,
    ) -> None:
        stats = self._get(key)
        stats.pairs += 1
        stats.agreements += comparison.agree
        stats.primary_sum_s += primary_s
        stats.shadow_sum_s += shadow_s
        stats.primary.add(primary_s)
        stats.shadow.add(shadow_s)
        if comparison.max_abs_diff is not None:
            stats.max_abs_diff = max(stats.max_abs_diff, comparison.max_abs_diff)

    def record_error(self, key: tuple[str, int, int], *, timeout: bool) -> None:
        stats = self._get(key)
        if timeout:
            stats.timeouts += 1
        else:
            stats.errors += 1

    def report(self, model: str) -> router_pb2.ShadowReportResponse:
        out = router_pb2.ShadowReportResponse(dropped=self.dropped)
        for (name, primary, shadow), s in sorted(self._pairs.items()):
            if name != model:
                continue
            out.pairs.add(
                model=name,
                primary_version=primary,
                shadow_version=shadow,
                pairs=s.pairs,
                agreements=s.agreements,
                shadow_errors=s.errors,
                shadow_timeouts=s.timeouts,
                primary_latency_sum_s=s.primary_sum_s,
                shadow_latency_sum_s=s.shadow_sum_s,
                primary_latency_samples_s=s.primary.values,
                shadow_latency_samples_s=s.shadow.values,
                max_abs_diff=s.max_abs_diff,
            )
        return out
