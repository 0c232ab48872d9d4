"""Two registry stores (two replicas, each its own data dir) on one PostgreSQL database: a
write on one reaches the other's change listener (NOTIFY, with the poll as fallback), and a
lease has exactly one holder until it expires."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from registry_testkit import FRAUD_V1, FRAUD_V2, push_direct

from modelserve.errors import FailedPreconditionError
from registry.records import ChangeEvent
from registry.store import RegistryStore


@pytest.fixture
def replicas(tmp_path: Path, pg_database: str) -> Iterator[tuple[RegistryStore, RegistryStore]]:
    from pgsupport import reset_database

    reset_database(pg_database)
    a = RegistryStore(tmp_path / "a", database_url=pg_database)
    b = RegistryStore(tmp_path / "b", database_url=pg_database)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def wait_for(predicate: object, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s")
        time.sleep(0.02)


def test_a_write_on_one_replica_is_announced_on_the_other(
    replicas: tuple[RegistryStore, RegistryStore],
) -> None:
    a, b = replicas
    seen: list[ChangeEvent] = []
    b._on_change = seen.append
    b.follow(poll_s=30.0)  # a poll that long cannot be what delivers it: NOTIFY does
    push_direct(a, "fraud", FRAUD_V1, labels=["production"])
    wait_for(lambda: seen and seen[-1].revision == a.revision())
    model = seen[-1].models[0]
    assert model.name == "fraud" and model.labels == {"production": 1}
    push_direct(a, "fraud", FRAUD_V2)
    a.set_label("fraud", "production", 2)
    wait_for(lambda: seen[-1].revision == a.revision())
    assert seen[-1].models[0].labels == {"production": 2}
    revisions = [e.revision for e in seen]
    assert revisions == sorted(set(revisions))  # in order, never twice
    # Writes on b itself keep their order with a's.
    b.set_label("fraud", "staging", 1)
    wait_for(lambda: seen[-1].models[0].labels.get("staging") == 1)
    assert b.revision() == a.revision()


def test_a_follower_with_a_long_poll_stops_at_once(
    replicas: tuple[RegistryStore, RegistryStore],
) -> None:
    """stop() does not wait out the poll (30 s here): a replica's shutdown, and every test's
    teardown, would otherwise take that long."""
    from registry.db.follow import ChangeFollower

    _, b = replicas
    follower = ChangeFollower(b.database_url, lambda: None, poll_s=30.0)
    follower.start()
    time.sleep(0.3)  # listening
    started = time.monotonic()
    follower.stop()
    assert not follower._thread.is_alive()
    assert time.monotonic() - started < 5.0  # the poll is 30 s; the bound is STOP_WITHIN_S


def test_writers_on_two_replicas_take_turns(
    replicas: tuple[RegistryStore, RegistryStore],
) -> None:
    a, b = replicas
    push_direct(a, "fraud", FRAUD_V1)
    push_direct(b, "fraud", FRAUD_V2)  # b reads a's version 1: this is version 2
    assert [v.version for v in a.get_model("fraud").versions] == [1, 2]
    assert a.revision() == b.revision() == 2


def test_one_lease_holder_until_it_expires(
    replicas: tuple[RegistryStore, RegistryStore],
) -> None:
    a, b = replicas
    assert a.take_lease("canary-controller", "a", ttl_s=1.0)
    assert not b.take_lease("canary-controller", "b", ttl_s=1.0)
    assert a.take_lease("canary-controller", "a", ttl_s=1.0)  # a renewal
    time.sleep(1.2)  # a stops renewing (it died)
    assert b.take_lease("canary-controller", "b", ttl_s=5.0)
    assert not a.take_lease("canary-controller", "a", ttl_s=5.0)
    b.release_lease("canary-controller", "b")
    assert a.take_lease("canary-controller", "a", ttl_s=5.0)


def test_two_replicas_share_one_data_dir_only_by_mistake(tmp_path: Path, pg_database: str) -> None:
    store = RegistryStore(tmp_path / "a", database_url=pg_database)
    try:
        with pytest.raises(FailedPreconditionError, match="another registry process"):
            RegistryStore(tmp_path / "a", database_url=pg_database)
    finally:
        store.close()
