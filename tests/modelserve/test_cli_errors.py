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
        # The same with the global options after the subcommand, or before everything.
        ("infer", "fraud", "--input", "transaction=[[1,2", "--gateway", "127.0.0.1:1"),
        ("models", "push", "m", "/no/such/model.onnx", "--registry", "127.0.0.1:1"),
        ("models", "list", "--registry", "127.0.0.1:1"),
        ("--registry", "127.0.0.1:1", "models", "list", "-o", "json"),
        ("infer", "fraud", "--input", "x=[1]", "--gateway", "127.0.0.1:1", "--token", "T"),
        # Usage errors found by click: one line too.
        ("models", "list", "--no-such-flag"),
        ("models", "list", "-o", "yaml"),
        ("models", "label", "m", "not-a-number", "prod"),
        ("policy", "split", "m", "2:10", "--registry", "127.0.0.1:1"),
        ("serve", "no-such-service"),
        ("no-such-command",),
        ("canary", "outcome", "m", "--metric", "ctr", "--value", "1"),
        ("models", "list", "--tls-cert", "c.pem", "--registry", "127.0.0.1:1"),
    ],
)
def test_each_mistake_is_one_line_and_a_nonzero_exit(args: tuple[str, ...]) -> None:
    done = run(*args)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("models", "list", "--no-such-flag"), 2),
        (("policy", "split", "m", "2:10"), 2),
        (("models", "push", "m", "/no/such/model.onnx", "--registry", "127.0.0.1:1"), 2),
        (("models", "list", "--registry", "127.0.0.1:1"), 1),  # refused or failed: 1
    ],
)
def test_usage_errors_exit_2_and_failures_exit_1(args: tuple[str, ...], code: int) -> None:
    assert run(*args).returncode == code


def test_version() -> None:
    done = run("--version")
    assert done.returncode == 0 and done.stdout.startswith("modelserve "), done


def test_addresses_come_from_the_environment() -> None:
    done = run("models", "list", MODELSERVE_REGISTRY="127.0.0.1:9")
    assert done.returncode != 0 and "127.0.0.1:9" in done.stderr, done.stderr
    done = run("features", "list", MODELSERVE_FEATURESTORE_ADDR="127.0.0.1:7")
    assert done.returncode != 0 and "127.0.0.1:7" in done.stderr, done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("models", "--registry", "127.0.0.1:5", "list"),
        ("models", "list", "--registry", "127.0.0.1:5"),
        ("--registry", "127.0.0.1:5", "models", "list"),
    ],
)
def test_a_flag_anywhere_beats_the_environment(args: tuple[str, ...]) -> None:
    done = run(*args, MODELSERVE_REGISTRY="127.0.0.1:9")
    assert done.returncode == 1 and "127.0.0.1:5" in done.stderr, done.stderr


def test_debug_shows_the_traceback() -> None:
    done = run("models", "push", "m", "/no/such/model.onnx", MODELSERVE_DEBUG="1")
    assert done.returncode == 2 and "no such file" in done.stderr  # a usage error stays short
