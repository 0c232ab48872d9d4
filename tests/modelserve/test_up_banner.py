"""The banner of ``modelserve up`` says whether auth is on, and where the tokens are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelserve.auth.keys import write_local_tokens
from modelserve.cli.suite import SERVICES, ServiceProcess, Suite
from modelserve.cli.up import banner


def _suite(tmp_path: Path) -> Suite:
    process: Any = None  # the banner reads addresses only
    procs = {
        n: ServiceProcess(n, process, 8000 + i, None, tmp_path / f"{n}.log")
        for i, n in enumerate(SERVICES)
    }
    return Suite(tmp_path, procs)


def test_banner_says_auth_is_off_by_default(tmp_path: Path) -> None:
    assert "auth: off" in banner(_suite(tmp_path), ["fraud"])


def test_banner_names_the_token_files_when_auth_is_on(tmp_path: Path) -> None:
    suite = _suite(tmp_path)
    suite.tokens = write_local_tokens(tmp_path)
    text = banner(suite, ["fraud"])
    assert "auth: on" in text and str(tmp_path / "tokens") in text
    assert (suite.token("admin") or "?") not in text  # paths, never the tokens themselves
