"""What an A/B experiment must be, and how its arms map to a routing policy and back (pure).

An experiment's arms become a weighted split of its model; ``modelserve.catalog.routing`` then
buckets each routing key the same way in the gateway and here, so the arm of an outcome is
recomputed from its key and no per-request log is kept.
"""

from __future__ import annotations

import math

from modelserve.catalog import routing
from modelserve.errors import InvalidArgumentError
from modelserve.names import validate_name
from modelserve.proto.modelserve.v1 import experiments_pb2 as xpb
from registry.records import RoutingPolicy, SplitShare

DEFAULT_ALPHA = 0.05


def check(experiment: xpb.Experiment) -> None:
    """Refuse an experiment that cannot run, saying what was expected and what came."""
    validate_name(experiment.name, "experiment name")
    validate_name(experiment.model, "model name")
    arms = experiment.arms
    if len(arms) < 2:
        raise InvalidArgumentError(f"an experiment needs at least 2 arms; got {len(arms)}")
    names: set[str] = set()
    targets: set[tuple[int, str]] = set()
    for arm in arms:
        validate_name(arm.name, "arm name")
        if arm.name in names:
            raise InvalidArgumentError(f"arm names must be unique; {arm.name!r} is repeated")
        names.add(arm.name)
        if (arm.version > 0) == bool(arm.label) or arm.version < 0:
            raise InvalidArgumentError(
                f"arm {arm.name!r} needs a version (>= 1) or a label, not both; "
                f"got version {arm.version} label {arm.label!r}"
            )
        if (arm.version, arm.label) in targets:
            raise InvalidArgumentError(f"two arms route to the same target as {arm.name!r}")
        targets.add((arm.version, arm.label))
        if not math.isfinite(arm.percent) or not 0 < arm.percent <= 100:
            raise InvalidArgumentError(f"arm {arm.name!r}: percent must be in (0, 100]")
    total = sum(routing.basis_points(a.percent) for a in arms)
    if total != routing.BUCKETS:
        raise InvalidArgumentError(f"arm percents must sum to 100; got {total / 100:g}")
    for guard in experiment.guard_rails:
        validate_name(guard.metric, "guard rail metric")
        if not guard.HasField("max_mean") and not guard.HasField("min_mean"):
            raise InvalidArgumentError(f"guard rail on {guard.metric!r} needs max_mean or min_mean")
    if not 0 <= experiment.alpha < 0.5:
        raise InvalidArgumentError(f"alpha must be in (0, 0.5); got {experiment.alpha}")


def alpha_of(experiment: xpb.Experiment) -> float:
    return experiment.alpha or DEFAULT_ALPHA


def split_policy(experiment: xpb.Experiment) -> RoutingPolicy:
    return RoutingPolicy(
        split=tuple(
            SplitShare(a.version, a.label, routing.basis_points(a.percent)) for a in experiment.arms
        )
    )


def control_policy(experiment: xpb.Experiment) -> RoutingPolicy:
    """All traffic to the control (first) arm: where a stopped experiment leaves the model."""
    control = experiment.arms[0]
    return RoutingPolicy(split=(SplitShare(control.version, control.label, routing.BUCKETS),))


def arm_of_key(experiment: xpb.Experiment, key: str) -> str:
    """The arm the gateway sent routing ``key`` to while the experiment's split was in force."""
    shares = [
        routing.Share(a.version, a.label, routing.basis_points(a.percent)) for a in experiment.arms
    ]
    chosen = routing.pick(shares, routing.bucket_of(experiment.model, key))
    for arm in experiment.arms:
        if (arm.version, arm.label) == (chosen.version, chosen.label):
            return arm.name
    raise AssertionError("unreachable: every share is an arm")


def arm_names(experiment: xpb.Experiment) -> list[str]:
    return [a.name for a in experiment.arms]
