"""The model_repository extension's rules (RepositoryModelLoad / RepositoryModelUnload) that
need no I/O: which of Triton's request parameters we take, and the messages.

Load and unload map onto the registry's model state (``SetModelLoaded``): the gateway serves
them; router and worker answer UNIMPLEMENTED pointing there. Triton's load may carry a config
override (``config``) and model files (``file:<path>``) that define the model in the request;
here models come only from ``modelserve models push``, so both are refused by name.
"""

from __future__ import annotations

from modelserve.errors import InvalidArgumentError, UnimplementedError
from modelserve.proto.inference import grpc_service_pb2 as pb

ON_THE_GATEWAY = (
    "RepositoryModelLoad/RepositoryModelUnload are served by the gateway (the public V2 "
    "endpoint), not by this service"
)
LOAD_CAP_S = 120.0  # longest a load waits for a READY worker when the client set no deadline


def _check_repository(name: str, repository: str) -> None:
    if not name:
        raise InvalidArgumentError("model_name is required")
    if repository:
        raise InvalidArgumentError(
            f"repository_name {repository[:64]!r}: modelserve has one repository (the "
            "registry); leave repository_name empty"
        )


def check_load(request: pb.RepositoryModelLoadRequest) -> None:
    _check_repository(request.model_name, request.repository_name)
    for key in sorted(request.parameters):
        if key == "config":
            raise UnimplementedError(
                "load parameter 'config' (a config override) is not supported: a version's "
                "serving config is set when it is pushed (`modelserve models push` flags)"
            )
        if key.startswith("file:"):
            raise UnimplementedError(
                f"load parameter {key[:128]!r} (model files in the request) is not "
                "supported: push versions with `modelserve models push`"
            )
        raise InvalidArgumentError(
            f"unknown load parameter {key[:128]!r}; RepositoryModelLoad takes none here"
        )


def check_unload(request: pb.RepositoryModelUnloadRequest) -> None:
    _check_repository(request.model_name, request.repository_name)
    for key in sorted(request.parameters):
        value = request.parameters[key]
        if key == "unload_dependents":
            if value.WhichOneof("parameter_choice") != "bool_param":
                raise InvalidArgumentError("unload parameter 'unload_dependents' must be a bool")
            if value.bool_param:
                raise UnimplementedError(
                    "unload parameter 'unload_dependents' = true is not supported: composites "
                    "using the model are not unloaded with it"
                )
            continue
        raise InvalidArgumentError(
            f"unknown unload parameter {key[:128]!r}; only 'unload_dependents' is taken"
        )
