"""Assembling a model's full input from the caller's input and online features.

A version's ``feature_inputs`` (registry.proto) name, per filled model input, a feature view,
its features in order and the entity input that keys them. For one call (a client request or
a merged batch of them) the router looks every view up once for all rows, concatenates each
row's feature values along the last axis, cast to the model input's datatype, drops entity
inputs the model does not take, and forwards the rest untouched (raw bytes are not re-encoded).

When the store cannot answer (UNAVAILABLE), the version's policy decides (T33): fail closed
(the default: the call is UNAVAILABLE) or, for a view whose every filled input has
``fallback_values``, fail open (those rows are used and the call is served).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from modelserve.calls import Call
from modelserve.catalog.signatures import caller_inputs
from modelserve.errors import FailedPreconditionError, UnavailableError
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.modelserve.v1 import registry_pb2
from modelserve.tensors import (
    DTYPES,
    TensorSpec,
    decode_inputs,
    encode_inputs,
    validate_infer_request,
)
from router.entity_keys import entity_keys
from router.feature_cache import FeatureRow
from router.features import FeatureClient
from router.metrics import FEATURE_FALLBACKS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Fill:
    """One model input filled from ``view``: ``columns`` index the view lookup's features."""

    model_input: str
    view: str
    entity_input: str
    columns: tuple[int, ...]
    width: int
    datatype: str
    fallback: tuple[float, ...]  # the fail-open row; empty = fail closed (T33)


@dataclass(frozen=True)
class _Plan:
    caller_inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    lookups: Mapping[str, tuple[str, ...]]  # view -> every feature the version reads from it
    fills: tuple[_Fill, ...]
    dropped: frozenset[str]  # entity inputs the model does not take
    fail_open: frozenset[str]  # views whose every fill has a fallback row


def _plan(version: registry_pb2.ModelVersion) -> _Plan:
    specs = {s.name: s for s in version.inputs}
    lookups: dict[str, list[str]] = {}
    for fi in version.config.feature_inputs:
        wanted = lookups.setdefault(fi.view, [])
        wanted.extend(f for f in fi.features if f not in wanted)
    fills = tuple(
        _Fill(
            model_input=fi.model_input,
            view=fi.view,
            entity_input=fi.entity_input,
            columns=tuple(lookups[fi.view].index(f) for f in fi.features),
            width=specs[fi.model_input].shape[-1],
            datatype=specs[fi.model_input].datatype,
            fallback=tuple(fi.fallback_values),
        )
        for fi in version.config.feature_inputs
    )
    return _Plan(
        caller_inputs=tuple(
            TensorSpec(s.name, s.datatype, tuple(s.shape)) for s in caller_inputs(version)
        ),
        outputs=tuple(TensorSpec(s.name, s.datatype, tuple(s.shape)) for s in version.outputs),
        max_batch_size=version.config.max_batch_size,
        lookups={view: tuple(names) for view, names in lookups.items()},
        fills=fills,
        dropped=frozenset(
            fi.entity_input
            for fi in version.config.feature_inputs
            if not fi.entity_input_is_model_input
        ),
        fail_open=frozenset(
            view for view in lookups if all(f.fallback for f in fills if f.view == view)
        ),
    )


class Enricher:
    def __init__(self, *, features: FeatureClient) -> None:
        self._features = features
        self._plans: dict[tuple[str, int, str], _Plan] = {}

    def _plan_for(self, version: registry_pb2.ModelVersion) -> _Plan:
        # A version's config is fixed at push, so model, version and artifact identify it.
        key = (version.model, version.version, version.sha256)
        found = self._plans.get(key)
        if found is None:
            if len(self._plans) > 4096:  # bounded: versions come and go
                self._plans.clear()
            found = self._plans[key] = _plan(version)
        return found

    async def enrich(
        self,
        request: pb.ModelInferRequest,
        version: registry_pb2.ModelVersion,
        call: Call,
    ) -> pb.ModelInferRequest:
        """The request the model runs on; ``request`` must match the caller's signature."""
        plan = self._plan_for(version)
        # Also done by the gateway, but the router may be called directly, and the entity
        # keys are about to be read.
        validate_infer_request(request, plan.caller_inputs, plan.outputs, plan.max_batch_size)
        arrays = decode_inputs(request)
        keys = {
            name: entity_keys(name, arrays[name]) for name in {f.entity_input for f in plan.fills}
        }
        views = list(plan.lookups)
        found = await asyncio.gather(
            *(
                self._lookup(
                    view,
                    plan,
                    [k for f in plan.fills if f.view == view for k in keys[f.entity_input]],
                    call,
                )
                for view in views
            )
        )
        rows_by_view = dict(zip(views, found, strict=True))
        filled: dict[str, np.ndarray] = {}
        for fill in plan.fills:
            rows = rows_by_view[fill.view]
            filled[fill.model_input] = (
                _fallback(fill, len(keys[fill.entity_input]))
                if rows is None
                else _assemble(fill, plan.lookups[fill.view], keys[fill.entity_input], rows)
            )
        return _forwarded(request, arrays, filled, plan.dropped)

    async def _lookup(
        self, view: str, plan: _Plan, keys: list[str], call: Call
    ) -> Mapping[str, FeatureRow] | None:
        """The rows of ``keys``; None when the store cannot answer and the version's policy
        for ``view`` is fail-open (every input it fills has fallback_values)."""
        try:
            return await self._features.lookup(view, plan.lookups[view], keys, call)
        except UnavailableError:
            # Only the store's own failures (down, breaker open, feature budget spent):
            # the caller's deadline stays DEADLINE_EXCEEDED, bad keys INVALID_ARGUMENT.
            if view not in plan.fail_open:
                raise
            FEATURE_FALLBACKS.labels(view).inc()
            log.debug("feature store unavailable for view %r: serving fallback_values", view)
            return None


def _fallback(fill: _Fill, rows: int) -> np.ndarray:
    dtype = DTYPES[fill.datatype].numpy
    assert dtype is not None  # the registry allows numeric datatypes only
    return np.tile(np.asarray(fill.fallback, dtype=dtype), (rows, 1))


def _assemble(
    fill: _Fill, features: tuple[str, ...], keys: Sequence[str], rows: Mapping[str, FeatureRow]
) -> np.ndarray:
    dtype = DTYPES[fill.datatype].numpy
    assert dtype is not None  # the registry allows numeric datatypes only
    picked = [rows[key] for key in keys]
    widths = [picked[0][c].size if picked else 0 for c in fill.columns]
    if picked and sum(widths) != fill.width:
        shown = ", ".join(f"{features[c]}: {w}" for c, w in zip(fill.columns, widths, strict=True))
        raise FailedPreconditionError(
            f"input {fill.model_input!r} is {fill.width} wide but the features of view "
            f"{fill.view!r} sum to {sum(widths)} ({shown}); fix the version's feature_inputs"
        )
    out = np.empty((len(keys), fill.width), dtype=dtype)
    offset = 0
    for column, width in zip(fill.columns, widths, strict=True):
        if picked and picked[0][column].dtype == np.object_:
            raise FailedPreconditionError(
                f"feature {features[column]!r} of view {fill.view!r} is BYTES; it cannot fill "
                f"{fill.datatype} input {fill.model_input!r}"
            )
        if picked:  # assignment casts to the input's datatype
            out[:, offset : offset + width] = np.stack([values[column] for values in picked])
        offset += width
    return out


def _forwarded(
    request: pb.ModelInferRequest,
    arrays: Mapping[str, np.ndarray],
    filled: Mapping[str, np.ndarray],
    dropped: frozenset[str],
) -> pb.ModelInferRequest:
    out = pb.ModelInferRequest(
        model_name=request.model_name,
        model_version=request.model_version,
        id=request.id,
        outputs=request.outputs,
    )
    for name, value in request.parameters.items():
        out.parameters[name].CopyFrom(value)
    if request.raw_input_contents:
        for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True):
            if tensor.name not in dropped:
                out.inputs.append(tensor)
                out.raw_input_contents.append(raw)
    else:  # typed contents: one request cannot mix them with raw, so re-encode as raw
        encode_inputs(
            out, {t.name: arrays[t.name] for t in request.inputs if t.name not in dropped}
        )
    encode_inputs(out, filled)
    return out
