"""Composite models (ensembles and chains, composite.proto): their rules and their signature.

One module answers "what does this composite take and give, and is it sound?" for everyone:
the registry checks a composite with it before storing it, and the gateway and router build
V2 metadata and validate requests from the same answer, so the three never disagree.
Members are looked up through ``Members`` (the registry's store, or a gateway/router's
registry replica), and a member may itself be a composite; following those references is
where loops are caught (a → b → a is refused, whatever the depth).

Tensor compatibility: same datatype, same rank, and every dimension equal or -1 on a side.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from modelserve.catalog.signatures import caller_inputs
from modelserve.errors import InvalidArgumentError
from modelserve.names import validate_name
from modelserve.proto.modelserve.v1 import common_pb2, composite_pb2, registry_pb2
from modelserve.tensors import TensorSpec

Combine = composite_pb2.Ensemble.Combine
VOTE_OUTPUT = TensorSpec("class", "INT64", (-1, 1))
FLOAT_TYPES = ("FP16", "FP32", "FP64")
MAX_MEMBERS = 32  # a bound on fan-out per request, not a modelling limit


@dataclass(frozen=True)
class Signature:
    """What a caller sends and gets; ``max_batch_size`` 0 when any member does not batch."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int


class Members(Protocol):
    """Where members are looked up (registry store or replica)."""

    def composite(self, name: str) -> composite_pb2.Composite | None: ...

    def version(self, ref: composite_pb2.ModelRef) -> registry_pb2.ModelVersion:
        """The version ``ref`` resolves to now; NOT_FOUND naming what is missing."""
        ...


def version_signature(version: registry_pb2.ModelVersion) -> Signature:
    def specs(items: Iterable[common_pb2.TensorSpec]) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(s.name, s.datatype, tuple(s.shape)) for s in items)

    return Signature(
        inputs=specs(caller_inputs(version)),
        outputs=specs(version.outputs),
        max_batch_size=version.config.max_batch_size,
    )


def describe(ref: composite_pb2.ModelRef) -> str:
    if ref.version:
        return f"{ref.model} v{ref.version}"
    return f"{ref.model}@{ref.label}" if ref.label else ref.model


def fmt(spec: TensorSpec) -> str:
    return f"{spec.datatype} [{', '.join(str(d) for d in spec.shape)}]"


def compatible(a: TensorSpec, b: TensorSpec) -> bool:
    if a.datatype != b.datatype or len(a.shape) != len(b.shape):
        return False
    return all(x == y or x == -1 or y == -1 for x, y in zip(a.shape, b.shape, strict=True))


def signature(name: str, members: Members) -> Signature:
    """The signature of model or composite ``name`` (composites checked on the way)."""
    return _signature(composite_pb2.ModelRef(model=name), members, ())


def check(composite: composite_pb2.Composite, members: Members) -> Signature:
    """Check a composite about to be stored (``members`` must already see it under its
    name, so that a loop back to it is found); INVALID_ARGUMENT/NOT_FOUND say what is wrong."""
    validate_name(composite.name, "composite name")
    if len(composite.description) > 1024:
        raise InvalidArgumentError("composite description is longer than 1024 characters")
    return _composite_signature(composite, members, (composite.name,))


def member_signature(ref: composite_pb2.ModelRef, members: Members) -> Signature:
    """The signature of one member as ``ref`` resolves now (a model version or a composite)."""
    return _signature(ref, members, ())


def references(composite: composite_pb2.Composite) -> list[composite_pb2.ModelRef]:
    """Every model or composite ``composite`` calls, in execution order."""
    kind = composite.WhichOneof("kind")
    if kind == "ensemble":
        refs = list(composite.ensemble.members)
        if composite.ensemble.combine == Combine.STACKING:
            refs.append(composite.ensemble.stacker)
        return refs
    if kind == "chain":
        return [s.model for s in composite.chain.steps]
    return []


def _signature(ref: composite_pb2.ModelRef, members: Members, path: tuple[str, ...]) -> Signature:
    found = members.composite(ref.model)
    if found is None:
        return version_signature(members.version(ref))
    if ref.model in path:
        loop = " → ".join((*path[path.index(ref.model) :], ref.model))
        raise InvalidArgumentError(f"composite loop: {loop}")
    if ref.version and ref.version != found.revision:
        raise InvalidArgumentError(
            f"composite '{ref.model}' is at revision {found.revision}, not {ref.version}: "
            "refer to a composite without a version"
        )
    return _composite_signature(found, members, (*path, ref.model))


def _composite_signature(
    composite: composite_pb2.Composite, members: Members, path: tuple[str, ...]
) -> Signature:
    kind = composite.WhichOneof("kind")
    if kind == "ensemble":
        return _ensemble(composite.name, composite.ensemble, members, path)
    if kind == "chain":
        return _chain(composite.name, composite.chain, members, path)
    raise InvalidArgumentError(f"composite '{composite.name}' is neither an ensemble nor a chain")


def _batch(signatures: Sequence[Signature]) -> int:
    sizes = [s.max_batch_size for s in signatures]
    return 0 if not sizes or min(sizes) <= 0 else min(sizes)


def _merge_input(
    where: str, inputs: dict[str, TensorSpec], owners: dict[str, str], spec: TensorSpec, who: str
) -> None:
    have = inputs.get(spec.name)
    if have is None:
        inputs[spec.name], owners[spec.name] = spec, who
    elif not compatible(have, spec):
        raise InvalidArgumentError(
            f"{where}: input '{spec.name}' is {fmt(have)} for {owners[spec.name]} but "
            f"{fmt(spec)} for {who}"
        )


def _ensemble(
    name: str, ensemble: composite_pb2.Ensemble, members: Members, path: tuple[str, ...]
) -> Signature:
    where = f"ensemble '{name}'"
    if not ensemble.members:
        raise InvalidArgumentError(f"{where} has no members")
    if len(ensemble.members) > MAX_MEMBERS:
        raise InvalidArgumentError(
            f"{where} has {len(ensemble.members)} members (max {MAX_MEMBERS})"
        )
    combine = ensemble.combine
    if combine == Combine.COMBINE_UNSPECIFIED:
        raise InvalidArgumentError(
            f"{where}: combine is unset (MEAN, WEIGHTED_MEAN, MAJORITY_VOTE or STACKING)"
        )
    _check_weights(where, ensemble)
    if combine == Combine.STACKING and not ensemble.stacker.model:
        raise InvalidArgumentError(f"{where}: STACKING needs a stacker model")
    sigs = [_signature(m, members, path) for m in ensemble.members]
    inputs: dict[str, TensorSpec] = {}
    owners: dict[str, str] = {}
    for ref, sig in zip(ensemble.members, sigs, strict=True):
        for spec in sig.inputs:
            _merge_input(where, inputs, owners, spec, describe(ref))
    if combine in (Combine.MEAN, Combine.WEIGHTED_MEAN):
        outputs = _mean_outputs(where, ensemble.members, sigs)
    elif combine == Combine.MAJORITY_VOTE:
        _vote_scores(where, ensemble, sigs)
        outputs = (VOTE_OUTPUT,)
    else:
        stacker = _signature(ensemble.stacker, members, path)
        _check_stacking(where, ensemble, sigs, stacker)
        outputs = stacker.outputs
        sigs.append(stacker)
    return Signature(tuple(inputs.values()), outputs, _batch(sigs))


def _check_weights(where: str, ensemble: composite_pb2.Ensemble) -> None:
    weights = list(ensemble.weights)
    if ensemble.combine != Combine.WEIGHTED_MEAN:
        if weights:
            raise InvalidArgumentError(f"{where}: weights are only for WEIGHTED_MEAN")
        return
    if len(weights) != len(ensemble.members):
        raise InvalidArgumentError(
            f"{where}: {len(weights)} weights for {len(ensemble.members)} members "
            "(one weight per member, in member order)"
        )
    bad = [w for w in weights if not (math.isfinite(w) and w > 0)]
    if bad:
        raise InvalidArgumentError(f"{where}: weights must be finite and > 0; got {bad[0]}")


def _mean_outputs(
    where: str, refs: Sequence[composite_pb2.ModelRef], sigs: Sequence[Signature]
) -> tuple[TensorSpec, ...]:
    first = sigs[0].outputs
    for spec in first:
        if spec.datatype not in FLOAT_TYPES:
            raise InvalidArgumentError(
                f"{where}: output '{spec.name}' of {describe(refs[0])} is {spec.datatype}; "
                f"a mean needs {', '.join(FLOAT_TYPES)}"
            )
    names = [s.name for s in first]
    for ref, sig in zip(refs[1:], sigs[1:], strict=True):
        if [s.name for s in sig.outputs] != names:
            raise InvalidArgumentError(
                f"{where}: {describe(ref)} gives outputs {[s.name for s in sig.outputs]}, "
                f"{describe(refs[0])} gives {names}; a mean needs the same outputs"
            )
        for a, b in zip(first, sig.outputs, strict=True):
            if not compatible(a, b):
                raise InvalidArgumentError(
                    f"{where}: output '{a.name}' is {fmt(a)} for {describe(refs[0])} but "
                    f"{fmt(b)} for {describe(ref)}"
                )
    return first


def _vote_scores(
    where: str, ensemble: composite_pb2.Ensemble, sigs: Sequence[Signature]
) -> list[TensorSpec]:
    """The per-class score output of each member (what MAJORITY_VOTE takes argmax of)."""
    chosen = []
    for ref, sig in zip(ensemble.members, sigs, strict=True):
        if ensemble.vote_output:
            found = [s for s in sig.outputs if s.name == ensemble.vote_output]
            if not found:
                raise InvalidArgumentError(
                    f"{where}: {describe(ref)} has no output '{ensemble.vote_output}'"
                )
            spec = found[0]
        elif len(sig.outputs) == 1:
            spec = sig.outputs[0]
        else:
            raise InvalidArgumentError(
                f"{where}: {describe(ref)} has {len(sig.outputs)} outputs; set vote_output"
            )
        if not spec.shape or spec.datatype == "BYTES":
            raise InvalidArgumentError(
                f"{where}: output '{spec.name}' of {describe(ref)} is {fmt(spec)}; a vote "
                "needs numeric class scores on the last axis"
            )
        chosen.append(spec)
    return chosen


def _check_stacking(
    where: str, ensemble: composite_pb2.Ensemble, sigs: Sequence[Signature], stacker: Signature
) -> None:
    if len(stacker.inputs) != 1:
        raise InvalidArgumentError(
            f"{where}: stacker {describe(ensemble.stacker)} has {len(stacker.inputs)} inputs; "
            "it must have exactly one (the members' outputs concatenated)"
        )
    target = stacker.inputs[0]
    width = 0
    for ref, sig in zip(ensemble.members, sigs, strict=True):
        for spec in sig.outputs:
            if spec.datatype != target.datatype or len(spec.shape) != len(target.shape):
                raise InvalidArgumentError(
                    f"{where}: output '{spec.name}' of {describe(ref)} is {fmt(spec)}; the "
                    f"stacker's input '{target.name}' is {fmt(target)}"
                )
            if not spec.shape or spec.shape[-1] < 0:
                raise InvalidArgumentError(
                    f"{where}: output '{spec.name}' of {describe(ref)} has no fixed last "
                    "dimension to concatenate along"
                )
            width += spec.shape[-1]
    if target.shape and target.shape[-1] not in (-1, width):
        raise InvalidArgumentError(
            f"{where}: the members' outputs concatenate to {width} columns but the stacker's "
            f"input '{target.name}' is {fmt(target)}"
        )


def chain_sources(
    chain: composite_pb2.Chain, step: int, inputs: Sequence[str]
) -> dict[str, composite_pb2.TensorSource]:
    """Where each input of step ``step`` comes from, defaults applied (composite.proto)."""
    steps = chain.steps
    out = {}
    for name in inputs:
        if name in steps[step].inputs:
            out[name] = steps[step].inputs[name]
        elif step == 0:
            out[name] = composite_pb2.TensorSource(step="", tensor=name)
        else:
            out[name] = composite_pb2.TensorSource(step=step_name(steps[step - 1]), tensor=name)
    return out


def step_name(step: composite_pb2.ChainStep) -> str:
    return step.name or step.model.model


def _chain(
    name: str, chain: composite_pb2.Chain, members: Members, path: tuple[str, ...]
) -> Signature:
    where = f"chain '{name}'"
    if not chain.steps:
        raise InvalidArgumentError(f"{where} has no steps")
    if len(chain.steps) > MAX_MEMBERS:
        raise InvalidArgumentError(f"{where} has {len(chain.steps)} steps (max {MAX_MEMBERS})")
    produced: dict[str, dict[str, TensorSpec]] = {}
    inputs: dict[str, TensorSpec] = {}
    owners: dict[str, str] = {}
    sigs = []
    for i, step in enumerate(chain.steps):
        label = step_name(step)
        if label in produced:
            raise InvalidArgumentError(f"{where}: two steps are named '{label}'; name them")
        sig = _signature(step.model, members, path)
        sigs.append(sig)
        wanted = {s.name: s for s in sig.inputs}
        unknown = sorted(set(step.inputs) - set(wanted))
        if unknown:
            raise InvalidArgumentError(
                f"{where}: step '{label}' maps {unknown[0]!r}, which {describe(step.model)} "
                f"does not take (inputs: {', '.join(wanted)})"
            )
        for input_name, source in chain_sources(chain, i, list(wanted)).items():
            target = wanted[input_name]
            if not source.step:
                _merge_input(where, inputs, owners, target, f"step '{label}'")
                continue
            outs = produced.get(source.step)
            if outs is None:
                raise InvalidArgumentError(
                    f"{where}: step '{label}' input '{input_name}' comes from "
                    f"'{source.step}', which is not an earlier step"
                )
            spec = outs.get(source.tensor)
            if spec is None:
                raise InvalidArgumentError(
                    f"{where}: step '{label}' input '{input_name}' wants '{source.step}."
                    f"{source.tensor}', but '{source.step}' gives {', '.join(outs)}"
                )
            if not compatible(spec, target):
                raise InvalidArgumentError(
                    f"{where}: '{source.step}.{source.tensor}' is {fmt(spec)} but step "
                    f"'{label}' input '{input_name}' is {fmt(target)}"
                )
        produced[label] = {s.name: s for s in sig.outputs}
    return Signature(tuple(inputs.values()), sigs[-1].outputs, _batch(sigs))
