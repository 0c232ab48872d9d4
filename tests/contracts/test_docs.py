"""docs/configuration.md is generated from the settings classes and must be current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_doc_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_config_docs.py"), "--check"], timeout=60
    )
    assert result.returncode == 0, "docs/configuration.md is stale: run scripts/gen_config_docs.py"


def test_readme_opens_with_the_two_commands() -> None:
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if line.strip()]
    fence = lines.index("```bash")
    assert lines[fence + 1].startswith("./dev up")
    assert lines[fence + 2].startswith("./dev test")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./dev test" in ci
