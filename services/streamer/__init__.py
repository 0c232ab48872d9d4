"""The streamer: streaming inference from an event stream to a result stream.

``pipeline`` is the consumer loop (micro-batches, backpressure, dead letters, acks after the
write) over one ``brokers`` interface with two adapters (``redis_streams``, ``jetstream``);
``events`` is the event and result format; ``scorer`` calls the gateway, so streaming traffic
is routed, split, enriched and cached exactly like online traffic.
"""

from modelserve.server import ServiceSpec
from streamer.service import build
from streamer.settings import StreamerSettings

SPEC = ServiceSpec(name="streamer", settings_cls=StreamerSettings, build=build)
