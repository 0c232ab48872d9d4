"""WatchHub: bounded fan-out; a slow watcher is dropped and never blocks a publisher."""

from __future__ import annotations

import asyncio
import threading

import pytest
from registry_testkit import eventually

from modelserve.errors import ResourceExhaustedError, UnavailableError
from registry.records import ChangeEvent
from registry.watch import FELL_BEHIND, WatchHub


def event(revision: int) -> ChangeEvent:
    return ChangeEvent(revision=revision, models=())


async def test_a_slow_watcher_is_dropped_and_the_others_keep_going() -> None:
    hub = WatchHub(queue_size=2)
    slow, fast = hub.subscribe(), hub.subscribe()
    got: list[int] = []
    for revision in range(1, 6):
        hub.publish(event(revision))  # synchronous: a full queue cannot make it wait
        got.append((await fast.get()).revision)
    assert got == [1, 2, 3, 4, 5]
    assert hub.watcher_count == 1
    with pytest.raises(UnavailableError, match=FELL_BEHIND):
        await slow.get()  # told at once, without first replaying a stale backlog
    fast.close()
    assert hub.watcher_count == 0


async def test_events_published_from_another_thread_arrive_in_order() -> None:
    hub = WatchHub(queue_size=128)
    with hub.subscribe() as subscription:

        def publish_many() -> None:
            for revision in range(1, 101):
                hub.publish_threadsafe(event(revision))

        thread = threading.Thread(target=publish_many)
        thread.start()
        got = [(await asyncio.wait_for(subscription.get(), 5)).revision for _ in range(100)]
        thread.join()
    assert got == list(range(1, 101))
    assert hub.watcher_count == 0


async def test_close_ends_every_stream_and_refuses_new_ones() -> None:
    hub = WatchHub()
    subscription = hub.subscribe()
    waiter = asyncio.ensure_future(subscription.get())
    await eventually(lambda: hub.watcher_count == 1)
    hub.close()
    with pytest.raises(UnavailableError, match="shutting down"):
        await asyncio.wait_for(waiter, 5)
    with pytest.raises(UnavailableError):
        hub.subscribe()


async def test_watchers_are_bounded() -> None:
    hub = WatchHub(max_watchers=2)
    first, _second = hub.subscribe(), hub.subscribe()
    with pytest.raises(ResourceExhaustedError, match="at most 2"):
        hub.subscribe()
    first.close()
    hub.subscribe().close()  # room again once one leaves


def test_publishing_before_anyone_subscribed_is_a_no_op() -> None:
    WatchHub().publish_threadsafe(event(1))  # no loop bound yet: nobody to tell, no error
