"""worker: runs model versions in ONNX Runtime sessions."""

from modelserve.server import ServiceSpec
from worker.service import build
from worker.settings import WorkerSettings

SPEC = ServiceSpec(
    name="worker", settings_cls=WorkerSettings, build=build, connection_age_limited=True
)
