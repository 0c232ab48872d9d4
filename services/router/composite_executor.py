"""Running composites (ensembles and chains) in the router.

Each member call is an ordinary routed call: the member's version is chosen by the catalog
(labels, policies, the request's routing key) and sent through the forwarder's worker
selection and retries. Ensemble members run concurrently and share the caller's deadline;
sequential steps (chain steps; stacking's members, then its stacker) each get an equal share
of what remains when they start, so a slow early step cannot leave nothing for the rest.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import numpy as np
from grpc import aio

from modelserve.catalog import composites
from modelserve.catalog.composite_replica import CompositeCatalog
from modelserve.catalog.routing import routing_key_of
from modelserve.errors import DeadlineExceededError, InvalidArgumentError, ModelServeError
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.modelserve.v1 import composite_pb2, registry_pb2
from modelserve.tensors import decode_inputs, decode_outputs, encode_inputs, encode_outputs
from router.composite_combine import majority_vote, mean, split_deadline, stack

InferFn = Callable[
    [pb.ModelInferRequest, registry_pb2.ModelVersion, aio.ServicerContext | None],
    Awaitable[pb.ModelInferResponse],
]
Arrays = Mapping[str, np.ndarray]
Combine = composites.Combine


class _StepContext:
    """The part of a servicer context an outbound call reads (``outbound_timeout``): the
    time this step may use, not the whole request's."""

    def __init__(self, deadline: float) -> None:
        self._deadline = deadline

    def time_remaining(self) -> float:
        return max(self._deadline - time.monotonic(), 0.0)


class CompositeExecutor:
    def __init__(
        self, *, composites: CompositeCatalog, infer: InferFn, default_timeout: float
    ) -> None:
        self._composites = composites
        self._infer = infer
        self._default_timeout = default_timeout

    def handles(self, name: str) -> bool:
        return name in self._composites

    @property
    def catalog(self) -> CompositeCatalog:
        return self._composites

    def ready(self, name: str, is_ready: Callable[[registry_pb2.ModelVersion], bool]) -> bool:
        """Ready when every member (recursively) has a ready version now."""
        composite = self._composites.get(name)
        for ref in composites.references(composite):
            if ref.model in self._composites:
                if not self.ready(ref.model, is_ready):
                    return False
            elif not is_ready(self._composites.version(ref)):
                return False
        return True

    def add_to_index(
        self,
        index: pb.RepositoryIndexResponse,
        is_ready: Callable[[registry_pb2.ModelVersion], bool],
    ) -> None:
        """List each composite as one model at its revision, READY when all members are."""
        for name in sorted(self._composites.items):
            try:
                ready = self.ready(name, is_ready)
            except ModelServeError:  # a member went missing since the composite was stored
                ready = False
            index.models.add(
                name=name,
                version=str(self._composites.items[name].revision),
                state="READY" if ready else "UNAVAILABLE",
                reason="" if ready else "a member has no ready version",
            )

    async def infer(
        self, request: pb.ModelInferRequest, context: aio.ServicerContext
    ) -> pb.ModelInferResponse:
        composite = self._composites.get(request.model_name, request.model_version)
        signature = self._composites.signature(composite.name)
        arrays = decode_inputs(request)
        missing = [s.name for s in signature.inputs if s.name not in arrays]
        if missing:
            raise InvalidArgumentError(
                f"composite '{composite.name}' needs input '{missing[0]}' "
                f"(inputs: {', '.join(s.name for s in signature.inputs)})"
            )
        remaining = context.time_remaining()
        deadline = time.monotonic() + (self._default_timeout if remaining is None else remaining)
        key = routing_key_of(request, context.invocation_metadata())
        outputs = await self._run(composite, arrays, deadline, key)
        wanted = [o.name for o in request.outputs] or [s.name for s in signature.outputs]
        unknown = [n for n in wanted if n not in outputs]
        if unknown:
            raise InvalidArgumentError(
                f"composite '{composite.name}' has no output '{unknown[0]}' "
                f"(outputs: {', '.join(s.name for s in signature.outputs)})"
            )
        response = pb.ModelInferResponse(
            model_name=composite.name, model_version=str(composite.revision), id=request.id
        )
        encode_outputs(
            response,
            {n: outputs[n] for n in wanted},
            {s.name: s.datatype for s in signature.outputs},
        )
        return response

    async def _run(
        self, composite: composite_pb2.Composite, arrays: Arrays, deadline: float, key: str
    ) -> dict[str, np.ndarray]:
        if composite.WhichOneof("kind") == "chain":
            return await self._chain(composite.chain, arrays, deadline, key)
        return await self._ensemble(composite.ensemble, arrays, deadline, key)

    async def _ensemble(
        self, ensemble: composite_pb2.Ensemble, arrays: Arrays, deadline: float, key: str
    ) -> dict[str, np.ndarray]:
        stacking = ensemble.combine == Combine.STACKING
        members_deadline = _share(deadline, 2) if stacking else deadline
        results = await asyncio.gather(
            *(self._call(m, arrays, members_deadline, key) for m in ensemble.members)
        )
        if ensemble.combine == Combine.MEAN:
            return mean(results)
        if ensemble.combine == Combine.WEIGHTED_MEAN:
            return mean(results, list(ensemble.weights))
        if ensemble.combine == Combine.MAJORITY_VOTE:
            scores = [_vote_scores(r, ensemble.vote_output) for r in results]
            return {composites.VOTE_OUTPUT.name: majority_vote(scores)}
        order = [
            [s.name for s in composites.member_signature(m, self._composites).outputs]
            for m in ensemble.members
        ]
        stacker = composites.member_signature(ensemble.stacker, self._composites)
        stacked = {stacker.inputs[0].name: stack(results, order)}
        return await self._call(ensemble.stacker, stacked, deadline, key)

    async def _chain(
        self, chain: composite_pb2.Chain, arrays: Arrays, deadline: float, key: str
    ) -> dict[str, np.ndarray]:
        produced: dict[str, Arrays] = {"": arrays}
        out: dict[str, np.ndarray] = {}
        for i, step in enumerate(chain.steps):
            signature = composites.member_signature(step.model, self._composites)
            sources = composites.chain_sources(chain, i, [s.name for s in signature.inputs])
            inputs = {name: produced[s.step][s.tensor] for name, s in sources.items()}
            out = await self._call(step.model, inputs, _share(deadline, len(chain.steps) - i), key)
            produced[composites.step_name(step)] = out
        return out

    async def _call(
        self, ref: composite_pb2.ModelRef, arrays: Arrays, deadline: float, key: str
    ) -> dict[str, np.ndarray]:
        if time.monotonic() >= deadline:
            raise DeadlineExceededError(
                f"deadline exceeded before composite member {composites.describe(ref)} ran"
            )
        nested = self._composites.composite(ref.model)
        if nested is not None:
            return await self._run(nested, arrays, deadline, key)
        version = self._composites.catalog.route(
            ref.model, str(ref.version) if ref.version else "", ref.label, key
        )
        signature = composites.version_signature(version)
        request = pb.ModelInferRequest(model_name=ref.model)
        encode_inputs(request, {s.name: arrays[s.name] for s in signature.inputs})
        context = cast(Any, _StepContext(deadline))
        return decode_outputs(await self._infer(request, version, context))


def _share(deadline: float, steps_left: int) -> float:
    now = time.monotonic()
    return now + split_deadline(max(deadline - now, 0.0), steps_left)


def _vote_scores(result: Mapping[str, np.ndarray], vote_output: str) -> np.ndarray:
    if vote_output:
        return result[vote_output]
    (only,) = result.values()
    return only
