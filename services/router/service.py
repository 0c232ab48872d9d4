"""Composition root of the router: builds its parts and passes them in explicitly."""

from __future__ import annotations

from modelserve.catalog.composite_replica import CompositeCatalog
from modelserve.catalog.replica import Catalog
from modelserve.catalog.version_stats import VersionStats
from modelserve.channels import EndpointSet
from modelserve.proto.modelserve.v1 import router_pb2, router_pb2_grpc
from modelserve.server import Runtime
from modelserve.v2.servicer import serve_v2
from modelserve.workers import WorkerPool
from router.cache_backends import CacheBackend, LocalBackend, RedisBackend
from router.composite_executor import CompositeExecutor
from router.control_servicer import RouterControlServicer
from router.dataplane import RouterDataPlane
from router.enrichment import Enricher
from router.feature_cache import FeatureCache
from router.features import FeatureClient, follow_feature_stores
from router.forwarding import Forwarder
from router.lookup import LookupAnswerer
from router.prediction_cache import PredictionCache
from router.settings import RouterSettings
from router.shadow import ShadowMirror


def _prediction_cache(settings: RouterSettings) -> PredictionCache:
    backend: CacheBackend
    if settings.prediction_cache_redis_url:
        backend = RedisBackend(
            settings.prediction_cache_redis_url,
            key_prefix=settings.prediction_cache_redis_key_prefix,
        )
    else:
        backend = LocalBackend(
            max_entries=settings.prediction_cache_max_entries,
            max_bytes=settings.prediction_cache_max_bytes,
        )
    return PredictionCache(
        backend=backend,
        budget_cap_s=settings.feature_budget_seconds,
        max_value_bytes=settings.prediction_cache_max_value_bytes,
    )


async def build(runtime: Runtime, settings: RouterSettings) -> None:
    catalog = Catalog(runtime.discovery)
    pool = WorkerPool(runtime.discovery)
    forwarder = Forwarder(
        pool=pool,
        retry_attempts=settings.retry_attempts,
        default_timeout=settings.default_timeout_seconds,
    )
    featurestores = EndpointSet()
    enricher = Enricher(
        features=FeatureClient(
            endpoints=featurestores,
            cache=FeatureCache(
                ttl_s=settings.feature_cache_ttl_seconds,
                max_entries=settings.feature_cache_max_entries,
            ),
            budget_cap_s=settings.feature_budget_seconds,
        )
    )
    predictions = _prediction_cache(settings)
    composites = CompositeCatalog(runtime.discovery, catalog)
    shadow = ShadowMirror(
        catalog=catalog,
        infer=forwarder.infer,
        enrich=enricher.enrich,
        max_in_flight=settings.shadow_max_in_flight,
        timeout_factor=settings.shadow_timeout_factor,
        min_timeout_s=settings.shadow_min_timeout_seconds,
        max_timeout_s=settings.shadow_max_timeout_seconds,
    )
    version_stats = VersionStats("router")  # written by ModelInfer, read by RouterControl
    lookups = LookupAnswerer(endpoints=featurestores)
    serve_v2(
        runtime,
        RouterDataPlane(
            catalog=catalog,
            pool=pool,
            forwarder=forwarder,
            enricher=enricher,
            predictions=predictions,
            lookups=lookups,
            composites=composites,
            executor=CompositeExecutor(
                composites=composites,
                infer=lookups.or_forward(forwarder.infer),
                default_timeout=settings.default_timeout_seconds,
            ),
            shadow=shadow,
            version_stats=version_stats,
        ),
    )
    runtime.add_service(
        router_pb2.DESCRIPTOR.services_by_name["RouterControl"].full_name,
        router_pb2_grpc.add_RouterControlServicer_to_server,
        RouterControlServicer(
            catalog=catalog,
            pool=pool,
            shadow=shadow.stats,
            versions=version_stats,
            samples=shadow.samples,
        ),
    )
    runtime.background(catalog.run(), "registry watch")
    runtime.background(composites.run(), "composite watch")
    runtime.background(pool.run(), "worker discovery")
    runtime.background(
        follow_feature_stores(runtime.discovery, featurestores), "featurestore discovery"
    )

    # SERVING once the catalog is synced: workers may come later (ModelInfer says
    # UNAVAILABLE until one holds the version, which routers and clients retry).
    runtime.serve_when(catalog.synced)
    runtime.on_stop(pool.close)
    runtime.on_stop(catalog.close)
    runtime.on_stop(composites.close)
    runtime.on_stop(featurestores.close)
    runtime.on_stop(predictions.close)
    runtime.on_stop(shadow.close)
