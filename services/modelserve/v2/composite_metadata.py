"""V2 metadata answers for composites, in Triton's ensemble shape: platform ``ensemble`` and
``ensemble_scheduling`` steps whose maps name the tensors passed between members.

Triton's step maps go model tensor -> ensemble tensor name. Internal tensors are named
``<step>.<output>`` (an ensemble's steps are named ``member<i>``); MEAN and MAJORITY_VOTE are
no Triton step, so the config says how members are combined in parameter
``modelserve_combine``.
"""

from __future__ import annotations

from modelserve.catalog import composites
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.inference import model_config_pb2 as mc
from modelserve.proto.modelserve.v1 import composite_pb2
from modelserve.tensors import DTYPES, TensorSpec

PLATFORM = "ensemble"
Step = mc.ModelEnsembling.Step


def model_metadata(
    composite: composite_pb2.Composite, signature: composites.Signature
) -> pb.ModelMetadataResponse:
    def tensors(specs: tuple[TensorSpec, ...]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
        return [
            pb.ModelMetadataResponse.TensorMetadata(
                name=s.name, datatype=s.datatype, shape=list(s.shape)
            )
            for s in specs
        ]

    return pb.ModelMetadataResponse(
        name=composite.name,
        versions=[str(composite.revision)],
        platform=PLATFORM,
        inputs=tensors(signature.inputs),
        outputs=tensors(signature.outputs),
    )


def model_config(
    composite: composite_pb2.Composite,
    signature: composites.Signature,
    members: composites.Members,
) -> pb.ModelConfigResponse:
    batched = signature.max_batch_size > 0

    def dims(spec: TensorSpec) -> list[int]:
        return list(spec.shape[1:] if batched else spec.shape)

    config = mc.ModelConfig(
        name=composite.name,
        platform=PLATFORM,
        max_batch_size=signature.max_batch_size,
        input=[
            mc.ModelInput(
                name=s.name, data_type=mc.DataType.Value(DTYPES[s.datatype].config), dims=dims(s)
            )
            for s in signature.inputs
        ],
        output=[
            mc.ModelOutput(
                name=s.name, data_type=mc.DataType.Value(DTYPES[s.datatype].config), dims=dims(s)
            )
            for s in signature.outputs
        ],
        version_policy=mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=1)),
    )
    if composite.WhichOneof("kind") == "chain":
        steps = _chain_steps(composite.chain, members)
    else:
        steps = _ensemble_steps(composite.ensemble, members)
        config.parameters["modelserve_combine"].string_value = composites.Combine.Name(
            composite.ensemble.combine
        )
    config.ensemble_scheduling.CopyFrom(mc.ModelEnsembling(step=steps))
    config.parameters["modelserve_revision"].string_value = str(composite.revision)
    return pb.ModelConfigResponse(config=config)


def _step(ref: composite_pb2.ModelRef) -> Step:
    # Triton: -1 = the version policy's choice (our default resolution, or a label).
    return Step(model_name=ref.model, model_version=ref.version or -1)


def _ensemble_steps(ensemble: composite_pb2.Ensemble, members: composites.Members) -> list[Step]:
    steps = []
    stacked = ensemble.combine == composites.Combine.STACKING
    for i, ref in enumerate(ensemble.members):
        sig = composites.member_signature(ref, members)
        step = _step(ref)
        step.input_map.update({s.name: s.name for s in sig.inputs})
        step.output_map.update({s.name: f"member{i}.{s.name}" for s in sig.outputs})
        steps.append(step)
    if stacked:
        stacker = composites.member_signature(ensemble.stacker, members)
        step = _step(ensemble.stacker)
        # The stacker's one input is the concatenation of every member's outputs.
        step.input_map[stacker.inputs[0].name] = (
            "concat(" + ", ".join(v for s in steps for v in s.output_map.values()) + ")"
        )
        step.output_map.update({s.name: s.name for s in stacker.outputs})
        steps.append(step)
    return steps


def _chain_steps(chain: composite_pb2.Chain, members: composites.Members) -> list[Step]:
    steps = []
    last = len(chain.steps) - 1
    for i, link in enumerate(chain.steps):
        sig = composites.member_signature(link.model, members)
        name = composites.step_name(link)
        step = _step(link.model)
        sources = composites.chain_sources(chain, i, [s.name for s in sig.inputs])
        step.input_map.update(
            {k: f"{s.step}.{s.tensor}" if s.step else s.tensor for k, s in sources.items()}
        )
        step.output_map.update(
            {s.name: s.name if i == last else f"{name}.{s.name}" for s in sig.outputs}
        )
        steps.append(step)
    return steps
