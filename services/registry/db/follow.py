"""ChangeFollower: wakes a replica when another replica commits to the shared database.

A thread with its own PostgreSQL connection LISTENs on the registry's channel (writers NOTIFY
in the committing transaction, so a notification means "committed") and calls ``wake`` on
each, and every ``poll_s`` regardless: a notification lost while the connection was down
still gets caught up within a poll. ``wake`` (``RegistryStore.catch_up``) reads what changed
from the database, so a spurious wake costs one small query and a missed one only latency.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

CHANNEL = "modelserve_registry_changes"
STOP_WITHIN_S = 0.5  # how long stop() may wait for the listening thread


class ChangeFollower:
    def __init__(self, url: str, wake: Callable[[], object], poll_s: float = 1.0) -> None:
        self._url = url
        self._wake = wake
        self._poll_s = poll_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="registry-follow", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=STOP_WITHIN_S + 5)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._listen()
            except Exception:  # the server restarted or is unreachable: poll, then reconnect
                log.warning("change listener lost its connection; retrying", exc_info=True)
                self._stopping.wait(self._poll_s)
                self._safe_wake()

    def _listen(self) -> None:
        import psycopg

        conn: Any = psycopg.connect(self._url, autocommit=True)
        with conn:
            conn.execute(f"LISTEN {CHANNEL}")
            self._safe_wake()  # whatever committed before the LISTEN took effect
            next_poll = time.monotonic() + self._poll_s
            while not self._stopping.is_set():
                # Short waits, so stop() is answered within STOP_WITHIN_S whatever the poll.
                notified = False
                for _ in conn.notifies(timeout=min(self._poll_s, STOP_WITHIN_S), stop_after=1):
                    notified = True
                if notified or time.monotonic() >= next_poll:
                    self._safe_wake()
                    next_poll = time.monotonic() + self._poll_s

    def _safe_wake(self) -> None:
        if self._stopping.is_set():
            return
        try:
            self._wake()
        except Exception:
            log.warning("catching up with other replicas failed; retrying", exc_info=True)
