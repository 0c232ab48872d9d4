"""Requests served by a policy's fallback version because no worker held their version READY:
counted per (model, from, to) and logged at most once per interval per pair, so a fleet that
lost a version's workers says so without a log line per request."""

from __future__ import annotations

import logging
import time

from prometheus_client import Counter

log = logging.getLogger(__name__)
LOG_INTERVAL_S = 10.0

FALLBACKS = Counter(
    "modelserve_router_fallbacks_total",
    "Requests a routing policy sent to a version no serving worker held READY, served by the "
    "policy's fallback version instead",
    ["model", "from_version", "to_version"],
)
_last_logged: dict[tuple[str, int, int], tuple[float, int]] = {}


def note_fallback(model: str, version: int, fallback: int) -> None:
    FALLBACKS.labels(model, str(version), str(fallback)).inc()
    key = (model, version, fallback)
    now = time.monotonic()
    last, skipped = _last_logged.get(key, (0.0, 0))
    if now - last < LOG_INTERVAL_S:
        _last_logged[key] = (last, skipped + 1)
        return
    if len(_last_logged) > 1024:  # bounded: distinct pairs are few; forget old ones
        _last_logged.clear()
    _last_logged[key] = (now, 0)
    log.warning(
        "model %s version %d has no READY worker: serving the policy's fallback version %d "
        "(%d more since the last line)",
        model,
        version,
        fallback,
        skipped,
    )
