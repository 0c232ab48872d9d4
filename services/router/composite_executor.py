"""Running composites (ensembles and chains) in the router.

Each member call is an ordinary routed call: the member's version is chosen by the catalog
(labels, policies, the request's routing key) and sent through the forwarder's worker
selection and retries. Ensemble members run concurrently and share the caller's deadline;
sequential steps (chain steps; stacking's members, then its stacker) each get an equal share
of what remains when they start, so a slow early step cannot leave nothing for the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import numpy as np

from modelserve.calls import Call
from modelserve.catalog import composites
from modelserve.catalog.composite_replica import CompositeCatalog
from modelserve.catalog.routing import routing_key_of
from modelserve.deadlines import Deadline
from modelserve.errors import DeadlineExceededError, InvalidArgumentError, ModelServeError
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.modelserve.v1 import composite_pb2, registry_pb2
from modelserve.tensors import decode_inputs, decode_outputs, encode_inputs, encode_outputs
from router.composite_combine import majority_vote, mean, stack
from router.forwarding import ToVersion

Arrays = Mapping[str, np.ndarray]
Combine = composites.Combine


class CompositeExecutor:
    def __init__(
        self, *, composites: CompositeCatalog, infer: ToVersion, default_timeout: float
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
        self, request: pb.ModelInferRequest, composite: composite_pb2.Composite, call: Call
    ) -> pb.ModelInferResponse:
        signature = self._composites.signature(composite.name)
        arrays = decode_inputs(request)
        missing = [s.name for s in signature.inputs if s.name not in arrays]
        if missing:
            raise InvalidArgumentError(
                f"composite '{composite.name}' needs input '{missing[0]}' "
                f"(inputs: {', '.join(s.name for s in signature.inputs)})"
            )
        if call.deadline.at is None:
            call = call.with_deadline(Deadline.after(self._default_timeout))
        key = routing_key_of(request, call.forwarded)
        outputs = await self._run(composite, arrays, call, key)
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
        self, composite: composite_pb2.Composite, arrays: Arrays, call: Call, key: str
    ) -> dict[str, np.ndarray]:
        if composite.WhichOneof("kind") == "chain":
            return await self._chain(composite.chain, arrays, call, key)
        return await self._ensemble(composite.ensemble, arrays, call, key)

    async def _ensemble(
        self, ensemble: composite_pb2.Ensemble, arrays: Arrays, call: Call, key: str
    ) -> dict[str, np.ndarray]:
        stacking = ensemble.combine == Combine.STACKING
        members_call = call.with_deadline(call.deadline.share(2)) if stacking else call
        results = await asyncio.gather(
            *(self._call(m, arrays, members_call, key) for m in ensemble.members)
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
        return await self._call(ensemble.stacker, stacked, call, key)

    async def _chain(
        self, chain: composite_pb2.Chain, arrays: Arrays, call: Call, key: str
    ) -> dict[str, np.ndarray]:
        produced: dict[str, Arrays] = {"": arrays}
        out: dict[str, np.ndarray] = {}
        for i, step in enumerate(chain.steps):
            signature = composites.member_signature(step.model, self._composites)
            sources = composites.chain_sources(chain, i, [s.name for s in signature.inputs])
            inputs = {name: produced[s.step][s.tensor] for name, s in sources.items()}
            step_call = call.with_deadline(call.deadline.share(len(chain.steps) - i))
            out = await self._call(step.model, inputs, step_call, key)
            produced[composites.step_name(step)] = out
        return out

    async def _call(
        self, ref: composite_pb2.ModelRef, arrays: Arrays, call: Call, key: str
    ) -> dict[str, np.ndarray]:
        if call.deadline.expired():
            raise DeadlineExceededError(
                f"deadline exceeded before composite member {composites.describe(ref)} ran"
            )
        nested = self._composites.composite(ref.model)
        if nested is not None:
            return await self._run(nested, arrays, call, key)
        version = self._composites.catalog.route(
            ref.model, str(ref.version) if ref.version else "", ref.label, key
        )
        signature = composites.version_signature(version)
        request = pb.ModelInferRequest(model_name=ref.model, model_version=str(version.version))
        encode_inputs(request, {s.name: arrays[s.name] for s in signature.inputs})
        return decode_outputs(await self._infer(request, version, call))


def _vote_scores(result: Mapping[str, np.ndarray], vote_output: str) -> np.ndarray:
    if vote_output:
        return result[vote_output]
    (only,) = result.values()
    return only
