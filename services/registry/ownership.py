"""Who owns a model's traffic: a running canary, a running experiment, or nobody (manual).

Canaries and experiments both steer a model by rewriting its routing policy; two at once
would overwrite each other's splits (and an experiment's key-to-arm assignment would silently
go wrong), and a manual edit under either is undone at its next step. So every traffic write
from outside an owner is refused with FAILED_PRECONDITION naming the owner, unless forced;
forcing first ends the owner the way it normally ends (a canary aborted to its baseline, an
experiment stopped to its control), logged, and then writes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from modelserve.errors import FailedPreconditionError

log = logging.getLogger(__name__)

Find = Callable[[str], Awaitable[str]]  # model -> owner description, "" when none
End = Callable[[str, str], Awaitable[None]]  # model, reason


@dataclass(frozen=True)
class _Kind:
    name: str
    find: Find
    end: End


class TrafficOwners:
    def __init__(self) -> None:
        self._kinds: list[_Kind] = []

    def add(self, name: str, find: Find, end: End) -> None:
        """``name`` ("canary", "experiment") owns a model while ``find`` describes it."""
        self._kinds.append(_Kind(name, find, end))

    async def owner(self, model: str) -> str:
        for kind in self._kinds:
            found = await kind.find(model)
            if found:
                return found
        return ""

    async def claim(self, model: str, by: str, *, force: bool, allow: str = "") -> None:
        """Let ``by`` write ``model``'s traffic: refused when another owner holds it (not of
        kind ``allow``, which handles its own exclusion), unless ``force``."""
        for kind in self._kinds:
            if kind.name == allow:
                continue
            found = await kind.find(model)
            if not found:
                continue
            if not force:
                raise FailedPreconditionError(
                    f"the traffic of model {model!r} is owned by {found}; {by} would fight "
                    f"over its split. End it first, or pass force (--force) to take over"
                )
            reason = f"taken over by {by} (forced)"
            log.warning("%s: %s of model %s", found, reason, model)
            await kind.end(model, reason)
