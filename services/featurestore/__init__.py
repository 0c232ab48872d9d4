"""The feature store: Feast-like feature views and batched online lookups by entity key.

Domain: ``views`` (what a view is and how it may evolve), ``catalog`` (views persisted in
SQLite), ``rows`` (one entity's row as one binary value), ``online`` (write/lookup semantics)
over an ``OnlineStore`` backend (``sqlite_store`` by default, ``redis_store`` in production).
``featurestore_servicer`` is the protobuf edge.
"""

from featurestore.service import build
from featurestore.settings import FeatureStoreSettings
from modelserve.server import ServiceSpec

SPEC = ServiceSpec(name="featurestore", settings_cls=FeatureStoreSettings, build=build)
