"""``modelserve models push`` by reference: FILE or --uri, and --uri needs --sha256; each
mistake is one ``error:`` line and exit 2, before any connection is made."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = Path(sys.executable).parent / "modelserve"
SHA = "0" * 64


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MODELSERVE_DEBUG"}
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("m",), "give FILE or --uri URI"),
        (("m", "model.onnx", "--uri", "s3://b/k.onnx", "--sha256", SHA), "give FILE or --uri"),
        (("m", "--uri", "s3://b/k.onnx"), "--uri needs --sha256"),
    ],
)
def test_push_by_reference_usage_errors(args: tuple[str, ...], message: str) -> None:
    # Port 1: nothing listens, so reaching the registry would be a different error (exit 1).
    done = run("models", "push", *args, "--registry", "127.0.0.1:1")
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr


def test_a_push_by_reference_reaches_the_registry() -> None:
    done = run("models", "push", "m", "--uri", "s3://b/k.onnx", "--sha256", SHA,
               "--registry", "127.0.0.1:1")  # fmt: skip
    assert done.returncode == 1 and "127.0.0.1:1" in done.stderr, done.stderr
