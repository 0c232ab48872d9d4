"""Shadow disagreements kept for debugging: per model, a bounded sample of the mirrored calls
whose two answers disagreed, and apart from them a smaller one of the shadow calls that failed
or ran out of time, each entry small enough that the whole store stays a few megabytes.

An entry (``router_pb2.ShadowDisagreement``) holds the router call's x-request-id(s) (or one
generated for the entry when the call had none, marked so), a short sha256 of the caller's
raw input contents, both versions, both answers cut to ``MAX_VALUES`` values per output and
``MAX_OUTPUTS`` outputs (marked ``truncated``), the largest absolute difference and its
output (or why the answers were not comparable), both latencies and the time. A failure keeps
the primary's outputs and the shadow's error instead of its outputs.

Sampling: reservoir sampling (Vitter's algorithm R, as the latency figures in
``shadow_stats``), not a keep-latest ring. A ring under a flood of disagreements holds only
the last few seconds' worth, all alike; the first N alone would hold only the start. The
reservoir keeps a uniform sample of every disagreement seen since the model entered the
store, whatever the rate, and says how many it stands for (``disagreements_seen``), so the
sample can be read as representative. The price: late in a long run a new kind of
disagreement enters in proportion to its share (N / seen per event), not at once; reading
the latest ones is what logs and the ``modelserve_shadow_calls_total`` counter are for.
Entries are built only when the reservoir keeps them, so a flood costs a random draw per
disagreement, not a copy of its tensors.

Failures get their own, smaller reservoir: a shadow version that fails on every call would
otherwise push every disagreement out. Bounds: ``MAX_DISAGREEMENTS`` + ``MAX_FAILURES``
entries per model and ``MAX_MODELS`` models (the model written least recently is forgotten
first). One event loop writes and reads the store: no locks.
"""

from __future__ import annotations

import hashlib
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import numpy as np

from modelserve.errors import InvalidArgumentError
from modelserve.proto.inference import grpc_service_pb2 as pb
from modelserve.proto.modelserve.v1 import router_pb2
from modelserve.tensors import decode_outputs
from router.shadow_stats import Comparison

MAX_DISAGREEMENTS = 256  # per model
MAX_FAILURES = 64  # per model
MAX_MODELS = 64
MAX_VALUES = 16  # per output and side
MAX_OUTPUTS = 8  # per side
MAX_TEXT = 64  # characters kept of one BYTES element
MAX_ERROR = 256  # characters kept of a shadow error
INPUT_HASH_HEX = 16

T = TypeVar("T")


class Sample(Generic[T]):
    """A uniform sample of at most ``size`` of the items offered (algorithm R); an item is
    built only when it is kept."""

    def __init__(self, size: int, rng: random.Random) -> None:
        self.size = size
        self.seen = 0
        self.items: list[T] = []
        self._rng = rng

    def offer(self, build: Callable[[], T]) -> bool:
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append(build())
            return True
        slot = self._rng.randrange(self.seen)
        if slot >= self.size:  # kept with probability size / seen
            return False
        self.items[slot] = build()
        return True


class ModelSamples:
    def __init__(self, disagreements: int, failures: int, rng: random.Random) -> None:
        self.disagreements: Sample[router_pb2.ShadowDisagreement] = Sample(disagreements, rng)
        self.failures: Sample[router_pb2.ShadowDisagreement] = Sample(failures, rng)


class ShadowSamples:
    """The store, keyed by model name."""

    def __init__(
        self,
        *,
        max_disagreements: int = MAX_DISAGREEMENTS,
        max_failures: int = MAX_FAILURES,
        max_models: int = MAX_MODELS,
        rng: random.Random | None = None,
    ) -> None:
        self._max_disagreements = max_disagreements
        self._max_failures = max_failures
        self._max_models = max_models
        self._rng = rng or random.Random()
        self._models: OrderedDict[str, ModelSamples] = OrderedDict()

    def _get(self, model: str) -> ModelSamples:
        found = self._models.get(model)
        if found is None:
            if len(self._models) >= self._max_models:
                self._models.popitem(last=False)  # written least recently
            found = self._models[model] = ModelSamples(
                self._max_disagreements, self._max_failures, self._rng
            )
        else:
            self._models.move_to_end(model)
        return found

    def disagreement(self, model: str, build: Callable[[], router_pb2.ShadowDisagreement]) -> bool:
        """Offer one disagreeing pair; ``build`` runs only if the sample keeps it."""
        return self._get(model).disagreements.offer(build)

    def failure(self, model: str, build: Callable[[], router_pb2.ShadowDisagreement]) -> bool:
        return self._get(model).failures.offer(build)

    def report(self, model: str, limit: int = 0) -> router_pb2.ShadowDisagreementsResponse:
        out = router_pb2.ShadowDisagreementsResponse(
            disagreements_capacity=self._max_disagreements,
            failures_capacity=self._max_failures,
        )
        found = self._models.get(model)
        if found is None:
            return out
        out.disagreements_seen = found.disagreements.seen
        out.failures_seen = found.failures.seen
        entries = sorted(
            [*found.disagreements.items, *found.failures.items],
            key=lambda e: e.unix_ms,
            reverse=True,
        )
        out.entries.extend(entries[:limit] if limit > 0 else entries)
        return out


# ---- building an entry ---------------------------------------------------------------------


def input_hash(request: pb.ModelInferRequest) -> str:
    """The first ``INPUT_HASH_HEX`` hex digits of sha256 over the raw input contents in order
    (``sha256(b"".join(raw_input_contents))``, easy to redo by hand), or over each input's
    typed contents, serialized, when the request carries no raw contents."""
    digest = hashlib.sha256()
    if request.raw_input_contents:
        for raw in request.raw_input_contents:
            digest.update(raw)
    else:
        for tensor in request.inputs:
            digest.update(tensor.contents.SerializeToString(deterministic=True))
    return digest.hexdigest()[:INPUT_HASH_HEX]


def tensor_samples(
    response: pb.ModelInferResponse | None,
) -> tuple[list[router_pb2.ShadowTensorSample], bool]:
    """``response``'s outputs, each cut to ``MAX_VALUES`` values, at most ``MAX_OUTPUTS`` of
    them; and whether outputs were left out."""
    if response is None:
        return [], False
    try:
        arrays = decode_outputs(response)
    except InvalidArgumentError:
        arrays = {}
    out = []
    for tensor in response.outputs[:MAX_OUTPUTS]:
        sample = router_pb2.ShadowTensorSample(
            name=tensor.name, datatype=tensor.datatype, shape=tensor.shape
        )
        array = arrays.get(tensor.name)
        if array is not None:
            flat = array.reshape(-1)
            head = flat[:MAX_VALUES]
            sample.total_values = int(flat.size)
            sample.truncated = flat.size > MAX_VALUES
            if flat.dtype.kind in "OSU":
                sample.text_values.extend(_text(v) for v in head.tolist())
            else:
                sample.values.extend(head.astype(np.float64).tolist())
        out.append(sample)
    return out, len(response.outputs) > MAX_OUTPUTS


def _text(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    text = str(value)
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def entry(
    *,
    caller: pb.ModelInferRequest,
    request_ids: Sequence[str],
    primary_version: int,
    shadow_version: int,
    primary: pb.ModelInferResponse,
    shadow: pb.ModelInferResponse | None,
    primary_s: float,
    shadow_s: float,
    comparison: Comparison | None = None,
    error: str = "",
    timeout: bool = False,
) -> router_pb2.ShadowDisagreement:
    """One entry: a disagreement (``shadow`` and ``comparison``) or a failure (``error``)."""
    primary_outputs, cut_primary = tensor_samples(primary)
    shadow_outputs, cut_shadow = tensor_samples(shadow)
    found = router_pb2.ShadowDisagreement(
        request_ids=list(request_ids) or [uuid.uuid4().hex[:16]],
        request_id_generated=not request_ids,
        input_sha256=input_hash(caller),
        primary_version=primary_version,
        shadow_version=shadow_version,
        primary_outputs=primary_outputs,
        shadow_outputs=shadow_outputs,
        outputs_truncated=cut_primary or cut_shadow,
        primary_latency_s=primary_s,
        shadow_latency_s=shadow_s,
        unix_ms=time.time_ns() // 1_000_000,
        error=error[:MAX_ERROR],
        timeout=timeout,
    )
    if comparison is not None:
        found.max_abs_diff = comparison.max_abs_diff or 0.0
        found.max_diff_output = comparison.output
        found.reason = comparison.reason
    return found
