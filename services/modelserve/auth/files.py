"""A file read again only when it changes (mtime, size, inode: one stat per check, at most one
check per ``RECHECK_S``)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
# Keys, JWT keys and service tokens are read on every RPC at every hop: a stat per call was a
# syscall per request per hop (part of auth's cost on the hot path, issue 14). A change is
# seen within this long instead of at once.
RECHECK_S = 1.0


class Reloading(Generic[T]):
    """``get()`` returns ``parse(text)`` of ``path``, parsed again after the file changes.

    A file that becomes unreadable or invalid keeps the last good value (logged once per
    change), so a half-edited keys file never locks everyone out; before any good value,
    ``get()`` raises the error.
    """

    def __init__(
        self,
        path: str | Path,
        parse: Callable[[str], T],
        what: str,
        recheck_s: float | None = None,
    ) -> None:
        self.path = Path(path)
        self._parse = parse
        self._what = what
        self._recheck_s = recheck_s
        self._next_check = 0.0
        self._stamp: tuple[int, int, int] | None = None
        self._value: T | None = None
        self._error: Exception | None = None

    def get(self) -> T:
        now = time.monotonic()
        if self._value is not None and now < self._next_check:
            return self._value
        self._next_check = now + (RECHECK_S if self._recheck_s is None else self._recheck_s)
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError as exc:
            stamp = (-1, -1, -1)
            if stamp != self._stamp:
                self._stamp = stamp
                self._failed(exc)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._value = self._parse(self.path.read_text())
                self._error = None
                log.info("loaded %s from %s", self._what, self.path)
            except (OSError, ValueError) as exc:
                self._failed(exc)
        if self._value is None:
            raise self._error or ValueError(f"{self._what} {self.path} not loaded")
        return self._value

    def _failed(self, exc: Exception) -> None:
        self._error = exc
        kept = "keeping the previous one" if self._value is not None else "nothing loaded"
        log.error("cannot load %s from %s (%s); %s", self._what, self.path, exc, kept)
