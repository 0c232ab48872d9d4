"""Generated protobuf code is reproducible: regenerating into a temp dir gives the same files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "services" / "modelserve" / "proto"


def _files(base: Path) -> dict[str, str]:
    return {
        str(p.relative_to(base)): p.read_text()
        for p in sorted(base.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_checked_in_generated_code_is_fresh(tmp_path: Path) -> None:
    out = tmp_path / "proto"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    fresh, checked_in = _files(out), _files(GENERATED)
    assert sorted(fresh) == sorted(checked_in), "generated file set differs: run ./dev gen"
    stale = [name for name in fresh if fresh[name] != checked_in[name]]
    assert not stale, f"stale generated code (run ./dev gen): {stale}"


def test_generated_imports_never_use_bare_top_level_packages() -> None:
    for path in GENERATED.rglob("*.py"):
        for line in path.read_text().splitlines():
            if line.startswith(("from inference", "import inference", "from modelserve.v1")):
                raise AssertionError(f"{path.name}: unrewritten import {line!r}")
