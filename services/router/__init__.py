"""router: decides which model version answers and which worker runs it."""

from modelserve.server import ServiceSpec
from router.service import build
from router.settings import RouterSettings

SPEC = ServiceSpec(name="router", settings_cls=RouterSettings, build=build)
