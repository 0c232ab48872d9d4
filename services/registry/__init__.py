"""The model registry: versions, ONNX artifacts, signatures, serving configs and labels,
persisted in SQLite beside a content-addressed artifact directory, with a change stream."""

from modelserve.server import ServiceSpec
from registry.service import build
from registry.settings import RegistrySettings

SPEC = ServiceSpec(name="registry", settings_cls=RegistrySettings, build=build)
