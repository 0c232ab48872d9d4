"""Read commands answer in JSON with -o json (the RPC answers in protobuf's JSON mapping), and
the model commands push --wait, show and unlabel work through the running suite (issue 12)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from modelserve.cli.suite import Suite

CLI = Path(sys.executable).parent / "modelserve"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=120)


def ok(*args: str) -> str:
    done = cli(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_push_wait_show_unlabel_and_json_reads(suite: Suite, demo_dir: Path) -> None:
    reg, gw = suite.address("registry"), suite.address("gateway")
    pushed = ok(
        "models", "--registry", reg, "push", "cli_json", str(demo_dir / "fraud_v1.onnx"),
        "--label", "staging", "--wait", "60", "--gateway", gw,
    )  # fmt: skip
    assert "is READY" in pushed, pushed
    listed = json.loads(ok("models", "--registry", reg, "list", "-o", "json"))
    (found,) = [m for m in listed["models"] if m["name"] == "cli_json"]
    assert found["labels"] == {"staging": "1"} and found["versions"][0]["version"] == "1"
    shown = ok("models", "--registry", reg, "show", "cli_json")
    assert "policy: none" in shown and "owner: none" in shown, shown
    assert "removed" in ok("models", "--registry", reg, "unlabel", "cli_json", "staging")
    again = json.loads(ok("models", "--registry", reg, "show", "cli_json", "-o", "json"))
    assert "labels" not in again or "staging" not in again["labels"]
    policy = json.loads(ok("policy", "--registry", reg, "show", "cli_json", "-o", "json"))
    assert policy["owner"] == "" and policy["pending"] is None
    history = json.loads(ok("policy", "--registry", reg, "history", "cli_json", "-o", "json"))
    assert history == {} or "revisions" in history
    experiments = json.loads(ok("experiment", "--registry", reg, "list", "-o", "json"))
    assert isinstance(experiments, dict)


def test_push_wait_fails_clearly_for_a_version_that_never_loads(
    suite: Suite, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    done = cli(
        "models", "--registry", suite.address("registry"), "push", "cli_broken", str(broken),
        "--wait", "5", "--gateway", suite.address("gateway"),
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.strip().startswith("error: ") and "Traceback" not in done.stderr


def test_global_options_anywhere_and_json_on_every_read_command(suite: Suite) -> None:
    reg = suite.address("registry")
    before = json.loads(ok("-o", "json", "--registry", reg, "models", "list"))
    after = json.loads(ok("models", "list", "--registry", reg, "-o", "json"))
    middle = json.loads(ok("models", "-o", "json", "--registry", reg, "list"))
    assert before == after == middle and any(m["name"] == "fraud" for m in before["models"])
    views = json.loads(ok("features", "list", "-o", "json", "--featurestore",
                          suite.address("featurestore")))  # fmt: skip
    assert isinstance(views.get("views", []), list)
    report = json.loads(ok("shadow", "report", "fraud", "--router", suite.address("router"),
                           "-o", "json"))  # fmt: skip
    assert report["model"] == "fraud" and isinstance(report["pairs"], list)
    assert json.loads(ok("policy", "show", "fraud", "-o", "json", "--registry", reg))["owner"] == ""


def test_model_names_complete_from_the_registry(suite: Suite) -> None:
    done = subprocess.run(
        [str(CLI)],
        capture_output=True,
        text=True,
        timeout=30,
        env={
            **os.environ,
            "_MODELSERVE_COMPLETE": "bash_complete",
            "COMP_WORDS": f"modelserve infer --registry {suite.address('registry')} fr",
            "COMP_CWORD": "4",
            "MODELSERVE_COMPLETE_TIMEOUT": "5",
        },
    )
    assert done.returncode == 0 and not done.stderr, done
    names = [line.split(",", 1)[1] for line in done.stdout.splitlines()]
    assert "fraud" in names and all(n.startswith("fr") for n in names), names
