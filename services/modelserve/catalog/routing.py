"""Routing policies applied to one request: weighted splits with consistent bucketing, and a
single target label (blue-green). Pure functions; gateway, router, worker and registry all use
these, so they agree on where a request goes.

Consistent bucketing: a routing key (a user id, say) hashes with the model name to one of
``BUCKETS`` buckets (blake2b: stable across processes and Python versions, unlike ``hash``).
A split gives each target a contiguous range of buckets, in a canonical order that does not
depend on how the caller listed them (versions ascending, then labels by name). So a key keeps
its target while the split is unchanged, and moving weight between two neighbouring targets
only reassigns the keys in the moved range: with versions 1 and 2, going from 95/5 to 75/25
moves exactly the keys of buckets [7500, 9500) from v1 to v2, and every key already on v2
stays there. With three or more targets, shifting weight between non-neighbours also slides
the ranges in between; canaries are two-way splits, where the move is always minimal.

The model name is part of the hash so that one user is not in every model's canary at once.
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from modelserve.errors import InvalidArgumentError
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.modelserve.v1 import registry_pb2

BUCKETS = 10_000  # one bucket per basis point: weights with two decimals of a percent
ROUTING_KEY_PARAM = "routing_key"
ROUTING_KEY_METADATA = "x-routing-key"
MAX_ROUTING_KEY_CHARS = 1024

Metadata = Iterable[tuple[str, str | bytes]]


@dataclass(frozen=True)
class Share:
    """One target of a split: a version (>= 1) or a label, and its weight in basis points."""

    version: int
    label: str
    basis_points: int

    def order(self) -> tuple[int, int, str]:
        return (0, self.version, "") if self.version else (1, 0, self.label)

    def describe(self) -> str:
        return f"version {self.version}" if self.version else f"label '{self.label}'"


def basis_points(percent: float) -> int:
    """``percent`` (0-100, two decimals at most) in basis points, rounded to the nearest."""
    return round(percent * 100)


def shares_of(split: Iterable[registry_pb2.SplitTarget]) -> list[Share]:
    return [Share(t.version, t.label, basis_points(t.percent)) for t in split]


def bucket_of(model: str, key: str) -> int:
    digest = hashlib.blake2b(f"{model}\0{key}".encode(), digest_size=8).digest()
    # 2**64 is not a multiple of 10 000, but the bias (< 1e-15 per bucket) is immaterial.
    return int.from_bytes(digest, "big") % BUCKETS


def ranges(shares: Sequence[Share]) -> list[tuple[Share, int, int]]:
    """Each share with its bucket range [start, end), in canonical order."""
    out = []
    start = 0
    for share in sorted(shares, key=Share.order):
        out.append((share, start, start + share.basis_points))
        start += share.basis_points
    return out


def pick(shares: Sequence[Share], bucket: int) -> Share:
    """The share that owns ``bucket``. Weights that do not sum to 100% (the registry refuses
    them, so only a hand-made policy) are scaled so every bucket still lands somewhere."""
    return _pick_in(ranges(shares), bucket)


def _pick_in(owned: Sequence[tuple[Share, int, int]], bucket: int) -> Share:
    total = owned[-1][2] if owned else 0
    if total <= 0:
        raise ValueError("a split needs a positive total weight")
    if total != BUCKETS:
        bucket = bucket * total // BUCKETS
    for share, start, end in owned:
        if start <= bucket < end:
            return share
    raise AssertionError("unreachable: ranges cover every bucket")


def primary(shares: Sequence[Share]) -> Share:
    """The share with the most weight (first in canonical order on a tie): what a request
    that is not being routed (metadata, readiness) resolves to."""
    return max(sorted(shares, key=Share.order), key=lambda s: s.basis_points)


def is_active(model: registry_pb2.Model) -> bool:
    """Whether ``model`` has a policy in force (a cleared one is a revision with neither)."""
    if not model.HasField("policy"):
        return False
    policy = model.policy.policy
    return bool(policy.split) or bool(policy.target_label)


def policy_target(model: registry_pb2.Model, key: str | None) -> Share | None:
    """Where ``model``'s policy sends a request with routing ``key`` ("": it has none, so a
    random bucket; None: no request is being routed, so the primary target). None when the
    model has no policy in force. Called per request: the split's ranges are cached."""
    if not model.HasField("policy"):
        return None
    policy = model.policy.policy
    if policy.target_label:
        return Share(0, policy.target_label, BUCKETS)
    table = _table(policy)
    if table is None:
        return None
    if key is None:
        return table.primary
    return table.pick(bucket_of(model.name, key) if key else random.randrange(BUCKETS))


@dataclass(frozen=True)
class _Table:
    ranges: tuple[tuple[Share, int, int], ...]
    primary: Share

    def pick(self, bucket: int) -> Share:
        return _pick_in(self.ranges, bucket)


def _table(policy: registry_pb2.RoutingPolicy) -> _Table | None:
    # Keyed by content, not by model or revision: equal policies share an entry, and a hand-made
    # or replayed message can never be confused with another one.
    return _compiled(policy.SerializeToString(deterministic=True))


@functools.lru_cache(maxsize=1024)  # policies in use at once, with room to spare
def _compiled(serialized: bytes) -> _Table | None:
    shares = shares_of(registry_pb2.RoutingPolicy.FromString(serialized).split)
    return _Table(tuple(ranges(shares)), primary(shares)) if shares else None


def referenced_versions(model: registry_pb2.Model) -> set[int]:
    """Version numbers workers must hold warm for the model's policies (labels are resolved
    separately): those the policy in force names, its shadow (to be mirrored to) and its
    fallback (the version served before it, where a share with no READY worker goes), and
    those a waiting pending policy names (they must load before it can be applied)."""
    found: set[int] = set()
    if model.HasField("policy"):
        policy = model.policy.policy
        found |= _named_versions(policy)
        if policy.fallback_version > 0:
            found.add(policy.fallback_version)
    if model.HasField("pending") and model.pending.state == "waiting":
        found |= _named_versions(model.pending.policy)
    return found


def _named_versions(policy: registry_pb2.RoutingPolicy) -> set[int]:
    found = {t.version for t in policy.split if t.version > 0}
    target = policy.shadow.target
    if target.isascii() and target.isdigit() and int(target) > 0:
        found.add(int(target))
    return found


def routing_key_of(request: pb.ModelInferRequest, metadata: Metadata | None) -> str:
    """The request's routing key: parameter ``routing_key``, else ``x-routing-key`` metadata;
    "" when it has none (the request is then split at random)."""
    key = ""
    if ROUTING_KEY_PARAM in request.parameters:
        param = request.parameters[ROUTING_KEY_PARAM]
        which = param.WhichOneof("parameter_choice")
        if which == "string_param":
            key = param.string_param
        elif which in ("int64_param", "uint64_param"):
            key = str(getattr(param, which))
        else:
            raise InvalidArgumentError(
                f"request parameter '{ROUTING_KEY_PARAM}' must be a string or an integer; "
                f"got {which or 'nothing'}"
            )
    else:
        for name, value in metadata or ():
            if name == ROUTING_KEY_METADATA:
                key = value.decode(errors="replace") if isinstance(value, bytes) else value
                break
    if len(key) > MAX_ROUTING_KEY_CHARS:
        raise InvalidArgumentError(
            f"routing key must be at most {MAX_ROUTING_KEY_CHARS} characters; got {len(key)}"
        )
    return key


def label_of(request: pb.ModelInferRequest) -> str:
    """The ``label`` request parameter of a V2 ModelInferRequest ("" when absent)."""
    param = request.parameters.get("label")
    return param.string_param if param is not None else ""


ROUTING_PARAMETERS = ("label", ROUTING_KEY_PARAM)


def carry_decision(request: pb.ModelInferRequest, version: registry_pb2.ModelVersion) -> None:
    """Write the routing decision into ``request`` for the hops behind this one: the numeric
    version (so no later hop can pick differently; a split without a key is random) and no
    routing parameters (they did their work, and without them the request can be merged).

    Only the hop that decided writes; a request that arrived decided is left as it came.
    """
    decided = str(version.version)
    if request.model_version != decided:
        request.model_version = decided
    for name in ROUTING_PARAMETERS:
        if name in request.parameters:
            del request.parameters[name]
