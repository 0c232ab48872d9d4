"""WatchHub: fans committed changes out to Watch streams without ever blocking a writer.

Each watcher has a bounded queue. A watcher too slow to keep up is dropped rather than
buffered without limit or allowed to stall pushes: its stream ends with UNAVAILABLE, which
watch clients retry, and the new stream starts from a fresh snapshot, so nothing is missed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from types import TracebackType

from modelserve.errors import ResourceExhaustedError, UnavailableError
from registry.records import ChangeEvent

log = logging.getLogger(__name__)

FELL_BEHIND = "watch fell behind; watch again"
SHUTTING_DOWN = "registry is shutting down; watch again"


@dataclass(frozen=True)
class _End:
    message: str


class Subscription:
    """One watcher's queue of events; use as a context manager so it always unsubscribes."""

    def __init__(self, hub: WatchHub, queue_size: int) -> None:
        self._hub = hub
        self._queue: asyncio.Queue[ChangeEvent | _End] = asyncio.Queue(maxsize=queue_size)
        self._ended = False

    async def get(self) -> ChangeEvent:
        """The next event; raises UnavailableError once the hub dropped or closed this one."""
        item = await self._queue.get()
        if isinstance(item, _End):
            raise UnavailableError(item.message)
        return item

    def close(self) -> None:
        self._hub._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _offer(self, event: ChangeEvent) -> bool:
        """Queue ``event`` without waiting; False when the queue is full."""
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            return False
        return True

    def _end(self, message: str) -> None:
        """Replace whatever is queued by the end marker, so the reader learns at once."""
        if self._ended:
            return
        self._ended = True
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(_End(message))


class WatchHub:
    """Delivers each ChangeEvent to every current subscriber.

    ``publish`` runs on the event loop; ``publish_threadsafe`` may be called from any thread
    (the store's executor thread calls it after each commit) and keeps commit order.
    """

    def __init__(self, *, queue_size: int = 64, max_watchers: int = 256) -> None:
        if queue_size < 1 or max_watchers < 1:
            raise ValueError("queue_size and max_watchers must be >= 1")
        self._queue_size = queue_size
        self._max_watchers = max_watchers
        self._subscribers: set[Subscription] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def watcher_count(self) -> int:
        return len(self._subscribers)

    def subscribe(self) -> Subscription:
        """A new subscription; call this before reading the snapshot so no change is lost."""
        if self._closed:
            raise UnavailableError(SHUTTING_DOWN)
        if len(self._subscribers) >= self._max_watchers:
            raise ResourceExhaustedError(
                f"too many watchers: this registry serves at most {self._max_watchers}"
            )
        # Bound to the loop of the first subscriber: events published before anyone
        # subscribed have nobody to reach, so an unbound hub can simply drop them.
        self._loop = asyncio.get_running_loop()
        subscription = Subscription(self, self._queue_size)
        self._subscribers.add(subscription)
        return subscription

    def publish(self, event: ChangeEvent) -> None:
        for subscription in list(self._subscribers):
            if not subscription._offer(event):
                log.warning("dropping a watcher %d events behind", self._queue_size)
                self._subscribers.discard(subscription)
                subscription._end(FELL_BEHIND)

    def publish_threadsafe(self, event: ChangeEvent) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self.publish, event)
        except RuntimeError:  # loop closed: the process is stopping and nobody is watching
            log.debug("change at revision %d not delivered: loop closed", event.revision)

    def close(self) -> None:
        """End every stream (UNAVAILABLE, so watchers reconnect elsewhere) and refuse new
        ones; call it before the server's graceful stop so streams do not hold it up."""
        self._closed = True
        for subscription in list(self._subscribers):
            subscription._end(SHUTTING_DOWN)
        self._subscribers.clear()

    def _unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)
