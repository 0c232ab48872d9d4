"""gateway: the public V2 (Open Inference Protocol) edge."""

from gateway.service import build
from gateway.settings import GatewaySettings
from modelserve.server import ServiceSpec

SPEC = ServiceSpec(
    name="gateway",
    settings_cls=GatewaySettings,
    build=build,
    public=True,
    connection_age_limited=True,
)
