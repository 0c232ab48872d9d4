"""Whether callers of one version can call another unchanged: the caller-visible signature
(inputs after feature enrichment, outputs) compared name by name. A rollout to a version that
differs would reject or mislead part of the callers, so the registry refuses it unless the
caller says the change is meant (``allow_signature_change``)."""

from __future__ import annotations

from collections.abc import Iterable

from modelserve.catalog.signatures import caller_inputs
from modelserve.errors import FailedPreconditionError
from modelserve.proto.modelserve.v1 import common_pb2, registry_pb2


def differences(base: registry_pb2.ModelVersion, other: registry_pb2.ModelVersion) -> list[str]:
    """What a caller of ``base`` would find broken in ``other`` ([] when nothing): an input
    it sends that ``other`` lacks or types differently, a new input it does not send, an
    output it reads that is gone or changed. Widening is compatible: an input dimension that
    becomes variable still takes what callers send, a fixed output dimension that becomes
    variable (or the reverse) still has the same rank, and a new output breaks nobody."""
    old_in = {s.name: s for s in caller_inputs(base)}
    new_in = {s.name: s for s in caller_inputs(other)}
    out = [f"input {n!r} is gone" for n in sorted(old_in.keys() - new_in.keys())]
    out += [f"new input {n!r} callers do not send" for n in sorted(new_in.keys() - old_in.keys())]
    for name in sorted(old_in.keys() & new_in.keys()):
        a, b = old_in[name], new_in[name]
        if a.datatype != b.datatype or not _accepts(list(b.shape), list(a.shape)):
            out.append(f"input {name!r} {_spec(a)} -> {_spec(b)}")
    old_out = {s.name: s for s in base.outputs}
    new_out = {s.name: s for s in other.outputs}
    out += [f"output {n!r} is gone" for n in sorted(old_out.keys() - new_out.keys())]
    for name in sorted(old_out.keys() & new_out.keys()):
        a, b = old_out[name], new_out[name]
        if a.datatype != b.datatype or not _same_rank_and_fixed_dims(list(a.shape), list(b.shape)):
            out.append(f"output {name!r} {_spec(a)} -> {_spec(b)}")
    return out


def _accepts(shape: list[int], sent: list[int]) -> bool:
    """Whether an input of ``shape`` takes what callers of an input of ``sent`` send."""
    return len(shape) == len(sent) and all(
        d == -1 or d == s for d, s in zip(shape, sent, strict=True)
    )


def _same_rank_and_fixed_dims(a: list[int], b: list[int]) -> bool:
    return len(a) == len(b) and all(x == y or -1 in (x, y) for x, y in zip(a, b, strict=True))


def _spec(spec: common_pb2.TensorSpec) -> str:
    return f"{spec.datatype}{list(spec.shape)}"


def require_compatible(
    model: str,
    base: registry_pb2.ModelVersion,
    others: Iterable[registry_pb2.ModelVersion],
    what: str,
) -> None:
    """FAILED_PRECONDITION naming every difference between ``base`` and each of ``others``."""
    found = []
    for other in others:
        if other.version == base.version:
            continue
        changes = differences(base, other)
        if changes:
            found.append(f"version {other.version} vs {base.version}: " + "; ".join(changes))
    if found:
        raise FailedPreconditionError(
            f"{what} of model {model!r} changes the signature callers see ("
            + " | ".join(found)
            + "); callers of the current version would be rejected. Pass "
            "allow_signature_change (--allow-signature-change) if that is intended"
        )
