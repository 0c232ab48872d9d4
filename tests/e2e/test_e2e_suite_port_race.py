"""start_suite picks the router's and gateway's ports before the registry starts; when another
process takes one in between (seen once in a full e2e run: the router failed to bind), the
launch is tried again with new ports instead of failing the whole module's fixture."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from modelserve.cli import suite as suite_module


def test_a_picked_port_taken_in_between_is_picked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = taken.getsockname()[1]
    real = suite_module.free_port
    handed: list[int] = []

    def racy_free_port() -> int:
        port = busy if not handed else real()  # the first pick is already someone else's
        handed.append(port)
        return port

    monkeypatch.setattr(suite_module, "free_port", racy_free_port)
    try:
        running = suite_module.start_suite(tmp_path / "suite", workers=1)
        try:
            assert busy not in {p.port for p in running.processes.values()}
            assert handed[0] == busy and len(handed) > 2  # picked again after the failure
        finally:
            running.stop(timeout=10)
    finally:
        taken.close()
