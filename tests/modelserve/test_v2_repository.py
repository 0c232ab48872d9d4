"""The model_repository extension below the gateway: parameter rules, an unloaded model in
the catalog (decide refuses it), in the repository index and in what workers deploy."""

from __future__ import annotations

import pytest

from modelserve.catalog.replica import Catalog
from modelserve.discovery.static import StaticDiscovery
from modelserve.errors import InvalidArgumentError, UnavailableError, UnimplementedError
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.modelserve.v1 import registry_pb2
from modelserve.v2 import metadata, repository
from worker.loader import deployed_versions


def model(name: str, unloaded: bool = False) -> registry_pb2.Model:
    return registry_pb2.Model(
        name=name,
        versions=[registry_pb2.ModelVersion(model=name, version=1, sha256="x")],
        labels={"production": 1},
        unloaded=unloaded,
    )


def test_load_refuses_what_triton_allows_but_we_do_not_serve() -> None:
    repository.check_load(pb.RepositoryModelLoadRequest(model_name="m"))
    config = pb.RepositoryModelLoadRequest(model_name="m")
    config.parameters["config"].string_param = "{}"
    with pytest.raises(UnimplementedError, match="'config'"):
        repository.check_load(config)
    files = pb.RepositoryModelLoadRequest(model_name="m")
    files.parameters["file:1/model.onnx"].bytes_param = b"x"
    with pytest.raises(UnimplementedError, match=r"'file:1/model\.onnx'"):
        repository.check_load(files)
    other = pb.RepositoryModelLoadRequest(model_name="m")
    other.parameters["x"].bool_param = True
    with pytest.raises(InvalidArgumentError, match="unknown load parameter 'x'"):
        repository.check_load(other)
    with pytest.raises(InvalidArgumentError, match="one repository"):
        repository.check_load(pb.RepositoryModelLoadRequest(model_name="m", repository_name="r"))


def test_unload_takes_unload_dependents_false_only() -> None:
    request = pb.RepositoryModelUnloadRequest(model_name="m")
    request.parameters["unload_dependents"].bool_param = False
    repository.check_unload(request)
    request.parameters["unload_dependents"].bool_param = True
    with pytest.raises(UnimplementedError, match="unload_dependents"):
        repository.check_unload(request)


def test_an_unloaded_model_is_refused_unavailable_and_comes_back() -> None:
    catalog = Catalog(StaticDiscovery({}))
    catalog.apply(registry_pb2.WatchEvent(revision=1, snapshot=True, models=[model("m", True)]))
    request = pb.ModelInferRequest(model_name="m", model_version="1")
    with pytest.raises(UnavailableError, match="'m' is unloaded; load it with"):
        catalog.decide(request, None)
    catalog.apply(registry_pb2.WatchEvent(revision=2, models=[model("m")]))
    assert catalog.decide(request, None).version == 1 and not catalog.is_unloaded("m")


def test_index_and_deployment_leave_an_unloaded_model_out() -> None:
    models = {"m": model("m", True), "n": model("n")}
    index = metadata.repository_index(models.values(), {("m", 1), ("n", 1)})
    assert [(e.name, e.state, e.reason) for e in index.models] == [
        ("m", "UNAVAILABLE", "unloaded"),
        ("n", "READY", ""),
    ]
    failed = metadata.repository_index([model("n")], set(), {("n", 1): "w1: bad file"})
    assert failed.models[0].reason == "load failed: w1: bad file"
    assert set(deployed_versions(models, set())) == {("n", 1)}
