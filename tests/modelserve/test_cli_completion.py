"""Shell completion (issue 12): ``modelserve completion SHELL`` prints a script for each shell,
click's COMP_WORDS/COMP_CWORD protocol completes subcommands and options, the bash script
works when sourced in bash, and model names never hang or print errors without a registry
(with one, tests/e2e/test_e2e_cli_output.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CLI = Path(sys.executable).parent / "modelserve"
MARKERS = {
    "bash": "complete -o nosort -F _modelserve_completion modelserve",
    "zsh": "#compdef modelserve",
    "fish": "complete --no-files --command modelserve",
}


def complete(words: str, **env: str) -> list[str]:
    """The completions click offers for ``words`` (the cursor in the last word)."""
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    done = subprocess.run(
        [str(CLI)],
        capture_output=True,
        text=True,
        timeout=30,
        env={
            **os.environ,
            "_MODELSERVE_COMPLETE": "bash_complete",
            "COMP_WORDS": words,
            "COMP_CWORD": str(cword),
            **env,
        },
    )
    assert done.returncode == 0 and not done.stderr, done
    return [line.split(",", 1)[1] for line in done.stdout.splitlines() if "," in line]


@pytest.mark.parametrize("shell", sorted(MARKERS))
def test_the_completion_command_prints_a_script_for_each_shell(shell: str) -> None:
    done = subprocess.run([str(CLI), "completion", shell], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert MARKERS[shell] in done.stdout and "_MODELSERVE_COMPLETE" in done.stdout


def test_an_unknown_shell_is_a_usage_error() -> None:
    done = subprocess.run([str(CLI), "completion", "tcsh"], capture_output=True, text=True)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_subcommands_and_options_complete() -> None:
    assert complete("modelserve mo") == ["models"]
    assert {"push", "list", "show", "label", "unlabel", "optimize"} <= set(
        complete("modelserve models ")
    )
    assert complete("modelserve policy sp") == ["split"]
    assert complete("modelserve canary st") == ["start", "status"]
    # Global options complete on a leaf too, since they are accepted there.
    assert "--registry" in complete("modelserve models list --re")
    assert complete("modelserve models list -o ") == ["table", "json"]
    assert complete("modelserve completion ") == ["bash", "zsh", "fish"]


def test_model_names_without_a_registry_complete_nothing_quietly() -> None:
    # Nothing listens on port 1: the completion ends within its short timeout, no output.
    assert complete("modelserve infer ", MODELSERVE_REGISTRY="127.0.0.1:1") == []
    assert complete("modelserve models show f", MODELSERVE_REGISTRY="127.0.0.1:1") == []


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_the_bash_script_completes_when_sourced_in_bash() -> None:
    script = (
        'eval "$(modelserve completion bash)"; '
        "COMP_WORDS=(modelserve policy sh); COMP_CWORD=2; "
        '_modelserve_completion modelserve; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    path = f"{CLI.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    done = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PATH": path},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["shadow", "shadow-off", "shadow-report", "show"], done.stdout
