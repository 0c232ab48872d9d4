"""The scheduling examples in deploy/batch/ stay valid ``modelserve batch run`` invocations:
every command parses with the real CLI parser, and each resumes by a run id derived from its
schedule slot (so a retried job picks up where it died)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any
from unittest.mock import patch

import yaml

from modelserve.cli.batch import cli as batch_cli
from modelserve.cli.main import main

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "batch"


def _parse(command: str) -> Any:
    """What the real CLI hands ``batch run`` for ``command`` (the job itself is not run)."""
    words = shlex.split(command)
    assert words[:3] == ["modelserve", "batch", "run"], words[:3]
    parsed: list[Any] = []

    def capture(args: Any) -> int:
        parsed.append(args)
        return 0

    with patch.object(batch_cli, "run", capture):
        assert main(words[1:]) == 0
    (args,) = parsed
    return args


def test_cronjob_runs_a_valid_resumable_batch_command() -> None:
    doc = yaml.safe_load((DEPLOY / "cronjob.yaml").read_text())
    assert doc["kind"] == "CronJob" and doc["spec"]["concurrencyPolicy"] == "Forbid"
    container = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    script = container["command"][-1]
    command = script.split("exec ", 1)[1].replace("$DAY", "2026-12-02")
    args = _parse(command)
    assert args.run_id == "fraud-2026-12-02" and args.publish_lookup == "fraud_scores"
    assert "2026-12-02" in args.output


def test_crontab_lines_are_valid_resumable_batch_commands() -> None:
    lines = [
        line
        for line in (DEPLOY / "crontab").read_text().splitlines()
        if line and not line.startswith("#") and "=" not in line.split()[0]
    ]
    assert len(lines) == 2
    for line in lines:
        fields = line.split(None, 5)
        assert len(fields) == 6 and all(re.fullmatch(r"[0-9*/,-]+", f) for f in fields[:5])
        command = fields[5].split("modelserve batch run", 1)[1].split(">>", 1)[0]
        args = _parse("modelserve batch run" + re.sub(r"\$[DH]", "SLOT", command))
        assert args.run_id.endswith("-SLOT") and "SLOT" in args.output
