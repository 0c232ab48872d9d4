"""Shadow traffic: a sampled fraction of a model's calls is sent again to the shadow version
its routing policy names, once the caller's answer is ready, and the two answers compared.

The caller never waits for, nor hears of, the shadow call: it starts as a background task
after the primary answer exists, has its own short deadline (the primary's latency times a
factor, within bounds), and any failure is only counted. Shadow calls in flight are bounded;
a sampled call that finds the bound reached is dropped and counted, so a hanging shadow
version costs at most that many pending tasks, never memory without end. Besides the
figures (``shadow_stats``), a bounded sample of the pairs that disagreed and of the shadow
calls that failed is kept for debugging (``shadow_samples``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from prometheus_client import Counter

from modelserve.calls import Call, Metadata
from modelserve.catalog.replica import Catalog, resolve_version
from modelserve.deadlines import Deadline
from modelserve.errors import ModelServeError
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.modelserve.v1 import registry_pb2
from router.forwarding import ToVersion
from router.shadow_samples import ShadowSamples, entry
from router.shadow_stats import ShadowStats, compare_outputs

log = logging.getLogger(__name__)

DEFAULT_AGREEMENT_TOLERANCE = 1e-6  # what agreement_tolerance 0 means (registry.proto)

SHADOW_CALLS = Counter(
    "modelserve_shadow_calls_total",
    "Shadow calls by model, primary and shadow version and outcome "
    "(agree, disagree, error, timeout)",
    ["model", "primary_version", "shadow_version", "outcome"],
)
SHADOW_DROPPED = Counter(
    "modelserve_shadow_dropped_total",
    "Sampled shadow calls not sent because too many were in flight",
    ["model"],
)

Enrich = Callable[
    [pb.ModelInferRequest, registry_pb2.ModelVersion, Call], Awaitable[pb.ModelInferRequest]
]


@dataclass(frozen=True)
class Target:
    version: registry_pb2.ModelVersion
    fraction: float
    tolerance: float


class ShadowMirror:
    def __init__(
        self,
        *,
        catalog: Catalog,
        infer: ToVersion,
        enrich: Enrich,
        stats: ShadowStats | None = None,
        samples: ShadowSamples | None = None,
        max_in_flight: int = 64,
        timeout_factor: float = 3.0,
        min_timeout_s: float = 0.05,
        max_timeout_s: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        self._catalog = catalog
        self._infer = infer
        self._enrich = enrich
        self.stats = stats or ShadowStats()
        self.samples = samples or ShadowSamples()
        self._max_in_flight = max_in_flight
        self._factor = timeout_factor
        self._min_timeout = min_timeout_s
        self._max_timeout = max_timeout_s
        self._rng = rng or random.Random()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def target(self, primary: registry_pb2.ModelVersion) -> Target | None:
        """Where ``primary``'s calls are mirrored; None without a shadow, or when the shadow
        is the primary itself (nothing to compare)."""
        model = self._catalog.models.get(primary.model)
        if model is None or not model.HasField("policy"):
            return None
        policy = model.policy.policy
        if not policy.HasField("shadow") or not policy.shadow.target:
            return None
        try:
            version = resolve_version(model, policy.shadow.target)
        except ModelServeError:
            return None  # e.g. the label was deleted: nothing to mirror to until it returns
        if version.version == primary.version:
            return None
        tolerance = policy.shadow.agreement_tolerance or DEFAULT_AGREEMENT_TOLERANCE
        return Target(version, policy.shadow.fraction, tolerance)

    def timeout_for(self, primary_s: float) -> float:
        return min(self._max_timeout, max(self._min_timeout, primary_s * self._factor))

    def after(
        self,
        caller: pb.ModelInferRequest,
        sent: pb.ModelInferRequest,
        primary: registry_pb2.ModelVersion,
        answer: pb.ModelInferResponse,
        primary_s: float,
        forwarded: Metadata = (),
    ) -> None:
        """Called once the caller's answer is ready; returns at once. ``caller`` is the
        request as the caller sent it, ``sent`` what the primary ran (enriched, maybe),
        ``forwarded`` the call's forwarded metadata (its x-request-id values are kept with
        a disagreement; read only for a mirrored call)."""
        target = self.target(primary)
        if target is None or self._rng.random() >= target.fraction:
            return
        if len(self._tasks) >= self._max_in_flight:
            self.stats.dropped += 1
            SHADOW_DROPPED.labels(primary.model).inc()
            return
        task = asyncio.get_running_loop().create_task(
            self._mirror(caller, sent, primary, answer, primary_s, target, _ids(forwarded))
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _mirror(
        self,
        caller: pb.ModelInferRequest,
        sent: pb.ModelInferRequest,
        primary: registry_pb2.ModelVersion,
        answer: pb.ModelInferResponse,
        primary_s: float,
        target: Target,
        request_ids: tuple[str, ...],
    ) -> None:
        shadow = target.version
        key = (primary.model, primary.version, shadow.version)
        labels = (primary.model, str(primary.version), str(shadow.version))
        timeout = self.timeout_for(primary_s)
        # The shadow call's own deadline, which has nothing to do with the caller's.
        call = Call(Deadline.after(timeout))
        request = pb.ModelInferRequest()
        # The shadow fills its own features; a shadow without any takes the model inputs the
        # primary's enrichment produced (the caller's request holds only entity keys then).
        request.CopyFrom(caller if shadow.config.feature_inputs else sent)
        request.model_version = str(shadow.version)  # a copy, decided here for the shadow
        started = time.perf_counter()

        def failed(error: str, *, timed_out: bool) -> None:
            self.stats.record_error(key, timeout=timed_out)
            SHADOW_CALLS.labels(*labels, "timeout" if timed_out else "error").inc()
            shadow_s = time.perf_counter() - started
            self.samples.failure(
                primary.model,
                lambda: entry(
                    caller=caller,
                    request_ids=request_ids,
                    primary_version=primary.version,
                    shadow_version=shadow.version,
                    primary=answer,
                    shadow=None,
                    primary_s=primary_s,
                    shadow_s=shadow_s,
                    error=error,
                    timeout=timed_out,
                ),
            )

        try:
            # The hard stop covers what the deadline does not (a retry, a slow enrichment).
            async with asyncio.timeout(timeout):
                if shadow.config.feature_inputs:
                    request = await self._enrich(request, shadow, call)
                reply = await self._infer(request, shadow, call)
        except TimeoutError:
            failed(f"no answer within {timeout:.3f} s", timed_out=True)
            return
        except ModelServeError as exc:
            timed_out = exc.code == grpc.StatusCode.DEADLINE_EXCEEDED
            failed(f"{exc.code.name}: {exc.message}", timed_out=timed_out)
            log.debug(
                "shadow call to %s v%d failed (request %s): %s",
                shadow.model,
                shadow.version,
                ",".join(request_ids) or "-",
                exc,
            )
            return
        except Exception as exc:  # whatever it is, it must not escape into the event loop's log
            failed(f"{type(exc).__name__}: {exc}", timed_out=False)
            log.warning("shadow call to %s v%d failed", shadow.model, shadow.version, exc_info=True)
            return
        shadow_s = time.perf_counter() - started
        comparison = compare_outputs(answer, reply, target.tolerance)
        self.stats.record_pair(key, primary_s, shadow_s, comparison)
        SHADOW_CALLS.labels(*labels, "agree" if comparison.agree else "disagree").inc()
        if not comparison.agree:
            self.samples.disagreement(
                primary.model,
                lambda: entry(
                    caller=caller,
                    request_ids=request_ids,
                    primary_version=primary.version,
                    shadow_version=shadow.version,
                    primary=answer,
                    shadow=reply,
                    primary_s=primary_s,
                    shadow_s=shadow_s,
                    comparison=comparison,
                ),
            )

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _ids(forwarded: Metadata) -> tuple[str, ...]:
    return tuple(v for k, v in forwarded if k == "x-request-id")
