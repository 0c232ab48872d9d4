"""The registry's composites: persisted in their own SQLite file beside the models, checked
against the models (``modelserve.catalog.composites``) before every write, and fanned out to
watchers.

Kept apart from ``RegistryStore`` so composites can evolve without touching the model tables;
the price is that the two are not one transaction. That is safe because a composite only
refers to models by name and is re-checked against the models each time it is written, and
readers (gateway, router) resolve members at request time.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from modelserve.catalog import composites
from modelserve.errors import (
    FailedPreconditionError,
    ModelServeError,
    NotFoundError,
    UnavailableError,
)
from modelserve.names import validate_name
from modelserve.proto.modelserve.v1 import composite_pb2, registry_pb2
from registry import convert
from registry.db import Database, Migration, apply_migrations, open_database

if TYPE_CHECKING:
    from registry.store import RegistryStore

COMPONENT = "composites"
MIGRATIONS = (
    Migration(
        1,
        "composites",
        ("CREATE TABLE IF NOT EXISTS composites (name TEXT PRIMARY KEY, body {blob} NOT NULL)",),
    ),
)
QUEUE_SIZE = 1024


class _Members:
    """``composites.Members`` over the registry's models and a set of composites."""

    def __init__(self, store: RegistryStore, items: dict[str, composite_pb2.Composite]) -> None:
        self._store = store
        self._items = items

    def composite(self, name: str) -> composite_pb2.Composite | None:
        return self._items.get(name)

    def version(self, ref: composite_pb2.ModelRef) -> registry_pb2.ModelVersion:
        return convert.version_to_proto(self._store.resolve(ref.model, ref.version, ref.label))


class CompositeStore:
    """Composites by name; every method blocks (SQLite): call them off the event loop."""

    def __init__(self, path: Path, models: RegistryStore, *, database_url: str = "") -> None:
        """SQLite at ``path`` unless ``database_url`` names the shared PostgreSQL database
        (where composites are read once at start: a replica does not yet see another's
        composite writes until it restarts)."""
        self._models = models
        self._lock = threading.Lock()
        self._conn = open_database(database_url, path)
        apply_migrations(self._conn, COMPONENT, MIGRATIONS)
        self._items: dict[str, composite_pb2.Composite] = {}
        for name, body in self._conn.execute("SELECT name, body FROM composites"):
            self._items[name] = composite_pb2.Composite.FromString(bytes(body))

    def close(self) -> None:
        self._conn.close()

    def __contains__(self, name: object) -> bool:
        return name in self._items  # one dict read: safe without the lock

    def list(self) -> list[composite_pb2.Composite]:
        with self._lock:
            return [self._items[n] for n in sorted(self._items)]

    def get(self, name: str) -> composite_pb2.Composite:
        validate_name(name, "composite name")
        with self._lock:
            found = self._items.get(name)
        if found is None:
            raise NotFoundError(f"unknown composite '{name}'")
        return found

    def set(self, composite: composite_pb2.Composite) -> composite_pb2.Composite:
        validate_name(composite.name, "composite name")
        if self._is_model(composite.name):
            raise FailedPreconditionError(
                f"'{composite.name}' is a registered model; a composite needs its own name"
            )
        with self._lock:
            old = self._items.get(composite.name)
            new = composite_pb2.Composite()
            new.CopyFrom(composite)
            if old is not None:
                new.revision = old.revision
                if old == new:
                    return old  # already so: not a change
            new.revision = (old.revision if old is not None else 0) + 1
            items = {**self._items, new.name: new}
            members = _Members(self._models, items)
            _checked(f"composite '{new.name}'", partial(composites.check, new, members))
            for other in items.values():
                if other.name != new.name:
                    _checked(
                        f"the change would break composite '{other.name}'",
                        partial(composites.signature, other.name, members),
                    )
            with self._transaction() as conn:
                conn.execute(
                    "INSERT INTO composites (name, body) VALUES (?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET body = excluded.body",
                    (new.name, new.SerializeToString(deterministic=True)),
                )
            self._items = items
            return new

    def delete(self, name: str) -> None:
        validate_name(name, "composite name")
        with self._lock:
            if name not in self._items:
                raise NotFoundError(f"unknown composite '{name}'")
            users = sorted(
                c.name
                for c in self._items.values()
                if any(r.model == name for r in composites.references(c))
            )
            if users:
                raise FailedPreconditionError(
                    f"composite '{name}' is used by {', '.join(users)}: change those first"
                )
            with self._transaction() as conn:
                conn.execute("DELETE FROM composites WHERE name = ?", (name,))
            self._items = {k: v for k, v in self._items.items() if k != name}

    def _is_model(self, name: str) -> bool:
        try:
            self._models.get_model(name)
        except NotFoundError:
            return False
        return True

    def _transaction(self) -> AbstractContextManager[Database]:
        return self._conn.transaction()


def _checked(what: str, check: Callable[[], object]) -> None:
    """Run ``check``; a missing member is the composite's problem (FAILED_PRECONDITION),
    not an unknown name in this request (NOT_FOUND), so the message says which composite."""
    try:
        check()
    except NotFoundError as exc:
        raise FailedPreconditionError(f"{what}: {exc.message}") from None
    except ModelServeError as exc:
        if what.startswith("the change"):
            raise FailedPreconditionError(f"{what}: {exc.message}") from None
        raise


class CompositeHub:
    """Fans composite events out to WatchComposites streams without blocking a writer: a
    watcher that falls ``QUEUE_SIZE`` events behind is ended (UNAVAILABLE) and re-watches."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[composite_pb2.CompositeEvent | None]] = set()

    @contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[composite_pb2.CompositeEvent | None]]:
        queue: asyncio.Queue[composite_pb2.CompositeEvent | None] = asyncio.Queue(QUEUE_SIZE)
        self._queues.add(queue)
        try:
            yield queue
        finally:
            self._queues.discard(queue)

    def publish(self, event: composite_pb2.CompositeEvent) -> None:
        for queue in list(self._queues):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self._end(queue)

    def close(self) -> None:
        for queue in list(self._queues):
            self._end(queue)

    def _end(self, queue: asyncio.Queue[composite_pb2.CompositeEvent | None]) -> None:
        self._queues.discard(queue)
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(None)


async def next_event(
    queue: asyncio.Queue[composite_pb2.CompositeEvent | None],
) -> composite_pb2.CompositeEvent:
    event = await queue.get()
    if event is None:
        raise UnavailableError("composite watch ended (behind or shutting down); watch again")
    return event
