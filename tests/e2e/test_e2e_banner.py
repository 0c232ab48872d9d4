"""The `modelserve up` banner's commands work pasted verbatim into a new shell (issue 12): no
virtual environment active, a minimal PATH, the block below "Try it" run as one script."""

from __future__ import annotations

import subprocess
from pathlib import Path

from modelserve.cli.suite import Suite
from modelserve.cli.up import banner


def test_the_banner_runs_verbatim_in_a_fresh_shell(suite: Suite, tmp_path: Path) -> None:
    text = banner(suite, ["fraud"])
    assert "TLS off" in text
    block = text.split("Try it (every line below pastes as is into a new shell):\n", 1)[1]
    commands = [line for line in block.split("\n\n", 1)[0].splitlines() if not line.startswith("(")]
    script = tmp_path / "pasted.sh"
    script.write_text("set -e\n" + "\n".join(commands) + "\n")
    done = subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},  # nothing of the venv
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "inference.GRPCInferenceService" in out  # grpcurl list
    assert '"fraud_probability"' in out or "fraud_probability" in out  # ModelInfer / metadata
    assert "[[" in out  # tritonclient printed the array
    assert '"model": "fraud"' in out  # modelserve infer
    assert "fraud  labels:" in out  # modelserve models list
