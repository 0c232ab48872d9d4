"""The CLI never shows a traceback: each former traceback case (issue 12) exits non-zero with
one line on stderr; --version prints the version; addresses come from the environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = Path(sys.executable).parent / "modelserve"


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "MODELSERVE_DEBUG"}
    return subprocess.run(
        [str(CLI), *args], capture_output=True, text=True, timeout=60, env={**clean, **env}
    )


@pytest.mark.parametrize(
    "args",
    [
        ("infer", "fraud", "--gateway", "127.0.0.1:1", "--input", "transaction=[[1,2"),
        ("infer", "fraud", "--gateway", "127.0.0.1:1", "--input", "no-equals-sign"),
        ("models", "--registry", "127.0.0.1:1", "push", "m", "/no/such/model.onnx"),
        ("models", "--registry", "127.0.0.1:1", "list"),  # nothing listens there
        ("infer", "fraud", "--gateway", "127.0.0.1:1", "--input", "x=[1]"),
    ],
)
def test_each_mistake_is_one_line_and_a_nonzero_exit(args: tuple[str, ...]) -> None:
    done = run(*args)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr


def test_version() -> None:
    done = run("--version")
    assert done.returncode == 0 and done.stdout.startswith("modelserve "), done


def test_addresses_come_from_the_environment() -> None:
    done = run("models", "list", MODELSERVE_REGISTRY="127.0.0.1:9")
    assert done.returncode != 0 and "127.0.0.1:9" in done.stderr, done.stderr


def test_debug_shows_the_traceback() -> None:
    done = run("models", "push", "m", "/no/such/model.onnx", MODELSERVE_DEBUG="1")
    assert done.returncode == 2 and "no such file" in done.stderr  # a usage error stays short
